"""`bench toy build`: train the toy pipeline and write everything `bench run` needs.

Steps (deterministic given the seed, about 11 minutes on 2 CPU cores):
1. render 40 scenes of each of the 216 captioned combos;
2. pretrain the VAE, then UNet + text encoder (`bench.harness.toy_build.pretrain`);
3. zero the token embeddings of every token the toy grammar never uses (they were never trained;
   the shipped file then compresses to a fraction of its size) and save the pipeline in float16,
   diffusers format, without tokenizer files (the tokenizer is rebuilt from open_clip's vocabulary);
4. reload the saved pipeline (so all that follows uses exactly the shipped weights), sample
   preference pairs for the training prompts and label them with the oracle (`bench.harness.toy_build.preferences`);
5. report the oracle score of the base model beside ground-truth renders on the evaluation prompts, and beside
   those renders passed through the VAE (encode, decode: what the latent space keeps of a perfect image)
   (means with 95% CIs from the bootstrap over prompts of run records and the leaderboard, `bench.core.stats`).

Output directory layout: `pipeline/`, `prefs.parquet`, `build.json` (config, timings, report).

`--family flow` (`ToyFlowBuildConfig`, `build_toy(..., vae_from=...)`) builds the toy flow world the same way: the
SD toy's trained VAE is reused (`vae_from`, a pipeline directory; None trains one as step 2 does), the SD3-shaped
transformer and its two CLIP encoders are trained with the rectified-flow loss (`bench.harness.toy_build.pretrain_flow`),
and steps 3-5 are the same, the preference images sampled from the flow model with its Euler sampler. Its
`model_index.json` also records `max_sequence_length` 0 (no T5 sequence; `Backbone.save_pretrained` writes it).
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL

from bench.core.backbone import Backbone
from bench.core.clip_bpe import clip_bpe_tokenizer
from bench.core.config import EvalConfig
from bench.core.records import environment, now, staged_directory, write_json_atomic
from bench.core.stats import bootstrap_mean
from bench.harness.evaluation import evaluate
from bench.harness.toy_build.preferences import PreferenceConfig, generate_preferences
from bench.harness.toy_build.pretrain import PretrainConfig, pretrain_denoiser, pretrain_vae
from bench.harness.toy_build.pretrain_flow import pretrain_flow_denoiser
from bench.toy.oracle import ORACLE_VERSION, oracle_terms
from bench.toy.pipeline import (
    ToyArchitecture,
    ToyFlowArchitecture,
    build_components,
    build_flow_components,
    flow_backbone,
)
from bench.toy.world import all_combos, render, render_dataset, sample_scene, split_combos
from metrics.oracle import OracleScorer


@dataclass(frozen=True)
class ToyBuildConfig:
    arch: ToyArchitecture = field(default_factory=ToyArchitecture)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    preferences: PreferenceConfig = field(default_factory=PreferenceConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(images_per_prompt=4, steps=20, guidance=3.0))
    seed: int = 0


@dataclass(frozen=True)
class ToyFlowBuildConfig:
    """The toy flow world's build: the SD toy's pretraining recipe (renders, batch, caption dropout, EMA, one-cycle
    AdamW at 1e-3) for the SD3 transformer, and the SD toy's preference and evaluation settings (the Euler sampler at
    the same 20 steps and guidance 3: CFG is the same linear combination in velocity space as in ε space)."""
    arch: ToyFlowArchitecture = field(default_factory=ToyFlowArchitecture)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    preferences: PreferenceConfig = field(default_factory=PreferenceConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(images_per_prompt=4, steps=20, guidance=3.0))
    seed: int = 0
    family: str = "flow"


def _zero_unused_tokens(text_encoder, used_ids: set[int]) -> int:
    table = text_encoder.get_input_embeddings().weight  # (V, D)
    unused = torch.ones(table.shape[0], dtype=torch.bool)
    unused[sorted(used_ids)] = False
    table.data[unused] = 0
    return int(unused.sum())


def ground_truth_renders(prompts: list[str], images_per_prompt: int, seed: int) -> tuple[list[str], torch.Tensor]:
    """Ground-truth renders of `prompts` (nuisance variables drawn with `seed`): the caption of each image and the
    images (N, 3, 32, 32), N = len(prompts) * images_per_prompt."""
    by_caption = {c.caption: c for c in all_combos()}
    rng = random.Random(seed)
    per_image = [p for p in prompts for _ in range(images_per_prompt)]
    return per_image, render([sample_scene(by_caption[p], rng) for p in per_image])


def ground_truth_report(prompts: list[str], eval_cfg: EvalConfig, seed: int, backbone: Backbone) -> dict[str, dict]:
    """The build report's entries for ground-truth renders of `prompts` (`eval_cfg.images_per_prompt` each, nuisance
    variables drawn with `seed`): `ground_truth_renders`, and `ground_truth_through_vae` for the same renders passed
    through `backbone`'s VAE (`decode(encode_images(x))`, the posterior mean: what the latent space keeps of a perfect
    image). Each holds the oracle's mean with its 95% CI (the bootstrap over prompts of run records, the evaluation's
    B and seed) and each term's mean."""
    per_image, images = ground_truth_renders(prompts, eval_cfg.images_per_prompt, seed)
    with torch.no_grad():
        through_vae = backbone.decode(backbone.encode_images(images.to(backbone.device)))
    report = {}
    for name, pixels in (("ground_truth_renders", images), ("ground_truth_through_vae", through_vae)):
        terms = oracle_terms(per_image, pixels)
        report[name] = {"oracle": bootstrap_mean(terms["reward"], groups=per_image, resamples=eval_cfg.bootstrap,
                                                 seed=eval_cfg.seed),
                        **{k: v.mean().item() for k, v in terms.items() if k != "reward"}}
    return report


def build_toy(out_dir: str | Path, cfg: ToyBuildConfig | ToyFlowBuildConfig = ToyBuildConfig(), *, progress: bool = True,
              reuse_pipeline: str | Path | None = None, vae_from: str | Path | None = None) -> dict:
    """Pretrain the pipeline, generate the preference pairs, evaluate the base model; write `pipeline/`,
    `prefs.parquet` and `build.json` to `out_dir` together at the end (a killed build changes nothing).

    `reuse_pipeline` (a `pipeline/` directory of an earlier build) skips steps 1-3: the preference data and the
    report are made anew on that pipeline (e.g. after the oracle or the prompt splits changed), and the
    pretraining's timings and token count are taken from the `build.json` beside it.

    A `ToyFlowBuildConfig` builds the toy flow world (module docstring), its VAE taken from the pipeline directory
    `vae_from` (None: trained anew)."""
    flow = isinstance(cfg, ToyFlowBuildConfig)
    if vae_from is not None and not flow:
        raise ValueError("vae_from applies to the flow build (ToyFlowBuildConfig) only")
    with staged_directory(out_dir) as out:
        if reuse_pipeline is None:
            return _build_toy_flow(out, cfg, progress, vae_from) if flow else _build_toy(out, cfg, progress)
        reuse_pipeline = Path(reuse_pipeline)
        shutil.copytree(reuse_pipeline, out / "pipeline")
        previous = reuse_pipeline.parent / "build.json"
        earlier = json.loads(previous.read_text()) if previous.exists() else {}
        timings = {k: v for k, v in earlier.get("timings_seconds", {}).items() if k in ("vae", "denoiser")}
        extra = {k: earlier[k] for k in ("vae_reused_from",) if k in earlier}
        return _label_and_report(out, cfg, progress, timings, earlier.get("report", {}).get("tokens_zeroed"),
                                 reused=str(reuse_pipeline), extra=extra)


def _build_toy(out: Path, cfg: ToyBuildConfig, progress: bool) -> dict:
    timings = {}
    t0 = time.perf_counter()
    unet, vae, text_encoder, scheduler = build_components(cfg.arch, cfg.seed)
    images, captions = render_dataset(all_combos(), cfg.pretrain.renders_per_combo, cfg.seed)  # (N, 3, 32, 32)
    pretrain_vae(vae, images, cfg.pretrain, progress=progress)
    timings["vae"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    with torch.no_grad():
        latents = torch.cat([vae.encode(x * 2 - 1).latent_dist.mode() for x in images.split(512)])
    latents = latents * vae.config.scaling_factor
    tokenizer = clip_bpe_tokenizer(cfg.arch.max_prompt_tokens)
    token_ids = tokenizer(captions, padding="max_length", max_length=cfg.arch.max_prompt_tokens, truncation=True,
                          return_tensors="pt").input_ids  # (N, L)
    null_ids = tokenizer([""], padding="max_length", max_length=cfg.arch.max_prompt_tokens,
                         return_tensors="pt").input_ids[0]
    pretrain_denoiser(unet, text_encoder, scheduler, latents, token_ids, null_ids, cfg.pretrain, progress=progress)
    timings["denoiser"] = time.perf_counter() - t1
    zeroed = _zero_unused_tokens(text_encoder, set(token_ids.unique().tolist()) | set(null_ids.tolist()))

    Backbone(unet, vae, text_encoder, tokenizer, scheduler).save_pretrained(
        out / "pipeline", dtype=torch.float16, include_tokenizer=False)
    return _label_and_report(out, cfg, progress, timings, zeroed)


def _build_toy_flow(out: Path, cfg: ToyFlowBuildConfig, progress: bool, vae_from: str | Path | None) -> dict:
    timings = {}
    t0 = time.perf_counter()
    transformer, vae, clip_l, clip_g, scheduler = build_flow_components(cfg.arch, cfg.seed)
    images, captions = render_dataset(all_combos(), cfg.pretrain.renders_per_combo, cfg.seed)  # (N, 3, 32, 32)
    if vae_from is None:
        pretrain_vae(vae, images, cfg.pretrain, progress=progress)
    else:  # the shipped VAE is float16; loaded in float32 as `Backbone.from_pretrained` loads it
        vae = AutoencoderKL.from_pretrained(Path(vae_from) / "vae", torch_dtype=torch.float32).requires_grad_(False).eval()
    timings["vae"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    shift = vae.config.get("shift_factor") or 0.0
    with torch.no_grad():
        latents = torch.cat([vae.encode(x * 2 - 1).latent_dist.mode() for x in images.split(512)])
    latents = (latents - shift) * vae.config.scaling_factor  # as `Backbone.encode_images`
    tokenizer = clip_bpe_tokenizer(cfg.arch.max_prompt_tokens)
    token_ids = tokenizer(captions, padding="max_length", max_length=cfg.arch.max_prompt_tokens, truncation=True,
                          return_tensors="pt").input_ids  # (N, L)
    null_ids = tokenizer([""], padding="max_length", max_length=cfg.arch.max_prompt_tokens,
                         return_tensors="pt").input_ids[0]
    pretrain_flow_denoiser(transformer, clip_l, clip_g, scheduler, latents, token_ids, null_ids, cfg.arch.t5_tokens,
                           cfg.pretrain, progress=progress)
    timings["denoiser"] = time.perf_counter() - t1
    used = set(token_ids.unique().tolist()) | set(null_ids.tolist())
    zeroed = _zero_unused_tokens(clip_l, used) + _zero_unused_tokens(clip_g, used)

    flow_backbone(transformer, vae, clip_l, clip_g, scheduler, cfg.arch).save_pretrained(
        out / "pipeline", dtype=torch.float16, include_tokenizer=False)
    return _label_and_report(out, cfg, progress, timings, zeroed,
                             extra={"vae_reused_from": None if vae_from is None else str(vae_from)})


def _label_and_report(out: Path, cfg: ToyBuildConfig | ToyFlowBuildConfig, progress: bool, timings: dict,
                      zeroed: int | None, reused: str | None = None, extra: dict | None = None) -> dict:
    """Steps 4-5 on the pipeline in `out/pipeline`: preference data for the training prompts, and the report."""
    backbone = Backbone.from_pretrained(out / "pipeline")
    t2 = time.perf_counter()
    splits = split_combos()
    prefs = generate_preferences(backbone, splits.captions("train"), cfg.preferences, progress=progress)
    prefs.to_parquet(str(out / "prefs.parquet"))
    timings["preferences"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    eval_prompts = splits.captions("test")
    base, _ = evaluate(backbone, eval_prompts, cfg.eval, {"oracle": OracleScorer()}, progress=progress,
                       desc="eval base")
    truth = ground_truth_report(eval_prompts, cfg.eval, cfg.seed + 1, backbone)
    timings["report"] = time.perf_counter() - t3
    timings["total"] = sum(timings.get(k, 0.0) for k in ("vae", "denoiser", "preferences", "report"))

    agree = [(r0 > r1) == (l0 > l1) for r0, r1, l0, l1 in
             zip(prefs["reward_0"], prefs["reward_1"], prefs["label_0"], prefs["label_1"])]
    # the CIs of run records and the leaderboard: a bootstrap over prompts (`bench.core.stats`), the evaluation's B and seed
    report = {
        "base_model": {"oracle": bootstrap_mean(base.scores["oracle"], groups=base.prompts,
                                                resamples=cfg.eval.bootstrap, seed=cfg.eval.seed),
                       **{k: sum(v) / len(v) for k, v in base.components["oracle"].items()}},
        **truth,
        "preferences": {"pairs": len(prefs), "prompts": len(splits.train),
                        "label_agreement_with_oracle": sum(agree) / len(agree),
                        "mean_abs_reward_gap": float(torch.tensor(prefs["reward_0"]).sub(
                            torch.tensor(prefs["reward_1"])).abs().mean())},
        "tokens_zeroed": zeroed,
    }
    write_json_atomic(out / "build.json", {"config": dataclasses.asdict(cfg), "timings_seconds": timings,
                                           "pipeline_reused_from": reused, **(extra or {}),
                                           "oracle_version": ORACLE_VERSION,
                                           "report": report, "environment": environment(), "created": now()})
    return report
