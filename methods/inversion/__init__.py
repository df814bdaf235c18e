"""Inversion samplers, one file each, registered by name in `SAMPLERS`: every module here but `base` is imported
(`Registry.discover`), so a new sampler file is registered by being in this folder."""

from methods.inversion.base import SAMPLERS, InversionSampler, InversionState

SAMPLERS.discover(__name__, skip=("base",))

__all__ = ["SAMPLERS", "InversionSampler", "InversionState"]
