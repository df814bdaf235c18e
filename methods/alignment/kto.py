"""Diffusion-KTO (Li et al., NeurIPS 2024, arXiv 2404.04465).

Reference implementation: jacklishufan/diffusion-kto @226bbd0, `train_kto_sd_v1.5.py` L1398-1509.
Images are unpaired, each with its own (t, ε) and a label y (desirable or not). L(θ, x) is the error in
the loss space (`loss_space`, see `base.py`), averaged over (C, H, W): ‖ε̂_θ(x_t, t, c) − ε‖² in ε-space
(the repo's, and SD's native space: at real scale nothing changes), or ‖v̂_θ(x_t, t, c) − v‖² with
v = a_t ε − s_t x0 in v-space (the toy's native space; ‖v̂ − v‖² = ‖ε̂ − ε‖² / ᾱ_t, so β acts 1/ᾱ_t
times as strongly per t as in ε-space):

    g     = L(ref, x) − L(θ, x)                       per image (the implicit reward)
    z0    = max(0, mean_batch g), detached             reference point (`bce_offset=none`, the repo default;
                                                       the mean over all processes' batches, as the repo all-reduces)
    loss  = mean_batch λ_y (1 − σ(s_y β (g − z0))),     s_y = +1 if desirable else −1, λ_D = λ_U = 1

`reference_point="mismatched"` instead estimates z0 on the same x_t with the batch's prompts rolled by
one (`torch.roll(prompt_embeds, 1)`, the repo's `bce_offset=original`, the "unrelated pairs" of paper
§4.1), without gradient, at 2F extra per image.
On a flow model (SD3) the native space is the velocity: L(θ, x) = ‖v̂_θ(x_σ, σ, c) − (ε − x0)‖², each image with its
own (σ, ε), σ from `Backbone.training_levels` (`base.py`); ‖û − u‖² = ‖ε̂ − ε‖² / (1 − σ)².
Desirable images are drawn with probability γ = 0.8 (`WeightedRandomSampler`, L737).
Defaults: β = 5000 (paper App. A.1; the repo's example script leaves its default 1000).
Cost per image: policy forward+backward (3F) + reference forward (1F) = 4F (+2F mismatched).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bench.core.backbone import Backbone
from methods.alignment.base import AlignmentMethod, ImageBatch, LossOutput, MethodConfig, noise_images
from methods.alignment.dpo import BETA_SEARCH
from methods.checks import require
from methods.shards import global_mean

REFERENCE_POINTS = ("batch", "mismatched")


@dataclass
class KTOConfig(MethodConfig):
    # β: the DPO-family range (see dpo.py): the paper's 5000 and the repo script's default 1000 lie inside.
    beta: float = field(default=5000.0, metadata={"help": "β scaling the implicit reward (paper App. A.1)",
                                                  "search": BETA_SEARCH})
    desirable_fraction: float = field(default=0.8, metadata={"help": "γ: probability of drawing a desirable image"})
    reference_point: str = field(default="batch", metadata={"help": "z0 from the batch mean ('batch') or mismatched prompts"})

    def __post_init__(self):
        super().__post_init__()
        require(self.beta > 0, "beta", "> 0", self.beta)
        require(0 < self.desirable_fraction < 1, "desirable_fraction", "in (0, 1)", self.desirable_fraction)
        require(self.reference_point in REFERENCE_POINTS, "reference_point", f"one of {REFERENCE_POINTS}",
                self.reference_point)


def kto_loss(policy_err: torch.Tensor, ref_err: torch.Tensor, desirable: torch.Tensor, beta: float,
             reference_point: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, z0) from per-image errors (B,): g = ref − policy, z0 = max(0, mean g) unless given."""
    g = ref_err - policy_err
    z0 = global_mean(g.mean() if reference_point is None else reference_point).clamp(min=0)  # all processes' batch
    sign = desirable.float() * 2 - 1
    return (1 - torch.sigmoid(sign * beta * (g - z0))).mean(), z0


class KTO(AlignmentMethod, name="kto", data_kind="binary", needs_reference=True, config=KTOConfig):
    def loss(self, batch: ImageBatch, policy: Backbone, reference: Backbone, rng: torch.Generator) -> LossOutput:
        images = noise_images(policy, batch, self.loss_space(policy), rng)
        policy_err = images.error(policy)  # (B,)
        with torch.no_grad():
            ref_err = images.error(reference)
            point = None
            if self.config.reference_point == "mismatched":
                rolled = batch.cond.map(lambda e: torch.roll(e, 1, dims=0))
                point = (images.error(reference, rolled) - images.error(policy, rolled)).mean()
        loss, z0 = kto_loss(policy_err, ref_err, batch.desirable, self.config.beta, point)
        return LossOutput(loss, {"loss": loss.item(), "z0": z0.item(), "policy_mse": policy_err.mean().item(),
                                 "ref_mse": ref_err.mean().item(),
                                 "desirable_frac": batch.desirable.float().mean().item()})

    def max_nfe_per_item(self, embedded_guidance: bool = False) -> int:
        return 6 if self.config.reference_point == "mismatched" else 4

    def sampling_weights(self, desirable: torch.Tensor) -> torch.Tensor:
        """Per-image weights so that a draw is desirable with probability γ (WeightedRandomSampler)."""
        n_desirable = desirable.sum().clamp(min=1)
        n_undesirable = (~desirable).sum().clamp(min=1)
        gamma = self.config.desirable_fraction
        return torch.where(desirable, gamma / n_desirable, (1 - gamma) / n_undesirable).double()
