"""`prdc-dinov2`, `prdc-toyclip`: precision and recall (Kynkäänniemi et al. 2019, "Improved Precision and Recall
Metric for Assessing Generative Models"), density and coverage (Naeem et al. 2020, "Reliable Fidelity and Diversity
Metrics for Generative Models", clovaai/generative-evaluation-prdc, which dgm-eval vendors), from k-nearest-neighbour
balls in a backbone's feature space.

With real (reference) features X_1..X_M, generated features Y_1..Y_N, NND_k(·) the distance to a point's k-th nearest
neighbour in its own set and B(x, r) the open ball (distances strictly below r, as the reference code):

.. math::
    \\mathrm{precision} = \\frac{1}{N} \\sum_j 1\\big[\\exists i: Y_j \\in B(X_i, \\mathrm{NND}_k(X_i))\\big] \\qquad
    \\mathrm{recall} = \\frac{1}{M} \\sum_i 1\\big[\\exists j: X_i \\in B(Y_j, \\mathrm{NND}_k(Y_j))\\big]

    \\mathrm{density} = \\frac{1}{kN} \\sum_j \\sum_i 1\\big[Y_j \\in B(X_i, \\mathrm{NND}_k(X_i))\\big] \\qquad
    \\mathrm{coverage} = \\frac{1}{M} \\sum_i 1\\big[\\exists j: Y_j \\in B(X_i, \\mathrm{NND}_k(X_i))\\big]

Precision, recall and coverage are in [0, 1]; density in [0, M/k], about 1 when the two sets are alike. A model that
collapses onto a few modes keeps precision and density but loses recall and coverage. k = 5 (Naeem et al.'s default).

`measure` takes weights (`metrics.sets.base`): precision and density are weighted means over the generated images;
recall and coverage use the images of weight > 0 as a set, each NND_k(Y_j) taken among them (a weight above 1 does not
make an image its own neighbour). The CIs are a grouped jackknife over prompts, the reference fixed. Distances are
Euclidean, in float64, computed once per `evaluate`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from metrics.sets.base import SetMetric, SetMetricConfig, Value
from metrics.sets.features import Dinov2Features, ToyClipImageFeatures


class Distances(NamedTuple):
    real_fake: torch.Tensor  # (M, N)
    real_radii: torch.Tensor  # (M,) NND_k of each reference point
    fake_fake: torch.Tensor  # (N, N)


def kth_neighbour_distances(distances: torch.Tensor, k: int) -> torch.Tensor:
    """(n, n) pairwise distances within one set -> (n,) distance of each point to its k-th nearest other point (the
    (k+1)-th smallest in its row, the first being its distance 0 to itself)."""
    return distances.kthvalue(k + 1, dim=1).values


def prdc(distances: Distances, k: int, weights: torch.Tensor) -> dict[str, float]:
    """Precision, recall, density and coverage (module docstring) with generated image j counted weights[j] times."""
    inside_real = distances.real_fake < distances.real_radii[:, None]  # (M, N) Y_j in the ball of X_i
    weights = weights.double()
    drawn = weights > 0  # (N,)
    total = weights.sum()
    precision = (inside_real.any(0).double() * weights).sum() / total
    density = (inside_real.sum(0).double() * weights).sum() / (k * total)
    coverage = inside_real[:, drawn].any(1).double().mean()
    recall = math.nan  # NND_k of the generated images needs more than k of them
    if int(drawn.sum()) > k:
        fake_radii = kth_neighbour_distances(distances.fake_fake[drawn][:, drawn], k)  # (N_drawn,)
        recall = float((distances.real_fake[:, drawn] < fake_radii[None, :]).any(1).double().mean())
    return {"precision": float(precision), "recall": recall, "density": float(density), "coverage": float(coverage)}


@dataclass(frozen=True)
class PRDCConfig(SetMetricConfig):
    nearest_k: int = field(default=5, metadata={"help": "k of the k-nearest-neighbour balls (Naeem et al. 2020: 5)"})
    jackknife_groups: int = field(default=50, metadata={"help": "groups of prompts left out in turn for the 95% CIs"})

    def __post_init__(self):
        super().__post_init__()
        if self.nearest_k < 1:
            raise ValueError(f"nearest_k must be >= 1, got {self.nearest_k}")


class PrecisionRecallDensityCoverage(
        SetMetric, config=PRDCConfig, needs_reference=True, needs_prompts=False, resampling="jackknife",
        values={"precision": Value(True, "share of generated images inside the reference k-NN manifold, in [0, 1]",
                                   high=1.0),
                "recall": Value(True, "share of reference images inside the generated k-NN manifold, in [0, 1]",
                                high=1.0),
                "density": Value(True, "reference k-NN balls holding a generated image, per image / k; ~1 alike, "
                                       "in [0, M/k]"),
                "coverage": Value(True, "share of reference k-NN balls holding a generated image, in [0, 1]",
                                  high=1.0)}):
    """Precision, recall, density and coverage against a reference set in a backbone's feature space."""

    def check_sets(self, n: int, reference_n: int | None, prompts: Sequence | None) -> None:
        super().check_sets(n, reference_n, prompts)
        k = self.config.nearest_k
        if n <= k or reference_n <= k:
            raise ValueError(f"{self.name} with nearest_k={k} needs more than {k} images in each set, got {n} and "
                             f"{reference_n} in the reference")

    def prepare(self, features: torch.Tensor, reference: torch.Tensor | None = None,
                prompts: Sequence | None = None) -> Distances:
        fake, real = features.double(), reference.double()
        real_real = torch.cdist(real, real)  # (M, M)
        return Distances(torch.cdist(real, fake), kth_neighbour_distances(real_real, self.config.nearest_k),
                         torch.cdist(fake, fake))

    def measure(self, state: Distances, weights: torch.Tensor) -> dict[str, float]:
        return prdc(state, self.config.nearest_k, weights)


class PRDCDinov2(PrecisionRecallDensityCoverage, name="prdc-dinov2", features=Dinov2Features):
    """Precision, recall, density and coverage (k-NN, k = 5) in DINOv2 ViT-L/14 feature space."""


class PRDCToyClip(PrecisionRecallDensityCoverage, name="prdc-toyclip", features=ToyClipImageFeatures):
    """Precision, recall, density and coverage (k-NN, k = 5) in the toy CLIP's image-embedding space."""
