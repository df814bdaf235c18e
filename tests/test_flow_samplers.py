"""Every registered inversion sampler on the tiny SD3-shaped flow backbone (float64, 4 steps), and `sample_latents`
against diffusers' own schedulers on both families.

The first flow sampling level is σ = 1, where a = 0: a step reads the denoised pair (x̂0, ε̂) of `Backbone.denoise`
and never divides by a there. Three samplers are undefined at one end of the flow path and refuse it with a
ValueError; each inverts the largest part of the path it is defined on instead:

- belm: O-BELM's weight on the latent at σ = 1 is 0 (σ̄ = s/a is infinite there), so no inversion step reaches it;
- edict: EDICT's coupling slope a_t'/a_t is infinite at σ = 1;
- ddpm-ef: the step down to the clean end (σ = 0) has no posterior noise to solve for.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import build_tiny_sd3_backbone
from diffusers import DDIMScheduler

from bench.core.backbone import Conditioning
from bench.harness.sampling import initial_noise, sample_latents
from methods.inversion import SAMPLERS
from methods.inversion.base import InversionState, per_sample_levels, sampling_levels

PROMPTS = ["a small red circle on the left, black background", "a large cyan triangle in the center"]
STEPS = 4
# sampler -> (what its refusal of the whole flow path says, the part of the path it inverts instead)
REFUSALS = {
    "belm": ("cannot invert to level 1000", slice(None, -1)),  # below σ = 1
    "edict": ("unbounded at level 1000", slice(None, -1)),  # below σ = 1
    "ddpm-ef": ("variance > 0", slice(1, None)),  # above the clean end
}
SAMPLING_REFUSALS = {"edict": "unbounded at level 1000", "ddpm-ef": "noise_maps"}  # sampler -> its refusal
EXACT_BOUND = 1e-10  # max |reconstruction − x0| of an exact sampler in float64 (measured: at most 1.2e-14)


@pytest.fixture(scope="module")
def flow_backbone():
    return build_tiny_sd3_backbone(t5=False).to(dtype=torch.float64)


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_round_trip_on_the_flow_backbone_is_finite_and_exact_where_the_sampler_is(flow_backbone, name):
    backbone = flow_backbone
    cond = backbone.encode_prompts(PROMPTS)
    x0 = torch.randn((2, *backbone.latent_shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    levels = sampling_levels(backbone, STEPS)  # (K+1,) the clean end, then 1000 σ: 8.93, 602.15, 857.69, 1000
    assert backbone.noise_levels(levels[-1])[0].item() == 0  # a = 0 at the top
    sampler = SAMPLERS.get(name)()
    if name in REFUSALS:
        message, defined = REFUSALS[name]
        with pytest.raises(ValueError, match=message):
            sampler.invert(backbone, x0, cond, levels, rng=torch.Generator().manual_seed(0))
        levels = levels[defined]
    for guidance in (1.0, 3.0):
        state = sampler.invert(backbone, x0, cond, levels, guidance=guidance, rng=torch.Generator().manual_seed(0))
        recon = sampler.reconstruct(backbone, state, cond, guidance=guidance)
        assert torch.isfinite(state.latents).all() and torch.isfinite(recon).all()
        error = (recon - x0).abs().max().item()
        if sampler.exact:  # measured at w = 1, 3: bdia 1.6e-15, 2.9e-15; belm 1.3e-15, 8.9e-16; edict 1.2e-14 both;
            # ddpm-ef 1.3e-15, 1.8e-15; rex 6.7e-16, 1.1e-15
            assert error <= EXACT_BOUND, (guidance, error)
        else:  # ddim, npi, null-text, renoise: 1.0 to 1.2 on this random transformer; the flow solvers (tested on their
            # own in test_flow_inversion.py): euler 0.45, rf-solver 0.026, fireflow 0.024, rf-inversion 3.3
            assert error > 1e-3, (guidance, error)


@pytest.mark.parametrize("name", SAMPLERS.names())
def test_sampling_from_sigma_one_alone_is_finite(flow_backbone, name):
    """Reconstruction without the inversion's extra state is sampling from the top latent: the first step leaves
    σ = 1 (a = 0) through the denoised pair, and O-BELM's weight on the latent above is its limit 0 there. EDICT is
    undefined from σ = 1, and ddpm-ef samples only with its inversion's noise maps."""
    backbone = flow_backbone
    cond = backbone.encode_prompts(PROMPTS)
    noise = torch.randn((2, *backbone.latent_shape), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    state = InversionState(noise, per_sample_levels(sampling_levels(backbone, STEPS), 2))
    sampler = SAMPLERS.get(name)()
    if name in SAMPLING_REFUSALS:
        with pytest.raises(ValueError, match=SAMPLING_REFUSALS[name]):
            sampler.reconstruct(backbone, state, cond, guidance=3.0)
        return
    latents = sampler.reconstruct(backbone, state, cond, guidance=3.0)
    assert torch.isfinite(latents).all() and (latents - noise).abs().max() > 0.1


def test_sample_latents_is_diffusers_flow_match_euler_on_the_flow_backbone(tiny_sd3_backbone):
    """`sample_latents` (the DDIM map a' x̂0 + s' ε̂ of the denoised pair) against a hand loop of
    FlowMatchEulerDiscreteScheduler.step (x + (σ' − σ) u) on the guided velocity, from the same seeded noise."""
    backbone, guidance, seeds = tiny_sd3_backbone, 3.0, [3, 4]
    cond = backbone.encode_prompts(PROMPTS)
    ours = sample_latents(backbone, cond, seeds, steps=STEPS, guidance=guidance)

    scheduler = copy.deepcopy(backbone.scheduler)
    scheduler.set_timesteps(STEPS)
    x = initial_noise(seeds, backbone.latent_shape)
    both = Conditioning.cat([backbone.null_conditioning(2), cond])
    with torch.no_grad():
        for t in scheduler.timesteps:
            out_u, out_c = backbone.model_output(torch.cat([x, x]), t.item(), both).chunk(2)
            x = scheduler.step(out_u + guidance * (out_c - out_u), t, x).prev_sample
    difference = (ours - x).abs().max().item()
    assert difference < 1e-5, difference  # float32 rounding: 7.2e-7 measured (1.2e-6 at 10 steps, w = 4.5)
    assert (x - initial_noise(seeds, backbone.latent_shape)).abs().max() > 0.1


def test_sample_latents_is_diffusers_ddim_on_a_vp_backbone(tiny_backbone):
    """On the (v-prediction) toy backbone: the DDIMScheduler.step loop (η = 0, fed ε̂) that `sample_latents` ran
    before it sampled through the Backbone's own DDIM map; the same up to its float32 coefficients."""
    backbone, guidance, seeds = tiny_backbone, 3.0, [3, 4]
    cond = backbone.encode_prompts(PROMPTS)
    ours = sample_latents(backbone, cond, seeds, steps=STEPS, guidance=guidance)

    scheduler = copy.deepcopy(backbone.scheduler)
    scheduler.register_to_config(prediction_type="epsilon")  # it is handed ε̂ whatever the model predicts
    scheduler.set_timesteps(STEPS)
    x = initial_noise(seeds, backbone.latent_shape)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(backbone.eps(x, int(t), cond, guidance), t, x, eta=0.0).prev_sample
    assert isinstance(backbone.scheduler, DDIMScheduler)
    difference = (ours - x).abs().max().item()
    # 3.6e-6 measured on latents of scale 3: the first step (t = 751) differs by one float32 ulp, diffusers' ᾱ**0.5
    # against the Backbone's float64 √ᾱ rounded; the later steps agree bit for bit on the same input
    assert difference < 2e-5, difference
