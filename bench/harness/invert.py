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
against it all the same. At guidance 1 a DDIM loop run by diffusers' own `DDIMInverseScheduler` on
the same pipeline is reported beside ours: the largest latent difference and the speed ratio.

Guidance 1 alone hides differences: null-text
and NPI are DDIM there, and DDIM inversion's error grows with the guidance (p2p #27); the committed
record is made at both 1 and 7.5, prompt-to-prompt's scale (`bench invert --guidances 1,7.5`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDIMInverseScheduler

from bench.core.backbone import Backbone, Conditioning
from bench.core.progress import progress_bar
from bench.harness.data import decode_images, image_files
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
        for name in self.samplers:
            limit = SAMPLERS.get(name).max_steps
            if limit is not None and self.steps > limit:
                raise ValueError(f"{name} is defined for at most {limit} steps, got --steps {self.steps}")


def load_image_dir(path: Path, size: int) -> torch.Tensor:
    """Every .png/.jpg/.jpeg/.webp in `path` (natural name order), resized and centre-cropped: (N, 3, size, size)."""
    return decode_images([p.read_bytes() for p in image_files(path)], size)


def _time_call(fn, repeats: int) -> float:
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
        return _time_call(lambda: backbone.eps(x, 500, cond, guidance), repeats)


def _psnr(mse: float) -> float:
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def diffusers_ddim_inversion(backbone: Backbone, x0: torch.Tensor, cond: Conditioning, steps: int) -> torch.Tensor:
    """The same DDIM inversion (w = 1) run by diffusers' `DDIMInverseScheduler` loop, for comparison."""
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
            records.append(_sampler_record(backbone, SAMPLERS.get(name)(), x0, reference_pixels, cond, levels,
                                           guidance, t_fwd, cfg))
    reference = None
    if 1.0 in cfg.guidances:
        ours = SAMPLERS.get("ddim")().invert(backbone, x0, cond, levels).latents
        ours_seconds = _time_call(lambda: SAMPLERS.get("ddim")().invert(backbone, x0, cond, levels), 1)
        theirs_seconds = _time_call(lambda: diffusers_ddim_inversion(backbone, x0, cond, cfg.steps), 1)
        theirs = diffusers_ddim_inversion(backbone, x0, cond, cfg.steps)
        reference = {"implementation": "diffusers.DDIMInverseScheduler", "max_abs_latent_diff":
                     (ours - theirs).abs().max().item(), "seconds_ours": ours_seconds, "seconds_diffusers": theirs_seconds,
                     "speed_ratio_ours_over_diffusers": ours_seconds / theirs_seconds}
    return {"config": {"samplers": list(cfg.samplers), "steps": cfg.steps, "guidances": list(cfg.guidances),
                       "dtype": cfg.dtype, "images": n, "prompts": prompts},
            "records": records, "diffusers_reference": reference}


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
