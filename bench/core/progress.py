"""Progress bars: tqdm, shown on a terminal and silent in logs and pipes (or when disabled)."""

from __future__ import annotations

from tqdm.auto import tqdm


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs) -> tqdm:
    return tqdm(iterable, disable=None if enabled else True, **kwargs)
