"""Exact and approximate inversion samplers on a float64 tiny random UNet (inversion.md §9)."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import DDIMScheduler
from test_inversion import _float64_eps_backbone

from methods.inversion import SAMPLERS
from methods.inversion.base import InversionState, per_sample_levels, sampling_levels
from methods.inversion.bdia import BDIA, BDIAConfig
from methods.inversion.belm import OBELM
from methods.inversion.ddim import DDIMInversion
from methods.inversion.ddpm_ef import EditFriendlyDDPM, EditFriendlyDDPMConfig
from methods.inversion.edict import EDICT, EDICTConfig
from methods.inversion.npi import NegativePromptInversion
from methods.inversion.null_text import NullTextConfig, NullTextInversion
from methods.inversion.renoise import ReNoise, ReNoiseConfig

EPS64 = torch.finfo(torch.float64).eps
PROMPT = "a small red circle on the left, black background"


@pytest.fixture(scope="module")
def backbone(tiny_arch):
    return _float64_eps_backbone(tiny_arch)


def _latents(backbone, batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn((batch, *backbone.latent_shape), generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b) ** 2).mean().item()


def _round_trip(sampler, backbone, x0, cond, steps: int, **kwargs) -> tuple[InversionState, float]:
    state = sampler.invert(backbone, x0, cond, sampling_levels(backbone, steps), rng=torch.Generator().manual_seed(0),
                           **kwargs)
    return state, _mse(sampler.reconstruct(backbone, state, cond, **kwargs), x0)


# ----------------------------------------------------------------------------------------------- DDIM


def test_ddim_sampling_equals_diffusers_ddim_scheduler(backbone):
    cond = backbone.encode_prompts([PROMPT] * 2)
    x_top = _latents(backbone, 2)
    scheduler = DDIMScheduler.from_config(backbone.scheduler.config)
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()  # the float64 table the Backbone uses
    scheduler.final_alpha_cumprod = scheduler.final_alpha_cumprod.double()
    scheduler.set_timesteps(10)
    x = x_top.clone()
    for t in scheduler.timesteps:
        x = scheduler.step(backbone.unet(x, t, cond.embeds).sample, t, x).prev_sample
    levels = per_sample_levels(sampling_levels(backbone, 10), 2)
    ours = DDIMInversion().reconstruct(backbone, InversionState(x_top, levels), cond)
    assert (ours - x).abs().max().item() <= 1e-12
    assert (x - x_top).abs().max().item() > 0.1  # the loop really moved


def _eps_of_t(x_t, t, cond, guidance=1.0, uncond=None):
    """A denoiser whose ε depends on the level only (same shape as x_t)."""
    t = torch.as_tensor(t, dtype=torch.float64).view(-1, 1, 1, 1)
    pattern = torch.linspace(-1, 1, x_t[0].numel(), dtype=torch.float64).view(x_t.shape[1:])
    return (torch.sin(t / 150) * pattern + torch.cos(t / 300)).expand_as(x_t).to(x_t)


def test_ddim_exact_and_edict_equals_ddim_when_eps_depends_only_on_t(backbone, monkeypatch):
    monkeypatch.setattr(backbone, "eps", _eps_of_t)
    cond = backbone.encode_prompts([PROMPT])
    x0 = _latents(backbone)
    ddim, error = _round_trip(DDIMInversion(), backbone, x0, cond, 50)
    assert error < 1e-26
    edict = EDICT(EDICTConfig(p=0.93)).invert(backbone, x0, cond, sampling_levels(backbone, 50))
    assert torch.allclose(edict.latents, edict.extra["y"], atol=1e-12, rtol=0)  # x ≡ y
    assert torch.allclose(edict.latents, ddim.latents, atol=1e-12, rtol=0)
    assert (ddim.latents - x0).abs().max().item() > 0.5


# ----------------------------------------------------------------------------------------------- EDICT


def test_edict_round_trip_exact_and_error_bounded_by_p_amplification(backbone):
    cond = backbone.encode_prompts([PROMPT])
    x0 = _latents(backbone)
    sampler = EDICT(EDICTConfig(p=0.93))
    state = sampler.invert(backbone, x0, cond, sampling_levels(backbone, 50))
    x, y = sampler.reconstruct_pair(backbone, state, cond)
    assert _mse(x, x0) <= 1e-10 and _mse(y, x0) <= 1e-10  # E1, both chains
    assert _mse(state.latents, state.extra["y"]) > 1e-4  # the chains really are two
    assert _round_trip(EDICT(EDICTConfig(p=1.0)), backbone, x0, cond, 10)[1] < 1e-26  # E2

    loose = EDICT(EDICTConfig(p=0.8))  # E3: rounding grows like p^(−2N) in the chains' difference
    state = loose.invert(backbone, x0, cond, sampling_levels(backbone, 50))
    error = _mse(loose.reconstruct_pair(backbone, state, cond)[1], x0) ** 0.5
    assert error <= EPS64 * 0.8 ** -100
    assert error > 1e3 * _mse(y, x0) ** 0.5  # the amplification is real at p = 0.8
    assert state.latents.abs().max().item() > 1e3


def test_edict_sampling_follows_the_official_leapfrog_order(backbone, monkeypatch):
    """With ε̂(z) = z the two steps of [−1, 1, 501] are computed by hand: the top step updates x
    first from y, the next one (leapfrog) y first from x; the mixing layer never swaps."""
    monkeypatch.setattr(backbone, "eps", lambda x_t, t, cond, guidance=1.0, uncond=None: x_t.clone())
    levels = sampling_levels(backbone, 2)  # -1, 1, 501
    abar = backbone.alpha_bar(levels).tolist()
    x, y = _latents(backbone, seed=1), _latents(backbone, seed=2)
    state = InversionState(x, per_sample_levels(levels, 1), {"y": y})
    p = 0.9
    for lo, hi, swap in ((abar[1], abar[2], False), (abar[0], abar[1], True)):
        a = (lo / hi) ** 0.5
        b = (1 - lo) ** 0.5 - a * (1 - hi) ** 0.5
        if swap:
            y = a * y + b * x
            x = a * x + b * y
        else:
            x = a * x + b * y
            y = a * y + b * x
        x = p * x + (1 - p) * y
        y = p * y + (1 - p) * x
    cond = backbone.encode_prompts([PROMPT])
    ours_x, ours_y = EDICT(EDICTConfig(p=p)).reconstruct_pair(backbone, state, cond)
    assert torch.allclose(ours_x, x, atol=1e-13, rtol=0) and torch.allclose(ours_y, y, atol=1e-13, rtol=0)
    no_leapfrog = EDICT(EDICTConfig(p=p, leapfrog=False)).reconstruct_pair(backbone, state, cond)[0]
    assert (no_leapfrog - x).abs().max().item() > 1e-3


# ----------------------------------------------------------------------------------------------- BDIA


def test_bdia_gamma_zero_samples_as_ddim(backbone):
    cond = backbone.encode_prompts([PROMPT])
    state = InversionState(_latents(backbone), per_sample_levels(sampling_levels(backbone, 10), 1))
    ddim = DDIMInversion().reconstruct(backbone, state, cond)
    assert torch.allclose(BDIA(BDIAConfig(gamma=0.0)).reconstruct(backbone, state, cond), ddim, atol=1e-12, rtol=0)


@pytest.mark.parametrize("gamma", [0.9, 0.96, 1.0])
def test_bdia_pair_round_trip_is_exact_but_not_from_one_latent(backbone, gamma):
    cond = backbone.encode_prompts([PROMPT])
    x0 = _latents(backbone)
    state, error = _round_trip(BDIA(BDIAConfig(gamma=gamma)), backbone, x0, cond, 50)
    assert error <= 1e-10
    state.extra.pop("previous")  # B3: restart from z_N alone (a DDIM first step)
    assert _mse(BDIA(BDIAConfig(gamma=gamma)).reconstruct(backbone, state, cond), x0) > 1e-2


def test_bdia_first_inversion_step_includes_eps(backbone):
    cond = backbone.encode_prompts([PROMPT])
    x0 = _latents(backbone)
    levels = sampling_levels(backbone, 10)
    state = BDIA().invert(backbone, x0, cond, levels[:3])
    ddim_step = DDIMInversion().invert(backbone, x0, cond, levels[:2]).latents
    assert torch.equal(state.extra["previous"], ddim_step)
    eps_free = (backbone.alpha_bar(levels[1]) / backbone.alpha_bar(levels[0])).sqrt().item() * x0
    assert (ddim_step - eps_free).abs().max().item() > 1e-3


# ----------------------------------------------------------------------------------------------- O-BELM


def test_belm_weights_sum_to_one_in_scaled_coordinates(backbone):
    lo, mid, hi = torch.tensor([-1, 1, 21, 500]), torch.tensor([1, 21, 41, 600]), torch.tensor([21, 41, 61, 900])
    c_hi, c_mid, _ = OBELM().coefficients(backbone, lo, mid, hi)
    a = {k: backbone.alpha_bar(v).sqrt() for k, v in (("lo", lo), ("mid", mid), ("hi", hi))}
    total = c_hi * a["hi"] / a["lo"] + c_mid * a["mid"] / a["lo"]  # weights on x̄ = x/a
    assert torch.allclose(total, torch.ones(4, dtype=torch.float64), atol=1e-14, rtol=0)


def test_belm_round_trip_within_its_amplification_bound(backbone):
    cond = backbone.encode_prompts([PROMPT])
    x0 = _latents(backbone)
    abar = backbone.alpha_bar(sampling_levels(backbone, 50))
    h = ((1 - abar) / abar).sqrt().diff()  # steps in σ̄ = s/a
    amplification = (h[-1] / h[0]).item() ** 2  # ≈ 1.4e4 on SD's schedule
    assert 1e3 < amplification < 1e5
    _, error = _round_trip(OBELM(), backbone, x0, cond, 50)
    assert error ** 0.5 <= 10 * EPS64 * amplification


# ----------------------------------------------------------------------------------------------- approximate inverters


def test_null_text_without_optimisation_is_ddim_with_cfg_and_optimising_helps(backbone):
    cond = backbone.encode_prompts([PROMPT])
    x0 = _latents(backbone)
    levels = sampling_levels(backbone, 3)
    plain = NullTextInversion(NullTextConfig(inner_steps=0))
    state = plain.invert(backbone, x0, cond, levels, guidance=7.5)
    ddim = DDIMInversion().invert(backbone, x0, cond, levels)
    assert torch.equal(state.latents, ddim.latents)
    assert torch.equal(plain.reconstruct(backbone, state, cond, guidance=7.5),
                       DDIMInversion().reconstruct(backbone, ddim, cond, guidance=7.5))
    errors = []
    for inner_steps in (0, 1, 3):
        sampler = NullTextInversion(NullTextConfig(inner_steps=inner_steps))
        backbone.nfe.reset()
        state = sampler.invert(backbone, x0, cond, levels, guidance=7.5)
        # every optimisation step backpropagates through the (frozen) UNet to the embedding: charged 2F per latent
        if inner_steps == 0:
            assert backbone.nfe.grad_forward == 0
        else:
            assert backbone.nfe.grad_forward >= 3  # at least one optimisation step at each of the 3 timesteps
        backbone.nfe.reset()
        errors.append(_mse(sampler.reconstruct(backbone, state, cond, guidance=7.5), x0))
        assert (backbone.nfe.forward, backbone.nfe.calls) == (6, 3)  # N3: CFG reconstruction, 2N
    assert errors[0] > errors[1] > errors[2]


def test_null_text_optimises_float32_embeddings_on_a_half_precision_unet(backbone):
    half = copy.deepcopy(backbone).to(dtype=torch.bfloat16)
    cond = half.encode_prompts([PROMPT])
    x0 = _latents(backbone).float()
    levels = sampling_levels(half, 3)
    errors = []
    for inner_steps in (0, 3):
        sampler = NullTextInversion(NullTextConfig(inner_steps=inner_steps))
        state = sampler.invert(half, x0, cond, levels, guidance=7.5)
        assert state.extra["uncond_embeds"].dtype == torch.float32 and state.latents.dtype == torch.float32
        errors.append(_mse(sampler.reconstruct(half, state, cond, guidance=7.5), x0))
    assert errors[1] < errors[0]


def test_npi_reconstruction_is_conditional_ddim_bit_for_bit(backbone):
    cond = backbone.encode_prompts([PROMPT])
    x0 = _latents(backbone)
    levels = sampling_levels(backbone, 10)
    state = NegativePromptInversion().invert(backbone, x0, cond, levels, guidance=7.5)
    assert torch.equal(state.latents, DDIMInversion().invert(backbone, x0, cond, levels).latents)
    conditional = DDIMInversion().reconstruct(backbone, state, cond, guidance=1.0)
    for guidance in (1.0, 7.5):
        assert torch.equal(NegativePromptInversion().reconstruct(backbone, state, cond, guidance=guidance), conditional)


def test_renoise_zero_iterations_is_ddim_and_error_shrinks_with_iterations(backbone):
    cond = backbone.encode_prompts([PROMPT])
    x0 = _latents(backbone)
    levels = sampling_levels(backbone, 5)
    ddim = DDIMInversion().invert(backbone, x0, cond, levels)
    assert torch.equal(ReNoise(ReNoiseConfig(iterations=0)).invert(backbone, x0, cond, levels).latents, ddim.latents)
    errors = [_round_trip(ReNoise(ReNoiseConfig(iterations=k)), backbone, x0, cond, 5)[1] for k in (0, 1, 2, 4)]
    assert errors[0] == pytest.approx(_mse(DDIMInversion().reconstruct(backbone, ddim, cond), x0), rel=1e-12)
    assert errors[0] > errors[1] > errors[2] > errors[3]
    assert errors[3] < 0.1 * errors[0]


def test_ddpm_ef_reproduces_x0_from_independent_noisy_latents(backbone):
    cond = backbone.encode_prompts([PROMPT] * 2)
    x0 = _latents(backbone, 2)
    backbone.nfe.reset()
    state, error = _round_trip(EditFriendlyDDPM(), backbone, x0, cond, 20)
    assert error < 1e-24
    assert backbone.nfe.calls == 1 + 20  # one batched inversion call, then N sequential ones
    maps = state.extra["noise_maps"]  # (N, B, C, h, w)
    assert maps.shape == (20, *x0.shape) and 0.5 < maps.std().item() < 5
    backbone.nfe.reset()
    chunked = EditFriendlyDDPM(EditFriendlyDDPMConfig(max_batch=16)).invert(backbone, x0, cond, sampling_levels(backbone, 20),
                                                   rng=torch.Generator().manual_seed(0))
    assert backbone.nfe.calls == 3  # 40 latents, 16 per call
    assert torch.allclose(chunked.extra["noise_maps"], maps, atol=1e-9, rtol=0)
    other = EditFriendlyDDPM().invert(backbone, x0, cond, sampling_levels(backbone, 20), rng=torch.Generator().manual_seed(1))
    assert (other.latents - state.latents).abs().max().item() > 0.1  # the draws come from the rng


# ----------------------------------------------------------------------------------------------- cost and validation


@pytest.mark.parametrize(("name", "invert_nfe", "reconstruct_nfe"), [
    ("ddim", 4, 4), ("bdia", 4, 3), ("belm", 4, 3), ("edict", 8, 8), ("npi", 4, 4), ("renoise", 8, 4),
    ("ddpm-ef", 4, 4),
])
def test_nfe_per_direction_and_cfg_doubles_forwards_not_calls(backbone, name, invert_nfe, reconstruct_nfe):
    """N = 4 steps, one latent: BDIA/O-BELM reconstruct from the pair with N − 1 calls; NPI's CFG
    with ∅ = c collapses to the conditional branch, so it never doubles."""
    cond = backbone.encode_prompts([PROMPT])
    x0 = _latents(backbone)
    sampler = SAMPLERS.get(name)()
    for guidance, per_call in ((1.0, 1), (3.0, 1 if name == "npi" else 2)):
        backbone.nfe.reset()
        state = sampler.invert(backbone, x0, cond, sampling_levels(backbone, 4), guidance=guidance,
                               rng=torch.Generator().manual_seed(0))
        invert_calls = 1 if name == "ddpm-ef" else invert_nfe
        assert (backbone.nfe.forward, backbone.nfe.calls) == (invert_nfe * per_call, invert_calls)
        backbone.nfe.reset()
        sampler.reconstruct(backbone, state, cond, guidance=guidance)
        assert (backbone.nfe.forward, backbone.nfe.calls) == (reconstruct_nfe * per_call, reconstruct_nfe)


@pytest.mark.parametrize(("name", "fixed", "grows"), [
    ("ddim", 1, False), ("bdia", 2, False), ("belm", 2, False), ("edict", 2, False), ("npi", 1, False),
    ("renoise", 1, False), ("ddpm-ef", 1, True), ("null-text", 1, True),
])
def test_stored_state_is_counted_from_the_state_in_latents(backbone, name, fixed, grows):
    """Latent + second latent (BDIA/O-BELM `previous`, EDICT `y`), + one noise map per step (DDPM-EF),
    + one null embedding per step (null-text, L·D numbers each, also at w = 1), per image (that this matches what
    the state holds: test_contracts.py)."""
    cond = backbone.encode_prompts([PROMPT] * 2)
    x0 = _latents(backbone, batch=2)
    per_step = {"ddpm-ef": 1.0, "null-text": backbone.null_conditioning(1).embeds[0].numel() / x0[0].numel()}
    for steps, guidance in ((3, 1.0), (6, 3.0)):
        sampler = NullTextInversion(NullTextConfig(inner_steps=2)) if name == "null-text" else SAMPLERS.get(name)()
        state = sampler.invert(backbone, x0, cond, sampling_levels(backbone, steps), guidance=guidance,
                               rng=torch.Generator().manual_seed(0))
        size = state.stored_size()
        assert (size.fixed, size.per_step, size.steps) == (fixed, per_step.get(name, 0.0), steps)
        assert size.total == fixed + per_step.get(name, 0.0) * steps and (size.per_step > 0) == grows


def test_stored_size_checks_the_layout_of_the_state(backbone):
    x0 = _latents(backbone, batch=2)
    levels = per_sample_levels(sampling_levels(backbone, 3), 2)  # K = 3, B = 2
    maps = torch.zeros(3, 2, *backbone.latent_shape, dtype=torch.float64)
    assert InversionState(x0, levels, {"maps": maps}, per_step=("maps",)).stored_size().total == 1 + 3
    with pytest.raises(ValueError, match=r"extra\['maps'\] has shape \(3, 2, 4, 8, 8\), not \(B, \.\.\.\) per sample"):
        InversionState(x0, levels, {"maps": maps}).stored_size()  # a per-step entry not declared per step
    with pytest.raises(ValueError, match="not in extra"):
        InversionState(x0, levels, per_step=("maps",)).stored_size()


def test_invalid_parameters_are_rejected_by_name(backbone):
    cond = backbone.encode_prompts([PROMPT])
    x0 = _latents(backbone)
    levels = sampling_levels(backbone, 4)
    for make, message in [
        (lambda: EDICTConfig(p=0.0), r"p \(mixing weight\)"), (lambda: EDICTConfig(p=1.5), r"p \(mixing weight\)"),
        (lambda: BDIAConfig(gamma=-0.1), "gamma must be >= 0"), (lambda: ReNoiseConfig(iterations=-1), "iterations"),
        (lambda: ReNoiseConfig(average=0), "average must"), (lambda: NullTextConfig(inner_steps=-1), "inner_steps"),
        (lambda: NullTextConfig(lr=0), "lr must be > 0"), (lambda: EditFriendlyDDPMConfig(max_batch=0), "max_batch"),
        (lambda: BDIA(BDIAConfig(gamma=0.0)).invert(backbone, x0, cond, levels), "gamma must be > 0"),
        (lambda: EditFriendlyDDPM().invert(backbone, x0, cond, levels), "needs an rng"),
        (lambda: BDIA().invert(backbone, x0, cond, levels[:1]), "K >= 1"),
        (lambda: EDICT().invert(backbone, x0, cond, levels.flip(0)), "non-decreasing"),
        (lambda: OBELM().invert(backbone, x0, cond, torch.stack([levels, levels], 1)), "2 paths for a batch of 1"),
        (lambda: NullTextInversion().invert(backbone, x0, cond, torch.arange(-1, 101)), "at most 100 steps"),
        (lambda: EditFriendlyDDPM().reconstruct(backbone, InversionState(x0, levels[:, None]), cond), "noise_maps"),
    ]:
        with pytest.raises(ValueError, match=message):
            make()
    assert 0.92 <= BDIA().config.gamma <= 1.0 and EDICT().config.p == 0.93 and ReNoise().config.iterations == 1
    with pytest.raises(TypeError, match=r"edict takes its Config \(EDICTConfig\)"):
        EDICT(0.93)  # a setting goes in the Config
