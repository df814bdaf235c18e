"""Budget parsing and metering, the registry, and the bootstrap statistics."""

from __future__ import annotations

import pytest
import torch

from bench.budget import Budget, BudgetError, BudgetMeter, Usage
from bench.registry import Registry, UnknownNameError
from bench.stats import bootstrap_mean, paired_comparison


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
