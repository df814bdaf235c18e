"""The Backbone on SD3-shaped flow-matching pipelines: schedule and levels, the flow prediction space, the transformer
call, SD3's text encoding and VAE shift, loading and saving, each against diffusers' own StableDiffusion3Pipeline on
the same tiny random components."""

from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

from bench.core.backbone import SPACES, Backbone, BackboneLoadError, Conditioning, space_of

PROMPTS = ["a small red circle on the left, black background", "a large cyan triangle in the center"]
# SD3.5's 10 sampling σ with shift 3 (research/online_and_flow.md §4, from diffusers' set_timesteps)
SD35_SIGMAS_10 = [1.0, 0.960129, 0.913349, 0.857692, 0.790368, 0.707278, 0.602151, 0.464876, 0.278049, 0.008929]


def diffusers_pipeline(backbone: Backbone) -> StableDiffusion3Pipeline:
    """diffusers' SD3 pipeline over the backbone's own components."""
    return StableDiffusion3Pipeline(
        transformer=backbone.unet, scheduler=copy.deepcopy(backbone.scheduler), vae=backbone.vae,
        text_encoder=backbone.text_encoder, tokenizer=backbone.tokenizer, text_encoder_2=backbone.text_encoder_2,
        tokenizer_2=backbone.tokenizer_2, text_encoder_3=backbone.text_encoder_3, tokenizer_3=backbone.tokenizer_3,
    )


def test_family_space_and_shapes(tiny_sd3_backbone):
    b = tiny_sd3_backbone
    assert (b.family, b.is_flow, b.native_space, b.prediction_type) == ("sd3", True, "flow", "flow_prediction")
    assert b.latent_shape == (4, 8, 8) and b.num_train_timesteps == 1000
    assert space_of("flow_prediction") == "flow"


def test_flow_schedule_levels_and_timesteps(tiny_sd3_backbone):
    b = tiny_sd3_backbone
    a, s = b.noise_levels(torch.tensor([-1.0, 0.0, 250.0, 862.5, 1000.0]))
    assert a.dtype == s.dtype == torch.float64
    assert s.tolist() == [0.0, 0.0, 0.25, 0.8625, 1.0] and torch.equal(a, 1 - s)
    assert a.tolist() == pytest.approx([1.0, 1.0, 0.75, 0.1375, 0.0], abs=1e-15)
    steps = b.timesteps(10)
    reference = copy.deepcopy(b.scheduler)
    reference.set_timesteps(10)
    assert steps.dtype == torch.float64 and torch.equal(steps, reference.timesteps.double())
    assert (steps / 1000).tolist() == pytest.approx(SD35_SIGMAS_10, abs=1e-6)
    assert b.noise_levels(steps)[1].tolist() == pytest.approx(reference.sigmas[:-1].tolist(), abs=1e-7)
    with pytest.raises(ValueError, match="flow-matching"):
        b.alpha_bar(500)
    with pytest.raises(ValueError):
        b.timesteps(0)


def test_dynamic_shifting_takes_mu_as_the_pipeline_computes_it(tiny_sd3_backbone):
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

    b = tiny_sd3_backbone
    b.scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_image_seq_len=4, max_image_seq_len=64)
    reference = copy.deepcopy(b.scheduler)
    reference.set_timesteps(6, mu=calculate_shift(16, 4, 64, 0.5, 1.15))  # 8x8 latents in 2x2 patches: 16 tokens
    assert torch.equal(b.timesteps(6), reference.timesteps.double())


def test_training_levels_per_family(tiny_sd3_backbone, tiny_backbone):
    vp = tiny_backbone.training_levels(64, torch.Generator().manual_seed(3))
    assert vp.dtype == torch.float64
    assert torch.equal(vp, torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(3)).double())
    flow = tiny_sd3_backbone.training_levels(4000, torch.Generator().manual_seed(3))
    table = FlowMatchEulerDiscreteScheduler(shift=3.0).timesteps.double()  # 1000·σ_j, shifted
    assert flow.dtype == torch.float64 and torch.isin(flow, table).all()
    assert flow.min().item() > 0 and flow.max().item() == 1000.0
    # uniform over the 1000 entries σ_j = 3u/(1 + 2u), u = j/1000, whose mean is ≈ ∫ = 3/2 − (3/4) ln 3 = 0.6760
    assert (table / 1000).mean().item() == pytest.approx(0.6760, abs=1e-3)
    assert (flow / 1000).mean().item() == pytest.approx(0.6760, abs=0.01)  # 4000 draws: std error 0.004


def test_flow_target_add_noise_and_conversions_round_trip(tiny_sd3_backbone, tiny_backbone):
    b = tiny_sd3_backbone
    g = torch.Generator().manual_seed(0)
    x0, eps, y = (torch.randn(5, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.tensor([1.0, 137.5, 500.0, 862.3, 999.0], dtype=torch.float64)
    sigma = (t / 1000).view(-1, 1, 1, 1)
    assert torch.equal(b.target(x0, eps, t, "flow"), eps - x0)
    x_t = b.add_noise(x0, eps, t)
    assert (x_t - ((1 - sigma) * x0 + sigma * eps)).abs().max().item() < 1e-15
    # the model's flow output u = ε − x0 converts to ε and x0 exactly
    u = b.target(x0, eps, t, "flow")
    assert (b.convert(u, x_t, t, "eps") - eps).abs().max().item() < 1e-12
    assert (b.convert(u, x_t, t, "x0") - x0).abs().max().item() < 1e-12
    # any flow prediction y -> eps / x0 / v -> back to flow, on the flow schedule
    a, s = b.coefficients(t, x_t)
    for space in ("eps", "x0", "v"):
        converted = b.convert(y, x_t, t, space)
        back = SPACES["flow"].target(*SPACES[space].solve_any(converted, x_t, a, s), a, s)
        assert (back - y).abs().max().item() < 1e-12, space
    # and `solve_any` makes the flow space exact on the VP schedule too (a + s != 1 there)
    a_vp, s_vp = tiny_backbone.coefficients(t.round(), x0)
    x_vp = a_vp * x0 + s_vp * eps
    recovered = SPACES["flow"].solve_any(eps - x0, x_vp, a_vp, s_vp)
    assert max((recovered[0] - x0).abs().max().item(), (recovered[1] - eps).abs().max().item()) < 1e-12


def test_encode_prompts_equals_diffusers_encode_prompt(tiny_sd3_backbone, tiny_sd3_backbone_no_t5):
    for b in (tiny_sd3_backbone, tiny_sd3_backbone_no_t5):
        embeds, negative, pooled, negative_pooled = diffusers_pipeline(b).encode_prompt(PROMPTS, None, None,
                                                                                         device="cpu")
        cond = b.encode_prompts(PROMPTS)
        assert cond.embeds.shape == (2, 16 + 256, 32) and cond.added["pooled_projections"].shape == (2, 32)
        assert torch.equal(cond.embeds, embeds) and torch.equal(cond.added["pooled_projections"], pooled)
        # CFG's unconditional branch: the encoded empty prompt, not zeros (encoded once as a batch of 1, diffusers
        # encodes B copies: the projection's matmul may round differently)
        null = b.null_conditioning(2)
        assert (null.embeds - negative).abs().max().item() < 1e-6
        assert (null.added["pooled_projections"] - negative_pooled).abs().max().item() < 1e-6
        assert null.added["pooled_projections"].abs().sum() > 0
    with_t5, without = tiny_sd3_backbone.encode_prompts(PROMPTS), tiny_sd3_backbone_no_t5.encode_prompts(PROMPTS)
    assert torch.equal(without.embeds[:, 16:], torch.zeros(2, 256, 32)) and with_t5.embeds[:, 16:].abs().sum() > 0


def test_euler_sampling_through_the_backbone_equals_diffusers(tiny_sd3_backbone):
    """Four guided steps x_{t'} = a' x̂0 + s' ε̂ with the Backbone's denoised pair (which on the flow schedule is Euler's
    x + (σ' − σ) u) against StableDiffusion3Pipeline's own loop (FlowMatchEulerDiscreteScheduler.step), then decoded."""
    b, guidance = tiny_sd3_backbone, 3.0
    noise = torch.randn(2, *b.latent_shape, generator=torch.Generator().manual_seed(1))
    pipe = diffusers_pipeline(b)
    expected = pipe(PROMPTS, num_inference_steps=4, guidance_scale=guidance, latents=noise.clone(),
                    output_type="latent").images
    expected_images = pipe(PROMPTS, num_inference_steps=4, guidance_scale=guidance, latents=noise.clone(),
                           output_type="pt").images

    cond, uncond = b.encode_prompts(PROMPTS), b.null_conditioning(2)
    levels = b.timesteps(4)
    next_levels = torch.cat([levels[1:], torch.tensor([-1.0], dtype=torch.float64)])  # the last step ends at σ = 0
    assert levels[0].item() == 1000.0  # σ = 1: a = 0, so x̂0 must come from the prediction, not from ε̂
    x = noise
    b.nfe.reset()
    with torch.no_grad():
        for t, t_next in zip(levels, next_levels):
            out_u, out_c = b.model_output(torch.cat([x, x]), t, Conditioning.cat([uncond, cond])).chunk(2)
            guided = out_u + guidance * (out_c - out_u)  # the pipeline guides the velocity
            x0_hat, eps_hat = b.denoise(x, t, cond, guidance)
            assert torch.equal(x0_hat, b.convert(guided, x, t, "x0")) and torch.equal(eps_hat, b.convert(guided, x, t, "eps"))
            a_next, s_next = b.coefficients(t_next.view(1), x)
            x = a_next * x0_hat + s_next * eps_hat
    assert b.nfe.forward == 4 * (4 + 4)  # per step: one CFG call of 2B for the output, one for the pair
    difference = (x - expected).abs().max().item()
    assert difference < 1e-5, difference
    assert (b.decode(x) - expected_images).abs().max().item() < 1e-5  # latents / scale + shift, as the pipeline decodes


def test_denoise_solves_the_guided_velocity_without_dividing_by_a(tiny_sd3_backbone, tiny_backbone):
    """Flow: (x̂0, ε̂) = (x − σ u, x + (1 − σ) u) of the guided velocity, finite at σ = 1 (where ε̂ = x), with eps's
    calls and NFE, and `eps` is its ε̂. VP: ε̂ is `eps` bit for bit (guided in ε, as every sampler has read it) and
    x̂0 = (x − s ε̂)/a."""
    b, guidance = tiny_sd3_backbone, 2.5
    x = torch.randn(2, *b.latent_shape, generator=torch.Generator().manual_seed(2))
    cond = b.encode_prompts(PROMPTS)
    with torch.no_grad():
        for t in (1000.0, 602.1506):
            sigma = t / 1000
            out_u, out_c = b.model_output(torch.cat([x, x]), t, Conditioning.cat([b.null_conditioning(2), cond])).chunk(2)
            velocity = out_u + guidance * (out_c - out_u)
            b.nfe.reset()
            x0_hat, eps_hat = b.denoise(x, t, cond, guidance)
            assert (b.nfe.forward, b.nfe.calls) == (4, 1)  # one CFG call of 2B latents, as eps
            assert torch.isfinite(x0_hat).all() and torch.isfinite(eps_hat).all()
            assert (x0_hat - (x - sigma * velocity)).abs().max().item() < 1e-6
            assert (eps_hat - (x + (1 - sigma) * velocity)).abs().max().item() < 1e-6
            assert torch.equal(eps_hat, b.eps(x, t, cond, guidance))
        assert torch.equal(b.denoise(x, 1000.0, cond)[1], x)  # a = 0: ε̂ = x + 0 · u
        vp, level = tiny_backbone, torch.tensor([751.0, 1.0], dtype=torch.float64)
        x_vp, cond_vp = torch.randn(2, *vp.latent_shape, generator=torch.Generator().manual_seed(2)), vp.encode_prompts(PROMPTS)
        x0_vp, eps_vp = vp.denoise(x_vp, level, cond_vp, guidance)
        assert torch.equal(eps_vp, vp.eps(x_vp, level, cond_vp, guidance))
        a, s = vp.coefficients(level, x_vp)
        assert torch.equal(x0_vp, (x_vp - s * eps_vp) / a)


def test_vae_shift_and_scale(tiny_sd3_backbone):
    b = tiny_sd3_backbone
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    latents = b.encode_images(images)
    with torch.no_grad():
        z = b.vae.encode(images * 2 - 1).latent_dist.mode()
        pixels = b.vae.decode(latents / 1.5305 + 0.0609).sample
    assert torch.allclose(latents, (z - 0.0609) * 1.5305, atol=1e-6)  # StableDiffusion3Img2ImgPipeline's formula
    assert torch.allclose(b.decode(latents), ((pixels + 1) / 2).clamp(0, 1), atol=1e-6)


def test_guided_eps_counts_2b_and_transformer_receives_float_timesteps(tiny_sd3_backbone):
    b = tiny_sd3_backbone
    x = torch.randn(3, *b.latent_shape, generator=torch.Generator().manual_seed(0))
    cond = b.encode_prompts(["a red circle"] * 3)
    seen = []
    hook = b.unet.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["timestep"]),
                                            with_kwargs=True)
    b.nfe.reset()
    with torch.no_grad():
        b.eps(x, 857.6923, cond, guidance=4.5)
    hook.remove()
    assert (b.nfe.forward, b.nfe.calls, b.nfe.calls_by_batch) == (6, 1, {(6, False): 1})
    assert seen[0].dtype == torch.float32 and seen[0].shape == (6,) and seen[0][0].item() == pytest.approx(857.6923)


def test_save_and_load_round_trip_with_diffusers(tiny_sd3_backbone, tmp_path):
    b = tiny_sd3_backbone
    b.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusion3Pipeline" and index["transformer"] == ["diffusers",
                                                                                            "SD3Transformer2DModel"]
    assert Backbone.native_space_of(tmp_path / "pipe") == "flow"
    loaded = Backbone.from_pretrained(tmp_path / "pipe")
    assert loaded.family == "sd3" and isinstance(loaded.scheduler, FlowMatchEulerDiscreteScheduler)
    assert loaded.text_encoder_3 is not None and torch.equal(loaded.timesteps(10), b.timesteps(10))
    x = torch.randn(2, *b.latent_shape, generator=torch.Generator().manual_seed(0))
    cond = b.encode_prompts(PROMPTS)
    assert torch.equal(loaded.encode_prompts(PROMPTS).embeds, cond.embeds)
    with torch.no_grad():
        assert torch.equal(loaded.eps(x, 700.0, cond, guidance=2.0), b.eps(x, 700.0, cond, guidance=2.0))
    assert loaded.fingerprint("text") == b.fingerprint("text") and loaded.fingerprint("unet") == b.fingerprint("unet")
    # diffusers' own pipeline loads the directory, and encodes as the Backbone does
    pipe = StableDiffusion3Pipeline.from_pretrained(tmp_path / "pipe")
    with torch.no_grad():  # its encoders hold trainable weights: with autograd on, attention takes another kernel
        assert torch.equal(pipe.encode_prompt(PROMPTS, None, None, device="cpu")[0], cond.embeds)


def test_save_without_t5_or_tokenizers_and_load_errors(tiny_sd3_backbone_no_t5, tmp_path):
    b = tiny_sd3_backbone_no_t5
    b.save_pretrained(tmp_path / "pipe", include_tokenizer=False)
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["text_encoder_3"] == [None, None] and index["tokenizer"] == [None, None]
    loaded = Backbone.from_pretrained(tmp_path / "pipe")  # the CLIP BPE tokenizers are rebuilt, T5 stays absent
    assert loaded.text_encoder_3 is None and torch.equal(loaded.encode_prompts(PROMPTS).embeds,
                                                         b.encode_prompts(PROMPTS).embeds)
    shutil.rmtree(tmp_path / "pipe" / "transformer")
    with pytest.raises(BackboneLoadError, match="transformer"):
        Backbone.from_pretrained(tmp_path / "pipe")
