"""Budget parsing and metering, the registry, and the bootstrap statistics."""

from __future__ import annotations

import pytest
import torch

from bench.core.budget import Budget, BudgetError, BudgetMeter, Usage
from bench.core.registry import Registry, UnknownNameError
from bench.core.stats import (
    bootstrap_mean,
    bootstrap_test,
    compare_methods,
    holm,
    paired_comparison,
    run_statistics,
)


@pytest.mark.parametrize("text, unit, limit", [
    ("2e5nfe", "nfe", 2e5), ("90s", "seconds", 90), ("1.5min", "seconds", 90), ("400steps", "steps", 400),
    ("1e4samples", "samples", 1e4), (" 3 step ", "steps", 3), ("40000NFE", "nfe", 40000),
    ("384gpu-h", "gpu-h", 384), ("0.5 GPU-hours", "gpu-h", 0.5),
])
def test_budget_parse(text, unit, limit):
    assert Budget.parse(text) == Budget(unit, limit)


@pytest.mark.parametrize("text", ["", "nfe", "12xyz", "-5nfe", "0steps", "1e5 nfe s"])
def test_budget_parse_errors(text):
    with pytest.raises(BudgetError):
        Budget.parse(text)


def test_meter_keeps_used_within_limit():
    meter = BudgetMeter(Budget("nfe", 1000))
    assert meter.fits(declared_step_cost=300)
    steps = 0
    while meter.fits(declared_step_cost=300):
        meter.add(Usage(steps=1, samples=32, nfe=256 if steps % 2 else 300, seconds=0.1))
        steps += 1
    assert steps == 3 and meter.used.nfe == 856 <= 1000  # a 4th step predicted at 300 would cross 1000
    restored = BudgetMeter(Budget("nfe", 1000))
    restored.load_state_dict(meter.state_dict())
    assert restored.used == meter.used and restored.max_step_cost == 300


def test_meter_predicts_the_larger_of_the_largest_step_seen_and_the_declared_worst_case():
    """InPO's step cost varies: steps of 300, 300, then 448 NFE (the declared worst case) under a limit of 1000. A
    prediction from the largest step seen (300) lets a third step start at 600 and end at 1048; max(seen, declared)
    predicts 448 and stops at 600."""
    costs = iter([300, 300, 448, 448])
    meter = BudgetMeter(Budget("nfe", 1000))
    while meter.fits(declared_step_cost=448):
        meter.add(Usage(steps=1, samples=32, nfe=next(costs)))
    assert meter.used.steps == 2 and meter.used.nfe == 600 <= 1000
    # a step dearer than declared raises the prediction too: after 500, another 500 is predicted, not 100
    meter = BudgetMeter(Budget("nfe", 1000))
    meter.add(Usage(steps=1, nfe=500))
    assert meter.fits(declared_step_cost=100)  # 500 + 500 = 1000 <= 1000
    meter.add(Usage(steps=1, nfe=1))
    assert not meter.fits(declared_step_cost=100)  # 501 + 500 > 1000, though 501 + 100 would fit


@pytest.mark.parametrize("text", ["1e400nfe", "1e309steps", "1e307min"])
def test_budget_must_be_finite(text):
    with pytest.raises(BudgetError, match="a budget must be a finite number"):
        Budget.parse(text)
    with pytest.raises(BudgetError, match="finite"):
        Budget("nfe", float("inf"))


def test_cli_refuses_an_infinite_budget_in_one_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from bench.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", "--budget", "1e400nfe"])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [
        "error: budget '1e400nfe' is too large: 1e400 overflows to infinity; a budget must be a finite number"]
    assert list(tmp_path.iterdir()) == []


def test_gpu_hours_are_device_seconds_over_3600():
    """Two processes for 450 s of wall-clock per step are 900 device-seconds = 0.25 GPU-h per step."""
    meter = BudgetMeter(Budget.parse("1gpu-h"))
    steps = 0
    while meter.fits(declared_step_cost=0.1):
        meter.add(Usage(steps=1, samples=64, nfe=512, seconds=450.0, device_seconds=900.0))
        steps += 1
    assert steps == 4 and meter.used.get("gpu-h") == 1.0 and meter.used.get("seconds") == 1800.0
    assert str(Budget.parse("384gpu-h")) == "384gpu-h"


def test_registry_suggests_nearest_name():
    registry = Registry("method")
    for name in ("dpo", "kto", "inpo"):
        registry.register(name)(object())
    with pytest.raises(UnknownNameError) as err:
        registry.get("inpoo")
    assert "did you mean 'inpo'?" in str(err.value) and "dpo, inpo, kto" in str(err.value)
    with pytest.raises(UnknownNameError, match="unknown method 'zzz'\\. Known"):
        registry.get("zzz")
    with pytest.raises(ValueError, match="already registered"):
        registry.register("dpo")(object())


def test_bootstrap_of_a_constant_and_of_a_known_sample():
    stat = bootstrap_mean(torch.full((50,), 2.5))
    assert stat == {"mean": 2.5, "ci_low": 2.5, "ci_high": 2.5, "n": 50, "clusters": 50, "runs": 1}
    values = torch.tensor([0.0, 1.0] * 200)
    stat = bootstrap_mean(values, resamples=4000)
    # normal approximation: 0.5 ± 1.96 * 0.5 / sqrt(400) = 0.5 ± 0.049
    assert stat["ci_low"] == pytest.approx(0.451, abs=0.01) and stat["ci_high"] == pytest.approx(0.549, abs=0.01)


def test_bootstrap_resamples_prompts_then_runs():
    # 2 prompts x 4 images: a replicate draws both prompts from {a, b}, so its mean is 0, 5 or 10 with
    # probabilities 1/4, 1/2, 1/4 and the 95% CI is [0, 10]; resampling the 8 images independently, a mean
    # of 0 or 10 has probability 2 x (1/2)^8 and the CI is about [1.25, 8.75]
    values = torch.tensor([0.0] * 4 + [10.0] * 4)
    clustered = bootstrap_mean(values, groups=["a"] * 4 + ["b"] * 4)
    assert (clustered["mean"], clustered["ci_low"], clustered["ci_high"], clustered["clusters"]) == (5.0, 0.0, 10.0, 2)
    by_image = bootstrap_mean(values)
    assert 1.0 <= by_image["ci_low"] <= 2.5 and 7.5 <= by_image["ci_high"] <= 9.0
    assert bootstrap_mean(values, groups=["a"] * 8) == by_image  # one prompt for all: its images are resampled
    # two runs (seeds) that disagree completely: the runs are resampled too, so the CI spans both
    runs = bootstrap_mean(torch.stack([torch.zeros(40), torch.ones(40)]))
    assert (runs["mean"], runs["ci_low"], runs["ci_high"], runs["runs"]) == (0.5, 0.0, 1.0, 2)


def test_multi_seed_win_rate_is_the_mean_of_the_seeds_win_rates():
    base = torch.tensor([0.0, 0.0])
    scores = torch.tensor([[1.0, -3.0], [-3.0, 1.0]])  # each seed wins one image of two
    win, delta = paired_comparison(scores, base)
    assert win["mean"] == 0.5 and delta["mean"] == -1.0  # the seed-averaged scores (-1, -1) would win 0 of 2
    with pytest.raises(ValueError, match="the same images"):
        paired_comparison(scores, torch.zeros(3))


def test_paired_comparison_counts_ties_half():
    scores = torch.tensor([2.0, 1.0, 3.0, 1.0])
    base = torch.tensor([1.0, 1.0, 4.0, 0.0])
    win, delta = paired_comparison(scores, base)
    assert win["mean"] == pytest.approx((1 + 0.5 + 0 + 1) / 4) and delta["mean"] == pytest.approx(0.25)
    win, _ = paired_comparison(scores, base, higher_is_better=False)
    assert win["mean"] == pytest.approx((0 + 0.5 + 1 + 0) / 4)
    with pytest.raises(ValueError):
        paired_comparison(scores, base[:2])


def test_holm_step_down_by_hand():
    # p = (0.01, 0.04, 0.03, 0.005), m = 4. Ascending: 0.005 (#4), 0.01 (#1), 0.03 (#3), 0.04 (#2);
    # times m - j + 1 = 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04; running maximum: 0.02, 0.03, 0.06, 0.06.
    # Back in input order: (0.03, 0.06, 0.06, 0.02): at 0.05 Holm rejects #1 and #4 (Bonferroni, 4p = (0.04, 0.16,
    # 0.12, 0.02), would too; it differs on #3, which step-down would reject at α = 0.06 and Bonferroni would not)
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # 2 · 0.5 = 1, then max(1, 1 · 0.9) = 1: monotone, capped
    assert holm([0.2, 0.2, 0.2]) == pytest.approx([0.6, 0.6, 0.6])  # ties: 0.6, 0.4 -> max 0.6, 0.2 -> max 0.6
    assert holm([0.04]) == [0.04] and holm([]) == []


def test_bootstrap_p_value_inverts_the_percentile_interval():
    # no difference at all: every replicate is 0, p = min(1, 2 (B + 1) / (B + 1)) = 1
    zero = bootstrap_test(torch.zeros(40), groups=[i // 4 for i in range(40)], resamples=999)
    assert zero["p_value"] == 1.0 and zero["ci_low"] == zero["ci_high"] == 0.0
    # every image better: no replicate <= 0, so p = 2 (1 + 0) / (B + 1), the smallest B resamples can give
    clear = bootstrap_test(torch.linspace(0.5, 1.5, 40), groups=[i // 4 for i in range(40)], resamples=999)
    assert clear["p_value"] == pytest.approx(2 / 1000)
    # the same replicates as bootstrap_mean: the same CI; p < 0.05 exactly when the 95% CI misses 0 (up to the
    # quantile's interpolation and the +1s)
    gen = torch.Generator().manual_seed(1)
    for shift in (0.0, 0.1, 0.2, 0.3, 0.5):
        values = torch.randn(64, generator=gen, dtype=torch.float64) + shift
        test, mean = bootstrap_test(values, resamples=4000), bootstrap_mean(values, resamples=4000)
        assert {k: test[k] for k in mean} == mean
        if test["p_value"] < 0.045:
            assert test["ci_low"] > 0 or test["ci_high"] < 0
        if test["p_value"] > 0.055:
            assert test["ci_low"] < 0 < test["ci_high"]


def test_compare_methods_pairs_runs_by_seed_and_resamples_seeds_then_prompts():
    prompts = ["p", "p", "q", "q"]
    a = torch.tensor([[2.0, 2.0, 1.0, 1.0], [3.0, 3.0, 0.0, 0.0]])  # (S=2 seeds, N=4 images)
    b = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    win, delta = compare_methods(a, b, groups=prompts, resamples=2000)
    # per (seed, image) Δ: (1, 1, 0, 0), (2, 2, -1, -1) -> mean 0.5; wins: (1, 1, ½, ½), (1, 1, 0, 0) -> 0.625
    assert delta["mean"] == pytest.approx(0.5) and win["mean"] == pytest.approx(0.625)
    assert (delta["runs"], delta["clusters"], delta["n"]) == (2, 2, 4) and 0 < delta["p_value"] <= 1
    # the extremes of the two-level bootstrap: seed 1 and prompt q twice -> Δ -1; seed 1 and prompt p twice -> 2
    assert delta["ci_low"] == pytest.approx(-1.0) and delta["ci_high"] == pytest.approx(2.0)
    reverse_win, reverse_delta = compare_methods(b, a, groups=prompts, resamples=2000)
    assert reverse_win["mean"] == pytest.approx(1 - win["mean"]) and reverse_delta["mean"] == pytest.approx(-0.5)
    assert reverse_delta["p_value"] == pytest.approx(delta["p_value"])  # two-sided: symmetric
    with pytest.raises(ValueError, match="same runs"):
        compare_methods(a, b[0], groups=prompts)


def test_run_statistics_is_what_a_run_record_stores():
    """`bench run` stores `bench.harness.evaluation.aggregate` and `compare_to_base`; a record read back, the report and the
    leaderboard compute `run_statistics`: the same numbers, to the last bit."""
    from types import SimpleNamespace

    from bench.core.config import EvalConfig
    from bench.harness.evaluation import EvalResult, aggregate, compare_to_base

    gen = torch.Generator().manual_seed(0)
    prompts, seeds = [f"prompt {i // 4}" for i in range(32)], list(range(32))
    scores = {"r": torch.randn(32, generator=gen).tolist(), "loss": torch.rand(32, generator=gen).tolist()}
    base = {"r": torch.randn(32, generator=gen).tolist(), "loss": torch.rand(32, generator=gen).tolist()}
    cfg = EvalConfig(bootstrap=500, seed=3)
    scorers = {"r": SimpleNamespace(higher_is_better=True), "loss": SimpleNamespace(higher_is_better=False)}
    wins, deltas = compare_to_base(EvalResult(prompts, seeds, scores), EvalResult(prompts, seeds, base), scorers, cfg)
    stats = run_statistics(scores, prompts, base=base, higher_is_better={"r": True, "loss": False}, resamples=500,
                           seed=3)
    assert stats == {"metrics": aggregate(EvalResult(prompts, seeds, scores), cfg), "win_rate_vs_base": wins,
                     "delta_vs_base": deltas}
    assert stats["metrics"]["r"]["clusters"] == 8  # prompts, not images
    assert run_statistics(scores, prompts, resamples=500, seed=3) == {"metrics": stats["metrics"]}  # no base: no comparison
