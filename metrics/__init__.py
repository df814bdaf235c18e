"""Scorers, one file each, registered by name in `SCORERS`: every module here is imported (`Registry.discover`)
except the contract (`base`), the weight lookup (`weights`), the scorer builder (`build`) and the set metrics
(`sets`: FD, precision/recall/density/coverage, Vendi, registered in their own `SET_METRICS`), so a new scorer
file is registered by being in this folder."""

from metrics.base import SCORERS, MissingWeightsError, Scorer

SCORERS.discover(__name__, skip=("base", "build", "sets", "weights"))

from metrics.sets import SET_METRICS  # noqa: E402  (after the scorers: a set metric's name must not be a scorer's)

__all__ = ["SCORERS", "SET_METRICS", "MissingWeightsError", "Scorer"]
