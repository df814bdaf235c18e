"""The contract every alignment method implements, and the pieces they share.

A method declares the data it trains on (`pairs`: winner/loser latents of one prompt; `binary`:
single images labelled desirable or not; `images`: preferred images only), whether it needs the
frozen reference model, a typed config with its paper's defaults, and its worst-case NFE per training
item (a pair for `pairs`, an image otherwise), which the budget meter uses to stop a run before it
crosses its limit. `loss(batch, policy, reference, rng)` returns the loss and scalar logs.

All losses are computed in ε-space: L = mean over (C, H, W) of (ε̂_θ(x_t, t, c) − ε)², with
ε̂ converted by the Backbone from the model's own parametrisation (ε or v). For an ε-model this is
exactly the Diffusion-DPO / KTO / InPO objective; for a v-model the ε error equals ᾱ_t times the
v error, so β keeps its meaning across parametrisations.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from bench.backbone import Backbone, Conditioning
from bench.registry import Registry
from methods.shards import sample_noise, sample_timesteps

METHODS: Registry[type[AlignmentMethod]] = Registry("method", entry_point_group="diffusion_align_bench.methods")

DATA_KINDS = ("pairs", "binary", "images")


@dataclass
class PairBatch:
    winner: torch.Tensor  # (B, C, h, w) latents of the preferred images
    loser: torch.Tensor  # (B, C, h, w)
    cond: Conditioning  # (B,) the shared prompt of each pair (after prompt dropout)

    def __len__(self) -> int:
        return self.winner.shape[0]


@dataclass
class ImageBatch:
    latents: torch.Tensor  # (B, C, h, w)
    cond: Conditioning  # (B,)
    desirable: torch.Tensor  # (B,) bool

    def __len__(self) -> int:
        return self.latents.shape[0]


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, differentiable w.r.t. the policy
    logs: dict[str, float] = field(default_factory=dict)


class AlignmentMethod(ABC):
    name: ClassVar[str]
    data_kind: ClassVar[str]
    needs_reference: ClassVar[bool]
    Config: ClassVar[type]

    def __init__(self, config=None):
        self.config = config if config is not None else self.Config()

    @abstractmethod
    def loss(self, batch, policy: Backbone, reference: Backbone | None, rng: torch.Generator) -> LossOutput:
        """The method's loss on one batch; `rng` draws every random quantity (t, ε, ...)."""

    @abstractmethod
    def max_nfe_per_item(self) -> int:
        """Worst-case NFE per training item (pair or image), a backward counting as 2."""

    def describe(self) -> dict:
        """The configuration as recorded in run records (with any default resolved)."""
        return dataclasses.asdict(self.config)

    def sampling_weights(self, desirable: torch.Tensor) -> torch.Tensor | None:
        """For `binary` data: relative probability of drawing each image, or None for uniform."""
        return None


@dataclass
class NoisedPairs:
    """A pair batch stacked as [winners; losers] and noised with one (t, ε) per pair."""

    x0: torch.Tensor  # (2B, C, h, w)
    x_t: torch.Tensor  # (2B, C, h, w)
    t: torch.Tensor  # (2B,)
    noise: torch.Tensor  # (2B, C, h, w)
    cond: Conditioning  # (2B,)


def noise_pairs(backbone: Backbone, batch: PairBatch, rng: torch.Generator,
                t: torch.Tensor | None = None) -> NoisedPairs:
    """Stack winners and losers and noise them with one (t, ε) shared within each pair, as Diffusion-DPO
    does (`train.py` L1044, L1054-1055). `t` (B,) defaults to t ~ U{0..T−1}; ε is drawn after t."""
    t = (sample_timesteps(backbone, len(batch), rng) if t is None else t).repeat(2)
    noise = sample_noise(batch.winner, rng).repeat(2, 1, 1, 1)
    x0 = torch.cat([batch.winner, batch.loser])
    return NoisedPairs(x0, backbone.add_noise(x0, noise, t), t, noise, Conditioning.cat([batch.cond, batch.cond]))


def noise_mse(backbone: Backbone, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning,
              eps_target: torch.Tensor) -> torch.Tensor:
    """Per-sample noise-prediction error: mean over (C, H, W) of (ε̂(x_t, t, c) − ε)², shape (B,)."""
    eps = backbone.eps(x_t, t.to(backbone.device), cond)
    return ((eps.float() - eps_target.float()) ** 2).mean(dim=(1, 2, 3))


def register(cls: type[AlignmentMethod]) -> type[AlignmentMethod]:
    """Class decorator: register a method under its `name`."""
    if cls.data_kind not in DATA_KINDS:
        raise ValueError(f"{cls.__name__}.data_kind must be one of {DATA_KINDS}")
    return METHODS.register(cls.name)(cls)
