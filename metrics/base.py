"""The scorer contract: `score(prompts, images) -> Tensor[N]`.

Images are float RGB in [0, 1], shape (N, 3, H, W); prompts a list of N strings. A scorer states
whether higher is better and the scale of its numbers; both go into every run record. A scorer whose
weights are missing raises `MissingWeightsError` naming the file and how to get it: it is never
skipped or replaced by a constant.

A scorer's settings are its `Config`, a frozen dataclass whose fields carry their help text (`bench list
NAME`), set with `--metric-arg NAME.FIELD=VALUE` and recorded in full in run configurations. Construct it
as `cls(config)` (`cls()`: the defaults); Python callers may name fields instead (`HPSScorer(version="v2.0")`).
Where the weights are on this machine (`weights=`) and whether to unpickle them (`allow_pickle=`) are not
Config fields but keyword arguments, run-wide in the CLI (`metrics.build.ScorerOptions` says why).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import torch

from bench.core.registry import Registry
from metrics.weights import MissingWeightsError, WeightSpec, resolve, sha256_file

__all__ = ["SCORERS", "MissingWeightsError", "Scorer"]  # MissingWeightsError lives with the weight lookup
SCORERS: Registry[type[Scorer]] = Registry("metric", entry_point_group="diffusion_align_bench.metrics")


class Scorer(ABC):
    """A scorer declares its name, Config, direction and scale as class keywords, which set the class attributes
    below; a class given `name` is registered in `SCORERS`:

        class OracleScorer(Scorer, name="oracle", config=OracleConfig, higher_is_better=True,
                           scale="toy-world oracle reward in [0, 6]"):

    A subclass without `name` (a shared base such as `ClipBackboneScorer`) is not registered, and its subclasses
    inherit what it sets; an unknown keyword is a TypeError."""

    name: ClassVar[str]
    Config: ClassVar[type]
    higher_is_better: ClassVar[bool]
    scale: ClassVar[str]  # what the numbers mean, e.g. "oracle reward in [0, 6]" or "100 x cosine"
    differentiable: ClassVar[bool] = False  # gradients flow from `score` to the pixels (reward backpropagation)
    # The weight files this instance loaded, (spec, local path); filled by scorers that load weights.
    weight_files: list[tuple[WeightSpec, Path]] = []

    def __init_subclass__(cls, **keywords):
        super().__init_subclass__()
        SCORERS.declare(cls, keywords, ("name", "Config", "higher_is_better", "scale", "differentiable"))

    def __init__(self, config=None, **fields):
        """`self.config`: `config` (None: the defaults) with the fields named in `fields` replaced, validated by the
        Config. Scorers that load weights take them as keyword arguments besides and call this first."""
        config = config if config is not None else self.Config()
        if not isinstance(config, self.Config):
            raise TypeError(f"{self.name} takes its Config ({self.Config.__name__}), got {config!r}")
        self.config = dataclasses.replace(config, **fields) if fields else config

    @classmethod
    def weight_specs(cls) -> list[WeightSpec]:
        """The files this scorer needs in its default configuration (`bench weights` lists them)."""
        return []

    @classmethod
    def locate_weights(cls, spec: WeightSpec, explicit: str | Path | None = None) -> Path:
        """Where `spec` is found locally (see `metrics.weights.resolve`), or MissingWeightsError."""
        return resolve(spec, explicit)

    @classmethod
    def check_prompts(cls, prompts: Sequence[str]) -> None:
        """ValueError (one line) if this scorer cannot score images made for `prompts`: checked before any work (a
        run checks its evaluation prompts when it is planned). Any text by default."""
        return None

    @abstractmethod
    def score(self, prompts: list[str], images: torch.Tensor) -> torch.Tensor:
        """Per-image scores, shape (N,)."""

    def components(self, prompts: list[str], images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Optional per-image diagnostic terms (name -> (N,)); none by default."""
        return {}

    def describe(self) -> dict:
        """Name, direction and scale; plus, for scorers with weights, each file's spec, path and SHA256."""
        out = {"name": self.name, "higher_is_better": self.higher_is_better, "scale": self.scale}
        if self.weight_files:
            out["weights"] = [weight_record(spec, path) for spec, path in self.weight_files]
        return out


class BatchedScorerConfig:
    """Base of the Config (a frozen dataclass) of a scorer that runs its model `batch_size` images at a time: the
    subclass declares the field, with its own default and help text, and this checks it. A subclass with checks of
    its own calls `super().__post_init__()` from its `__post_init__`."""

    batch_size: int  # a plain class: the annotation makes no dataclass field, the subclass's declaration does

    def __post_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def check_inputs(prompts: list[str], images: torch.Tensor) -> None:
    """The scorer contract's input: one prompt per image, images (N, 3, H, W)."""
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] != len(prompts):
        raise ValueError(f"expected {len(prompts)} RGB images (N, 3, H, W), got shape {tuple(images.shape)}")


def in_batches(batch_size: int, fn: Callable, *inputs: Sequence | torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """`fn` on consecutive slices of `batch_size` rows of every input (tensors or lists, all N long), its outputs (a
    tensor, or a tuple of tensors) concatenated along the first axis: one model call per slice."""
    parts = [fn(*(rows[start:start + batch_size] for rows in inputs)) for start in range(0, len(inputs[0]), batch_size)]
    if parts and isinstance(parts[0], tuple):
        return tuple(torch.cat(column) for column in zip(*parts))
    return torch.cat(parts)


def default_device() -> str:
    """A scorer's device when none is given: CUDA when available, else the CPU."""
    return "cuda" if torch.cuda.is_available() else "cpu"


# CLIP's image normalisation (openai/CLIP clip.py `_transform`), used by every CLIP-based scorer here.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".json")
_SHA256: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> digest; hashing 4 GB takes ~10 s


def _sha256(file: Path) -> str:
    stat = file.stat()
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256:
        _SHA256[key] = sha256_file(file)
    return _SHA256[key]


def weight_record(spec: WeightSpec, path: str | Path) -> dict:
    """{file, repo, path, bytes, sha256} of a resolved weight. A model directory gets one SHA256 per file
    (weights and JSON configs) under `files`, and `sha256` of the `sha256sum`-style listing of them."""
    import hashlib

    path = Path(path)
    record = {"file": spec.label, "repo": spec.repo, "path": str(path)}
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        hashes = {str(p.relative_to(path)): _sha256(p) for p in files}
        listing = "".join(f"{h}  {name}\n" for name, h in hashes.items())
        record.update(bytes=sum(p.stat().st_size for p in files), files=hashes,
                      sha256=hashlib.sha256(listing.encode()).hexdigest())
    else:
        record.update(bytes=path.stat().st_size, sha256=_sha256(path))
    return record
