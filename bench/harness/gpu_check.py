"""`bench gpu-check`: what the suite costs at SD 1.5 / SDXL shapes, measured on the device, beside the dry run's
estimate and the reference code's cost on the same weights.

Random weights of the real shapes are built from the official configs (`bench.core.real_configs`: no downloads), the
frozen denoiser and text encoders in fp16 as the real suites hold them (`dtype` fp16; the VAE fp32), per family
(`sd15`: suite sd15-pickapic, `sdxl`: sdxl-pickapic):

1. methods. Each alignment method trains `warmup + steps` optimizer steps with the suite's settings at its
   per-process micro-batch (`batch_size`; one micro-batch per step, `grad_accum` = 1: a recipe step of `grad_accum`
   micro-batches takes about `grad_accum` times as long), the batch halved on CUDA out-of-memory (the batch used is
   recorded). Under fp16 mixed precision the loss scaler skips the optimizer step while the scaled gradients overflow
   (random weights often do at its initial scale): then no optimizer state exists and the peak would miss it, so
   while every step was skipped the warm-up is doubled and the method rerun (up to `MAX_WARMUP` steps); the warm-up
   used and the skipped steps are recorded, and a peak without any optimizer step gets no ratio. Measured: seconds
   per step (median of the timed steps, `bench.harness.method_speed.step_timings`) and the peak of
   `torch.cuda.max_memory_allocated` over training, the pipeline's resident weights included as the dry run counts
   them, beside the dry run's estimate of the same configuration on one process (`bench.harness.dryrun.dry_run`):
   ratio = (peak − reward model) / estimate. The preference data are random latents of the pipeline's shape (the
   compute does not depend on their values); online methods train on a PickScore-shaped reward with random weights
   (`PickScoreScorer.from_config`), built once per family and resident beside the pipeline while every method
   trains; the dry run counts no reward model, so its bytes are reported and subtracted from every peak.
2. sampling. Images per second of the suite's sampler (`bench.harness.sampling.sample_latents`: DDIM η = 0 with
   classifier-free guidance) against diffusers' `StableDiffusionPipeline` / `StableDiffusionXLPipeline` built on the
   same modules and scheduler, both given the same prompt embeddings and initial noise and returning latents (no
   decode): 50 steps, CFG 7.5, batch 8 by default. Reported: the ratio of seconds ours / reference and the largest
   latent difference (the two compute the same chain: in float32 they agree to rounding; with fp16 weights ours
   keeps the latents in float32 and the pipeline in fp16, so they part by its rounding, ours the nearer to the exact
   chain).
3. scoring. Images per second of `hps` and `pickscore` (random weights of their real towers: open_clip ViT-H-14,
   transformers CLIP ViT-H/14) batched at 32 against a per-image loop of the same model on the same images (as
   `hpsv2.score` loops): the ratio loop / batched of seconds and the largest score difference.
4. toy. `bench run --methods dpo`'s seconds per optimizer step on the toy pipeline (`bench speed --methods dpo`).

`tiny=True` (`--tiny`) runs the same code on tiny shapes (`TINY_CONFIGS`, tiny scorer towers) in float32, as the
default tests do on the CPU. The CPU has no allocator statistics: peak memory is measured on CUDA only (the memory
cells stay empty elsewhere). Every phase's seconds are recorded, so the report says how the check's time splits.
Device times are read after `torch.cuda.synchronize()`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import gc
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from rich.table import Table
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from bench.core.backbone import Backbone
from bench.core.budget import Budget
from bench.core.clip_bpe import clip_bpe_tokenizer
from bench.core.config import PIPELINE_DTYPES
from bench.core.real_configs import PIPELINE_CONFIGS
from bench.core.records import GPU_CHECK, new_record
from bench.harness.data import EncodedPreferences
from bench.harness.dryrun import GiB, dry_run, write_config_files
from bench.harness.method_speed import step_timings, time_methods
from bench.harness.reward import ScorerReward
from bench.harness.run import RunSetupError, plan_run
from bench.harness.sampling import initial_noise, sample_latents
from bench.harness.suites import get_suite
from methods.alignment import METHODS, OnlineMethod
from methods.inference import InferenceTimeMethod
from metrics.hps import HPSScorer
from metrics.pickscore import PickScoreScorer

FAMILIES = {"sd15": "sd15-pickapic", "sdxl": "sdxl-pickapic"}  # family -> the suite whose recipe is measured

_TINY_TEXT = {"vocab_size": 49408, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
              "num_attention_heads": 2, "max_position_embeddings": 77, "projection_dim": 16}
_TINY_VAE = {"block_out_channels": [16, 16], "down_block_types": ["DownEncoderBlock2D"] * 2,
             "up_block_types": ["UpDecoderBlock2D"] * 2, "latent_channels": 4, "layers_per_block": 1,
             "norm_num_groups": 8, "sample_size": 16, "scaling_factor": 0.18215}
_TINY_UNET = {"sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
              "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
              "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "block_out_channels": [16, 32],
              "attention_head_dim": [2, 4], "norm_num_groups": 8, "cross_attention_dim": 16}
# the real pipelines' layout and schedules with tiny modules: SD 1.5-shaped and SDXL-shaped (two encoders, text_time)
TINY_CONFIGS: dict[str, dict[str, dict]] = {
    "sd15": {"model_index": {"_class_name": "StableDiffusionPipeline"}, "unet": _TINY_UNET, "vae": _TINY_VAE,
             "text_encoder": _TINY_TEXT,
             "scheduler": PIPELINE_CONFIGS["stable-diffusion-v1-5/stable-diffusion-v1-5"]["scheduler"]},
    "sdxl": {"model_index": {"_class_name": "StableDiffusionXLPipeline", "text_encoder_2": ["transformers", "x"]},
             "unet": {**_TINY_UNET, "cross_attention_dim": 32, "use_linear_projection": True,
                      "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
                      "projection_class_embeddings_input_dim": 6 * 8 + 16},
             "vae": _TINY_VAE, "text_encoder": _TINY_TEXT, "text_encoder_2": _TINY_TEXT,
             "scheduler": PIPELINE_CONFIGS["stabilityai/stable-diffusion-xl-base-1.0"]["scheduler"]},
}
# tiny towers of the scorers' architectures (open_clip CLIP for HPS, transformers CLIPModel for PickScore)
TINY_HPS = {"embed_dim": 16, "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "head_width": 16,
                                            "patch_size": 32},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
TINY_PICKSCORE = {"projection_dim": 16,
                  "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                                  "num_hidden_layers": 2, "max_position_embeddings": 77, "vocab_size": 49408},
                  "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
                                    "num_hidden_layers": 2, "patch_size": 32, "image_size": 224}}


@dataclasses.dataclass(frozen=True)
class GpuCheckConfig:
    device: str = dataclasses.field(default="cuda", metadata={"help": "torch device, e.g. cuda or cpu"})
    tiny: bool = dataclasses.field(default=False, metadata={"help": "tiny shapes in float32 (the CPU test)"})
    families: tuple[str, ...] = dataclasses.field(default=("sd15", "sdxl"), metadata={"help": "sd15, sdxl"})
    methods: tuple[str, ...] | None = dataclasses.field(default=None, metadata={
        "help": "alignment methods to time (default: every registered method that trains)"})
    steps: int | None = dataclasses.field(default=None, metadata={
        "help": "timed optimizer steps per method, median (default: 1)"})
    warmup: int | None = dataclasses.field(default=None, metadata={
        "help": "untimed optimizer steps first (default: 1; 0 with tiny)"})
    sample_batch: int = dataclasses.field(default=8, metadata={"help": "images per sampling call"})
    sample_steps: int = dataclasses.field(default=50, metadata={"help": "DDIM steps"})
    guidance: float = dataclasses.field(default=7.5, metadata={"help": "classifier-free guidance scale"})
    score_batch: int = dataclasses.field(default=32, metadata={"help": "images per batched scorer call"})
    repeats: int | None = dataclasses.field(default=None, metadata={
        "help": "timed repeats of sampling and scoring, median (default: 2; 1 with tiny)"})
    toy: bool = dataclasses.field(default=True, metadata={"help": "time the toy pipeline's dpo step too"})

    def __post_init__(self):
        for name, real, tiny in (("steps", 1, 1), ("warmup", 1, 0), ("repeats", 2, 1)):  # tiny: a smoke run
            if getattr(self, name) is None:
                object.__setattr__(self, name, tiny if self.tiny else real)
        unknown = set(self.families) - set(FAMILIES)
        if unknown or not self.families:
            raise RunSetupError(f"--families: expected some of {', '.join(FAMILIES)}, got {', '.join(self.families)}")
        if self.steps < 1 or self.warmup < 0 or self.repeats < 1:
            raise RunSetupError(f"steps and repeats must be >= 1 and warmup >= 0, got {self.steps}, {self.repeats}, "
                                f"{self.warmup}")
        for name in ("sample_batch", "sample_steps", "score_batch"):
            if getattr(self, name) < 1:
                raise RunSetupError(f"{name} must be >= 1, got {getattr(self, name)}")
        try:
            device = torch.device(self.device)
        except RuntimeError as err:
            raise RunSetupError(f"--device {self.device!r}: {err}") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RunSetupError("--device cuda: no CUDA device here; pass --device cpu --tiny to run the check on the CPU")
        if device.type == "cpu" and not self.tiny:
            raise RunSetupError("--device cpu builds SDXL-sized random models on the CPU (hours): add --tiny")
        trained_methods(self.methods)  # unknown, inference-time or flow-only methods: before any work

    @property
    def dtype(self) -> str:
        """The frozen weights' storage: the real suites' fp16 on CUDA at real shapes, float32 otherwise."""
        return "fp16" if torch.device(self.device).type == "cuda" and not self.tiny else "fp32"


# ---------------------------------------------------------------------------------------------- building
def family_configs(family: str, tiny: bool) -> dict[str, dict]:
    """The component configs of a family: its tiny stand-in or the official ones of the suite's hub id."""
    if tiny:
        return copy.deepcopy(TINY_CONFIGS[family])
    return copy.deepcopy(PIPELINE_CONFIGS[get_suite(FAMILIES[family]).pipeline])


def random_backbone(configs: dict[str, dict], device: str, dtype: torch.dtype, seed: int = 0) -> Backbone:
    """A Backbone of random weights (seeded) built on `device` from component configs: the denoiser and text encoders
    stored in `dtype`, the VAE in float32, as `Backbone.from_pretrained(dtype=...)` loads a real pipeline."""
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
        text = CLIPTextModel(CLIPTextConfig.from_dict(configs["text_encoder"]))
        text_2 = (CLIPTextModelWithProjection(CLIPTextConfig.from_dict(configs["text_encoder_2"]))
                  if "text_encoder_2" in configs else None)
    for module in (unet, text, text_2):
        if module is not None:
            torch.nn.Module.to(module, dtype)
    for module in (unet, vae, text, text_2):
        if module is not None:
            module.requires_grad_(False).eval()
    tokenizer = clip_bpe_tokenizer(configs["text_encoder"]["max_position_embeddings"])
    return Backbone(unet, vae, text, tokenizer, DDIMScheduler.from_config(configs["scheduler"]), text_encoder_2=text_2,
                    tokenizer_2=tokenizer if text_2 is not None else None, source="random weights")


def random_preferences(backbone: Backbone, pairs: int, seed: int = 0) -> EncodedPreferences:
    """`pairs` preference pairs of random latents of the backbone's shape, one prompt each (compute only)."""
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(2 * pairs, *backbone.latent_shape, generator=gen)  # (2N, C, h, w): winners then losers
    prompts = [f"a photo of object {i}" for i in range(pairs)]
    with torch.no_grad():
        cond = backbone.encode_prompts(prompts).to("cpu")
    winners, losers = torch.arange(pairs), torch.arange(pairs, 2 * pairs)
    return EncodedPreferences(latents, [str(i) for i in range(2 * pairs)], torch.arange(2 * pairs) % pairs, prompts,
                              cond, winners, losers, torch.arange(2 * pairs) < pairs)


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, object]:
    """(median seconds of `repeats` calls after one warm-up, the last result), synchronising CUDA around each call."""
    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    result = fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        result = fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


# ---------------------------------------------------------------------------------------------- the four checks
def trained_methods(names: tuple[str, ...] | None) -> list[str]:
    """The named methods, or every registered method that trains SD 1.5 / SDXL (inference-time ones have no step;
    flow-only ones do not train these variance-preserving pipelines)."""
    names = list(names) if names is not None else [
        n for n in METHODS.names() if not issubclass(METHODS.get(n), InferenceTimeMethod) and "vp" in METHODS.get(n).schedules]
    for name in names:
        if issubclass(METHODS.get(name), InferenceTimeMethod):
            raise RunSetupError(f"{name} is an inference-time method: it has no optimizer step to time")
        try:
            METHODS.get(name)().check_schedule("eps")  # SD 1.5 and SDXL predict ε on a VP schedule
        except ValueError as err:
            raise RunSetupError(f"{err} (SD 1.5 / SDXL)") from None
    return names


MAX_WARMUP = 16  # warm-up steps at most while the fp16 loss scaler skips every optimizer step (check_methods)


def check_methods(family: str, backbone: Backbone, configs: dict[str, dict], cfg: GpuCheckConfig,
                  reward: ScorerReward) -> Iterator[dict]:
    """Per method, as each finishes: batch used, seconds per step, peak device memory and the dry run's estimate
    (module docstring). A method whose step fails (other than by running out of memory at a batch that can still be
    halved) yields its row with `error` set, and the others still run."""
    device = torch.device(cfg.device)
    train_args = {"*": {"grad_accum": "1", **({} if cfg.dtype == "fp16" else {"mixed_precision": "no"})}}
    names = trained_methods(cfg.methods)
    with tempfile.TemporaryDirectory() as tmp:
        plan = plan_run(get_suite(FAMILIES[family]), names, budgets=[Budget("steps", cfg.warmup + cfg.steps)],
                        run_dir=Path(tmp) / "run", progress=False, train_args=train_args, dtype=cfg.dtype,
                        prompts=["(gpu-check: prompts not loaded)"],
                        pipeline=str(write_config_files(configs, Path(tmp) / "pipeline")), set_metrics=[])
        estimates = {m["method"]: m for m in dry_run(plan, processes=1).methods}
    reward_bytes = sum(p.numel() * p.element_size() for p in reward.scorers["pickscore"].backbone.model.parameters())
    for name, method in plan.methods.items():
        train = plan.train_configs[name]
        online = isinstance(method, OnlineMethod)
        row = {"method": name, "recipe_batch_size": train.batch_size, "grad_accum": 1,
               "recipe_grad_accum": get_suite(FAMILIES[family]).train.grad_accum}
        warmup = cfg.warmup
        try:
            while True:
                data = random_preferences(backbone, max(train.batch_size, 2), seed=0)
                gc.collect()  # the previous method's policy and optimizer sit in reference cycles (Trainer.fit)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                    row["allocated_before_bytes"] = torch.cuda.memory_allocated(device)  # the pipeline, reward model
                try:
                    steps = step_timings(method, backbone, data, train, steps=cfg.steps, warmup=warmup,
                                         reward=reward if online else None)
                    if steps[-1]["skipped_so_far"] < warmup + cfg.steps or warmup >= MAX_WARMUP:
                        break
                    warmup = min(max(2 * warmup, 1), MAX_WARMUP)  # no step taken: no optimizer state in the peak
                except torch.cuda.OutOfMemoryError:
                    if train.batch_size == 1:
                        raise
                    train = dataclasses.replace(train, batch_size=train.batch_size // 2)
        except Exception as err:  # noqa: BLE001 -- recorded in the row; the other methods are still measured
            yield {**row, "batch_size": train.batch_size, "error": f"{type(err).__name__}: {err}".splitlines()[0]}
            continue
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        estimate = estimates[name]["memory_bytes"]["total"] if train.batch_size == plan.train_configs[name].batch_size \
            else None  # the dry run's estimate is of the recipe's batch
        skipped = steps[-1]["skipped_so_far"]
        stepped = skipped < warmup + cfg.steps  # else the peak lacks the optimizer's state: no ratio
        yield {**row, "batch_size": train.batch_size, "mixed_precision": train.mixed_precision, "warmup": warmup,
               "optimizer_steps_skipped": skipped,
               "seconds_per_step": statistics.median(s["seconds"] for s in steps),
               "nfe_per_step": statistics.median(s["nfe"] for s in steps),
               "peak_bytes": peak, "reward_model_bytes": reward_bytes, "estimated_bytes": estimate,
               "measured_over_estimated": (peak - reward_bytes) / estimate if peak is not None and estimate and stepped
               else None}


def reference_pipeline(backbone: Backbone):
    """diffusers' own pipeline class of the family on the backbone's modules and a copy of its scheduler."""
    parts = dict(vae=backbone.vae, text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer, unet=backbone.unet,
                 scheduler=DDIMScheduler.from_config(backbone.scheduler.config))
    if backbone.family == "sdxl":
        return StableDiffusionXLPipeline(**parts, text_encoder_2=backbone.text_encoder_2,
                                         tokenizer_2=backbone.tokenizer_2,
                                         force_zeros_for_empty_prompt=backbone.force_zeros_for_empty_prompt)
    return StableDiffusionPipeline(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def check_sampling(family: str, backbone: Backbone, cfg: GpuCheckConfig) -> dict:
    """Seconds per batch of the suite's sampler and of diffusers' pipeline on the same weights (module docstring)."""
    device = torch.device(cfg.device)
    seeds = list(range(cfg.sample_batch))
    prompts = [f"a photo of object {i}" for i in seeds]
    with torch.no_grad():
        cond, null = backbone.encode_prompts(prompts), backbone.null_conditioning(len(prompts))
    ours_s, ours = timed(lambda: sample_latents(backbone, cond, seeds, steps=cfg.sample_steps, guidance=cfg.guidance),
                         device, cfg.repeats)
    pipe = reference_pipeline(backbone)
    pipe.set_progress_bar_config(disable=True)
    noise = initial_noise(seeds, backbone.latent_shape).to(device, backbone.dtype)
    size = backbone.image_size
    kwargs = dict(prompt_embeds=cond.embeds, negative_prompt_embeds=null.embeds.contiguous(), latents=noise,
                  num_inference_steps=cfg.sample_steps, guidance_scale=cfg.guidance, height=size, width=size,
                  output_type="latent")
    if backbone.family == "sdxl":
        kwargs.update(pooled_prompt_embeds=cond.added["text_embeds"],
                      negative_pooled_prompt_embeds=null.added["text_embeds"].contiguous(),
                      original_size=(size, size), target_size=(size, size))
    with torch.no_grad():
        ref_s, ref = timed(lambda: pipe(**kwargs).images, device, cfg.repeats)
    return {"family": family, "batch": cfg.sample_batch, "steps": cfg.sample_steps, "guidance": cfg.guidance,
            "ours_seconds": ours_s, "reference_seconds": ref_s, "reference": type(pipe).__name__,
            "ours_images_per_second": cfg.sample_batch / ours_s, "reference_images_per_second": cfg.sample_batch / ref_s,
            "ours_over_reference": ours_s / ref_s,
            "max_abs_latent_difference": float((ours.float() - ref.float().to(ours.device)).abs().max())}


def scoring_throughput(name: str, scorer, prompts: list[str], images: torch.Tensor, cfg: GpuCheckConfig) -> dict:
    """Seconds of `scorer` on all images in batches of `score_batch`, and in a loop of one image per call."""
    device = torch.device(cfg.device)
    with torch.no_grad():
        batched_s, batched = timed(lambda: scorer.score(prompts, images), device, cfg.repeats)
        scorer.config = dataclasses.replace(scorer.config, batch_size=1)  # the same model, one image per call
        loop_s, looped = timed(lambda: torch.cat([scorer.score([p], images[i:i + 1]) for i, p in enumerate(prompts)]),
                               device, cfg.repeats)
    return {"scorer": name, "images": len(prompts), "batched_seconds": batched_s, "loop_seconds": loop_s,
            "batched_images_per_second": len(prompts) / batched_s, "loop_images_per_second": len(prompts) / loop_s,
            "loop_over_batched": loop_s / batched_s, "max_abs_score_difference": float((batched - looped).abs().max())}


def check_scoring(cfg: GpuCheckConfig) -> list[dict]:
    """Batched against per-image scoring of hps and pickscore on random weights of their real shapes."""
    images = torch.rand(cfg.score_batch, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    prompts = [f"a photo of object {i}" for i in range(cfg.score_batch)]
    hps = HPSScorer.from_config(TINY_HPS if cfg.tiny else None, batch_size=cfg.score_batch, device=cfg.device)
    out = [scoring_throughput("hps", hps, prompts, images, cfg)]
    del hps  # one ViT-H on the device at a time
    pick = PickScoreScorer.from_config(TINY_PICKSCORE if cfg.tiny else None, batch_size=cfg.score_batch,
                                       device=cfg.device)
    return [*out, scoring_throughput("pickscore", pick, prompts, images, cfg)]


def gpu_check(cfg: GpuCheckConfig, progress: Callable[[str], None] = lambda message: None,
              save: Callable[[dict], None] = lambda record: None) -> dict:
    """Run the four checks (module docstring) and return the `gpu-check` record. `save` receives the record so far
    (`complete` False) after every method and phase, so a run stopped part-way keeps what it measured."""
    device = torch.device(cfg.device)
    phases: dict[str, float] = {}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    report: dict = {"families": {}, "sampling": [], "scoring": [], "toy": None}

    def record(complete: bool) -> dict:
        return new_record(GPU_CHECK, config=dataclasses.asdict(cfg), device={"type": device.type, "name": name,
                          "threads": torch.get_num_threads()}, phases=dict(phases), complete=complete,
                          **copy.deepcopy(report))

    @contextlib.contextmanager
    def phase(label: str):
        progress(label)
        start = time.perf_counter()
        yield
        phases[label] = time.perf_counter() - start
        save(record(complete=False))

    for family in cfg.families:
        configs = family_configs(family, cfg.tiny)
        with phase(f"{family}: build"):
            backbone = random_backbone(configs, cfg.device, PIPELINE_DTYPES[cfg.dtype])
            reward = ScorerReward("pickscore", scorers={
                "pickscore": PickScoreScorer.from_config(TINY_PICKSCORE if cfg.tiny else None, device=cfg.device)})
        with phase(f"{family}: methods"):
            rows = report["families"][family] = []
            for row in check_methods(family, backbone, configs, cfg, reward):
                rows.append(row)
                progress(f"{family}: {row['method']} " + (f"failed: {row['error']}" if "error" in row else
                         f"{row['seconds_per_step']:.3f} s / step at batch {row['batch_size']}, peak "
                         f"{_gib(row['peak_bytes'])} GiB, dry run {_gib(row['estimated_bytes'])} GiB"))
                save(record(complete=False))
        del reward
        with phase(f"{family}: sampling"):
            report["sampling"].append(check_sampling(family, backbone, cfg))
        del backbone
        if device.type == "cuda":
            torch.cuda.empty_cache()
    with phase("scoring"):
        report["scoring"] = check_scoring(cfg)
    if cfg.toy:
        with phase("toy dpo"):
            report["toy"] = time_methods(get_suite("toy"), ["dpo"], steps=cfg.steps, warmup=cfg.warmup,
                                         repeats=cfg.repeats)[0]
    return record(complete=True)


# ---------------------------------------------------------------------------------------------- the tables
def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / GiB:.2f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def report_tables(record: dict) -> list[Table]:
    """Methods (time, memory vs dry run), sampling and scoring ratios, and where the time went."""
    device = f"{record['device']['name']} ({record['device']['type']})"
    tables = []
    for family, rows in record["families"].items():
        table = Table(title=f"{family} ({'tiny shapes' if record['config']['tiny'] else 'real shapes'}, random "
                            f"weights) on {device}: one micro-batch per step; peak = max_memory_allocated")
        for column in ("method", "batch", "warm-up (skipped)", "s / step", "NFE / step", "peak GiB", "reward model GiB",
                       "dry-run GiB", "measured / estimate"):
            table.add_column(column, justify="left" if column == "method" else "right")
        for r in rows:
            if "error" in r:
                table.add_row(r["method"], str(r["batch_size"]), "-", f"[red]failed: {r['error']}[/]", *["-"] * 5)
                continue
            batch = str(r["batch_size"]) + ("" if r["batch_size"] == r["recipe_batch_size"]
                                            else f" (recipe {r['recipe_batch_size']})")
            table.add_row(r["method"], batch, f"{r['warmup']} ({r['optimizer_steps_skipped']})",
                          f"{r['seconds_per_step']:.3f}", f"{r['nfe_per_step']:.0f}", _gib(r["peak_bytes"]),
                          _gib(r["reward_model_bytes"]), _gib(r["estimated_bytes"]),
                          _ratio(r["measured_over_estimated"]))
        tables.append(table)
    sampling = Table(title="sampling: images / s of the suite's sampler and of diffusers' pipeline, same weights")
    for column in ("family", "batch x steps, CFG", "ours img/s", "diffusers img/s", "ours / diffusers time",
                   "max |Δ latent|"):
        sampling.add_column(column, justify="left" if column == "family" else "right")
    for s in record["sampling"]:
        sampling.add_row(s["family"], f"{s['batch']} x {s['steps']}, {s['guidance']:g}",
                         f"{s['ours_images_per_second']:.2f}", f"{s['reference_images_per_second']:.2f}",
                         f"{s['ours_over_reference']:.3f}", f"{s['max_abs_latent_difference']:.2e}")
    tables.append(sampling)
    scoring = Table(title="scoring: batched against a per-image loop of the same model")
    for column in ("scorer", "images", "batched img/s", "loop img/s", "loop / batched time", "max |Δ score|"):
        scoring.add_column(column, justify="left" if column == "scorer" else "right")
    for s in record["scoring"]:
        scoring.add_row(s["scorer"], str(s["images"]), f"{s['batched_images_per_second']:.1f}",
                        f"{s['loop_images_per_second']:.1f}", f"{s['loop_over_batched']:.2f}",
                        f"{s['max_abs_score_difference']:.2e}")
    tables.append(scoring)
    phases = Table(title="where the time went" + (f"; toy dpo: {record['toy']['seconds_per_step']:.3f} s / step"
                                                  if record.get("toy") else ""))
    phases.add_column("phase")
    phases.add_column("seconds", justify="right")
    for name, seconds in record["phases"].items():
        phases.add_row(name, f"{seconds:.1f}")
    phases.add_row("total", f"{sum(record['phases'].values()):.1f}")
    tables.append(phases)
    return tables
