"""Bootstrap confidence intervals, paired comparisons, bootstrap p-values and Holm's adjustment.

Every interval in the project (run records, `bench report`, the leaderboard, `bench toy build`'s report, `bench
eval`) comes from `bootstrap_mean`; `run_statistics` is the one call that turns a run's per-image scores into its
stored aggregates, and `compare_methods` pairs two methods for `bench report --pairs` and the leaderboard's
statements. The full contract is in docs/statistics.md.

Percentile bootstrap (Efron & Tibshirani 1993): B resamples, the statistic is the mean, the 95% CI the
2.5th and 97.5th percentiles of the B resampled means. The resampled unit is the prompt (a cluster
bootstrap): the k images of one prompt are not independent, so a replicate draws P prompts with
replacement and takes all their images. When several runs (training seeds) of one method are scored on
the same images, a replicate first draws the S runs with replacement, then the prompts (a two-level
bootstrap; Davison & Hinkley 1997, §3.8; Field & Welsh 2007), so the CI includes the spread between
seeds. The point estimate is the mean over every (run, image) value, i.e. the mean over runs of each
run's mean.

For paired comparisons (the same prompt and seed for both models) the per-image values are

    win_si   = 1[a_si > b_si] + 0.5 * 1[a_si == b_si]     (ties count half; direction = higher_is_better)
    delta_si = a_si − b_si

for run s and image i (b_si = b_i for the base model, which has one run), bootstrapped as above: a multi-seed
win rate is the mean of the seeds' win rates. Two methods are paired on the training seeds both have (run s of
one with run s of the other), so a replicate draws shared seeds, then prompts.

The two-sided bootstrap p-value of "mean = 0" inverts the percentile interval: it is the smallest α whose
equal-tailed (1 − α) percentile interval excludes 0,

    p = min(1, 2 · min(1 + #{θ*_b ≤ 0}, 1 + #{θ*_b ≥ 0}) / (B + 1))

(the +1s keep a Monte Carlo p-value above 0; Davison & Hinkley 1997, ch. 4), so the smallest p B resamples can
give is 2 / (B + 1). `holm` adjusts a family of p-values by Holm's step-down (Holm 1979).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


def cluster_ids(groups: Sequence | None, n: int) -> torch.Tensor:
    """(n,) integer id of each image's cluster, numbered in order of appearance; None: one cluster per image."""
    if groups is None:
        return torch.arange(n)
    if len(groups) != n:
        raise ValueError(f"{len(groups)} cluster labels for {n} values")
    index: dict = {}
    return torch.tensor([index.setdefault(g, len(index)) for g in groups], dtype=torch.long)


def _replicates(values: torch.Tensor, groups: Sequence | None, resamples: int,
                seed: int) -> tuple[torch.Tensor, dict[str, float]]:
    """(B,) bootstrap replicates of the mean, and {"mean", "n", "clusters", "runs"} (see `bootstrap_mean`)."""
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
    return means, {"mean": values.mean().item(), "n": n, "clusters": clusters, "runs": runs}


def _interval(means: torch.Tensor, level: float) -> dict[str, float]:
    tail = (1 - level) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return {"ci_low": low, "ci_high": high}


def bootstrap_mean(values: torch.Tensor, *, groups: Sequence | None = None, resamples: int = 2000, seed: int = 0,
                   level: float = 0.95) -> dict[str, float]:
    """{"mean", "ci_low", "ci_high", "n", "clusters", "runs"} of the mean of `values`.

    Args:
        values: (N,) one value per image, or (S, N): S runs of the same N images.
        groups: (N,) each image's cluster (its prompt), resampled as a unit; None: images are independent. A
            single cluster (one prompt for every image) cannot be resampled: its images are, as with None.
    """
    means, stat = _replicates(values, groups, resamples, seed)
    return {"mean": stat["mean"], **_interval(means, level), "n": stat["n"], "clusters": stat["clusters"],
            "runs": stat["runs"]}


def bootstrap_test(values: torch.Tensor, *, groups: Sequence | None = None, resamples: int = 2000, seed: int = 0,
                   level: float = 0.95) -> dict[str, float]:
    """`bootstrap_mean` (the same replicates, so the same CI) plus "p_value": the two-sided bootstrap p-value of
    "mean = 0" (module docstring), at least 2 / (resamples + 1)."""
    means, stat = _replicates(values, groups, resamples, seed)
    below, above = int((means <= 0).sum()), int((means >= 0).sum())
    p_value = min(1.0, 2 * (1 + min(below, above)) / (resamples + 1))
    return {"mean": stat["mean"], **_interval(means, level), "n": stat["n"], "clusters": stat["clusters"],
            "runs": stat["runs"], "p_value": p_value}


def paired_wins(scores: torch.Tensor, base: torch.Tensor, higher_is_better: bool = True) -> torch.Tensor:
    """1 where `scores` beats `base` (by the scorer's direction), ½ on a tie, else 0; elementwise, float64."""
    better = scores > base if higher_is_better else scores < base
    return better.double() + 0.5 * (scores == base).double()


def _paired(scores, other) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.as_tensor(scores, dtype=torch.float64)
    other = torch.as_tensor(other, dtype=torch.float64)
    if scores.shape[-1:] != other.shape[-1:] or other.ndim not in (1, scores.ndim) or (
            other.ndim == 2 and other.shape != scores.shape):
        raise ValueError(f"paired comparison needs the same images (and runs), got {tuple(scores.shape)} and "
                         f"{tuple(other.shape)}")
    return scores, other


def paired_comparison(scores: torch.Tensor, base: torch.Tensor, *, groups: Sequence | None = None,
                      higher_is_better: bool = True, resamples: int = 2000,
                      seed: int = 0) -> tuple[dict[str, float], dict[str, float]]:
    """(win rate vs base, mean change vs base), each with a bootstrap 95% CI.

    `scores` (N,) or (S, N) for S runs, `base` (N,) on the same images (or (S, N): run s paired with run s);
    `groups` as in `bootstrap_mean`.
    """
    scores, base = _paired(scores, base)
    win = paired_wins(scores, base, higher_is_better)
    return (bootstrap_mean(win, groups=groups, resamples=resamples, seed=seed),
            bootstrap_mean(scores - base, groups=groups, resamples=resamples, seed=seed))


def compare_methods(scores_a: torch.Tensor, scores_b: torch.Tensor, *, groups: Sequence | None = None,
                    higher_is_better: bool = True, resamples: int = 10000,
                    seed: int = 0) -> tuple[dict[str, float], dict[str, float]]:
    """Method A against method B on the same images and training seeds: (win rate of A over B, mean difference
    A − B with its two-sided bootstrap "p_value" for a difference of 0), CIs from the same clustered bootstrap.

    `scores_a`, `scores_b`: (S, N) (or (N,)), run s of A paired with run s of B (the same training seed).
    """
    scores_a, scores_b = _paired(scores_a, scores_b)
    if scores_a.shape != scores_b.shape:
        raise ValueError(f"compare_methods needs the same runs of the same images, got {tuple(scores_a.shape)} "
                         f"and {tuple(scores_b.shape)}")
    win = paired_wins(scores_a, scores_b, higher_is_better)
    return (bootstrap_mean(win, groups=groups, resamples=resamples, seed=seed),
            bootstrap_test(scores_a - scores_b, groups=groups, resamples=resamples, seed=seed))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (Holm 1979), in the input order.

    Sort ascending, p_(1) ≤ … ≤ p_(m); p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) · p_(j)). Rejecting every hypothesis
    with p̃ < α is Holm's step-down test, which controls the family-wise error rate at α.
    """
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def run_statistics(scores: Mapping[str, Sequence], prompts: Sequence, *,
                   base: Mapping[str, Sequence] | None = None, higher_is_better: Mapping[str, bool] | None = None,
                   resamples: int = 2000, seed: int = 0) -> dict[str, dict[str, dict]]:
    """A run's aggregates, as stored in its record: {"metrics": {name: bootstrap_mean}} and, given the base model's
    per-image scores, {"win_rate_vs_base", "delta_vs_base": {name: ...}} for each metric the base has.

    `scores`: metric -> (N,) per image, or (S, N) for S runs (training seeds) of one method; `prompts`: (N,) each
    image's prompt, the bootstrap's cluster; `higher_is_better`: metric -> direction (default higher).
    """
    out: dict[str, dict[str, dict]] = {"metrics": {}}
    if base is not None:
        out["win_rate_vs_base"], out["delta_vs_base"] = {}, {}
    for name, values in scores.items():
        values = torch.as_tensor(values, dtype=torch.float64)
        out["metrics"][name] = bootstrap_mean(values, groups=prompts, resamples=resamples, seed=seed)
        if base is not None and name in base:
            higher = (higher_is_better or {}).get(name, True)
            out["win_rate_vs_base"][name], out["delta_vs_base"][name] = paired_comparison(
                values, base[name], groups=prompts, higher_is_better=higher, resamples=resamples, seed=seed)
    return out
