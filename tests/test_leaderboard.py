"""`bench report`, `bench figures` and `bench leaderboard` on records from tiny toy runs."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.records import RecordError

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
    assert csv[0].startswith("suite,method,budget,seed,seeds,nfe,train_seconds,oracle,oracle_ci_low") and len(csv) == 6
    by_seed = runner.invoke(app, ["report", str(results / "runs"), "--group-by", "suite,budget,seed", "--out",
                                  str(tmp_path)])
    assert by_seed.exit_code == 0
    pooled = runner.invoke(app, ["report", str(results / "runs"), "--group-by", "suite,seed", "--out", str(tmp_path)])
    assert pooled.exit_code == 2 and "would pool different budgets (2steps, 3steps); add budget" in pooled.output
    bad = runner.invoke(app, ["report", str(results / "runs"), "--group-by", "colour", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "choose from suite, budget, seed" in bad.output


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
    first = {name: (results / name).read_bytes() for name in manifest["outputs"]}
    assert runner.invoke(app, ["leaderboard", "--results", str(results)]).exit_code == 0
    assert {name: (results / name).read_bytes() for name in manifest["outputs"]} == first  # identical bytes
    html = (results / "index.html").read_text()
    assert "<table>" in html and "sortTable" in html and "data:image/png;base64," in html and "http" not in html
    assert runner.invoke(app, ["leaderboard", "--results", str(results), "--check"]).exit_code == 0

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
    (results / "runs" / "toy" / "dpo-2steps-s0.json").write_text("{corrupt")
    corrupt = runner.invoke(app, ["leaderboard", "--results", str(results)])
    assert corrupt.exit_code == 2 and "dpo-2steps-s0.json is corrupt" in corrupt.output
    assert runner.invoke(app, ["leaderboard", "--results", str(results), "--skip-bad"]).exit_code == 0


def test_rows_sort_by_budget_limit_whatever_the_unit():
    from bench.report import comparison_table, display_table

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
