"""The noise schedules a plugin (an alignment method, an inversion sampler) may be defined on, and the one-line
refusal when a backbone's is not among them.

A backbone's schedule follows from its native prediction space (`Backbone.native_space`): a flow-matching model
predicts the velocity u = ε − x0 on x_σ = (1 − σ)·x0 + σ·ε; every other space (ε, v, x0) belongs to a
variance-preserving schedule x_t = α_t·x0 + σ_t·ε.
"""

from __future__ import annotations

SCHEDULES = ("vp", "flow")  # variance-preserving (SD 1.5, SDXL, the SD toy) or flow matching (SD3, FLUX, the flow toy)
_NEEDS = {"flow": "flow-matching backbones (x_σ = (1 − σ) x0 + σ ε, e.g. SD3)",
          "vp": "variance-preserving backbones (SD 1.5, SDXL)"}


def schedule_of(native_space: str) -> str:
    """The schedule of a backbone whose native prediction space is `native_space`."""
    return "flow" if native_space == "flow" else "vp"


def check_declared_schedules(cls: type) -> None:
    """ValueError unless a plugin class declares a non-empty subset of SCHEDULES as `schedules`."""
    if not cls.schedules or set(cls.schedules) - set(SCHEDULES):
        raise ValueError(f"{cls.__name__}.schedules must be some of {SCHEDULES}, got {cls.schedules}")


def require_schedule(name: str, verb: str, schedules: tuple[str, ...], native_space: str) -> None:
    """ValueError (one line) unless the plugin `name`, defined on `schedules`, can work on a backbone predicting
    `native_space`; e.g. "euler inverts flow-matching backbones (...); this pipeline predicts v on a vp schedule"."""
    if schedule_of(native_space) not in schedules:
        raise ValueError(f"{name} {verb} {_NEEDS[schedules[0]]}; this pipeline predicts {native_space} on a "
                         f"{schedule_of(native_space)} schedule")
