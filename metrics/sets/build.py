"""Set metrics built by name with the user's options; their features extracted once per backbone and image set; their
values with CIs. `bench eval` calls these; a run's evaluation would call the same.

A metric's settings are its Config (`--metric-arg NAME.FIELD=VALUE`, as a scorer's); a backbone's weights are given
through any metric on it (`--weights fd-dinov2=DIR`), and metrics on one backbone share one model and one feature
pass (`build_set_metrics`, `collect_features`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.core.config import parse_plugin_configs
from metrics.build import ScorerOptions
from metrics.sets.base import SET_METRICS, SetMetric
from metrics.sets.features import FeatureBackbone


@dataclass(frozen=True)
class SetMetricOptions:
    """How a command builds its set metrics: each one's Config, and where its backbone's weights are on this machine
    (run configurations record the Configs; the weights' SHA256s are in each backbone's description)."""

    weights: dict[str, Path] = field(default_factory=dict)  # set metric name -> its backbone's weights
    configs: dict[str, object] = field(default_factory=dict)  # set metric name -> its Config (absent: the defaults)

    @classmethod
    def from_args(cls, names: list[str], *, where: str, weights: Iterable[str] = (),
                  metric_args: Iterable[str] = ()) -> SetMetricOptions:
        """The options of the set metrics `names` from `--weights NAME=PATH` and `--metric-arg NAME.FIELD=VALUE` items
        (OverrideError or ValueError, naming the item, on a bad one)."""
        SET_METRICS.check(names)
        paths = ScorerOptions.from_args([], where=where, weights=weights).weights  # NAME=PATH items read as the scorers'
        for name in paths:
            if name not in names:
                raise ValueError(f"--weights {name}=...: {name!r} is not in {where} ({', '.join(names)})")
        return cls(paths, parse_plugin_configs(metric_args, "--metric-arg", SET_METRICS, names, where=where))

    def config(self, name: str):
        """The Config set metric `name` is built with."""
        return self.configs[name] if name in self.configs else SET_METRICS.get(name).Config()

    def recorded_configs(self, names: Sequence[str]) -> dict:
        """Every field of each set metric's Config, for records."""
        return {name: dataclasses.asdict(self.config(name)) for name in names}


def build_set_metrics(names: Sequence[str], options: SetMetricOptions | None = None
                      ) -> tuple[dict[str, SetMetric], dict[str, FeatureBackbone]]:
    """(name -> set metric, backbone key -> feature backbone): every metric in `names` with its Config, and each
    backbone they use built once, its weights found and loaded (MissingWeightsError naming `--weights METRIC=DIR` of
    the first metric on it, or of the one given weights)."""
    options = options or SetMetricOptions()
    SET_METRICS.check(list(names))
    metrics = {name: SET_METRICS.get(name)(options.config(name)) for name in names}
    backbones: dict[str, FeatureBackbone] = {}
    for name, metric in metrics.items():
        key = metric.Features.key
        if key in backbones:
            continue
        sharing = [other for other in names if metrics[other].Features.key == key]
        given = [other for other in sharing if other in options.weights]
        if len({options.weights[other] for other in given}) > 1:
            raise ValueError(f"--weights: {', '.join(given)} share the {key} features; give one path")
        asked = given[0] if given else name
        backbones[key] = metric.Features(metric=asked, weights=options.weights.get(asked))
    return metrics, backbones


def collect_features(backbones: dict[str, FeatureBackbone], batches: Iterable[tuple[Sequence[int], list[str], torch.Tensor]],
                     n: int, into: dict[str, torch.Tensor]) -> Iterator[tuple[Sequence[int], list[str], torch.Tensor]]:
    """`batches` of (image indices, prompts, images (B, 3, H, W)), in any order, passed through unchanged, while each
    backbone's features of every batch go into `into` (backbone key -> (n, D), rows in image order; a row no batch
    covers stays NaN): one read of the images serves the per-image scorers and every backbone."""
    for index, prompts, images in batches:
        for key, backbone in backbones.items():
            rows = backbone.features(images)  # (B, D)
            if key not in into:
                into[key] = torch.full((n, rows.shape[1]), math.nan)
            into[key][list(index)] = rows
        yield index, prompts, images


def evaluate_set_metrics(metrics: dict[str, SetMetric], features: dict[str, torch.Tensor],
                         reference: dict[str, torch.Tensor], prompts: Sequence | None, *, seed: int = 0) -> dict[str, dict]:
    """Each metric's `evaluate` on its backbone's features (N, D) of the set, against the reference set's (M, D) where
    it needs one; `prompts` (N,) each image's prompt (the bootstrap's cluster), or None."""
    return {name: metric.evaluate(features[metric.Features.key],
                                  reference[metric.Features.key] if metric.needs_reference else None, prompts, seed=seed)
            for name, metric in metrics.items()}


def describe_set_metrics(metrics: dict[str, SetMetric], backbones: dict[str, FeatureBackbone]) -> dict[str, dict]:
    """Each metric's description with its backbone's (weights and their SHA256)."""
    return {name: {**metric.describe(), "backbone": backbones[metric.Features.key].describe()}
            for name, metric in metrics.items()}
