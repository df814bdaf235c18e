"""Suites: what a benchmark run trains on, evaluates on, and under which budget and recipe.

A suite names the pipeline (local directory or hub id), the preference data (Pick-a-Pic v2 schema),
the evaluation prompts, the metrics, the default budget and training recipe, and per-method
overrides of the methods' paper defaults (a recipe tuned for the suite's scale). Every method of a
suite trains under the same budget.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from bench.core.budget import Budget
from bench.core.config import LORA_TARGETS, EvalConfig, TrainConfig
from bench.core.registry import Registry
from bench.core.search_space import FloatRange, Space
from bench.harness.prompts import PromptSource
from bench.toy.paths import toy_dir, toy_flow_dir
from bench.toy.world import split_combos

SUITES: Registry = Registry("suite", entry_point_group="diffusion_align_bench.suites")



@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    pipeline: str
    preference_data: str
    eval_prompts: tuple[str, ...] | PromptSource  # the test prompts: reported, never used for a choice
    validation_prompts: tuple[str, ...] | PromptSource  # the tuning prompts (`bench tune`)
    metrics: tuple[str, ...]
    budget: Budget
    train: TrainConfig
    eval: EvalConfig
    preference_split: str = "train"
    max_pairs: int | None = None
    method_args: dict[str, dict] = field(default_factory=dict)  # method -> its config overrides
    train_args: dict[str, dict] = field(default_factory=dict)  # method -> TrainConfig overrides
    default_methods: tuple[str, ...] = ("dpo", "inpo", "kto")
    dtype: str = "fp32"  # frozen UNet + text encoders and evaluation (bench.core.config.PIPELINE_DTYPES); VAE fp32
    # `bench tune` ranges that replace the declared ones at this suite's scale: "train.FIELD" for every method,
    # "METHOD.FIELD" for one method's config.
    search: dict[str, Space] = field(default_factory=dict)
    tuning: dict[str, dict] = field(default_factory=dict)  # method -> provenance of its tuned settings (records)
    # label -> method: a variant whose settings above are keyed by its label (a tuned `bench tune --methods sdpo=dpo`);
    # they apply, over the method's own, to a run that names the same label for the same method
    variants: dict[str, str] = field(default_factory=dict)
    # online methods: evaluate on the validation prompts (one image each) every this many NFE of training (0: never)
    curve_every: float = 0.0
    set_metrics: tuple[str, ...] = ()  # metrics of the image set (`metrics.sets`): FD, PRDC, Vendi
    reference: str | None = None  # their reference set: "toy-renders" or a folder of images

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]

    def prompts_for(self, split: str) -> tuple[str, ...] | PromptSource:
        """The evaluation prompts of `split`: "test" (reported) or "validation" (tuning)."""
        if split not in EVAL_SPLITS:
            raise ValueError(f"unknown evaluation split {split!r}; expected one of {', '.join(EVAL_SPLITS)}")
        return self.eval_prompts if split == "test" else self.validation_prompts


EVAL_SPLITS = ("test", "validation")


@SUITES.register("toy")
def toy_suite() -> Suite:
    """The CPU-scale default: the toy world's pipeline, its preference pairs and the oracle reward.

    Prompts (`bench.toy.world.split_combos`): 120 training captions (the preference data), 32
    validation captions (tuning) and 64 test captions (reported), disjoint; 4 seeds each at evaluation.
    Method settings: each method's β-like parameters and learning rate come from the committed tuning run
    `tuned.json` beside the pipeline (`bench tune --trials 8` on the validation prompts, the same effort for
    every method); without that file, the methods' paper defaults.
    """
    root = toy_dir()
    splits = split_combos()
    tuned = tuned_settings(root / "tuned.json")
    train_args = {"kto": {"batch_size": 32}, "sft": {"batch_size": 32}}  # binary / image data: 32 items per step
    # Online methods: rollouts of 10 steps at the evaluation's guidance (papers sample 10-50 steps and evaluate with
    # more), groups of 4, 4 prompts per collection; untuned until `bench tune` covers them.
    rollouts = {"steps": 10, "guidance": 3.0}
    online_args = {"ddpo": rollouts, "grpo": {**rollouts, "group_size": 4}, "draft": rollouts,
                   "dense-reward": {**rollouts, "rollouts_per_prompt": 4, "kept_per_prompt": 4}}
    train_args.update(dict.fromkeys(online_args, {"batch_size": 4}))
    # DOODL: its EDICT chain at the evaluation's steps and guidance (so Δ vs base measures the optimisation, not the
    # sampler), 4 updates per image (1,360 NFE per image; the paper's 50 would be 16,800)
    online_args["doodl"] = {"steps": 20, "guidance": 3.0, "opt_steps": 4}
    return Suite(
        name="toy",
        description="toy world of coloured shapes, tiny SD-shaped pipeline, oracle reward (CPU, minutes)",
        pipeline=str(root / "pipeline"),
        preference_data=str(root / "prefs.parquet"),
        eval_prompts=tuple(splits.captions("test")),
        validation_prompts=tuple(splits.captions("validation")),
        metrics=("oracle", "toy-pickscore", "toy-clip"),  # the truth first; the proxies show reward hacking
        budget=Budget.parse("4e4nfe"),
        train=TrainConfig(lr=3e-5, batch_size=16, weight_decay=0.0, prompt_dropout=0.1, checkpoint_every=50),
        eval=EvalConfig(images_per_prompt=4, steps=20, guidance=3.0, seed=0, batch_size=128),
        **with_tuned(online_args, train_args, tuned),  # the tuned values over the suite's rollout settings
        search={"train.lr": FloatRange(1e-5, 3e-4, log=True)},  # ~300 steps of AdamW on a 4 M-parameter UNet
        curve_every=1e4,
        set_metrics=("fd-toyclip", "prdc-toyclip", "vendi-toyclip"),  # in the toy CLIP's feature space
        reference="toy-renders",  # ground-truth renders of the test captions, one per evaluated image
    )


@SUITES.register("toy-flow")
def toy_flow_suite() -> Suite:
    """The toy world with a tiny SD3-shaped flow pipeline (`bench toy build --family flow`; `bench.toy.pipeline`): the
    same world, prompts and splits, oracle and proxy scorers, set metrics, budget (4e4 NFE), training recipe and
    evaluation as the toy suite, on the flow pipeline, its own preference pairs (sampled from the flow base model with
    the Euler sampler, labelled as the toy's) and its cached base evaluations (`bench/toy/assets/flow/`).

    Evaluation: the flow scheduler's Euler sampler at the toy's 20 steps and guidance 3 (CFG is the same linear
    combination in velocity space as in ε space, so the scale means the same; the build samples the preference data
    with both). Method settings: those of this pipeline's own tuning run (`tuned.json` beside it: `bench tune --suite
    toy-flow --trials 8 --export ...`, the same effort for every method) where it has them; else the toy suite's,
    tuned on the SD toy's UNet (the losses are computed in each model's native space, v there and the velocity
    ε − x0 here), untuned for this pipeline. Flow-only online methods at the toy's rollout scale (as grpo there:
    10 steps, groups of 4, 4 prompts per collection; flow-grpo at the evaluation's guidance, diffusionnft CFG-free as
    its paper samples), at lr 1e-4 (the order `bench tune` chose for grpo on the SD toy) unless tuned here.
    """
    root = toy_flow_dir()
    toy = toy_suite()
    tuned = tuned_settings(root / "tuned.json")
    flow_online = {"flow-grpo": {"steps": 10, "guidance": 3.0, "group_size": 4},
                   "diffusionnft": {"steps": 10, "group_size": 4}}
    fields = with_tuned({**toy.method_args, **flow_online},
                        {**toy.train_args, **dict.fromkeys(flow_online, {"batch_size": 4, "lr": 1e-4})}, tuned)
    return dataclasses.replace(
        toy,
        name="toy-flow",
        description="toy world of coloured shapes, tiny SD3-shaped flow pipeline (rectified flow), oracle reward "
                    f"(CPU, minutes); method settings {'tuned on this pipeline' if tuned else 'tuned on the SD toy'}",
        pipeline=str(root / "pipeline"),
        preference_data=str(root / "prefs.parquet"),
        **{**fields, "tuning": {**toy.tuning, **fields["tuning"]}, "variants": {**toy.variants, **fields["variants"]}},
    )


def with_tuned(method_args: dict[str, dict], train_args: dict[str, dict], tuned: dict[str, dict]) -> dict:
    """The Suite fields `method_args`, `train_args`, `tuning` and `variants`: a committed tuning run's chosen values
    (`tuned_settings`) over the suite's own per-method settings."""
    return {"method_args": {m: {**method_args.get(m, {}), **tuned.get(m, {}).get("method_args", {})}
                            for m in {*method_args, *tuned}},
            "train_args": {m: {**train_args.get(m, {}), **tuned.get(m, {}).get("train_args", {})}
                           for m in {*train_args, *tuned}},
            "tuning": {m: t["tuning"] for m, t in tuned.items()},
            "variants": {m: t["method"] for m, t in tuned.items() if t.get("method", m) != m}}


def tuned_settings(path: Path) -> dict[str, dict]:
    """label -> {method, method_args, train_args, tuning} from a committed tuning run (`bench tune`), or {} if
    none; a label differs from its method for a variant (`Suite.variants`)."""
    return json.loads(path.read_text())["methods"] if path.exists() else {}


def get_suite(name: str) -> Suite:
    return SUITES.get(name)()


_PICKAPIC = "yuvalkirstain/pickapic_v2"
_REAL_METRICS = ("pickscore", "hps", "imagereward", "clip", "aesthetic")
_DPO_BUDGET = Budget("nfe", 2000 * 2048 * 8)  # Diffusion-DPO's run: 2000 steps x 2048 pairs x 8F per pair
# Diffusion-DPO's launchers (sd15.sh, sdxl.sh): 2048 pairs per step (16 processes x 1 pair x 128 accumulation),
# lr 1e-8 x 2048 (`--scale_lr`), weight decay 1e-2, prompt dropout 0.2, fp16 (and clip 1, TrainConfig's default)
_DPO_TRAIN = dict(lr=2.048e-5, batch_size=1, grad_accum=128, weight_decay=1e-2, prompt_dropout=0.2,
                  mixed_precision="fp16", checkpoint_every=100)
_KTO_TRAIN = {"lr": 1e-7, "batch_size": 2, "grad_accum": 1, "warmup_steps": 1000}  # KTO paper App. A.1


def pickapic_suite(**recipe) -> Suite:
    """A suite on Pick-a-Pic v2 at real scale: its training pairs, its unique test and validation captions, the
    real scorers, Diffusion-DPO's compute and fp16 frozen weights (`train.py`'s weight_dtype for the frozen
    reference UNet and text encoder; a recipe may give another `dtype`); `recipe` gives the other Suite fields."""
    return Suite(preference_data=_PICKAPIC,
                 eval_prompts=PromptSource(_PICKAPIC, split="test_unique", column="caption"),
                 validation_prompts=PromptSource(_PICKAPIC, split="validation_unique", column="caption"),
                 metrics=_REAL_METRICS, budget=_DPO_BUDGET, **{"dtype": "fp16", **recipe})


@SUITES.register("sd15-pickapic")
def sd15_pickapic_suite() -> Suite:
    """SD 1.5 on Pick-a-Pic v2 with Diffusion-DPO's recipe (configuration only: needs the weights and GPUs).

    SalesforceAIResearch/DiffusionDPO `launchers/sd15.sh` and paper §5.1: 2048 pairs per step
    (16 processes x 1 pair x 128 accumulation), 2000 steps, AdamW lr 1e-8 x 2048 = 2.048e-5
    (`--scale_lr`), weight decay 1e-2, clip 1, constant lr after 500 warmup steps, prompt dropout 0.2,
    β = 2000 (paper; the launcher passes 5000). Every method gets that run's compute, 3.28e7 NFE.
    Method recipes: KTO paper App. A.1 (β 5000, lr 1e-7, 1000 warmup, 8 images per step;
    here batch 2 per process: 8 images per step on 4 processes, 32 on the launch's 16); InPO's SD 1.5
    example (β 2000, 1024 pairs per step, lr 1e-8 x 1024); DSPO README (β 0.001).
    """
    return pickapic_suite(
        name="sd15-pickapic",
        description="SD 1.5 + Pick-a-Pic v2, Diffusion-DPO's recipe (GPUs and the weights required)",
        pipeline="stable-diffusion-v1-5/stable-diffusion-v1-5",
        train=TrainConfig(**_DPO_TRAIN, warmup_steps=500),
        eval=EvalConfig(images_per_prompt=1, steps=50, guidance=7.5, batch_size=16),
        method_args={"dpo": {"beta": 2000.0}, "dpo-gamma-t": {"beta": 2000.0}, "inpo": {"beta": 2000.0},
                     "kto": {"beta": 5000.0}, "dspo": {"beta": 0.001}},
        train_args={"kto": dict(_KTO_TRAIN), "inpo": {"lr": 1.024e-5, "grad_accum": 64, "warmup_steps": 200}},
    )


@SUITES.register("sdxl-pickapic")
def sdxl_pickapic_suite() -> Suite:
    """SDXL on Pick-a-Pic v2 with Diffusion-DPO's SDXL recipe (configuration only: needs the weights and GPUs).

    SalesforceAIResearch/DiffusionDPO `launchers/sdxl.sh`: 2048 pairs per step (16 x 1 x 128), 2000 steps,
    lr 2.048e-5, constant after 200 warmup steps, β = 5000, Adafactor and gradient checkpointing (forced
    by `train.py` for SDXL); the launcher also swaps in the `madebyollin/sdxl-vae-fp16-fix` VAE, which a
    local pipeline directory can include. InPO's SDXL example uses β = 5000 too.
    """
    return pickapic_suite(
        name="sdxl-pickapic",
        description="SDXL + Pick-a-Pic v2, Diffusion-DPO's SDXL recipe (GPUs and the weights required)",
        pipeline="stabilityai/stable-diffusion-xl-base-1.0",
        train=TrainConfig(**_DPO_TRAIN, warmup_steps=200, optimizer="adafactor", gradient_checkpointing=True),
        eval=EvalConfig(images_per_prompt=1, steps=50, guidance=5.0, batch_size=8),
        method_args={name: {"beta": 5000.0} for name in ("dpo", "dpo-gamma-t", "inpo", "kto", "dspo")},
        train_args={"kto": dict(_KTO_TRAIN)},
    )


# Flow-DPO's β for SD3.5 Medium (yifan123/flow_grpo_refactor config/dpo.py, mirror ltt0716/flow_grpo_official @a646ae3):
# Diffusion-DPO's loss on the velocity errors ‖v̂ − (ε − x0)‖², the flow models' native space
_FLOW_DPO_BETA = 100.0


@SUITES.register("sd35-medium")
def sd35_medium_suite() -> Suite:
    """SD3.5 Medium on Pick-a-Pic v2, offline DPO with Diffusion-DPO's recipe (configuration only: needs the weights and GPUs).

    The offline recipe is Diffusion-DPO's for a denoiser of SDXL's size (`launchers/sdxl.sh`; `bench.core.real_configs`
    RECIPE_LAUNCH): 2048 pairs per step (16 processes x 1 pair x 128 accumulation), lr 2.048e-5 after 200 warmup steps,
    Adafactor, gradient checkpointing, fp16, every weight of the 2.24 B-parameter MMDiT-X trained at the pipeline's
    1024²; β = 100, Flow-DPO's for SD3.5 Medium on velocity errors. Evaluation as Flow-GRPO evaluates SD3.5 Medium: 40
    steps, CFG 4.5. The variant `dpo-lora` (`--methods dpo,dpo-lora=dpo`) trains LoRA adapters instead, as every
    published SD3.5 Medium alignment recipe does (Flow-GRPO, Flow-DPO, DiffusionNFT): r 32, α 64, Gaussian init on the
    attention projections to_q, to_k, to_v, to_out.0 and the context projections add_q_proj, add_k_proj, add_v_proj,
    to_add_out (TrainConfig's default lora_targets; Flow-GRPO scripts/train_sd3.py @74db691), at Flow-GRPO's LoRA lr
    3e-4 (config/base.py @54809b5).

    Online: `flow-grpo` and `diffusionnft` run their Configs' defaults, which are Flow-GRPO's `pickscore_sd3` (yifan123/
    flow_grpo config/grpo.py @31c71b9: 10 sampling steps, SDE noise level 0.7, CFG 4.5, groups of 24, KL β 0.01, PPO
    clip 1e-4) and DiffusionNFT's `sd3_pickscore`, with the LoRA above at lr 3e-4 and one prompt group per process per
    micro-batch: 16 processes x 24 images = 384 images per step, where Flow-GRPO takes 576 on 32 processes (9 images per
    micro-batch, 2 accumulation; its groups span processes, ours stay in one). Both train on `--reward` (default
    PickScore) at the pipeline's 1024² (Flow-GRPO samples 512²).
    """
    return pickapic_suite(
        name="sd35-medium",
        description="SD3.5 Medium + Pick-a-Pic v2, offline DPO with Diffusion-DPO's recipe; dpo-lora=dpo for LoRA "
                    "and flow-grpo / diffusionnft with LoRA (GPUs and the weights required)",
        pipeline="stabilityai/stable-diffusion-3.5-medium",
        train=TrainConfig(**_DPO_TRAIN, warmup_steps=200, optimizer="adafactor", gradient_checkpointing=True),
        eval=EvalConfig(images_per_prompt=1, steps=40, guidance=4.5, batch_size=8),
        method_args={"dpo": {"beta": _FLOW_DPO_BETA}},
        train_args={name: {"lr": 3e-4, "optimizer": "adamw", "lora_rank": 32, "lora_alpha": 64.0,
                           **({} if name == "dpo-lora" else {"batch_size": 1, "grad_accum": 1})}
                    for name in ("dpo-lora", "flow-grpo", "diffusionnft")},
        variants={"dpo-lora": "dpo"},
        default_methods=("dpo",),
    )


# Flow-GRPO's FLUX.1-dev LoRA (yifan123/flow_grpo scripts/train_flux.py @74db691): r 64, α 128, Gaussian init, on the
# double-stream blocks' attention (image and context projections) and both feed-forwards, and the single-stream blocks'
# attention projections (peft's suffix match: "attn.to_q" adapts both kinds of block)
FLUX_LORA_TARGETS = ("attn.to_k,attn.to_q,attn.to_v,attn.to_out.0,attn.add_k_proj,attn.add_q_proj,attn.add_v_proj,"
                     "attn.to_add_out,ff.net.0.proj,ff.net.2,ff_context.net.0.proj,ff_context.net.2")


@SUITES.register("flux-dev")
def flux_dev_suite() -> Suite:
    """FLUX.1-dev on Pick-a-Pic v2 with Flow-GRPO's FLUX LoRA recipe (configuration only: needs the weights and GPUs).

    Flow-GRPO's `pickscore_flux` (yifan123/flow_grpo config/grpo.py @31c71b9, config/base.py @54809b5,
    scripts/train_flux.py @74db691): 32 processes, 3 items per micro-batch, 6 accumulation (576 per step;
    `bench.core.real_configs` RECIPE_LAUNCH), AdamW lr 3e-4, weight decay 1e-4, clip 1, bf16, LoRA r 64, α 128,
    Gaussian init on `FLUX_LORA_TARGETS`; evaluation 28 steps at distilled guidance 3.5 (FLUX.1-dev embeds the guidance
    scale, `EvalConfig.guidance` here; no CFG batch). Offline methods train on Pick-a-Pic v2 pairs (an item is a pair:
    1152 images per step where Flow-GRPO's online step has 576); β = 100 as for SD3.5 Medium (velocity errors, Flow-DPO),
    no prompt dropout (a guidance-distilled model has no unconditional branch to train). Differences from the reference:
    the pipeline's 1024² rather than Flow-GRPO's 512² (`bench run` trains at the VAE's sample size), hence gradient
    checkpointing (Flow-GRPO runs without it at 512²); checkpoints every 60 steps (its save_freq: 30 epochs of 2 steps).
    Training forwards that pass no guidance scale (every offline method's; online rollouts pass their own) give the
    transformer the same distilled guidance 3.5 (`TrainConfig.train_guidance`), as diffusers' FLUX training scripts do
    (huggingface/diffusers examples/dreambooth/train_dreambooth_lora_flux.py @0050dea: `guidance =
    torch.tensor([args.guidance_scale]).expand(bsz)` when `transformer.config.guidance_embeds`, `--guidance_scale`
    3.5 by default, "the FLUX.1 dev variant is a guidance distilled model"); the default 1 would train the policy at
    a scale this suite never samples at.

    The online methods roll out at that distilled 3.5 too (`flow-grpo` and `diffusionnft` `guidance`: one transformer
    call per latent, no CFG batch), as this suite evaluates and DanceGRPO's FLUX recipe samples (XueZeyue/DanceGRPO
    fastvideo/train_grpo_flux.py @22b85ef: guidance embedding 3.5, no CFG); their defaults (Flow-GRPO's SD3.5 CFG
    4.5, DiffusionNFT's CFG-free 1) would give FLUX.1-dev an embedded scale it was not distilled for. For DiffusionNFT
    this is its CFG-free sampling on a guidance-distilled model (an adaptation: its repository trains SD3.5-M only):
    the policy is the one velocity field u_θ(x, σ, c, 3.5) in its rollouts, its training forwards (which pass no
    scale: `train_guidance`) and its evaluation.

    The variant `dpo-full` (`--methods dpo,dpo-full=dpo`) fine-tunes every weight instead, as DanceGRPO's FLUX recipe
    does under FSDP (XueZeyue/DanceGRPO scripts/finetune/finetune_flux_grpo.sh @22b85ef: 720², 16 sampling steps, 12
    images per prompt, lr 1e-5, weight decay 1e-4, bf16, 4 accumulation); the dry run estimates it unsharded.
    """
    guidance = 3.5  # FluxPipeline's default guidance_scale: what FLUX.1-dev samples and diffusers trains it at
    return pickapic_suite(
        name="flux-dev",
        description="FLUX.1-dev + Pick-a-Pic v2, Flow-GRPO's FLUX LoRA recipe; dpo-full=dpo fine-tunes every weight "
                    "(GPUs and the weights required)",
        pipeline="black-forest-labs/FLUX.1-dev",
        train=TrainConfig(lr=3e-4, batch_size=3, grad_accum=6, weight_decay=1e-4, prompt_dropout=0.0,
                          mixed_precision="bf16", checkpoint_every=60, gradient_checkpointing=True, lora_rank=64,
                          lora_alpha=128.0, lora_targets=FLUX_LORA_TARGETS, train_guidance=guidance),
        eval=EvalConfig(images_per_prompt=1, steps=28, guidance=guidance, batch_size=8),
        method_args={"dpo": {"beta": _FLOW_DPO_BETA}, "flow-grpo": {"guidance": guidance},
                     "diffusionnft": {"guidance": guidance}},
        train_args={"dpo-full": {"lr": 1e-5, "lora_rank": 0, "lora_alpha": None, "lora_targets": LORA_TARGETS}},
        variants={"dpo-full": "dpo"},
        default_methods=("dpo",),
        dtype="bf16",
    )
