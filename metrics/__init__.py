"""Scorers, one file each, registered by name in `SCORERS`: every module here is imported (`Registry.discover`)
except the contract (`base`), the weight lookup (`weights`) and the scorer builder (`build`), so a new scorer
file is registered by being in this folder."""

from metrics.base import SCORERS, MissingWeightsError, Scorer

SCORERS.discover(__name__, skip=("base", "build", "weights"))

__all__ = ["SCORERS", "MissingWeightsError", "Scorer"]
