"""Offline methods on the SD3-shaped flow family, in the backbone's native space (the velocity u = ε − x0):
every offline method trains a step on the tiny random SD3 pipeline, a pair shares (σ, ε) as Diffusion-DPO shares
(t, ε), and the flow forms of InPO and DSPO (our adaptations, see their docstrings) against values computed by hand
on a (1, 4, 1, 1) latent."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import build_tiny_sd3_backbone
from diffusers import FlowMatchEulerDiscreteScheduler

import methods.alignment.base as alignment_base
from bench.core.budget import Budget
from bench.core.config import TrainConfig
from bench.harness.data import encode_preferences, load_pickapic, preference_pairs
from bench.harness.trainer import Trainer
from methods.alignment import METHODS
from methods.alignment.base import PairBatch, noise_pairs, sample_levels
from methods.shards import sharded

PROMPT = "a small red circle on the left, black background"
OFFLINE_METHODS = [name for name in METHODS.names() if METHODS.get(name).kind == "offline"]
SAFEGUARDED = ["dpo", "dpo-gamma-t", "inpo", "dspo", "cal-dpo"]

# Before the first update the policy is the reference, so every implicit reward is 0 and the loss is known by hand:
# −log σ(0) = log 2 for the DPO family, KTO's 1 − σ(0) = ½, Cal-DPO's log 2 + ½ [(0 − ½)² + (0 + ½)²] = log 2 + ¼.
LOSS_AT_INIT = {"dpo": math.log(2), "dpo-gamma-t": math.log(2), "inpo": math.log(2), "kto": 0.5,
                "cal-dpo": math.log(2) + 0.25}


@pytest.fixture(scope="module")
def sd3_data(tiny_toy_dir):
    """The tiny toy preference pairs encoded by the SD3-shaped backbone's own VAE (4x8x8 latents, SD3's shift) and
    text encoders; `build_tiny_sd3_backbone` is seeded, so every test's backbone has these same parts."""
    pairs = preference_pairs(load_pickapic(tiny_toy_dir / "prefs.parquet"), max_pairs=8)
    return encode_preferences(build_tiny_sd3_backbone(), pairs)


def _one_step(method, backbone, data):
    before = {k: v.clone() for k, v in backbone.unet.state_dict().items()}
    result = Trainer(method, backbone, data, TrainConfig(lr=1e-3, batch_size=2), Budget.parse("1steps"),
                     seed=0, progress=False).fit()
    changed = any(not torch.equal(before[k], v) for k, v in result.policy.unet.state_dict().items())
    return result, changed


@pytest.mark.parametrize("name", OFFLINE_METHODS)
def test_every_offline_method_trains_a_step_on_sd3(tiny_sd3_backbone, sd3_data, name):
    assert tiny_sd3_backbone.is_flow and METHODS.get(name)().loss_space(tiny_sd3_backbone) == "flow"
    result, changed = _one_step(METHODS.get(name)(), tiny_sd3_backbone, sd3_data)
    loss = result.history[0]["loss"]
    assert result.steps == 1 and math.isfinite(loss) and changed
    if name in LOSS_AT_INIT:
        assert loss == pytest.approx(LOSS_AT_INIT[name], abs=1e-6)


@pytest.mark.parametrize("name", SAFEGUARDED)
def test_the_safeguard_trains_a_step_on_sd3(tiny_sd3_backbone, sd3_data, name):
    """Diffusion-SDPO never launched a flow model: μ falls back to its SDXL value (DSPO: its form's, SD 1.5 on a
    flow model), where it had been a KeyError."""
    cls = METHODS.get(name)
    result, changed = _one_step(cls(cls.Config(safeguard=True)), tiny_sd3_backbone, sd3_data)
    assert math.isfinite(result.history[0]["loss"]) and changed
    if name != "dspo":
        assert 0.0 <= result.history[0]["loser_grad_scale"] <= 1.0


# ----------------------------------------------------------------------- (σ, ε) shared within a pair


def test_flow_levels_are_sharded_as_every_draw(tiny_sd3_backbone):
    """`sample_levels` draws for the global batch and keeps the process's rows: two shards of a batch get the whole
    batch's levels and leave the generator where the whole batch leaves it."""
    rng = torch.Generator().manual_seed(5)
    whole = sample_levels(tiny_sd3_backbone, 4, rng)
    for rank in range(2):
        rng_r = torch.Generator().manual_seed(5)
        with sharded(rank, 2):
            assert torch.equal(sample_levels(tiny_sd3_backbone, 2, rng_r), whole[2 * rank:2 * rank + 2])
        assert torch.equal(rng_r.get_state(), rng.get_state())


def test_pairs_share_sigma_and_noise_from_the_shifted_training_table(tiny_sd3_backbone):
    """noise_pairs on a flow model: σ per pair from `Backbone.training_levels` (the scheduler's shifted table), then
    ε per pair, both shared by winner and loser; x_σ = (1 − σ) x0 + σ ε and the target u = ε − x0."""
    b = tiny_sd3_backbone
    g = torch.Generator().manual_seed(0)
    shape = (3, *b.latent_shape)
    batch = PairBatch(torch.randn(shape, generator=g), torch.randn(shape, generator=g), b.encode_prompts([PROMPT] * 3))
    pairs = noise_pairs(b, batch, "flow", torch.Generator().manual_seed(7))

    replay = torch.Generator().manual_seed(7)  # the draws in order: three levels, then one ε per pair
    levels = b.training_levels(3, replay)
    noise = torch.randn(shape, generator=replay).double()
    table = FlowMatchEulerDiscreteScheduler(shift=3.0).timesteps.double()  # 1000·σ_j, SD3.5's shift
    assert pairs.t.dtype == torch.float64 and torch.equal(pairs.t, levels.repeat(2)) and torch.isin(levels, table).all()
    sigma = (levels / 1000).view(-1, 1, 1, 1)
    for x0, x_t, target in ((batch.winner.double(), *(p[:3] for p in (pairs.x_t, pairs.target))),
                            (batch.loser.double(), *(p[3:] for p in (pairs.x_t, pairs.target)))):
        assert torch.allclose(x_t.double(), (1 - sigma) * x0 + sigma * noise, atol=1e-6)
        assert torch.allclose(target.double(), noise - x0, atol=1e-6)


def test_dpo_on_sd3_is_the_velocity_dpo_loss_recomputed_from_the_transformer(tiny_sd3_backbone):
    """DPO.loss on SD3 against errors recomputed from the transformer's raw output (the velocity, called as
    StableDiffusion3Pipeline calls it, timestep 1000·σ) and u = ε − x0, with the method's draws replayed: Flow-DPO's
    loss (research notes §7)."""
    reference = tiny_sd3_backbone
    policy = reference.with_unet(build_tiny_sd3_backbone(seed=1).unet)
    g = torch.Generator().manual_seed(0)
    shape = (2, *reference.latent_shape)
    batch = PairBatch(torch.randn(shape, generator=g), torch.randn(shape, generator=g),
                      reference.encode_prompts([PROMPT, "a large cyan triangle in the center"]))
    beta = 20.0
    dpo = METHODS.get("dpo")
    out = dpo(dpo.Config(beta=beta)).loss(batch, policy, reference, torch.Generator().manual_seed(3))

    replay = torch.Generator().manual_seed(3)
    levels = reference.training_levels(2, replay)
    noise = torch.randn(shape, generator=replay).double()
    sigma = (levels / 1000).view(-1, 1, 1, 1)

    def error(backbone, x0):  # (B,) mean over (C, H, W) of (v̂ − (ε − x0))²
        x0 = x0.double()
        x_t = ((1 - sigma) * x0 + sigma * noise).float()
        with torch.no_grad():
            velocity = backbone.unet(hidden_states=x_t, timestep=levels.float(), encoder_hidden_states=batch.cond.embeds,
                                     pooled_projections=batch.cond.added["pooled_projections"]).sample.double()
        return ((velocity - (noise - x0)) ** 2).mean(dim=(1, 2, 3))

    z = -0.5 * beta * ((error(policy, batch.winner) - error(policy, batch.loser))
                       - (error(reference, batch.winner) - error(reference, batch.loser)))
    assert not torch.allclose(z, torch.zeros_like(z), atol=1e-3)  # a non-trivial value
    assert out.loss.item() == pytest.approx(torch.log1p(torch.exp(-z)).mean().item(), abs=1e-5)


# ----------------------------------------------------------------------- the flow forms by hand, (1, 4, 1, 1)
#
# The backbone is the tiny SD3 one (its flow schedule: a = 1 − σ, s = σ, its conversions), with the transformer
# replaced by a linear velocity field so that a (1, 4, 1, 1) latent goes through: policy v̂_θ(x) = −x, reference
# v̂_ref(x) = −x/2 (any level, any prompt). Winner x0^w = (1, 0, −1, 2), loser x0^l = (0.5, 1, 0, −1), β = 2.

WINNER, LOSER = [1.0, 0.0, -1.0, 2.0], [0.5, 1.0, 0.0, -1.0]
BETA = 2.0


def _latent(values):
    return torch.tensor(values).view(1, 4, 1, 1)


@pytest.fixture()
def linear_flow_models(tiny_sd3_backbone):
    """(policy, reference): the tiny SD3 backbone with the velocity fields −x and −x/2 as its denoiser."""
    policy = tiny_sd3_backbone
    reference = policy.with_unet(policy.unet)
    policy.model_output = lambda x_t, t, cond: -x_t
    reference.model_output = lambda x_t, t, cond: -0.5 * x_t
    return policy, reference


def _pair(backbone):
    return PairBatch(_latent(WINNER), _latent(LOSER), backbone.encode_prompts([PROMPT]))


def _fix_levels(backbone, level: float):
    backbone.training_levels = lambda n, rng: torch.full((n,), level, dtype=torch.float64)


def test_dpo_and_dspo_flow_forms_by_hand(linear_flow_models, monkeypatch):
    """σ = 0.4 and ε = (0.5, −0.5, 1, 0) for the pair. By hand:
    x_σ^w = 0.6 x0^w + 0.4 ε = (0.8, −0.2, −0.2, 1.2),  x_σ^l = (0.5, 0.4, 0.4, −0.6)
    u^w = ε − x0^w = (−0.5, −0.5, 2, −2),                u^l = (0, −1.5, 1, 1)
    R_w = −x_σ^w − u^w = (−0.3, 0.7, −1.8, 0.8):        e_θ^w = (0.09 + 0.49 + 3.24 + 0.64)/4 = 1.115
    −x_σ^l − u^l = (−0.5, 1.1, −1.4, −0.4):             e_θ^l = (0.25 + 1.21 + 1.96 + 0.16)/4 = 0.895
    −x_σ^w/2 − u^w = (0.1, 0.6, −1.9, 1.4):             e_ref^w = (0.01 + 0.36 + 3.61 + 1.96)/4 = 1.485
    −x_σ^l/2 − u^l = (−0.25, 1.3, −1.2, −0.7):          e_ref^l = (0.0625 + 1.69 + 1.44 + 0.49)/4 = 0.920625
    z = −(β/2)[(1.115 − 0.895) − (1.485 − 0.920625)] = 0.344375;  DPO (Flow-DPO's form): −log σ(z) = 0.535711
    DSPO, SD 1.5 form (`auto` on a flow model): D_w = −x_σ^w/2 = (−0.4, 0.1, 0.1, −0.6), 1 − σ(z) = 0.414747,
    mean (R_w − β (1 − σ(z)) D_w)² = mean (0.031798, 0.617051, −1.882949, 1.297696)² = 1.402819
    DSPO, SDXL form: mean D_w² = 0.135 ≥ 0.1, so mean ((1 − σ(z)) D_w)² = 0.172015 · 0.135 = 0.023222."""
    policy, reference = linear_flow_models
    _fix_levels(policy, 400.0)  # σ = 0.4
    monkeypatch.setattr(alignment_base, "sample_noise", lambda like, rng: _latent([0.5, -0.5, 1.0, 0.0]).to(like))
    batch = _pair(policy)

    pairs = noise_pairs(policy, batch, "flow", torch.Generator())
    assert pairs.x_t.flatten().tolist() == pytest.approx([0.8, -0.2, -0.2, 1.2, 0.5, 0.4, 0.4, -0.6], abs=1e-6)
    assert pairs.target.flatten().tolist() == pytest.approx([-0.5, -0.5, 2.0, -2.0, 0.0, -1.5, 1.0, 1.0], abs=1e-6)

    dpo = METHODS.get("dpo")
    assert dpo(dpo.Config(beta=BETA)).loss(batch, policy, reference, torch.Generator()).loss.item() == pytest.approx(
        0.535711, abs=1e-6)
    dspo = METHODS.get("dspo")
    assert dspo().form_for(policy) == "sd15"
    out = dspo(dspo.Config(beta=BETA)).loss(batch, policy, reference, torch.Generator())
    assert out.loss.item() == pytest.approx(1.402819, abs=1e-6)
    assert out.logs["implicit_acc"] == 1.0  # z = 0.344375 > 0
    sdxl_form = dspo(dspo.Config(beta=BETA, form="sdxl")).loss(batch, policy, reference, torch.Generator())
    assert sdxl_form.loss.item() == pytest.approx(0.023222, abs=1e-6)


@pytest.mark.parametrize("mode, expected", [
    # exact, eval_at=source: the policy's ODE inversion dz/dσ = v_θ(z) = −z by Euler steps along the path
    # σ: 0 → 0.001 → 0.101 → 0.15 (the grid points below σ = 0.15, then σ itself), z = x0 · 0.999 · 0.9 · 0.951
    # = 0.8550441 x0. ε̂ = (x_σ − 0.85 x0)/0.15 = 0.0336273 x0, û = ε̂ − x0 = (x_σ − x0)/0.15 = −0.9663727 x0.
    # Residuals at x_σ: policy −0.8550441 x0 − û = 0.1113286 x0, reference −0.4275221 x0 − û = 0.5388506 x0;
    # e = c² mean x0², mean x0^w² = 1.5, mean x0^l² = 0.5625: z = −(β/2)(0.1113286² − 0.5388506²)(1.5 − 0.5625)
    # = 0.260593, −log σ(z) = 0.571315.
    ("exact", 0.571315),
    # faithful grid with no injected noise: σ: 0 → 0.001 → 0.101 → 0.201 (it ends at the grid point above σ = 0.15,
    # the official quirk), z = x0 · 0.999 · 0.9 · 0.9 = 0.80919 x0, still read at σ = 0.15: ε̂ = −0.2720667 x0,
    # û = −1.2720667 x0; residuals 0.4628767 x0 (policy) and 0.8674717 x0 (reference): z = 0.504612, loss 0.472338.
    ("faithful", 0.472338),
])
def test_inpo_flow_form_by_hand(linear_flow_models, mode, expected):
    """InPO on a flow model: the winner and the loser are inverted by the policy (v̂_θ = −z) to the pair's σ = 0.15,
    the implied velocity û = (x_σ − x0)/σ is the target, and the DPO loss compares the policy's and the reference's
    velocity errors at x_σ (numbers in the parameters)."""
    policy, reference = linear_flow_models
    _fix_levels(policy, 150.0)  # σ = 0.15
    inpo = METHODS.get("inpo")
    config = (inpo.Config(beta=BETA, mode="exact", inversion_args={"eval_at": "source"}) if mode == "exact"
              else inpo.Config(beta=BETA, inversion_noise=0.0))
    out = inpo(config).loss(_pair(policy), policy, reference, torch.Generator())
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.logs["inversion_steps"] == 3.0


def test_inpo_with_a_flow_only_inverter_is_refused_on_a_vp_pipeline_before_any_work(tmp_path):
    """The inverter is part of InPO's capability: euler inverts flow models only, so a toy (v-prediction UNet) run
    of inpo with it stops when planned, in one line, exit 2."""
    from typer.testing import CliRunner

    from bench.cli import app

    result = CliRunner().invoke(app, ["run", "--methods", "inpo", "-a", "inpo.inversion=euler",
                                      "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and not (tmp_path / "run").exists()
    assert "inpo: euler inverts flow-matching backbones" in result.output and "v on a vp schedule" in result.output
