"""`bench report`, `bench figures` and `bench leaderboard` on records from tiny toy runs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.core.records import RecordError

RESULTS = Path(__file__).resolve().parent.parent / "results"

runner = CliRunner()


@pytest.fixture(scope="module")
def results(tmp_path_factory, tiny_toy_dir):
    root = tmp_path_factory.mktemp("results")
    prompts = root / "p.txt"
    prompts.write_text("a small red circle on the left, black background\n"
                       "a large blue square in the center, gray background\n")
    env = {"BENCH_TOY_DIR": str(tiny_toy_dir)}
    run = runner.invoke(app, ["run", "--methods", "sft,dpo", "--budgets", "2steps,3steps", "--prompts", str(prompts),
                              "--run-dir", str(root / "runs" / "toy"), "-q"], env=env)
    assert run.exit_code == 0, run.output
    inv = runner.invoke(app, ["invert", "--samplers", "ddim,bdia", "--steps", "4", "--images", "2", "--pipeline",
                              str(tiny_toy_dir / "pipeline"), "--out", str(root / "runs" / "invert-toy"), "-q"])
    assert inv.exit_code == 0, inv.output
    return root


def test_report_tables(results, tmp_path):
    result = runner.invoke(app, ["report", str(results / "runs"), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "table.md").read_text()
    assert md.count("| sft ") == 2 and md.count("| dpo ") == 2 and "| base " in md and "**" in md
    assert "\\toprule" in (tmp_path / "table.tex").read_text()
    csv = (tmp_path / "table.csv").read_text().splitlines()
    assert csv[0].startswith("suite,method,budget,seed,seeds,nfe,train_seconds,inference_nfe_per_image,oracle,"
                             "oracle_ci_low") and len(csv) == 6
    # sampling each evaluated image: the toy suite's 20 guided steps (2 latents per step)
    assert set(pd.read_csv(tmp_path / "table.csv")["inference_nfe_per_image"]) == {40}
    assert "inference NFE / image" in md
    by_seed = runner.invoke(app, ["report", str(results / "runs"), "--group-by", "suite,budget,seed", "--out",
                                  str(tmp_path)])
    assert by_seed.exit_code == 0
    pooled = runner.invoke(app, ["report", str(results / "runs"), "--group-by", "suite,seed", "--out", str(tmp_path)])
    assert pooled.exit_code == 2 and "would pool different budgets (2steps, 3steps); add budget" in pooled.output
    bad = runner.invoke(app, ["report", str(results / "runs"), "--group-by", "colour", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "choose from suite, budget, seed" in bad.output


def test_report_pairs(results, tmp_path):
    result = runner.invoke(app, ["report", str(results / "runs"), "--pairs", "--metrics", "toy-clip", "--out",
                                 str(tmp_path)])
    assert result.exit_code == 0, result.output
    csv = (tmp_path / "pairs.csv").read_text().splitlines()
    assert csv[0] == ("suite,budget,metric,higher_is_better,method_a,method_b,seeds,seed_list,n,prompts,delta,"
                      "delta_ci_low,delta_ci_high,win,win_ci_low,win_ci_high,p_value,p_holm")
    assert len(csv) == 1 + 2 * 2  # dpo vs sft at 2 budgets, for the primary metric (oracle) and toy-clip
    assert [line.split(",")[2] for line in csv[1:]] == ["oracle", "toy-clip"] * 2
    assert "| dpo " in (tmp_path / "pairs.md").read_text() and "\\toprule" in (tmp_path / "pairs.tex").read_text()
    assert (tmp_path / "table.md").exists()


def _record(method, seed, scores, prompts=("p", "p", "q", "q"), budget=10.0):
    return {"suite": "s", "method": method, "seed": seed, "config": {"metrics": ["r"]},
            "budget": {"limit": budget, "unit": "nfe", "usage": {"nfe": 10}, "seconds": 1.0},
            "metrics": {"r": {}}, "scorers": {"r": {"higher_is_better": True}},
            "evaluation": {"scores": {"r": list(scores)}, "prompts": list(prompts), "seeds": [0, 1, 2, 3]}}


def test_an_inference_time_methods_cost_per_image_sits_beside_sampling_cost():
    from bench.results.report import comparison_table

    sampled = {**_record("dpo", 0, (1, 1, 1, 1)), "evaluation": {**_record("dpo", 0, (1, 1, 1, 1))["evaluation"],
                                                                 "nfe": 160}}
    searched = {**_record("doodl", 0, (1, 1, 1, 1)), "inference": {"nfe_per_image": 1360.0}}
    table = comparison_table([sampled, searched]).set_index("method")
    assert table.loc["dpo", "inference_nfe_per_image"] == 40.0  # 160 NFE for 4 images
    assert table.loc["doodl", "inference_nfe_per_image"] == 1360.0


def test_pairs_table_draws_enough_resamples_for_holm_over_its_rows(monkeypatch):
    """By default a table of m comparisons draws max(PAIR_RESAMPLES, 50 m) resamples, so its smallest p, 2 / (B + 1),
    times Holm's m stays below 0.05; an explicit count is used as given."""
    import bench.results.report as report

    records = [_record("base", None, (0, 0, 0, 0)), *(_record(m, 0, (i, i, 1, 1)) for i, m in enumerate(
        ("dpo", "kto", "sft", "inpo")))]  # 4 methods: m = 6 comparisons
    drawn = []
    real = report.compare_methods
    monkeypatch.setattr(report, "compare_methods", lambda *a, resamples, **k: (drawn.append(resamples),
                                                                                real(*a, resamples=resamples, **k))[1])
    monkeypatch.setattr(report, "PAIR_RESAMPLES", 100)
    table = report.pairs_table(records)
    assert len(table) == 6 and set(drawn) == {300}  # 50 x 6 > 100
    drawn.clear()
    report.pairs_table(records, resamples=40)
    assert set(drawn) == {40}


def test_pairs_table_pairs_shared_seeds_and_adjusts_over_the_table():
    from bench.core.stats import compare_methods, holm
    from bench.results.report import pairs_table

    records = [_record("base", None, (0, 0, 0, 0)),
               _record("dpo", 0, (2, 2, 1, 1)), _record("dpo", 1, (3, 3, 0, 0)),
               _record("kto", 0, (1, 1, 1, 1)), _record("kto", 1, (1, 1, 1, 1)), _record("kto", 2, (9, 9, 9, 9)),
               _record("sft", 5, (1, 1, 1, 1)),  # shares no seed with the others: not paired
               _record("dpo", 0, (5, 5, 5, 5), budget=20.0), _record("kto", 0, (5, 5, 5, 5), budget=20.0)]
    table = pairs_table(records, resamples=500)
    assert list(zip(table["budget"], table["method_a"], table["method_b"], table["seed_list"])) == [
        ("10nfe", "dpo", "kto", "0 1"), ("20nfe", "dpo", "kto", "0")]
    win, delta = compare_methods([[2, 2, 1, 1], [3, 3, 0, 0]], [[1, 1, 1, 1], [1, 1, 1, 1]], groups=["p", "p", "q", "q"],
                                 resamples=500)  # kto's seed 2 has no dpo partner
    first = table.iloc[0]
    assert (first["delta"], first["delta_ci_low"], first["delta_ci_high"], first["p_value"]) == (
        delta["mean"], delta["ci_low"], delta["ci_high"], delta["p_value"])
    assert (first["win"], first["seeds"], first["n"], first["prompts"]) == (win["mean"], 2, 4, 2)
    assert table.iloc[1]["delta"] == 0 and table.iloc[1]["p_value"] == 1.0
    assert table["p_holm"].tolist() == holm(table["p_value"].tolist())

    moved = _record("kto", 0, (1, 1, 1, 1), prompts=("q", "q", "p", "p"))
    with pytest.raises(RecordError, match="s dpo .* and s kto .* were evaluated on different prompts"):
        pairs_table([records[1], moved], resamples=50)
    clash = _record("dpo", 0, (0, 0, 0, 0))
    with pytest.raises(RecordError, match="two runs of one method, budget and seed with different scores"):
        pairs_table([records[1], clash, records[3]], resamples=50)
    assert pairs_table([records[1], records[1], records[3]], resamples=50)["seeds"].tolist() == [1]  # a copy is fine
    assert pairs_table([records[0], records[1]]).empty


def _base_table(rows):
    """A comparison table for metric r: (method, budget, seeds, Δ, Δ low, Δ high)."""
    import pandas as pd

    return pd.DataFrame([{"suite": "s", "method": "base", "budget": "-", "seeds": 1, "r": 1.0, "r_ci_low": 0.9,
                          "r_ci_high": 1.1, "r_delta": None, "r_delta_ci_low": None, "r_delta_ci_high": None}]
                        + [{"suite": "s", "method": m, "budget": b, "seeds": k, "r": 1.0 + d, "r_ci_low": 0.0,
                            "r_ci_high": 2.0, "r_delta": d, "r_delta_ci_low": lo, "r_delta_ci_high": hi}
                           for m, b, k, d, lo, hi in rows])


def test_statements_against_the_base_model_follow_the_intervals():
    from bench.results.leaderboard import base_statements, verdict_vs_base

    assert (verdict_vs_base(0.01, 0.2), verdict_vs_base(-0.2, -0.01)) == ("raises", "lowers")
    assert verdict_vs_base(0.0, 0.2) == verdict_vs_base(-0.1, 0.1) == "no detectable difference"  # 0 in the CI
    table = _base_table([("dpo", "1nfe", 3, 0.2, 0.1, 0.3), ("kto", "1nfe", 3, -0.2, -0.3, -0.1),
                         ("sft", "1nfe", 3, 0.15, -0.05, 0.35), ("mapo", "1nfe", 3, 0.1, 0.0, 0.2),
                         ("dpo", "2nfe", 1, 0.5, 0.4, 0.6), ("kto", "2nfe", 1, 0.1, 0.01, 0.2),
                         ("dpo", "3nfe", 2, 0.02, -0.01, 0.05), ("kto", "3nfe", 1, -0.02, -0.05, 0.01)])
    assert base_statements(table, "r") == [
        "At 1nfe (3 training seeds each), dpo (Δ +0.200 [+0.100, +0.300]) raises r over the base model; kto "
        "(Δ -0.200 [-0.300, -0.100]) lowers it below the base model; sft (Δ +0.150 [-0.050, +0.350]) and mapo "
        "(Δ +0.100 [+0.000, +0.200]) show no detectable difference from the base model.",
        "At 2nfe (1 training seed each), every method raises r over the base model: dpo (Δ +0.500 [+0.400, +0.600]) "
        "and kto (Δ +0.100 [+0.010, +0.200]).",
        "At 3nfe (training seeds as noted), no method shows a detectable difference from the base model in r: dpo "
        "(2 seeds; Δ +0.020 [-0.010, +0.050]) and kto (1 seed; Δ -0.020 [-0.050, +0.010])."]
    assert base_statements(table, "other") == []


def _pairs(rows, higher=True):
    import pandas as pd

    return pd.DataFrame([{"suite": "s", "budget": "1nfe", "metric": "r", "higher_is_better": higher, "method_a": a,
                          "method_b": b, "seeds": 3, "delta": d, "delta_ci_low": lo, "delta_ci_high": hi,
                          "p_holm": p} for a, b, d, lo, hi, p in rows])


def test_statements_between_methods_need_a_holm_adjusted_p_below_005():
    from bench.results.leaderboard import pair_statements

    rows = [("dpo", "inpo", -0.3, -0.4, -0.2, 0.01),   # inpo higher: named first, Δ inpo − dpo
            ("dpo", "kto", 0.2, 0.1, 0.3, 0.049),      # dpo higher
            ("dpo", "sft", 0.25, 0.05, 0.45, 0.02),
            ("inpo", "kto", 0.1, 0.01, 0.2, 0.05),     # CI excludes 0 but p_Holm = 0.05: not below 0.05
            ("kto", "sft", 0.0, -0.1, 0.1, 1.0)]
    assert pair_statements(_pairs(rows), "r") == [
        "At 1nfe (3 shared training seeds), dpo has a higher r than sft (Δ +0.250 [+0.050, +0.450], p_Holm = 0.02) and "
        "kto (Δ +0.200 [+0.100, +0.300], p_Holm = 0.049).",
        "At 1nfe (3 shared training seeds), inpo has a higher r than dpo (Δ +0.300 [+0.200, +0.400], p_Holm = 0.01).",
        "At 1nfe, no detectable difference in r (p_Holm ≥ 0.05) between inpo and kto (Δ +0.100 [+0.010, +0.200], "
        "p_Holm = 0.05); kto and sft (Δ +0.000 [-0.100, +0.100], p_Holm = 1)."]
    # lower is better: the lower one is named first and "has a lower r"
    assert pair_statements(_pairs(rows[:1], higher=False), "r") == [
        "At 1nfe (3 shared training seeds), dpo has a lower r than inpo (Δ -0.300 [-0.400, -0.200], p_Holm = 0.01)."]
    assert pair_statements(_pairs(rows), "other") == []


def test_figures(results, tmp_path):
    result = runner.invoke(app, ["figures", str(results / "runs"), "--out", str(tmp_path), "--format", "pdf"])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["inversion-invert-toy-error-vs-nfe.pdf", "inversion-invert-toy-time.pdf", "toy-frontier.pdf",
                     "toy-samples.pdf", "toy-toy-clip-vs-oracle.pdf", "toy-toy-pickscore-vs-oracle.pdf",
                     "toy-win-rates.pdf"]
    assert all(b"CreationDate" not in (tmp_path / n).read_bytes() for n in names)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "invert.json").write_text("{")
    broken = runner.invoke(app, ["figures", str(tmp_path / "broken"), "--out", str(tmp_path / "f")])
    assert broken.exit_code == 2 and "invert.json is corrupt" in broken.output, broken.output


def test_leaderboard_is_reproducible_and_check_names_a_deleted_record(results):
    built = runner.invoke(app, ["leaderboard", "--results", str(results)])
    assert built.exit_code == 0, built.output
    manifest = json.loads((results / "leaderboard.json").read_text())
    assert len(manifest["records"]) == 6  # base + 2 methods x 2 budgets + the inversion result
    # the toy's set metrics (FD, PRDC, Vendi in the toy CLIP's space) pooled over seeds, beside the per-image table
    assert "leaderboard-sets.csv" in manifest["outputs"]
    assert "distribution and diversity (set metrics)" in (results / "leaderboard.md").read_text()
    sets = pd.read_csv(results / "leaderboard-sets.csv")
    assert list(sets["method"]) == ["base", "dpo", "sft", "dpo", "sft"] and "vendi-toyclip/vendi_delta_ci_low" in sets
    first = {name: (results / name).read_bytes() for name in manifest["outputs"]}
    assert runner.invoke(app, ["leaderboard", "--results", str(results)]).exit_code == 0
    assert {name: (results / name).read_bytes() for name in manifest["outputs"]} == first  # identical bytes
    html = (results / "index.html").read_text()
    assert "<table>" in html and "sortTable" in html and "data:image/png;base64," in html and "http" not in html
    assert runner.invoke(app, ["leaderboard", "--results", str(results), "--check"]).exit_code == 0
    summary = (results / "summary.md").read_text()
    assert "summary.md" in manifest["outputs"] and "## Suite `toy`" in summary and "p_Holm" in summary
    (results / "summary.md").write_text(summary.replace("raise", "lift"))  # edited by hand
    edited = runner.invoke(app, ["leaderboard", "--results", str(results), "--check"])
    assert edited.exit_code == 1 and "output summary.md is stale" in edited.output
    (results / "summary.md").write_text(summary)

    victim = results / "runs" / "toy" / "dpo-3steps-s0.json"
    saved = victim.read_bytes()
    victim.unlink()
    stale = runner.invoke(app, ["leaderboard", "--results", str(results), "--check"])
    victim.write_bytes(saved)
    assert stale.exit_code == 1
    assert "record runs/toy/dpo-3steps-s0.json is in the leaderboard but missing" in stale.output
    assert runner.invoke(app, ["leaderboard", "--results", str(results), "--check"]).exit_code == 0
    orphan = results / "figures" / "old-suite-frontier.png"  # e.g. left from a suite whose records were removed
    orphan.write_bytes(b"not a figure of these records")
    extra = runner.invoke(app, ["leaderboard", "--results", str(results), "--check"])
    assert extra.exit_code == 1 and "output figures/old-suite-frontier.png is not produced by a rebuild" in extra.output
    assert runner.invoke(app, ["leaderboard", "--results", str(results)]).exit_code == 0 and not orphan.exists()
    damaged = results / "runs" / "toy" / "dpo-2steps-s0.json"
    saved = damaged.read_bytes()
    damaged.write_text("{corrupt")
    corrupt = runner.invoke(app, ["leaderboard", "--results", str(results)])
    skipped = runner.invoke(app, ["leaderboard", "--results", str(results), "--skip-bad"])
    damaged.write_bytes(saved)  # the module's other tests share these records
    assert corrupt.exit_code == 2 and "dpo-2steps-s0.json is corrupt" in corrupt.output
    assert skipped.exit_code == 0
    assert runner.invoke(app, ["leaderboard", "--results", str(results)]).exit_code == 0


def test_rows_sort_by_budget_limit_whatever_the_unit():
    from bench.results.report import comparison_table, display_table

    def record(method, limit, unit="gpu-h", scores=(1.0, 2.0, 3.0)):
        return {"suite": "s", "method": method, "seed": None if method == "base" else 0,
                "budget": {"limit": limit, "unit": unit, "usage": {"nfe": 10}, "seconds": 1.0},
                "metrics": {"r": {}}, "scorers": {"r": {"higher_is_better": True}},
                "evaluation": {"scores": {"r": list(scores)}, "prompts": ["p", "p", "q"], "seeds": [0, 1, 2]}}

    table = comparison_table([record("dpo", 12.0, scores=(2, 3, 4)), record("base", 0), record("dpo", 1.5),
                              record("kto", 1.5)], resamples=10)
    assert list(zip(table["method"], table["budget"])) == [("base", "-"), ("dpo", "1.5gpu-h"), ("kto", "1.5gpu-h"),
                                                          ("dpo", "12gpu-h")]
    assert table["r_delta"].tolist()[1:] == [0.0, 0.0, 1.0]
    per_seed = comparison_table([record("base", 0), record("dpo", 1.5)], group_by=("suite", "budget", "seed"),
                                resamples=10)
    assert display_table(per_seed, {"r": True}, "plain")["seed"].tolist() == ["-", "0"]  # not 'nan' and '0.0'

    other_prompts = record("dpo", 1.5)
    other_prompts["evaluation"]["prompts"] = ["q", "p", "p"]
    with pytest.raises(RecordError, match="s dpo .* and s base .* were evaluated on different prompts"):
        comparison_table([record("base", 0), other_prompts], resamples=10)
    with pytest.raises(RecordError, match="two base-model evaluations of suite 's' with different scores"):
        comparison_table([record("base", 0), record("base", 0, scores=(1.0, 2.0, 3.5)), record("dpo", 1.5)])
    assert len(comparison_table([record("base", 0), record("base", 0), record("dpo", 1.5)], resamples=10)) == 2


def test_leaderboard_without_records_touches_nothing_and_stray_json_is_passed_over(results, tmp_path):
    wrong = tmp_path / "not-results"
    (wrong / "figures").mkdir(parents=True)
    (wrong / "figures" / "mine.png").write_bytes(b"someone's figure")
    (wrong / "leaderboard.md").write_text("mine")
    empty = runner.invoke(app, ["leaderboard", "--results", str(wrong)])
    assert empty.exit_code == 2 and "no run records or inversion results under" in empty.output
    assert (wrong / "figures" / "mine.png").exists() and (wrong / "leaderboard.md").read_text() == "mine"

    runs = tmp_path / "runs"
    runs.mkdir()
    for name in ("base.json", "dpo-3steps-s0.json"):
        (runs / name).write_bytes((results / "runs" / "toy" / name).read_bytes())
    (runs / "summary.json").write_text(json.dumps({"suite": "toy", "runs": []}))  # a `bench run --json` summary
    report = runner.invoke(app, ["report", str(runs), "--out", str(tmp_path / "t")])
    assert report.exit_code == 0, report.output
    assert "| dpo " in (tmp_path / "t" / "table.md").read_text()


def test_the_readme_results_block_is_the_generated_summary(results, tmp_path):
    import shutil

    from bench.results.leaderboard import README_END, README_START, readme_block

    root = tmp_path / "project"
    shutil.copytree(results, root / "results")
    readme = root / "README.md"
    readme.write_text(f"# Title\n\nhand-written text\n\n{README_START}\nold claim: every method wins\n{README_END}\n\ntail\n")
    built = runner.invoke(app, ["leaderboard", "--results", str(root / "results")])
    assert built.exit_code == 0, built.output
    text = readme.read_text()
    assert text.startswith("# Title\n\nhand-written text\n\n") and text.endswith(f"{README_END}\n\ntail\n")
    block = readme_block(readme)
    assert "old claim" not in block and block.startswith("###")  # summary.md's "# ..." heading, two levels down
    summary = (root / "results" / "summary.md").read_text()
    assert [line for line in block.splitlines() if not line.startswith("#")] == \
        [line for line in summary.strip().splitlines() if not line.startswith("#")]
    assert runner.invoke(app, ["leaderboard", "--check", "--results", str(root / "results")]).exit_code == 0

    readme.write_text(text.replace(block.splitlines()[-1], "every method raises the oracle"))
    check = runner.invoke(app, ["leaderboard", "--check", "--results", str(root / "results")])
    assert check.exit_code != 0 and "generated results block differs" in " ".join(check.output.split())


def test_a_labelled_run_is_described_by_how_it_differs_from_its_method():
    """The β-matched ablation's row says what it is: the labelled run's method and the settings that differ from
    that method's own row (and every method setting when the method has no row)."""
    from bench.results.leaderboard import variant_statements

    def record(method, entry):
        return {"method": method, "config": {"methods": {method: entry}}}

    tuned = {"config": {"beta": 24.08, "gamma": 0.845}, "train": {"lr": 1.4e-5, "batch_size": 16}}
    ablated = {"algorithm": "dpo-gamma-t", "config": {"beta": 24.08, "gamma": 1.0}, "train": {"lr": 1.4e-5, "batch_size": 16}}
    both = [record("dpo-gamma-t", tuned), record("uniform-t", ablated), record("base", None)]
    assert variant_statements(both) == [
        "uniform-t runs dpo-gamma-t with gamma = 1 (dpo-gamma-t: 0.845); dpo-gamma-t's row uses the same settings "
        "otherwise."]
    assert variant_statements([record("uniform-t", ablated)]) == ["uniform-t runs dpo-gamma-t with beta = 24.1, gamma = 1."]
    assert variant_statements([record("dpo-gamma-t", tuned)]) == []


def test_report_by_a_papers_protocol(tmp_path):
    """`bench report --protocol imagereward` gives each run's mean of per-prompt means with a CI over prompts (equal k:
    the mean over images); kto-median-of-k refuses an even k with a one-line error (exit 2)."""
    import pandas as pd

    runner = CliRunner()
    out = tmp_path / "report"
    result = runner.invoke(app, ["report", str(RESULTS / "runs" / "toy"), "--protocol", "imagereward",
                                 "--out", str(out), "--format", "csv"])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "protocol-imagereward-oracle.csv")
    dpo = json.loads((RESULTS / "runs" / "toy" / "dpo-40000nfe-s0.json").read_text())
    row = table[(table["method"] == "dpo") & (table["seed"] == 0) & (table["budget"] == "40000nfe")].iloc[0]
    scores = dpo["evaluation"]["scores"]["oracle"]
    assert row["oracle_imagereward"] == pytest.approx(sum(scores) / len(scores), rel=1e-5)
    assert row["ci_low"] < row["oracle_imagereward"] < row["ci_high"] and row["prompts"] == 64
    even = runner.invoke(app, ["report", str(RESULTS / "runs" / "toy"), "--protocol", "kto-median-of-k",
                               "--out", str(tmp_path / "k")])
    assert even.exit_code == 2 and "needs an odd number of images per prompt" in even.output


def _page_data(html: str) -> dict:
    """The JSON document `index.html` embeds (everything its script shows)."""
    opening = '<script type="application/json" id="page-data">'
    start = html.index(opening) + len(opening)
    return json.loads(html[start:html.index("</script>", start)])


def test_the_page_embeds_its_numbers_and_reaches_nothing_outside(results):
    """index.html carries every row, method-vs-method pair, record and image it shows as one JSON document, with the
    statistics of `comparison_table` and `pairs_table` (the script computes none), and loads nothing from a network."""
    import re

    from bench.results.page import ci_sign
    from bench.results.report import find_records, load_records, pairs_table

    assert runner.invoke(app, ["leaderboard", "--results", str(results)]).exit_code == 0
    html = (results / "index.html").read_text()
    data = _page_data(html)
    assert sorted((r["budget"], r["method"]) for r in data["rows"]) == [
        ("-", "base"), ("2steps", "dpo"), ("2steps", "sft"), ("3steps", "dpo"), ("3steps", "sft")]
    assert {r["kind"] for r in data["rows"] if r["method"] != "base"} == {"offline"}
    for row in data["rows"]:
        for path in row["runs"]:
            assert (results / path).is_file() and data["runs"][path]["path"] == path  # the detail view's link
    dpo = next(r for r in data["rows"] if r["id"] == "toy/3steps/dpo")
    cell = dpo["m"]["oracle"]
    assert cell["lo"] <= cell["mean"] <= cell["hi"] and cell["sig"] == ci_sign(cell["dlo"], cell["dhi"])
    run = data["runs"][dpo["runs"][0]]
    assert run["curve"] and run["budget"]["unit"] == "steps" and run["settings"]
    base = data["runs"][next(r for r in data["rows"] if r["method"] == "base")["runs"][0]]
    assert [s["i"] for s in run["samples"]] == [s["i"] for s in base["samples"]] and run["samples"][0]["png"]
    assert [s["prompt"] for s in run["samples"]] == [s["prompt"] for s in base["samples"]]

    records = [r for _, r in load_records(find_records([results / "runs"]))]
    suite = data["suites"][0]
    metrics = [m["name"] for m in suite["metrics"]]
    assert metrics[0] == suite["primary"] == "oracle"
    assert set(suite["pairs"]["2steps"]) == set(metrics)  # Δ vs a chosen method, on every metric
    primary = pairs_table(records).iloc[0]  # the leaderboard's: Holm over the suite's primary comparisons
    pair = suite["pairs"][primary["budget"]]["oracle"][primary["method_a"]][primary["method_b"]]
    assert pair["d"] == pytest.approx(primary["delta"], rel=1e-5)
    assert pair["p_holm"] == pytest.approx(primary["p_holm"], rel=1e-5)
    other = pairs_table(records, metrics=["toy-clip"]).iloc[-1]
    assert "p_holm" not in suite["pairs"][other["budget"]]["toy-clip"][other["method_a"]][other["method_b"]]
    assert [i["name"] for i in data["inversions"]] == ["invert-toy"] and len(data["inversions"][0]["points"]) >= 2

    assert not re.search(r"""(?:src|href|action|xlink:href)\s*=\s*["']?\s*(?:[a-z]+:)?//""", html, re.I)
    assert not re.search(r"""url\(\s*["']?\s*(?:[a-z]+:)?//|@import|<link\b|<script[^>]*\bsrc\s*=""", html, re.I)
    assert "fetch(" not in html and "XMLHttpRequest" not in html


def test_method_kind_model_family_and_training_curve(monkeypatch):
    from bench.results.page import markdown_html, method_kind, model_family, training_curve
    from methods.alignment import METHODS

    assert method_kind("dpo") == method_kind("not-a-method") == "offline"  # the default kind; an unknown method
    monkeypatch.setattr(METHODS.get("kto"), "kind", "online", raising=False)
    assert method_kind("kto") == "online"
    assert model_family("stabilityai/stable-diffusion-xl-base-1.0") == "SDXL"
    assert model_family("stable-diffusion-v1-5/stable-diffusion-v1-5") == "SD 1.x"
    assert model_family("/work/main/bench/toy/assets/pipeline") == "toy"
    assert model_family("/models/my-net/pipeline") == "my-net"

    curve = training_curve([{"step": s, "loss": 1.0 / s} for s in range(1, 1001)], points=50)
    assert len(curve) == 50 and curve[0] == [1, 1.0] and curve[-1] == [1000, 0.001]
    assert training_curve([{"step": 1, "lr": 0.1}]) == []  # no loss logged

    assert markdown_html("# T\n\n- a **b** `c`\n- *d*\n\ntext") == (
        "<h2>T</h2>\n<ul><li>a <strong>b</strong> <code>c</code></li><li><em>d</em></li></ul>\n<p>text</p>")
