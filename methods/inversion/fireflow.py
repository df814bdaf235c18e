"""FireFlow: the midpoint step of the flow ODE at about one model call per step, by starting each step from the
previous step's midpoint velocity (Deng et al., "FireFlow: Fast Inversion of Rectified Flow for Image Semantic
Editing", arXiv 2412.07517; HolmesShuan/FireFlow-Fast-Inversion-of-Rectified-Flow-for-Image-Semantic-Editing
`src/flux/sampling.py` `denoise_fireflow`, read in the fork cyteena/… @313f247, the same function).

With u the (guided) velocity, h = σ' − σ and û the velocity the step starts from:

    û = u(x, σ) on the first step of a direction, else the previous step's u_m
    x_m = x + (h/2) û,   u_m = u(x_m, σ + h/2),   x' = x + h u_m             (u_m handed to the next step)

the same loop up the path (inversion) and down it (reconstruction), each starting afresh. Not exact; û is the
velocity at the previous step's midpoint, not at x, so the step is second order only as far as u varies slowly.
Flow backbones only.
Cost: N + 1 sequential model calls for N steps in each direction (`inversion_calls`); the budget's worst case per
step is 2 (a path of one step).
"""

from __future__ import annotations

import torch

from bench.core.backbone import Backbone, Conditioning
from methods.inversion.base import FlowODESampler, NoSettings, flow_model_levels, flow_sigmas, flow_velocity


class FireFlow(FlowODESampler, name="fireflow", config=NoSettings):
    @property
    def inversion_calls_per_step(self) -> int:
        return 2  # the first step of a path; every later one costs 1

    def inversion_calls(self, steps: int) -> int:
        return steps + 1

    def step(self, backbone: Backbone, z: torch.Tensor, velocity: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
             cond: Conditioning, guidance: float) -> tuple[torch.Tensor, torch.Tensor]:
        h = flow_sigmas(backbone, dst, z) - flow_sigmas(backbone, src, z)  # (n, 1, 1, 1)
        mid = (flow_model_levels(src) + flow_model_levels(dst)) / 2  # (n,) the level of σ + h/2
        mid_velocity = flow_velocity(backbone, z + h / 2 * velocity, mid, cond, guidance)
        return z + h * mid_velocity, mid_velocity
