"""Evaluation prompt sets: a fixed list, a text file (one prompt per line), or a dataset column.

A `PromptSource` names a dataset (local parquet/JSON/CSV file or directory, a `save_to_disk`
directory, or a hub id read from the cache when offline), its split and text column; duplicates are
dropped keeping first occurrence (Pick-a-Pic's `test_unique` style) and `limit` keeps the first N.
The resolved list is what a run record stores, so a table never depends on re-reading the source.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets

from bench.harness.data import DataError
from bench.harness.prompt_sets import PROMPT_SETS, load_prompt_set


@dataclass(frozen=True)
class PromptSource:
    dataset: str
    split: str = "test"
    column: str = "caption"
    unique: bool = True
    limit: int | None = None

    def describe(self) -> dict:
        return asdict(self)


def _from_dataset(source: PromptSource) -> list[str]:
    path = Path(source.dataset)
    try:
        if path.is_file():
            kind = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv"}.get(path.suffix)
            if kind is None:
                raise DataError(f"prompt file {path}: expected .parquet, .json, .jsonl or .csv (or a .txt via a path)")
            ds = datasets.load_dataset(kind, data_files=str(path), split="train")
        elif path.is_dir() and (path / "dataset_info.json").exists():
            ds = datasets.load_from_disk(str(path))
            ds = ds[source.split] if isinstance(ds, datasets.DatasetDict) else ds
        else:
            ds = datasets.load_dataset(source.dataset, split=source.split)
    except DataError:
        raise
    except Exception as err:
        raise DataError(f"cannot load evaluation prompts {source.dataset!r} (split {source.split!r}): "
                        f"{str(err).splitlines()[0]}. Pass a local file or a hub id that is in the cache.") from err
    if source.column not in ds.column_names:
        raise DataError(f"{source.dataset}: no column {source.column!r} (has {ds.column_names})")
    return [str(p) for p in ds.select_columns([source.column])[source.column]]


def resolve_prompts(prompts: tuple[str, ...] | list[str] | PromptSource | str | Path) -> tuple[list[str], dict]:
    """Resolve a prompt set to a list of strings and its provenance (for the run record).

    A str/Path is a text file (one prompt per line) if such a file exists, else a registered standard
    set, `NAME` (read from the Hugging Face cache) or `NAME=PATH` (a local copy), see `bench.harness.prompt_sets`.
    """
    if isinstance(prompts, PromptSource):
        found = _from_dataset(prompts)
        if prompts.unique:
            found = list(dict.fromkeys(found))
        found = found[: prompts.limit] if prompts.limit is not None else found
        provenance = prompts.describe()
    elif isinstance(prompts, (str, Path)):
        path = Path(prompts)
        name, _, local = str(prompts).partition("=")
        if path.is_file():
            found = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            provenance = {"file": str(path)}
        else:
            if name not in PROMPT_SETS.names():
                raise DataError(f"prompt file {path} does not exist (nor is {name!r} a prompt set: "
                                f"{', '.join(PROMPT_SETS.names())}; NAME or NAME=PATH)")
            prompt_set = load_prompt_set(name, local or None)
            found, provenance = prompt_set.prompts, prompt_set.describe()
    else:
        found, provenance = list(prompts), {"inline": True}
    if not found:
        raise DataError("the evaluation prompt set is empty")
    return found, {**provenance, "count": len(found)}


def load_prompts(prompts: tuple[str, ...] | list[str] | PromptSource | str | Path) -> list[str]:
    """The prompts of `resolve_prompts`."""
    return resolve_prompts(prompts)[0]


def prompt_digest(prompts: list[str]) -> dict:
    """A prompt set's identity for records: its size and the SHA256 of its prompts, one per line, in order."""
    return {"count": len(prompts), "sha256": hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()}
