"""Edit-friendly DDPM inversion (Huberman-Spiegelglas, Kulikov & Michaeli, "An Edit Friendly DDPM
Noise Space: Inversion and Manipulations", CVPR 2024; inbarhub/DDPM_inversion @58fc881,
`ddm_inversion/inversion_utils.py` `inversion_forward_process`).

Inversion draws every noisy latent independently from the forward marginal, then solves each DDPM
step for its noise map (t' < t the next level down, σ_t the DDPM posterior standard deviation):

    x_t = a_t x_0 + s_t ε̃_t,   ε̃_t ~ N(0, I) iid
    z_t = (x_{t'} − μ_θ(x_t, t)) / σ_t,   μ_θ(x_t, t) = a_t' x̂_0 + √(s_t'² − σ_t²) ε̂,
    σ_t² = s_t'²/s_t² · (s_t² − (a_t/a_t')² s_t'²)   (`base.ddpm_variance`; VP: (1 − ᾱ_t')/(1 − ᾱ_t) · (1 − ᾱ_t/ᾱ_t'))

with (x̂_0, ε̂) the denoised pair of x_t (`Backbone.denoise`; on VP x̂_0 = (x_t − s_t ε̂(x_t, t))/a_t, as in the
reference), and DDPM sampling (DDIM with η = 1) driven by these maps, x_{t'} = μ_θ(x_t, t) + σ_t z_t, rebuilds
x_0 by construction, in any dtype. Every step needs σ_t > 0, and a step down to a noise-free level has σ_t = 0 (the
clean end of a flow schedule, σ = 0, or a VP clean end with ᾱ = 1): `invert` refuses such a path before any model
call. On a flow schedule it therefore refuses `sampling_levels` (which start at the clean end) and inverts paths
that start above it, e.g. their levels[1:]. The model calls of the inversion are independent of each other, so they
run batched, `max_batch` latents per call (None: all N steps in one call). The reference
defaults (100 steps, source guidance 3.5, skip 36) belong to editing, not to this sampler.
Cost: N model evaluations per latent in inversion (sequential depth 1), N calls in reconstruction;
stored for reconstruction: the last latent and N noise maps, 1 + N latents per image.
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
    ddpm_variance,
    per_sample_levels,
    walk,
)
from methods.shards import sample_noise


def ddpm_posterior(backbone: Backbone, x0_hat: torch.Tensor, eps: torch.Tensor, src: torch.Tensor,
                   dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean μ_θ (n, C, h, w) and std σ (n, 1, 1, 1) of the DDPM step from level src down to dst (n,), from the
    denoised pair (x̂0, ε̂) at src."""
    a_dst, s_dst = backbone.noise_levels(dst)  # (n,) float64
    var = ddpm_variance(backbone, src, dst)
    mean = as_latent_scale(a_dst, x0_hat) * x0_hat + as_latent_scale((s_dst**2 - var).sqrt(), x0_hat) * eps
    return mean, as_latent_scale(var.sqrt(), x0_hat)


@dataclass(frozen=True)
class EditFriendlyDDPMConfig:
    max_batch: int | None = field(default=None, metadata={
        "help": "latents per model call in inversion (its N steps are independent); None: all in one call"})

    def __post_init__(self):
        require(self.max_batch is None or self.max_batch >= 1, "max_batch", ">= 1 or None", self.max_batch)


class EditFriendlyDDPM(InversionSampler, name="ddpm-ef", config=EditFriendlyDDPMConfig, exact=True,
                       stochastic=True):  # stochastic: the inverted latent x_N = a_N x0 + s_N ε̃ is drawn with fresh noise
    @torch.no_grad()
    def invert(self, backbone: Backbone, x0: torch.Tensor, cond: Conditioning, levels: torch.Tensor,
               guidance: float = 1.0, rng: torch.Generator | None = None) -> InversionState:
        if rng is None:
            raise ValueError("ddpm-ef inversion draws its noisy latents at random and needs an rng")
        levels = per_sample_levels(levels, x0.shape[0])  # (K+1, B)
        moves = levels[1:] != levels[:-1]  # (K, B)
        step, row = moves.nonzero(as_tuple=True)  # (n,) every (step, sample) that moves
        src, dst = levels[step + 1, row], levels[step, row]
        noiseless = ddpm_variance(backbone, src, dst) == 0  # (n,) steps whose noise map would divide by 0
        if noiseless.any():
            raise ValueError(f"ddpm-ef needs a DDPM posterior variance > 0 on every step, and the step down to level "
                             f"{dst[noiseless][0].item():g} has none (a noise-free level: a flow schedule's clean end, "
                             "or ᾱ = 1); invert a path that starts above it")
        xs = [x0]  # x at every level of the path; a repeated level keeps its latent
        for i in range(len(levels) - 1):
            noise = sample_noise(x0, rng)
            fresh = backbone.add_noise(x0, noise, levels[i + 1])
            xs.append(torch.where(moves[i].view(-1, *([1] * (x0.ndim - 1))).to(x0.device), fresh, xs[-1]))
        xs = torch.stack(xs)  # (K+1, B, C, h, w)
        x_src = xs[step + 1, row]  # (n, C, h, w)
        chunk = self.config.max_batch or max(len(row), 1)  # latents per model call
        x0_hat, eps = torch.empty_like(x_src), torch.empty_like(x_src)
        for start in range(0, len(row), chunk):
            part = slice(start, start + chunk)
            x0_hat[part], eps[part] = backbone.denoise(x_src[part], src[part], cond[row[part]], guidance)
        mean, std = ddpm_posterior(backbone, x0_hat, eps, src, dst)
        noise_maps = torch.zeros_like(xs[1:])  # (K, B, C, h, w); zero on steps that do not move
        noise_maps[step, row] = (xs[step, row] - mean) / std
        return InversionState(xs[-1], levels, {"noise_maps": noise_maps}, per_step=("noise_maps",))

    @torch.no_grad()
    def reconstruct(self, backbone: Backbone, state: InversionState, cond: Conditioning,
                    guidance: float = 1.0) -> torch.Tensor:
        if "noise_maps" not in state.extra:
            raise ValueError("ddpm-ef reconstruction needs the noise maps of its inversion (state.extra['noise_maps'])")
        noise_maps = state.extra["noise_maps"]  # (K, B, C, h, w)
        z = state.latents.clone()
        for i, active, src, dst in walk(state.levels, down=True):
            mean, std = ddpm_posterior(backbone, *backbone.denoise(z[active], src, cond[active], guidance), src, dst)
            z[active] = mean + std * noise_maps[i, active]
        return z
