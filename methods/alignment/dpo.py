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
On a flow model (SD3: x_σ = (1 − σ) x0 + σ ε) the native loss space is the velocity, y = u = ε − x0, with one
(σ, ε) per pair: the loss above is then Flow-DPO's (research notes §7, flow_grpo_refactor `train_sd3_dpo.py`
@7be03dc: e = mean_elems(v̂ − u)² for θ and ref, z = −½β[(e_θ^w − e_ref^w) − (e_θ^l − e_ref^l)], no CFG in the
training forward, constant β), on offline pairs, with σ drawn uniformly over the shifted training table where
Flow-DPO draws a logit-normal index (`base.py`). Flow-DPO's β is 100 (its config, online SD3.5-M pairs);
‖û − u‖² = ‖ε̂ − ε‖² / (1 − σ)², so an ε-space β acts 1/(1 − σ)² times as strongly per σ in velocity space.
Cost per pair: policy forward+backward on 2 latents (6F) and a reference forward on 2 (2F) = 8F.

Winner-preserving safeguard (`safeguard=true`; Fu et al. 2025, "Diffusion-SDPO: Safeguarded Direct Preference
Optimization for Diffusion Models", arXiv 2511.03317; reference AIDC-AI/Diffusion-SDPO @1c83c65, `train.py`
`get_adaptive_lose_l_scale` and the loss block after it), an option of every pair method on this loss path
(dpo, dpo-gamma-t, inpo, cal-dpo; dspo applies it to its logit z). The DPO loss's gradient is c (∇A − ∇B),
c = (β/2) σ(−z) > 0, with A, B the winners' and losers' errors, so a descent step of size η changes A by
−ηc (‖∇A‖² − ∇B·∇A) to first order: it raises A whenever ∇B·∇A > ‖∇A‖². Scaling the losers' gradient by λ
with λ ∇B·∇A ≤ (1 − μ) ‖∇A‖² makes that change at most −ηc μ ‖∇A‖²:

    A = mean_{B,C,H,W} (ŷ_w − y_w)²,   B = mean_{B,C,H,W} (ŷ_l − y_l)²    over the whole (micro-)batch
    g_A = ∂A/∂ŷ_w = 2 (ŷ_w − y_w) / N,  g_B = ∂B/∂ŷ_l = 2 (ŷ_l − y_l) / N   in output space, detached (N elements)
    λ = clamp((1 − μ) ‖g_A‖² / (g_B·g_A + 10⁻⁹), 0, 1)   if g_B·g_A > 0,   else 1
    L_l ← sg(L_l) + λ (L_l − sg(L_l))                     (value unchanged, gradient × λ; sg = stop-gradient)

and then the method's loss as usual. As the repo, the parameter-space condition is approximated in output space
(the winners' and losers' outputs treated as one vector space), λ is one detached scalar per micro-batch, and the
errors are in the loss space (ε in the repo). Where we differ: the sums are over all processes' shards (the
repo: each process's own micro-batch), so λ does not depend on the number of processes; it is computed in
float64. μ: the repo's argparse default is 0 (which only keeps the winners' error from rising); its launchers use
0.9 for SD 1.5 Diffusion-DPO, 0.6 for SDXL (`scripts/train/sd15_diffusion_dpo.sh`, `sdxl_diffusion_dpo.sh`), which are
the defaults here by model family (a family it never launched, SD3 among them, takes SDXL's 0.6: `SAFEGUARD_MU`);
DSPO's launchers use 0.2 (SD 1.5) and 0.6 (SDXL). With `safeguard=false`
(the default) the loss and its gradient are those of the plain method, bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bench.core.backbone import Backbone
from bench.core.search_space import FloatRange
from methods.alignment.base import AlignmentMethod, LossOutput, MethodConfig, NoisyLatents, PairBatch, noise_pairs
from methods.checks import require
from methods.shards import current, global_mean

# DPO-family β search range, log-uniform over 3.3 decades: the papers' 2000 (SD 1.5) and 5000 (SDXL;
# KTO App. A.1 and InPO's SDXL example too), the KTO repo's 1000 and diffusers' 2500 (= 5000 here) in the
# upper part, the toy suite's ε-space 500 in the middle, and room below for v-space on a v-model: there
# the same β acts 1/ᾱ_t times as strongly per t, and the ε-space loss had weighed v errors by ᾱ_t, whose
# mean is 0.37 over t ~ U{0..999} on SD's schedule (0.075 under dpo-gamma-t's γ = 0.9 steps), so the
# toy's ε-space 500 is roughly 190 (40 for dpo-gamma-t) in v-space. Diffusion-DPO published no grid.
BETA_SEARCH = FloatRange(10.0, 2e4, log=True)


# Diffusion-SDPO's μ by model family (`Backbone.family`): its Diffusion-DPO launchers, scripts/train/sd15_diffusion_dpo.sh
# and sdxl_diffusion_dpo.sh (the toy is SD-shaped: 0.9).
SAFEGUARD_MU = {"sd": 0.9, "sdxl": 0.6}
# A family the repo never launched (the flow families: SD3, FLUX) takes its SDXL value, our rule, not a published
# value: SDXL is the repo's only 1024² model, the nearest to SD3.5-M (2.5B) and FLUX in resolution and size, and 0.6
# is the μ of both its SDXL launchers (Diffusion-DPO and DSPO), so it does not hinge on the loss; μ bounds a ratio of
# output-space gradient products (λ ∇B·∇A ≤ (1 − μ) ‖∇A‖²), dimensionless in any prediction space.
UNLAUNCHED_FAMILY_MU_FROM = "sdxl"
SAFEGUARD_EPS = 1e-9  # `get_adaptive_lose_l_scale`'s eps in the denominator


@dataclass
class SafeguardConfig(MethodConfig):
    """The Diffusion-SDPO winner-preserving option every DPO-style pair method shares (see the module docstring).
    Subclass it instead of `MethodConfig`; the fields are keyword-only, after the method's own in `__init__`."""

    safeguard: bool = field(default=False, kw_only=True, metadata={
        "help": "Diffusion-SDPO winner-preserving safeguard: scale the losers' gradient so that a step does not raise "
                "the winners' error to first order"})
    safeguard_mu: float | None = field(default=None, kw_only=True, metadata={
        "help": "safeguard margin μ in [0, 1] (larger: more conservative); None: Diffusion-SDPO's launcher value "
                "for the model family (SD 1.5 and the toy 0.9, SDXL 0.6; families it never launched, e.g. SD3: "
                "SDXL's 0.6)"})

    def __post_init__(self):
        super().__post_init__()
        require(self.safeguard_mu is None or 0 <= self.safeguard_mu <= 1, "safeguard_mu", "in [0, 1] (or None)",
                self.safeguard_mu)

    def safeguard_margin(self, family: str, launcher_values: dict[str, float] = SAFEGUARD_MU) -> float | None:
        """μ of the safeguard, or None when it is off: `safeguard_mu`, else `launcher_values[family]`, and for a
        family without a launcher value the SDXL one (`UNLAUNCHED_FAMILY_MU_FROM`)."""
        if not self.safeguard:
            return None
        if self.safeguard_mu is not None:
            return self.safeguard_mu
        return launcher_values.get(family, launcher_values[UNLAUNCHED_FAMILY_MU_FROM])


@dataclass
class DPOConfig(SafeguardConfig):
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


def winner_preserving_scale(residual: torch.Tensor, mu: float) -> torch.Tensor:
    """Diffusion-SDPO's λ (a detached float64 scalar) from the residuals ŷ − y stacked [winners; losers]
    (2B, C, H, W): (1 − μ) ‖g_A‖² / (g_B·g_A + 10⁻⁹) clamped to [0, 1] if g_B·g_A > 0, else 1, with
    g = 2 (ŷ − y) / N the gradient of each half's mean square over its N elements (of all processes' shards)."""
    residual_w, residual_l = residual.detach().double().chunk(2)  # (B, C, H, W) each
    elements = residual_w.numel() * current().world  # N of the global batch's winners (equal shards)
    winner_norm = 4 * global_mean((residual_w * residual_w).mean()) / elements  # ‖g_A‖² = 4 Σ r_w² / N²
    alignment = 4 * global_mean((residual_l * residual_w).mean()) / elements  # g_B·g_A = 4 Σ r_l r_w / N²
    if alignment <= 0:  # the losers' gradient does not push the winners' error up: leave it whole
        return torch.ones((), dtype=torch.float64, device=residual.device)
    return ((1 - mu) * winner_norm / (alignment + SAFEGUARD_EPS)).clamp(0.0, 1.0)


def scale_gradient(value: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """`value` with its gradient multiplied by `scale`: sg(v) + λ (v − sg(v)) (sg = stop-gradient)."""
    return value.detach() + scale.to(value.dtype) * (value - value.detach())


def prediction_residual(backbone: Backbone, latents: NoisyLatents) -> torch.Tensor:
    """ŷ − y (N, C, h, w) in float32, whose mean square over (C, H, W) is `latents.error(backbone)`."""
    prediction = backbone.prediction(latents.x_t, latents.t.to(backbone.device), latents.cond, latents.space)
    return prediction.float() - latents.target.float()


@dataclass
class PairErrors:
    """Per-pair errors (B,) of the policy (with gradient) and of the frozen reference, and the safeguard's λ."""

    policy_w: torch.Tensor
    policy_l: torch.Tensor  # its gradient scaled by `loser_scale` when the safeguard is on
    ref_w: torch.Tensor
    ref_l: torch.Tensor
    loser_scale: torch.Tensor | None = None  # λ, or None without the safeguard

    def logs(self, loss: torch.Tensor, z: torch.Tensor) -> dict[str, float]:
        """What every pair method on this path logs: the loss, the implicit accuracy of the DPO logit z (B,), the
        errors, and λ when the safeguard is on."""
        logs = {"loss": loss.item(), "implicit_acc": (z > 0).float().mean().item(),
                "policy_mse": torch.cat([self.policy_w, self.policy_l]).mean().item(),
                "ref_mse": torch.cat([self.ref_w, self.ref_l]).mean().item()}
        if self.loser_scale is not None:
            logs["loser_grad_scale"] = self.loser_scale.item()
        return logs


def pair_errors(policy: Backbone, reference: Backbone, pairs: NoisyLatents,
                safeguard_mu: float | None = None) -> PairErrors:
    """Errors of the policy and the reference on noisy pairs stacked as [winners; losers] (x_t and the target
    (2B, C, h, w), t (2B,)); with `safeguard_mu`, the losers' gradient scaled by Diffusion-SDPO's λ."""
    residual = prediction_residual(policy, pairs)  # (2B, C, h, w)
    policy_w, policy_l = (residual ** 2).mean(dim=(1, 2, 3)).chunk(2)  # (B,) each
    with torch.no_grad():
        ref_w, ref_l = pairs.error(reference).chunk(2)
    if safeguard_mu is None:
        return PairErrors(policy_w, policy_l, ref_w, ref_l)
    scale = winner_preserving_scale(residual, safeguard_mu)
    return PairErrors(policy_w, scale_gradient(policy_l, scale), ref_w, ref_l, scale)


def pair_preference_loss(policy: Backbone, reference: Backbone, pairs: NoisyLatents, beta: float,
                         safeguard_mu: float | None = None) -> LossOutput:
    """DPO loss on noisy pairs stacked as [winners; losers] (see `pair_errors`).

    Shared by DPO, DPO-γ-t (x_t from forward noising) and InPO (x_t from inversion).
    """
    errors = pair_errors(policy, reference, pairs, safeguard_mu)
    loss, z = dpo_loss(errors.policy_w, errors.policy_l, errors.ref_w, errors.ref_l, beta)
    return LossOutput(loss, errors.logs(loss, z))


class DPO(AlignmentMethod, name="dpo", data_kind="pairs", needs_reference=True, config=DPOConfig):
    def loss(self, batch: PairBatch, policy: Backbone, reference: Backbone, rng: torch.Generator) -> LossOutput:
        pairs = noise_pairs(policy, batch, self.loss_space(policy), rng)
        return pair_preference_loss(policy, reference, pairs, self.config.beta,
                                    self.config.safeguard_margin(policy.family))

    def max_nfe_per_item(self, embedded_guidance: bool = False) -> int:
        return 8
