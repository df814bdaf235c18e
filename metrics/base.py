"""The scorer contract: `score(prompts, images) -> Tensor[N]`.

Images are float RGB in [0, 1], shape (N, 3, H, W); prompts a list of N strings. A scorer states
whether higher is better and the scale of its numbers; both go into every run record. A scorer whose
weights are missing raises `MissingWeightsError` naming the file and how to get it: it is never
skipped or replaced by a constant.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch

from bench.registry import Registry

SCORERS: Registry[type[Scorer]] = Registry("metric", entry_point_group="diffusion_align_bench.metrics")


class MissingWeightsError(FileNotFoundError):
    """A scorer's weights are not available locally; the message says where to get them."""


class Scorer(ABC):
    name: ClassVar[str]
    higher_is_better: ClassVar[bool]
    scale: ClassVar[str]  # what the numbers mean, e.g. "oracle reward in [0, 6]" or "100 x cosine"

    @abstractmethod
    def score(self, prompts: list[str], images: torch.Tensor) -> torch.Tensor:
        """Per-image scores, shape (N,)."""

    def components(self, prompts: list[str], images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Optional per-image diagnostic terms (name -> (N,)); none by default."""
        return {}

    def describe(self) -> dict:
        return {"name": self.name, "higher_is_better": self.higher_is_better, "scale": self.scale}
