"""DSPO, DPO-γ-t and MaPO: hand-computed losses (latent shape (1, 4, 1, 1), ε = 0), full `loss()` against
independent recomputations with the same random draws (in v-space, the tiny v-prediction backbone's native
space: the UNet's raw output against v = a_t ε − s_t x0), every method's declared NFE per pair or image by hand
(that training steps cost it: test_contracts.py), the deprecated `dense-dpo` name, and every method's declared
search space."""

from __future__ import annotations

import dataclasses
import math
import warnings
from types import SimpleNamespace

import pytest
import torch

from bench.core.backbone import Backbone
from bench.core.search_space import Choice, FloatRange, IntRange, search_space
from methods.alignment import METHODS
from methods.alignment.base import PairBatch
from methods.alignment.dpo import dpo_loss
from methods.alignment.dpo_gamma_t import sample_discounted_timesteps, step_probabilities
from methods.alignment.dspo import dspo_loss
from methods.alignment.mapo import mapo_loss

SHAPE = (1, 4, 1, 1)


def stacked(winner: float, loser: float) -> torch.Tensor:
    """Constant predictions stacked [winner; loser], (2, 4, 1, 1)."""
    return torch.cat([torch.full(SHAPE, winner), torch.full(SHAPE, loser)])


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def per_sample_error(pred_value: float) -> torch.Tensor:
    """mean over (C, H, W) of (ε_θ − ε)² with ε = 0 and a constant prediction, (1,)."""
    return (torch.full(SHAPE, pred_value) ** 2).mean(dim=(1, 2, 3))


# ---------------------------------------------------------------- DSPO
def test_dspo_hand_values():
    # ε_θ^w = 1, ε_ref^w = 0.5, ε_θ^l = 2, ε_ref^l = 1, ε = 0, β = 8/9:
    # Lθ = [1, 4], Lref = [0.25, 1]; Δθ = −3, Δref = −0.75; z = −(4/9)(−3 + 0.75) = 1.
    # R_w = 1, D_w = 0.5, 1 − σ(1) = 0.268941.
    # SD 1.5: (1 − (8/9)(0.268941)(0.5))² = (1 − 0.119529)² = 0.880471² = 0.775228.
    # SDXL: mean D_w² = 0.25 ≥ 0.1, so ((0.268941)(0.5))² = 0.134471² = 0.018082.
    policy, ref, noise = stacked(1.0, 2.0), stacked(0.5, 1.0), torch.zeros(2, 4, 1, 1)
    loss, z = dspo_loss(policy, ref, noise, 8 / 9, "sd15")
    assert z.item() == pytest.approx(1.0)
    assert loss.item() == pytest.approx(0.775228, abs=1e-6)
    assert loss.item() == pytest.approx((1 - (8 / 9) * (1 - sigmoid(1)) * 0.5) ** 2, abs=1e-7)
    loss, z = dspo_loss(policy, ref, noise, 8 / 9, "sdxl")
    assert z.item() == pytest.approx(1.0)
    assert loss.item() == pytest.approx(0.018082, abs=1e-6)


def test_dspo_sdxl_small_drift_branch_and_z_keeps_its_gradient():
    # ε_θ^w = 1, ε_ref^w = 0.9, ε_θ^l = ε_ref^l = 1: D_w = 0.1, mean D_w² = 0.01 < 0.1, so loss = (1 − σ(z))².
    # Δθ = 0, Δref = 0.81 − 1 = −0.19; β = 200/19 gives z = −(100/19)(0.19) = −1, loss = σ(1)² = 0.534447.
    policy = stacked(1.0, 1.0).requires_grad_(True)
    loss, z = dspo_loss(policy, stacked(0.9, 1.0), torch.zeros(2, 4, 1, 1), 200 / 19, "sdxl")
    assert z.item() == pytest.approx(-1.0)
    assert loss.item() == pytest.approx(0.534447, abs=1e-6)
    loss.backward()  # the loss depends on θ only through z: a detached z would leave no gradient
    # d loss / d ε_θ^w = 2(1 − σ(z))(−σ'(z)) · dz/dε_θ^w, dz/dε_θ^w = −(β/2)(2 ε_θ^w / 4) per element.
    s = sigmoid(-1.0)
    expected = 2 * (1 - s) * (-s * (1 - s)) * (-(100 / 19) * 2 * 1.0 / 4)
    assert policy.grad[0].flatten().tolist() == pytest.approx([expected] * 4, rel=1e-5)


def _pair_batch(backbone, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, *backbone.latent_shape)
    cond = backbone.encode_prompts(["a small red circle on the left, black background"] * n)
    return PairBatch(torch.randn(shape, generator=g), torch.randn(shape, generator=g), cond)


def _other_policy(backbone: Backbone) -> Backbone:
    torch.manual_seed(1)
    return backbone.with_unet(type(backbone.unet).from_config(backbone.unet.config).eval())


def _shared_draws(batch, seed=7):
    """(t, ε) as a DPO-style method draws them: t ~ U{0..999} per pair, then ε per pair."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 1000, (len(batch),), generator=g), torch.randn(batch.winner.shape, generator=g)


def _v_pred_and_target(backbone, x0, noise, t, cond):
    """The UNet's raw v̂ at x_t = a_t x0 + s_t ε and the v-space target a_t ε − s_t x0, each (B, C, h, w)."""
    a, s = backbone.coefficients(t, x0)
    return backbone.model_output(a * x0 + s * noise, t, cond), a * noise - s * x0


def test_dspo_full_loss_matches_recomputation(tiny_backbone):
    batch = _pair_batch(tiny_backbone)
    t, noise = _shared_draws(batch)
    policy = _other_policy(tiny_backbone)
    beta = 0.05

    (pw, vw), (pl, vl) = (_v_pred_and_target(policy, x0, noise, t, batch.cond) for x0 in (batch.winner, batch.loser))
    rw, rl = (_v_pred_and_target(tiny_backbone, x0, noise, t, batch.cond)[0] for x0 in (batch.winner, batch.loser))
    mse = lambda pred, target: ((pred - target) ** 2).mean(dim=(1, 2, 3))  # noqa: E731
    z = -0.5 * beta * ((mse(pw, vw) - mse(pl, vl)) - (mse(rw, vw) - mse(rl, vl)))  # (B,)
    weight = (1 - torch.sigmoid(z))[:, None, None, None]
    expected_sd15 = ((pw - vw) - beta * weight * (pw - rw)).pow(2).mean()
    drift = (pw - rw).pow(2).mean()
    expected_sdxl = (weight * (pw - rw)).pow(2).mean() if drift >= 0.1 else weight.pow(2).mean()

    method = METHODS.get("dspo")
    for form, expected in (("sd15", expected_sd15), ("auto", expected_sd15), ("sdxl", expected_sdxl)):
        out = method(method.Config(beta=beta, form=form)).loss(batch, policy, tiny_backbone,
                                                               torch.Generator().manual_seed(7))
        assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5), form


def test_dspo_auto_form_follows_the_family():
    dspo = METHODS.get("dspo")
    assert dspo().form_for(SimpleNamespace(family="sdxl")) == "sdxl"
    assert dspo().form_for(SimpleNamespace(family="sd")) == "sd15"
    assert dspo(dspo.Config(form="sd15")).form_for(SimpleNamespace(family="sdxl")) == "sd15"


def test_dspo_policy_equal_to_reference(tiny_backbone):
    # D_w = 0 and z = 0: the SD 1.5 form is the winners' MSE (SFT, here in v-space), the SDXL form (1 − σ(0))² = 0.25.
    batch = _pair_batch(tiny_backbone)
    t, noise = _shared_draws(batch)
    winner_mse = (lambda pred, target: ((pred - target) ** 2).mean())(
        *_v_pred_and_target(tiny_backbone, batch.winner, noise, t, batch.cond))
    method = METHODS.get("dspo")
    sd15 = method(method.Config(form="sd15")).loss(batch, tiny_backbone, tiny_backbone, torch.Generator().manual_seed(7))
    assert sd15.loss.item() == pytest.approx(winner_mse.item(), rel=1e-6)
    sdxl = method(method.Config(form="sdxl")).loss(batch, tiny_backbone, tiny_backbone, torch.Generator().manual_seed(7))
    assert sdxl.loss.item() == pytest.approx(0.25, abs=1e-7)


# ---------------------------------------------------------------- DPO-γ-t (formerly dense-dpo)
def test_gamma_t_step_probabilities_hand_value():
    # p(0) = (1 − γ) / (1 − γ^50) = 0.1 / (1 − 0.005154) = 0.1 / 0.994846 = 0.100518.
    p = step_probabilities(50, 0.9)
    assert p[0].item() == pytest.approx(0.100518, abs=1e-6)
    assert p.sum().item() == pytest.approx(1.0)
    assert torch.allclose(p[1:] / p[:-1], torch.full((49,), 0.9, dtype=torch.float64))
    assert torch.allclose(step_probabilities(4, 1.0), torch.full((4,), 0.25, dtype=torch.float64))


def test_gamma_t_drawn_timesteps_follow_the_discounted_distribution(tiny_backbone):
    n = 200_000
    t = sample_discounted_timesteps(tiny_backbone, n, 50, 0.9, torch.Generator().manual_seed(0))
    grid = tiny_backbone.timesteps(50)  # 981, 961, ..., 1
    counts = (t[:, None] == grid[None, :]).sum(0).double()  # (50,)
    assert counts.sum() == n  # every draw is one of the sampler's timesteps
    p = step_probabilities(50, 0.9)
    # Deterministic at this seed; the bound is 6 binomial standard deviations per step.
    assert torch.all((counts / n - p).abs() <= 6 * (p * (1 - p) / n).sqrt())
    assert counts[0] / n == pytest.approx(0.100518, abs=0.003)


def test_dpo_gamma_t_full_loss_matches_recomputation(tiny_backbone):
    batch = _pair_batch(tiny_backbone)
    method = METHODS.get("dpo-gamma-t")
    method = method(method.Config(beta=100.0, gamma=0.8, sampling_steps=20))
    out = method.loss(batch, tiny_backbone, tiny_backbone, torch.Generator().manual_seed(7))
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-6)  # policy == reference: z = 0

    g = torch.Generator().manual_seed(7)
    probs = torch.tensor([0.8 ** i for i in range(20)], dtype=torch.float64)
    index = torch.multinomial(probs / probs.sum(), 3, replacement=True, generator=g)
    t = torch.arange(951, 0, -50)[index]  # the 20-step DDIM grid 951, 901, ..., 1 (steps_offset 1)
    noise = torch.randn(batch.winner.shape, generator=g)

    def err(backbone, x0):  # v-space: the tiny backbone's native space
        pred, target = _v_pred_and_target(backbone, x0, noise, t, batch.cond)
        return ((pred - target) ** 2).mean(dim=(1, 2, 3))

    policy = _other_policy(tiny_backbone)
    out = method.loss(batch, policy, tiny_backbone, torch.Generator().manual_seed(7))
    expected, _ = dpo_loss(err(policy, batch.winner), err(policy, batch.loser), err(tiny_backbone, batch.winner),
                           err(tiny_backbone, batch.loser), 100.0)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.logs["mean_t"] == pytest.approx(t.float().mean().item())


# ---------------------------------------------------------------- MaPO
def test_mapo_hand_values():
    # s(L) = γL / (e^{γL} − 1), γ = 0.5: s(1) = 0.5 / 0.648721 = 0.770747; s(4) = 2 / 6.389056 = 0.313035.
    # Winner worse (ε_θ^w = 2 → L_w = 4, ε_θ^l = 1 → L_l = 1), T = 1000: margin = 0.313035 − 0.770747 = −0.457712,
    # log σ(−457.712) = −457.712 (to 1e-198), loss = 4 + 0.1 · 457.712 = 49.771176.
    winner, loser = per_sample_error(2.0), per_sample_error(1.0)
    loss, margin = mapo_loss(winner, loser, 0.1, 0.5, 1000)
    assert margin.item() == pytest.approx(-0.457712, abs=1e-6)
    assert loss.item() == pytest.approx(49.771176, abs=1e-4)
    # Winner better by the same margin: log σ(457.712) = 0, the loss is the winner's MSE, 1.
    loss, _ = mapo_loss(loser, winner, 0.1, 0.5, 1000)
    assert loss.item() == pytest.approx(1.0, abs=1e-7)
    # With T = 1 the margin term is not saturated: 1 + 0.1 log(1 + e^{−0.457712}) = 1 + 0.1 log 1.632730
    # = 1 + 0.1 · 0.490253 = 1.049025.
    loss, _ = mapo_loss(loser, winner, 0.1, 0.5, 1)
    assert loss.item() == pytest.approx(1.049025, abs=1e-6)
    # Equal errors: margin 0, loss = L_w + 0.1 log 2 = 1.069315.
    loss, _ = mapo_loss(loser, loser, 0.1, 0.5, 1000)
    assert loss.item() == pytest.approx(1 + 0.1 * math.log(2), abs=1e-6)


def test_mapo_full_loss_matches_recomputation(tiny_backbone):
    batch = _pair_batch(tiny_backbone)
    t, noise = _shared_draws(batch)
    policy = _other_policy(tiny_backbone)
    # T = 1000 multiplies the margin, so even float32 differences of the UNet between batch layouts show in
    # the loss: evaluate winners and losers in one batch, as the method does, and score in float64.
    cond = type(batch.cond).cat([batch.cond, batch.cond])
    pred, target = _v_pred_and_target(policy, torch.cat([batch.winner, batch.loser]), noise.repeat(2, 1, 1, 1),
                                      t.repeat(2), cond)
    err = ((pred - target) ** 2).mean(dim=(1, 2, 3)).double()
    winner, loser = err[:3], err[3:]
    score = lambda mse: 0.5 * mse / (torch.exp(0.5 * mse) - 1)  # noqa: E731
    expected = winner.mean() - 0.1 * torch.log(torch.sigmoid(1000 * (score(winner) - score(loser)))).mean()
    out = METHODS.get("mapo")().loss(batch, policy, None, torch.Generator().manual_seed(7))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)


# ---------------------------------------------------------------- configs
def test_new_method_configs_validate():
    for name, bad, field in [("dspo", dict(beta=0.0), "beta"), ("dspo", dict(form="sd2"), "form"),
                             ("dpo-gamma-t", dict(beta=-1.0), "beta"), ("dpo-gamma-t", dict(gamma=0.0), "gamma"),
                             ("dpo-gamma-t", dict(gamma=1.5), "gamma"),
                             ("dpo-gamma-t", dict(sampling_steps=0), "sampling_steps"),
                             ("mapo", dict(loss_space="sample"), "loss_space"),
                             ("mapo", dict(beta=0.0), "beta"), ("mapo", dict(gamma=-0.5), "gamma")]:
        with pytest.raises(ValueError, match=field):
            METHODS.get(name).Config(**bad)


def test_method_flags():
    assert not METHODS.get("mapo").needs_reference
    assert METHODS.get("dspo").needs_reference and METHODS.get("dpo-gamma-t").needs_reference
    assert all(METHODS.get(name).data_kind == "pairs" for name in ("dspo", "dpo-gamma-t", "mapo"))


def test_dense_dpo_is_a_deprecated_alias_of_dpo_gamma_t(tmp_path):
    from bench.harness.run import plan_run
    from bench.harness.suites import get_suite

    with pytest.warns(FutureWarning, match="'dense-dpo' is deprecated; use 'dpo-gamma-t'"):
        cls = METHODS.get("dense-dpo")
    assert cls is METHODS.get("dpo-gamma-t") and cls.name == "dpo-gamma-t"
    assert "dense-dpo" in METHODS and "dense-dpo" not in METHODS.names()  # works, but `bench list` does not show it
    assert METHODS.canonical("dense-dpo") == "dpo-gamma-t" and METHODS.canonical("dpo") == "dpo"
    with pytest.warns(FutureWarning, match="use 'dpo-gamma-t'"):  # a run asked for the old name trains the new one
        plan = plan_run(get_suite("sd15-pickapic"), ["dense-dpo"], run_dir=tmp_path / "run", prompts=["a prompt"],
                        method_args={"dense-dpo": {"gamma": "0.8"}})
    assert list(plan.methods) == ["dpo-gamma-t"]
    assert plan.methods["dpo-gamma-t"].config.gamma == 0.8 and plan.methods["dpo-gamma-t"].config.beta == 2000.0
    with pytest.raises(ValueError, match="already taken"):
        METHODS.alias("dense-dpo", "dpo")


def test_a_labelled_method_runs_beside_itself_with_its_own_arguments(tmp_path):
    """`--methods dpo-gamma-t,uniform-t=dpo-gamma-t -a uniform-t.gamma=1`: the β-matched ablation. Both get the
    suite's settings for dpo-gamma-t (β, lr); only the label's own argument differs; the record says which
    method a label runs."""
    from bench.harness.run import RunSetupError, plan_run
    from bench.harness.suites import get_suite

    suite = get_suite("sd15-pickapic")
    plan = plan_run(suite, ["dpo-gamma-t", "uniform-t=dpo-gamma-t"], run_dir=tmp_path / "run", prompts=["a prompt"],
                    method_args={"uniform-t": {"gamma": "1"}}, train_args={"dpo-gamma-t": {"lr": "2e-6"}})
    tuned, ablated = plan.methods["dpo-gamma-t"].config, plan.methods["uniform-t"].config
    assert type(plan.methods["uniform-t"]) is METHODS.get("dpo-gamma-t")
    assert (ablated.gamma, tuned.gamma) == (1.0, METHODS.get("dpo-gamma-t").Config().gamma)
    assert ablated.beta == tuned.beta == 2000.0  # the suite's β for the method reaches its labelled copy
    assert plan.train_configs["dpo-gamma-t"].lr == 2e-6 and plan.train_configs["uniform-t"].lr == suite.train.lr
    config = plan.config()["methods"]
    assert config["uniform-t"]["algorithm"] == "dpo-gamma-t" and "algorithm" not in config["dpo-gamma-t"]
    for methods, match in ((["dpo", "dpo"], "lists 'dpo' twice"), (["base=dpo"], "'base' is taken"),
                           (["kto=dpo"], "'kto' is taken"), (["Bad Label=dpo"], "a label is lower-case"),
                           (["x=nope"], "nope")):
        with pytest.raises((RunSetupError, KeyError, ValueError), match=match):
            plan_run(suite, methods, run_dir=tmp_path / "other", prompts=["a prompt"])


def test_records_of_dense_dpo_are_read_as_dpo_gamma_t(tmp_path):
    """The leaderboard, `bench report` and the figures group records by method: one written as dense-dpo counts
    as dpo-gamma-t."""
    import json

    from bench.core.records import SCHEMA_VERSION
    from bench.results.report import load_records

    path = tmp_path / "dense-dpo-40000nfe-s0.json"
    path.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "kind": "alignment-run", "method": "dense-dpo"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reading old records is routine: no deprecation warning
        ((_, record),) = load_records([path])
    assert record["method"] == "dpo-gamma-t"


# ---------------------------------------------------------------- declared NFE
# Per pair (2 latents) or image, a backward counting as 2 forwards: the policy's forward + backward is 3 per latent,
# the reference's no-grad forward 1. DPO-style pairs: 2 · 3 + 2 · 1 = 8; MaPO has no reference: 2 · 3 = 6; KTO:
# 3 + 1 = 4; SFT: 3; InPO: DPO's 8 plus a forward per latent per inversion step, up to the 10-step grid: 8 + 2 · 10.
@pytest.mark.parametrize("name, per_item", [("dpo", 8), ("dspo", 8), ("dpo-gamma-t", 8), ("mapo", 6), ("kto", 4),
                                            ("sft", 3), ("inpo", 28)])
def test_declared_nfe_per_item_by_hand(name, per_item):
    assert METHODS.get(name)().max_nfe_per_item() == per_item


@pytest.mark.parametrize("name", [n for n in METHODS.names() if METHODS.get(n).kind != "inference-time"])  # no loss
def test_every_method_config_takes_and_validates_a_loss_space(name):
    """Every Config is a MethodConfig whose own __post_init__ keeps the shared validation."""
    config_cls = METHODS.get(name).Config
    assert config_cls().loss_space == "native" and config_cls(loss_space="eps").loss_space == "eps"
    with pytest.raises(ValueError, match="loss_space must be one of"):
        config_cls(loss_space="epsilon")


# ---------------------------------------------------------------- search spaces
@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_declares_a_valid_search_space_around_its_default(name):
    """`bench tune` searches each method's declared space (plus the learning rate, which no method declares): 1-2
    fields, each a valid range whose bounds are valid config values and which contains the default."""
    config_cls = METHODS.get(name).Config
    space = search_space(config_cls)
    if name == "sft":  # SFT has no hyper-parameter of its own: the tuner's learning rate is its only knob
        assert space == {}
        return
    assert 1 <= len(space) <= 2, space  # few enough that 8 trials per method mean something
    assert "lr" not in space and "loss_space" not in space
    default = config_cls()
    for field, declared in space.items():
        assert isinstance(declared, (FloatRange, IntRange, Choice)), field
        bounds = declared.options if isinstance(declared, Choice) else (declared.low, declared.high)
        for value in bounds:
            dataclasses.replace(default, **{field: value})  # __post_init__ accepts every point of the range
        value = getattr(default, field)
        if name == "dspo" and field == "beta":
            # None means "the launcher value of the form in use", SD 1.5's 0.001 or SDXL's 5000: both must lie inside
            assert value is None
            for form_default in (0.001, 5000.0):
                assert declared.low < form_default < declared.high
            continue
        if isinstance(declared, Choice):
            assert value in declared.options, field
        else:
            assert declared.low <= value <= declared.high, field
