"""Speed benchmarks on the shipped toy pipeline (tox -e bench). Figures are for comparison within
one run on one machine; nothing here asserts a time."""

from __future__ import annotations

import pytest
import torch

from bench.core.backbone import Backbone
from bench.core.budget import Budget
from bench.core.config import TrainConfig
from bench.harness.data import encode_preferences, load_pickapic, preference_pairs
from bench.harness.sampling import generate
from bench.harness.trainer import Trainer
from bench.toy.paths import SHIPPED_TOY_DIR
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


@pytest.mark.benchmark(group="inversion")
@pytest.mark.parametrize("name", ["ddim", "edict", "bdia", "belm", "ddpm-ef", "npi", "renoise", "null-text"])
def test_inversion_round_trip_8_images_50_steps(benchmark, toy, name):
    from methods.inversion import SAMPLERS
    from methods.inversion.base import sampling_levels

    backbone, _ = toy
    prompts = ["a large blue square in the center, gray background"] * 8
    cond = backbone.encode_prompts(prompts)
    x0 = torch.randn(8, *backbone.latent_shape, generator=torch.Generator().manual_seed(0))
    sampler, levels = SAMPLERS.get(name)(), sampling_levels(backbone, 50)

    def round_trip():
        state = sampler.invert(backbone, x0, cond, levels, rng=torch.Generator().manual_seed(0))
        return sampler.reconstruct(backbone, state, cond)

    benchmark.pedantic(round_trip, rounds=3, warmup_rounds=1)


@pytest.mark.benchmark(group="grid")
@pytest.mark.parametrize("jobs", [1, 2])
def test_three_method_run_in_jobs(benchmark, tmp_path, jobs):
    """`bench run --methods dpo,inpo,kto` on the toy suite at 1e4 NFE (a quarter of the default budget) with 2 threads
    in all, in one process or in two workers of one thread: compare the two medians within one run (the ratio is
    the speed-up of --jobs 2 on this machine)."""
    from bench.harness.run import execute, plan_run
    from bench.harness.suites import get_suite

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    runs = iter(range(100))

    def one_run():
        plan = plan_run(get_suite("toy"), ["dpo", "inpo", "kto"], budgets=[Budget.parse("1e4nfe")],
                        run_dir=tmp_path / f"run-{next(runs)}", progress=False)
        return execute(plan, jobs=jobs)

    try:
        benchmark.pedantic(one_run, rounds=2, warmup_rounds=0)
    finally:
        torch.set_num_threads(threads)
