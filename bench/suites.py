"""Suites: what a benchmark run trains on, evaluates on, and under which budget and recipe.

A suite names the pipeline (local directory or hub id), the preference data (Pick-a-Pic v2 schema),
the evaluation prompts, the metrics, the default budget and training recipe, and per-method
overrides of the methods' paper defaults (a recipe tuned for the suite's scale). Every method of a
suite trains under the same budget.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from bench.budget import Budget
from bench.config import EvalConfig, TrainConfig
from bench.registry import Registry
from bench.toy.world import split_combos

SUITES: Registry = Registry("suite", entry_point_group="diffusion_align_bench.suites")

SHIPPED_TOY_DIR = Path(__file__).resolve().parent / "toy" / "assets"


def toy_dir() -> Path:
    """The toy build in use: `$BENCH_TOY_DIR` (e.g. from `bench toy build --out DIR`), else the shipped one."""
    return Path(os.environ.get("BENCH_TOY_DIR") or SHIPPED_TOY_DIR)


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    pipeline: str
    preference_data: str
    eval_prompts: tuple[str, ...]
    metrics: tuple[str, ...]
    budget: Budget
    train: TrainConfig
    eval: EvalConfig
    preference_split: str = "train"
    max_pairs: int | None = None
    method_args: dict[str, dict] = field(default_factory=dict)  # method -> its config overrides
    train_args: dict[str, dict] = field(default_factory=dict)  # method -> TrainConfig overrides
    default_methods: tuple[str, ...] = ("dpo", "inpo", "kto")

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]


@SUITES.register("toy")
def toy_suite() -> Suite:
    """The CPU-scale default: the toy world's pipeline, its preference pairs and the oracle reward.

    Held-out evaluation prompts: 64 captions never used for preference data, 4 seeds each (256 images).
    Recipe tuned on the toy world (see docs/architecture.md): the papers' β (2000-5000) with their
    lr are far too strong for ~300 steps on a 4 M-parameter UNet.
    """
    root = toy_dir()
    _, held_out = split_combos()
    return Suite(
        name="toy",
        description="toy world of coloured shapes, tiny SD-shaped pipeline, oracle reward (CPU, minutes)",
        pipeline=str(root / "pipeline"),
        preference_data=str(root / "prefs.parquet"),
        eval_prompts=tuple(c.caption for c in held_out),
        metrics=("oracle",),
        budget=Budget.parse("4e4nfe"),
        train=TrainConfig(lr=3e-5, batch_size=16, weight_decay=0.0, prompt_dropout=0.1, checkpoint_every=50),
        eval=EvalConfig(images_per_prompt=4, steps=20, guidance=3.0, seed=0, batch_size=128),
        method_args={"dpo": {"beta": 500.0}, "inpo": {"beta": 500.0}, "kto": {"beta": 500.0}},
        train_args={"kto": {"batch_size": 32}, "sft": {"batch_size": 32}},
    )


def get_suite(name: str) -> Suite:
    return SUITES.get(name)()
