"""RF-Solver: a second-order Taylor step of the flow ODE (Wang et al., "Taming Rectified Flow for Inversion and
Editing", arXiv 2411.04746; wangjiangshan0725/RF-Solver-Edit @ccb2d21
`FLUX_Image_Edit/src/flux/sampling.py` `denoise`).

With u the (guided) velocity, h = σ' − σ and the derivative du/dσ taken by a finite difference over half the step:

    u₁ = u(x, σ),   x_m = x + (h/2) u₁,   u₂ = u(x_m, σ + h/2)
    x' = x + h u₁ + ½ h² (u₂ − u₁) / (h/2)                                   (= x + h u₂, the explicit midpoint rule)

written as the repository writes it (its `first_order` term), the same step up the path (inversion, h > 0) and down
it (reconstruction, h < 0). Not exact; its error per step is O(h³) where Euler's is O(h²).
Flow backbones only: the Taylor expansion is in σ of x_σ = (1 − σ) x0 + σ ε.
Cost: two sequential model calls per step and direction.
"""

from __future__ import annotations

import torch

from bench.core.backbone import Backbone, Conditioning
from methods.inversion.base import FlowODESampler, NoSettings, flow_model_levels, flow_sigmas, flow_velocity


class RFSolver(FlowODESampler, name="rf-solver", config=NoSettings):
    @property
    def inversion_calls_per_step(self) -> int:
        return 2

    def step(self, backbone: Backbone, z: torch.Tensor, velocity: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
             cond: Conditioning, guidance: float) -> tuple[torch.Tensor, None]:
        h = flow_sigmas(backbone, dst, z) - flow_sigmas(backbone, src, z)  # (n, 1, 1, 1)
        mid = (flow_model_levels(src) + flow_model_levels(dst)) / 2  # (n,) the level of σ + h/2
        mid_velocity = flow_velocity(backbone, z + h / 2 * velocity, mid, cond, guidance)
        first_order = (mid_velocity - velocity) / (h / 2)  # du/dσ, finite difference
        return z + h * velocity + 0.5 * h**2 * first_order, None
