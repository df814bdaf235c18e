"""Reward hacking against the ground truth (`bench.results.reward_hacking`): the rule, the sentences, rows keyed by the
reward a run optimised, the figures of online runs, `bench report` and the leaderboard built from small synthetic
records."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from bench.results.reward_hacking import (
    HACKING,
    SuiteMetrics,
    delta_side,
    reward_scorer,
    row_reward,
    running_mean,
    scatter_points,
    series_label,
    statements,
    training_curves,
)

METRICS = ("oracle", "toy-pickscore", "toy-clip")  # the toy suite's: the truth first, then its proxies
TOY = SuiteMetrics("oracle", METRICS[1:], dict.fromkeys(METRICS, True))


def _row(reward: str = "", **cis) -> dict:
    """A comparison-table row with a Δ CI per metric: oracle=(low, high), toy_pickscore=(low, high), ..."""
    row = {"method": "m", "reward": reward}
    for name, (low, high) in cis.items():
        metric = name.replace("_", "-")
        row.update({f"{metric}_delta": (low + high) / 2, f"{metric}_delta_ci_low": low, f"{metric}_delta_ci_high": high})
    return row


UP, DOWN, STRADDLE, TOUCH = (0.1, 0.3), (-0.3, -0.1), (-0.1, 0.2), (0.0, 0.2)


def test_a_row_hacks_a_proxy_only_when_both_intervals_exclude_0_on_opposite_sides():
    assert TOY.hacked(_row(oracle=DOWN, toy_pickscore=UP, toy_clip=STRADDLE)) == ["toy-pickscore"]
    assert TOY.hacked(_row(oracle=DOWN, toy_pickscore=UP, toy_clip=UP)) == ["toy-pickscore", "toy-clip"]
    assert TOY.hacked(_row(oracle=STRADDLE, toy_pickscore=UP, toy_clip=UP)) == []  # the truth: no detectable loss
    assert TOY.hacked(_row(oracle=UP, toy_pickscore=UP, toy_clip=UP)) == []
    assert TOY.hacked(_row(oracle=DOWN, toy_pickscore=TOUCH, toy_clip=DOWN)) == []  # a CI touching 0 contains it
    assert TOY.hacked(_row(oracle=(-0.3, 0.0), toy_pickscore=UP, toy_clip=UP)) == []
    assert delta_side({"oracle_delta_ci_low": float("nan"), "oracle_delta_ci_high": float("nan")}, "oracle") == 0


def test_a_row_is_judged_on_the_reward_it_optimised_when_that_is_evaluated():
    pickscore_up = _row(oracle=DOWN, toy_pickscore=UP, toy_clip=STRADDLE)
    assert TOY.hacked(pickscore_up | {"reward": "toy-pickscore"}) == ["toy-pickscore"]
    assert TOY.hacked(pickscore_up | {"reward": "toy-pickscore:2"}) == ["toy-pickscore"]
    assert TOY.hacked(pickscore_up | {"reward": "toy-clip"}) == []  # it optimised toy-clip, which did not gain
    assert TOY.hacked(pickscore_up | {"reward": "oracle"}) == []  # it optimised the truth itself: never judged
    assert TOY.hacked(pickscore_up | {"reward": "toy-pickscore:1,toy-clip:0.5"}) == ["toy-pickscore"]  # a sum: all
    assert TOY.judged("toy-clip") == ["toy-clip"] and TOY.judged("oracle") == [] and TOY.judged("") == list(METRICS[1:])
    assert TOY.plotted("toy-clip") == "toy-clip" and TOY.plotted("oracle") == TOY.plotted("") == "toy-pickscore"
    assert reward_scorer("toy-clip:-1") is None and reward_scorer("not-a-scorer") is None


def test_the_direction_of_each_scorer_decides_better_and_worse():
    """A lower-is-better proxy gains when its Δ CI lies below 0; a lower-is-better truth loses when its Δ lies above."""
    lower_proxy = SuiteMetrics("oracle", ("error",), {"oracle": True, "error": False})
    assert lower_proxy.hacked(_row(oracle=DOWN, error=DOWN)) == ["error"]
    assert lower_proxy.hacked(_row(oracle=DOWN, error=UP)) == []
    lower_truth = SuiteMetrics("distance", ("score",), {"distance": False, "score": True})
    assert lower_truth.hacked(_row(distance=UP, score=UP)) == ["score"]
    assert lower_truth.hacked(_row(distance=DOWN, score=UP)) == []


def _table(rows: list[tuple]) -> pd.DataFrame:
    """A comparison table: (method, reward, budget, seeds, {metric: (Δ, low, high)})."""
    return pd.DataFrame([{"suite": "s", "method": method, "reward": reward, "budget": budget, "seeds": seeds,
                          **{f"{m}_delta{end}": v for m, (d, lo, hi) in deltas.items()
                             for end, v in (("", d), ("_ci_low", lo), ("_ci_high", hi))}}
                         for method, reward, budget, seeds, deltas in rows])


def test_the_sentences_say_only_what_the_intervals_support():
    none = (math.nan, math.nan, math.nan)
    table = _table([
        ("base", "", "-", 1, {"oracle": none, "toy-pickscore": none, "toy-clip": none}),
        ("grpo", "toy-pickscore", "1nfe", 2, {"oracle": (-0.2, -0.3, -0.1), "toy-pickscore": (0.5, 0.3, 0.7),
                                              "toy-clip": (0.0, -0.1, 0.1)}),
        ("grpo", "oracle", "1nfe", 2, {"oracle": (-0.2, -0.3, -0.1), "toy-pickscore": (0.5, 0.3, 0.7),
                                       "toy-clip": (0.0, -0.1, 0.1)}),
        ("draft", "toy-pickscore", "1nfe", 2, {"oracle": (-0.1, -0.3, 0.1), "toy-pickscore": (0.5, 0.3, 0.7),
                                               "toy-clip": (0.0, -0.1, 0.1)}),
        ("dpo", "", "1nfe", 2, {"oracle": (-0.2, -0.3, -0.1), "toy-pickscore": (0.1, 0.05, 0.2),
                                "toy-clip": (2.0, 1.0, 3.0)}),
        ("kto", "", "1nfe", 2, {"oracle": (0.2, 0.1, 0.3), "toy-pickscore": (0.1, 0.05, 0.2), "toy-clip": (1.0, 0.5, 1.5)}),
    ])
    assert statements(table, TOY) == [
        "At 1nfe (2 training seeds), grpo on toy-pickscore hacks the reward it optimises: it raises toy-pickscore "
        "(Δ +0.500 [+0.300, +0.700]) over the base model while it lowers oracle, the ground truth "
        "(Δ -0.200 [-0.300, -0.100]); both 95% CIs exclude 0.",
        "At 1nfe (2 training seeds), dpo hacks the proxies toy-pickscore and toy-clip: it raises toy-pickscore "
        "(Δ +0.100 [+0.050, +0.200]) and toy-clip (Δ +2.000 [+1.000, +3.000]) over the base model while it lowers "
        "oracle, the ground truth (Δ -0.200 [-0.300, -0.100]); both 95% CIs exclude 0.",
        "At 1nfe, no detectable reward hacking in draft on toy-pickscore (toy-pickscore Δ +0.500 [+0.300, +0.700]; "
        "oracle Δ -0.100 [-0.300, +0.100]) and the offline method kto: no judged proxy's Δ CI lies on its better side "
        "of 0 while oracle's lies on its worse side."]  # grpo on oracle optimised the truth: not judged


def _record(method: str, shift, *, reward: str | None = None, seed: int | None = 0, algorithm: str | None = None,
            history: list[dict] | None = None, limit: float = 100.0) -> dict:
    """A run record of suite "s" on 8 prompts x 2 images: the base model's scores plus `shift` per metric (a number,
    or one per image)."""
    prompts = [f"p{i}" for i in range(8) for _ in range(2)]
    base = {"oracle": [1.0 + 0.1 * (i % 5) for i in range(16)], "toy-pickscore": [10.0 + 0.3 * (i % 3) for i in range(16)],
            "toy-clip": [50.0 + (i % 4) for i in range(16)]}
    scores = {m: [v + (shift.get(m, 0.0) if isinstance(shift.get(m, 0.0), float) else shift[m][i])
                  for i, v in enumerate(values)] for m, values in base.items()}
    entry = {"config": {}, "train": {}, **({"algorithm": algorithm} if algorithm else {})}
    config = {"metrics": list(METRICS), "pipeline": "/x/toy/pipeline", "methods": {method: entry},
              **({"reward": reward} if reward else {})}
    return {"kind": "alignment-run", "schema_version": 3, "suite": "s", "method": method,
            "seed": None if method == "base" else seed, "config": config,
            "budget": {"limit": limit, "unit": "nfe", "usage": {"nfe": limit}, "seconds": 1.0},
            "evaluation": {"scores": scores, "prompts": prompts, "seeds": list(range(16))},
            "scorers": {m: {"higher_is_better": True} for m in METRICS}, "metrics": {m: {} for m in METRICS},
            "training": {"history": history or []}}


def _history(val_oracle: list[float]) -> list[dict]:
    """Four optimizer steps of 25 NFE with a training reward each; a validation probe after steps 2 and 4."""
    out = []
    for step in range(1, 5):
        entry = {"step": step, "nfe": 25 * step, "loss": 0.1, "reward": 10.0 + step}
        if step % 2 == 0:
            entry.update({"val/oracle": val_oracle[step // 2 - 1], "val/toy-pickscore": 10.5 + step,
                          "val/toy-clip": 50.0})
        out.append(entry)
    return out


ALTERNATING = [0.3 if i // 2 % 2 else -0.3 for i in range(16)]  # per prompt: a Δ whose CI straddles 0


def _online_records() -> list[dict]:
    """The base model; grpo on toy-pickscore (hacks it: +1 toy-pickscore, -0.5 oracle per image), grpo on the oracle,
    dpo from the same mixed `bench run` (its record carries the run's reward, unused) and a labelled grpo."""
    return [_record("base", {}),
            _record("grpo", {"toy-pickscore": 1.0, "oracle": -0.5}, reward="toy-pickscore",
                    history=_history([1.2, 1.1])),
            _record("grpo", {"toy-pickscore": 1.0, "oracle": -0.5}, reward="toy-pickscore", seed=1,
                    history=_history([1.3, 1.0])),
            _record("grpo", {"oracle": 0.5, "toy-pickscore": 0.2}, reward="oracle", history=_history([1.2, 1.4])),
            _record("dpo", {"oracle": ALTERNATING, "toy-clip": 1.0}, reward="toy-pickscore"),
            _record("mine", {"toy-clip": 2.0}, reward="toy-clip", algorithm="grpo", history=_history([1.2, 1.2]))]


def test_rows_of_one_method_on_different_rewards_are_not_pooled():
    from bench.results.report import comparison_table, display_table, pairs_table

    records = _online_records()
    assert [row_reward(r) for r in records] == ["", "toy-pickscore", "toy-pickscore", "oracle", "", "toy-clip"]
    table = comparison_table(records, resamples=200)
    assert list(zip(table["method"], table["reward"], table["seeds"])) == [
        ("base", "", 1), ("dpo", "", 1), ("grpo", "oracle", 1), ("grpo", "toy-pickscore", 2), ("mine", "toy-clip", 1)]
    assert table[HACKING].tolist() == ["", "", "", "toy-pickscore", ""]
    shown = display_table(table, dict.fromkeys(METRICS, True), "md")
    assert list(shown.columns[:3]) == ["method", "reward", "budget"] and shown["reward"].tolist()[:2] == ["-", "-"]
    assert shown["reward hacking"].tolist() == ["-", "-", "-", "**yes: toy-pickscore**", "-"]
    pairs = pairs_table(records, resamples=200)
    assert ("grpo on oracle", "grpo on toy-pickscore") in set(zip(pairs["method_a"], pairs["method_b"]))
    assert series_label("grpo", "oracle") == "grpo on oracle" and series_label("dpo", "") == "dpo"

    offline = [r for r in records if r["method"] in ("base", "dpo")]
    for r in offline:
        r["config"].pop("reward", None)
    plain = comparison_table(offline, resamples=200)
    assert "reward" not in plain and HACKING not in plain  # an offline-only table is as before
    assert "reward" not in display_table(plain, {}, "md") and "reward hacking" not in display_table(plain, {}, "md")


def test_curve_and_scatter_data():
    from bench.results.report import comparison_table

    records = _online_records()
    curves = training_curves(records, "oracle")
    assert [c.label for c in curves] == ["grpo on oracle", "grpo on toy-pickscore", "mine on toy-clip"]
    hacking = curves[1]
    assert [run.seed for run in hacking.runs] == [0, 1]
    run = hacking.runs[0]
    assert run.nfe == [25, 50, 75, 100] and run.reward == [11.0, 12.0, 13.0, 14.0]
    assert run.val_nfe == [50, 100] and run.val_primary == [1.2, 1.1] and run.val_reward == [12.5, 14.5]
    assert curves[0].runs[0].val_reward == [1.2, 1.4]  # the reward is the oracle: its validation curve
    assert running_mean([1.0, 3.0, 5.0, 7.0], fraction=0.5) == [1.0, 2.0, 4.0, 6.0]

    table = comparison_table(records, resamples=200)
    rows = table[table["method"] != "base"].assign(method=lambda t: [series_label(m, r) for m, r in
                                                                      zip(t["method"], t["reward"])])
    points = {p["label"]: p for p in scatter_points(rows, "toy-pickscore", "oracle", TOY)}
    assert points["grpo on toy-pickscore"]["hacked"] == ["toy-pickscore"]
    assert points["grpo on toy-pickscore"]["x"] == pytest.approx(1.0) and points["grpo on toy-pickscore"]["y"] == \
        pytest.approx(-0.5)
    assert points["mine on toy-clip"]["proxy"] == "toy-clip" and points["mine on toy-clip"]["x"] == pytest.approx(2.0)
    assert points["dpo"]["proxy"] == "toy-pickscore" and points["dpo"]["hacked"] == []  # oracle CI straddles 0
    lower = SuiteMetrics("oracle", ("toy-pickscore",), {"oracle": True, "toy-pickscore": False})
    flipped = {p["label"]: p for p in scatter_points(rows, "toy-pickscore", "oracle", lower)}["grpo on oracle"]
    assert (flipped["x"], flipped["x_low"], flipped["x_high"]) == pytest.approx((-0.2, -0.2, -0.2))  # gain = -Δ


def test_figures_of_online_runs(tmp_path):
    from bench.results.leaderboard import figures_for

    names = sorted(p.name for p in figures_for(_online_records(), [], tmp_path))
    assert names == ["s-frontier.png", "s-reward-hacking.png", "s-toy-clip-vs-oracle.png",
                     "s-toy-pickscore-vs-oracle.png", "s-training-grpo-on-oracle.png",
                     "s-training-grpo-on-toy-pickscore.png", "s-training-mine-on-toy-clip.png", "s-win-rates.png"]
    assert all((tmp_path / n).stat().st_size > 1000 for n in names)
    again = tmp_path / "again"
    figures_for(_online_records(), [], again)
    assert all((again / n).read_bytes() == (tmp_path / n).read_bytes() for n in names)  # reproducible bytes

    offline = [r for r in _online_records() if r["method"] in ("base", "dpo")]
    assert sorted(p.name for p in figures_for(offline, [], tmp_path / "offline")) == [
        "s-frontier.png", "s-toy-clip-vs-oracle.png", "s-toy-pickscore-vs-oracle.png", "s-win-rates.png"]


def _write_runs(root: Path, records: list[dict]) -> Path:
    runs = root / "results" / "runs" / "s"
    runs.mkdir(parents=True)
    for r in records:
        reward = row_reward(r)
        name = "base" if r["method"] == "base" else f"{r['method']}-{reward or 'offline'}-s{r['seed']}"
        (runs / f"{name}.json").write_text(json.dumps(r))
    return root / "results"


def test_report_and_leaderboard_mark_reward_hacking(tmp_path):
    from bench.results.leaderboard import build, check
    from bench.results.tables import write_report

    results = _write_runs(tmp_path / "online", _online_records())
    written, shown = write_report([results / "runs"], tmp_path / "report", formats=("md", "csv"))
    assert {p.name for p in written} == {"table.md", "table.csv", "reward-hacking.md", "reward-hacking.csv"}
    gains = pd.read_csv(tmp_path / "report" / "reward-hacking.csv", keep_default_na=False)
    hacking = gains[gains["reward"] == "toy-pickscore"].iloc[0]
    assert (hacking["proxy"], hacking["primary"], hacking[HACKING]) == ("toy-pickscore", "oracle", "toy-pickscore")
    assert hacking["proxy_delta"] == pytest.approx(1.0) and hacking["primary_delta"] == pytest.approx(-0.5)
    assert [title for title, _ in shown][1:] == ["reward hacking: proxy and ground-truth gains vs the base model",
                                                 "s: reward hacking in words"]

    build(results)
    summary = (results / "summary.md").read_text()
    assert "### Reward hacking: proxies against oracle" in summary
    assert "grpo on toy-pickscore hacks the reward it optimises: it raises toy-pickscore (Δ +1.000 [+1.000, +1.000])" \
        in summary
    assert "no detectable reward hacking in mine on toy-clip" in summary and "the offline method dpo" in summary
    assert "grpo on oracle (1 seed; Δ +0.500" in summary  # the statements against the base model name the reward
    leaderboard = (results / "leaderboard.md").read_text()
    assert "| reward " in leaderboard and "**yes: toy-pickscore**" in leaderboard
    assert "reward hacking: proxy and oracle gains vs the base model" in leaderboard
    assert (results / "figures" / "s-reward-hacking.png").exists() and check(results) == []

    offline = [r for r in _online_records() if r["method"] in ("base", "dpo")]
    for r in offline:
        r["config"].pop("reward", None)
    plain = _write_runs(tmp_path / "offline", offline)
    build(plain)
    assert "Reward hacking" not in (plain / "summary.md").read_text()
    assert "reward" not in (plain / "leaderboard.md").read_text().split("\n\n")[2]  # the table: no new columns
    assert not list((plain / "figures").glob("*reward-hacking*")) and check(plain) == []


@pytest.mark.slow
def test_the_committed_leaderboard_is_unchanged_by_the_reward_hacking_marks():
    """No committed record optimised a reward or hacks a proxy: the committed leaderboard rebuilds byte for byte."""
    from bench.results.leaderboard import check

    assert check(Path(__file__).resolve().parent.parent / "results") == []
