"""What `bench list` shows: the registered methods, samplers, metrics and suites, and one plugin's settings."""

from __future__ import annotations

import sys

from bench.core.config import TrainConfig, field_rows
from bench.core.registry import UnknownNameError
from bench.core.search_space import search_space
from bench.harness.suites import SUITES
from methods.alignment import METHODS
from methods.inversion import SAMPLERS
from metrics import SCORERS

# kind, registry, how its settings are given on the command line
PLUGINS = (("method", METHODS, "bench run --method-arg"), ("sampler", SAMPLERS, "bench invert --sampler-arg"),
           ("metric", SCORERS, "bench run/eval --metric-arg"))


def summary(obj) -> str:
    """The first paragraph of an entry's docstring (else its module's), on one line."""
    doc = (obj.__doc__ or sys.modules[obj.__module__].__doc__ or "").strip()
    return " ".join(doc.split("\n\n")[0].split())


def catalog() -> dict[str, list[tuple[str, str]]]:
    """{"methods": [(name, summary), ...], "samplers": ..., "metrics": ..., "suites": ...}."""
    registries = {"methods": METHODS, "samplers": SAMPLERS, "metrics": SCORERS, "suites": SUITES}
    return {title: [(name, summary(obj)) for name, obj in registry.items()] for title, registry in registries.items()}


def plugin_settings(name: str) -> list[list[str]]:
    """For each kind of plugin called `name` (a sampler and a metric may share a name): a title line, then each field
    of its Config (type, default, what `bench tune` searches) with its help, then how to set them.
    UnknownNameError, naming the nearest plugin, if none is called `name`."""
    found = [(kind, registry, flag) for kind, registry, flag in PLUGINS if name in registry]
    if not found:
        raise UnknownNameError("plugin", name, sorted(entry for _, registry, _ in PLUGINS for entry in registry))
    blocks = []
    for kind, registry, flag in found:
        cls = registry.get(name)
        lines = [f"{kind} {name}: {summary(cls)}"]
        for row in field_rows(cls.Config):
            search = f"  (bench tune searches {row['search']})" if row["search"] else ""
            lines += [f"  {row['field']}: {row['type']} = {row['default']}{search}", f"      {row['help']}"]
        lines.append(f"set with: {flag} {name}.FIELD=VALUE" if len(lines) > 1 else "  no settings")
        if kind == "sampler":
            lines.append("as InPO's inverter: bench run --method-arg inpo.inversion_args=FIELD=VALUE[,FIELD=VALUE]")
        if kind == "method" and cls.kind != "inference-time":  # one that trains nothing has no learning rate
            lines.append(f"bench tune also searches the learning rate over {search_space(TrainConfig)['lr'].describe()} "
                         f"(--train-arg {name}.lr=VALUE sets it)")
        blocks.append(lines)
    return blocks
