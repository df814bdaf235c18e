"""Where derived, rebuildable files live (tokenizer files, encoded latents, text embeddings)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """`$BENCH_CACHE_DIR`, else `$XDG_CACHE_HOME/diffusion-align-bench`, else `~/.cache/diffusion-align-bench`."""
    explicit = os.environ.get("BENCH_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "diffusion-align-bench"
