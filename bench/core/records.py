"""Records: every JSON the suite writes about a run, each of a named kind with its own schema version, written atomically.

Kinds (`KINDS`; `new_record` builds one, `read_record` loads one and migrates older versions in memory):

- `alignment-run` (version 3): one trained method (or the base model) evaluated, `bench run`; below.
- `run-manifest` (version 3): `run.json`, the configuration a run directory was started with (`--resume` checks it).
- `bench-eval` (version 1): per-image scores of a folder or toy samples, `bench eval --json`.
- `invert` (version 1): the inversion benchmark, `bench invert` (`invert.json`; files without a version are
  read as version 1).
- `tuning` (version 1): a tuning sweep's trials and choices, `bench tune` (`tune.json`).
- `dry-run` (version 1): the meta-device plan of a real-scale run, `bench run --dry-run --json`.

Every kind carries `schema_version`, `kind`, `environment` (git commit, package versions, hardware) and
`created`; `new_record` checks the fields its kind requires.

An alignment-run record holds everything needed to rebuild any table or figure: the full configuration, the budget
limit and what was used, the training history, per-image scores with their prompts and seeds,
aggregates with bootstrap CIs, the paired comparison with the base model, and the environment
(git commit, package versions, hardware).

Its schema versions (`read_record` migrates older ones in memory; `upgrade_records` rewrites them on disk):

- 1: a single budget per run, no sample thumbnails;
- 2: `config.budgets`, `samples`; its aggregates (`metrics`, `win_rate_vs_base`, `delta_vs_base`) may come from a
  bootstrap over images;
- 3: the aggregates are those of `bench.core.stats.run_statistics`, the bootstrap over prompts (docs/statistics.md).
  A version-2 record's aggregates are recomputed from its per-image scores, and its comparison with the base model
  from the per-image scores of the base record beside it (`base.json`); the replaced numbers are kept under
  `previous_aggregates`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from bench.core.locks import process_alive
from bench.core.stats import run_statistics

SCHEMA_VERSION = 3
AGGREGATES = ("metrics", "win_rate_vs_base", "delta_vs_base")  # recomputed by version 3
PACKAGES = ("diffusion-align-bench", "torch", "diffusers", "transformers", "accelerate", "datasets",
            "open_clip_torch", "safetensors", "numpy")


class RecordError(ValueError):
    """A run record that is missing, corrupt or of an unknown schema version."""


def git_commit() -> dict:
    """The commit of the checkout this package runs from, and whether it has local changes."""
    root = Path(__file__).resolve().parents[2]
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
        "hardware": {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu_model(),
                     "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "cuda_devices": devices},
    }


def cpu_model() -> str | None:
    """The CPU's model name (Linux: /proc/cpuinfo's first "model name"; else `platform.processor()`, None if empty).
    Recorded because multi-threaded float reductions differ between CPU models (the SD toy's DPO at 2 threads, same
    code and seed: 2.644 on the machines of earlier fresh-clone checks, 2.739 on an AMD EPYC one), so a number is
    reproduced on the same model at the same `torch_threads`."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


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


@contextlib.contextmanager
def staged_directory(out: str | os.PathLike) -> Iterator[Path]:
    """A fresh directory inside `out` (same filesystem) to build into. When the block succeeds each of its entries
    replaces its namesake in `out` (JSON manifests last); when it fails or is killed, `out`'s entries are left as
    they were (a killed build's staging directory is removed by the next build)."""
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(".staging-*"):
        pid = stale.name.removeprefix(".staging-")
        if stale.is_dir() and pid.isdecimal() and not process_alive(int(pid)):
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


def _load_json(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        raise RecordError(f"record {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RecordError(f"record {path} is corrupt: {err}") from None
    if not isinstance(record, dict):
        raise RecordError(f"record {path} is not a JSON object")
    return record


def new_record(kind: RecordKind, **fields) -> dict:
    """A record of `kind` at its current version: `fields` plus `schema_version`, `kind`, `environment` and
    `created`. ValueError if a field the kind requires is missing."""
    missing = sorted(set(kind.required) - set(fields))
    if missing:
        raise ValueError(f"a {kind.name} record needs {', '.join(missing)}")
    return {"schema_version": kind.version, "kind": kind.name, **fields, "environment": environment(), "created": now()}


def read_record(path: str | os.PathLike, kind: RecordKind | None = None) -> dict:
    """The record at `path` at its kind's current schema version (older versions are migrated in memory, the file is
    untouched). `kind` defaults to the one the file names (a file naming none is an alignment run, as version 1
    wrote them); a file of another kind than the one asked for is a RecordError."""
    path = Path(path)
    record = _load_json(path)
    found_kind = KINDS.get(record.get("kind", kind.name if kind else ALIGNMENT_RUN.name))
    if found_kind is None or (kind is not None and found_kind is not kind):
        raise RecordError(f"{path} is a {record.get('kind')!r} record, not {(kind or ALIGNMENT_RUN).name!r}")
    kind = found_kind
    found = record.get("schema_version")
    while found in kind.migrations:
        record = kind.migrations[found](record, path)
        found = record["schema_version"]
    if found != kind.version:
        raise RecordError(f"{kind.name} record {path} has schema version {found!r}; this version reads "
                          f"{sorted(v for v in [*kind.migrations, kind.version] if v is not None)}")
    return record


def upgrade_records(root: str | os.PathLike) -> list[Path]:
    """Rewrite every run record at or under `root` that has an older schema version as the current version, in
    place (each file atomically); returns the rewritten paths. Run manifests and other JSON files are left alone.
    A one-off for committed results: `python -c "from bench.core.records import upgrade_records as u; u('results/runs')"`.
    """
    root = Path(root)
    paths = sorted(root.rglob("*.json")) if root.is_dir() else [root]
    rewritten = []
    for path in paths:
        try:
            raw = _load_json(path)
        except RecordError:
            continue  # not ours to judge here: `bench report`/`leaderboard` name corrupt records
        if raw.get("kind") != "alignment-run" or raw.get("schema_version") not in MIGRATIONS:
            continue
        write_json_atomic(path, read_record(path))
        rewritten.append(path)
    return rewritten


def _from_v1(record: dict, path: Path) -> dict:
    """Version 1 had no sample thumbnails and a single budget per run."""
    record = dict(record, schema_version=2, samples={"indices": [], "png_base64": []})
    config = dict(record.get("config", {}))
    if "budget" in config:
        config["budgets"] = [config.pop("budget")]
    record["config"] = config
    return record


def _same_images(a: dict, b: dict) -> bool:
    return all(a.get("evaluation", {}).get(k) == b.get("evaluation", {}).get(k) for k in ("prompts", "seeds"))


def _base_beside(record: dict, path: Path) -> dict:
    """The base-model record of `record`'s suite evaluated on the same images, in `path`'s directory (`base.json`
    first, as `bench run` writes it)."""
    candidates = [path.parent / "base.json"] + [p for p in sorted(path.parent.glob("*.json")) if p.name != "base.json"]
    for candidate in candidates:
        if candidate == path or not candidate.exists():
            continue
        try:
            other = _load_json(candidate)
        except RecordError:
            continue
        if (other.get("kind") == "alignment-run" and other.get("method") == "base"
                and other.get("suite") == record.get("suite") and _same_images(other, record)):
            return other
    raise RecordError(f"run record {path} (schema version 2) compares with the base model: "
                      f"its comparison is recomputed from the base model's per-image scores, but no base record of "
                      f"suite {record.get('suite')!r} evaluated on the same prompts and seeds is beside it (expected "
                      f"{path.parent / 'base.json'})")


def _from_v2(record: dict, path: Path) -> dict:
    """Version 2 aggregates may come from a bootstrap over images: recompute them (and the comparison with the
    base model) from the per-image scores with `bench.core.stats.run_statistics`, keeping the old ones."""
    evaluation = record.get("evaluation") or {}
    if "scores" not in evaluation or "prompts" not in evaluation:
        return dict(record, schema_version=3)  # nothing to recompute from
    compared = any(key in record for key in AGGREGATES[1:])
    base = _base_beside(record, path)["evaluation"]["scores"] if compared else None
    record = dict(record, schema_version=3)
    eval_config = record.get("config", {}).get("eval", {})
    directions = {name: s.get("higher_is_better", True) for name, s in record.get("scorers", {}).items()}
    fresh = run_statistics(evaluation["scores"], evaluation["prompts"], base=base, higher_is_better=directions,
                           resamples=eval_config.get("bootstrap", 2000), seed=eval_config.get("seed", 0))
    previous = {key: record[key] for key in AGGREGATES if key in record}
    if previous:
        record["previous_aggregates"] = {"schema_version": 2, **previous}
    record.update(fresh)
    return record


MIGRATIONS = {1: _from_v1, 2: _from_v2}  # schema version -> function(record, path) returning it one version newer


def _versioned(kind: str, version: int) -> Callable[[dict, Path], dict]:
    """The migration of a kind's files written before it had a version: they are its first version."""
    return lambda record, path: {**record, "schema_version": version, "kind": kind}


@dataclass(frozen=True)
class RecordKind:
    """A kind of record: its name (the `kind` field), current schema version, the fields a new one must have, and
    the migrations from older versions (version -> function(record, path) returning it one version newer; the key
    None migrates a file written before the kind had versions)."""

    name: str
    version: int
    required: tuple[str, ...]
    migrations: Mapping[int | None, Callable[[dict, Path], dict]] = field(default_factory=dict)


ALIGNMENT_RUN = RecordKind("alignment-run", SCHEMA_VERSION,
                           ("suite", "method", "seed", "config", "budget", "evaluation", "scorers", "metrics"), MIGRATIONS)
RUN_MANIFEST = RecordKind("run-manifest", SCHEMA_VERSION, ("config",),  # older manifests: `plan_run` fills new keys
                          {v: _versioned("run-manifest", SCHEMA_VERSION) for v in (None, 1, 2)})
EVAL = RecordKind("bench-eval", 1, ("source", "prompts", "scores", "aggregates", "scorers"))
INVERT = RecordKind("invert", 1, ("config", "records"), {None: _versioned("invert", 1)})
TUNING = RecordKind("tuning", 1, ("suite", "budget", "trials", "objective", "methods"))
DRY_RUN = RecordKind("dry-run", 1, ("suite", "pipeline", "methods"), {None: _versioned("dry-run", 1)})
GPU_CHECK = RecordKind("gpu-check", 1, ("device", "families", "sampling", "scoring", "phases"))
KINDS = {kind.name: kind for kind in (ALIGNMENT_RUN, RUN_MANIFEST, EVAL, INVERT, TUNING, DRY_RUN, GPU_CHECK)}
