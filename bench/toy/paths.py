"""Where the toy world's build lives: the shipped one under `bench/toy/assets/`, or `$BENCH_TOY_DIR`; and where
`bench toy build` writes a new one."""

from __future__ import annotations

import os
from pathlib import Path

from bench.core.cache import cache_dir

SHIPPED_TOY_DIR = Path(__file__).resolve().parent / "assets"
TOY_DIR_ENV = "BENCH_TOY_DIR"


def toy_dir() -> Path:
    """The toy build in use: `$BENCH_TOY_DIR` (e.g. from `bench toy build --out DIR`), else the shipped one."""
    return Path(os.environ.get(TOY_DIR_ENV) or SHIPPED_TOY_DIR)


def toy_dirs() -> list[Path]:
    """Where a toy file is looked for, in order: `$BENCH_TOY_DIR` when set, then the shipped build."""
    return ([Path(os.environ[TOY_DIR_ENV])] if os.environ.get(TOY_DIR_ENV) else []) + [SHIPPED_TOY_DIR]


def build_dir() -> Path:
    """Where `bench toy build` writes when given no `--out`: the cache's `toy/` directory (use it with
    `BENCH_TOY_DIR`); `bench toy build-scorers` writes into its `scorers/`."""
    return cache_dir() / "toy"
