"""Alignment methods, one file each, registered by name in `METHODS`."""

from methods.alignment import dpo, dpo_gamma_t, dspo, inpo, kto, mapo, sft  # noqa: F401  (registration)
from methods.alignment.base import METHODS, AlignmentMethod, ImageBatch, LossOutput, PairBatch

__all__ = ["METHODS", "AlignmentMethod", "ImageBatch", "LossOutput", "PairBatch"]
