"""Scorers, one file each, registered by name in `SCORERS`."""

from metrics import aesthetic, clip_score, hps, imagereward, oracle, pickscore, toy_clip  # noqa: F401  (registration)
from metrics.base import SCORERS, MissingWeightsError, Scorer

__all__ = ["SCORERS", "MissingWeightsError", "Scorer"]
