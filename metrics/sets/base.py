"""The set-metric contract: a few numbers about a SET of images (a model's samples for the evaluation prompts),
against a reference set or within each prompt's images, computed from image features.

A `Scorer` (`metrics.base`) gives one number per image; a set metric gives a few numbers per image set (a Fréchet
distance; precision, recall, density and coverage; the Vendi score), so the two kinds live in two registries,
`SCORERS` and `SET_METRICS`: code that iterates one never meets the other. A name is unique across both, so
`bench eval --metrics` takes either kind.

- Features come from a `FeatureBackbone` (`metrics.sets.features`): `features(images) -> (N, D)` on float RGB in
  [0, 1], (N, 3, H, W). A set metric names its backbone's class (`features=`); a command builds each backbone once and
  extracts its features once per image set, and every metric on that backbone reads the same (N, D) rows
  (`metrics.sets.build`).
- `prepare(features (N, D), reference (M, D) or None, prompts (N,) or None) -> state`: whatever does not depend on
  how often each image counts (distance matrices, per-prompt values), computed once; `measure(state, weights (N,))
  -> {value: float}`: the metric's values, say {"fd": 3.1} or {"precision": .., "recall": .., "density": ..,
  "coverage": ..}, with image i counted weights[i] >= 0 times. `compute(features, reference, prompts)` is `measure`
  with every weight 1: the metric of the set.
- `evaluate(features, reference, prompts)`: the values with 95% CIs over prompts, the reference set held fixed (it is
  the yardstick, not a sample under study); with no prompts, or a single one, over images. Each replicate measures the
  set again with other weights; the metric's `resampling` says which:
  - "bootstrap" (a mean over prompts: Vendi): a replicate draws the P prompts with replacement, each image weighted by
    how often its prompt was drawn; the 95% percentile interval of `config.bootstrap` replicates. For a mean over
    prompts this is the cluster bootstrap `bench.core.stats.bootstrap_mean` gives every per-image scorer.
  - "jackknife" (a statistic of the set as a whole: FD, PRDC): G = min(P, `config.jackknife_groups`) replicates, each
    leaving out one group of prompts (prompt p, numbered in order of first appearance, is in group p mod G); the
    interval is value ± 1.96 SE, SE² = (G − 1)/G · Σ_g (θ_g − θ̄)² (the delete-a-group jackknife; Efron and Tibshirani
    1993, ch. 11), clipped to the value's range. Not the bootstrap: a bootstrap replicate holds only ~63% distinct
    prompts, and these statistics move with the number of distinct images (FD's small-sample bias grows as it falls:
    256 toy renders against 64 others: FD 0.88, bootstrap interval [2.7, 6.7], excluding it); a jackknife replicate
    keeps ~(1 − 1/G) of them, so its spread is the sampling variation and not that bias.
  The point value is the metric of the whole set; the interval says how it varies with the prompt sample and does
  not remove a bias: FD is biased upwards at small N (Chong and Forsyth 2020), so compare FDs at equal set sizes.

A set metric's class declares, as class keywords, `name`, `config` (a frozen dataclass with `bootstrap` or
`jackknife_groups` among its fields), `features` (its `FeatureBackbone` class), `needs_reference`, `needs_prompts`,
`resampling` and `values` (value name -> `Value`: direction, scale, range); a family base (`FrechetDistance`)
declares all but name and features, and each backbone's metric is one short subclass:

    class FrechetToyClip(FrechetDistance, name="fd-toyclip", features=ToyClipImageFeatures):
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import torch

from bench.core.registry import Registry
from bench.core.stats import cluster_ids
from metrics.base import SCORERS

__all__ = ["SET_METRICS", "SetMetric", "SetMetricConfig", "Value"]
SET_METRICS: Registry[type[SetMetric]] = Registry("set metric", entry_point_group="diffusion_align_bench.set_metrics")

LEVEL = 0.95  # every interval in the project is a 95% interval
RESAMPLING = ("bootstrap", "jackknife")


class Value(NamedTuple):
    """One number a set metric reports: its direction, what it means, and the range its interval is clipped to."""

    higher_is_better: bool
    scale: str
    low: float = 0.0
    high: float = math.inf


class SetMetricConfig:
    """Base of a set metric's Config (a frozen dataclass): the subclass declares `bootstrap` (resamples) or
    `jackknife_groups`, as its `resampling` needs, with its own default and help text; this checks it. A subclass with
    checks of its own calls `super().__post_init__()`."""

    def __post_init__(self):
        if getattr(self, "bootstrap", 1) < 1:
            raise ValueError(f"bootstrap must be >= 1, got {self.bootstrap}")
        if getattr(self, "jackknife_groups", 2) < 2:
            raise ValueError(f"jackknife_groups must be >= 2, got {self.jackknife_groups}")


DECLARED = ("name", "Config", "Features", "needs_reference", "needs_prompts", "resampling", "values")


def _check_declaration(cls: type) -> None:
    if missing := [attribute for attribute in DECLARED if not hasattr(cls, attribute)]:
        raise TypeError(f"set metric {cls.__qualname__} declares no {', '.join(missing)}")
    if cls.resampling not in RESAMPLING:
        raise ValueError(f"{cls.__qualname__}.resampling must be one of {RESAMPLING}, got {cls.resampling!r}")
    resamples = {"bootstrap": "bootstrap", "jackknife": "jackknife_groups"}[cls.resampling]
    if resamples not in {f.name for f in dataclasses.fields(cls.Config)}:
        raise TypeError(f"{cls.__qualname__}: resampling {cls.resampling!r} reads {cls.Config.__name__}.{resamples}")
    if cls.name in SCORERS:
        raise ValueError(f"set metric {cls.name!r}: the name is taken by a per-image scorer (`--metrics` takes both)")


class SetMetric(ABC):
    """A set metric; see the module docstring. Construct as `cls(config)` (`cls()`: the defaults) or with fields
    named (`PRDCToyClip(nearest_k=3)`); it holds no model: its features come from its backbone (`Features`)."""

    name: ClassVar[str]
    Config: ClassVar[type]
    Features: ClassVar[type]  # a metrics.sets.features.FeatureBackbone subclass
    needs_reference: ClassVar[bool]
    needs_prompts: ClassVar[bool]
    resampling: ClassVar[str]  # "bootstrap" or "jackknife" (module docstring)
    values: ClassVar[dict[str, Value]]

    def __init_subclass__(cls, **keywords):
        super().__init_subclass__()
        SET_METRICS.declare(cls, keywords, DECLARED, check=_check_declaration)

    def __init__(self, config=None, **fields):
        config = config if config is not None else self.Config()
        if not isinstance(config, self.Config):
            raise TypeError(f"{self.name} takes its Config ({self.Config.__name__}), got {config!r}")
        self.config = dataclasses.replace(config, **fields) if fields else config

    def check_sets(self, n: int, reference_n: int | None, prompts: Sequence | None) -> None:
        """ValueError, before any image is made or read, if `n` images (with `prompts`, or None) and a reference set
        of `reference_n` images (None: none given) cannot give this metric's values."""
        if self.needs_reference and reference_n is None:
            raise ValueError(f"{self.name} compares with a reference set: give --reference DIR or "
                             "--reference-toy-renders N")
        if self.needs_prompts and prompts is None:
            raise ValueError(f"{self.name} is computed within each prompt's images: give --prompts FILE")

    @abstractmethod
    def prepare(self, features: torch.Tensor, reference: torch.Tensor | None = None,
                prompts: Sequence | None = None) -> object:
        """What `measure` needs of `features` (N, D), `reference` (M, D) and `prompts` (N,) that does not depend on
        the images' weights: computed once per `evaluate`."""

    @abstractmethod
    def measure(self, state, weights: torch.Tensor) -> dict[str, float]:
        """The metric's values (`values`' names) with image i counted `weights[i]` >= 0 times ((N,) integers; a
        replicate's value that its draw cannot give is NaN)."""

    def compute(self, features: torch.Tensor, reference: torch.Tensor | None = None,
                prompts: Sequence | None = None) -> dict[str, float]:
        """The metric's values of the set `features` (N, D) against `reference` (M, D); `prompts` (N,) each image's
        prompt."""
        return self.measure(self.prepare(features, reference, prompts), torch.ones(len(features), dtype=torch.long))

    def evaluate(self, features: torch.Tensor, reference: torch.Tensor | None = None, prompts: Sequence | None = None,
                 *, seed: int = 0) -> dict:
        """{"values": {value: {"value", "ci_low", "ci_high"}}, "n", "reference_n", "clusters", "interval",
        "replicates"}: the values of the whole set, and 95% intervals over prompts by the metric's `resampling`
        (module docstring; the bootstrap draws with `seed`). A replicate's NaN (a value its draw cannot give) is
        left out of the interval."""
        n = len(features)
        ids = cluster_ids(prompts, n)  # (N,)
        if int(ids.max()) == 0:  # one prompt: resample its images, as bench.core.stats does
            ids = torch.arange(n)
        clusters = int(ids.max()) + 1
        state = self.prepare(features, reference, prompts)
        point = self.measure(state, torch.ones(n, dtype=torch.long))
        if self.resampling == "bootstrap":
            gen = torch.Generator().manual_seed(seed)
            drawn = (torch.randint(0, clusters, (clusters,), generator=gen) for _ in range(self.config.bootstrap))
            replicates = [self.measure(state, torch.bincount(d, minlength=clusters)[ids]) for d in drawn]  # (N,) weights
            intervals, interval = self.percentile_intervals(replicates), "cluster bootstrap over prompts, percentile"
        else:
            groups = min(clusters, self.config.jackknife_groups)
            replicates = [self.measure(state, (ids % groups != g).long()) for g in range(groups)]  # group g left out
            intervals, interval = self.jackknife_intervals(point, replicates), "grouped jackknife over prompts, ±1.96 SE"
        return {"values": {name: {"value": point[name], **intervals[name]} for name in self.values}, "n": n,
                "reference_n": None if reference is None else len(reference), "clusters": clusters,
                "interval": interval, "replicates": len(replicates)}

    def percentile_intervals(self, replicates: list[dict[str, float]]) -> dict[str, dict[str, float]]:
        """Each value's 95% percentile interval over bootstrap replicates."""
        tail = torch.tensor([(1 - LEVEL) / 2, (1 + LEVEL) / 2], dtype=torch.float64)
        out = {}
        for name in self.values:
            low, high = torch.nanquantile(torch.tensor([r[name] for r in replicates], dtype=torch.float64), tail).tolist()
            out[name] = {"ci_low": low, "ci_high": high}
        return out

    def jackknife_intervals(self, point: dict[str, float], replicates: list[dict[str, float]]) -> dict[str, dict[str, float]]:
        """Each value ± z SE, SE² = (G − 1)/G Σ_g (θ_g − θ̄)² over the G leave-a-group-out replicates, clipped to the
        value's range."""
        z = float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor((1 + LEVEL) / 2)))  # 1.96
        out = {}
        for name, value in self.values.items():
            draws = torch.tensor([r[name] for r in replicates], dtype=torch.float64)
            draws = draws[~draws.isnan()]
            groups = len(draws)
            se = math.sqrt((groups - 1) / groups * float(((draws - draws.mean()) ** 2).sum())) if groups > 1 else math.nan
            out[name] = {"ci_low": max(point[name] - z * se, value.low), "ci_high": min(point[name] + z * se, value.high),
                         "se": se}
        return out

    def describe(self) -> dict:
        """Name, each value's direction and scale, and the Config (the features' description is the backbone's)."""
        return {"name": self.name, "features": self.Features.key,
                "values": {name: {"higher_is_better": v.higher_is_better, "scale": v.scale}
                           for name, v in self.values.items()},
                "config": dataclasses.asdict(self.config)}
