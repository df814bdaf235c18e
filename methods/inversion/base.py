"""The contract of an inversion sampler, and the DDIM map they share.

An inverter walks a latent up a path of noise levels, `levels` of shape (K+1,) or (K+1, B) with
levels[0] the start (a negative level is the clean end of the chain, see `Backbone.alpha_bar`), and
a sampler walks it back down. Per-sample paths let InPO invert every pair to its own t in one batch;
a step whose level does not change is skipped without evaluating the model.

DDIM map from level j to level k (Song et al. 2021, Eq. 12 with η = 0):

    Φ_{j→k}(z, ε) = a_k (z − s_j ε) / a_j + s_k ε,       a = √ᾱ, s = √(1 − ᾱ), in float64 coefficients.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from bench.backbone import Backbone, Conditioning
from bench.registry import Registry

SAMPLERS: Registry[type[InversionSampler]] = Registry("sampler", entry_point_group="diffusion_align_bench.samplers")


@dataclass
class InversionState:
    latents: torch.Tensor  # (B, C, h, w) at the last level of the path
    levels: torch.Tensor  # (K+1, B) the path walked
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # what exact samplers keep (e.g. a second latent)


class InversionSampler(ABC):
    name: ClassVar[str]
    exact: ClassVar[bool]  # reconstruct(invert(x)) == x up to floating point

    @abstractmethod
    def invert(self, backbone: Backbone, x0: torch.Tensor, cond: Conditioning, levels: torch.Tensor,
               guidance: float = 1.0, rng: torch.Generator | None = None) -> InversionState:
        """Walk x0 (B, C, h, w) up `levels`."""

    @abstractmethod
    def reconstruct(self, backbone: Backbone, state: InversionState, cond: Conditioning,
                    guidance: float = 1.0) -> torch.Tensor:
        """Walk the state back down its path; returns latents at levels[0]."""


def per_sample_levels(levels: torch.Tensor, batch: int) -> torch.Tensor:
    """(K+1,) or (K+1, B) -> (K+1, B) long."""
    levels = torch.as_tensor(levels, dtype=torch.long)
    return levels[:, None].expand(-1, batch) if levels.ndim == 1 else levels


def ddim_map(backbone: Backbone, z: torch.Tensor, eps: torch.Tensor, src: torch.Tensor,
             dst: torch.Tensor) -> torch.Tensor:
    """Φ_{src→dst}(z, ε) with per-sample levels src, dst (B,)."""
    a_src, s_src = backbone.coefficients(src, z)
    a_dst, s_dst = backbone.coefficients(dst, z)
    return a_dst * (z - s_src * eps) / a_src + s_dst * eps


def sampling_levels(backbone: Backbone, steps: int) -> torch.Tensor:
    """[clean, t_N, ..., t_1] ascending: the levels a `steps`-step DDIM sampler visits, reversed
    (for SD at 50 steps: -1, 1, 21, ..., 981)."""
    return torch.cat([torch.tensor([-1]), backbone.timesteps(steps).flip(0)])
