"""MaPO: Margin-aware Preference Optimization, reference-free (Hong et al., 2024).

Reference implementation: mapo-t2i/mapo @4f2905f, `utils.py` L283-298 (`compute_loss`), defaults in
`args.py` L157-171; the older `train.py` @b1c1088 has the same loss inline. For a pair, one (t, ε)
is shared by both images (`noise.chunk(2)[0].repeat(2, ...)`, `timesteps.repeat(2)`), and with the
error in the loss space (`loss_space`, see `base.py`) per image, L = mean_{C,H,W} ‖ŷ_θ(x_t, t, c) − y‖²,
y = ε in ε-space or v = a_t ε − s_t x0 in v-space:

    s(L)   = γ L / (e^{γL} − 1)                        decreasing in L: a "likelihood" score
    margin = s(L_w) − s(L_l)
    loss   = mean_B L_w − β · mean_B log σ(T · margin)

γ = 0.5 (`--snr_value`), β = 0.1 (`--beta_mapo`) and T = the scheduler's `num_train_timesteps`
(1000 for SD/SDXL, and for SD3's flow scheduler; "multiplying T [...] maximize[s] the margin throughout the
denoising process").
No reference model. The repo takes the MSE against the model's own target (ε or v,
`noise_scheduler.config.prediction_type`), which is the default "native" space here: ε for SDXL (what
MaPO trained) and SD 1.5, v for the toy. An explicit space changes more than a scale: L_v = L_ε / ᾱ_t,
a per-t rescaling that the nonlinear s(·) does not absorb (large v errors at the noisy end saturate s).
On a flow model (SD3) the native space is the velocity, y = u = ε − x0 (MaPO trained no flow model: our
adaptation), with one (σ, ε) per pair (`base.py`); L_u = L_ε / (1 − σ)².
Cost per pair: policy forward+backward on 2 latents = 6F.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bench.core.backbone import Backbone
from bench.core.search_space import FloatRange
from methods.alignment.base import AlignmentMethod, LossOutput, MethodConfig, PairBatch, noise_pairs
from methods.checks import require

# Search ranges, log-uniform (the repo publishes no grid, only the defaults β 0.1, γ 0.5 in `args.py`):
# β weighs the margin term against the winners' MSE, from almost SFT (0.01) to margin-dominated (2);
# γ sets where s(L) = γL / (e^{γL} − 1) bends: s saturates once γL ≫ 1, and v-space errors on a v-model are
# 1/ᾱ_t times the ε-space ones (up to ~200x at the noisy end), so the range reaches 10x below the default.
BETA_SEARCH = FloatRange(0.01, 2.0, log=True)
GAMMA_SEARCH = FloatRange(0.05, 2.0, log=True)


@dataclass
class MaPOConfig(MethodConfig):
    beta: float = field(default=0.1, metadata={"help": "weight β of the margin term (repo `--beta_mapo`)",
                                               "search": BETA_SEARCH})
    gamma: float = field(default=0.5, metadata={"help": "γ in s(L) = γL / (e^{γL} − 1) (repo `--snr_value`)",
                                                "search": GAMMA_SEARCH})

    def __post_init__(self):
        super().__post_init__()
        require(self.beta > 0, "beta", "> 0", self.beta)
        require(self.gamma > 0, "gamma", "> 0", self.gamma)


def mapo_loss(winner_err: torch.Tensor, loser_err: torch.Tensor, beta: float, gamma: float,
              num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, margin) from per-pair errors (each (B,)): loss = mean L_w − β mean log σ(T · margin).

    Computed in float64: T multiplies the rounding of s(L) (1e-7 in float32) into the logit.
    """

    def score(err: torch.Tensor) -> torch.Tensor:  # s(L) = γL / (e^{γL} − 1)
        return gamma * err / torch.expm1(gamma * err)

    winner, loser = winner_err.double(), loser_err.double()  # (B,)
    margin = score(winner) - score(loser)
    loss = winner.mean() - beta * F.logsigmoid(num_train_timesteps * margin).mean()
    return loss.to(winner_err.dtype), margin


class MaPO(AlignmentMethod, name="mapo", data_kind="pairs", needs_reference=False, config=MaPOConfig):
    def loss(self, batch: PairBatch, policy: Backbone, reference: Backbone | None,
             rng: torch.Generator) -> LossOutput:
        err = noise_pairs(policy, batch, self.loss_space(policy), rng).error(policy)  # (2B,)
        winner_err, loser_err = err.chunk(2)  # (B,) each
        loss, margin = mapo_loss(winner_err, loser_err, self.config.beta, self.config.gamma,
                                 policy.num_train_timesteps)
        return LossOutput(loss, {
            "loss": loss.item(),
            "margin_acc": (margin > 0).float().mean().item(),
            "winner_mse": winner_err.mean().item(),
            "loser_mse": loser_err.mean().item(),
        })

    def max_nfe_per_item(self, embedded_guidance: bool = False) -> int:
        return 6
