"""BDIA-DDIM: bi-directional integration approximation (Zhang, Lewis & Kleijn, "Exact Diffusion
Inversion via Bi-directional Integration Approximation", ECCV 2024; guoqiang-zhang-x/BDIA @d4c9518,
`image-editing/bdia_edict_functions.py`).

With the DDIM map Φ (see `base.py`) and ε_i = ε̂(z_i, t_i), sampling from the pair (z_{i+1}, z_i):

    z_{i−1} = γ z_{i+1} − γ Φ_{i→i+1}(z_i, ε_i) + Φ_{i→i−1}(z_i, ε_i)

and its exact inverse (γ > 0; the BELM repo's `BDIA.latent_to_intermediate`):

    z_{i+1} = [z_{i−1} − Φ_{i→i−1}(z_i, ε_i)] / γ + Φ_{i→i+1}(z_i, ε_i)

γ = 0 is DDIM. The first step of a path is a DDIM step, so the state is the pair (z_N, z_{N−1})
(`TwoStepSampler`). Rounding errors grow by 1/γ per inversion step. γ = 0.96 by default, inside
the range [0.92, 1.0] the editing README recommends (its `BDIA_editing` default is 0.5).
Cost: one model call per step (N in inversion, N − 1 in reconstruction from the pair).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bench.core.backbone import Backbone, Conditioning
from methods.checks import require
from methods.inversion.base import InversionState, StepCoefficients, TwoStepSampler, ddim_coefficients


@dataclass(frozen=True)
class BDIAConfig:
    gamma: float = field(default=0.96, metadata={
        "help": "γ, weight of the backward integration; 0 is DDIM (not invertible), rounding errors grow by 1/γ per "
                "inversion step (editing README: 0.92-1.0)"})

    def __post_init__(self):
        require(self.gamma >= 0, "gamma", ">= 0 (0 is DDIM)", self.gamma)


class BDIA(TwoStepSampler, name="bdia", config=BDIAConfig):
    def coefficients(self, backbone: Backbone, lo: torch.Tensor, mid: torch.Tensor, hi: torch.Tensor) -> StepCoefficients:
        gamma = self.config.gamma
        down_z, down_eps = ddim_coefficients(backbone, mid, lo)  # Φ_{i→i−1}
        up_z, up_eps = ddim_coefficients(backbone, mid, hi)  # Φ_{i→i+1}
        return torch.full_like(down_z, gamma), down_z - gamma * up_z, down_eps - gamma * up_eps

    def invert(self, backbone: Backbone, x0: torch.Tensor, cond: Conditioning, levels: torch.Tensor,
               guidance: float = 1.0, rng: torch.Generator | None = None) -> InversionState:
        if self.config.gamma == 0:
            raise ValueError("gamma must be > 0 to invert: BDIA with gamma = 0 is DDIM, which has no exact inverse")
        return super().invert(backbone, x0, cond, levels, guidance, rng)
