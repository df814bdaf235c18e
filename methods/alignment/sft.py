"""Supervised fine-tuning on preferred images: the baseline of Diffusion-DPO (`--sft` in
SalesforceAIResearch/DiffusionDPO `train.py`) and Diffusion-KTO.

For each preferred image x0 of a pair, with its own t ~ U{0..T−1} and ε ~ N(0, I):

    loss = mean_batch mean_{C,H,W} ‖ε̂_θ(a_t x0 + s_t ε, t, c) − ε‖²

No reference model. Cost per image: forward + backward = 3F.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.backbone import Backbone
from methods.alignment.base import (
    AlignmentMethod,
    ImageBatch,
    LossOutput,
    noise_mse,
    register,
    sample_noise,
    sample_timesteps,
)


@dataclass
class SFTConfig:
    pass


@register
class SFT(AlignmentMethod):
    name = "sft"
    data_kind = "images"
    needs_reference = False
    Config = SFTConfig

    def loss(self, batch: ImageBatch, policy: Backbone, reference: Backbone | None,
             rng: torch.Generator) -> LossOutput:
        t = sample_timesteps(policy, len(batch), rng)
        noise = sample_noise(batch.latents, rng)
        err = noise_mse(policy, policy.add_noise(batch.latents, noise, t), t, batch.cond, noise)
        loss = err.mean()
        return LossOutput(loss, {"loss": loss.item()})

    def max_nfe_per_item(self) -> int:
        return 3
