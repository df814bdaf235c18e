"""The reward an online method trains on (`bench run --reward`): one scorer, or a weighted sum of scorers.

`--reward oracle` or `--reward toy-pickscore`, or `--reward pickscore:1,hps:0.5` for r = Σ_k w_k s_k(image, prompt).
Every scorer is built like an evaluation metric (`metrics.build.build_scorers`: the same weights, Configs and
missing-weight errors). Calls are counted in images (`calls`) and seconds, which the run records as their own
unit beside NFE. The reward is differentiable when every scorer in it is (`Scorer.differentiable`); reward
backpropagation (`draft`) needs that and says so, naming the scorer, when it is not.
"""

from __future__ import annotations

import time

import torch

from bench.core.config import OverrideError, split_list
from metrics import SCORERS
from metrics.base import Scorer
from metrics.build import ScorerOptions, build_scorers


def parse_reward(spec: str) -> dict[str, float]:
    """"pickscore:1,hps:0.5" -> {"pickscore": 1.0, "hps": 0.5}; a bare name weighs 1 (OverrideError on a bad item)."""
    weights: dict[str, float] = {}
    for item in split_list(spec):
        name, sep, weight = (part.strip() for part in item.partition(":"))
        if name in weights:
            raise OverrideError(f"--reward names {name!r} twice")
        try:
            weights[name] = float(weight) if sep else 1.0
        except ValueError:
            raise OverrideError(f"--reward {item!r}: expected NAME or NAME:WEIGHT, e.g. pickscore:1,hps:0.5") from None
    if not weights:
        raise OverrideError("--reward: give a scorer, e.g. --reward oracle")
    SCORERS.check(list(weights))
    return weights


class ScorerReward:
    """r(images, prompts) = Σ_k w_k s_k(prompts, images) over the scorers of `spec`."""

    def __init__(self, spec: str, options: ScorerOptions | None = None, *, scorers: dict[str, Scorer] | None = None):
        """`scorers`: already-built scorers by name (e.g. random weights of a real shape for `bench gpu-check`'s
        timings) instead of building those `spec` names from their weights."""
        self.weights = parse_reward(spec)
        self.name = ",".join(f"{name}:{weight:g}" for name, weight in self.weights.items())
        self.scorers = scorers if scorers is not None else build_scorers(list(self.weights), options)
        if set(self.scorers) != set(self.weights):
            raise ValueError(f"reward {self.name}: scorers given for {', '.join(sorted(self.scorers))}")
        self.differentiable = all(scorer.differentiable for scorer in self.scorers.values())
        self.calls, self.seconds = 0, 0.0

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        start = time.perf_counter()
        total = sum(weight * self.scorers[name].score(prompts, images).to(images.device, torch.float32)
                    for name, weight in self.weights.items())
        self.calls += len(prompts)
        self.seconds += time.perf_counter() - start
        return total

    def non_differentiable(self) -> list[str]:
        """The scorers that stop gradients (for the error a reward-gradient method gives)."""
        return [name for name, scorer in self.scorers.items() if not scorer.differentiable]

    def describe(self) -> dict:
        return {"spec": self.name, "weights": self.weights, "differentiable": self.differentiable,
                "scorers": {name: scorer.describe() for name, scorer in self.scorers.items()}}
