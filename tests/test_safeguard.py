"""Diffusion-SDPO's winner-preserving safeguard (`safeguard=true` on the pair methods): λ by hand, a step that
no longer raises the winners' error, and, off, the plain methods' loss and gradient bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from methods.alignment import METHODS
from methods.alignment.base import NoisyLatents, PairBatch, noise_pairs
from methods.alignment.dpo import pair_preference_loss, winner_preserving_scale
from methods.alignment.dspo import SAFEGUARD_MU as DSPO_SAFEGUARD_MU
from methods.alignment.dspo import dspo_loss

SAFEGUARDED = ["dpo", "dpo-gamma-t", "inpo", "dspo", "cal-dpo"]  # the pair methods on the shared DPO pair loss


def test_scale_hand_values():
    # One element per half, N = 1: g_A = 2 r_w = 1.0, g_B = 2 r_l = 0.8 (the reference's g = ∂ mean(r²)/∂ŷ = 2r/N).
    # μ = 0.9: λ = (1 − 0.9) · 1.0² / (0.8 · 1.0 + 1e-9) = 0.125000.
    residual = torch.tensor([0.5, 0.4]).view(2, 1, 1, 1)
    assert winner_preserving_scale(residual, 0.9).item() == pytest.approx(0.125, abs=1e-6)
    # g_B·g_A ≤ 0: the losers' gradient lowers the winners' error too, λ = 1.
    assert winner_preserving_scale(torch.tensor([0.5, -0.4]).view(2, 1, 1, 1), 0.9).item() == 1.0
    # μ = 0: λ = 1.0 / 0.8 = 1.25, clamped to 1.
    assert winner_preserving_scale(residual, 0.0).item() == 1.0
    # N = 4 elements per half: r_w = (1, 0, 0, 0), r_l = (3, 1, 0, 0); g_A = (0.5, 0, 0, 0), g_B = (1.5, 0.5, 0, 0),
    # ‖g_A‖² = 0.25, g_B·g_A = 0.75, λ = 0.1 · 0.25 / 0.75 = 0.0333333.
    residual = torch.tensor([[1.0, 0, 0, 0], [3.0, 1.0, 0, 0]]).view(2, 4, 1, 1)
    assert winner_preserving_scale(residual, 0.9).item() == pytest.approx(0.0333333, abs=1e-6)


class ConstantPrediction(torch.nn.Module):
    """A model whose prediction, in any space and for any input, is one learned tensor (1, C, 1, 1): its Jacobian is
    the identity for winners and losers alike, where Diffusion-SDPO's output-space condition is the exact one."""

    device = torch.device("cpu")
    family = "sd"

    def __init__(self, value: list[float]):
        super().__init__()
        self.value = torch.nn.Parameter(torch.tensor(value).view(1, -1, 1, 1))

    def prediction(self, x_t, t, cond, space):
        return self.value.expand_as(x_t)


def _one_sgd_step(safeguard_mu: float | None, lr: float = 0.1) -> tuple[float, float]:
    """The winner's error before and after one SGD step of DPO (β = 4) on one pair built so that the losers' gradient
    is aligned with the winners' and larger: residuals r_w = (1, 0, 0, 0), r_l = (3, 1, 0, 0) at the start."""
    policy, reference = ConstantPrediction([0.0] * 4), ConstantPrediction([0.0] * 4)
    target = torch.tensor([[-1.0, 0, 0, 0], [-3.0, -1.0, 0, 0]]).view(2, 4, 1, 1)  # [y_w; y_l]
    pairs = NoisyLatents(torch.zeros(2, 4, 1, 1), torch.zeros(2, dtype=torch.long), None, target, "eps")
    before = pairs.error(policy)[0].item()
    pair_preference_loss(policy, reference, pairs, 4.0, safeguard_mu).loss.backward()
    with torch.no_grad():
        policy.value -= lr * policy.value.grad
    return before, pairs.error(policy)[0].item()


def test_a_step_does_not_raise_the_winners_error():
    """By hand (z = 0, ∂L/∂z = −½, ∂z/∂ŷ = −2 (g_A − λ g_B)): the gradient is g_A − λ g_B with g_A = (0.5, 0, 0, 0) and
    g_B = (1.5, 0.5, 0, 0). Plain DPO (λ = 1) steps ŷ by +0.1 (1, 0.5, 0, 0): the winner's error goes 0.25 → 0.303125.
    With the safeguard (μ = 0.9, λ = 1/30) the step is −0.1 (0.45, −1/60, 0, 0): 0.25 → 0.228007."""
    before, plain = _one_sgd_step(None)
    assert before == 0.25 and plain == pytest.approx(0.303125, abs=1e-6) and plain > before
    before, safeguarded = _one_sgd_step(0.9)
    assert safeguarded == pytest.approx(0.228007, abs=1e-6) and safeguarded < before
    _, neutral = _one_sgd_step(1.0)  # μ = 1: λ = 0, the losers' gradient is dropped, only the winner is fitted
    assert neutral < safeguarded


def test_the_safeguard_scales_only_the_losers_gradient():
    """The loss value is unchanged, the winners' gradient too, and the losers' is multiplied by λ."""
    target = torch.tensor([[-1.0, 0, 0, 0], [-3.0, -1.0, 0, 0]]).view(2, 4, 1, 1)
    pairs = NoisyLatents(torch.zeros(2, 4, 1, 1), torch.zeros(2, dtype=torch.long), None, target, "eps")
    reference = ConstantPrediction([0.1, 0.0, 0.0, 0.2])

    def grad(mu):
        policy = ConstantPrediction([0.0] * 4)
        out = pair_preference_loss(policy, reference, pairs, 4.0, mu)
        out.loss.backward()
        return out, policy.value.grad.flatten()

    (plain, plain_grad), (safe, safe_grad) = grad(None), grad(0.9)
    assert torch.equal(plain.loss, safe.loss) and safe.logs["loser_grad_scale"] == pytest.approx(1 / 30)
    assert "loser_grad_scale" not in plain.logs
    # ∂L/∂ŷ = k (g_A − λ g_B) for one k = −(β/2) ∂L/∂z: recover k from the plain gradient's g_A − g_B = (−1, −0.5, 0, 0)
    k = plain_grad[0] / -1.0
    assert torch.allclose(safe_grad, k * torch.tensor([0.5 - 1.5 / 30, -0.5 / 30, 0.0, 0.0]), atol=1e-7)


# --------------------------------------------------------------------- off: today's losses, bit for bit
def _dpo_before(policy, reference, pairs, beta):
    """`pair_preference_loss` as it was before the safeguard (commit ed952cf): the reference for bitwise equality."""
    policy_err = pairs.error(policy)
    with torch.no_grad():
        ref_err = pairs.error(reference)
    policy_w, policy_l = policy_err.chunk(2)
    ref_w, ref_l = ref_err.chunk(2)
    z = -0.5 * beta * ((policy_w - policy_l) - (ref_w - ref_l))
    return -F.logsigmoid(z).mean()


def _dspo_before(policy_pred, ref_pred, target, beta, form):
    """`dspo_loss` as it was before the safeguard (commit ed952cf)."""
    policy_err = ((policy_pred - target) ** 2).mean(dim=(1, 2, 3))
    ref_err = ((ref_pred - target) ** 2).mean(dim=(1, 2, 3))
    policy_w, policy_l = policy_err.chunk(2)
    ref_w, ref_l = ref_err.chunk(2)
    z = -0.5 * beta * ((policy_w - policy_l) - (ref_w - ref_l))
    residual_w = (policy_pred - target).chunk(2)[0]
    drift_w = (policy_pred - ref_pred).chunk(2)[0]
    weight = (1 - torch.sigmoid(z)).view(-1, 1, 1, 1)
    if form == "sd15":
        return ((residual_w - beta * weight * drift_w) ** 2).mean()
    if (drift_w ** 2).mean() >= 0.1:
        return ((weight * drift_w) ** 2).mean()
    return (weight ** 2).mean()


def _trainable_policy(backbone):
    unet = copy.deepcopy(backbone.unet)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return backbone.with_unet(unet.requires_grad_(True))


def _pair_batch(backbone, n=3):
    g = torch.Generator().manual_seed(0)
    shape = (n, *backbone.latent_shape)
    cond = backbone.encode_prompts(["a small red circle on the left, black background"] * n)
    return PairBatch(torch.randn(shape, generator=g), torch.randn(shape, generator=g), cond)


def _loss_and_grads(loss_fn, policy):
    policy.unet.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in policy.unet.parameters()]


@pytest.mark.parametrize("config", [{}, {"safeguard": False, "safeguard_mu": 0.3}, {"loss_space": "eps", "beta": 3.0}])
def test_off_dpo_is_bitwise_todays(tiny_backbone, config):
    """With safeguard=false, DPO's loss and every parameter gradient equal the pre-safeguard code's, bit for bit (the
    committed leaderboard's runs stay valid); DPO-γ-t and InPO reach the same `pair_preference_loss`."""
    dpo = METHODS.get("dpo")
    method = dpo(dpo.Config(**config))
    policy, batch = _trainable_policy(tiny_backbone), _pair_batch(tiny_backbone)
    loss, grads = _loss_and_grads(lambda: method.loss(batch, policy, tiny_backbone,
                                                      torch.Generator().manual_seed(1)).loss, policy)

    def before():
        pairs = noise_pairs(policy, batch, method.loss_space(policy), torch.Generator().manual_seed(1))
        return _dpo_before(policy, tiny_backbone, pairs, method.config.beta)

    old_loss, old_grads = _loss_and_grads(before, policy)
    assert torch.equal(loss, old_loss) and all(torch.equal(a, b) for a, b in zip(grads, old_grads))


@pytest.mark.parametrize("form", ["sd15", "sdxl"])
def test_off_dspo_is_bitwise_todays(form):
    g = torch.Generator().manual_seed(0)
    policy_pred = torch.randn(6, 4, 3, 3, generator=g, requires_grad=True)
    ref_pred, target = torch.randn(6, 4, 3, 3, generator=g), torch.randn(6, 4, 3, 3, generator=g)
    beta = 0.5 if form == "sd15" else 40.0
    loss, _ = dspo_loss(policy_pred, ref_pred, target, beta, form)
    (grad,) = torch.autograd.grad(loss, policy_pred)
    old = _dspo_before(policy_pred, ref_pred, target, beta, form)
    (old_grad,) = torch.autograd.grad(old, policy_pred)
    assert torch.equal(loss, old) and torch.equal(grad, old_grad)


def test_dspo_safeguard_changes_only_the_logits_losers_gradient():
    g = torch.Generator().manual_seed(0)
    policy_pred = torch.randn(6, 4, 3, 3, generator=g, requires_grad=True)
    ref_pred, target = torch.randn(6, 4, 3, 3, generator=g), policy_pred.detach() - 1.0  # residuals aligned: λ < 1
    plain, _ = dspo_loss(policy_pred, ref_pred, target, 0.5, "sd15")
    safe, _ = dspo_loss(policy_pred, ref_pred, target, 0.5, "sd15", safeguard_mu=0.2)
    (plain_grad,), (safe_grad,) = torch.autograd.grad(plain, policy_pred), torch.autograd.grad(safe, policy_pred)
    assert torch.equal(plain, safe) and not torch.equal(plain_grad[3:], safe_grad[3:])
    assert torch.equal(plain_grad[:3], safe_grad[:3])  # the winners' rows: R_w, D_w and z's winner term, unscaled


# --------------------------------------------------------------------- the option on every pair method
@pytest.mark.parametrize("name", SAFEGUARDED)
def test_every_pair_method_takes_the_safeguard(tiny_backbone, name):
    """`safeguard=true` reaches the loss (λ logged, the loss value unchanged); the default μ follows the model family
    (DSPO: its form), and μ is validated."""
    cls = METHODS.get(name)
    assert cls.Config().safeguard is False and cls.Config().safeguard_mu is None
    with pytest.raises(ValueError, match="safeguard_mu"):
        cls.Config(safeguard_mu=1.5)
    policy, batch = _trainable_policy(tiny_backbone), _pair_batch(tiny_backbone, n=2)
    plain = cls().loss(batch, policy, tiny_backbone, torch.Generator().manual_seed(1))
    if name == "dspo":  # DSPO logs through its own dict; its loss value is unchanged as for the others
        safe = cls(cls.Config(safeguard=True)).loss(batch, policy, tiny_backbone, torch.Generator().manual_seed(1))
        assert torch.equal(plain.loss, safe.loss)
        assert cls.Config(safeguard=True).safeguard_margin("sd15", DSPO_SAFEGUARD_MU) == 0.2
        return
    safe = cls(cls.Config(safeguard=True)).loss(batch, policy, tiny_backbone, torch.Generator().manual_seed(1))
    assert torch.equal(plain.loss, safe.loss) and 0.0 <= safe.logs["loser_grad_scale"] <= 1.0
    assert cls.Config(safeguard=True).safeguard_margin("sd") == 0.9
    assert cls.Config(safeguard=True).safeguard_margin("sdxl") == 0.6
    assert cls.Config(safeguard=True, safeguard_mu=0.3).safeguard_margin("sdxl") == 0.3
    assert cls.Config(safeguard_mu=0.3).safeguard_margin("sd") is None  # off: μ is not used


@pytest.mark.parametrize("name", [n for n in SAFEGUARDED if n != "dspo"])
def test_a_family_the_repo_never_launched_takes_its_sdxl_mu(name):
    """Diffusion-SDPO launched SD 1.5 and SDXL only: SD3 (and any other flow family) takes SDXL's 0.6, the μ of both
    its SDXL launchers (dpo.py, `UNLAUNCHED_FAMILY_MU_FROM`), where it had been a KeyError; DSPO keys μ by its form."""
    config = METHODS.get(name).Config(safeguard=True)
    assert config.safeguard_margin("sd3") == 0.6 and config.safeguard_margin("flux") == 0.6
    assert METHODS.get(name).Config(safeguard=True, safeguard_mu=0.3).safeguard_margin("sd3") == 0.3
    assert METHODS.get("dspo").Config(safeguard=True).safeguard_margin("sd15", DSPO_SAFEGUARD_MU) == 0.2
