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
class _Range:
    """[low, high], searched uniformly or, with `log`, log-uniformly (then low > 0)."""

    low: float
    high: float
    log: bool = False

    def __post_init__(self):
        kind = type(self).__name__
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"{kind} needs finite low < high, got [{self.low}, {self.high}]")
        if self.log and not self.low > 0:
            raise ValueError(f"a log-scale {kind} needs low > 0, got {self.low}")


@dataclass(frozen=True)
class FloatRange(_Range):
    def suggest(self, trial, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def describe(self) -> str:
        return f"[{self.low:g}, {self.high:g}]" + (" log" if self.log else "")


@dataclass(frozen=True)
class IntRange(_Range):
    low: int
    high: int

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
