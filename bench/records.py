"""Run records: one versioned JSON per run, written atomically.

A record holds everything needed to rebuild any table or figure: the full configuration, the budget
limit and what was used, the training history, per-image scores with their prompts and seeds,
aggregates with bootstrap CIs, the paired comparison with the base model, and the environment
(git commit, package versions, hardware).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
from collections.abc import Iterator
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

SCHEMA_VERSION = 2
PACKAGES = ("diffusion-align-bench", "torch", "diffusers", "transformers", "accelerate", "datasets",
            "open_clip_torch", "safetensors", "numpy")


class RecordError(ValueError):
    """A run record that is missing, corrupt or of an unknown schema version."""


def git_commit() -> dict:
    """The commit of the checkout this package runs from, and whether it has local changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(dirty) if commit else None}


def environment() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return {
        "git": git_commit(),
        "python": platform.python_version(),
        "packages": versions,
        "hardware": {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
                     "torch_threads": torch.get_num_threads(), "cuda_devices": devices},
    }


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` (same suffix) to write to; renamed over `path` when the block succeeds,
    removed when it fails, so a reader never sees a half-written file. A symlinked `path` is written through."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def staged_directory(out: str | os.PathLike) -> Iterator[Path]:
    """A fresh directory inside `out` (same filesystem) to build into. When the block succeeds each of its entries
    replaces its namesake in `out` (JSON manifests last); when it fails or is killed, `out`'s entries are left as
    they were (a killed build's staging directory is removed by the next build)."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".staging-*"):
        pid = stale.name.removeprefix(".staging-")
        if stale.is_dir() and pid.isdecimal() and not _running(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    stage = out / f".staging-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir()
    try:
        yield stage
        for entry in sorted(stage.iterdir(), key=lambda p: (p.suffix == ".json", p.name)):
            target = out / entry.name
            if target.is_symlink():
                target.unlink()
            if target.is_dir():
                old = out / f".{entry.name}.old{os.getpid()}"
                target.rename(old)
                try:
                    entry.rename(target)
                except OSError:
                    old.rename(target)  # put the previous one back
                    raise
                shutil.rmtree(old)
            else:
                os.replace(entry, target)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_output(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, payload: dict) -> Path:
    """Write JSON to a temporary file in the same directory, then rename it over `path`."""
    with atomic_output(path) as tmp, open(tmp, "w") as f:
        json.dump(payload, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    return Path(path)


def read_record(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecordError(f"run record {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RecordError(f"run record {path} is corrupt: {err}") from None
    if not isinstance(record, dict):
        raise RecordError(f"run record {path} is not a JSON object")
    found = record.get("schema_version")
    if found in MIGRATIONS:
        record = MIGRATIONS[found](record)
        found = record["schema_version"]
    if found != SCHEMA_VERSION:
        raise RecordError(f"run record {path} has schema version {found!r}; this version reads "
                          f"{sorted([*MIGRATIONS, SCHEMA_VERSION])}")
    return record


def _from_v1(record: dict) -> dict:
    """Version 1 had no sample thumbnails and a single budget per run."""
    record = dict(record, schema_version=2, samples={"indices": [], "png_base64": []})
    config = dict(record.get("config", {}))
    if "budget" in config:
        config["budgets"] = [config.pop("budget")]
    record["config"] = config
    return record


MIGRATIONS = {1: _from_v1}  # schema version -> function returning the record one version newer
