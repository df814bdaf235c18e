"""A run directory is held by one run at a time: a live holder is named and refused, a killed one's lock is taken
over, and the holder's worker processes (its token in $BENCH_RUN_LOCK) are let in."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from bench.core.locks import LOCK_ENV, LOCK_NAME, DirectoryHeldError, hold_directory, lock_holder

HOLD = ("import sys, time\nfrom bench.core.locks import hold_directory\n"
        "with hold_directory(sys.argv[1]) as token:\n    print(token, flush=True)\n    time.sleep(60)\n")


@pytest.fixture()
def holder(tmp_path):
    """Another process holding tmp_path/run; yields (process, its token)."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True)
    token = process.stdout.readline().strip()
    yield process, token
    process.kill()
    process.wait()


def test_a_live_holder_is_named_and_refused(tmp_path, holder):
    process, _ = holder
    with pytest.raises(DirectoryHeldError, match=f"run is held by process {process.pid} on .* wait for it, or stop it"):
        with hold_directory(tmp_path / "run"):
            pass
    assert lock_holder(tmp_path / "run")["pid"] == process.pid


def test_a_killed_holders_lock_is_taken_over_and_released(tmp_path, holder):
    process, _ = holder
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (tmp_path / "run" / LOCK_NAME).exists() and lock_holder(tmp_path / "run") is None  # left behind, dead
    with hold_directory(tmp_path / "run") as token:
        held = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
        assert (held["pid"], held["token"]) == (os.getpid(), token)
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_the_holders_workers_are_let_in(tmp_path, holder, monkeypatch):
    _, token = holder
    monkeypatch.setenv(LOCK_ENV, token)
    with hold_directory(tmp_path / "run") as inherited:
        assert inherited == token
    assert (tmp_path / "run" / LOCK_NAME).exists()  # a worker never releases its holder's lock


def test_a_second_run_into_a_held_directory_stops_before_any_work(tmp_path, holder):
    """`bench run --resume` into a directory a live run holds: the one-line RunSetupError (exit 2 in the CLI)."""
    from bench.harness.run import RunSetupError, plan_run
    from bench.harness.suites import get_suite

    process, _ = holder
    (tmp_path / "run" / "run.json").write_text("{}")
    with pytest.raises(RunSetupError, match=f"run directory .*run is held by process {process.pid}"):
        plan_run(get_suite("toy"), ["dpo"], run_dir=tmp_path / "run", resume=True)
