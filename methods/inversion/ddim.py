"""DDIM inversion (Song et al. 2021; Dhariwal & Nichol 2021, App. F; Mokady et al. 2023, p2p
`NullInversion.next_step`) and DDIM sampling as its reverse.

Inversion step from level j to the next level k > j:

    z_k = Φ_{j→k}(z_j, ε̂(z_j, τ)),   τ = k ("target", diffusers' `DDIMInverseScheduler` since
                                             v0.21 and prompt-to-prompt) or τ = j ("source",
                                             diffusers v0.20, which InPO's official code ran)

Optionally `noise_scale · σ_{j→k} · N(0, I)` is added after each step, σ² = (1 − ᾱ_j)/(1 − ᾱ_k) ·
(1 − ᾱ_k/ᾱ_j) (DDPM posterior variance), as InPO's `inversion_eta = 0.1` does
(JaydenLyh/InPO @a9cfc4d `train.py` L1010-1011).
Reconstruction walks the path down with z_j = Φ_{k→j}(z_k, ε̂(z_k, k)) (DDIM sampling, η = 0), computed as
a_j x̂0 + s_j ε̂ from z_k's denoised pair (`denoising_step`), which is finite at a_k = 0 (σ = 1 on a flow schedule).
Not exact: each inversion step errs by (s_k − a_k s_j / a_j)(ε̂(z_j, k) − ε̂(z_k, k)).
Cost: one model call per step and direction (two UNet evaluations per latent under CFG).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bench.core.backbone import Backbone, Conditioning
from methods.checks import require
from methods.inversion.base import (
    InversionSampler,
    InversionState,
    as_latent_scale,
    ddim_map,
    ddpm_variance,
    denoising_step,
    per_sample_levels,
    walk,
)
from methods.shards import sample_noise

EVAL_AT = ("target", "source")


@dataclass(frozen=True)
class DDIMConfig:
    eval_at: str = field(default="target", metadata={
        "help": "level τ at which ε is evaluated in an inversion step: 'target' (diffusers >= 0.21, prompt-to-prompt) "
                "or 'source' (diffusers 0.20, InPO's official code)"})
    noise_scale: float = field(default=0.0, metadata={
        "help": "multiple of the DDPM posterior σ added as fresh noise after each inversion step (InPO: 0.1); "
                "> 0 makes the inversion stochastic"})

    def __post_init__(self):
        require(self.eval_at in EVAL_AT, "eval_at", f"one of {EVAL_AT}", self.eval_at)
        require(self.noise_scale >= 0, "noise_scale", ">= 0", self.noise_scale)


class DDIMInversion(InversionSampler, name="ddim", config=DDIMConfig):
    def __init__(self, config: DDIMConfig | None = None):
        super().__init__(config)
        # The class is not stochastic (its default noise_scale is 0); an instance with noise_scale > 0 is, and `bench
        # invert` records the instance's (InPO's faithful mode adds 0.1σ noise on purpose).
        self.stochastic = self.config.noise_scale > 0

    @torch.no_grad()
    def invert(self, backbone: Backbone, x0: torch.Tensor, cond: Conditioning, levels: torch.Tensor,
               guidance: float = 1.0, rng: torch.Generator | None = None) -> InversionState:
        levels = per_sample_levels(levels, x0.shape[0])  # (K+1, B)
        if self.stochastic and rng is None:
            raise ValueError("stochastic DDIM inversion (noise_scale > 0) needs an rng")
        z = x0.clone()
        # one draw per step of the grid, made whether or not a local sample moves there, for the whole
        # (global) batch: the noise a sample gets does not depend on its batch or shard
        noise = [sample_noise(z, rng) for _ in range(len(levels) - 1)] if self.stochastic else None
        for i, active, src, dst in walk(levels):
            zs = z[active]
            tau = dst if self.config.eval_at == "target" else src
            new = ddim_map(backbone, zs, backbone.eps(zs, tau, cond[active], guidance), src, dst)
            if noise is not None:
                scale = as_latent_scale(ddpm_variance(backbone, dst, src).sqrt(), new)
                new = new + self.config.noise_scale * scale * noise[i][active]
            z[active] = new
        return InversionState(z, levels)

    @torch.no_grad()
    def reconstruct(self, backbone: Backbone, state: InversionState, cond: Conditioning,
                    guidance: float = 1.0) -> torch.Tensor:
        z = state.latents.clone()
        for _, active, src, dst in walk(state.levels, down=True):
            z[active] = denoising_step(backbone, z[active], src, dst, cond[active], guidance)
        return z
