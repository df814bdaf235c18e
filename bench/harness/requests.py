"""What a command asks for: its command-line strings turned into the harness's checked plans.

The CLI passes each option's value as typed (comma-separated lists, `NAME.FIELD=VALUE` items) and gets back a plan
(`RunPlan`, `TunePlan`) or a one-line error: `RunSetupError` or `OverrideError` (bad values), `UnknownNameError`
(unknown names), `BudgetError` (a malformed budget), all raised before any work starts. Keeping this below the
CLI means every entry point (the CLI, a notebook, a test) reads a request the same way.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import torch

from bench.core.backbone import BackboneLoadError
from bench.core.budget import Budget, BudgetError
from bench.core.config import OverrideError, TrainConfig, parse_plugin_args, split_list
from bench.core.records import RecordError
from bench.core.registry import UnknownNameError
from bench.harness.data import DataError
from bench.harness.run import RunPlan, RunSetupError, parse_method_specs, plan_run
from bench.harness.suites import Suite, get_suite
from bench.harness.tune import TunePlan, plan_tune
from methods.alignment import METHODS
from metrics import SCORERS
from metrics.base import MissingWeightsError
from metrics.build import ScorerOptions, deprecated_metric_args
from metrics.weights import UnsafeWeightsError


def parse_ints(text: str, option: str) -> list[int]:
    try:
        return [int(item) for item in split_list(text)]
    except ValueError:
        raise RunSetupError(f"{option} {text!r}: expected comma-separated integers") from None


def parse_budgets(text: str | None) -> list[Budget] | None:
    """"2e4nfe,4e4nfe" -> two Budgets; None (not given) -> None, the suite's."""
    return [Budget.parse(item) for item in split_list(text)] if text else None


def parse_key_values(items: list[str], option: str, example: str) -> dict[str, int | float | str]:
    """["timeout_min=240", "slurm_partition=gpu"] -> {"timeout_min": 240, "slurm_partition": "gpu"}: each value
    an int, else a float, else the string."""
    out: dict[str, int | float | str] = {}
    for item in items:
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise RunSetupError(f"{option} {item!r}: expected KEY=VALUE, e.g. {example}")
        for cast in (int, float, str):
            with contextlib.suppress(ValueError):
                out[key] = cast(value)
                break
    return out


def run_directory(run_dir: Path | None, resume: bool, name: str) -> Path:
    """`run_dir`, or a new runs/NAME-<time> (--resume needs an existing one)."""
    if run_dir is None and resume:
        raise RunSetupError("--resume needs --run-dir")
    return run_dir or Path("runs") / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def set_threads(threads: int | None) -> None:
    """torch's thread count for this process (None: torch's own default, $OMP_NUM_THREADS or the cores)."""
    if threads is not None:
        if threads < 1:
            raise RunSetupError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class ScorerArgs:
    """The scorer options a command takes: --weights NAME=PATH, --allow-pickle, --metric-arg NAME.FIELD=VALUE and
    the deprecated flags (`metrics.build.DEPRECATED_OPTIONS`: {"hps_version": value or None, ...})."""

    weights: tuple[str, ...] = ()
    allow_pickle: bool = False
    metric_args: tuple[str, ...] = ()
    deprecated: tuple[tuple[str, str | None], ...] = ()

    def options(self, names: list[str], where: str) -> tuple[ScorerOptions, list[str]]:
        """The `ScorerOptions` of the scorers `names`, and a notice per deprecated flag given (its items come first,
        so the user's own --metric-arg wins)."""
        items, notices = deprecated_metric_args(dict(self.deprecated))
        return ScorerOptions.from_args(names, where=where, weights=self.weights, allow_pickle=self.allow_pickle,
                                       metric_args=[*items, *self.metric_args]), notices


@dataclass(frozen=True)
class Request:
    """A checked command: the suite, its plan and the notices to show (deprecated flags)."""

    suite: Suite
    plan: RunPlan | TunePlan
    notices: list[str]


def method_settings(suite: Suite, methods: str | None, method_args: list[str], train_args: list[str]
                    ) -> tuple[list[str], dict[str, dict], dict[str, dict]]:
    """`--methods` (None: the suite's), `--method-arg` and `--train-arg` items -> the method specs (a deprecated name
    resolved, so it warns once) and the typed settings by label (`parse_plugin_args`; a bare training setting under
    "*": every method)."""
    algorithms = parse_method_specs(split_list(methods) or list(suite.default_methods))
    configs = {label: METHODS.get(algorithm).Config for label, algorithm in algorithms.items()}
    given_method_args = parse_plugin_args(method_args, "--method-arg", configs, kind="method", where="--methods",
                                          canonical=METHODS.canonical)
    given_train_args = parse_plugin_args(train_args, "--train-arg", dict.fromkeys(["*", *configs], TrainConfig),
                                         kind="method", where="--methods", bare="*", canonical=METHODS.canonical)
    resolved = [a if label == a else f"{label}={a}" for label, a in algorithms.items()]
    return resolved, given_method_args, given_train_args


def run_request(suite: str, *, methods: str | None, budgets: str | None, seeds: str, method_args: list[str],
                train_args: list[str], scorers: ScorerArgs, run_dir: Path | None, resume: bool, progress: bool,
                pipeline: str | None = None, data: str | None = None, prompts: str | None = None,
                dtype: str | None = None, dry_run: bool = False, reward: str | None = None,
                curve_every: float | None = None, set_metrics: str | None = None) -> Request:
    """`bench run`'s options -> its checked `RunPlan` (`plan_run`). `methods` lists names or LABEL=METHOD
    (None: the suite's); `method_args`/`train_args` are METHOD.FIELD=VALUE items (a bare FIELD=VALUE train
    setting is for every method). A dry run loads no prompts."""
    the_suite = get_suite(suite)
    resolved, given_method_args, given_train_args = method_settings(the_suite, methods, method_args, train_args)
    options, notices = scorers.options(list(the_suite.metrics), f"the {suite} suite's metrics")
    plan = plan_run(the_suite, resolved, budgets=parse_budgets(budgets), seeds=parse_ints(seeds, "--seeds"),
                    method_args=given_method_args, train_args=given_train_args,
                    run_dir=run_directory(run_dir, resume, suite), resume=resume, progress=progress,
                    pipeline=pipeline, preference_data=data,
                    prompts=["(dry run: prompts not loaded)"] if dry_run and prompts is None else prompts,
                    dtype=dtype, scorer_options=options, reward=reward, curve_every=curve_every,
                    set_metrics=[] if dry_run else None if set_metrics is None else split_list(set_metrics))
    if prompts is not None:  # the suite's own prompts suit its scorers; the user's are checked before any work
        for name in the_suite.metrics:
            try:
                SCORERS.get(name).check_prompts(plan.prompts)
            except ValueError as err:
                raise RunSetupError(f"--prompts {prompts}: {err}") from None
    return Request(the_suite, plan, notices)


def tune_request(suite: str, *, methods: str | None, trials: int, budget: str | None, objective: str | None, seed: int,
                 storage: str | None, run_dir: Path | None, resume: bool, progress: bool, final_seeds: str,
                 final_budgets: str | None, method_args: list[str] = (), train_args: list[str] = ()) -> Request:
    """`bench tune`'s options -> its checked `TunePlan` (`plan_tune`). `methods`, `method_args` and `train_args` as
    `bench run`'s: a setting given is fixed for every trial and not searched."""
    the_suite = get_suite(suite)
    budgets = parse_budgets(budget)
    if budgets is not None and len(budgets) != 1:
        raise RunSetupError(f"--budget {budget!r}: give one budget (every trial's); --final-budgets takes several")
    specs, given_method_args, given_train_args = method_settings(the_suite, methods, list(method_args), list(train_args))
    every = given_train_args.pop("*", {})
    given_train_args = {spec.partition("=")[0]: {**every, **given_train_args.get(spec.partition("=")[0], {})}
                        for spec in specs}
    plan = plan_tune(the_suite, specs, trials=trials,
                     budget=budgets[0] if budgets else None, objective=objective,
                     run_dir=run_directory(run_dir, resume, f"tune-{suite}"), seed=seed, storage=storage,
                     resume=resume, progress=progress, final_seeds=parse_ints(final_seeds, "--final-seeds"),
                     final_budgets=parse_budgets(final_budgets), method_args=given_method_args,
                     train_args={label: args for label, args in given_train_args.items() if args})
    return Request(the_suite, plan, [])


# Errors a user can fix (a bad name, value, file, run directory or missing weights): every command reports them in
# one line and exits with code 2.
USER_ERRORS: tuple[type[BaseException], ...] = (BackboneLoadError, BudgetError, OverrideError, DataError, RecordError,
                                                UnknownNameError, RunSetupError, MissingWeightsError, UnsafeWeightsError)
