"""DDIM inversion against diffusers' own schedulers, and InPO's inversion paths."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from bench.core.backbone import Backbone
from bench.toy.pipeline import build_components, sd_ddim_scheduler
from methods.alignment.inpo import inversion_levels, inverted_noise
from methods.inversion.base import sampling_levels
from methods.inversion.ddim import DDIMConfig, DDIMInversion


def _float64_eps_backbone(tiny_arch) -> Backbone:
    from bench.core.clip_bpe import clip_bpe_tokenizer

    unet, vae, text, _ = build_components(tiny_arch, seed=0)
    for m in (unet, vae, text):
        m.double().eval().requires_grad_(False)
    return Backbone(unet, vae, text, clip_bpe_tokenizer(tiny_arch.max_prompt_tokens), sd_ddim_scheduler("epsilon"))


def test_ddim_inversion_equals_diffusers_inverse_scheduler(tiny_arch):
    backbone = _float64_eps_backbone(tiny_arch)
    cond = backbone.encode_prompts(["a large red circle on the left, black background"] * 2)
    x0 = torch.randn((2, *backbone.latent_shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    steps = 10

    ours = DDIMInversion().invert(backbone, x0, cond, sampling_levels(backbone, steps))

    inverse = DDIMInverseScheduler.from_config(backbone.scheduler.config)
    inverse.set_timesteps(steps)
    assert inverse.timesteps.tolist() == sampling_levels(backbone, steps)[1:].tolist()  # 1, 101, ..., 901
    z = x0.clone()
    for t in inverse.timesteps:
        z = inverse.step(backbone.unet(z, t, cond.embeds).sample, t, z).prev_sample
    assert torch.allclose(ours.latents, z, atol=1e-6, rtol=0)

    forward = DDIMScheduler.from_config(backbone.scheduler.config)
    forward.set_timesteps(steps)
    x = ours.latents.clone()
    for t in forward.timesteps:
        x = forward.step(backbone.unet(x, t, cond.embeds).sample, t, x).prev_sample
    assert torch.allclose(DDIMInversion().reconstruct(backbone, ours, cond), x, atol=1e-6, rtol=0)


def test_ddim_round_trip_is_not_exact_but_close_for_few_steps(tiny_arch):
    backbone = _float64_eps_backbone(tiny_arch)
    cond = backbone.encode_prompts(["a small green square on the right, gray background"] * 2)
    x0 = torch.randn((2, *backbone.latent_shape), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    errors = []
    for steps in (10, 40):
        state = DDIMInversion().invert(backbone, x0, cond, sampling_levels(backbone, steps))
        errors.append(((DDIMInversion().reconstruct(backbone, state, cond) - x0) ** 2).mean().item())
    assert errors[0] > 1e-8  # DDIM inversion is not exact with a real (random) UNet
    assert errors[1] < errors[0]  # and its error shrinks with the step size


def test_inpo_levels_faithful_and_exact():
    t = torch.tensor([150, 101, 0, 999])
    faithful = inversion_levels(t, 1000, 10, "faithful")
    exact = inversion_levels(t, 1000, 10, "exact")
    assert faithful[:, 0].tolist() == [-99, 1, 101, 201] + [201] * 7
    assert exact[:, 0].tolist() == [-99, 1, 101, 150] + [150] * 7
    assert exact[:, 1].tolist()[:3] == [-99, 1, 101]  # t on the grid: both modes end at t
    assert faithful[:, 2].tolist()[:2] == [-99, 1] and exact[:, 2].tolist()[:2] == [-99, 0]
    assert faithful[-1, 3].item() == 901 and exact[-1, 3].item() == 999
    assert (exact[-1] == t).all()
    # the shape does not depend on the batch (10 grid steps at most), so neither do per-step draws
    assert inversion_levels(torch.tensor([150]), 1000, 10, "faithful").shape == (11, 1)


def test_inpo_faithful_inversion_with_zero_model_hand_value(tiny_arch):
    """ε_θ ≡ 0, no noise, SD betas, t = 150: 3 steps to τ = 201, x_τ = 0.867631, ε̂ = −0.101723."""
    backbone = _float64_eps_backbone(tiny_arch)
    backbone.unet.conv_out.weight.zero_()
    backbone.unet.conv_out.bias.zero_()  # the UNet now predicts ε = 0 everywhere
    cond = backbone.encode_prompts([""])
    x0 = torch.ones((1, *backbone.latent_shape), dtype=torch.float64)
    t = torch.tensor([150])
    levels = inversion_levels(t, 1000, 10, "faithful")
    backbone.nfe.reset()
    x_tau = DDIMInversion(DDIMConfig(eval_at="source")).invert(backbone, x0, cond, levels).latents
    assert backbone.nfe.forward == 3
    assert x_tau.flatten()[0].item() == pytest.approx(0.867631, abs=1e-6)
    eps_hat = inverted_noise(x_tau, x0, backbone.noise_levels(t))
    assert eps_hat.flatten()[0].item() == pytest.approx(-0.101723, abs=1e-6)


def test_stochastic_inversion_needs_rng_and_adds_scaled_noise(tiny_arch):
    backbone = _float64_eps_backbone(tiny_arch)
    backbone.unet.conv_out.weight.zero_()
    backbone.unet.conv_out.bias.zero_()
    cond = backbone.encode_prompts([""] * 64)
    x0 = torch.zeros((64, *backbone.latent_shape), dtype=torch.float64)
    levels = torch.tensor([1, 101])
    with pytest.raises(ValueError, match="rng"):
        DDIMInversion(DDIMConfig(noise_scale=0.1)).invert(backbone, x0, cond, levels)
    out = DDIMInversion(DDIMConfig(noise_scale=0.1)).invert(backbone, x0, cond, levels, rng=torch.Generator().manual_seed(0))
    lo, hi = backbone.alpha_bar(1), backbone.alpha_bar(101)
    sigma = ((1 - lo) / (1 - hi) * (1 - hi / lo)).sqrt().item()
    assert out.latents.std().item() == pytest.approx(0.1 * sigma, rel=0.05)


def test_inpo_loss_uses_policy_inversion_and_counts_nfe(tiny_backbone):
    from methods.alignment import METHODS
    from methods.alignment.base import PairBatch

    cond = tiny_backbone.encode_prompts(["a small red circle on the left, black background"] * 2)
    g = torch.Generator().manual_seed(0)
    shape = (2, *tiny_backbone.latent_shape)
    batch = PairBatch(torch.randn(shape, generator=g), torch.randn(shape, generator=g), cond)
    for mode in ("faithful", "exact"):
        method = METHODS.get("inpo")(METHODS.get("inpo").Config(mode=mode, beta=10.0))
        tiny_backbone.nfe.reset()
        rng = torch.Generator().manual_seed(3)
        out = method.loss(batch, tiny_backbone, copy.copy(tiny_backbone), rng)
        steps = out.logs["inversion_steps"]
        assert 1 <= steps <= 10
        # policy and reference forwards on 4 latents each, plus one forward per latent per inversion step
        assert tiny_backbone.nfe.forward == pytest.approx(8 + 4 * steps)
        assert out.loss.item() == pytest.approx(0.693147, abs=1e-5)  # policy == reference


def test_inpo_refuses_a_stochastic_inverter_by_name():
    from methods.alignment.inpo import InPOConfig
    from methods.inversion import SAMPLERS

    stochastic = [name for name in SAMPLERS if SAMPLERS.get(name).stochastic]
    assert stochastic == ["ddpm-ef", "rf-inversion"]  # rf-inversion: its inversion steers to drawn noise (γ > 0)
    with pytest.raises(ValueError) as err:
        InPOConfig(inversion="ddpm-ef")
    message = str(err.value)
    assert message.startswith("inversion=ddpm-ef: InPO needs a deterministic inverter; ddpm-ef's inverted latent is "
                              "fresh noise") and "\n" not in message
    usable = [name for name in SAMPLERS if name not in stochastic]
    assert {"bdia", "belm", "ddim", "edict", "npi", "null-text", "renoise"} <= set(usable)
    assert f"(use {', '.join(usable)})" in message
    for name in ("ddim", "bdia", "belm", "edict", "npi", "null-text", "renoise"):
        InPOConfig(inversion=name)


def test_inversion_benchmark_at_two_guidances_records_both_and_the_stored_state(tiny_arch, tmp_path):
    from bench.harness.invert import InvertConfig, run_inversion_benchmark
    from bench.results.figures import inversion_error_vs_nfe, inversion_time_per_image
    from bench.results.report import inversion_table, stored_state

    backbone = _float64_eps_backbone(tiny_arch)
    images = torch.rand((2, 3, backbone.image_size, backbone.image_size), generator=torch.Generator().manual_seed(0))
    prompts = ["a small red circle on the left, black background", "a large blue square in the center, gray background"]
    cfg = InvertConfig(samplers=("ddim", "npi", "null-text", "ddpm-ef"), steps=4, guidances=(1.0, 7.5), dtype="float64",
                       timing_repeats=1)
    result = run_inversion_benchmark(backbone, images, prompts, cfg, progress=False)
    assert result["config"]["guidances"] == [1.0, 7.5] and result["diffusers_reference"] is not None
    records = {(r["guidance"], r["sampler"]): r for r in result["records"]}
    assert len(records) == 8
    mse = {key: r["latent_mse"] for key, r in records.items()}
    assert mse[1.0, "npi"] == mse[1.0, "null-text"] == mse[1.0, "ddim"]  # the same DDIM at w = 1
    assert mse[7.5, "npi"] == mse[1.0, "ddim"]  # NPI reconstructs at w = 1 whatever the guidance
    assert mse[7.5, "ddim"] > mse[1.0, "ddim"] and mse[7.5, "null-text"] < mse[7.5, "ddim"]
    assert records[7.5, "ddim"]["nfe_invert"] == 8 and records[7.5, "npi"]["nfe_invert"] == 4  # CFG doubles
    embed = backbone.null_conditioning(1).embeds[0].numel() / torch.Size(backbone.latent_shape).numel()
    for w in (1.0, 7.5):
        assert (records[w, "ddim"]["stored_latents_fixed"], records[w, "ddim"]["stored_latents_per_step"]) == (1, 0)
        assert records[w, "ddpm-ef"]["stored_latents"] == 1 + 4
        assert records[w, "null-text"]["stored_latents"] == 1 + 4 * embed
    table = inversion_table(result["records"])
    assert table.columns[:2].tolist() == ["guidance", "sampler"] and table["guidance"].tolist() == [1.0] * 4 + [7.5] * 4
    assert table["stored_latents"].tolist()[:2] == ["1", "1"]
    assert table["stored_latents"].tolist()[3] == "1 + N = 5"
    assert table["stored_latents"].tolist()[2].endswith(f"N = {1 + 4 * embed:.3g}")
    sd15_null_text = {"stored_latents_fixed": 1.0, "stored_latents_per_step": 77 * 768 / (4 * 64 * 64),
                      "stored_latents": 1 + 50 * 77 * 768 / (4 * 64 * 64)}
    assert stored_state(sd15_null_text) == "1 + 3.61N = 181" and stored_state({"sampler": "ddim"}) == "-"
    for figure in (inversion_error_vs_nfe, inversion_time_per_image):
        assert figure(result["records"], tmp_path / f"{figure.__name__}.png").stat().st_size > 0
    with pytest.raises(ValueError, match="listed twice"):
        InvertConfig(guidances=(1.0, 1.0))
    with pytest.raises(ValueError, match="guidance must be >= 0"):
        InvertConfig(guidances=(-1.0,))
