"""Scorers built by name with the user's options: local weights, the HPS version, the CLIP backbone, pickles.

`bench eval` and `bench run` share this, so a real-scale run finds and configures its scorers exactly as
scoring a folder does. Options that name a scorer not being built are errors, never silently ignored.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

from metrics.base import SCORERS, Scorer


@dataclass(frozen=True)
class ScorerOptions:
    weights: dict[str, Path] = field(default_factory=dict)  # scorer name -> weights file or directory
    hps_version: str | None = None  # `hps`: "v2.1" (its default) or "v2.0"
    clip_backbone: str | None = None  # `clip`: transformers id or directory, or open_clip NAME[:TAG]
    allow_pickle: bool = False  # load checkpoints that `torch.load(weights_only=True)` refuses

    def check(self, names: list[str]) -> None:
        """ValueError for an option aimed at a scorer that is not in `names`."""
        for name in self.weights:
            if name not in names:
                raise ValueError(f"--weights {name}=...: {name!r} is not in --metrics ({', '.join(names)})")
        if self.clip_backbone and "clip" not in names:
            raise ValueError("--clip-backbone applies to the `clip` metric, which is not in --metrics")
        if self.hps_version and "hps" not in names:
            raise ValueError("--hps-version applies to the `hps` metric, which is not in --metrics")

    def recorded(self) -> dict:
        """What changes the scores, for run configurations (local paths are recorded with each scorer's SHA256)."""
        return {"hps_version": self.hps_version, "clip_backbone": self.clip_backbone,
                "weights_given_for": sorted(self.weights)}


def build_scorers(names: list[str], options: ScorerOptions | None = None) -> dict[str, Scorer]:
    """Every scorer in `names`, weights found and loaded (MissingWeightsError names what is missing)."""
    options = options or ScorerOptions()
    SCORERS.check(list(names))
    options.check(list(names))
    scorers = {}
    for name in names:
        cls = SCORERS.get(name)
        accepts = inspect.signature(cls).parameters
        kwargs = {}
        if name in options.weights:
            if "weights" not in accepts:
                raise ValueError(f"--weights {name}=...: the {name} scorer takes no weights")
            kwargs["weights"] = options.weights[name]
        if options.allow_pickle and "allow_pickle" in accepts:
            kwargs["allow_pickle"] = True
        if name == "clip" and options.clip_backbone:
            kwargs["backbone"] = options.clip_backbone
        if name == "hps" and options.hps_version:
            kwargs["version"] = options.hps_version
        scorers[name] = cls(**kwargs)
    return scorers
