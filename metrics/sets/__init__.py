"""Set metrics: numbers about a set of images (a model's samples) against a reference set or within each prompt's
images, from image features (`metrics.sets.base`). One file per family (`frechet`, `prdc`, `vendi`), each holding
one metric per feature backbone, registered by name in `SET_METRICS`: every module here is imported
(`Registry.discover`) except the contract (`base`), the feature backbones (`features`) and the builder (`build`), so
a new family's file is registered by being in this folder."""

from metrics.sets.base import SET_METRICS, SetMetric

SET_METRICS.discover(__name__, skip=("base", "build", "features"))

__all__ = ["SET_METRICS", "SetMetric"]
