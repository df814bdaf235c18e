"""Image generation with fixed per-image seeds: deterministic DDIM (η = 0) with classifier-free guidance.

Each image's initial noise comes from its own generator seeded with its seed, so an image does not
depend on its batch (the same prompt and seed give the same image for every method and the base
model). The update is the DDIM map x' = a' x̂0 + s' ε̂ of the Backbone's denoised pair
(`methods.inversion.base.denoising_step`), on the levels of `Backbone.timesteps` and then the clean end, so every
family and parametrisation samples through the same code: on a VP schedule it is diffusers' `DDIMScheduler.step`
(η = 0) up to the rounding of its float32 coefficients, on a flow schedule the Euler step x + (σ' − σ) u of
`FlowMatchEulerDiscreteScheduler.step` (tests/test_flow_samplers.py).
"""

from __future__ import annotations

import torch

from bench.core.backbone import Backbone, Conditioning
from bench.core.progress import progress_bar
from methods.alignment.base import Reward
from methods.inference import InferenceTimeMethod
from methods.inversion.base import denoising_step, sampling_levels


def initial_noise(seeds: list[int], shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, *shape) standard normal noise, image i drawn from a generator seeded with seeds[i]."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s)), dtype=dtype)
                        for s in seeds])


@torch.no_grad()
def sample_latents(backbone: Backbone, cond: Conditioning, seeds: list[int], *, steps: int,
                   guidance: float) -> torch.Tensor:
    """Deterministic DDIM sampling (the Euler step on a flow schedule) from seeded noise; returns latents
    (B, C, h, w)."""
    x = initial_noise(seeds, backbone.latent_shape).to(backbone.device, backbone.latent_dtype)
    path = sampling_levels(backbone, steps).flip(0)  # (N+1,) the sampling levels, descending, then the clean end
    for src, dst in zip(path[:-1], path[1:]):
        x = denoising_step(backbone, x, src, dst, cond, guidance)
    return x


def generate_inference_time(backbone: Backbone, method: InferenceTimeMethod, prompts: list[str], seeds: list[int],
                            reward: Reward, *, run_seed: int = 0, batch_size: int = 128, progress: bool = False,
                            desc: str = "sampling") -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1] of an inference-time method (e.g. DOODL), `batch_size` images per call: image i
    from the base model's own initial noise for seeds[i] (so the comparison with the base stays paired), with its own
    generator for what the method draws (seeded from the run's seed and seeds[i], never the noise's seed), so an
    image does not depend on its batch (`InferenceTimeMethod.generate`) and runs of other seeds differ as trainings
    of other seeds do."""
    images = []
    bar = progress_bar(total=len(prompts), enabled=progress, desc=desc, unit="image")
    for start in range(0, len(prompts), batch_size):
        chunk_prompts, chunk_seeds = prompts[start:start + batch_size], seeds[start:start + batch_size]
        noise = initial_noise(chunk_seeds, backbone.latent_shape).to(backbone.device, backbone.latent_dtype)
        rngs = [torch.Generator().manual_seed(2**31 + 1_000_003 * int(run_seed) + int(seed)) for seed in chunk_seeds]
        latents = method.generate(backbone, backbone.encode_prompts(chunk_prompts), noise, chunk_prompts, reward, rngs)
        with torch.no_grad():
            images.append(backbone.decode(latents.detach()))
        bar.update(len(chunk_prompts))
    bar.close()
    return torch.cat(images)


@torch.no_grad()
def generate(backbone: Backbone, prompts: list[str], seeds: list[int], *, steps: int, guidance: float,
             batch_size: int = 128, progress: bool = False, desc: str = "sampling") -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1] for prompts[i] with seeds[i]."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    images = []
    starts = range(0, len(prompts), batch_size)
    for start in progress_bar(starts, enabled=progress, desc=desc, unit="batch"):
        chunk = slice(start, start + batch_size)
        cond = backbone.encode_prompts(prompts[chunk])
        latents = sample_latents(backbone, cond, seeds[chunk], steps=steps, guidance=guidance)
        images.append(backbone.decode(latents))
    return torch.cat(images)
