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
