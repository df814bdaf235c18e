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
