"""DSPO: Direct Score Preference Optimization (Zhu et al., ICLR 2025, openreview DomBynQsqt).

Reference implementation: huaishengzhu/DSPO @8b4e09b, `train.py` L1141-1169, the
`train_method == 'dspo'` loss block (the same code at @20867cf; forked from Diffusion-DPO).
Noising as in DPO (see `dpo.py`): one (t, ε) shared by both images of a pair.
With the predictions ŷ at x_t^w of the policy and of the frozen reference and the target y, all in the
loss space (`loss_space`, see `base.py`: y = ε in ε-space, the repo's and SD's native space;
y = v = a_t ε − s_t x0 in v-space, the toy's native space),

    R_w   = ŷ_θ(x_t^w) − y                   the winner's score-matching residual   (B, C, H, W)
    D_w   = ŷ_θ(x_t^w) − ŷ_ref(x_t^w)        the winner's drift from the reference  (B, C, H, W)
    z     = −(β/2) (Δ_θ − Δ_ref)             the Diffusion-DPO logit (errors ‖ŷ − y‖²), NOT detached

    SD 1.5 form:  loss = mean_{B,C,H,W} (R_w − β (1 − σ(z)) D_w)²
    SDXL form:    loss = mean_{B,C,H,W} ((1 − σ(z)) D_w)²    if mean_{B,C,H,W} D_w² ≥ 0.1
                  loss = mean_B (1 − σ(z))²                   otherwise

In v-space R_w, D_w are the ε-space ones divided by a_t (ε̂ − ε = a_t (v̂ − v)), so the squared terms,
the DPO errors in z and the drift the SDXL form compares with 0.1 all scale by 1/ᾱ_t; at real scale
(ε-models) nothing changes. DSPO issue #6 notes the repo has no v-prediction support.
The repo picks the form with its `--sdxl` flag; `form="auto"` follows `policy.family` (the SDXL form on SDXL,
the SD 1.5 form on every other family, the flow family included: below). β enters z
with the DPO ½ but the SD 1.5 loss without it (the scale question of DSPO issue #3): at the
launcher's β = 0.001, z ≈ 0 and the loss is ≈ ‖R_w − 0.0005 D_w‖², almost SFT on the winners.
Defaults: β = 0.001 for the SD 1.5 form (`launchers/sd15.sh`; README grid {0.001, 0.01, 0.05}),
5000 for the SDXL form (`launchers/sdxl.sh` and the argparse default; README grid 1000-5000).
Cost per pair: policy forward+backward on 2 latents (6F) and a reference forward on 2 (2F) = 8F.

Flow form (our adaptation; DSPO is published for SD 1.5 and SDXL ε-models only, and its repo has no v- or
flow-prediction, issue #6). On a flow-matching backbone (SD3: x_σ = (1 − σ) x0 + σ ε, levels t = 1000·σ from
`Backbone.training_levels`, see `base.py`) the native loss space is the velocity: one (σ, ε) per pair, shared by
both images as DPO shares (t, ε), the target u = ε − x0 and the predictions velocities v̂, so

    R_w   = v̂_θ(x_σ^w) − u^w,     D_w = v̂_θ(x_σ^w) − v̂_ref(x_σ^w),     e = mean_{C,H,W} ‖v̂ − u‖² in z
    loss  = mean_{B,C,H,W} (R_w − β (1 − σ(z)) D_w)²                     (the SD 1.5 form, `form="auto"`)

Read as score matching, the SD 1.5 form regresses v̂_θ onto u + β (1 − σ(z)) D_w, the denoising target moved along
the policy's drift from the reference by the preference weight 1 − σ(z). It is the repo's default path (without
`--sdxl`); the SDXL form (no R_w, and a switch on mean D_w² ≥ 0.1, a threshold set on SDXL's ε scale) is tied to
SDXL by its flag and that threshold, so `auto` takes the SD 1.5 form, with its β = 0.001, on a flow model (`form`
picks either explicitly). As in v-space, ε̂ − ε = (1 − σ)(v̂ − u), so R_w, D_w are the ε-space ones divided by
1 − σ and every squared term scales by 1/(1 − σ)².

`safeguard=true`: Diffusion-SDPO's winner-preserving rescaling (see `dpo.py`), as its repo drops it into DSPO
(AIDC-AI/Diffusion-SDPO @1c83c65, `train.py`, `train_method == 'dspo'`): the losers' errors enter z with their
gradient scaled by λ; R_w and D_w are untouched. μ defaults to that repo's DSPO launchers, 0.2 for the SD 1.5 form
and 0.6 for the SDXL form (`scripts/train/sd15_dspo.sh`, `sdxl_dspo.sh`), by the form used (so 0.2 on a flow model).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bench.core.backbone import Backbone
from bench.core.search_space import FloatRange
from methods.alignment.base import AlignmentMethod, LossOutput, PairBatch, noise_pairs
from methods.alignment.dpo import SafeguardConfig, dpo_loss, scale_gradient, winner_preserving_scale
from methods.checks import require

FORMS = ("auto", "sd15", "sdxl")
DEFAULT_BETA = {"sd15": 0.001, "sdxl": 5000.0}  # launchers/sd15.sh, launchers/sdxl.sh
SDXL_DRIFT_THRESHOLD = 0.1  # train.py, SDXL branch: `pred2.pow(2).mean(...).mean() >= 0.1`
SAFEGUARD_MU = {"sd15": 0.2, "sdxl": 0.6}  # Diffusion-SDPO's scripts/train/sd15_dspo.sh, sdxl_dspo.sh


# β search range, log-uniform: the README's grids, SD 1.5 form {0.001, 0.01, 0.05} and SDXL form 1000-5000,
# lie 5 decades apart, and one declared range must serve both forms (`form="auto"` picks by the backbone), so it
# spans both with a decade to spare each side. For a sweep of one form, narrow it; the default None (each form's
# launcher value) is not a point of the range.
BETA_SEARCH = FloatRange(1e-4, 1e4, log=True)


@dataclass
class DSPOConfig(SafeguardConfig):
    beta: float | None = field(default=None, metadata={
        "help": "β in z and in the SD 1.5 loss; None: the launcher value of the form used (SD 1.5 0.001, SDXL 5000)",
        "search": BETA_SEARCH})
    form: str = field(default="auto", metadata={"help": "'sd15', 'sdxl' or 'auto' (follow the policy's family)"})
    safeguard_mu: float | None = field(default=None, kw_only=True, metadata={
        "help": "safeguard margin μ in [0, 1] (larger: more conservative); None: Diffusion-SDPO's DSPO launcher value "
                "for the form used (SD 1.5 0.2, SDXL 0.6)"})

    def __post_init__(self):
        super().__post_init__()
        require(self.beta is None or self.beta > 0, "beta", "> 0 (or None for the form's default)", self.beta)
        require(self.form in FORMS, "form", f"one of {FORMS}", self.form)


def dspo_loss(policy_pred: torch.Tensor, ref_pred: torch.Tensor, target: torch.Tensor, beta: float,
              form: str, safeguard_mu: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, z) from the policy's and reference's predictions and the target, all in one space, each
    (2B, C, H, W) stacked [winners; losers]; with `safeguard_mu`, the losers' errors enter z with their gradient
    scaled by Diffusion-SDPO's λ."""
    policy_err = ((policy_pred - target) ** 2).mean(dim=(1, 2, 3))  # (2B,)
    ref_err = ((ref_pred - target) ** 2).mean(dim=(1, 2, 3))
    policy_w, policy_l = policy_err.chunk(2)  # (B,) each
    if safeguard_mu is not None:
        policy_l = scale_gradient(policy_l, winner_preserving_scale(policy_pred - target, safeguard_mu))
    _, z = dpo_loss(policy_w, policy_l, *ref_err.chunk(2), beta)  # (B,)
    residual_w = (policy_pred - target).chunk(2)[0]  # R_w (B, C, H, W)
    drift_w = (policy_pred - ref_pred).chunk(2)[0]  # D_w (B, C, H, W)
    weight = (1 - torch.sigmoid(z)).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    if form == "sd15":
        loss = ((residual_w - beta * weight * drift_w) ** 2).mean()
    elif (drift_w ** 2).mean() >= SDXL_DRIFT_THRESHOLD:
        loss = ((weight * drift_w) ** 2).mean()
    else:
        loss = (weight ** 2).mean()
    return loss, z


class DSPO(AlignmentMethod, name="dspo", data_kind="pairs", needs_reference=True, config=DSPOConfig):
    def form_for(self, policy: Backbone) -> str:
        """The loss form used with this policy ("sd15" or "sdxl"): `form`, or with "auto" the repo's `--sdxl` flag
        (the SDXL form on the SDXL family, the SD 1.5 form on SD, the toy and flow models; module docstring)."""
        if self.config.form != "auto":
            return self.config.form
        return "sdxl" if policy.family == "sdxl" else "sd15"

    def loss(self, batch: PairBatch, policy: Backbone, reference: Backbone, rng: torch.Generator) -> LossOutput:
        pairs = noise_pairs(policy, batch, self.loss_space(policy), rng)
        target = pairs.target.float()  # (2B, C, h, w)
        policy_pred = policy.prediction(pairs.x_t, pairs.t, pairs.cond, pairs.space).float()  # (2B, C, h, w)
        with torch.no_grad():
            ref_pred = reference.prediction(pairs.x_t, pairs.t, pairs.cond, pairs.space).float()
        form = self.form_for(policy)
        beta = self.config.beta if self.config.beta is not None else DEFAULT_BETA[form]
        loss, z = dspo_loss(policy_pred, ref_pred, target, beta, form, self.config.safeguard_margin(form, SAFEGUARD_MU))
        return LossOutput(loss, {
            "loss": loss.item(),
            "implicit_acc": (z > 0).float().mean().item(),
            "policy_mse": ((policy_pred.detach() - target) ** 2).mean().item(),
            "ref_mse": ((ref_pred - target) ** 2).mean().item(),
        })

    def max_nfe_per_item(self, embedded_guidance: bool = False) -> int:
        return 8
