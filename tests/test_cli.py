"""The `bench` CLI end to end on a tiny toy build: errors exit 2 before any work, a run writes
records and a summary, `--resume` continues."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from bench.cli import app
from methods.alignment import METHODS

runner = CliRunner()


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch, tiny_toy_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BENCH_TOY_DIR", str(tiny_toy_dir))
    return tmp_path


@pytest.mark.parametrize("args, message", [
    (["run", "--methods", "dpo,inpoo"], f"unknown method 'inpoo'; did you mean 'inpo'? Known methods: {', '.join(METHODS)}"),
    (["run", "--budget", "lots"], "cannot parse budget 'lots'"),
    (["run", "--suite", "tyo"], "unknown suite 'tyo'; did you mean 'toy'?"),
    (["run", "--method-arg", "inpo.mode=fast"], "inpo: mode must be one of"),
    (["run", "--methods", "inpo", "--method-arg", "inpo.inversion=ddpm-ef"],
     "inpo: inversion=ddpm-ef: InPO needs a deterministic inverter; ddpm-ef's inverted latent is fresh noise"),
    (["run", "--method-arg", "dpo.betta=3"], "has no field 'betta'"),
    (["run", "--method-arg", "kto.beta=2", "--methods", "dpo"], "not in --methods"),
    (["run", "--seeds", "a,b"], "--seeds"),
    (["run", "--jobs", "0"], "--jobs must be >= 1, got 0"),
    (["run", "--launcher", "sge"], "--launcher 'sge': expected one of local, slurm, submitit-local"),
    (["run", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["run", "--resume"], "--resume needs --run-dir"),
    (["run", "--methods", "dpo", "--budget", "100nfe"], "smaller than one dpo step (128 nfe"),
    (["run", "--dtype", "fp64"], "--dtype 'fp64': expected one of fp32, fp16, bf16"),
    (["run", "--pipeline", "./nope"], "pipeline directory './nope' does not exist"),
    (["run", "--json", "."], "--json .: is a directory; give a file path"),
    (["run", "--metric-arg", "hps.version=v2.0"], "--metric-arg hps.version=v2.0: metric 'hps' is not in the toy "
                                                  "suite's metrics (oracle, toy-pickscore, toy-clip)"),
    (["run", "--hps-version", "v2.0"], "--metric-arg hps.version=v2.0: metric 'hps' is not in the toy suite's metrics"),
    (["run", "--weights", "clip=/x"], "--weights clip=...: 'clip' is not in --metrics (oracle, toy-pickscore, toy-clip)"),
    (["report", ".", "--out", "/dev/null"], "--out /dev/null: exists and is not a directory"),
    (["leaderboard", "--results", "."], "no run records or inversion results under runs; is . the results directory?"),
    (["run", "--data", "./nope.parquet"], "cannot load preference data './nope.parquet'"),  # before the base evaluation
    (["run", "--dtype", "bf16"], "dpo: --dtype bf16 holds the reference UNet in bf16, so the policy must train under "
                                 "the same autocast: add --train-arg mixed_precision=bf16 (it is 'no')"),
])
def test_bad_input_exits_2_and_writes_nothing(in_tmp, args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert "records in" not in result.output  # refused before the run is announced
    assert list(in_tmp.iterdir()) == []


def test_run_writes_records_summary_and_resumes(in_tmp):
    args = ["run", "--methods", "dpo,kto", "--budget", "300nfe", "--run-dir", "out", "--json", "summary.json", "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((in_tmp / "summary.json").read_text())
    assert summary["suite"] == "toy" and [r["method"] for r in summary["runs"]] == ["base", "dpo", "kto"]
    for run in summary["runs"]:
        assert run["budget"]["unit"] == "nfe" and run["budget"]["limit"] == (0 if run["method"] == "base" else 300)
        assert 0 <= run["budget"]["used"] <= run["budget"]["limit"]
        oracle = run["metrics"]["oracle"]
        assert oracle["ci_low"] <= oracle["mean"] <= oracle["ci_high"] and oracle["n"] == 256 and oracle["clusters"] == 64
        if run["method"] != "base":
            assert run["budget"]["used"] > 0
            assert set(run["win_rate_vs_base"]["oracle"]) == {"mean", "ci_low", "ci_high", "n", "clusters", "runs"}
            assert set(run["delta_vs_base"]["oracle"]) == {"mean", "ci_low", "ci_high", "n", "clusters", "runs"}
    record = json.loads((in_tmp / "out" / "dpo-300nfe-s0.json").read_text())
    # The tiny build ships no tuned.json: the paper's β, and no tuning provenance.
    assert record["schema_version"] == 3 and record["config"]["methods"]["dpo"]["config"]["beta"] == 5000.0
    assert record["tuning"] is None and record["config"]["eval_split"] == "test"
    assert record["splits"]["test"]["count"] == 64 and record["splits"]["overlap_with_train"] == 0
    assert len(record["evaluation"]["scores"]["oracle"]) == 256 and record["environment"]["packages"]["torch"]
    assert (in_tmp / "out" / "table.md").exists() and not list((in_tmp / "out").glob("*.ckpt"))

    again = runner.invoke(app, ["run", "--methods", "dpo,kto", "--budget", "300nfe", "--run-dir", "out", "--resume", "-q"])
    assert again.exit_code == 0, again.output
    assert json.loads((in_tmp / "out" / "dpo-300nfe-s0.json").read_text())["created"] == record["created"]  # not redone

    manifest = json.loads((in_tmp / "out" / "run.json").read_text())
    assert manifest["config"]["scorer_configs"]["toy-clip"] == {"batch_size": 256}
    before = ("dtype", "scorer_options", "scorer_configs")  # a run started before --dtype and scorer options
    older = {**manifest, "config": {k: v for k, v in manifest["config"].items() if k not in before}}
    (in_tmp / "out" / "run.json").write_text(json.dumps(older))
    assert runner.invoke(app, ["run", "--methods", "dpo,kto", "--budget", "300nfe", "--run-dir", "out", "--resume",
                               "-q"]).exit_code == 0
    base = json.loads((in_tmp / "out" / "base.json").read_text())
    base["scorers"]["toy-clip"]["weights"][0]["sha256"] = "0" * 64  # as if scored with other weights
    (in_tmp / "out" / "base.json").write_text(json.dumps(base))
    other = runner.invoke(app, ["run", "--methods", "dpo,kto", "--budget", "300nfe", "--run-dir", "out", "--resume"])
    assert other.exit_code == 2 and "--resume: the toy-clip scorer differs from the one that scored" in other.output

    clash = runner.invoke(app, ["run", "--methods", "dpo", "--budget", "300nfe", "--run-dir", "out", "-q"])
    assert clash.exit_code == 2 and "not empty" in clash.output
    changed = runner.invoke(app, ["run", "--methods", "dpo,kto", "--budget", "400nfe", "--run-dir", "out", "--resume"])
    assert changed.exit_code == 2 and "different configuration (budgets)" in " ".join(changed.output.split())


def test_list_shows_registries():
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    for name in ("dpo", "inpo", "kto", "sft", "ddim", "oracle", "toy"):
        assert name in result.output


def test_run_with_a_prompt_file(in_tmp):
    (in_tmp / "prompts.txt").write_text("a small red circle on the left, black background\n"
                                        "a large blue square in the center, gray background\n")
    result = runner.invoke(app, ["run", "--methods", "sft", "--budget", "2steps", "--prompts", "prompts.txt",
                                 "--run-dir", "out", "--json", "s.json", "-q"])
    assert result.exit_code == 0, result.output
    runs = json.loads((in_tmp / "s.json").read_text())["runs"]
    assert [r["metrics"]["oracle"]["n"] for r in runs] == [8, 8]  # 2 prompts x 4 seeds
    missing = runner.invoke(app, ["run", "--prompts", "nope.txt"])
    assert missing.exit_code == 2 and "prompt file nope.txt does not exist" in missing.output
    (in_tmp / "other.txt").write_text("a small red circle on the left, black background\n"
                                      "a small green triangle on the right, white background\n")
    outside = runner.invoke(app, ["run", "--methods", "sft", "--prompts", "other.txt", "--run-dir", "never"])
    assert outside.exit_code == 2 and not (in_tmp / "never").exists()  # refused before any work, in one line
    assert outside.output.strip().splitlines()[-1].startswith(
        "error: --prompts other.txt: the oracle scores toy-world captions only; 1 of the 2 prompts are not, e.g. "
        "'a small green triangle on the right, white background'")


def test_inpo_with_an_exact_inverter_is_recorded(in_tmp):
    (in_tmp / "p.txt").write_text("a small red circle on the left, black background\n")
    result = runner.invoke(app, ["run", "--methods", "inpo", "--method-arg", "inpo.inversion=bdia", "--budget", "2steps",
                                 "--prompts", "p.txt", "--set-metrics", "", "--run-dir", "out", "-q"])
    assert result.exit_code == 0, result.output
    record = json.loads((in_tmp / "out" / "inpo-2steps-s0.json").read_text())
    config = record["config"]["methods"]["inpo"]["config"]
    assert config["inversion"] == "bdia" and config["mode"] == "exact"
    steps = [h["inversion_steps"] for h in record["training"]["history"]]
    assert len(steps) == 2 and all(1 <= s <= 10 for s in steps)


def test_several_budgets_make_a_frontier(in_tmp):
    (in_tmp / "p.txt").write_text("a small red circle on the left, black background\n")
    result = runner.invoke(app, ["run", "--methods", "sft", "--budgets", "2steps,3steps", "--prompts", "p.txt",
                                 "--set-metrics", "", "--run-dir", "out", "-q"])
    assert result.exit_code == 0, result.output
    steps = [json.loads((in_tmp / "out" / f"sft-{b}-s0.json").read_text())["training"]["steps"]
             for b in ("2steps", "3steps")]
    assert steps == [2, 3]
    record = json.loads((in_tmp / "out" / "sft-2steps-s0.json").read_text())
    assert len(record["samples"]["png_base64"]) == 4  # min(sample_images, 1 prompt x 4 seeds)
    twice = runner.invoke(app, ["run", "--budgets", "2steps,2steps"])
    assert twice.exit_code == 2 and "listed twice" in twice.output


def test_real_scale_run_takes_scorer_weights_and_fails_on_a_wrong_path_before_writing(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    result = runner.invoke(app, ["run", "--suite", "sd15-pickapic", "--methods", "dpo", "--prompts", str(prompts),
                                 "--weights", f"pickscore={tmp_path / 'typo'}", "--hps-version", "v2.0",
                                 "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert "pickscore: weights 'yuvalkirstain/PickScore_v1 (model directory)' not found (looked in" in message
    assert "typo" in message and not (tmp_path / "run").exists()


def test_set_metrics_too_many_for_the_evaluation_set_are_refused_naming_the_way_out(in_tmp):
    (in_tmp / "p.txt").write_text("a small red circle on the left, black background\n")
    result = runner.invoke(app, ["run", "--methods", "sft", "--budget", "2steps", "--prompts", "p.txt", "-q"])
    assert result.exit_code == 2 and not (in_tmp / "runs").exists()
    assert ("prdc-toyclip with nearest_k=5 needs more than 5 images in each set, got 4 and 4 in the reference (the run "
            "evaluates 4 images of 1 prompts); evaluate more, or leave it out with --set-metrics") in " ".join(
        result.output.split())
