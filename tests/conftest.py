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
    from bench.config import EvalConfig
    from bench.toy.build import ToyBuildConfig, build_toy
    from bench.toy.preferences import PreferenceConfig
    from bench.toy.pretrain import PretrainConfig

    out = tmp_path_factory.mktemp("tiny-toy")
    cfg = ToyBuildConfig(
        arch=tiny_arch,
        pretrain=PretrainConfig(renders_per_combo=2, vae_steps=20, denoiser_steps=20, batch_size=16),
        preferences=PreferenceConfig(samples_per_prompt=3, groups_per_prompt=1, steps=3),
        eval=EvalConfig(images_per_prompt=1, steps=3),
    )
    build_toy(out, cfg, progress=False)
    return out
