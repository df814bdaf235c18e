"""The leaderboard's set metrics: seeds pooled with conservative intervals, Δ vs the base model, and the sentence that
says whether an oracle gain costs distribution distance or diversity, all against numbers computed by hand."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from bench.results.set_metrics import display_set_table, diversity_statements, set_metric_table

DESCRIPTIONS = {"fd-toyclip": {"values": {"fd": {"higher_is_better": False}}},
                "vendi-toyclip": {"values": {"vendi": {"higher_is_better": True}}}}


def _record(method, seed, fd, vendi, limit=4e4):
    """fd, vendi: (value, ci_low, ci_high)."""
    def entry(v):
        return {"value": v[0], "ci_low": v[1], "ci_high": v[2]}
    return {"suite": "toy", "method": method, "seed": seed, "config": {},
            "budget": {"limit": limit, "unit": "nfe"},
            "set_metrics": {"fd-toyclip": {"values": {"fd": entry(fd)}},
                            "vendi-toyclip": {"values": {"vendi": entry(vendi)}}},
            "set_metric_descriptions": DESCRIPTIONS}


RECORDS = [_record("base", None, (1.0, 0.5, 1.6), (2.0, 1.8, 2.3)),
           _record("dpo", 0, (2.0, 1.6, 2.5), (1.0, 0.9, 1.1)),
           _record("dpo", 1, (3.0, 2.5, 3.6), (1.2, 1.1, 1.3)),
           {**_record("kto", 0, (1.0, 0.9, 1.1), (2.0, 1.9, 2.1)), "set_metrics": None}]  # a record without them


def test_seeds_pool_by_their_mean_with_the_half_widths_plus_their_spread():
    table = set_metric_table(RECORDS)
    assert list(table["method"]) == ["base", "dpo"]  # the record without set metrics is left out
    base, dpo = table.iloc[0], table.iloc[1]
    assert (base["fd-toyclip/fd"], base["fd-toyclip/fd_ci_low"], base["fd-toyclip/fd_ci_high"]) == (1.0, 0.5, 1.6)
    assert "fd-toyclip/fd_delta" not in base or math.isnan(base["fd-toyclip/fd_delta"])
    # fd: mean 2.5; half-widths (0.4 + 0.5)/2 = 0.45 and (0.5 + 0.6)/2 = 0.55; seeds' spread 1.96 * sd(2, 3) / sqrt(2)
    spread = 1.96 * math.sqrt(0.5) / math.sqrt(2)
    assert dpo["seeds"] == 2 and dpo["fd-toyclip/fd"] == pytest.approx(2.5)
    assert dpo["fd-toyclip/fd_ci_low"] == pytest.approx(2.5 - 0.45 - spread)
    assert dpo["fd-toyclip/fd_ci_high"] == pytest.approx(2.5 + 0.55 + spread)
    # Δ = 2.5 - 1.0 with the row's and the base's half-widths added: [1.5 - (0.45 + s + 0.6), 1.5 + (0.55 + s + 0.5)]
    assert dpo["fd-toyclip/fd_delta"] == pytest.approx(1.5)
    assert dpo["fd-toyclip/fd_delta_ci_low"] == pytest.approx(1.5 - (0.45 + spread + 0.6))  # -0.53: contains 0
    assert dpo["fd-toyclip/fd_delta_ci_high"] == pytest.approx(1.5 + (0.55 + spread + 0.5))
    # vendi: mean 1.1, half-widths 0.1, spread 1.96 * 0.1414 / 1.414 = 0.196; Δ -0.9 in [-1.496, -0.404]
    vendi_spread = 1.96 * math.sqrt(0.02) / math.sqrt(2)
    assert dpo["vendi-toyclip/vendi_delta"] == pytest.approx(-0.9)
    assert dpo["vendi-toyclip/vendi_delta_ci_low"] == pytest.approx(-0.9 - (0.1 + vendi_spread + 0.3))
    assert dpo["vendi-toyclip/vendi_delta_ci_high"] == pytest.approx(-0.9 + (0.1 + vendi_spread + 0.2))
    shown = display_set_table(table)
    assert list(shown["vendi-toyclip/vendi Δ vs base"]) == ["-", "-0.900 [-1.496, -0.404]"]
    assert set_metric_table([RECORDS[3]]).empty


def test_the_diversity_sentence_names_only_significant_costs_of_a_significant_gain():
    sets = set_metric_table(RECORDS + [_record("kto", 0, (1.1, 0.9, 1.3), (2.0, 1.8, 2.2))])
    gains = pd.DataFrame([{"method": "dpo", "budget": "40000nfe", "oracle_delta": 0.3, "oracle_delta_ci_low": 0.1},
                          {"method": "kto", "budget": "40000nfe", "oracle_delta": 0.2, "oracle_delta_ci_low": 0.05},
                          {"method": "sft", "budget": "40000nfe", "oracle_delta": 0.0, "oracle_delta_ci_low": -0.1}])
    (sentence,) = diversity_statements(sets, gains, "oracle", RECORDS)
    assert sentence == (
        "At 40000nfe, of the methods that raise oracle over the base model, dpo (vendi-toyclip/vendi Δ -0.900 "
        "[-1.496, -0.404]) pays for it in diversity or distance to the reference; kto shows no detectable rise in "
        "fd-toyclip or fall in vendi-toyclip (conservative intervals).")
    two_clean = set_metric_table(RECORDS + [_record("kto", 0, (1.1, 0.9, 1.3), (2.0, 1.8, 2.2)),
                                            _record("sft", 0, (1.0, 0.8, 1.2), (2.0, 1.8, 2.2))])
    (sentence,) = diversity_statements(two_clean, gains.assign(oracle_delta_ci_low=[0.1, 0.05, 0.02]), "oracle", RECORDS)
    assert sentence.endswith("; kto and sft show no detectable rise in fd-toyclip or fall in vendi-toyclip "
                             "(conservative intervals).")
    no_gain = gains.assign(oracle_delta_ci_low=-0.1)
    assert diversity_statements(sets, no_gain, "oracle", RECORDS) == []  # no gain, nothing to pay for
