"""Cal-DPO adapted to diffusion: Diffusion-DPO's logit plus Cal-DPO's calibration of the implicit rewards.

Cal-DPO (Xiao et al., NeurIPS 2024, "Cal-DPO: Calibrated Direct Preference Optimization for Language Model
Alignment", arXiv 2412.14516), written for language models; reference implementation tengxiao1/Cal-DPO @646a754,
`scripts/dpo_trainer.py` `dpo_loss`, `loss_type == "Cal-DPO"`. With h = log π_θ(y|x) − log π_ref(y|x), the
sequence log-ratio (a sum over tokens), for the chosen (w) and rejected (l) response:

    L_Cal-DPO = −log σ(h_w − h_l) + ½ [(h_w − 1/(2β_c))² + (h_l + 1/(2β_c))²]      (batch means)

The contrastive (Bradley-Terry) term has no β; β_c, the KL weight, only sets the targets: the calibration pins
the implicit rewards β_c·h of winner and loser to ±½, which holds the winner's likelihood above the reference's
while the margin grows (under DPO both rewards can fall together). The ½ on the squares is the repo's (F.mse_loss
terms × 0.5); the paper writes them without it.

Adapted to diffusion. A diffusion model has no tractable log π(x0 | c); Diffusion-DPO (Wallace et al., CVPR 2024,
arXiv 2311.12908, Eq. 10-14; SalesforceAIResearch/DiffusionDPO `train.py`) bounds the chain's log-ratio by one
noised step: with one (t, ε) per pair and e(x) = mean_{C,H,W} ‖ŷ(x_t, t, c) − y‖² in the loss space (`base.py`),

    log p_θ(x_{0:T}) / p_ref(x_{0:T})  ≈  −T ω(λ_t) D (e_θ(x) − e_ref(x))       (D = C·H·W: e is a mean, not a sum)

with ω(λ_t) a per-t weight taken constant. The scale T ω D of this surrogate is not known (an LLM's summed token
log-probabilities fix theirs; here it rests on a weighting Diffusion-DPO drops), and Diffusion-DPO folds it, with
its KL weight β_KL, into its one β: β/2 = β_KL T ω D, so that its logit β_KL (h_w − h_l) is
z = −(β/2)(Δ_θ − Δ_ref), Δ = e(x^w) − e(x^l) (the repo's `scale_term = -0.5 * beta_dpo`). We take the same fold
with β_KL = 1, since Cal-DPO's contrastive term has no β of its own, so the stand-in for h, the implicit reward
of an image, is Diffusion-DPO's per-image term

    r(x)  = −(β/2) (e_θ(x) − e_ref(x)),        r_w − r_l = z,  Diffusion-DPO's logit
    loss  = mean_B −log σ(z) + ½ [mean_B (r_w − 1/(2β_c))² + mean_B (r_l + 1/(2β_c))²]

The first term is exactly the `dpo` loss at the same β; β keeps `dpo`'s meaning, default and search range (the
surrogate's scale), and `cal_beta` is Cal-DPO's β_c (the targets ±1/(2β_c) on r). Its LLM values do not carry
over: β_c = 0.001 (`run/beta001_sametokenize.sh`) targets ±500 for summed token log-ratios, whereas r here is on
the scale of Diffusion-DPO's logit. The default β_c = 1, targets r = ±½ and a gap z = 1 (−log σ(1) = 0.31), is our
choice on that scale, not a published value. Also
adapted: r is a one-step, one-noise Monte-Carlo estimate, not a sequence log-ratio, so the squares penalise its
noise over (t, ε) as well as its mean's distance to the target (E(r − c)² = (E r − c)² + Var r).
On a flow model (SD3) e is the velocity error ‖v̂ − (ε − x0)‖² with one (σ, ε) per pair (`base.py`), so z is
Flow-DPO's logit (`dpo.py`) and r its per-image term.
`safeguard=true` adds Diffusion-SDPO's rescaling of the losers' gradient (`dpo.py`), which here acts on both terms.
Cost per pair: as DPO, policy forward+backward on 2 latents (6F) and a reference forward on 2 (2F) = 8F.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bench.core.backbone import Backbone
from bench.core.search_space import FloatRange
from methods.alignment.base import AlignmentMethod, LossOutput, PairBatch, noise_pairs
from methods.alignment.dpo import BETA_SEARCH, SafeguardConfig, dpo_loss, pair_errors
from methods.checks import require

# β_c search range, log-uniform: reward targets ±1/(2β_c) from ±5 (z = 10 at the targets, −log σ ≈ 5e-5: almost
# unconstrained DPO) to ±0.05 (z = 0.1: the rewards held near the reference's). The paper's LLM grid (β_c 0.001-0.002,
# targets ±250-500 on summed token log-ratios) has no counterpart at this scale.
CAL_BETA_SEARCH = FloatRange(0.1, 10.0, log=True)


@dataclass
class CalDPOConfig(SafeguardConfig):
    beta: float = field(default=5000.0, metadata={
        "help": "Diffusion-DPO β: implicit reward r = −(β/2)(e_θ − e_ref) of an image (as `dpo`: repo default 5000)",
        "search": BETA_SEARCH})
    cal_beta: float = field(default=1.0, metadata={
        "help": "Cal-DPO's β_c: rewards of winner and loser calibrated to ±1/(2β_c) (1: ±½, a logit gap of 1)",
        "search": CAL_BETA_SEARCH})

    def __post_init__(self):
        super().__post_init__()
        require(self.beta > 0, "beta", "> 0", self.beta)
        require(self.cal_beta > 0, "cal_beta", "> 0", self.cal_beta)


def cal_dpo_loss(policy_w: torch.Tensor, policy_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
                 beta: float, cal_beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, z, r_w, r_l) from per-pair errors (each (B,)): r = −(β/2)(e_θ − e_ref), z = r_w − r_l,
    loss = mean −log σ(z) + ½ [mean (r_w − 1/(2β_c))² + mean (r_l + 1/(2β_c))²]."""
    contrastive, z = dpo_loss(policy_w, policy_l, ref_w, ref_l, beta)
    reward_w = -0.5 * beta * (policy_w - ref_w)  # (B,)
    reward_l = -0.5 * beta * (policy_l - ref_l)
    target = 1 / (2 * cal_beta)
    calibration = F.mse_loss(reward_w, torch.full_like(reward_w, target)) + \
        F.mse_loss(reward_l, torch.full_like(reward_l, -target))
    return contrastive + 0.5 * calibration, z, reward_w, reward_l


class CalDPO(AlignmentMethod, name="cal-dpo", data_kind="pairs", needs_reference=True, config=CalDPOConfig):
    def loss(self, batch: PairBatch, policy: Backbone, reference: Backbone, rng: torch.Generator) -> LossOutput:
        cfg = self.config
        pairs = noise_pairs(policy, batch, self.loss_space(policy), rng)
        errors = pair_errors(policy, reference, pairs, cfg.safeguard_margin(policy.family))
        loss, z, reward_w, reward_l = cal_dpo_loss(errors.policy_w, errors.policy_l, errors.ref_w, errors.ref_l,
                                                   cfg.beta, cfg.cal_beta)
        return LossOutput(loss, {**errors.logs(loss, z), "reward_w": reward_w.mean().item(),
                                 "reward_l": reward_l.mean().item()})

    def max_nfe_per_item(self, embedded_guidance: bool = False) -> int:
        return 8
