"""Compute budgets and the meter that enforces them.

A budget is a limit in one unit:

- `steps`   optimizer steps;
- `samples` training images consumed (a preference pair is two images);
- `nfe`     UNet evaluations of one latent, counted by the Backbone; a backward pass counts as 2,
            so a forward+backward on a batch of B latents costs 3B and a frozen reference forward B;
- `seconds` wall-clock seconds spent in training steps (evaluation excluded);
- `gpu-h`   device-hours: training seconds times the number of processes (devices), / 3600, so a
            paper's "N GPU-hours" budget is one flag (`--budget 384gpu-h`).

`Budget.parse` reads `2e5nfe`, `90s`, `400steps`, `1e4samples`, `384gpu-h`. The meter records all four units
whatever the limit's unit, so a run records what it used in every unit.

Stopping rule: before a step, the meter predicts the step's cost as max(largest cost seen so far, the
method's declared worst case) and stops if it would cross the limit. A step's cost can vary (InPO's
inversion steps, a method whose NFE per item depends on t), so the largest seen alone can under-predict
the next one; the declared worst case bounds it. For steps, samples and nfe this keeps `used <= limit`
(as long as no step costs more than declared); for seconds and gpu-h nothing is declared (0) and the
prediction is the largest step seen, so a run can overshoot by the variation of one step.

A limit must be a positive, finite number: `1e400nfe` (infinite as a float) is refused.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

UNITS = ("steps", "samples", "nfe", "seconds", "gpu-h")
_ALIASES = {"step": "steps", "steps": "steps", "sample": "samples", "samples": "samples", "nfe": "nfe",
            "s": "seconds", "sec": "seconds", "secs": "seconds", "seconds": "seconds", "min": "minutes",
            "m": "minutes", "gpu-h": "gpu-h", "gpuh": "gpu-h", "gpu-hours": "gpu-h", "gpu-hour": "gpu-h"}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z][a-zA-Z-]*)\s*$")


class BudgetError(ValueError):
    """A budget string that cannot be parsed."""


@dataclass(frozen=True)
class Budget:
    unit: str
    limit: float

    def __post_init__(self):
        if self.unit not in UNITS:
            raise BudgetError(f"budget unit {self.unit!r} is not one of {', '.join(UNITS)}")
        if not self.limit > 0:
            raise BudgetError(f"budget limit must be positive, got {self.limit}")
        if not math.isfinite(self.limit):
            raise BudgetError(f"budget limit must be a finite number, got {self.limit} {self.unit}")

    @classmethod
    def parse(cls, text: str) -> Budget:
        """`2e5nfe`, `90s`, `1.5min`, `400steps`, `1e4samples` -> Budget."""
        match = _PATTERN.match(str(text))
        if not match or match.group(2).lower() not in _ALIASES:
            raise BudgetError(
                f"cannot parse budget {text!r}: expected a number and a unit, e.g. 2e5nfe, 90s, 400steps, 1e4samples, 8gpu-h"
            )
        value, unit = float(match.group(1)), _ALIASES[match.group(2).lower()]
        if unit == "minutes":
            value, unit = value * 60, "seconds"
        if not math.isfinite(value):
            raise BudgetError(f"budget {text!r} is too large: {match.group(1)} overflows to infinity; a budget must be "
                              "a finite number")
        return cls(unit, value)

    def __str__(self) -> str:
        suffix = {"steps": "steps", "samples": "samples", "nfe": "nfe", "seconds": "s", "gpu-h": "gpu-h"}[self.unit]
        return f"{self.limit:g}{suffix}"


@dataclass
class Usage:
    steps: int = 0
    samples: int = 0
    nfe: int = 0
    seconds: float = 0.0
    device_seconds: float = 0.0  # seconds x processes

    def get(self, unit: str) -> float:
        return self.device_seconds / 3600 if unit == "gpu-h" else getattr(self, unit)

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values())))


@dataclass
class BudgetMeter:
    """Accumulates usage and decides whether the next step fits in the budget."""

    budget: Budget
    used: Usage = field(default_factory=Usage)
    max_step_cost: float = 0.0  # largest cost of one step so far, in the budget's unit

    def fits(self, declared_step_cost: float) -> bool:
        """Whether a step predicted to cost max(largest seen, declared worst case) still fits under the limit."""
        predicted = max(self.max_step_cost, declared_step_cost)
        return self.used.get(self.budget.unit) + predicted <= self.budget.limit

    def add(self, step: Usage) -> None:
        self.used = self.used + step
        self.max_step_cost = max(self.max_step_cost, step.get(self.budget.unit))

    def state_dict(self) -> dict:
        return {"used": asdict(self.used), "max_step_cost": self.max_step_cost}

    def load_state_dict(self, state: dict) -> None:
        self.used = Usage(**state["used"])
        self.max_step_cost = state["max_step_cost"]
