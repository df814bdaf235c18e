"""`execute(plan, jobs=N)`: the independent trainings of a plan (a method and seed's chain of nested budgets) in N
worker processes give the records one process gives at the same threads per run, and a killed parallel run
resumes."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from bench.core.budget import Budget
from bench.harness.run import RunSetupError, execute, plan_run
from bench.harness.suites import get_suite

COMPARED = ("metrics", "win_rate_vs_base", "delta_vs_base", "evaluation", "budget", "training")


@pytest.fixture()
def toy(tiny_toy_dir, monkeypatch):
    monkeypatch.setenv("BENCH_TOY_DIR", str(tiny_toy_dir))  # the spawned workers inherit it


def _plan(run_dir, resume=False):
    """dpo and kto at seeds 0 and 1, each trained once through 150nfe (1 step) to 300nfe (2 steps); a smaller
    evaluation (16 test prompts, 2 images each)."""
    toy = get_suite("toy")
    suite = dataclasses.replace(toy, eval=dataclasses.replace(toy.eval, images_per_prompt=2, bootstrap=200),
                                eval_prompts=toy.eval_prompts[:16])
    return plan_run(suite, ["dpo", "kto"], budgets=[Budget.parse("150nfe"), Budget.parse("300nfe")], seeds=[0, 1],
                    run_dir=run_dir, resume=resume, progress=False)


def _records(run_dir) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(run_dir.glob("*.json")) if p.name != "run.json"}


def test_two_workers_write_the_records_one_process_writes(toy, tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what each of 2 workers gets from 2 threads
    torch.set_flush_denormal(False)  # as in a fresh process (conftest flushes them; a spawned worker does not)
    try:
        serial = execute(_plan(tmp_path / "serial"))
    finally:
        torch.set_num_threads(threads)
        torch.set_flush_denormal(True)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)  # the share is 1 thread per worker on any machine
    seen = []
    parallel = execute(_plan(tmp_path / "parallel"), jobs=2, on_record=lambda path, record: seen.append(path.name))
    assert [p.name for p in parallel] == [p.name for p in serial] == [
        "base.json", *(f"{m}-{b}-s{s}.json" for b in ("150nfe", "300nfe") for s in (0, 1) for m in ("dpo", "kto"))]
    assert sorted(seen) == sorted(p.name for p in parallel)
    one, two = _records(tmp_path / "serial"), _records(tmp_path / "parallel")
    def counted(part):  # seconds differ between runs; everything counted or computed does not
        if isinstance(part, dict):
            return {k: counted(v) for k, v in part.items() if "seconds" not in k}
        if isinstance(part, list):
            return [counted(v) for v in part]
        return part


    for name in one:
        for key in COMPARED:
            if key in one[name]:
                assert json.dumps(counted(one[name][key]), sort_keys=True) == \
                       json.dumps(counted(two[name][key]), sort_keys=True), (name, key)
    assert not list((tmp_path / "parallel").glob("*.ckpt")) and not (tmp_path / "parallel" / ".lock").exists()


def test_a_parallel_run_resumes_and_refuses_bad_jobs(toy, tmp_path):
    run_dir = tmp_path / "run"
    execute(_plan(run_dir), jobs=2)
    finished = _records(run_dir)
    (run_dir / "kto-300nfe-s1.json").unlink()  # as if killed before its chain's last record landed
    (run_dir / "dpo-150nfe-s0.json").unlink()  # a smaller budget's record missing: its chain trains to it alone
    execute(_plan(run_dir, resume=True), jobs=2)
    again = _records(run_dir)
    for name in ("kto-300nfe-s1.json", "dpo-150nfe-s0.json"):
        assert again[name]["metrics"] == finished[name]["metrics"]
    for name in ("dpo-300nfe-s0.json", "kto-150nfe-s1.json"):
        assert again[name]["created"] == finished[name]["created"]  # not redone
    with pytest.raises(RunSetupError, match="--jobs must be >= 1"):
        execute(_plan(tmp_path / "other"), jobs=0)


def test_a_grid_runs_through_the_submitit_launcher(toy, tmp_path):
    """The cluster path, offline: each run a submitit job (here a local process), writing into the shared run
    directory, its log in RUN_DIR/jobs/."""
    pytest.importorskip("submitit")  # the test extra installs it
    plan = plan_run(get_suite("toy"), ["dpo"], budgets=[Budget.parse("300nfe")], seeds=[0, 1],
                    run_dir=tmp_path / "grid", progress=False)
    paths = execute(plan, launcher="submitit-local", launcher_args={"timeout_min": 10})
    assert [p.name for p in paths] == ["base.json", "dpo-300nfe-s0.json", "dpo-300nfe-s1.json"]
    records = _records(tmp_path / "grid")
    assert records["dpo-300nfe-s1.json"]["budget"]["used"] > 0 and records["dpo-300nfe-s1.json"]["seed"] == 1
    assert list((tmp_path / "grid" / "jobs").glob("*_log.out"))  # submitit's per-job logs
    with pytest.raises(RunSetupError, match="--launcher 'pbs': expected one of local, slurm, submitit-local"):
        execute(plan, launcher="pbs")
