"""Speed benchmarks on the shipped toy pipeline (tox -e bench). Figures are for comparison within
one run on one machine; nothing here asserts a time."""

from __future__ import annotations

import pytest
import torch

from bench.backbone import Backbone
from bench.budget import Budget
from bench.config import TrainConfig
from bench.data import encode_preferences, load_pickapic, preference_pairs
from bench.sampling import generate
from bench.suites import SHIPPED_TOY_DIR
from bench.trainer import Trainer
from methods.alignment import METHODS


@pytest.fixture(scope="module")
def toy():
    backbone = Backbone.from_pretrained(SHIPPED_TOY_DIR / "pipeline")
    data = encode_preferences(backbone, preference_pairs(load_pickapic(SHIPPED_TOY_DIR / "prefs.parquet")))
    return backbone, data


@pytest.mark.benchmark(group="unet")
def test_unet_forward_batch_32(benchmark, toy):
    backbone, _ = toy
    x = torch.randn(32, *backbone.latent_shape)
    cond = backbone.encode_prompts(["a small red circle on the left, black background"] * 32)
    with torch.no_grad():
        benchmark(backbone.eps, x, 500, cond)


@pytest.mark.benchmark(group="training")
@pytest.mark.parametrize("method", ["dpo", "kto", "inpo"])
def test_ten_training_steps(benchmark, toy, method):
    backbone, data = toy
    batch = 32 if method == "kto" else 16
    trainer = Trainer(METHODS.get(method)(), backbone, data, TrainConfig(lr=1e-5, batch_size=batch),
                      Budget.parse("10steps"), progress=False)
    benchmark.pedantic(trainer.fit, rounds=3, warmup_rounds=1)


@pytest.mark.benchmark(group="sampling")
def test_sample_64_images_20_steps_cfg(benchmark, toy):
    backbone, _ = toy
    prompts = ["a large blue square in the center, gray background"] * 64
    benchmark.pedantic(generate, args=(backbone, prompts, list(range(64))), kwargs={"steps": 20, "guidance": 3.0},
                       rounds=3, warmup_rounds=1)
