"""Search spaces declared next to a config's defaults, for `bench tune`.

A config field carries its range in its metadata, beside its help text:

    beta: float = field(default=5000.0, metadata={"help": "KL weight β", "search": FloatRange(10, 1e4, log=True)})

`search_space(config_cls)` collects them; the tuner asks Optuna for each (`trial.suggest_float`,
`suggest_int`, `suggest_categorical`), as Optuna's define-by-run spaces do. A field without a
`search` entry keeps its value. This module imports nothing of the project, so methods, samplers
and scorers can declare spaces without knowing the harness.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False

    def __post_init__(self):
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"FloatRange needs finite low < high, got [{self.low}, {self.high}]")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale FloatRange needs low > 0, got {self.low}")

    def suggest(self, trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def describe(self) -> str:
        return f"[{self.low:g}, {self.high:g}]" + (" log" if self.log else "")


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    log: bool = False

    def __post_init__(self):
        if not self.low < self.high:
            raise ValueError(f"IntRange needs low < high, got [{self.low}, {self.high}]")
        if self.log and self.low < 1:
            raise ValueError(f"a log-scale IntRange needs low >= 1, got {self.low}")

    def suggest(self, trial, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, log=self.log)

    def describe(self) -> str:
        return f"{{{self.low}..{self.high}}}" + (" log" if self.log else "")


@dataclass(frozen=True)
class Choice:
    options: tuple

    def __post_init__(self):
        if len(self.options) < 2:
            raise ValueError(f"Choice needs at least two options, got {self.options}")

    def suggest(self, trial, name: str):
        return trial.suggest_categorical(name, list(self.options))

    def describe(self) -> str:
        return "{" + ", ".join(map(str, self.options)) + "}"


Space = FloatRange | IntRange | Choice


def search_space(config_cls) -> dict[str, Space]:
    """Field name -> declared range, for every field of dataclass `config_cls` with `metadata["search"]`."""
    return {f.name: f.metadata["search"] for f in dataclasses.fields(config_cls) if "search" in f.metadata}
