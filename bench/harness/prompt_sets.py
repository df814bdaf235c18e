"""Named evaluation prompt sets of the alignment papers: Pick-a-Pic v2 test, PartiPrompts, HPS v2, DrawBench.

| name          | size    | hub dataset: files read                                           | split       | text, label      |
|---------------|---------|-------------------------------------------------------------------|-------------|------------------|
| pickapic-test | 500     | yuvalkirstain/pickapic_v2: data/test_unique-*.parquet             | test_unique | caption          |
| parti         | 1,632   | nateraw/parti-prompts: PartiPrompts.tsv                           | train       | Prompt, Category |
| hpdv2         | 4 x 800 | zhwang/HPDv2: benchmark/<style>.json (a JSON list each)           | benchmark   | the list, style  |
| drawbench     | 200     | shunk031/DrawBench @ refs/convert/parquet: default/test/*.parquet | test        | prompts,category |

Diffusion-DPO and Diffusion-KTO report win rates on the first three; DrawBench is Imagen's (Saharia et
al. 2022). The HPS v2 files are JSON lists of prompts, one file per style, and image `<style>/<idx:05d>.jpg`
belongs to prompt idx of its style (tgxs002/HPSv2 `hpsv2/evaluation.py`), so the style and the order of
every prompt are kept. `shunk031/DrawBench` is a loading script, which `datasets` >= 4 no longer runs;
its hub parquet export (revision `refs/convert/parquet`) holds the same rows, with `category` a ClassLabel.

`load_prompt_set(name, path=None)` returns a `PromptSet`: the prompts in source order, the per-prompt
labels, the source read, the split and the count, which a run record stores (`describe()`). `path` is a
file or directory the user downloaded (the file itself, or a folder holding it, e.g. an
`hf download --local-dir` copy of the repo). Without it the set's files are read from the Hugging Face
cache (`snapshot_download` restricted to those files; with `HF_HUB_OFFLINE=1` nothing is downloaded).
Files are read with pyarrow, pandas or json, only the needed columns and always as text (Parti has the
prompts "42" and "0"), without going through the `datasets` cache. A set found nowhere raises `DataError`
naming the hub dataset, the `hf download` command that fetches it and the `path=` / `--prompts` option.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import pandas as pd
import pyarrow.parquet as pq
from huggingface_hub import snapshot_download

from bench.core.registry import Registry
from bench.harness.data import DataError

log = logging.getLogger(__name__)

HPSV2_STYLES = ("anime", "concept-art", "paintings", "photo")  # hpsv2/utils.py `hps_prompt_files`, in this order


@dataclass
class PromptSet:
    """A resolved prompt set and where it came from."""

    name: str
    prompts: list[str]
    styles: list[str] | None  # per-prompt label (HPS v2 style; Parti / DrawBench category), None if the set has none
    source: str  # the local path read, or hf://datasets/<repo>@<commit> for the Hugging Face cache
    split: str
    count: int = field(init=False)

    def __post_init__(self):
        self.count = len(self.prompts)
        if self.styles is not None and len(self.styles) != self.count:
            raise ValueError(f"{self.name}: {len(self.styles)} style labels for {self.count} prompts")

    def describe(self) -> dict:
        """Provenance for a run record (the prompts themselves are stored separately)."""
        return {"name": self.name, "source": self.source, "split": self.split, "count": self.count}

    def by_style(self, values: Sequence) -> dict[str, list]:
        """Per-prompt values (e.g. HPS cosines) grouped by style in prompt order, as `hpsv2_benchmark` takes them."""
        if self.styles is None:
            raise ValueError(f"prompt set {self.name!r} has no style labels")
        if len(values) != self.count:
            raise ValueError(f"{self.name}: {len(values)} values for {self.count} prompts")
        grouped: dict[str, list] = {}
        for style, value in zip(self.styles, values):
            grouped.setdefault(style, []).append(value)
        return grouped


PROMPT_SETS: Registry[Callable[..., PromptSet]] = Registry(
    "prompt set", entry_point_group="diffusion_align_bench.prompt_sets")


@dataclass(frozen=True)
class _HubSource:
    name: str
    title: str
    repo: str  # hub dataset id
    include: str  # glob of the set's files in the repo (`hf download --include`)
    split: str
    size: int  # the published number of prompts
    revision: str | None = None
    also: str = ""  # another place to get the same file

    def missing(self, reason: str) -> DataError:
        revision = f" --revision {self.revision}" if self.revision else ""
        return DataError(
            f"prompt set {self.name!r} ({self.title}): {reason}. Get it from the hub dataset {self.repo} "
            f"(https://huggingface.co/datasets/{self.repo}){self.also}: `hf download {self.repo} --repo-type dataset"
            f"{revision} --include '{self.include}'` puts it in the Hugging Face cache, where it is found without "
            f"a path; or pass the downloaded file or directory as load_prompt_set({self.name!r}, path=...) "
            f"(`--prompts {self.name}=PATH` on the command line).")


_PICKAPIC = _HubSource("pickapic-test", "Pick-a-Pic v2 test, unique captions", "yuvalkirstain/pickapic_v2",
                       "data/test_unique-*.parquet", "test_unique", 500)
_PARTI = _HubSource("parti", "PartiPrompts", "nateraw/parti-prompts", "PartiPrompts.tsv", "train", 1632,
                    also=", or PartiPrompts.tsv from https://github.com/google-research/parti")
_HPDV2 = _HubSource("hpdv2", "HPS v2 benchmark prompts", "zhwang/HPDv2", "benchmark/*.json", "benchmark", 3200)
_DRAWBENCH = _HubSource(
    "drawbench", "DrawBench", "shunk031/DrawBench", "default/test/*.parquet", "test", 200,
    revision="refs/convert/parquet",
    also=(", or the CSV export (columns Prompts, Category) of the Imagen authors' sheet https://docs.google.com/"
          "spreadsheets/d/1y7nAbmR4FREi6npB1u-Bo3GFdwdOPYJc617rBOxIRHY"))


def _root(source: _HubSource, path: str | os.PathLike | None) -> tuple[Path, str]:
    """(the file or directory to read, its provenance string): `path`, or the set's hub-cache snapshot."""
    if path is not None:
        root = Path(path)
        if not root.exists():
            raise source.missing(f"{root} does not exist")
        return root, str(root)
    try:
        snapshot = Path(snapshot_download(source.repo, repo_type="dataset", revision=source.revision,
                                          allow_patterns=[source.include]))
    except (OSError, ValueError) as err:  # LocalEntryNotFoundError / HfHubHTTPError are OSErrors
        raise source.missing(f"not in the Hugging Face cache ({str(err).splitlines()[0]})") from err
    return snapshot, f"hf://datasets/{source.repo}@{snapshot.name}"


def _find(root: Path, pattern: str) -> list[Path]:
    """Files matching `pattern` (a path in the hub repo) under `root`: at that path, else anywhere below it."""
    return sorted(root.glob(pattern)) or sorted(root.rglob(Path(pattern).name))


def _column(file: Path, names: Sequence[str], wanted: str) -> str:
    """The column called `wanted`, matched case-insensitively (DrawBench's sheet says "Prompts", the hub "prompts")."""
    by_lower = {name.lower(): name for name in names}
    if wanted.lower() not in by_lower:
        raise DataError(f"{file}: no column {wanted!r} (has {list(names)})")
    return by_lower[wanted.lower()]


def _read_columns(file: Path, text: str, label: str | None) -> tuple[list, list | None]:
    """The `text` and `label` columns of a .parquet, .csv, .tsv, .json (list of records) or .jsonl file."""
    suffix = file.suffix.lower()
    if suffix == ".parquet":
        schema = pq.read_schema(file)
        names = [_column(file, schema.names, c) for c in (text, label) if c is not None]
        table = pq.read_table(file, columns=names)
        columns = [table.column(name).to_pylist() for name in names]
        if label is not None:  # a ClassLabel stores ints; its names are in the file's `huggingface` metadata
            feature = datasets.Features.from_arrow_schema(schema).get(names[1])
            if isinstance(feature, datasets.ClassLabel):
                columns[1] = feature.int2str(columns[1])
    elif suffix in (".csv", ".tsv"):
        tsv = suffix == ".tsv"  # PartiPrompts.tsv is raw text: prompts contain '"', which TSV does not quote
        frame = pd.read_csv(file, sep="\t" if tsv else ",", dtype=str, keep_default_na=False,
                            quoting=csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL)
        columns = [frame[_column(file, frame.columns, c)].tolist() for c in (text, label) if c is not None]
    elif suffix in (".json", ".jsonl"):
        body = file.read_text(encoding="utf-8")
        try:
            rows = json.loads(body)
        except json.JSONDecodeError:
            rows = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
            raise DataError(f"{file}: expected a list of records (JSON) or one record per line (JSONL)")
        names = list(rows[0]) if rows else []
        columns = [[row.get(_column(file, names, c)) for row in rows] for c in (text, label) if c is not None]
    else:
        raise DataError(f"{file}: expected a .parquet, .csv, .tsv, .json or .jsonl file")
    if any(prompt is None for prompt in columns[0]):
        raise DataError(f"{file}: column {text!r} has empty (null) prompts")
    return [str(p) for p in columns[0]], ([str(v) for v in columns[1]] if label is not None else None)


def _tabular_set(source: _HubSource, path, text: str, label: str | None, *, unique: bool = False) -> PromptSet:
    root, where = _root(source, path)
    files = [root] if root.is_file() else _find(root, source.include)
    if not files:
        raise source.missing(f"no {source.include} under {root}")
    prompts: list[str] = []
    labels: list[str] | None = [] if label is not None else None
    for file in files:
        file_prompts, file_labels = _read_columns(file, text, label)
        prompts += file_prompts
        if labels is not None:
            labels += file_labels
    if unique:  # keep the first occurrence of each caption
        prompts = list(dict.fromkeys(prompts))
    return _checked(PromptSet(source.name, prompts, labels, where, source.split), source)


def _checked(prompt_set: PromptSet, source: _HubSource) -> PromptSet:
    if prompt_set.count == 0:
        raise DataError(f"prompt set {source.name!r}: {prompt_set.source} holds no prompts")
    if prompt_set.count != source.size:
        log.warning("prompt set %r: %d prompts read from %s; the published set has %d",
                    source.name, prompt_set.count, prompt_set.source, source.size)
    return prompt_set


@PROMPT_SETS.register("pickapic-test")
def pickapic_test(path: str | os.PathLike | None = None) -> PromptSet:
    """Pick-a-Pic v2 test prompts (Kirstain et al. 2023): the `caption` column of the `test_unique` split
    (`yuvalkirstain/pickapic_v2`, `data/test_unique-*.parquet`), duplicates dropped keeping the first;
    500 prompts. Diffusion-DPO's and Diffusion-KTO's (Table 1) evaluation prompts. `path`: that parquet
    file (or a JSON/CSV with a `caption` column), or a directory holding it."""
    return _tabular_set(_PICKAPIC, path, "caption", None, unique=True)


@PROMPT_SETS.register("parti")
def parti(path: str | os.PathLike | None = None) -> PromptSet:
    """PartiPrompts (Yu et al. 2022): the `Prompt` column of PartiPrompts.tsv (google-research/parti,
    mirrored as `nateraw/parti-prompts`, whose only split is `train`), labelled by `Category`; 1,632
    prompts, kept in file order. `path`: the .tsv, or a directory holding it."""
    return _tabular_set(_PARTI, path, "Prompt", "Category")


@PROMPT_SETS.register("drawbench")
def drawbench(path: str | os.PathLike | None = None) -> PromptSet:
    """DrawBench (Saharia et al. 2022): the `prompts` column of `shunk031/DrawBench`'s `test` split, labelled
    by `category` (11 categories); 200 prompts. `path`: its parquet export (`default/test/0000.parquet`),
    the CSV export of the authors' sheet (`Prompts`, `Category`), or a directory holding the parquet."""
    return _tabular_set(_DRAWBENCH, path, "prompts", "category")


@PROMPT_SETS.register("hpdv2")
def hpdv2(path: str | os.PathLike | None = None) -> PromptSet:
    """The HPS v2 benchmark prompts (Wu et al. 2023): `benchmark/<style>.json` of `zhwang/HPDv2`, each a
    JSON list of 800 prompts, for the styles anime, concept-art, paintings, photo (the README's Animation,
    Concept-art, Painting, Photo); 3,200 prompts, style by style in file order, each labelled with its style.
    `path`: a directory holding the four files, directly or under `benchmark/` (a copy of the repo, or
    `~/.cache/hpsv2/datasets/benchmark`)."""
    root, where = _root(_HPDV2, path)
    if not root.is_dir():
        raise _HPDV2.missing(f"{root} is not a directory holding {', '.join(s + '.json' for s in HPSV2_STYLES)}")
    prompts: list[str] = []
    styles: list[str] = []
    for style in HPSV2_STYLES:
        found = _find(root, f"benchmark/{style}.json")
        if not found:
            raise _HPDV2.missing(f"no {style}.json under {root}")
        style_prompts = json.loads(found[0].read_text(encoding="utf-8"))
        if not isinstance(style_prompts, list) or not all(isinstance(p, str) for p in style_prompts):
            raise DataError(f"{found[0]}: expected a JSON list of prompt strings (the HPDv2 benchmark layout)")
        if len(style_prompts) != _HPDV2.size // len(HPSV2_STYLES):
            log.warning("hpdv2: %s has %d prompts; the benchmark has %d per style",
                        found[0], len(style_prompts), _HPDV2.size // len(HPSV2_STYLES))
        prompts += style_prompts
        styles += [style] * len(style_prompts)
    return _checked(PromptSet(_HPDV2.name, prompts, styles, where, _HPDV2.split), _HPDV2)


def load_prompt_set(name: str, path: str | os.PathLike | None = None) -> PromptSet:
    """The prompt set registered as `name` (see the module table), read from `path` or the Hugging Face
    cache. Raises `UnknownNameError` (with the nearest name) for an unknown set and `DataError` for one
    found nowhere."""
    return PROMPT_SETS.get(name)(path)
