"""Diffusion-DPO (Wallace et al., CVPR 2024, arXiv 2311.12908).

Reference implementation: SalesforceAIResearch/DiffusionDPO @5233e75, `train.py` L1044-1145.
For a pair (x0^w, x0^l) of one prompt c, one (t, ε) is shared by both images,
x_t^* = a_t x0^* + s_t ε, and with the per-image error in the loss space (`loss_space`, see `base.py`)

    L(θ, x) = mean_{C,H,W} ‖ŷ_θ(x_t, t, c) − y‖²,   y = ε (ε-space) or v = a_t ε − s_t x0 (v-space)

    Δ_θ   = L(θ, x^w) − L(θ, x^l),      Δ_ref = L(ref, x^w) − L(ref, x^l)   (frozen reference)
    z     = −(β/2) (Δ_θ − Δ_ref)
    loss  = mean_pairs −log σ(z)

The paper and repo work in ε-space, the SD models' native space, so at real scale nothing changes.
On a v-model the default is v-space, where ‖v̂ − v‖² = ‖ε̂ − ε‖² / ᾱ_t: the same β weighs each t
1/ᾱ_t times as strongly as in ε-space (most at the noisy end); `loss_space=eps` recovers the ε loss.
The ½ is the official repo's (`scale_term = -0.5 * beta_dpo`). diffusers' port
(examples/research_projects/diffusion_dpo) omits it, so its β is half of ours.
Defaults: β = 5000 (repo default and SDXL; the paper's SD 1.5 run used 2000).
Cost per pair: policy forward+backward on 2 latents (6F) and a reference forward on 2 (2F) = 8F.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bench.core.backbone import Backbone
from bench.core.search_space import FloatRange
from methods.alignment.base import AlignmentMethod, LossOutput, MethodConfig, NoisyLatents, PairBatch, noise_pairs
from methods.checks import require

# DPO-family β search range, log-uniform over 3.3 decades: the papers' 2000 (SD 1.5) and 5000 (SDXL;
# KTO App. A.1 and InPO's SDXL example too), the KTO repo's 1000 and diffusers' 2500 (= 5000 here) in the
# upper part, the toy suite's ε-space 500 in the middle, and room below for v-space on a v-model: there
# the same β acts 1/ᾱ_t times as strongly per t, and the ε-space loss had weighed v errors by ᾱ_t, whose
# mean is 0.37 over t ~ U{0..999} on SD's schedule (0.075 under dpo-gamma-t's γ = 0.9 steps), so the
# toy's ε-space 500 is roughly 190 (40 for dpo-gamma-t) in v-space. Diffusion-DPO published no grid.
BETA_SEARCH = FloatRange(10.0, 2e4, log=True)


@dataclass
class DPOConfig(MethodConfig):
    beta: float = field(default=5000.0, metadata={"help": "KL weight β (official repo default; SD 1.5 paper: 2000)",
                                                  "search": BETA_SEARCH})

    def __post_init__(self):
        super().__post_init__()
        require(self.beta > 0, "beta", "> 0", self.beta)


def dpo_loss(policy_w: torch.Tensor, policy_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, z) from per-pair errors (each (B,)): z = −(β/2)(Δ_θ − Δ_ref), loss = mean −log σ(z)."""
    z = -0.5 * beta * ((policy_w - policy_l) - (ref_w - ref_l))
    return -F.logsigmoid(z).mean(), z


def pair_preference_loss(policy: Backbone, reference: Backbone, pairs: NoisyLatents, beta: float) -> LossOutput:
    """DPO loss on noisy pairs stacked as [winners; losers]: x_t and the target (2B, C, h, w), t (2B,).

    Shared by DPO, DPO-γ-t (x_t from forward noising) and InPO (x_t from inversion).
    """
    policy_err = pairs.error(policy)  # (2B,)
    with torch.no_grad():
        ref_err = pairs.error(reference)
    policy_w, policy_l = policy_err.chunk(2)
    ref_w, ref_l = ref_err.chunk(2)
    loss, z = dpo_loss(policy_w, policy_l, ref_w, ref_l, beta)
    return LossOutput(loss, {
        "loss": loss.item(),
        "implicit_acc": (z > 0).float().mean().item(),
        "policy_mse": policy_err.mean().item(),
        "ref_mse": ref_err.mean().item(),
    })


class DPO(AlignmentMethod, name="dpo", data_kind="pairs", needs_reference=True, config=DPOConfig):
    def loss(self, batch: PairBatch, policy: Backbone, reference: Backbone, rng: torch.Generator) -> LossOutput:
        pairs = noise_pairs(policy, batch, self.loss_space(policy), rng)
        return pair_preference_loss(policy, reference, pairs, self.config.beta)

    def max_nfe_per_item(self) -> int:
        return 8
