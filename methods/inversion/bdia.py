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

import torch

from bench.core.backbone import Backbone, Conditioning
from methods.inversion.base import SAMPLERS, InversionState, TwoStepSampler, ddim_coefficients


@SAMPLERS.register("bdia")
class BDIA(TwoStepSampler):
    name = "bdia"
    stochastic = False

    def __init__(self, gamma: float = 0.96):
        if not gamma >= 0:
            raise ValueError(f"gamma must be >= 0 (0 is DDIM), got {gamma}")
        self.gamma = gamma

    def coefficients(self, backbone: Backbone, lo: torch.Tensor, mid: torch.Tensor,
                     hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        down_z, down_eps = ddim_coefficients(backbone, mid, lo)  # Φ_{i→i−1}
        up_z, up_eps = ddim_coefficients(backbone, mid, hi)  # Φ_{i→i+1}
        gamma = torch.full_like(down_z, self.gamma)
        return gamma, down_z - self.gamma * up_z, down_eps - self.gamma * up_eps

    def invert(self, backbone: Backbone, x0: torch.Tensor, cond: Conditioning, levels: torch.Tensor,
               guidance: float = 1.0, rng: torch.Generator | None = None) -> InversionState:
        if self.gamma == 0:
            raise ValueError("gamma must be > 0 to invert: BDIA with gamma = 0 is DDIM, which has no exact inverse")
        return super().invert(backbone, x0, cond, levels, guidance, rng)
