"""What `bench list` shows: the registered methods, samplers, metrics and suites, one plugin's settings, and what one
suite runs with."""

from __future__ import annotations

import dataclasses
import sys

from bench.core.backbone import Backbone
from bench.core.config import TrainConfig, field_rows
from bench.core.registry import UnknownNameError
from bench.core.schedules import schedule_of
from bench.core.search_space import search_space
from bench.harness.prompts import PromptSource
from bench.harness.suites import SUITES, Suite, get_suite
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
    of its Config (type, default, what `bench tune` searches) with its help, then how to set them; for a suite, what
    its runs use (`suite_settings`). UnknownNameError, naming the nearest plugin or suite, if none is called `name`."""
    found = [(kind, registry, flag) for kind, registry, flag in PLUGINS if name in registry]
    if not found and name not in SUITES:
        raise UnknownNameError("plugin", name, sorted({*SUITES, *(e for _, registry, _ in PLUGINS for e in registry)}))
    blocks = [suite_settings(get_suite(name))] if name in SUITES else []
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


def _prompts(prompts: tuple[str, ...] | PromptSource) -> str:
    if isinstance(prompts, PromptSource):
        limit = f", at most {prompts.limit}" if prompts.limit else ""
        return f"column {prompts.column!r} of {prompts.dataset} ({prompts.split} split{limit}), loaded when a run starts"
    return f"{len(prompts)} prompts"


def _settings(values: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(values.items()))


def suite_settings(suite: Suite) -> list[str]:
    """What `bench run --suite NAME` uses: pipeline, data, prompt splits, metrics, budget, training and evaluation
    recipe, and each method's settings over its defaults, marked where they come from the suite's tuning run."""
    native_space = Backbone.native_space_of(suite.pipeline)  # None: a hub id not in the cache
    lines = [f"suite {suite.name}: {suite.description}",
             f"  pipeline: {suite.pipeline}",
             f"  preference data: {suite.preference_data} (split {suite.preference_split!r}"
             + (f", at most {suite.max_pairs} pairs)" if suite.max_pairs else ")"),
             f"  test prompts (reported): {_prompts(suite.eval_prompts)}",
             f"  validation prompts (bench tune): {_prompts(suite.validation_prompts)}",
             f"  metrics: {', '.join(suite.metrics)} (primary: {suite.primary_metric})"
             + (f"; set metrics: {', '.join(suite.set_metrics)} against {suite.reference}" if suite.set_metrics else ""),
             f"  budget per method: {suite.budget}; dtype {suite.dtype}",
             f"  evaluation: {_settings(dataclasses.asdict(suite.eval))}",
             f"  training: {_settings(dataclasses.asdict(suite.train))}",
             f"  default methods: {', '.join(suite.default_methods)}",
             "  method settings over each method's defaults (tuned on SUITE: chosen by `bench tune` on that suite's "
             "validation prompts):"]
    refused = []
    for label in sorted({*suite.method_args, *suite.train_args}):
        method = suite.variants.get(label, label)
        try:
            if native_space is not None:
                METHODS.get(method)().check_schedule(native_space)
        except ValueError:
            refused.append(label)
            continue
        given = {**suite.method_args.get(label, {}), **{f"train.{k}": v for k, v in suite.train_args.get(label, {}).items()}}
        tuning = suite.tuning.get(label)
        origin = (f"tuned on {tuning.get('study', suite.name).split('/')[0]}, {tuning['trials']} trials of "
                  f"{tuning['budget_per_trial']}" if tuning else "the suite's recipe")
        lines.append(f"    {label}{f' (= {method})' if method != label else ''}: {_settings(given) or '-'} [{origin}]")
    if refused:
        lines.append(f"  not for this pipeline's {schedule_of(native_space)} schedule: {', '.join(refused)}")
    lines.append(f"run with: bench run --suite {suite.name} --methods {','.join(suite.default_methods)}")
    return lines
