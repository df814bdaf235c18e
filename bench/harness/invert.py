"""`bench invert`: reconstruction quality and speed of inversion samplers on the same images.

For each guidance scale and each sampler: encode the images, invert along the `steps`-step DDIM
level path, reconstruct, and measure latent MSE, pixel MSE and PSNR against the encoded/decoded
original, the NFE per image in each direction (UNet evaluations of one latent, from the Backbone's
counter), the state the sampler keeps between inversion and reconstruction (per image, in latents,
`fixed + per_step · N`, counted from the `InversionState` it returns), wall time, and

    overhead_ratio = (seconds_invert + seconds_reconstruct) / ((nfe_invert + nfe_reconstruct) / g × t_fwd)

where the NFE are UNet evaluations per image, t_fwd is one guided evaluation of the batch (a UNet
call on B latents, or on 2B under classifier-free guidance, where g = 2; else g = 1) timed in the
same run, so the compute floor is 1.0. Samplers that batch more latents into one call than that
(edit-friendly DDPM inverts all steps at once) can beat the floor's shape and report their time
against it all the same. At guidance 1 on a VP pipeline a DDIM loop run by diffusers' own `DDIMInverseScheduler` on
the same pipeline is reported beside ours: the largest latent difference and the speed ratio (diffusers has no
inverse scheduler for a flow schedule, so a flow pipeline's record has none).

Each sampler runs with its Config (`bench invert --sampler-arg NAME.FIELD=VALUE`; default: the paper's
settings), and the result's `config.sampler_configs` records every field of each.

`invert_record` wraps the result as an `invert` record (`bench.core.records.INVERT`, the `invert.json` that
`bench.results.inversion` writes with its table and figures); `speed_record` adds each sampler's time relative
to DDIM for `bench speed`.

Guidance 1 alone hides differences: null-text
and NPI are DDIM there, and DDIM inversion's error grows with the guidance (p2p #27); the committed
record is made at both 1 and 7.5, prompt-to-prompt's scale (`bench invert --guidances 1,7.5`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from diffusers import DDIMInverseScheduler

from bench.core.backbone import Backbone, Conditioning
from bench.core.config import as_dict
from bench.core.progress import progress_bar
from bench.core.records import INVERT, new_record
from bench.harness.data import decode_images, image_files
from bench.harness.suites import get_suite
from bench.toy.world import held_out_combos, render_dataset, split_combos
from methods.inversion import SAMPLERS
from methods.inversion.base import sampling_levels

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class InvertConfig:
    samplers: tuple[str, ...] = ("ddim",)
    steps: int = 50
    guidances: tuple[float, ...] = (1.0,)  # classifier-free guidance scales, each for inversion and reconstruction
    dtype: str = "float32"
    seed: int = 0  # for samplers that draw noise (ddpm-ef)
    repeats: int = 1  # timed runs per sampler; the median is reported
    timing_repeats: int = 5  # timed UNet invocations for t_fwd
    sampler_configs: dict[str, object] = field(default_factory=dict)  # sampler -> its Config (absent: the defaults)

    def __post_init__(self):
        if self.steps < 2:
            raise ValueError(f"steps must be >= 2, got {self.steps}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if not self.guidances:
            raise ValueError("give at least one guidance scale")
        if any(not w >= 0 for w in self.guidances):
            raise ValueError(f"guidance must be >= 0, got {', '.join(map(str, self.guidances))}")
        if len(set(self.guidances)) != len(self.guidances):
            raise ValueError(f"a guidance scale is listed twice: {', '.join(map(str, self.guidances))}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        SAMPLERS.check(list(self.samplers))
        for name, config in self.sampler_configs.items():
            if name not in self.samplers:
                raise ValueError(f"a Config for sampler {name!r}, which is not in --samplers ({', '.join(self.samplers)})")
            if not isinstance(config, SAMPLERS.get(name).Config):
                raise TypeError(f"sampler {name} takes its Config ({SAMPLERS.get(name).Config.__name__}), got {config!r}")
        for name in self.samplers:
            limit = SAMPLERS.get(name).max_steps
            if limit is not None and self.steps > limit:
                raise ValueError(f"{name} is defined for at most {limit} steps, got --steps {self.steps}")

    def sampler(self, name: str):
        """Sampler `name` built with its Config."""
        return SAMPLERS.get(name)(self.sampler_configs.get(name))


def load_image_dir(path: Path, size: int) -> torch.Tensor:
    """Every .png/.jpg/.jpeg/.webp in `path` (natural name order), resized and centre-cropped: (N, 3, size, size)."""
    return decode_images([p.read_bytes() for p in image_files(path)], size)


def held_out_images(count: int) -> tuple[torch.Tensor, list[str]]:
    """(images (count, 3, 32, 32), captions): the first `count` held-out toy captions rendered once each (seed 0),
    what `bench invert` and `bench speed` invert by default; ValueError unless 1 <= count <= 64 (distinct captions)."""
    available = len(split_combos().test)
    if not 1 <= count <= available:
        raise ValueError(f"--images {count}: the toy world has {available} held-out captions; choose 1 to {available}")
    return render_dataset(held_out_combos(count), 1, seed=0)


def check_schedules(samplers, native_space: str) -> None:
    """ValueError (one line) naming the first of `samplers` not defined on the schedule of a backbone predicting
    `native_space` (e.g. a flow-only sampler on a VP pipeline): checked before any work."""
    for name in samplers:
        SAMPLERS.get(name).check_schedule(native_space)


def load_inputs(pipeline: str | None = None, images_dir: Path | None = None, prompt: str = "",
                count: int = 8) -> tuple[Backbone, torch.Tensor, list[str]]:
    """(backbone, images (N, 3, H, W), prompts) to invert: the pipeline `pipeline` (default: the toy suite's) and
    every image of `images_dir` at its size, each with `prompt`; without `images_dir`, `held_out_images(count)`,
    checked before the pipeline loads."""
    toy = held_out_images(count) if images_dir is None else None
    backbone = Backbone.from_pretrained(pipeline or get_suite("toy").pipeline)
    if toy is not None:
        return backbone, *toy
    images = load_image_dir(images_dir, backbone.image_size)
    return backbone, images, [prompt] * len(images)


def median_seconds(fn, repeats: int) -> float:
    """Median wall seconds of `repeats` calls of `fn`, after one untimed warm-up call."""
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _forward_time(backbone: Backbone, x: torch.Tensor, cond: Conditioning, guidance: float, repeats: int) -> float:
    """Median seconds of one UNet invocation at the batch shape `eps` uses (2B under CFG)."""
    with torch.no_grad():
        return median_seconds(lambda: backbone.eps(x, 500, cond, guidance), repeats)


def _psnr(mse: float) -> float:
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def diffusers_ddim_inversion(backbone: Backbone, x0: torch.Tensor, cond: Conditioning, steps: int) -> torch.Tensor:
    """The same DDIM inversion (w = 1) run by diffusers' `DDIMInverseScheduler` loop, for comparison. VP only:
    ValueError on a flow schedule (the inverse scheduler reads `alphas_cumprod`)."""
    if backbone.is_flow:
        raise ValueError("diffusers' DDIMInverseScheduler runs the VP (alphas_cumprod) schedule; this backbone's is a "
                         "flow schedule, so there is no diffusers DDIM inversion to compare with")
    inverse = DDIMInverseScheduler.from_config(backbone.scheduler.config)
    inverse.register_to_config(prediction_type="epsilon")  # we hand it ε whatever the model predicts
    inverse.set_timesteps(steps)
    z = x0.clone()
    with torch.no_grad():
        for t in inverse.timesteps:
            z = inverse.step(backbone.eps(z, int(t), cond), t, z).prev_sample
    return z


def _timed_round_trip(backbone: Backbone, sampler, x0: torch.Tensor, cond: Conditioning, levels: torch.Tensor,
                      guidance: float, seed: int) -> dict:
    backbone.nfe.reset()
    start = time.perf_counter()
    state = sampler.invert(backbone, x0, cond, levels, guidance=guidance, rng=torch.Generator().manual_seed(seed))
    seconds_invert = time.perf_counter() - start
    forward_invert, calls_invert = backbone.nfe.forward, backbone.nfe.calls
    backbone.nfe.reset()
    start = time.perf_counter()
    with torch.no_grad():
        latents = sampler.reconstruct(backbone, state, cond, guidance=guidance)
    return {"latents": latents, "stored": state.stored_size(), "seconds_invert": seconds_invert,
            "seconds_reconstruct": time.perf_counter() - start, "forward_invert": forward_invert,
            "calls_invert": calls_invert, "forward_reconstruct": backbone.nfe.forward, "calls_reconstruct": backbone.nfe.calls}


def run_inversion_benchmark(backbone: Backbone, images: torch.Tensor, prompts: list[str], cfg: InvertConfig, *,
                            progress: bool = True) -> dict:
    """One record per guidance scale and sampler, plus the diffusers reference; images (N, 3, H, W) in [0, 1]."""
    dtype = DTYPES[cfg.dtype]
    backbone.to(dtype=dtype)
    cond = backbone.encode_prompts(prompts)
    x0 = backbone.encode_images(images.to(dtype))  # (N, C, h, w)
    reference_pixels = backbone.decode(x0)
    levels = sampling_levels(backbone, cfg.steps)
    n = x0.shape[0]
    records = []
    for guidance in cfg.guidances:
        with torch.no_grad():  # warm-up: the first UNet calls of a process or shape are slow (allocator, kernels)
            for t in (1, 500, 999):
                backbone.eps(x0, t, cond, guidance)
        t_fwd = _forward_time(backbone, x0, cond, guidance, cfg.timing_repeats)
        for name in progress_bar(cfg.samplers, enabled=progress, desc=f"samplers at guidance {guidance:g}"):
            records.append(_sampler_record(backbone, cfg.sampler(name), x0, reference_pixels, cond, levels,
                                           guidance, t_fwd, cfg))
    reference = None
    if 1.0 in cfg.guidances and not backbone.is_flow:  # diffusers' reference is VP only
        ours = SAMPLERS.get("ddim")().invert(backbone, x0, cond, levels).latents
        ours_seconds = median_seconds(lambda: SAMPLERS.get("ddim")().invert(backbone, x0, cond, levels), 1)
        theirs_seconds = median_seconds(lambda: diffusers_ddim_inversion(backbone, x0, cond, cfg.steps), 1)
        theirs = diffusers_ddim_inversion(backbone, x0, cond, cfg.steps)
        reference = {"implementation": "diffusers.DDIMInverseScheduler", "max_abs_latent_diff":
                     (ours - theirs).abs().max().item(), "seconds_ours": ours_seconds, "seconds_diffusers": theirs_seconds,
                     "speed_ratio_ours_over_diffusers": ours_seconds / theirs_seconds}
    return {"config": {"samplers": list(cfg.samplers),
                       "sampler_configs": {name: as_dict(cfg.sampler(name).config) for name in cfg.samplers},
                       "steps": cfg.steps, "guidances": list(cfg.guidances),
                       "dtype": cfg.dtype, "images": n, "prompts": prompts},
            "records": records, "diffusers_reference": reference}


def invert_record(backbone: Backbone, images: torch.Tensor, prompts: list[str], cfg: InvertConfig, *,
                  progress: bool = True) -> dict:
    """`run_inversion_benchmark` as an `invert` record (`bench.core.records.INVERT`, `invert.json`) that names the
    pipeline."""
    result = run_inversion_benchmark(backbone, images, prompts, cfg, progress=progress)
    return new_record(INVERT, **result, pipeline=backbone.source)


def speed_record(backbone: Backbone, images: torch.Tensor, prompts: list[str], cfg: InvertConfig) -> dict:
    """`bench speed`: the `invert_record` of `cfg` with DDIM run first as the reference (added when not among its
    samplers), every sampler's record with `time_vs_ddim`: its seconds to invert and reconstruct over DDIM's."""
    cfg = replace(cfg, samplers=tuple(dict.fromkeys(("ddim", *cfg.samplers))))
    record = invert_record(backbone, images, prompts, cfg, progress=False)
    ddim = next(r for r in record["records"] if r["sampler"] == "ddim")
    for r in record["records"]:
        r["time_vs_ddim"] = (r["seconds_invert"] + r["seconds_reconstruct"]) / (
            ddim["seconds_invert"] + ddim["seconds_reconstruct"])
    return record


def _sampler_record(backbone: Backbone, sampler, x0: torch.Tensor, reference_pixels: torch.Tensor, cond: Conditioning,
                    levels: torch.Tensor, guidance: float, t_fwd: float, cfg: InvertConfig) -> dict:
    """`cfg.repeats` timed round trips of one sampler at one guidance scale: errors, NFE, stored state, medians."""
    n = x0.shape[0]
    runs = [_timed_round_trip(backbone, sampler, x0, cond, levels, guidance, cfg.seed) for _ in range(cfg.repeats)]
    seconds_invert = sorted(r["seconds_invert"] for r in runs)[len(runs) // 2]
    seconds_reconstruct = sorted(r["seconds_reconstruct"] for r in runs)[len(runs) // 2]
    recon, counts, stored = runs[-1]["latents"], runs[-1], runs[-1]["stored"]
    nfe_invert, calls_invert = counts["forward_invert"] / n, counts["calls_invert"]
    nfe_reconstruct, calls_reconstruct = counts["forward_reconstruct"] / n, counts["calls_reconstruct"]
    latent_mse = ((recon.double() - x0.double()) ** 2).mean().item()
    pixel_mse = ((backbone.decode(recon).double() - reference_pixels.double()) ** 2).mean().item()
    floor = (nfe_invert + nfe_reconstruct) / (1 if guidance == 1.0 else 2) * t_fwd
    return {
        "sampler": sampler.name, "exact": sampler.exact, "stochastic": sampler.stochastic, "steps": cfg.steps,
        "guidance": guidance, "dtype": cfg.dtype, "images": n, "latent_mse": latent_mse, "pixel_mse": pixel_mse,
        "psnr": _psnr(pixel_mse), "nfe_invert": nfe_invert, "nfe_reconstruct": nfe_reconstruct,
        "calls_invert": calls_invert, "calls_reconstruct": calls_reconstruct,
        "stored_latents": stored.total, "stored_latents_fixed": stored.fixed, "stored_latents_per_step": stored.per_step,
        "seconds_invert": seconds_invert, "seconds_reconstruct": seconds_reconstruct, "t_fwd": t_fwd,
        "overhead_ratio": (seconds_invert + seconds_reconstruct) / floor if floor else None,
    }
