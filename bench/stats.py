"""Bootstrap confidence intervals, and paired comparisons against the base model.

Percentile bootstrap (Efron & Tibshirani 1993): B resamples, the statistic is the mean, the 95% CI the
2.5th and 97.5th percentiles of the B resampled means. The resampled unit is the prompt (a cluster
bootstrap): the k images of one prompt are not independent, so a replicate draws P prompts with
replacement and takes all their images. When several runs (training seeds) of one method are scored on
the same images, a replicate first draws the S runs with replacement, then the prompts (a two-level
bootstrap; Davison & Hinkley 1997, §3.8; Field & Welsh 2007), so the CI includes the spread between
seeds. The point estimate is the mean over every (run, image) value, i.e. the mean over runs of each
run's mean.

For paired comparisons (the same prompt and seed for both models) the per-image values are

    win_si   = 1[a_si > b_i] + 0.5 * 1[a_si == b_i]     (ties count half; direction = higher_is_better)
    delta_si = a_si − b_i

for run s and image i, bootstrapped as above: a multi-seed win rate is the mean of the seeds' win rates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def cluster_ids(groups: Sequence | None, n: int) -> torch.Tensor:
    """(n,) integer id of each image's cluster, numbered in order of appearance; None: one cluster per image."""
    if groups is None:
        return torch.arange(n)
    if len(groups) != n:
        raise ValueError(f"{len(groups)} cluster labels for {n} values")
    index: dict = {}
    return torch.tensor([index.setdefault(g, len(index)) for g in groups], dtype=torch.long)


def bootstrap_mean(values: torch.Tensor, *, groups: Sequence | None = None, resamples: int = 2000, seed: int = 0,
                   level: float = 0.95) -> dict[str, float]:
    """{"mean", "ci_low", "ci_high", "n", "clusters", "runs"} of the mean of `values`.

    Args:
        values: (N,) one value per image, or (S, N): S runs of the same N images.
        groups: (N,) each image's cluster (its prompt), resampled as a unit; None: images are independent. A
            single cluster (one prompt for every image) cannot be resampled: its images are, as with None.
    """
    values = torch.as_tensor(values, dtype=torch.float64)
    values = values[None] if values.ndim == 1 else values  # (S, N)
    runs, n = values.shape
    if n == 0 or runs == 0:
        raise ValueError("cannot bootstrap an empty sample")
    ids = cluster_ids(groups, n)  # (N,)
    if int(ids.max()) == 0:  # one prompt: the CI can only describe the variation between its images
        ids = torch.arange(n)
    clusters = int(ids.max()) + 1
    sums = torch.zeros(runs, clusters, dtype=torch.float64).index_add_(1, ids, values)  # (S, P)
    counts = torch.bincount(ids, minlength=clusters).to(torch.float64)  # (P,)
    gen = torch.Generator().manual_seed(seed)
    picked = torch.randint(0, clusters, (resamples, clusters), generator=gen)  # (B, P) prompts per replicate
    run_sums = sums[0].expand(resamples, clusters)  # (B, P)
    if runs > 1:
        chosen = torch.randint(0, runs, (resamples, runs), generator=gen)  # (B, S) runs per replicate
        run_sums = sum(sums[chosen[:, k]] for k in range(runs))
    means = run_sums.gather(1, picked).sum(1) / (runs * counts[picked].sum(1))  # (B,)
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return {"mean": values.mean().item(), "ci_low": low, "ci_high": high, "n": n, "clusters": clusters, "runs": runs}


def paired_wins(scores: torch.Tensor, base: torch.Tensor, higher_is_better: bool = True) -> torch.Tensor:
    """1 where `scores` beats `base` (by the scorer's direction), ½ on a tie, else 0; elementwise, float64."""
    better = scores > base if higher_is_better else scores < base
    return better.double() + 0.5 * (scores == base).double()


def paired_comparison(scores: torch.Tensor, base: torch.Tensor, *, groups: Sequence | None = None,
                      higher_is_better: bool = True, resamples: int = 2000,
                      seed: int = 0) -> tuple[dict[str, float], dict[str, float]]:
    """(win rate vs base, mean change vs base), each with a bootstrap 95% CI.

    `scores` (N,) or (S, N) for S runs, `base` (N,) on the same images; `groups` as in `bootstrap_mean`.
    """
    scores = torch.as_tensor(scores, dtype=torch.float64)
    base = torch.as_tensor(base, dtype=torch.float64)
    if scores.shape[-1:] != base.shape or base.ndim != 1:
        raise ValueError(f"paired comparison needs the same images, got {tuple(scores.shape)} and {tuple(base.shape)}")
    win = paired_wins(scores, base, higher_is_better)
    return (bootstrap_mean(win, groups=groups, resamples=resamples, seed=seed),
            bootstrap_mean(scores - base, groups=groups, resamples=resamples, seed=seed))
