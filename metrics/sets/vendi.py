"""`vendi-dinov2`, `vendi-toyclip`: the Vendi score (Friedman and Dieng 2023, "The Vendi Score: A Diversity Evaluation
Metric for Machine Learning", vertaix/Vendi-Score; dgm-eval's `compute_vendi_score`) of each prompt's images, averaged
over prompts: how many distinct images a model draws for one prompt.

For the n images of one prompt with features x_1..x_n, K the cosine-similarity kernel (K_ij = cos(x_i, x_j), so
K_ii = 1) and λ_1..λ_n the eigenvalues of K / n (non-negative, summing to 1):

.. math::  \\mathrm{VS} = \\exp\\Big(-\\sum_{i: \\lambda_i > 0} \\lambda_i \\log \\lambda_i\\Big)

1 when the n images are alike (in feature space), n when their features are orthogonal: the effective number of
distinct images. The reported value is the mean over the prompts that have at least 2 images (a single image scores
1 whatever the model); prompts with one image are counted in the record and left out. Its CI is the cluster
bootstrap over prompts that every per-image scorer's mean gets (`metrics.sets.base`); with a single prompt there is
nothing to resample and the interval is the value itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F

from bench.core.stats import cluster_ids
from metrics.sets.base import SetMetric, SetMetricConfig, Value
from metrics.sets.features import Dinov2Features, ToyClipImageFeatures


def vendi_score(features: torch.Tensor) -> float:
    """The Vendi score of n images' features (n, D) with the cosine kernel, in [1, n]."""
    unit = F.normalize(features.double(), dim=1)  # (n, D)
    eigenvalues = torch.linalg.eigvalsh(unit @ unit.T / len(unit))  # (n,) of K / n, summing to 1
    positive = eigenvalues[eigenvalues > 0]  # rounding leaves tiny negative ones where K is singular
    return float(torch.exp(-(positive * positive.log()).sum()))


class PromptScores(NamedTuple):
    per_prompt: torch.Tensor  # (P,) Vendi of each prompt with >= 2 images, NaN for the others
    first: torch.Tensor  # (P,) the index of each prompt's first image


@dataclass(frozen=True)
class VendiConfig(SetMetricConfig):
    bootstrap: int = field(default=2000, metadata={"help": "bootstrap resamples of the prompts for the 95% CI (as "
                                                           "the per-image scorers' means)"})


class Vendi(SetMetric, config=VendiConfig, needs_reference=False, needs_prompts=True, resampling="bootstrap",
            values={"vendi": Value(True, "Vendi score (cosine kernel) of one prompt's images, mean over prompts: 1 "
                                         "(all alike) to the images per prompt (all distinct)", low=1.0)}):
    """Vendi score of each prompt's images in a backbone's feature space, averaged over prompts (module docstring)."""

    def check_sets(self, n: int, reference_n: int | None, prompts: Sequence | None) -> None:
        super().check_sets(n, reference_n, prompts)
        if int(torch.bincount(cluster_ids(prompts, n)).max()) < 2:
            raise ValueError(f"{self.name} is computed within each prompt's images, and every prompt has one image; "
                             "give several images per prompt (the toy sources cycle through the 64 held-out captions: "
                             "--toy-samples 256 gives 4 per caption)")

    def prepare(self, features: torch.Tensor, reference: torch.Tensor | None = None,
                prompts: Sequence | None = None) -> PromptScores:
        ids = cluster_ids(prompts, len(features))  # (N,)
        members = [(ids == p).nonzero().flatten() for p in range(int(ids.max()) + 1)]  # each prompt's images
        per_prompt = [vendi_score(features[rows]) if len(rows) >= 2 else float("nan") for rows in members]
        return PromptScores(torch.tensor(per_prompt, dtype=torch.float64), torch.stack([rows[0] for rows in members]))

    def measure(self, state: PromptScores, weights: torch.Tensor) -> dict[str, float]:
        drawn = weights[state.first].double()  # (P,) each prompt's weight, which all its images carry
        scored = ~state.per_prompt.isnan() & (drawn > 0)
        if not scored.any():
            return {"vendi": float("nan")}
        return {"vendi": float((state.per_prompt[scored] * drawn[scored]).sum() / drawn[scored].sum())}

    def evaluate(self, features: torch.Tensor, reference: torch.Tensor | None = None, prompts: Sequence | None = None,
                 *, seed: int = 0) -> dict:
        """`SetMetric.evaluate`, and how many prompts were scored (>= 2 images) and left out (one image)."""
        sizes = torch.bincount(cluster_ids(prompts, len(features)))  # (P,) images per prompt
        return {**super().evaluate(features, reference, prompts, seed=seed), "prompts_scored": int((sizes >= 2).sum()),
                "prompts_left_out": int((sizes < 2).sum())}


class VendiDinov2(Vendi, name="vendi-dinov2", features=Dinov2Features):
    """Vendi score (cosine kernel) of each prompt's images in DINOv2 ViT-L/14 feature space, mean over prompts."""


class VendiToyClip(Vendi, name="vendi-toyclip", features=ToyClipImageFeatures):
    """Vendi score (cosine kernel) of each prompt's images in the toy CLIP's image-embedding space, mean over prompts."""
