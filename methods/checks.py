"""The field checks of a method's or sampler's Config: one line each in its `__post_init__`."""

from __future__ import annotations


def require(ok: bool, name: str, condition: str, value) -> None:
    """Raise ValueError("NAME must be CONDITION, got VALUE") unless `ok`.

    `require(self.beta > 0, "beta", "> 0", self.beta)` fails on -1.0 with "beta must be > 0, got -1.0", and on
    NaN too (write the condition a valid value meets, so that NaN fails it).
    """
    if not ok:
        raise ValueError(f"{name} must be {condition}, got {value!r}")
