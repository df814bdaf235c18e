"""MaPO: Margin-aware Preference Optimization, reference-free (Hong et al., 2024).

Reference implementation: mapo-t2i/mapo @4f2905f, `utils.py` L283-298 (`compute_loss`), defaults in
`args.py` L157-171; the older `train.py` @b1c1088 has the same loss inline. For a pair, one (t, ε)
is shared by both images (`noise.chunk(2)[0].repeat(2, ...)`, `timesteps.repeat(2)`), and with
L = mean_{C,H,W} ‖ε̂_θ(x_t, t, c) − ε‖² per image:

    s(L)   = γ L / (e^{γL} − 1)                        decreasing in L: a "likelihood" score
    margin = s(L_w) − s(L_l)
    loss   = mean_B L_w − β · mean_B log σ(T · margin)

γ = 0.5 (`--snr_value`), β = 0.1 (`--beta_mapo`) and T = the scheduler's `num_train_timesteps`
(1000 for SD/SDXL; "multiplying T [...] maximize[s] the margin throughout the denoising process").
No reference model. The repo takes the MSE against the model's own target (ε or v); here, as for
every method of the suite, it is taken in ε-space: the same for ε-models (SDXL, what MaPO trained);
for v-models L_ε = ᾱ_t L_v, a per-t rescaling that the nonlinear s(·) does not absorb.
Cost per pair: policy forward+backward on 2 latents = 6F.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bench.backbone import Backbone
from methods.alignment.base import AlignmentMethod, LossOutput, PairBatch, noise_mse, noise_pairs, register


@dataclass
class MaPOConfig:
    beta: float = field(default=0.1, metadata={"help": "weight β of the margin term (repo `--beta_mapo`)"})
    gamma: float = field(default=0.5, metadata={"help": "γ in s(L) = γL / (e^{γL} − 1) (repo `--snr_value`)"})

    def __post_init__(self):
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if not self.gamma > 0:
            raise ValueError(f"gamma must be > 0, got {self.gamma}")


def mapo_loss(winner_err: torch.Tensor, loser_err: torch.Tensor, beta: float, gamma: float,
              num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, margin) from per-pair noise errors (each (B,)): loss = mean L_w − β mean log σ(T · margin).

    Computed in float64: T multiplies the rounding of s(L) (1e-7 in float32) into the logit.
    """

    def score(err: torch.Tensor) -> torch.Tensor:  # s(L) = γL / (e^{γL} − 1)
        return gamma * err / torch.expm1(gamma * err)

    winner, loser = winner_err.double(), loser_err.double()  # (B,)
    margin = score(winner) - score(loser)
    loss = winner.mean() - beta * F.logsigmoid(num_train_timesteps * margin).mean()
    return loss.to(winner_err.dtype), margin


@register
class MaPO(AlignmentMethod):
    name = "mapo"
    data_kind = "pairs"
    needs_reference = False
    Config = MaPOConfig

    def loss(self, batch: PairBatch, policy: Backbone, reference: Backbone | None,
             rng: torch.Generator) -> LossOutput:
        noised = noise_pairs(policy, batch, rng)
        winner_err, loser_err = noise_mse(policy, noised.x_t, noised.t, noised.cond, noised.noise).chunk(2)  # (B,) each
        loss, margin = mapo_loss(winner_err, loser_err, self.config.beta, self.config.gamma,
                                 policy.num_train_timesteps)
        return LossOutput(loss, {
            "loss": loss.item(),
            "margin_acc": (margin > 0).float().mean().item(),
            "winner_mse": winner_err.mean().item(),
            "loser_mse": loser_err.mean().item(),
        })

    def max_nfe_per_item(self) -> int:
        return 6
