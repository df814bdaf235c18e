"""`fd-dinov2`, `fd-toyclip`: the Fréchet distance between the Gaussians fitted to a set's features and to a
reference set's (Heusel et al. 2017 with Inception features; Stein et al. 2023, layer6ai-labs/dgm-eval, with DINOv2
ViT-L/14's, whose ranking of generative models agrees with human judgement where Inception's does not):

.. math::  \\mathrm{FD} = \\lVert \\mu - \\mu_r \\rVert^2
           + \\operatorname{tr}\\big(\\Sigma + \\Sigma_r - 2 (\\Sigma \\Sigma_r)^{1/2}\\big)

μ, Σ the mean and unbiased covariance of the set's features, μ_r, Σ_r the reference set's. 0 for identical
statistics; lower is closer. The distance is torchmetrics' `FrechetInceptionDistance` with a custom feature module
(`PrecomputedFeatures`: the features are extracted once, by the metric's backbone, and handed over as they are),
accumulated in float64; tr (Σ Σ_r)^{1/2} is the sum of the square roots of the eigenvalues of Σ Σ_r.

FD is biased upwards at small N (Chong and Forsyth 2020): compare values only at equal set sizes. Its CI is a grouped
jackknife over prompts with the reference fixed (`metrics.sets.base` says why not the bootstrap); each replicate
solves a D x D eigenproblem (0.65 s at D = 1024 on one CPU thread), 50 groups by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from metrics.sets.base import SetMetric, SetMetricConfig, Value
from metrics.sets.features import Dinov2Features, ToyClipImageFeatures


class PrecomputedFeatures(torch.nn.Module):
    """torchmetrics' feature-extractor slot for features already extracted: (N, D) in, the same rows out."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features  # read by FrechetInceptionDistance instead of probing with a dummy image

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


def frechet_distance(features: torch.Tensor, reference: torch.Tensor) -> float:
    """FD between the Gaussians of `features` (N, D) and `reference` (M, D), N, M >= 2 (torchmetrics, float64)."""
    from torchmetrics.image.fid import FrechetInceptionDistance  # deferred: torchmetrics' import is heavy

    fid = FrechetInceptionDistance(feature=PrecomputedFeatures(features.shape[1]))
    fid.update(reference.double(), real=True)
    fid.update(features.double(), real=False)
    return float(fid.compute())


@dataclass(frozen=True)
class FrechetConfig(SetMetricConfig):
    jackknife_groups: int = field(default=50, metadata={
        "help": "groups of prompts left out in turn for the 95% CI (each solves a D x D eigenproblem)"})


class FrechetDistance(SetMetric, config=FrechetConfig, needs_reference=True, needs_prompts=False,
                      resampling="jackknife",
                      values={"fd": Value(False, "Fréchet distance of the feature Gaussians (squared feature units); "
                                                 "0 for identical statistics")}):
    """Fréchet distance to the reference set in a backbone's feature space (module docstring)."""

    def check_sets(self, n: int, reference_n: int | None, prompts: Sequence | None) -> None:
        super().check_sets(n, reference_n, prompts)
        if n < 2 or reference_n < 2:
            raise ValueError(f"{self.name} needs at least 2 images in each set, got {n} and {reference_n} in the reference")

    def prepare(self, features: torch.Tensor, reference: torch.Tensor | None = None,
                prompts: Sequence | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return features.double(), reference.double()

    def measure(self, state: tuple[torch.Tensor, torch.Tensor], weights: torch.Tensor) -> dict[str, float]:
        features, reference = state
        return {"fd": frechet_distance(features.repeat_interleave(weights, dim=0), reference)}  # row i weights[i] times


class FrechetDinov2(FrechetDistance, name="fd-dinov2", features=Dinov2Features):
    """FD in DINOv2 ViT-L/14 feature space (FD_DINOv2, Stein et al. 2023) to a reference set."""


class FrechetToyClip(FrechetDistance, name="fd-toyclip", features=ToyClipImageFeatures):
    """FD in the toy CLIP's image-embedding space to a reference set (the toy world's FD_DINOv2)."""
