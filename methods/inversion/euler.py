"""Euler inversion of a flow model, the DDIM inversion of rectified flow (the plain loop of RF-Solver-Edit,
wangjiangshan0725/RF-Solver-Edit @ccb2d21 `FLUX_Image_Edit/src/flux/sampling.py` `denoise`, the same code with the
timesteps reversed for inversion; FireFlow's `denoise` is the same loop).

With u = ε̂ − x̂0 the (guided) velocity of the flow ODE dx/dσ = u(x, σ) and σ = level / 1000, one step from σ to σ':

    x_{σ'} = x_σ + (σ' − σ) u(x_σ, σ)

up the path (σ' > σ, the velocity at the step's source, σ = 0 on the first step) to invert and down it (σ' < σ) to
reconstruct, which is diffusers' FlowMatchEulerDiscreteScheduler.step. Not exact: an inversion step and the
reconstruction step back read the velocity at different ends, error (σ' − σ)(u(x_σ, σ) − u(x_σ', σ')).
Flow backbones only (on a VP backbone the same step is `ddim` with eval_at=source).
Cost: one model call per step and direction (two evaluations per latent under classifier-free guidance).
"""

from __future__ import annotations

import torch

from bench.core.backbone import Backbone, Conditioning
from methods.inversion.base import FlowODESampler, NoSettings, flow_sigmas


class EulerInversion(FlowODESampler, name="euler", config=NoSettings):
    def step(self, backbone: Backbone, z: torch.Tensor, velocity: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
             cond: Conditioning, guidance: float) -> tuple[torch.Tensor, None]:
        h = flow_sigmas(backbone, dst, z) - flow_sigmas(backbone, src, z)  # (n, 1, 1, 1)
        return z + h * velocity, None
