"""`bench toy build`: train the toy pipeline and write everything `bench run` needs.

Steps (deterministic given the seed, about 11 minutes on 2 CPU cores):
1. render 40 scenes of each of the 216 captioned combos;
2. pretrain the VAE, then UNet + text encoder (`bench.toy.pretrain`);
3. zero the token embeddings of every token the toy grammar never uses (they were never trained;
   the shipped file then compresses to a fraction of its size) and save the pipeline in float16,
   diffusers format, without tokenizer files (the tokenizer is rebuilt from open_clip's vocabulary);
4. reload the saved pipeline (so all that follows uses exactly the shipped weights), sample
   preference pairs for the training prompts and label them with the oracle (`bench.toy.preferences`);
5. report the oracle score of the base model beside ground-truth renders on the evaluation prompts.

Output directory layout: `pipeline/`, `prefs.parquet`, `build.json` (config, timings, report).
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.backbone import Backbone
from bench.clip_bpe import clip_bpe_tokenizer
from bench.config import EvalConfig
from bench.evaluation import evaluate
from bench.records import environment, now, staged_directory, write_json_atomic
from bench.stats import bootstrap_mean
from bench.toy.oracle import oracle_terms
from bench.toy.pipeline import ToyArchitecture, build_components
from bench.toy.preferences import PreferenceConfig, generate_preferences
from bench.toy.pretrain import PretrainConfig, pretrain_denoiser, pretrain_vae
from bench.toy.world import all_combos, render, render_dataset, sample_scene, split_combos
from metrics.oracle import OracleScorer


@dataclass(frozen=True)
class ToyBuildConfig:
    arch: ToyArchitecture = field(default_factory=ToyArchitecture)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    preferences: PreferenceConfig = field(default_factory=PreferenceConfig)
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(images_per_prompt=4, steps=20, guidance=3.0))
    seed: int = 0


def _zero_unused_tokens(text_encoder, used_ids: set[int]) -> int:
    table = text_encoder.get_input_embeddings().weight  # (V, D)
    unused = torch.ones(table.shape[0], dtype=torch.bool)
    unused[sorted(used_ids)] = False
    table.data[unused] = 0
    return int(unused.sum())


def ground_truth_scores(prompts: list[str], images_per_prompt: int, seed: int) -> dict[str, torch.Tensor]:
    """Oracle terms of ground-truth renders of `prompts` (nuisance variables drawn with `seed`)."""
    by_caption = {c.caption: c for c in all_combos()}
    rng = random.Random(seed)
    per_image = [p for p in prompts for _ in range(images_per_prompt)]
    return oracle_terms(per_image, render([sample_scene(by_caption[p], rng) for p in per_image]))


def build_toy(out_dir: str | Path, cfg: ToyBuildConfig = ToyBuildConfig(), *, progress: bool = True) -> dict:
    """Pretrain the pipeline, generate the preference pairs, evaluate the base model; write `pipeline/`,
    `prefs.parquet` and `build.json` to `out_dir` together at the end (a killed build changes nothing)."""
    with staged_directory(out_dir) as out:
        return _build_toy(out, cfg, progress)


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
    backbone = Backbone.from_pretrained(out / "pipeline")

    t2 = time.perf_counter()
    train_combos, eval_combos = split_combos()
    prefs = generate_preferences(backbone, [c.caption for c in train_combos], cfg.preferences, progress=progress)
    prefs.to_parquet(str(out / "prefs.parquet"))
    timings["preferences"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    eval_prompts = [c.caption for c in eval_combos]
    base, _ = evaluate(backbone, eval_prompts, cfg.eval, {"oracle": OracleScorer()}, progress=progress,
                       desc="eval base")
    truth = ground_truth_scores(eval_prompts, cfg.eval.images_per_prompt, cfg.seed + 1)
    timings["report"] = time.perf_counter() - t3
    timings["total"] = time.perf_counter() - t0

    agree = [(r0 > r1) == (l0 > l1) for r0, r1, l0, l1 in
             zip(prefs["reward_0"], prefs["reward_1"], prefs["label_0"], prefs["label_1"])]
    report = {
        "base_model": {"oracle": bootstrap_mean(torch.tensor(base.scores["oracle"])),
                       **{k: sum(v) / len(v) for k, v in base.components["oracle"].items()}},
        "ground_truth_renders": {"oracle": bootstrap_mean(truth["reward"]),
                                 **{k: v.mean().item() for k, v in truth.items() if k != "reward"}},
        "preferences": {"pairs": len(prefs), "prompts": len(train_combos),
                        "label_agreement_with_oracle": sum(agree) / len(agree),
                        "mean_abs_reward_gap": float(torch.tensor(prefs["reward_0"]).sub(
                            torch.tensor(prefs["reward_1"])).abs().mean())},
        "tokens_zeroed": zeroed,
    }
    write_json_atomic(out / "build.json", {"config": dataclasses.asdict(cfg), "timings_seconds": timings,
                                           "report": report, "environment": environment(), "created": now()})
    return report
