"""Shared fixtures: offline hub, a private cache, flushed denormals, tiny random SD-shaped models."""

from __future__ import annotations

import os

# Before transformers/diffusers import: never touch the hub (transformers 5 retries for minutes, and an
# offline CLIPTokenizer.from_pretrained silently returns a 2-token tokenizer).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest
import torch

torch.set_flush_denormal(True)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Keep tokenizer files, encoded latents and cached base runs out of the user's cache."""
    path = tmp_path_factory.mktemp("bench-cache")
    old = os.environ.get("BENCH_CACHE_DIR")
    os.environ["BENCH_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("BENCH_CACHE_DIR", None)
    else:
        os.environ["BENCH_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def tiny_arch():
    from bench.toy.pipeline import ToyArchitecture

    return ToyArchitecture(vae_channels=(16, 16, 16), unet_channels=(16, 32), text_hidden=16)


@pytest.fixture()
def tiny_backbone(tiny_arch):
    """A randomly initialised SD-shaped backbone (v-prediction, as the toy)."""
    from bench.toy.pipeline import random_backbone

    return random_backbone(tiny_arch, seed=0)


@pytest.fixture(scope="session")
def tiny_toy_dir(tmp_path_factory, tiny_arch):
    """A complete toy build (pipeline, preference parquet, build.json) at a tiny, seconds-long scale."""
    from bench.core.config import EvalConfig
    from bench.harness.toy_build.build import ToyBuildConfig, build_toy
    from bench.harness.toy_build.preferences import PreferenceConfig
    from bench.harness.toy_build.pretrain import PretrainConfig

    out = tmp_path_factory.mktemp("tiny-toy")
    cfg = ToyBuildConfig(
        arch=tiny_arch,
        pretrain=PretrainConfig(renders_per_combo=2, vae_steps=20, denoiser_steps=20, batch_size=16),
        preferences=PreferenceConfig(samples_per_prompt=3, groups_per_prompt=1, steps=3),
        eval=EvalConfig(images_per_prompt=1, steps=3),
    )
    build_toy(out, cfg, progress=False)
    return out


@pytest.fixture()
def tiny_sdxl_backbone(tiny_arch):
    """A randomly initialised SDXL-shaped backbone: two text encoders (the second with a projection),
    pooled text embeddings and time-id micro-conditioning, as diffusers' SDXL pipeline tests build it."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from bench.core.backbone import Backbone
    from bench.core.clip_bpe import CLIP_VOCAB_SIZE, clip_bpe_tokenizer
    from bench.toy.pipeline import build_components, sd_ddim_scheduler

    torch.manual_seed(0)
    _, vae, _, _ = build_components(tiny_arch, seed=0)
    text = dict(vocab_size=CLIP_VOCAB_SIZE, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=16, projection_dim=16)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(16, 32), layers_per_block=1,
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 16, cross_attention_dim=16 + 16,
        norm_num_groups=8,
    )
    modules = (unet, vae, CLIPTextModel(CLIPTextConfig(**text)), CLIPTextModelWithProjection(CLIPTextConfig(**text)))
    for module in modules:
        module.requires_grad_(False).eval()
    tokenizer = clip_bpe_tokenizer(16)
    return Backbone(modules[0], modules[1], modules[2], tokenizer, sd_ddim_scheduler("epsilon"),
                    text_encoder_2=modules[3], tokenizer_2=tokenizer, source="random-sdxl")


def build_tiny_t5():
    """A 1-layer T5 encoder (d_model 32, 2 heads of 8) over a 50-piece unigram vocabulary of the toy captions' words, and
    its tokenizer, as SD3's and FLUX's pipeline tests build theirs (random weights from torch's global generator)."""
    from transformers import T5Config, T5EncoderModel, T5Tokenizer

    pieces = ["▁" + w for w in "a an the small large red green blue cyan circle square triangle on left right center "
              "of black gray white background".split()] + ["▁", *"abcdefghijklmnopqrstuvwxyz,."]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + [(p, -float(len(p))) for p in pieces]
    tokenizer = T5Tokenizer(vocab=vocab, extra_ids=0)
    encoder = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=32, num_layers=1, num_heads=2))
    return encoder, tokenizer


def build_tiny_sd3_backbone(t5: bool = True, seed: int = 0):
    """A randomly initialised SD3-shaped backbone: an SD3 transformer (1 layer, 2 heads of 8, patch 2) on 4x8x8
    latents, a VAE with SD3's shift and scale, CLIP-L/G-shaped encoders with projections (16 + 16 = the pooled 32),
    optionally a 1-layer T5 over a 50-piece unigram vocabulary, and SD3.5's flow schedule (shift 3), as diffusers'
    SD3 pipeline tests build it."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from bench.core.backbone import Backbone
    from bench.core.clip_bpe import CLIP_VOCAB_SIZE, clip_bpe_tokenizer

    torch.manual_seed(seed)
    transformer = SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16, pooled_projection_dim=32,
        pos_embed_max_size=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=16, sample_size=32,
        mid_block_add_attention=False, scaling_factor=1.5305, shift_factor=0.0609,  # SD3's VAE factors
        use_quant_conv=False, use_post_quant_conv=False,
    )
    text = dict(vocab_size=CLIP_VOCAB_SIZE, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                num_attention_heads=2, max_position_embeddings=16, projection_dim=16)
    clip_l, clip_g = CLIPTextModelWithProjection(CLIPTextConfig(**text)), CLIPTextModelWithProjection(CLIPTextConfig(**text))
    modules = [transformer, vae, clip_l, clip_g]
    t5_encoder = t5_tokenizer = None
    if t5:
        t5_encoder, t5_tokenizer = build_tiny_t5()
        modules.append(t5_encoder)
    for module in modules:
        module.requires_grad_(False).eval()
    tokenizer = clip_bpe_tokenizer(16)
    return Backbone(transformer, vae, clip_l, tokenizer, FlowMatchEulerDiscreteScheduler(shift=3.0),  # SD3.5's shift
                    text_encoder_2=clip_g, tokenizer_2=tokenizer, text_encoder_3=t5_encoder, tokenizer_3=t5_tokenizer,
                    source="random-sd3")


@pytest.fixture()
def tiny_sd3_backbone():
    """A randomly initialised SD3-shaped backbone with a tiny T5 (`build_tiny_sd3_backbone`)."""
    return build_tiny_sd3_backbone(t5=True)


@pytest.fixture()
def tiny_sd3_backbone_no_t5():
    """The tiny SD3-shaped backbone without T5 (zeros stand in for its sequence, as in diffusers)."""
    return build_tiny_sd3_backbone(t5=False)


def build_tiny_flux_backbone(seed: int = 0, guidance_embeds: bool = True):
    """A randomly initialised FLUX-shaped backbone, as diffusers' FLUX pipeline tests build it: a FLUX transformer
    (1 double-stream + 1 single-stream block, 2 heads of 16, rotary axes 4 + 6 + 6, guidance-distilled) on 16x8x8
    latents packed into 16 tokens of 64 channels, a 16-channel VAE with FLUX's scale and shift, a CLIP-L-shaped
    `CLIPTextModel` (its pooled 16 = pooled_projection_dim), the tiny T5 (512 tokens, FluxPipeline's default for dev) and
    FLUX.1-dev's scheduler config (dynamic shifting)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from bench.core.backbone import Backbone
    from bench.core.clip_bpe import CLIP_VOCAB_SIZE, clip_bpe_tokenizer
    from bench.core.real_configs import FLUX_DEV

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=16, guidance_embeds=guidance_embeds, axes_dims_rope=(4, 6, 6),
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 16, 16), layers_per_block=1, latent_channels=16, norm_num_groups=16, sample_size=32,
        mid_block_add_attention=False, scaling_factor=0.3611, shift_factor=0.1159,  # FLUX's VAE factors
        use_quant_conv=False, use_post_quant_conv=False,
    )
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=CLIP_VOCAB_SIZE, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16))
    t5_encoder, t5_tokenizer = build_tiny_t5()
    for module in (transformer, vae, clip, t5_encoder):
        module.requires_grad_(False).eval()
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(FLUX_DEV["scheduler"])
    return Backbone(transformer, vae, clip, clip_bpe_tokenizer(16), scheduler, text_encoder_3=t5_encoder,
                    tokenizer_3=t5_tokenizer, source="random-flux")


@pytest.fixture()
def tiny_flux_backbone():
    """A randomly initialised FLUX-shaped backbone (`build_tiny_flux_backbone`)."""
    return build_tiny_flux_backbone()


def shipped_through_vae(build_dir, build: dict) -> dict:
    """A shipped toy build's report entry `ground_truth_through_vae`, computed anew: the shipped builds predate it."""
    from bench.core.backbone import Backbone
    from bench.core.config import EvalConfig
    from bench.harness.toy_build.build import ground_truth_report
    from bench.toy.world import split_combos

    return ground_truth_report(split_combos().captions("test"), EvalConfig(**build["config"]["eval"]),
                               build["config"]["seed"] + 1, Backbone.from_pretrained(build_dir / "pipeline")
                               )["ground_truth_through_vae"]
