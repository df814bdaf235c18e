"""Where the toy world's build lives: the shipped one under `bench/toy/assets/`, or `$BENCH_TOY_DIR`; and where
`bench toy build` writes a new one. The toy flow world's (`bench toy build --family flow`, suite `toy-flow`) lives
under `bench/toy/assets/flow/`, or `$BENCH_TOY_FLOW_DIR`; it has no scorers of its own (the toy's proxy scorers score
images of the same world)."""

from __future__ import annotations

import os
from pathlib import Path

from bench.core.cache import cache_dir

SHIPPED_TOY_DIR = Path(__file__).resolve().parent / "assets"
TOY_DIR_ENV = "BENCH_TOY_DIR"
SHIPPED_TOY_FLOW_DIR = SHIPPED_TOY_DIR / "flow"
TOY_FLOW_DIR_ENV = "BENCH_TOY_FLOW_DIR"


def toy_dir() -> Path:
    """The toy build in use: `$BENCH_TOY_DIR` (e.g. from `bench toy build --out DIR`), else the shipped one."""
    return Path(os.environ.get(TOY_DIR_ENV) or SHIPPED_TOY_DIR)


def toy_flow_dir() -> Path:
    """The toy flow build in use: `$BENCH_TOY_FLOW_DIR` (e.g. from `bench toy build --family flow --out DIR`), else the
    shipped one."""
    return Path(os.environ.get(TOY_FLOW_DIR_ENV) or SHIPPED_TOY_FLOW_DIR)


def toy_dirs() -> list[Path]:
    """Where a toy file is looked for, in order: `$BENCH_TOY_DIR` when set, then the shipped build, then the toy flow
    build in use (for its cached base evaluations under `base/`; it ships no `scorers/`)."""
    dirs = ([Path(os.environ[TOY_DIR_ENV])] if os.environ.get(TOY_DIR_ENV) else []) + [SHIPPED_TOY_DIR]
    return dirs + [toy_flow_dir()]


def build_dir() -> Path:
    """Where `bench toy build` writes when given no `--out`: the cache's `toy/` directory (use it with
    `BENCH_TOY_DIR`); `bench toy build-scorers` writes into its `scorers/`."""
    return cache_dir() / "toy"
