"""Method losses against values computed by hand (latent shape (1, 4, 1, 1), ε = 0), and the wiring
of each method's full `loss()` against an independent recomputation."""

from __future__ import annotations

import math

import pytest
import torch

from methods.alignment import METHODS
from methods.alignment.base import ImageBatch, PairBatch
from methods.alignment.cal_dpo import cal_dpo_loss
from methods.alignment.dpo import dpo_loss
from methods.alignment.inpo import inverted_noise
from methods.alignment.kto import kto_loss

SHAPE = (1, 4, 1, 1)


def per_sample_error(pred_value: float) -> torch.Tensor:
    """mean over (C, H, W) of (ε_θ − ε)² with ε = 0 and a constant prediction."""
    pred, eps = torch.full(SHAPE, pred_value), torch.zeros(SHAPE)
    return ((pred - eps) ** 2).mean(dim=(1, 2, 3))


def test_dpo_hand_value():
    # ε_θ^w = 1, ε_θ^l = 2, ε_ref = 1 for both, β = 2/3: Δθ = 1 − 4 = −3, Δref = 0, z = 1.
    loss, z = dpo_loss(per_sample_error(1.0), per_sample_error(2.0), per_sample_error(1.0), per_sample_error(1.0), 2 / 3)
    assert z.item() == pytest.approx(1.0)
    assert loss.item() == pytest.approx(0.313262, abs=1e-6)
    assert loss.item() == pytest.approx(-math.log(1 / (1 + math.exp(-1))), abs=1e-9)


def test_dpo_diffusers_form_has_half_the_beta():
    # diffusers' port: −log σ(β_d (Δref − Δθ)) with no ½, so β_d = 1/3 matches β = 2/3 here.
    diffusers_form = -torch.nn.functional.logsigmoid(torch.tensor((0.0 - (1.0 - 4.0)) * (1 / 3)))
    loss, _ = dpo_loss(per_sample_error(1.0), per_sample_error(2.0), per_sample_error(1.0), per_sample_error(1.0), 2 / 3)
    assert loss.item() == pytest.approx(diffusers_form.item(), abs=1e-7)


def test_cal_dpo_hand_value():
    # β = 2, so r = −(e_θ − e_ref): e_θ^w = 0.4, e_ref^w = 1 → r_w = 0.6; e_θ^l = 1.4, e_ref^l = 1 → r_l = −0.4.
    # z = r_w − r_l = 1: −log σ(1) = log(1 + e⁻¹) = 0.313262. β_c = 0.5: targets ±1/(2β_c) = ±1,
    # ½ [(0.6 − 1)² + (−0.4 + 1)²] = ½ (0.16 + 0.36) = 0.26. Loss = 0.573262 (the LLM form's value for
    # h_w = 0.6, h_l = −0.4, β = 0.5, computed from tengxiao1/Cal-DPO `dpo_loss`).
    one = torch.tensor([1.0])
    loss, z, reward_w, reward_l = cal_dpo_loss(torch.tensor([0.4]), torch.tensor([1.4]), one, one, 2.0, 0.5)
    assert z.item() == pytest.approx(1.0) and (reward_w.item(), reward_l.item()) == pytest.approx((0.6, -0.4))
    assert loss.item() == pytest.approx(0.573262, abs=1e-6)
    # A second pair with policy == reference (r = 0, z = 0) enters every term as a batch mean:
    # ½ (0.313262 + log 2) + ½ [½ (0.16 + 1) + ½ (0.36 + 1)] = 0.503204 + 0.63 = 1.133204.
    loss, *_ = cal_dpo_loss(torch.tensor([0.4, 1.0]), torch.tensor([1.4, 1.0]), torch.ones(2), torch.ones(2), 2.0, 0.5)
    assert loss.item() == pytest.approx(1.133204, abs=1e-6)


def test_cal_dpo_gradient():
    """By hand, with L = −log σ(r_w − r_l) + ½ [(r_w − c)² + (r_l + c)²] and ∂r/∂e_θ = −β/2 (= −1 at β = 2):
    ∂L/∂e_θ^w = −(−σ(−z) + r_w − c) = σ(−1) + 0.4 = 0.668941 and ∂L/∂e_θ^l = −(σ(−z) + r_l + c) = −0.868941 for
    the values of `test_cal_dpo_hand_value`: descent lowers the winner's error and raises the loser's. Once the margin
    is won (z = 10, σ(−z) ≈ 0) the calibration alone acts, pulling each reward back to its target: the winner's
    error rises towards e_ref − 2c/β, the loser's falls."""
    policy = torch.tensor([0.4, 1.4], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([1.0, 1.0], dtype=torch.float64)
    loss, *_ = cal_dpo_loss(policy[:1], policy[1:], ref[:1], ref[1:], 2.0, 0.5)
    loss.backward()
    assert policy.grad.tolist() == pytest.approx([0.668941, -0.868941], abs=1e-6)

    saturated = torch.tensor([-4.0, 6.0], dtype=torch.float64, requires_grad=True)  # r_w = 5, r_l = −5, z = 10
    loss, *_ = cal_dpo_loss(saturated[:1], saturated[1:], ref[:1], ref[1:], 2.0, 0.5)
    loss.backward()
    sigma = 1 / (1 + math.exp(10))
    assert saturated.grad.tolist() == pytest.approx([sigma - (5 - 1), -sigma - (-5 + 1)], abs=1e-12)
    assert saturated.grad[0] < 0 < saturated.grad[1]

    def of_errors(p_w, p_l, r_w, r_l):
        return cal_dpo_loss(p_w, p_l, r_w, r_l, 3.0, 0.7)[0]

    g = torch.Generator().manual_seed(0)
    errors = [torch.rand(3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    assert torch.autograd.gradcheck(of_errors, errors)


def _replayed_pair_errors(batch, seed: int):
    """err(backbone, x0) (B,): ε-space errors with the draws a pair method makes from a generator seeded `seed` (one t,
    then one ε, per pair), recomputed by hand."""
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(0, 1000, (len(batch),), generator=g)
    noise = torch.randn(batch.winner.shape, generator=g)

    def err(backbone, x0):
        x_t = backbone.add_noise(x0, noise, t)
        return ((backbone.eps(x_t, t, batch.cond) - noise) ** 2).mean(dim=(1, 2, 3))

    return err


def test_cal_dpo_full_loss_matches_recomputation(tiny_backbone):
    """CalDPO.loss == cal_dpo_loss on errors recomputed by hand with DPO's draws (one t, ε per pair; ε-space)."""
    cal_dpo = METHODS.get("cal-dpo")
    method = cal_dpo(cal_dpo.Config(beta=100.0, cal_beta=2.0, loss_space="eps"))
    batch = _pair_batch(tiny_backbone)
    policy = _other_policy(tiny_backbone)
    out = method.loss(batch, policy, tiny_backbone, torch.Generator().manual_seed(7))

    err = _replayed_pair_errors(batch, seed=7)

    errors = err(policy, batch.winner), err(policy, batch.loser), err(tiny_backbone, batch.winner), err(
        tiny_backbone, batch.loser)
    expected, z, reward_w, _ = cal_dpo_loss(*errors, 100.0, 2.0)
    contrastive, _ = dpo_loss(*errors, 100.0)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert expected.item() > contrastive.item() > 0 and not torch.allclose(z, torch.zeros_like(z))
    assert out.logs["reward_w"] == pytest.approx(reward_w.mean().item(), rel=1e-4, abs=1e-6)


def test_prediction_error_is_the_mean_not_the_sum_over_chw():
    """prediction_mse averages (ŷ − y)² over (C, H, W), as Diffusion-DPO's `.mean(dim=list(range(1, ndim)))`:
    a prediction off by 1 in each of 4 channels x 2 x 2 pixels has error 1, not 16."""
    from methods.alignment.base import prediction_mse

    class Constant:  # a backbone whose prediction is 1 everywhere, in any space
        device = torch.device("cpu")

        @staticmethod
        def prediction(x_t, t, cond, space):
            return torch.ones_like(x_t)

    x_t = torch.zeros(3, 4, 2, 2)
    error = prediction_mse(Constant(), x_t, torch.zeros(3, dtype=torch.long), None, torch.zeros_like(x_t), "v")
    assert error.tolist() == [1.0, 1.0, 1.0]


def test_kto_hand_value():
    # Lθ = [1, 2], Lref = [1.5, 1.5], labels [desirable, undesirable], β = 2: g = [0.5, −0.5], z0 = 0.
    loss, z0 = kto_loss(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 1.5]), torch.tensor([True, False]), 2.0)
    assert z0.item() == 0.0
    assert loss.item() == pytest.approx(0.268941, abs=1e-6)


def test_kto_reference_point_from_batch_mean():
    # Lθ = [1, 1], Lref = [2, 1.5], β = 4: g = [1, 0.5], z0 = 0.75, each term 1 − σ(1).
    loss, z0 = kto_loss(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 1.5]), torch.tensor([True, False]), 4.0)
    assert z0.item() == pytest.approx(0.75)
    assert loss.item() == pytest.approx(0.268941, abs=1e-6)


def test_kto_reference_point_is_clamped_and_detached():
    policy = torch.tensor([2.0, 3.0], requires_grad=True)
    loss, z0 = kto_loss(policy, torch.tensor([1.0, 1.0]), torch.tensor([True, False]), 1.0)
    assert z0.item() == 0.0  # batch mean of g is −1.5, clamped at 0
    loss.backward()
    # With z0 detached, d loss / d policy_i = s_i β σ'(s_i β g_i) / B; check against that closed form.
    g = torch.tensor([-1.0, -2.0])
    sign = torch.tensor([1.0, -1.0])
    sig = torch.sigmoid(sign * g)
    expected = sign * sig * (1 - sig) / 2
    assert torch.allclose(policy.grad, expected, atol=1e-7)


def test_inpo_target_hand_value():
    abar = torch.tensor([0.25], dtype=torch.float64)  # a = 0.5, s = √0.75
    eps_hat = inverted_noise(torch.ones(SHAPE), torch.ones(SHAPE), (abar.sqrt(), (1 - abar).sqrt()))
    assert eps_hat.flatten()[0].item() == pytest.approx(0.577350, abs=1e-6)


def _pair_batch(backbone, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, *backbone.latent_shape)
    cond = backbone.encode_prompts(["a small red circle on the left, black background"] * n)
    return PairBatch(torch.randn(shape, generator=g), torch.randn(shape, generator=g), cond)


def _other_policy(backbone):
    torch.manual_seed(1)
    return backbone.with_unet(type(backbone.unet).from_config(backbone.unet.config).eval())


def test_v_space_dpo_loss_by_hand(tiny_backbone):
    """On a v-prediction backbone the default ("native") DPO loss is in v-space: recompute it from the UNet's raw
    output and v = a_t ε − s_t x0, with a_t, s_t from the schedule, in float64."""
    assert tiny_backbone.prediction_type == "v_prediction" and tiny_backbone.native_space == "v"
    beta = 2.0
    method = METHODS.get("dpo")(METHODS.get("dpo").Config(beta=beta))
    batch = _pair_batch(tiny_backbone)
    policy = _other_policy(tiny_backbone)
    out = method.loss(batch, policy, tiny_backbone, torch.Generator().manual_seed(7))

    g = torch.Generator().manual_seed(7)  # the method's draws: t per pair, then ε per pair
    t = torch.randint(0, 1000, (3,), generator=g)
    noise = torch.randn(batch.winner.shape, generator=g).double()
    abar = tiny_backbone.scheduler.alphas_cumprod.double()[t].view(-1, 1, 1, 1)
    a, s = abar.sqrt(), (1 - abar).sqrt()

    def v_error(backbone, x0):  # (B,)
        x0 = x0.double()
        x_t = (a * x0 + s * noise).float()
        with torch.no_grad():
            raw = backbone.unet(x_t, t, encoder_hidden_states=batch.cond.embeds).sample.double()  # v̂
        return ((raw - (a * noise - s * x0)) ** 2).mean(dim=(1, 2, 3))

    delta_policy = v_error(policy, batch.winner) - v_error(policy, batch.loser)
    delta_ref = v_error(tiny_backbone, batch.winner) - v_error(tiny_backbone, batch.loser)
    z = -0.5 * beta * (delta_policy - delta_ref)
    expected = torch.log1p(torch.exp(-z)).mean()  # −log σ(z)
    assert 0.05 < expected.item() < 5 and not torch.allclose(z, torch.zeros_like(z))  # a non-trivial value
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_loss_space_eps_on_a_v_model_is_the_eps_loss(tiny_backbone):
    """`loss_space=eps` on a v-model reproduces the ε-space numbers: errors of ε̂ = s_t x_t + a_t v̂ against ε;
    the v-space loss differs, its errors being the ε ones divided by ᾱ_t."""
    batch = _pair_batch(tiny_backbone)
    policy = _other_policy(tiny_backbone)
    dpo = METHODS.get("dpo")
    eps_out = dpo(dpo.Config(beta=2.0, loss_space="eps")).loss(batch, policy, tiny_backbone,
                                                              torch.Generator().manual_seed(7))
    v_out = dpo(dpo.Config(beta=2.0)).loss(batch, policy, tiny_backbone, torch.Generator().manual_seed(7))

    g = torch.Generator().manual_seed(7)
    t = torch.randint(0, 1000, (3,), generator=g)
    noise = torch.randn(batch.winner.shape, generator=g)

    def errors(backbone, x0):  # (ε-space, v-space) per-sample errors, (B,) each
        x_t = backbone.add_noise(x0, noise, t)
        eps_err = ((backbone.eps(x_t, t, batch.cond) - noise) ** 2).mean(dim=(1, 2, 3))
        raw = backbone.model_output(x_t, t, batch.cond)
        a, s = backbone.coefficients(t, x0)
        return eps_err, ((raw - (a * noise - s * x0)) ** 2).mean(dim=(1, 2, 3))

    (pw, pw_v), (pl, pl_v) = errors(policy, batch.winner), errors(policy, batch.loser)
    (rw, _), (rl, _) = errors(tiny_backbone, batch.winner), errors(tiny_backbone, batch.loser)
    expected, _ = dpo_loss(pw, pl, rw, rl, 2.0)
    assert eps_out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert eps_out.logs["policy_mse"] == pytest.approx(torch.cat([pw, pl]).mean().item(), rel=1e-5)
    abar = tiny_backbone.alpha_bar(t).float()
    for eps_err, v_err in ((pw, pw_v), (pl, pl_v)):
        assert torch.allclose(v_err, eps_err / abar, rtol=1e-3)  # ‖v̂ − v‖² = ‖ε̂ − ε‖² / ᾱ_t
    assert v_out.loss.item() != pytest.approx(eps_out.loss.item(), rel=1e-3)


def test_backbone_targets_and_predictions_in_every_space(tiny_backbone):
    """`target` gives ε, v = a_t ε − s_t x0 or x0; `prediction` converts the raw output to each space consistently:
    a prediction equal to the target in one space equals it in every space."""
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(4, 4, 8, 8, generator=g, dtype=torch.float64), torch.randn(4, 4, 8, 8, generator=g,
                                                                                         dtype=torch.float64)
    t = torch.tensor([0, 250, 700, 999])
    a, s = tiny_backbone.coefficients(t, x0)
    x_t = tiny_backbone.add_noise(x0, noise, t)
    assert torch.equal(tiny_backbone.target(x0, noise, t, "eps"), noise)
    assert torch.equal(tiny_backbone.target(x0, noise, t, "x0"), x0)
    v = tiny_backbone.target(x0, noise, t, "v")
    assert torch.allclose(v, a * noise - s * x0, atol=1e-15)
    for space in ("eps", "v", "x0"):  # the true v as the model's (v-prediction) output converts to the true target
        converted = tiny_backbone.convert(v, x_t, t, space)
        assert torch.allclose(converted, tiny_backbone.target(x0, noise, t, space), atol=1e-10), space
    with pytest.raises(ValueError, match="unknown prediction space 'velocity'"):
        tiny_backbone.target(x0, noise, t, "velocity")


def test_describe_records_the_resolved_loss_space(tiny_backbone, tmp_path):
    from bench.harness.run import plan_run
    from bench.harness.suites import get_suite

    dpo = METHODS.get("dpo")
    assert dpo().describe()["loss_space"] == "native"
    assert dpo().describe("v")["loss_space"] == "v" and dpo().loss_space(tiny_backbone) == "v"
    assert dpo(dpo.Config(loss_space="eps")).describe("v")["loss_space"] == "eps"
    assert METHODS.get("inpo")().describe("eps")["loss_space"] == "eps"
    with pytest.raises(ValueError, match="loss_space must be one of"):
        dpo.Config(loss_space="velocity")
    # a run records the space the pipeline resolves "native" to: v on the toy, ε on SD 1.5 (its built-in config)
    plan = plan_run(get_suite("toy"), ["dpo", "kto"], run_dir=tmp_path / "a", prompts=["a prompt"], set_metrics=[],
                    method_args={"kto": {"loss_space": "eps"}})
    methods = plan.config()["methods"]
    assert methods["dpo"]["config"]["loss_space"] == "v" and methods["kto"]["config"]["loss_space"] == "eps"
    plan = plan_run(get_suite("sd15-pickapic"), ["dpo"], run_dir=tmp_path / "b", prompts=["a prompt"])
    assert plan.config()["methods"]["dpo"]["config"]["loss_space"] == "eps"


def test_dpo_loss_shares_t_and_noise_within_pairs(tiny_backbone):
    """DPO.loss == dpo_loss on errors recomputed by hand with the same random draws (ε-space, requested)."""
    method = METHODS.get("dpo")(METHODS.get("dpo").Config(beta=100.0, loss_space="eps"))
    batch = _pair_batch(tiny_backbone)
    out = method.loss(batch, tiny_backbone, tiny_backbone, torch.Generator().manual_seed(7))
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-6)  # policy == reference: z = 0

    err = _replayed_pair_errors(batch, seed=7)

    policy = _other_policy(tiny_backbone)
    out = method.loss(batch, policy, tiny_backbone, torch.Generator().manual_seed(7))
    expected, _ = dpo_loss(err(policy, batch.winner), err(policy, batch.loser), err(tiny_backbone, batch.winner),
                           err(tiny_backbone, batch.loser), 100.0)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_sft_and_kto_full_losses_match_recomputation(tiny_backbone):
    g = torch.Generator().manual_seed(3)
    latents = torch.randn((4, *tiny_backbone.latent_shape), generator=g)
    cond = tiny_backbone.encode_prompts(["a large blue square in the center, gray background"] * 4)
    desirable = torch.tensor([True, False, True, False])
    batch = ImageBatch(latents, cond, desirable)

    g = torch.Generator().manual_seed(5)
    t = torch.randint(0, 1000, (4,), generator=g)
    noise = torch.randn(latents.shape, generator=g)
    x_t = tiny_backbone.add_noise(latents, noise, t)
    err = ((tiny_backbone.eps(x_t, t, cond) - noise) ** 2).mean(dim=(1, 2, 3))
    a, s = tiny_backbone.coefficients(t, latents)
    v_err = ((tiny_backbone.model_output(x_t, t, cond) - (a * noise - s * latents)) ** 2).mean(dim=(1, 2, 3))

    sft = METHODS.get("sft")
    native = sft().loss(batch, tiny_backbone, None, torch.Generator().manual_seed(5))  # v-space on this v-model
    assert native.loss.item() == pytest.approx(v_err.mean().item(), rel=1e-6)
    eps_space = sft(sft.Config(loss_space="eps")).loss(batch, tiny_backbone, None, torch.Generator().manual_seed(5))
    assert eps_space.loss.item() == pytest.approx(err.mean().item(), rel=1e-6)

    kto = METHODS.get("kto")(METHODS.get("kto").Config(beta=10.0, loss_space="eps"))
    out = kto.loss(batch, tiny_backbone, tiny_backbone, torch.Generator().manual_seed(5))
    expected, _ = kto_loss(err, err, desirable, 10.0)  # policy == reference: g = 0, each term 1 − σ(0) = 0.5
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-7) == pytest.approx(0.5)


def test_kto_sampling_weights_give_gamma_desirable():
    kto = METHODS.get("kto")()
    desirable = torch.tensor([True] * 3 + [False] * 7)
    weights = kto.sampling_weights(desirable)
    assert weights[desirable].sum().item() == pytest.approx(0.8)
    assert weights.sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("name, expected", [("sft", 3), ("dpo", 8), ("kto", 4), ("inpo", 28), ("cal-dpo", 8)])
def test_declared_worst_case_nfe(name, expected):
    assert METHODS.get(name)().max_nfe_per_item() == expected


def test_method_configs_validate():
    with pytest.raises(ValueError, match="beta"):
        METHODS.get("dpo").Config(beta=0)
    with pytest.raises(ValueError, match="mode"):
        METHODS.get("inpo").Config(mode="fast")
    with pytest.raises(ValueError, match="faithful"):
        METHODS.get("inpo").Config(mode="faithful", inversion="bdia")
    assert METHODS.get("inpo").Config().resolved_mode == "faithful"
    assert METHODS.get("inpo").Config(inversion="bdia").resolved_mode == "exact"
    assert METHODS.get("inpo")(METHODS.get("inpo").Config(inversion="edict")).max_nfe_per_item() == 8 + 2 * 10 * 2
    with pytest.raises(KeyError, match="did you mean 'ddim'"):
        METHODS.get("inpo").Config(mode="exact", inversion="ddmi")
    with pytest.raises(ValueError, match="cal_beta"):
        METHODS.get("cal-dpo").Config(cal_beta=0.0)


def test_vp_training_levels_are_the_integer_uniform_draw_bit_for_bit(tiny_backbone):
    """Levels now come from `Backbone.training_levels` (float64, so that flow levels 1000·σ fit): on a VP backbone
    they are the draw t ~ U{0..T−1} made before, value for value, and so are ε and x_t, for pairs and for images."""
    from methods.alignment.base import noise_images, noise_pairs

    batch = _pair_batch(tiny_backbone)
    pairs = noise_pairs(tiny_backbone, batch, "v", torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    t = torch.randint(0, 1000, (3,), generator=g)
    noise = torch.randn(batch.winner.shape, generator=g)
    x0 = torch.cat([batch.winner, batch.loser])
    assert pairs.t.dtype == torch.float64 and torch.equal(pairs.t, t.repeat(2).double())
    assert torch.equal(pairs.x_t, tiny_backbone.add_noise(x0, noise.repeat(2, 1, 1, 1), t.repeat(2)))

    images = ImageBatch(batch.winner, batch.cond, torch.ones(3, dtype=torch.bool))
    noised = noise_images(tiny_backbone, images, "eps", torch.Generator().manual_seed(7))
    assert torch.equal(noised.t, t.double()) and torch.equal(noised.target, noise)
