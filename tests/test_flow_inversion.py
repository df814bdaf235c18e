"""The flow inversion samplers (euler, rf-solver, fireflow, rf-inversion, and rex, the exact one): hand-computed steps on a
linear velocity field, round trips and NFE on the tiny SD3-shaped backbone in float64, and `bench invert`'s table on it.

Hand values: the denoiser of the tiny SD3 backbone replaced by the velocity field u(x, σ) = 2x + σ (elementwise, any
prompt), on a latent of ones, along the path σ = 0 → 0.5 → 1 (levels −1, 500, 1000). Every number below is dyadic, so
float64 gives it exactly; each comment shows the arithmetic.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import build_tiny_sd3_backbone

from bench.core.backbone import NFECounter
from methods.inversion import SAMPLERS
from methods.inversion.base import InversionState, per_sample_levels, sampling_levels
from methods.inversion.rex import RexConfig
from methods.inversion.rf_inversion import RFInversionConfig, inversion_velocity, reconstruction_velocity
from methods.shards import sample_noise

PROMPTS = ["a small red circle on the left, black background", "a large cyan triangle in the center"]
FLOW_SAMPLERS = ["euler", "rf-solver", "fireflow", "rf-inversion", "rex"]
PATH = torch.tensor([-1.0, 500.0, 1000.0])  # σ = 0, 0.5, 1
EXACT_MSE = 1e-20  # the bound on an exact sampler's latent MSE in float64 (measured: rex 3e-32 to 2e-31)
# sampler -> (inversion, reconstruction) model calls along N steps (per latent, guidance 1)
CALLS = {"euler": (lambda n: n, lambda n: n), "rf-solver": (lambda n: 2 * n, lambda n: 2 * n),
         "fireflow": (lambda n: n + 1, lambda n: n + 1), "rf-inversion": (lambda n: n, lambda n: n),
         "rex": (lambda n: 2 * n, lambda n: 2 * n - 1), "bdia": (lambda n: n, lambda n: n - 1)}


@pytest.fixture(scope="module")
def flow_backbone():
    return build_tiny_sd3_backbone(t5=False).to(dtype=torch.float64)


@pytest.fixture(scope="module")
def linear_field(flow_backbone):
    """The flow backbone with its denoiser replaced by u(x, σ) = 2x + σ, counted in its own NFE counter; it refuses a
    model level below 0 (the clean end's marker −1 is no level of the denoiser)."""
    fake = copy.copy(flow_backbone)
    fake.nfe = NFECounter()

    def model_output(x_t, t, cond):
        levels = fake._as_batch_timesteps(t, x_t.shape[0])
        assert (levels >= 0).all(), levels
        fake.nfe.calls += 1
        fake.nfe.forward += x_t.shape[0]
        return 2 * x_t + (levels / 1000).view(-1, 1, 1, 1).to(x_t)

    fake.model_output = model_output
    return fake


def _ones(backbone, value: float = 1.0) -> torch.Tensor:
    return torch.full((1, *backbone.latent_shape), value, dtype=torch.float64)


def _value(latents: torch.Tensor) -> float:
    """The one value of a constant latent."""
    assert torch.equal(latents, torch.full_like(latents, latents.flatten()[0].item())), latents
    return latents.flatten()[0].item()


def _run(backbone, fn):
    """fn()'s result and the model calls it made."""
    backbone.nfe.reset()
    result = fn()
    return result, backbone.nfe.calls


# ----------------------------------------------------------------------------------------------- hand values


def test_euler_steps_by_the_velocity_at_the_source(linear_field):
    backbone, cond, sampler = linear_field, linear_field.encode_prompts(PROMPTS[:1]), SAMPLERS.get("euler")()
    state, calls = _run(backbone, lambda: sampler.invert(backbone, _ones(backbone), cond, PATH))
    # σ 0 → 0.5: 1 + 0.5 u(1, 0) = 1 + 0.5·2 = 2;  σ 0.5 → 1: 2 + 0.5 u(2, 0.5) = 2 + 0.5·4.5 = 4.25
    assert (_value(state.latents), calls) == (4.25, 2)
    recon, calls = _run(backbone, lambda: sampler.reconstruct(backbone, state, cond))
    # σ 1 → 0.5: 4.25 − 0.5 u(4.25, 1) = 4.25 − 0.5·9.5 = −0.5;  σ 0.5 → 0: −0.5 − 0.5 u(−0.5, 0.5) = −0.5 + 0.25
    assert (_value(recon), calls) == (-0.25, 2)


def test_rf_solver_is_the_second_order_taylor_step_with_a_finite_difference(linear_field):
    backbone, cond, sampler = linear_field, linear_field.encode_prompts(PROMPTS[:1]), SAMPLERS.get("rf-solver")()
    one, calls = _run(backbone, lambda: sampler.invert(backbone, _ones(backbone), cond, PATH[:2]))
    # h = 0.5: u₁ = u(1, 0) = 2, x_m = 1 + 0.25·2 = 1.5, u₂ = u(1.5, 0.25) = 3.25, du/dσ ≈ (3.25 − 2)/0.25 = 5;
    # x' = 1 + 0.5·2 + ½·0.25·5 = 2.625
    assert (_value(one.latents), calls) == (2.625, 2)
    two, calls = _run(backbone, lambda: sampler.invert(backbone, _ones(backbone), cond, PATH))
    # from 2.625 at σ 0.5: u₁ = 5.75, x_m = 2.625 + 0.25·5.75 = 4.0625, u₂ = u(4.0625, 0.75) = 8.875;
    # x' = 2.625 + 0.5·5.75 + ½·0.25·(8.875 − 5.75)/0.25 = 7.0625
    assert (_value(two.latents), calls) == (7.0625, 4)


def test_fireflow_starts_each_step_from_the_previous_midpoint_velocity(linear_field):
    backbone, cond, sampler = linear_field, linear_field.encode_prompts(PROMPTS[:1]), SAMPLERS.get("fireflow")()
    state, calls = _run(backbone, lambda: sampler.invert(backbone, _ones(backbone), cond, PATH))
    # step 1 as RF-Solver's: û = u(1, 0) = 2, u_m = u(1.5, 0.25) = 3.25, x = 1 + 0.5·3.25 = 2.625;
    # step 2 reuses û = 3.25: x_m = 2.625 + 0.25·3.25 = 3.4375, u_m = u(3.4375, 0.75) = 7.625, x = 2.625 + 0.5·7.625
    assert (_value(state.latents), calls) == (6.4375, 3)
    recon, calls = _run(backbone, lambda: sampler.reconstruct(backbone, state, cond))
    # down, afresh: û = u(6.4375, 1) = 13.875, x_m = 6.4375 − 0.25·13.875 = 2.96875, u_m = u(2.96875, 0.75) = 6.6875,
    # x = 6.4375 − 0.5·6.6875 = 3.09375; then û = 6.6875, x_m = 3.09375 − 0.25·6.6875 = 1.421875,
    # u_m = u(1.421875, 0.25) = 3.09375, x = 3.09375 − 0.5·3.09375 = 1.546875
    assert (_value(recon), calls) == (1.546875, 3)


def test_rf_inversion_controlled_velocities_by_hand():
    one = torch.ones(1, dtype=torch.float64)
    # Algorithm 1: Y = 1, y₁ = 0, σ = 0, u = 0.2, γ = 0.5: 0.2 + 0.5·((0 − 1)/1 − 0.2) = −0.4
    assert inversion_velocity(0.2 * one, one, 0 * one, 0 * one, 0.5).item() == pytest.approx(-0.4, abs=1e-15)
    # Algorithm 2 (diffusers: v = −0.3, y₀ = 1, X = 0.5, t_i = 0.25, η = 0.9 → v̂ = 0.57), here u = 0.3, σ = 0.75:
    # 0.3 + 0.9·((0.5 − 1)/0.75 − 0.3) = −0.57 = −v̂
    assert reconstruction_velocity(0.3 * one, 0.5 * one, one, 0.75 * one, 0.9).item() == pytest.approx(-0.57, abs=1e-15)


def test_rf_inversion_steps_by_the_controlled_velocity(linear_field):
    backbone, cond = linear_field, linear_field.encode_prompts(PROMPTS[:1])
    x0 = _ones(backbone)
    noise = sample_noise(x0, torch.Generator().manual_seed(0))  # y₁: the sampler's one draw from the same rng
    half = SAMPLERS.get("rf-inversion")()  # γ = 0.5
    state, calls = _run(backbone, lambda: half.invert(backbone, x0, cond, PATH[:2], rng=torch.Generator().manual_seed(0)))
    # σ 0 → 0.5: û = u(1, 0) + 0.5·((y₁ − 1)/1 − 2) = 1 + 0.5 (y₁ − 1); Y = 1 + 0.5 û = 1.5 + 0.25 (y₁ − 1)
    assert torch.allclose(state.latents, 1.5 + 0.25 * (noise - 1), atol=1e-15, rtol=0) and calls == 1
    full = SAMPLERS.get("rf-inversion")(RFInversionConfig(gamma=1.0))
    state = full.invert(backbone, x0, cond, PATH, rng=torch.Generator().manual_seed(0))
    # γ = 1: Y = 1 + 0.5 (y₁ − 1), then Y + 0.5 (y₁ − Y)/0.5 = y₁: the controlled ODE lands on the drawn noise
    assert torch.allclose(state.latents, noise, atol=1e-15, rtol=0)

    sampler = SAMPLERS.get("rf-inversion")(RFInversionConfig(eta=0.9, stop=0.5))  # controls the first of 2 steps
    start = InversionState(_ones(backbone, 3.0), per_sample_levels(PATH, 1), {"image": x0})
    recon, calls = _run(backbone, lambda: sampler.reconstruct(backbone, start, cond))
    # σ 1 → 0.5, controlled: u(3, 1) = 7, û = 7 + 0.9·((3 − 1)/1 − 7) = 2.5, X = 3 − 0.5·2.5 = 1.75;
    # σ 0.5 → 0, int(0.5·2) = 1 ≤ i: Euler, X = 1.75 − 0.5 u(1.75, 0.5) = 1.75 − 0.5·4 = −0.25
    assert (_value(recon), calls) == (-0.25, 2)


def test_rex_steps_and_their_exact_inverse_by_hand(linear_field):
    backbone, cond = linear_field, linear_field.encode_prompts(PROMPTS[:1])
    sampler = SAMPLERS.get("rex")(RexConfig(coupling=0.5))
    # one sampling step from the pair (x, x̂) = (1, 2) at σ = 1 to 0.5, Φ the Euler step:
    # x = ζ (x − x̂) + Φ_{1→0.5}(x̂) = 0.5·(1 − 2) + (2 − 0.5 u(2, 1)) = −0.5 − 0.5 = −1 (x̂ is not needed at the end)
    pair = InversionState(_ones(backbone), per_sample_levels(PATH[1:], 1), {"companion": _ones(backbone, 2.0)})
    x, calls = _run(backbone, lambda: sampler.reconstruct(backbone, pair, cond))
    assert (_value(x), calls) == (-1.0, 1)

    state, calls = _run(backbone, lambda: sampler.invert(backbone, _ones(backbone), cond, PATH))
    # first step, σ 0 → 0.5: x̂ = DDIM inversion of 1 with ε̂ at 0.5 (u(1, 0.5) = 2.5, ε̂ = 1 + 0.5·2.5 = 2.25):
    # 0.5·1 + 0.5·2.25 = 1.625; x = x̂ + (1 − Φ_{0.5→0}(x̂)) / ζ = 1.625 + (1 − (1.625 − 0.5·3.75)) / 0.5 = 4.125
    # second step, σ 0.5 → 1: x̂ = x̂ − x + Φ_{0.5→1}(x) = 1.625 − 4.125 + 4.125 + 0.5 u(4.125, 0.5) = 6;
    # x = x̂ + (x − Φ_{1→0.5}(x̂)) / ζ = 6 + (4.125 − (6 − 0.5·13)) / 0.5 = 15.25
    assert (_value(state.latents), _value(state.extra["companion"]), calls) == (15.25, 6.0, 4)
    top = InversionState(state.latents, per_sample_levels(PATH[1:], 1), state.extra)
    # the inverse of the second step: x = 0.5·(15.25 − 6) + Φ_{1→0.5}(6) = 4.625 − 0.5 = 4.125
    assert _value(sampler.reconstruct(backbone, top, cond)) == 4.125
    recon, calls = _run(backbone, lambda: sampler.reconstruct(backbone, state, cond))
    # x̂ = 6 + 4.125 − Φ_{0.5→1}(4.125) = 1.625, then x = 0.5·(4.125 − 1.625) + Φ_{0.5→0}(1.625) = 1.25 − 0.25 = 1
    assert (_value(recon), calls) == (1.0, 3)


# ----------------------------------------------------------------------------------------------- the tiny SD3 backbone


@pytest.mark.parametrize("steps", [4, 10])
def test_round_trips_nfe_and_state_on_the_flow_backbone(flow_backbone, steps):
    """Every flow sampler in float64 at guidance 1 and 3: rex (and bdia, BDIA on the Euler step) exact to ≤ 1e-20 in
    latent MSE, Euler's error > 0 and the second-order solvers' far below it; model calls per direction as declared,
    guidance doubling the evaluations and not the calls."""
    backbone = flow_backbone
    cond = backbone.encode_prompts(PROMPTS)
    x0 = torch.randn((2, *backbone.latent_shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    levels = sampling_levels(backbone, steps)
    for guidance, per_call in ((1.0, 1), (3.0, 2)):
        mse = {}
        for name in [*FLOW_SAMPLERS, "bdia"]:
            sampler = SAMPLERS.get(name)()
            backbone.nfe.reset()
            state = sampler.invert(backbone, x0, cond, levels, guidance=guidance, rng=torch.Generator().manual_seed(0))
            invert = (backbone.nfe.calls, backbone.nfe.forward)
            backbone.nfe.reset()
            recon = sampler.reconstruct(backbone, state, cond, guidance=guidance)
            reconstruct = (backbone.nfe.calls, backbone.nfe.forward)
            up, down = CALLS[name]
            assert invert == (up(steps), up(steps) * 2 * per_call), (name, guidance)  # 2 latents
            assert reconstruct == (down(steps), down(steps) * 2 * per_call), (name, guidance)
            assert sampler.inversion_calls(steps) == up(steps) <= steps * sampler.inversion_calls_per_step
            assert state.stored_size().total == (2 if name in ("rf-inversion", "rex", "bdia") else 1)
            assert torch.isfinite(recon).all()
            mse[name] = ((recon - x0) ** 2).mean().item()
        # measured at 4 steps, w = 1 (3): euler 6.7e-3 (6.7e-3), rf-solver 3.4e-5 (4.1e-5), fireflow 2.7e-5 (2.8e-5),
        # rf-inversion 1.05 (1.06), rex 3e-32 (1.4e-31), bdia 8e-32 (2e-31); 10 steps: euler 8.6e-4, rf-solver 1.1e-6,
        # fireflow 3.4e-7, rex 1e-31
        assert mse["rex"] <= EXACT_MSE and mse["bdia"] <= EXACT_MSE, mse
        assert mse["euler"] > 1e-5, mse
        assert mse["rf-solver"] < mse["euler"] / 10 and mse["fireflow"] < mse["euler"] / 10, mse
        assert mse["rf-inversion"] > 1e-3, mse  # γ = 0.5 mixes drawn noise into the inverted latent


@pytest.mark.parametrize("name", FLOW_SAMPLERS)
def test_per_sample_paths_invert_each_path_as_alone(flow_backbone, name):
    """Paths of 4, 2 and 1 steps of a 4-step grid in one batch (padded by repeats, which are skipped): each latent's
    inversion and reconstruction equal its path's alone (FireFlow hands each row its own midpoint velocity)."""
    backbone = flow_backbone
    grid = sampling_levels(backbone, 4)  # (5,)
    levels = torch.stack([grid, torch.cat([grid[:3], grid[2:3].expand(2)]), torch.cat([grid[:2], grid[1:2].expand(3)])],
                         dim=1)  # (5, 3)
    cond = backbone.encode_prompts([*PROMPTS, PROMPTS[0]])
    x0 = torch.randn((3, *backbone.latent_shape), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sampler = SAMPLERS.get(name)(RFInversionConfig(gamma=0.0, stop=1.0)) if name == "rf-inversion" else SAMPLERS.get(name)()
    state = sampler.invert(backbone, x0, cond, levels)
    recon = sampler.reconstruct(backbone, state, cond)
    for row in range(3):
        alone = sampler.invert(backbone, x0[row:row + 1], cond[row:row + 1], levels[:, row:row + 1])
        assert torch.allclose(state.latents[row:row + 1], alone.latents, atol=1e-12, rtol=0), (name, row)
        again = sampler.reconstruct(backbone, alone, cond[row:row + 1])
        assert torch.allclose(recon[row:row + 1], again, atol=1e-12, rtol=0), (name, row)
    if sampler.exact:
        assert (recon - x0).abs().max().item() < 1e-12


def test_rf_inversion_without_control_is_euler(flow_backbone):
    backbone = flow_backbone
    cond = backbone.encode_prompts(PROMPTS)
    x0 = torch.randn((2, *backbone.latent_shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    levels = sampling_levels(backbone, 4)
    plain = SAMPLERS.get("rf-inversion")(RFInversionConfig(gamma=0.0, eta=0.0))
    assert not plain.stochastic and SAMPLERS.get("rf-inversion")().stochastic
    euler = SAMPLERS.get("euler")()
    ours, theirs = plain.invert(backbone, x0, cond, levels, guidance=3.0), euler.invert(backbone, x0, cond, levels,
                                                                                          guidance=3.0)
    assert ours.extra == {} and torch.allclose(ours.latents, theirs.latents, atol=1e-14, rtol=0)
    assert torch.allclose(plain.reconstruct(backbone, ours, cond, 3.0), euler.reconstruct(backbone, theirs, cond, 3.0),
                          atol=1e-14, rtol=0)
    with pytest.raises(ValueError, match="give it an rng"):
        SAMPLERS.get("rf-inversion")().invert(backbone, x0, cond, levels)


@pytest.mark.parametrize("name", [n for n in FLOW_SAMPLERS if "vp" not in SAMPLERS.get(n).schedules])
def test_flow_only_samplers_refuse_a_vp_backbone_in_one_line(tiny_backbone, name):
    cls = SAMPLERS.get(name)
    assert cls.schedules == ("flow",)
    cond = tiny_backbone.encode_prompts(PROMPTS[:1])
    x0 = torch.zeros((1, *tiny_backbone.latent_shape))
    levels = sampling_levels(tiny_backbone, 2)
    for call in (lambda: cls().invert(tiny_backbone, x0, cond, levels, rng=torch.Generator().manual_seed(0)),
                 lambda: cls().reconstruct(tiny_backbone, InversionState(x0, per_sample_levels(levels, 1)), cond)):
        with pytest.raises(ValueError) as err:
            call()
        assert str(err.value).startswith(f"{name} inverts flow-matching backbones") and "\n" not in str(err.value)


def test_rex_is_defined_on_both_schedules():
    assert set(SAMPLERS.get("rex").schedules) == {"vp", "flow"} and SAMPLERS.get("rex").exact


def test_inversion_benchmark_table_on_the_flow_backbone(flow_backbone):
    """`bench invert`'s records for every flow sampler on the SD3-shaped pipeline in float64 at guidance 1 and 3: the
    exact one ≤ 1e-20 in latent MSE, Euler's > 0, NFE per image as documented, the state and an overhead ratio."""
    from bench.harness.invert import InvertConfig, run_inversion_benchmark

    backbone = copy.copy(flow_backbone)  # the benchmark casts the backbone it is given
    images = torch.rand((2, 3, backbone.image_size, backbone.image_size), generator=torch.Generator().manual_seed(0))
    cfg = InvertConfig(samplers=tuple(FLOW_SAMPLERS), steps=4, guidances=(1.0, 3.0), dtype="float64", timing_repeats=1)
    result = run_inversion_benchmark(backbone, images, [PROMPTS[0]] * 2, cfg, progress=False)
    records = {(r["sampler"], r["guidance"]): r for r in result["records"]}
    assert len(records) == 2 * len(FLOW_SAMPLERS) and result["diffusers_reference"] is None
    for (name, guidance), record in records.items():
        up, down = CALLS[name]
        per_call = 1 if guidance == 1.0 else 2
        assert (record["nfe_invert"], record["nfe_reconstruct"]) == (up(4) * per_call, down(4) * per_call), name
        assert record["overhead_ratio"] > 0 and record["stored_latents"] == (2 if name in ("rf-inversion", "rex") else 1)
    for guidance in (1.0, 3.0):
        assert records[("rex", guidance)]["latent_mse"] <= EXACT_MSE
        assert records[("euler", guidance)]["latent_mse"] > 0
