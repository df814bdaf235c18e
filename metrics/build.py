"""Scorers built by name with the user's options: each scorer's Config, local weights, pickles.

`bench eval` and `bench run` share this, so a real-scale run finds and configures its scorers exactly as
scoring a folder does. Options that name a scorer not being built are errors, never silently ignored.
`weight_rows` lists where each scorer's weight files are found on this machine (`bench weights`).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bench.core.config import OverrideError, parse_plugin_configs
from metrics.base import SCORERS, MissingWeightsError, Scorer, weight_record

# Options from before scorers had Configs (`--hps-version`, `--clip-backbone`; run.json's `scorer_options`
# keys): the (scorer, Config field) each one set. The CLI keeps the flags for one release as aliases of
# `--metric-arg SCORER.FIELD=VALUE`, and `recorded_before_configs` reads run configurations that hold them.
DEPRECATED_OPTIONS = {"hps_version": ("hps", "version"), "clip_backbone": ("clip", "backbone")}


@dataclass(frozen=True)
class ScorerOptions:
    """How a command builds its scorers: each scorer's Config, and two run-wide local settings.

    A scorer's Config (`configs`, from `--metric-arg NAME.FIELD=VALUE`) holds what it computes with, such as
    the HPS version or the CLIP backbone; run configurations record every field. Local weight paths
    (`--weights NAME=PATH`) and `--allow-pickle` stay outside the Configs: they say where the files are on
    this machine and whether to trust them, not what is computed. The same run elsewhere has other paths, and
    the weights' SHA256s in every scorer's description already identify what was loaded, so run
    configurations record only which scorers were given a path. `--allow-pickle` is one decision about
    trusting files for the whole command, and a scorer without pickled weights ignores it.
    """

    weights: dict[str, Path] = field(default_factory=dict)  # scorer name -> weights file or directory
    allow_pickle: bool = False  # load checkpoints that `torch.load(weights_only=True)` refuses
    configs: dict[str, object] = field(default_factory=dict)  # scorer name -> its Config (absent: the defaults)

    @classmethod
    def from_args(cls, names: list[str], *, where: str, weights: Iterable[str] = (), allow_pickle: bool = False,
                  metric_args: Iterable[str] = ()) -> ScorerOptions:
        """The options of the scorers `names` from the command line's `--weights NAME=PATH` and `--metric-arg
        NAME.FIELD=VALUE` items (OverrideError, naming the item, on a bad one); `where` says where `names` come
        from (e.g. "--metrics")."""
        SCORERS.check(names)
        paths = {}
        for item in weights:
            name, sep, path = (part.strip() for part in item.partition("="))
            if not sep or not name or not path:
                raise OverrideError(f"--weights {item!r}: expected NAME=PATH, e.g. pickscore=/models/PickScore_v1")
            paths[name] = Path(path).expanduser()
        return cls(paths, allow_pickle, parse_plugin_configs(metric_args, "--metric-arg", SCORERS, names, where=where))

    def check(self, names: list[str]) -> None:
        """ValueError for an option aimed at a scorer that is not in `names`, or a Config of another scorer."""
        for option, given in (("--weights {}=...", self.weights), ("--metric-arg {}.FIELD=...", self.configs)):
            for name in given:
                if name not in names:
                    raise ValueError(f"{option.format(name)}: {name!r} is not in --metrics ({', '.join(names)})")
        for name, config in self.configs.items():
            if not isinstance(config, SCORERS.get(name).Config):
                raise TypeError(f"scorer {name} takes its Config ({SCORERS.get(name).Config.__name__}), got {config!r}")

    def subset(self, names: list[str]) -> ScorerOptions:
        """The options of the scorers `names` only (e.g. those of a reward, which need not be metrics)."""
        return ScorerOptions({n: p for n, p in self.weights.items() if n in names}, self.allow_pickle,
                             {n: c for n, c in self.configs.items() if n in names})

    def config(self, name: str):
        """The Config scorer `name` is built with."""
        return self.configs[name] if name in self.configs else SCORERS.get(name).Config()

    def recorded(self) -> dict:
        """The run-wide options, for run configurations: which scorers were given local weights (their paths are
        recorded with each scorer's SHA256)."""
        return {"weights_given_for": sorted(self.weights)}

    def recorded_configs(self, names: list[str]) -> dict:
        """Every field of each scorer's Config, for run configurations."""
        return {name: dataclasses.asdict(self.config(name)) for name in names}


def deprecated_metric_args(given: dict[str, str | None]) -> tuple[list[str], list[str]]:
    """The `--metric-arg` items that the deprecated flags given stand for ({"hps_version": "v2.0"} ->
    ["hps.version=v2.0"]; None: not given), and a one-line notice for each."""
    items, notices = [], []
    for key, value in given.items():
        if value is not None:
            scorer, field_name = DEPRECATED_OPTIONS[key]
            items.append(f"{scorer}.{field_name}={value}")
            notices.append(f"--{key.replace('_', '-')} is replaced by --metric-arg {items[-1]} and will be removed in "
                           "the next release")
    return items, notices


def recorded_before_configs(config: dict) -> dict:
    """A run configuration (run.json's `config`) in today's form: one recorded before scorers had Configs holds
    `scorer_options` {hps_version, clip_backbone, weights_given_for} (or nothing, before that) and no
    `scorer_configs`; its HPS version and CLIP backbone move into the `hps` and `clip` Configs, which are
    otherwise, as the run used them, the defaults."""
    if "scorer_configs" in config:
        return config
    old = config.get("scorer_options", {})
    given = {}
    for key, (scorer, field_name) in DEPRECATED_OPTIONS.items():
        if old.get(key) is not None and scorer in config["metrics"]:
            given[scorer] = {field_name: old[key]}
    configs = {name: dataclasses.replace(SCORERS.get(name).Config(), **given.get(name, {})) for name in config["metrics"]}
    return {**config, "scorer_options": {"weights_given_for": old.get("weights_given_for", [])},
            "scorer_configs": ScorerOptions(configs=configs).recorded_configs(config["metrics"])}


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
        scorers[name] = cls(options.config(name), **kwargs)
    return scorers


def weight_rows(names: list[str], *, hash_files: bool = True) -> list[dict]:
    """One row per weight file of each scorer in `names`, as found by the scorer's lookup (`metrics.weights`):
    {metric, file, repo, description, path, bytes, sha256} (path, bytes and sha256 None where it is missing; a model
    directory adds `files`, one SHA256 per file). `hash_files=False` leaves sha256 None (hashing multi-GB files
    takes seconds). A scorer without weights gets one row whose file is None."""
    rows = []
    for name in names:
        cls = SCORERS.get(name)
        for spec in cls.weight_specs():
            row = {"metric": name, "file": spec.label, "repo": spec.repo, "description": spec.description,
                   "path": None, "bytes": None, "sha256": None}
            rows.append(row)
            try:
                path = cls.locate_weights(spec)
            except MissingWeightsError:
                continue
            row["path"] = str(path)
            if hash_files:
                record = weight_record(spec, path)
                row.update(bytes=record["bytes"], sha256=record["sha256"], files=record.get("files"))
            else:
                row["bytes"] = (sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir()
                                else path.stat().st_size)
        if not cls.weight_specs():
            rows.append({"metric": name, "file": None, "repo": None, "description": "no weights", "path": None,
                         "bytes": None, "sha256": None})
    return rows
