"""Inversion samplers, one file each, registered by name in `SAMPLERS`."""

from methods.inversion import bdia, belm, ddim, ddpm_ef, edict, npi, null_text, renoise  # noqa: F401  (registration)
from methods.inversion.base import SAMPLERS, InversionSampler, InversionState

__all__ = ["SAMPLERS", "InversionSampler", "InversionState"]
