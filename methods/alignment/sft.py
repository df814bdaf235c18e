"""Supervised fine-tuning on preferred images: the baseline of Diffusion-DPO (`--sft` in
SalesforceAIResearch/DiffusionDPO `train.py`) and Diffusion-KTO.

For each preferred image x0 of a pair, with its own level t (`base.sample_levels`: t ~ U{0..T−1} on VP, uniform
over the shifted training table on a flow model) and ε ~ N(0, I), the denoising loss in the loss space (`loss_space`,
see `base.py`; the native default is what the backbone was pretrained on):

    loss = mean_batch mean_{C,H,W} ‖ŷ_θ(a_t x0 + s_t ε, t, c) − y‖²,   y = ε (ε-space), a_t ε − s_t x0 (v-space)
                                                                         or u = ε − x0 (flow-space)

The repo regresses ε (SD's space). In v-space ‖v̂ − v‖² = ‖ε̂ − ε‖² / ᾱ_t, so the noisy end weighs more;
at real scale (ε-models) nothing changes. On a flow model (SD3) the native loss is the rectified-flow
(conditional flow matching) loss ‖v̂_θ(x_σ, σ, c) − (ε − x0)‖² at x_σ = (1 − σ) x0 + σ ε, SD3's pretraining
objective with diffusers' uniform `weighting_scheme="none"` over the shifted σ table (`base.py`).
No reference model. Cost per image: forward + backward = 3F.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bench.core.backbone import Backbone
from methods.alignment.base import AlignmentMethod, ImageBatch, LossOutput, MethodConfig, noise_images


@dataclass
class SFTConfig(MethodConfig):
    """No hyper-parameters of its own (no search space either: the tuner's learning rate is SFT's only knob)."""


class SFT(AlignmentMethod, name="sft", data_kind="images", needs_reference=False, config=SFTConfig):
    def loss(self, batch: ImageBatch, policy: Backbone, reference: Backbone | None,
             rng: torch.Generator) -> LossOutput:
        loss = noise_images(policy, batch, self.loss_space(policy), rng).error(policy).mean()
        return LossOutput(loss, {"loss": loss.item()})

    def max_nfe_per_item(self, embedded_guidance: bool = False) -> int:
        return 3
