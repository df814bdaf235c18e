"""Scorer weights: where they are looked for, how they are checked, and how they are loaded safely.

A scorer declares `WeightSpec`s (a file, or a whole model directory, in a hub repo). Resolution order:

1. an explicit path (the scorer's `weights=` argument, `bench eval --weights NAME=PATH`): a file, or
   a directory holding the file; when given, it is the only place looked in (a mistyped path fails
   instead of quietly using other weights);
2. `$BENCH_WEIGHTS_DIR/<scorer>/<file>`, then `$BENCH_WEIGHTS_DIR/<file>` (a model directory:
   `$BENCH_WEIGHTS_DIR/<scorer>/`);
3. the Hugging Face cache for the spec's hub repo (`hf_hub_download` / `snapshot_download`, which
   respect `HF_HUB_OFFLINE=1`: offline, only the cache is read).

A file found nowhere raises `MissingWeightsError` with one message naming the file, the hub repo to
fetch it from and the flag and variable to set. Nothing is ever substituted for missing weights.

Loading: `.safetensors` with safetensors; anything else with `torch.load(weights_only=True)`, which
refuses arbitrary pickles unless the caller passes `allow_pickle=True` (the CLI's `--allow-pickle`).
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch

WEIGHTS_ENV = "BENCH_WEIGHTS_DIR"


class MissingWeightsError(FileNotFoundError):
    """A scorer's weights are not available locally; the message says where to get them."""


class UnsafeWeightsError(ValueError):
    """A checkpoint that would execute arbitrary code when unpickled, refused without `allow_pickle`."""


@dataclass(frozen=True)
class WeightSpec:
    scorer: str
    repo: str  # hub repo id the file comes from
    filename: str | None  # a file in the repo, or None for the whole repo (a model directory)
    description: str = ""

    @property
    def label(self) -> str:
        return self.filename or f"{self.repo} (model directory)"


def _candidates(spec: WeightSpec, explicit: str | os.PathLike | None) -> list[Path]:
    name = spec.filename
    out = []
    if explicit is not None:
        path = Path(explicit)
        return [path / name, path] if name and path.is_dir() else [path]
    root = os.environ.get(WEIGHTS_ENV)
    if root:
        base = Path(root)
        out += [base / spec.scorer / name, base / name] if name else [base / spec.scorer]
    return out


def _from_hub_cache(spec: WeightSpec) -> Path | None:
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    offline = bool(os.environ.get("HF_HUB_OFFLINE"))
    try:
        if spec.filename is None:
            return Path(snapshot_download(spec.repo, local_files_only=offline))
        return Path(hf_hub_download(spec.repo, spec.filename, local_files_only=offline))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError):
        return None


def resolve(spec: WeightSpec, explicit: str | os.PathLike | None = None) -> Path:
    """The local path of `spec` (see the module docstring), or MissingWeightsError."""
    looked = _candidates(spec, explicit)
    for path in looked:
        if path.exists() and (spec.filename is None or path.is_file()):
            return path
    if explicit is None:
        cached = _from_hub_cache(spec)
        if cached is not None:
            return cached
    where = [str(p) for p in looked]
    if explicit is None:
        where.append("the Hugging Face cache" + (" (HF_HUB_OFFLINE=1: no download)" if os.environ.get("HF_HUB_OFFLINE")
                                                 else ""))
    if spec.filename:
        fetch = f"huggingface-cli download {spec.repo} {spec.filename} --local-dir DIR"
        point = f"pass --weights {spec.scorer}=DIR or set {WEIGHTS_ENV}=DIR"
    else:  # a model directory is looked for in $BENCH_WEIGHTS_DIR/<scorer>/
        fetch = f"huggingface-cli download {spec.repo} --local-dir DIR"
        point = f"pass --weights {spec.scorer}=DIR, or use DIR = ROOT/{spec.scorer} and set {WEIGHTS_ENV}=ROOT"
    raise MissingWeightsError(
        f"{spec.scorer}: weights {spec.label!r} not found (looked in {', '.join(where)}). Get them from the hub repo "
        f"{spec.repo!r} (`{fetch}`), then {point}."
    )


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_state_dict(path: str | os.PathLike, *, allow_pickle: bool = False) -> dict:
    """A state dict from `.safetensors`, or from a torch checkpoint loaded with `weights_only=True`."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not allow_pickle:
            raise UnsafeWeightsError(
                f"{path} holds Python objects besides tensors and would run arbitrary code on load; "
                "pass --allow-pickle (allow_pickle=True) if you trust this file") from err
        state = torch.load(path, map_location="cpu", weights_only=False)
    return state.get("state_dict", state) if isinstance(state, dict) else state
