"""Alignment methods, one file each, registered by name in `METHODS`: every module here but `base` is imported
(`Registry.discover`), so a new method file is registered by being in this folder."""

from methods.alignment.base import METHODS, AlignmentMethod, ImageBatch, LossOutput, OnlineMethod, PairBatch

METHODS.discover(__name__, skip=("base",))

__all__ = ["METHODS", "AlignmentMethod", "ImageBatch", "LossOutput", "OnlineMethod", "PairBatch"]
