"""Diffusion-DPO (Wallace et al., CVPR 2024, arXiv 2311.12908).

Reference implementation: SalesforceAIResearch/DiffusionDPO @5233e75, `train.py` L1044-1145.
For a pair (x0^w, x0^l) of one prompt c, one (t, ε) is shared by both images,
x_t^* = a_t x0^* + s_t ε, and with L(θ, x) = mean_{C,H,W} ‖ε̂_θ(x_t, t, c) − ε‖²:

    Δ_θ   = L(θ, x^w) − L(θ, x^l),      Δ_ref = L(ref, x^w) − L(ref, x^l)   (frozen reference)
    z     = −(β/2) (Δ_θ − Δ_ref)
    loss  = mean_pairs −log σ(z)

The ½ is the official repo's (`scale_term = -0.5 * beta_dpo`). diffusers' port
(examples/research_projects/diffusion_dpo) omits it, so its β is half of ours.
Defaults: β = 5000 (repo default and SDXL; the paper's SD 1.5 run used 2000).
Cost per pair: policy forward+backward on 2 latents (6F) and a reference forward on 2 (2F) = 8F.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bench.backbone import Backbone, Conditioning
from methods.alignment.base import AlignmentMethod, LossOutput, PairBatch, noise_mse, noise_pairs, register


@dataclass
class DPOConfig:
    beta: float = field(default=5000.0, metadata={"help": "KL weight β (official repo default; SD 1.5 paper: 2000)"})

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")


def dpo_loss(policy_w: torch.Tensor, policy_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, z) from per-pair noise errors (each (B,)): z = −(β/2)(Δ_θ − Δ_ref), loss = mean −log σ(z)."""
    z = -0.5 * beta * ((policy_w - policy_l) - (ref_w - ref_l))
    return -F.logsigmoid(z).mean(), z


def pair_preference_loss(policy: Backbone, reference: Backbone, x_t: torch.Tensor, t: torch.Tensor,
                         cond: Conditioning, eps_target: torch.Tensor, beta: float) -> LossOutput:
    """DPO loss on noised pairs stacked as [winners; losers]: x_t, eps_target (2B, C, h, w), t (2B,).

    Shared by DPO (x_t from forward noising) and InPO (x_t from inversion).
    """
    policy_err = noise_mse(policy, x_t, t, cond, eps_target)  # (2B,)
    with torch.no_grad():
        ref_err = noise_mse(reference, x_t, t, cond, eps_target)
    policy_w, policy_l = policy_err.chunk(2)
    ref_w, ref_l = ref_err.chunk(2)
    loss, z = dpo_loss(policy_w, policy_l, ref_w, ref_l, beta)
    return LossOutput(loss, {
        "loss": loss.item(),
        "implicit_acc": (z > 0).float().mean().item(),
        "policy_mse": policy_err.mean().item(),
        "ref_mse": ref_err.mean().item(),
    })


@register
class DPO(AlignmentMethod):
    name = "dpo"
    data_kind = "pairs"
    needs_reference = True
    Config = DPOConfig

    def loss(self, batch: PairBatch, policy: Backbone, reference: Backbone, rng: torch.Generator) -> LossOutput:
        noised = noise_pairs(policy, batch, rng)
        return pair_preference_loss(policy, reference, noised.x_t, noised.t, noised.cond, noised.noise, self.config.beta)

    def max_nfe_per_item(self) -> int:
        return 8
