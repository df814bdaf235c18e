"""The Backbone: parametrisation conversions, CFG, NFE counting, schedule, loading and saving."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from bench.core.backbone import Backbone, BackboneLoadError, Conditioning
from bench.core.clip_bpe import CLIP_VOCAB_SIZE, clip_bpe_tokenizer
from bench.toy.pipeline import build_components, sd_ddim_scheduler


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_to_eps_inverts_each_parametrisation(tiny_backbone, kind):
    tiny_backbone.scheduler = sd_ddim_scheduler(kind)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 4, 8, 8, generator=g), torch.randn(5, 4, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 900, 999])
    a, s = tiny_backbone.coefficients(t, x0)
    x_t = a * x0 + s * eps
    output = {"epsilon": eps, "v_prediction": a * eps - s * x0, "sample": x0}[kind]
    assert torch.allclose(tiny_backbone.to_eps(output, x_t, t), eps, atol=2e-4)


def test_alphas_cumprod_is_diffusers_table_in_float64(tiny_backbone):
    table = tiny_backbone.alphas_cumprod
    assert table.dtype == torch.float64 and len(table) == 1000
    assert torch.equal(table.float(), tiny_backbone.scheduler.alphas_cumprod)  # the numbers diffusers uses, promoted
    # SD's scaled-linear betas 0.00085 .. 0.012: ᾱ_0 = 1 − 0.00085, and the clean end ᾱ_{-1} = final_alpha_cumprod
    assert table[0].item() == pytest.approx(1 - 0.00085, rel=1e-6)
    assert tiny_backbone.alpha_bar(-1).item() == tiny_backbone.final_alpha_cumprod


def test_schedule_levels_and_timesteps(tiny_backbone):
    assert tiny_backbone.alpha_bar(-1).item() == pytest.approx(tiny_backbone.alphas_cumprod[0].item())
    assert tiny_backbone.alpha_bar(torch.tensor([5, -99])).tolist() == [
        tiny_backbone.alphas_cumprod[5].item(), tiny_backbone.final_alpha_cumprod]
    steps = tiny_backbone.timesteps(50)
    assert steps[:3].tolist() == [981, 961, 941] and steps[-1].item() == 1 and len(steps) == 50
    with pytest.raises(ValueError):
        tiny_backbone.timesteps(0)


def test_cfg_batches_both_branches_and_counts_nfe(tiny_backbone):
    cond = tiny_backbone.encode_prompts(["a small red circle on the left, black background"] * 3)
    x = torch.randn(3, *tiny_backbone.latent_shape, generator=torch.Generator().manual_seed(0))
    tiny_backbone.nfe.reset()
    eps_c = tiny_backbone.eps(x, 500, cond)
    assert tiny_backbone.nfe.forward == 3
    eps_u = tiny_backbone.eps(x, 500, tiny_backbone.null_conditioning(3))
    tiny_backbone.nfe.reset()
    guided = tiny_backbone.eps(x, 500, cond, guidance=4.0)
    assert tiny_backbone.nfe.forward == 6
    assert torch.allclose(guided, eps_u + 4.0 * (eps_c - eps_u), atol=1e-5)


def test_grad_forward_charges_a_backward(tiny_backbone):
    cond = tiny_backbone.encode_prompts(["x"] * 2)
    x = torch.randn(2, *tiny_backbone.latent_shape)
    tiny_backbone.nfe.reset()
    with torch.no_grad():
        tiny_backbone.eps(x, 10, cond)
    tiny_backbone.unet.requires_grad_(True)
    tiny_backbone.eps(x, 10, cond).sum().backward()
    assert (tiny_backbone.nfe.forward, tiny_backbone.nfe.grad_forward, tiny_backbone.nfe.total) == (4, 2, 8)
    assert tiny_backbone.nfe.calls == 2 and tiny_backbone.family == "sd"


def test_views_share_encoders_and_counter(tiny_backbone):
    other = type(tiny_backbone.unet).from_config(tiny_backbone.unet.config)
    view = tiny_backbone.with_unet(other)
    assert view.unet is other and tiny_backbone.unet is not other
    assert view.vae is tiny_backbone.vae and view.nfe is tiny_backbone.nfe
    assert view.fingerprint("vae") == tiny_backbone.fingerprint("vae")
    assert view.fingerprint("unet") != tiny_backbone.fingerprint("unet")


def test_encode_decode_shapes_and_size_check(tiny_backbone):
    images = torch.rand(3, 3, 32, 32)
    latents = tiny_backbone.encode_images(images)
    assert latents.shape == (3, *tiny_backbone.latent_shape) == (3, 4, 8, 8)
    decoded = tiny_backbone.decode(latents)
    assert decoded.shape == images.shape and decoded.min() >= 0 and decoded.max() <= 1
    with pytest.raises(ValueError, match="32, 32"):
        tiny_backbone.encode_images(torch.rand(1, 3, 64, 64))


def test_decode_is_differentiable_only_when_asked(tiny_backbone):
    latents = torch.randn(2, *tiny_backbone.latent_shape, requires_grad=True)
    assert not tiny_backbone.decode(latents).requires_grad  # evaluation builds no graph
    images = tiny_backbone.decode(latents, grad=True)
    torch.testing.assert_close(images, tiny_backbone.decode(latents))
    images.mean().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0


def test_conditioning_dropout_where(tiny_backbone):
    cond = tiny_backbone.encode_prompts(["a", "b", "c"])
    null = tiny_backbone.null_conditioning(3)
    mixed = cond.where(torch.tensor([True, False, True]), null)
    assert torch.equal(mixed.embeds[1], cond.embeds[1]) and torch.equal(mixed.embeds[0], null.embeds[0])
    assert len(Conditioning.cat([cond, null])) == 6


def test_save_and_load_round_trip(tiny_backbone, tmp_path):
    tiny_backbone.save_pretrained(tmp_path / "pipe", include_tokenizer=False)
    assert not (tmp_path / "pipe" / "tokenizer").exists()
    loaded = Backbone.from_pretrained(tmp_path / "pipe")
    assert len(loaded.tokenizer) == CLIP_VOCAB_SIZE and loaded.prediction_type == "v_prediction"
    x = torch.randn(2, *tiny_backbone.latent_shape)
    cond = tiny_backbone.encode_prompts(["a large cyan triangle in the center, gray background"] * 2)
    assert torch.allclose(loaded.encode_prompts(["a large cyan triangle in the center, gray background"] * 2).embeds,
                          cond.embeds)
    assert torch.allclose(loaded.eps(x, 300, cond), tiny_backbone.eps(x, 300, cond))
    assert isinstance(loaded.scheduler, DDIMScheduler)


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(BackboneLoadError, match="local directory"):
        Backbone.from_pretrained(tmp_path)  # empty directory
    with pytest.raises(BackboneLoadError, match="hub id 'no-such-org/no-such-model'.*HF_HUB_OFFLINE"):
        Backbone.from_pretrained("no-such-org/no-such-model")


def test_two_token_tokenizer_is_refused(tiny_arch):
    from transformers import CLIPTokenizer

    unet, vae, text, scheduler = build_components(tiny_arch)
    with pytest.raises(BackboneLoadError, match="2-token"):
        Backbone(unet, vae, text, CLIPTokenizer(), scheduler)


def test_clip_bpe_ids_match_open_clip():
    import open_clip

    ours, theirs = clip_bpe_tokenizer(77), open_clip.get_tokenizer("ViT-B-32")
    for text in ["a small red circle on the left, black background", "héllo wörld 🙂 it's", "Über-résumé 1234!"]:
        reference = [i for i in theirs([text])[0].tolist() if i != 0]
        assert ours(text).input_ids == reference


def test_half_precision_frozen_parts_with_float32_latents(tiny_backbone, tmp_path):
    """dtype=bf16 stores the UNet and text encoder in bf16, the VAE in fp32; latents stay fp32 and the UNet's
    output comes back in the latents' dtype, within bf16 rounding of the fp32 model's."""
    tiny_backbone.save_pretrained(tmp_path / "pipe", include_tokenizer=False)
    full = Backbone.from_pretrained(tmp_path / "pipe")
    half = Backbone.from_pretrained(tmp_path / "pipe", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and half.text_encoder.dtype == torch.bfloat16
    assert next(half.vae.parameters()).dtype == torch.float32 and half.latent_dtype == torch.float32
    images = torch.rand(2, 3, half.image_size, half.image_size, generator=torch.Generator().manual_seed(0))
    latents = half.encode_images(images)
    assert latents.dtype == torch.float32 and torch.equal(latents, full.encode_images(images))  # same fp32 VAE
    x_t = torch.randn(latents.shape, generator=torch.Generator().manual_seed(1))
    cond_half, cond_full = half.encode_prompts(["a red circle", "a blue square"]), full.encode_prompts(["a red circle",
                                                                                                        "a blue square"])
    assert cond_half.embeds.dtype == torch.bfloat16
    out_half, out_full = half.model_output(x_t, 500, cond_half), full.model_output(x_t, 500, cond_full)
    assert out_half.dtype == torch.float32
    rel = ((out_half - out_full).norm() / out_full.norm()).item()
    assert 1e-4 < rel < 5e-2  # bf16 arithmetic (8-bit mantissa), not a silent fp32 forward
