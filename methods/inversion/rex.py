"""Rex: an algebraically reversible solver (Blasingame & Liu, "Rex: Reversible Solvers for Diffusion Models";
zblasingame/Rex-solver @8b540a0 `image-experiments/samplers/rex.py` `rex_forward`/`rex_backward`), McCallum & Foster's
reversible coupling ("Efficient, Accurate and Stable Gradients for Neural ODEs") of a one-step solver Φ, here the
Backbone's own first-order step (`denoising_step`: DDIM, which on a flow schedule is the Euler step
x + (σ' − σ) u(x, σ)).

The state is a pair (x, x̂) of latents at one level, x̂ = x at the start of sampling. A sampling step from level hi
to lo, with Φ_{j→k}(z) the step of z from level j to k:

    x_lo = ζ (x_hi − x̂_hi) + Φ_{hi→lo}(x̂_hi)
    x̂_lo = x̂_hi + x_lo − Φ_{lo→hi}(x_lo)

and its exact inverse, an inversion step (0 < ζ ≤ 1; rounding errors grow by 1/ζ per step):

    x̂_hi = x̂_lo − x_lo + Φ_{lo→hi}(x_lo)
    x_hi = x̂_hi + (x_lo − Φ_{hi→lo}(x̂_hi)) / ζ

The step down to the end of the path needs no x̂ (reconstruction returns x alone), so the first inversion step may
choose x̂_hi freely: it takes the DDIM inversion of x0 (ε̂ at the target level, as `ddim`), so no step evaluates the
model at the clean end. Reconstruction without the pair (sampling from x_K alone) starts from x̂ = x.
Stated adaptation: Rex scales the coupling by r = σ_{n+1}/σ_n (data prediction) or α_{n+1}/α_n (noise prediction) in
its Lawson variables and steps in them; on a flow path one of the two is 0 or unbounded at an end of [0, 1] (the step
then ignores x and cannot be inverted), so this form keeps McCallum & Foster's unscaled coupling (r = 1), with DDIM,
the first-order Lawson step, as Φ. Defined on both schedules.
Cost: two sequential model calls per step (2N to invert, 2N − 1 to reconstruct); the state is the pair.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bench.core.backbone import Backbone, Conditioning
from methods.checks import require
from methods.inversion.base import InversionSampler, InversionState, ddim_map, denoising_step, per_sample_levels, walk


@dataclass(frozen=True)
class RexConfig:
    coupling: float = field(default=0.999, metadata={
        "help": "ζ, weight of the latent against its companion in a step (Rex-solver `rex_forward` default 0.999); "
                "rounding errors grow by 1/ζ per inversion step"})

    def __post_init__(self):
        require(0 < self.coupling <= 1, "coupling", "in (0, 1]", self.coupling)


class Rex(InversionSampler, name="rex", config=RexConfig, exact=True):
    @property
    def inversion_calls_per_step(self) -> int:
        return 2

    @torch.no_grad()
    def invert(self, backbone: Backbone, x0: torch.Tensor, cond: Conditioning, levels: torch.Tensor,
               guidance: float = 1.0, rng: torch.Generator | None = None) -> InversionState:
        levels = per_sample_levels(levels, x0.shape[0])  # (K+1, B)
        changes = levels[1:] != levels[:-1]
        first = changes & (changes.cumsum(0) == 1)  # (K, B) the first step of each path
        x, companion = x0.clone(), x0.clone()
        for i, active, src, dst in walk(levels):
            xs, starts = x[active], first[i, active]
            new_companion = torch.empty_like(xs)
            if starts.any():  # x̂_hi: DDIM inversion of x0 (ε̂ at the target level)
                rows = active[starts]
                eps = backbone.eps(xs[starts], dst[starts], cond[rows], guidance)
                new_companion[starts] = ddim_map(backbone, xs[starts], eps, src[starts], dst[starts])
            if (~starts).any():  # x̂_hi = x̂_lo − x_lo + Φ_{lo→hi}(x_lo)
                rows, on = active[~starts], ~starts
                up = denoising_step(backbone, xs[on], src[on], dst[on], cond[rows], guidance)
                new_companion[on] = companion[rows] - xs[on] + up
            down = denoising_step(backbone, new_companion, dst, src, cond[active], guidance)  # Φ_{hi→lo}(x̂_hi)
            x[active] = new_companion + (xs - down) / self.config.coupling
            companion[active] = new_companion
        return InversionState(x, levels, {"companion": companion})

    @torch.no_grad()
    def reconstruct(self, backbone: Backbone, state: InversionState, cond: Conditioning,
                    guidance: float = 1.0) -> torch.Tensor:
        levels = state.levels
        changes = levels[1:] != levels[:-1]
        last = changes & (changes.cumsum(0) == 1)  # (K, B) the step down to the end of each path
        x = state.latents.clone()
        companion = state.extra.get("companion", state.latents).clone()
        for i, active, src, dst in walk(levels, down=True):
            xs, companions = x[active], companion[active]
            new_x = self.config.coupling * (xs - companions) + denoising_step(backbone, companions, src, dst,
                                                                                cond[active], guidance)
            more = ~last[i, active]  # rows that step on: their x̂ follows
            if more.any():
                rows = active[more]
                up = denoising_step(backbone, new_x[more], dst[more], src[more], cond[rows], guidance)
                companion[rows] = companions[more] + new_x[more] - up
            x[active] = new_x
        return x
