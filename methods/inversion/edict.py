"""EDICT: exact diffusion inversion via coupled transformations (Wallace, Gokul & Naik, CVPR 2023;
salesforce/EDICT @c35a81f, `edict_functions.py` `coupled_stablediffusion`).

Two chains x, y, initialised equal. A sampling step from level t down to t' (A = a_t'/a_t,
B = s_t' − A s_t, both ε at t) is an affine coupling followed by a mixing layer with weight p:

    x' = A x + B ε̂(y, t)            x'' = p x' + (1 − p) y'
    y' = A y + B ε̂(x', t)           y'' = p y' + (1 − p) x''

and the inversion step (t' up to t) undoes it in reverse order:

    y' = (y'' − (1 − p) x'') / p     y = (y' − B ε̂(x', t)) / A
    x' = (x'' − (1 − p) y') / p      x = (x' − B ε̂(y, t)) / A

Leapfrog (the official `leapfrog_steps=True`): on every other sampling step, counted from the top,
the coupling updates y first (the roles of x and y swap; the mixing layer does not).
Exact for any p in (0, 1]; rounding errors grow by about 1/p² per inversion step (the x − y mode).
p = 0.93 as the official `EDICT_editing` and diffusers' `mixing_coeff` (its `recon_test` uses p = 1).
Cost: two sequential model calls per step and direction; under CFG each is one batched call of both
branches (the official code always evaluates both, also at w = 1, which we skip).

The coupling needs a_t > 0 at every level it samples from: at a_t = 0 (σ = 1, the top of a flow schedule) its slope
A = a_t'/a_t is infinite, and on a flow, where ε̂(x', t) = x' there, y' = A (y − x') + ... diverges unless y = x', which
the first coupling breaks even from tied chains. Not a division to rewrite away: EDICT is undefined there, and
`invert` and `reconstruct` refuse such a path (BDIA is exact through it).
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
    ddim_coefficients,
    per_sample_levels,
    steps_above,
    walk,
)


def _roles(x: torch.Tensor, y: torch.Tensor, swap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, second) chain of the coupling: (x, y), or (y, x) where swap (n,) is set. Its own inverse."""
    swap = swap.view(-1, *([1] * (x.ndim - 1)))
    return torch.where(swap, y, x), torch.where(swap, x, y)


@dataclass(frozen=True)
class EDICTConfig:
    p: float = field(default=0.93, metadata={
        "help": "mixing weight p in (0, 1] (official EDICT_editing and diffusers: 0.93); rounding errors grow by "
                "about 1/p² per inversion step"})
    leapfrog: bool = field(default=True, metadata={
        "help": "swap the roles of the chains x and y on every other step (official leapfrog_steps=True)"})

    def __post_init__(self):
        require(0 < self.p <= 1, "p (mixing weight)", "in (0, 1]", self.p)


class EDICT(InversionSampler, name="edict", config=EDICTConfig, exact=True):
    @property
    def inversion_calls_per_step(self) -> int:
        return 2

    @staticmethod
    def _require_coupling(backbone: Backbone, levels: torch.Tensor) -> None:
        """ValueError unless a > 0 at every level above the clean end of the paths `levels` (K+1, B)."""
        a, _ = backbone.noise_levels(levels[1:])
        if (a == 0).any():
            raise ValueError(f"EDICT's coupling x' = (a_t'/a_t) x + ... is unbounded at level {levels[1:][a == 0][0].item():g} "
                             "(a_t = 0: σ = 1 on a flow schedule); run it on a path below that level, or use bdia")

    def _swaps(self, levels: torch.Tensor) -> torch.Tensor:
        """(K, B) bool: steps whose coupling updates y first (odd sampling-step index, with leapfrog)."""
        return (steps_above(levels) % 2 == 1) & self.config.leapfrog

    @torch.no_grad()
    def invert(self, backbone: Backbone, x0: torch.Tensor, cond: Conditioning, levels: torch.Tensor,
               guidance: float = 1.0, rng: torch.Generator | None = None) -> InversionState:
        levels = per_sample_levels(levels, x0.shape[0])  # (K+1, B)
        self._require_coupling(backbone, levels)
        swaps = self._swaps(levels)
        p = self.config.p
        x, y = x0.clone(), x0.clone()  # (B, C, h, w) each
        for i, active, src, dst in walk(levels):
            c = cond[active]
            a, b = (as_latent_scale(coef, x0) for coef in ddim_coefficients(backbone, dst, src))  # sampling dst → src
            y_mixed = (y[active] - (1 - p) * x[active]) / p
            x_mixed = (x[active] - (1 - p) * y_mixed) / p
            first, second = _roles(x_mixed, y_mixed, swaps[i, active])
            second = (second - b * backbone.eps(first, dst, c, guidance)) / a
            first = (first - b * backbone.eps(second, dst, c, guidance)) / a
            x[active], y[active] = _roles(first, second, swaps[i, active])
        return InversionState(x, levels, {"y": y})

    @torch.no_grad()
    def reconstruct_pair(self, backbone: Backbone, state: InversionState, cond: Conditioning,
                         guidance: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Both chains at levels[0]; without `extra["y"]` the chains start equal (sampling from noise)."""
        levels, p = state.levels, self.config.p
        self._require_coupling(backbone, levels)
        swaps = self._swaps(levels)
        x, y = state.latents.clone(), state.extra.get("y", state.latents).clone()
        for i, active, src, dst in walk(levels, down=True):
            c = cond[active]
            a, b = (as_latent_scale(coef, x) for coef in ddim_coefficients(backbone, src, dst))
            first, second = _roles(x[active], y[active], swaps[i, active])
            first = a * first + b * backbone.eps(second, src, c, guidance)
            second = a * second + b * backbone.eps(first, src, c, guidance)
            x_new, y_new = _roles(first, second, swaps[i, active])
            x_new = p * x_new + (1 - p) * y_new
            x[active], y[active] = x_new, p * y_new + (1 - p) * x_new
        return x, y

    def reconstruct(self, backbone: Backbone, state: InversionState, cond: Conditioning,
                    guidance: float = 1.0) -> torch.Tensor:
        return self.reconstruct_pair(backbone, state, cond, guidance)[0]
