"""Slow end-to-end checks on the shipped toy build (tox -e slow): the README's run meets the
acceptance criterion, and a run killed with SIGKILL resumes to the same numbers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bench.toy.world import split_combos

pytestmark = pytest.mark.slow

BENCH = [sys.executable, "-m", "bench.cli"]


def _run(args, cwd, **kwargs):
    return subprocess.run(BENCH + args, cwd=cwd, capture_output=True, text=True, timeout=1800, **kwargs)


def test_default_run_beats_base_on_the_oracle(tmp_path):
    started = time.perf_counter()
    result = _run(["run", "--methods", "dpo,inpo,kto", "--json", "summary.json", "-q"], tmp_path)
    wall = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-2000:]
    print(f"bench run --methods dpo,inpo,kto: {wall:.0f} s wall")
    runs = json.loads((tmp_path / "summary.json").read_text())["runs"]
    assert [r["method"] for r in runs] == ["base", "dpo", "inpo", "kto"]
    limits = {r["budget"]["limit"] for r in runs[1:]}
    assert len(limits) == 1 and runs[0]["budget"]["used"] == 0
    for r in runs[1:]:
        assert 0 < r["budget"]["used"] <= r["budget"]["limit"]
        assert r["metrics"]["oracle"]["n"] >= 256
    winners = [r["method"] for r in runs[1:]
               if r["win_rate_vs_base"]["oracle"]["ci_low"] > 0.5 and r["delta_vs_base"]["oracle"]["ci_low"] > 0]
    assert winners, json.dumps(runs, indent=1)


def test_sigkill_then_resume_gives_the_uninterrupted_numbers(tmp_path):
    args = ["run", "--methods", "dpo", "--budget", "8e3nfe", "-q"]
    reference = _run(args + ["--run-dir", "whole"], tmp_path)
    assert reference.returncode == 0, reference.stderr[-2000:]

    proc = subprocess.Popen(BENCH + args + ["--run-dir", "killed"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = tmp_path / "killed" / "dpo-8000nfe-s0.ckpt"
    deadline = time.time() + 600
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert ckpt.exists(), "the run finished or failed before writing a checkpoint"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "dpo-8000nfe-s0.json").exists()

    resumed = _run(args + ["--run-dir", "killed", "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = json.loads((tmp_path / "whole" / "dpo-8000nfe-s0.json").read_text())
    b = json.loads((tmp_path / "killed" / "dpo-8000nfe-s0.json").read_text())
    assert a["evaluation"]["scores"] == b["evaluation"]["scores"]
    assert a["metrics"] == b["metrics"] and a["budget"]["usage"]["nfe"] == b["budget"]["usage"]["nfe"]
    assert [h["loss"] for h in a["training"]["history"]] == [h["loss"] for h in b["training"]["history"]]


def _one_and_two_processes(tmp_path, common: list[str], batch: int, env: dict) -> subprocess.CompletedProcess:
    """`bench run COMMON` in one process at batch 2·`batch` (run dir "one") and under torchrun with 2 CPU processes
    at `batch` each ("two"): the same global batch."""
    one = _run(common + ["--train-arg", f"batch_size={2 * batch}", "--run-dir", "one"], tmp_path, env=env)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "bench.cli", *common, "--train-arg", f"batch_size={batch}", "--run-dir", "two"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=1800, env=env)
    assert two.returncode == 0, two.stderr[-2000:]
    return two


def test_two_processes_equal_one_process_for_the_same_global_batch(tmp_path):
    """torchrun with 2 CPU processes (gloo) and batch 8 each vs 1 process with batch 16: the same draws
    (made for the global batch, then sharded), all-reduced gradients, evaluation sharded and gathered.
    KTO (a global reference point z0) and InPO (DDIM inversion with faithful noise) exercise the
    shard-aware draws beyond DPO's. Tolerance: float32 reductions summed in a different order."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["run", "--methods", "dpo,kto,inpo", "--budget", "12steps", "-q"]
    two = _one_and_two_processes(tmp_path, common, 8, env)
    assert two.stdout.count("oracle win rate vs base") == 1  # one process reports
    assert json.loads((tmp_path / "two" / "run.json").read_text())["processes"] == 2
    for method in ("dpo", "kto", "inpo"):
        a = json.loads((tmp_path / "one" / f"{method}-12steps-s0.json").read_text())
        b = json.loads((tmp_path / "two" / f"{method}-12steps-s0.json").read_text())
        assert (a["training"]["processes"], b["training"]["processes"]) == (1, 2)
        assert a["budget"]["usage"]["nfe"] == b["budget"]["usage"]["nfe"] > 0
        assert a["budget"]["usage"]["samples"] == b["budget"]["usage"]["samples"]
        for log_a, log_b in zip(a["training"]["history"], b["training"]["history"], strict=True):
            assert log_b["loss"] == pytest.approx(log_a["loss"], rel=1e-4, abs=1e-6), method
        sa, sb = a["evaluation"]["scores"]["oracle"], b["evaluation"]["scores"]["oracle"]
        assert len(sa) == len(sb) == 256
        assert max(abs(x - y) for x, y in zip(sa, sb)) < 1e-4, method


def test_online_methods_in_two_processes_equal_one_process(tmp_path):
    """Online methods under torchrun with 2 CPU processes of 2 prompts per collection vs 1 process of 4: prompts drawn
    for the global collection and sharded with their whole groups, every draw (initial and step noise, trained-step
    orders, dense reward's tie-breaks, pairs and steps) made for the global batch, advantages over the gathered
    collection (GRPO's groups, DDPO's per-prompt buffers), gradients all-reduced: the same training and scores.
    Evaluation on 4 test prompts. Tolerance: float32 reductions summed in a different order."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"{caption}\n" for caption in split_combos().captions("test")[:4]))
    methods = ("grpo", "ddpo", "dense-reward", "draft")
    common = ["run", "--methods", ",".join(methods), "--budget", "3steps", "--prompts", str(prompts),
              "--set-metrics", "", "--curve-every", "0", "-q"]
    _one_and_two_processes(tmp_path, common, 2, env)
    for method in methods:
        a = json.loads((tmp_path / "one" / f"{method}-3steps-s0.json").read_text())
        b = json.loads((tmp_path / "two" / f"{method}-3steps-s0.json").read_text())
        assert (a["training"]["processes"], b["training"]["processes"]) == (1, 2)
        assert a["budget"]["usage"]["nfe"] == b["budget"]["usage"]["nfe"] > 0, method
        assert a["budget"]["usage"]["samples"] == b["budget"]["usage"]["samples"] > 0, method
        for log_a, log_b in zip(a["training"]["history"], b["training"]["history"], strict=True):
            assert log_b["reward_images"] == log_a["reward_images"], method
            for key in ("loss", "reward"):
                assert log_b[key] == pytest.approx(log_a[key], rel=1e-4, abs=1e-6), (method, key)
        sa, sb = a["evaluation"]["scores"]["oracle"], b["evaluation"]["scores"]["oracle"]
        assert len(sa) == len(sb) == 16
        assert max(abs(x - y) for x, y in zip(sa, sb)) < 1e-4, method