"""`oracle`: the toy world's ground-truth reward as a scorer.

R = bgok * colour * shape * size * pos * (5 + centring) in [0, 6], higher is better (oracle version 2);
the terms and their definitions are in `bench.toy.oracle` (this is the one scorer that reads the toy
world, whose definition *is* its ground truth). Ground-truth renders of the evaluation prompts score
about 5.5. Prompts must be toy-world captions. The oracle's version is part of the scorer's
description, so base evaluations and caches scored by another version are not reused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bench.toy.oracle import ORACLE_VERSION, TERMS, oracle_terms
from bench.toy.world import example_caption, is_caption
from metrics.base import Scorer


@dataclass(frozen=True)
class OracleConfig:
    """The oracle has no settings: it is the toy world's definition of a good image."""


class OracleScorer(Scorer, name="oracle", config=OracleConfig, higher_is_better=True, differentiable=True,
                   scale=f"toy-world oracle reward (version {ORACLE_VERSION}) in [0, 6]"):
    @classmethod
    def check_prompts(cls, prompts: Sequence[str]) -> None:
        """The oracle knows the toy world's captions only (`bench.toy.world.parse_caption`)."""
        bad = [p for p in prompts if not is_caption(p)]
        if bad:
            raise ValueError(f"the oracle scores toy-world captions only; {len(bad)} of the {len(prompts)} prompts are "
                             f"not, e.g. {bad[0]!r} (captions such as {example_caption()!r})")

    def score(self, prompts: list[str], images: torch.Tensor) -> torch.Tensor:
        """R per image (N,): detached float32 when scoring; float64 with gradients to `images` when they need them
        (reward backpropagation)."""
        return oracle_terms(prompts, images, differentiable=images.requires_grad and torch.is_grad_enabled())["reward"]

    def components(self, prompts: list[str], images: torch.Tensor) -> dict[str, torch.Tensor]:
        terms = oracle_terms(prompts, images)
        return {name: terms[name] for name in TERMS if name != "reward"}

    def describe(self) -> dict:
        return {**super().describe(), "version": ORACLE_VERSION}
