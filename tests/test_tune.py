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
from bench.harness.run import RunSetupError
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
    small = dataclasses.replace(toy, eval=EvalConfig(images_per_prompt=1, steps=4, batch_size=8, bootstrap=50), set_metrics=(),
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


def test_a_labelled_variant_is_tuned_with_its_fixed_settings_and_shipped_under_its_label(in_tmp, monkeypatch,
                                                                                         tiny_toy_dir):
    """`bench tune --methods sdpo=dpo -a sdpo.safeguard=true -t sdpo.lr=2e-5`: every trial runs dpo with the safeguard
    at that learning rate, only β is searched, and a suite that ships the result applies it to `sdpo=dpo` alone."""
    seen = []

    def fake_trial(plan, method, params, number):
        run = plan.trial_plan(method, params, in_tmp / "trial")
        seen.append((params, run.methods["sdpo"].config, run.train_configs["sdpo"].lr, run.algorithms))
        return params["method.beta"] / 1e4, {"nfe": 10, "seconds": 1.0}

    monkeypatch.setattr(tune_module, "run_trial", fake_trial)
    result = runner.invoke(app, ["tune", "--methods", "sdpo=dpo", "-a", "sdpo.safeguard=true", "-t", "sdpo.lr=2e-5",
                                 "--trials", "3", "--no-final", "--run-dir", "out", "--export", "tuned.json", "-q"])
    assert result.exit_code == 0, result.output
    assert len(seen) == 3
    for params, config, lr, algorithms in seen:
        assert set(params) == {"method.beta"}  # the learning rate is fixed, so not searched
        assert config.safeguard is True and config.beta == params["method.beta"]
        assert lr == 2e-5 and algorithms == {"sdpo": "dpo"}
    summary = json.loads((in_tmp / "out" / "tune.json").read_text())["methods"]["sdpo"]
    assert summary["method"] == "dpo" and summary["study"].startswith("toy/sdpo/")
    best_beta = max(params["method.beta"] for params, *_ in seen)
    assert summary["best"]["method_args"] == {"safeguard": True, "beta": best_beta}
    assert summary["best"]["train_args"] == {"lr": 2e-5}

    build = in_tmp / "toy-build"
    shutil.copytree(tiny_toy_dir, build)
    shutil.copy(in_tmp / "tuned.json", build / "tuned.json")
    monkeypatch.setenv("BENCH_TOY_DIR", str(build))
    from bench.harness.run import plan_run

    shipped = get_suite("toy")
    assert shipped.variants == {"sdpo": "dpo"}
    plan = plan_run(shipped, ["sdpo=dpo", "dpo", "other=dpo"], run_dir=in_tmp / "run")
    assert plan.methods["sdpo"].config.safeguard and plan.methods["sdpo"].config.beta == best_beta
    assert plan.train_configs["sdpo"].lr == 2e-5 and plan.tuning["sdpo"]["trials"] == 3
    for label in ("dpo", "other"):  # the method itself, and another label for it, keep the method's settings
        assert not plan.methods[label].config.safeguard and plan.methods[label].config.beta != best_beta
        assert "sdpo" not in plan.tuning or plan.tuning.get(label) != plan.tuning["sdpo"]
    result = runner.invoke(app, ["tune", "--methods", "sdpo=dpo", "-a", "dpo.safeguard=true", "--run-dir", "bad"])
    assert result.exit_code == 2 and "'dpo' is not in --methods" in result.output


def test_tune_refuses_bad_requests(in_tmp):
    result = runner.invoke(app, ["tune", "--methods", "sft", "--trials", "0"])
    assert result.exit_code == 2 and "--trials must be >= 1" in result.output
    result = runner.invoke(app, ["tune", "--methods", "sft", "--objective", "oracel"])
    assert result.exit_code == 2 and "did you mean 'oracle'" in result.output
    result = runner.invoke(app, ["tune", "--methods", "sft", "--run-dir", "nowhere", "--resume"])
    assert result.exit_code == 2 and "holds no sweep" in result.output
    assert not (in_tmp / "nowhere").exists()
    result = runner.invoke(app, ["tune", "--methods", "sft", "--jobs", "0"])  # before the study is announced
    assert result.exit_code == 2 and result.output.strip() == "error: --jobs must be >= 1, got 0", result.output


def _thread_pool(monkeypatch):
    """Trials in threads of this process instead of spawned workers, so that a test's stand-in for training runs."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setattr(tune_module, "_trial_pool", lambda jobs: ThreadPoolExecutor(jobs))


def test_parallel_trials_ask_the_values_of_a_serial_sweep(in_tmp, monkeypatch):
    """With 2 jobs, TPE's start-up trials (the first half; seeded random values) run side by side and each later trial
    is asked once its method's earlier trials completed, next to the other method's trials: the same trials, values
    and best as one job. A trial interrupted in a worker is told failed after the trial beside it is told, and the
    resumed sweep reaches the same trials."""
    import threading
    import time

    lock, running, log, started, kill_at = threading.Lock(), {}, [], [], []

    def fake_trial(plan, method, params, number):
        with lock:  # log (method, trial index, the method's trials running) as a trial starts and as it ends
            running.setdefault(method, set()).add(number)
            log.append((method, number, sorted(running[method])))
            started.append(number)
            call = len(started)
        time.sleep(0.2)  # long enough for the other worker to start its trial
        with lock:
            log.append((method, number, sorted(running[method])))
            running[method].discard(number)
        if call in kill_at:
            raise KeyboardInterrupt
        return _objective(params), {"nfe": 10, "seconds": 1.0}

    monkeypatch.setattr(tune_module, "run_trial", fake_trial)
    _thread_pool(monkeypatch)
    suite = get_suite("toy")

    def plan(name, resume=False):
        return plan_tune(suite, ["sft", "kto"], trials=4, budget=Budget.parse("64samples"), objective=None,
                         run_dir=in_tmp / name, resume=resume, progress=False)

    serial = tune_module.tune_methods(plan("serial"), ["sft", "kto"])
    log.clear()
    parallel_plan = plan("parallel")
    parallel = tune_module.tune_methods(parallel_plan, ["sft", "kto"], jobs=2)
    for method in ("sft", "kto"):
        for key in ("trials", "best", "cost"):
            assert parallel[method][key] == serial[method][key], (method, key)
    startup = tune_module.startup_trials(parallel_plan)
    assert startup == 2
    assert any(len(beside) == 2 for _, _, beside in log)  # start-up trials of a method side by side
    assert all(beside == [number] for _, number, beside in log if number >= startup)  # later ones alone in their method
    assert {method for method, _, _ in log[:2]} == {"sft"}  # a method's start-up trials first, in plan order

    started.clear()
    kill_at.append(2)
    with pytest.raises(KeyboardInterrupt):
        tune_module.tune_methods(plan("killed"), ["sft", "kto"], jobs=2)
    killed = plan("killed", resume=True)
    study = optuna.load_study(study_name=killed.study_name("sft"), storage=killed.storage_url)
    states = [t.state for t in study.get_trials()]
    assert states.count(optuna.trial.TrialState.FAIL) == 1 and optuna.trial.TrialState.RUNNING not in states
    assert optuna.trial.TrialState.COMPLETE in states  # the trial beside it, told before the interrupt is raised
    kill_at.clear()
    resumed = tune_module.tune_methods(killed, ["sft", "kto"], jobs=2)
    for method in ("sft", "kto"):  # the same trials in the order of their indices; their numbers count asks
        assert len(resumed[method]["trials"]) == 4
        assert resumed[method]["trials"] == [{**t, "trial": r["trial"]} for t, r in
                                             zip(serial[method]["trials"], resumed[method]["trials"])]
    with pytest.raises(RunSetupError, match="--jobs must be >= 1"):
        tune_module.tune(plan("other"), jobs=0)


def test_a_sweep_in_worker_processes_gives_the_serial_sweeps_trials_and_finals(in_tmp, monkeypatch):
    """`tune(plan, jobs=2)`: trials and final runs in 2 spawned workers (1 thread each) give the trials, objective
    values and final records of `jobs=1` at 1 thread."""
    import torch

    toy = get_suite("toy")
    small = dataclasses.replace(toy, eval=EvalConfig(images_per_prompt=2, steps=6, batch_size=16, bootstrap=50), set_metrics=(),
                                eval_prompts=toy.eval_prompts[:8], validation_prompts=toy.validation_prompts[:8])

    def plan(name):
        return plan_tune(small, ["sft"], trials=2, budget=Budget.parse("64samples"), objective=None,
                         run_dir=in_tmp / name, final_seeds=[0], progress=False)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each of 2 workers gets from 2 threads
    torch.set_flush_denormal(False)  # as in a fresh process (conftest flushes them; a spawned worker does not)
    try:
        serial = tune_module.tune(plan("serial"))
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(True)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # the share is 1 thread per worker on any machine
    parallel = tune_module.tune(plan("parallel"), jobs=2)
    def counted(trials):  # seconds differ between runs
        return [{k: v for k, v in trial.items() if k != "seconds"} for trial in trials]

    assert counted(parallel["methods"]["sft"]["trials"]) == counted(serial["methods"]["sft"]["trials"])
    assert parallel["methods"]["sft"]["best"] == serial["methods"]["sft"]["best"]
    one = json.loads((in_tmp / "serial" / "final" / "sft-64samples-s0.json").read_text())
    two = json.loads((in_tmp / "parallel" / "final" / "sft-64samples-s0.json").read_text())
    assert one["evaluation"]["scores"] == two["evaluation"]["scores"] and one["metrics"] == two["metrics"]


def test_an_inference_time_method_is_tuned_without_a_learning_rate():
    from bench.harness.suites import get_suite
    from bench.harness.tune import trial_space

    space = trial_space(get_suite("toy"), "doodl")
    assert space and not any(key.startswith("train.") for key in space)
    assert "train.lr" in trial_space(get_suite("toy"), "dpo")


def test_tuned_values_of_an_online_method_keep_the_suites_rollout_settings(tmp_path, monkeypatch, tiny_toy_dir):
    build = tmp_path / "toy-build"
    shutil.copytree(tiny_toy_dir, build)
    (build / "tuned.json").write_text(json.dumps({"methods": {"grpo": {
        "method_args": {"clip_range": 0.01}, "train_args": {"lr": 2e-5}, "tuning": {"trials": 8}}}}))
    monkeypatch.setenv("BENCH_TOY_DIR", str(build))
    suite = get_suite("toy")
    assert suite.method_args["grpo"] == {"steps": 10, "guidance": 3.0, "group_size": 4, "clip_range": 0.01}
    assert suite.train_args["grpo"] == {"batch_size": 4, "lr": 2e-5}
