"""Bootstrap confidence intervals, and paired comparisons against the base model.

Percentile bootstrap (Efron & Tibshirani 1993) over images: B resamples of the N per-image values
with replacement, the statistic is the mean, the 95% CI the 2.5th and 97.5th percentiles.
For paired comparisons (same prompt and seed for both models) the resampled unit is the image pair:

    win_i   = 1[a_i > b_i] + 0.5 * 1[a_i == b_i]     (ties count half; direction = higher_is_better)
    delta_i = a_i − b_i
"""

from __future__ import annotations

import torch


def bootstrap_mean(values: torch.Tensor, *, resamples: int = 2000, seed: int = 0,
                   level: float = 0.95) -> dict[str, float]:
    """{"mean", "ci_low", "ci_high", "n"} of the mean of `values` (N,)."""
    values = torch.as_tensor(values, dtype=torch.float64).flatten()
    n = values.numel()
    if n == 0:
        raise ValueError("cannot bootstrap an empty sample")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, n, (resamples, n), generator=gen)
    means = values[idx].mean(dim=1)
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return {"mean": values.mean().item(), "ci_low": low, "ci_high": high, "n": n}


def paired_comparison(scores: torch.Tensor, base: torch.Tensor, *, higher_is_better: bool = True,
                      resamples: int = 2000, seed: int = 0) -> tuple[dict[str, float], dict[str, float]]:
    """(win rate vs base, mean change vs base), each with a bootstrap 95% CI."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    base = torch.as_tensor(base, dtype=torch.float64)
    if scores.shape != base.shape:
        raise ValueError(f"paired comparison needs equal shapes, got {tuple(scores.shape)} and {tuple(base.shape)}")
    better = scores > base if higher_is_better else scores < base
    win = better.double() + 0.5 * (scores == base).double()
    return (bootstrap_mean(win, resamples=resamples, seed=seed),
            bootstrap_mean(scores - base, resamples=resamples, seed=seed))
