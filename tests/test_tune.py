"""`bench tune`: trials on validation prompts, finals on test prompts, a killed sweep resumes to the same trials,
and a suite ships the chosen settings."""

from __future__ import annotations

import dataclasses
import json
import shutil

import optuna
import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.core.budget import Budget
from bench.core.config import EvalConfig
from bench.core.search_space import FloatRange
from bench.harness import tune as tune_module
from bench.harness.suites import SUITES, get_suite
from bench.harness.tune import plan_tune, trial_space, tune_method
from bench.toy.world import split_combos

runner = CliRunner()


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch, tiny_toy_dir):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BENCH_TOY_DIR", str(tiny_toy_dir))
    return tmp_path


def test_trial_space_takes_declared_ranges_and_the_suite_replaces_them(in_tmp):
    suite = get_suite("toy")
    space = trial_space(suite, "sft")
    assert space == {"train.lr": FloatRange(1e-5, 3e-4, log=True)}  # the toy suite's range replaces TrainConfig's
    wide = trial_space(dataclasses.replace(suite, search={}), "sft")
    assert wide == {"train.lr": FloatRange(1e-7, 1e-3, log=True)}
    narrowed = dataclasses.replace(suite, search={"sft.nonexistent": FloatRange(1, 2), "dpo.x": FloatRange(1, 2)})
    assert "method.x" not in trial_space(narrowed, "sft")  # another method's range does not leak


def _objective(params: dict) -> float:
    """A smooth function of the trial's values with its maximum inside the range (stands in for training)."""
    lr = params["train.lr"]
    return -((lr - 8e-5) / 1e-4) ** 2


def test_a_killed_sweep_resumes_to_the_same_trials(in_tmp, monkeypatch):
    calls, kill_at = [], []

    def fake_trial(plan, method, params, number):
        calls.append(params)
        if len(calls) in kill_at:
            raise KeyboardInterrupt  # the user stops the sweep in the middle of a trial
        return _objective(params), {"nfe": 10, "seconds": 1.0}

    monkeypatch.setattr(tune_module, "run_trial", fake_trial)
    suite = get_suite("toy")

    def plan(name, resume=False):
        return plan_tune(suite, ["sft"], trials=6, budget=Budget.parse("64samples"), objective=None,
                         run_dir=in_tmp / name, resume=resume, progress=False)

    uninterrupted = tune_method(plan("whole"), "sft")

    calls.clear()
    kill_at.append(4)
    with pytest.raises(KeyboardInterrupt):
        tune_method(plan("killed"), "sft")
    killed = plan("killed", resume=True)
    study = optuna.load_study(study_name=killed.study_name("sft"), storage=killed.storage_url)
    study.ask()  # and a process that died by SIGKILL leaves a trial RUNNING, never told
    after = tune_method(killed, "sft")

    assert [t["params"] for t in after["trials"]] == [t["params"] for t in uninterrupted["trials"]]
    assert after["best"]["params"] == uninterrupted["best"]["params"]
    assert after["cost"] == uninterrupted["cost"] == {"trials": 6, "budget_per_trial": "64samples", "nfe": 60,
                                                      "seconds": 6.0}
    states = [t.state for t in study.get_trials()]
    assert states.count(optuna.trial.TrialState.FAIL) == 2  # the interrupted trial and the orphan
    assert after["best"]["value"] == max(_objective(t["params"]) for t in after["trials"])


def test_tune_trials_on_validation_then_finals_on_test_and_exports_suite_settings(in_tmp, monkeypatch, tiny_toy_dir):
    # Small evaluation: 4 validation prompts and 4 test prompts, one image each, 4 sampling steps.
    toy = get_suite("toy")
    small = dataclasses.replace(toy, eval=EvalConfig(images_per_prompt=1, steps=4, batch_size=8, bootstrap=50),
                                eval_prompts=toy.eval_prompts[:4], validation_prompts=toy.validation_prompts[:4])
    with monkeypatch.context() as patch:
        patch.setitem(SUITES._items, "toy", lambda: small)
        result = runner.invoke(app, ["tune", "--methods", "sft", "--trials", "2", "--budget", "64samples",
                                     "--final-seeds", "0,1", "--run-dir", "out", "--export", "tuned.json", "-q"])
    assert result.exit_code == 0, result.output
    out = in_tmp / "out"
    summary = json.loads((out / "tune.json").read_text())["methods"]["sft"]
    assert summary["cost"]["trials"] == 2 and len(summary["trials"]) == 2
    validation = split_combos().captions("validation")[:4]
    for trial in summary["trials"]:
        record = json.loads((out / trial["record"]).read_text())
        assert record["config"]["eval_split"] == "validation"
        assert record["config"]["eval_prompts"] == validation
        assert record["config"]["methods"]["sft"]["train"]["lr"] == trial["params"]["train.lr"]
        assert record["splits"]["overlap_with_train"] == 0
    assert summary["best"]["value"] == max(t["value"] for t in summary["trials"])
    for seed in (0, 1):
        final = json.loads((out / "final" / f"sft-64samples-s{seed}.json").read_text())
        assert final["config"]["eval_split"] == "test" and final["config"]["eval_prompts"] == list(small.eval_prompts)
        assert final["config"]["methods"]["sft"]["train"]["lr"] == summary["best"]["params"]["train.lr"]
        assert final["tuning"]["trials"] == 2 and final["tuning"]["split"] == "validation"
        assert final["tuning"]["nfe"] == summary["cost"]["nfe"] > 0
        assert final["splits"]["test"]["count"] == 4

    # A toy build that ships the exported file runs the tuned settings and records where they came from.
    build = in_tmp / "toy-build"
    shutil.copytree(tiny_toy_dir, build)
    shutil.copy(in_tmp / "tuned.json", build / "tuned.json")
    monkeypatch.setenv("BENCH_TOY_DIR", str(build))
    shipped = get_suite("toy")
    assert shipped.train_args["sft"]["lr"] == summary["best"]["params"]["train.lr"]
    assert shipped.train_args["sft"]["batch_size"] == 32
    assert shipped.tuning["sft"]["trials"] == 2


def test_tune_refuses_bad_requests(in_tmp):
    result = runner.invoke(app, ["tune", "--methods", "sft", "--trials", "0"])
    assert result.exit_code == 2 and "--trials must be >= 1" in result.output
    result = runner.invoke(app, ["tune", "--methods", "sft", "--objective", "oracel"])
    assert result.exit_code == 2 and "did you mean 'oracle'" in result.output
    result = runner.invoke(app, ["tune", "--methods", "sft", "--run-dir", "nowhere", "--resume"])
    assert result.exit_code == 2 and "holds no sweep" in result.output
    assert not (in_tmp / "nowhere").exists()
