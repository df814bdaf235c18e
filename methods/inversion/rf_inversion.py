"""RF-Inversion: controlled flow ODEs (Rout et al., "Semantic Image Inversion and Editing using Rectified Stochastic
Differential Equations", ICLR 2025, arXiv 2410.10792, Algorithms 1 and 2; diffusers
`examples/community/pipeline_flux_rf_inversion.py` @0036ae2, `invert` and `__call__`; LituRout/RF-Inversion).

With u the (guided) velocity, σ = level / 1000, h = σ' − σ, y₁ ~ N(0, I) drawn once per image and y₀ = x0 the image:

    inversion (Alg. 1, Eq. 8)    û = u(y, σ) + γ [(y₁ − y) / (1 − σ) − u(y, σ)],          y_{σ'} = y_σ + h û
    reconstruction (Alg. 2)      û = u(x, σ) + η_i [(x − y₀) / σ − u(x, σ)],             x_{σ'} = x_σ + h û

(diffusers writes the second for v = −u and t = 1 − σ: v̂ = v + η (v_cond − v), v_cond = (y₀ − X) / (1 − t)), η_i = η
on the sampling steps start ≤ i < stop (i counted from the top; start, stop = int(fraction · N)), else 0 (plain Euler).
γ = 0 is Euler inversion; γ = 1 walks straight onto y₁. The state keeps y₀ = x0 beside the last latent, which
Algorithm 2 steers towards (without it, reconstruction is Euler sampling). Not exact.
Stated adaptations: the steps are the path's own levels, the velocity read at model level 1000 σ (diffusers' `invert`
evaluates FLUX at t_i = i/N, unshifted, while it steps by the shifted σ gaps in reversed order); SD3's CFG guides u.
Flow backbones only. Stochastic while γ > 0: y₁ is drawn from `rng` (diffusers: randn).
Cost: one model call per step and direction.
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
    flow_sigmas,
    flow_velocity,
    per_sample_levels,
    steps_above,
    walk,
)
from methods.shards import sample_noise


@dataclass(frozen=True)
class RFInversionConfig:
    gamma: float = field(default=0.5, metadata={
        "help": "γ, controller strength of the inversion towards the drawn noise y1 (diffusers `invert` default 0.5); "
                "0 is Euler inversion (deterministic), 1 lands on y1"})
    eta: float = field(default=1.0, metadata={
        "help": "η, controller strength of the reconstruction towards the image x0 on its controlled steps "
                "(diffusers `__call__` default 1.0); 0 is Euler sampling"})
    start: float = field(default=0.0, metadata={
        "help": "first controlled sampling step, as a fraction of the steps (diffusers start_timestep 0)"})
    stop: float = field(default=0.25, metadata={
        "help": "end (exclusive) of the controlled sampling steps, as a fraction of the steps (diffusers "
                "stop_timestep 0.25)"})

    def __post_init__(self):
        require(0 <= self.gamma <= 1, "gamma", "in [0, 1]", self.gamma)
        require(0 <= self.eta <= 1, "eta", "in [0, 1]", self.eta)
        require(0 <= self.start <= self.stop <= 1, "start, stop", "0 <= start <= stop <= 1", (self.start, self.stop))


def inversion_velocity(velocity: torch.Tensor, y: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor,
                       gamma: float) -> torch.Tensor:
    """û = u + γ ((y₁ − y) / (1 − σ) − u), Algorithm 1's controlled velocity at y (σ < 1)."""
    return velocity + gamma * ((noise - y) / (1 - sigma) - velocity)


def reconstruction_velocity(velocity: torch.Tensor, x: torch.Tensor, image: torch.Tensor, sigma: torch.Tensor,
                            eta: torch.Tensor | float) -> torch.Tensor:
    """û = u + η ((x − y₀) / σ − u), Algorithm 2's controlled velocity at x (σ > 0), in u = ε − x0 terms."""
    return velocity + eta * ((x - image) / sigma - velocity)


class RFInversion(InversionSampler, name="rf-inversion", config=RFInversionConfig, stochastic=True,
                  schedules=("flow",)):
    def __init__(self, config: RFInversionConfig | None = None):
        super().__init__(config)
        self.stochastic = self.config.gamma > 0  # γ = 0 draws nothing (Euler inversion)

    @torch.no_grad()
    def invert(self, backbone: Backbone, x0: torch.Tensor, cond: Conditioning, levels: torch.Tensor,
               guidance: float = 1.0, rng: torch.Generator | None = None) -> InversionState:
        self.check_schedule(backbone.native_space)
        levels = per_sample_levels(levels, x0.shape[0])  # (K+1, B)
        if self.stochastic and rng is None:
            raise ValueError("rf-inversion with gamma > 0 draws its target noise y1: give it an rng")
        noise = sample_noise(x0, rng) if self.stochastic else torch.zeros_like(x0)  # y1, one draw per image
        y = x0.clone()
        for _, active, src, dst in walk(levels):
            ys = y[active]
            sigma, sigma_next = flow_sigmas(backbone, src, ys), flow_sigmas(backbone, dst, ys)
            velocity = flow_velocity(backbone, ys, src, cond[active], guidance)
            y[active] = ys + (sigma_next - sigma) * inversion_velocity(velocity, ys, noise[active], sigma,
                                                                       self.config.gamma)
        extra = {"image": x0.clone()} if self.config.eta > 0 else {}
        return InversionState(y, levels, extra)

    @torch.no_grad()
    def reconstruct(self, backbone: Backbone, state: InversionState, cond: Conditioning,
                    guidance: float = 1.0) -> torch.Tensor:
        self.check_schedule(backbone.native_space)
        levels, image = state.levels, state.extra.get("image")
        index = steps_above(levels)  # (K, B) the sampling step's index from the top
        steps = (levels[1:] != levels[:-1]).sum(0).to(torch.float64)  # (B,) steps of each path
        start, stop = (self.config.start * steps).floor(), (self.config.stop * steps).floor()  # int(fraction · N)
        x = state.latents.clone()
        for i, active, src, dst in walk(levels, down=True):
            xs = x[active]
            sigma, sigma_next = flow_sigmas(backbone, src, xs), flow_sigmas(backbone, dst, xs)
            velocity = flow_velocity(backbone, xs, src, cond[active], guidance)
            if image is not None:
                k = index[i, active].to(torch.float64)
                controlled = (k >= start[active]) & (k < stop[active])  # (n,)
                eta = as_latent_scale(controlled.to(torch.float64) * self.config.eta, xs)
                velocity = reconstruction_velocity(velocity, xs, image[active], sigma, eta)
            x[active] = xs + (sigma_next - sigma) * velocity
        return x
