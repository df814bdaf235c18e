"""Inversion samplers, one file each, registered by name in `SAMPLERS`."""

from methods.inversion import ddim  # noqa: F401  (registration)
from methods.inversion.base import SAMPLERS, InversionSampler, InversionState

__all__ = ["SAMPLERS", "InversionSampler", "InversionState"]
