"""The `bench` command line: a thin layer over the harness (no logic of its own).

Each command parses its options, calls the function that does the work, and prints. Errors a user can fix
(unknown names, bad budgets or arguments, missing files or weights) print one line naming the problem and exit with
code 2, before any work starts where they can be detected.

The harness, the plugins and the results layer load diffusers, transformers and datasets (seconds), so each
command imports what it calls in its body ("deferred" below): `bench --help` and a command's own `--help` do not
wait for them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.core.budget import Budget
from bench.core.config import TrainConfig, field_rows, parse_plugin_args, parse_plugin_configs
from bench.core.processes import processes
from bench.core.records import write_json_atomic
from bench.core.registry import UnknownNameError
from bench.core.search_space import search_space
from bench.toy.paths import build_dir, toy_dir

if TYPE_CHECKING:
    from metrics.build import ScorerOptions

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="diffusion-align-bench: compare diffusion alignment methods under one compute budget.")
toy_app = typer.Typer(no_args_is_help=True, help="The toy world: build its pipeline and preference data.")
app.add_typer(toy_app, name="toy")
console = Console(width=None if sys.stdout.isatty() else 160)  # logs and pipes get the whole table on one line
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _quiet_libraries() -> None:
    import datasets  # deferred: these take seconds to import, and only commands that load models use them
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=2)


def _user_errors() -> tuple[type[BaseException], ...]:
    from bench.core.backbone import BackboneLoadError  # deferred: the modules of these errors load diffusers
    from bench.core.budget import BudgetError
    from bench.core.config import OverrideError
    from bench.core.records import RecordError
    from bench.harness.data import DataError
    from bench.harness.run import RunSetupError
    from metrics.base import MissingWeightsError
    from metrics.weights import UnsafeWeightsError

    return (BackboneLoadError, BudgetError, OverrideError, DataError, RecordError, UnknownNameError, RunSetupError,
            MissingWeightsError, UnsafeWeightsError)


def _print_table(df, title: str) -> None:
    table = Table(title=title)
    for column in df.columns:
        table.add_column(str(column))
    for row in df.itertuples(index=False):
        table.add_row(*map(str, row))
    console.print(table)


def _output_file(ctx: typer.Context, param: typer.CallbackParam, path: Path | None) -> Path | None:
    """Option callback: a file to write, checked before any work (one-line error, exit 2)."""
    if path is not None and (path.is_dir() or path.parent.exists() and not path.parent.is_dir()):
        _fail(f"{param.opts[0]} {path}: {'is a directory' if path.is_dir() else 'its parent is not a directory'}; "
              "give a file path")
    return path


def _output_dir(ctx: typer.Context, param: typer.CallbackParam, path: Path | None) -> Path | None:
    """Option callback: a directory to write into, checked before any work (one-line error, exit 2)."""
    if path is not None and path.exists() and not path.is_dir():
        _fail(f"{param.opts[0]} {path}: exists and is not a directory")
    return path


def _split(csv: str) -> list[str]:
    return [item.strip() for item in csv.split(",") if item.strip()]


_WEIGHTS_HELP = "NAME=PATH: local weights (file or directory) for scorer NAME; repeatable"
_PICKLE_HELP = "load checkpoints holding pickled Python objects (runs their code: trusted files only)"
_METRIC_ARG_HELP = ("METRIC.FIELD=VALUE setting of a scorer in the metrics, e.g. hps.version=v2.0 or "
                    "clip.backbone=ViT-B-32:openai (fields: `bench list METRIC`); repeatable")
_DEPRECATED_HELP = "deprecated alias of --metric-arg {}=VALUE (removed in the next release)"


def _scorer_options(names: list[str], where: str, weights: list[str], allow_pickle: bool, metric_arg: list[str],
                    **deprecated: str | None) -> ScorerOptions:
    """`metrics.build.ScorerOptions` for the scorers `names` from `--weights`, `--allow-pickle` and `--metric-arg`.
    The deprecated `--hps-version` and `--clip-backbone` (`metrics.build.DEPRECATED_OPTIONS`) become `--metric-arg`
    items before the user's own, which win, with a one-line notice for each one given."""
    from metrics import SCORERS  # deferred: the scorers load transformers and open_clip
    from metrics.build import DEPRECATED_OPTIONS, ScorerOptions

    SCORERS.check(names)
    items = []
    for key, value in deprecated.items():
        if value is not None:
            scorer, field_name = DEPRECATED_OPTIONS[key]
            items.append(f"{scorer}.{field_name}={value}")
            err_console.print(f"[yellow]deprecated:[/] --{key.replace('_', '-')} is replaced by --metric-arg "
                              f"{items[-1]} and will be removed in the next release", highlight=False, soft_wrap=True)
    configs = parse_plugin_configs([*items, *metric_arg], "--metric-arg", SCORERS, names, where=where)
    return ScorerOptions(_parse_weights(weights), allow_pickle, configs)


def _parse_weights(items: list[str]) -> dict[str, Path]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            _fail(f"--weights {item!r}: expected NAME=PATH, e.g. pickscore=/models/PickScore_v1")
        out[name.strip()] = Path(path.strip()).expanduser()
    return out


def _launcher_args(items: list[str]) -> dict:
    """["timeout_min=240", "slurm_partition=gpu"] -> {"timeout_min": 240, "slurm_partition": "gpu"}."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            _fail(f"--launcher-arg {item!r}: expected KEY=VALUE, e.g. timeout_min=240")
        for cast in (int, float, str):
            with contextlib.suppress(ValueError):
                out[key.strip()] = cast(value.strip())
                break
    return out


@app.command()
def run(
    methods: str = typer.Option(None, "--methods", "-m", help="comma-separated method names (see `bench list`), or "
                                "LABEL=METHOD to run a method again under a label (an ablation: --methods "
                                "dpo-gamma-t,uniform-t=dpo-gamma-t -a uniform-t.gamma=1); default: the suite's "
                                "(dpo,inpo,kto)"),
    suite: str = typer.Option("toy", help="suite to run (see `bench list`)"),
    budget: str = typer.Option(None, "--budget", "--budgets",
                               help="compute budget per method, e.g. 4e4nfe, 90s, 400steps; a comma-separated list "
                                    "runs every method at each (the efficiency frontier); default: the suite's"),
    seeds: str = typer.Option("0", help="comma-separated training seeds"),
    method_arg: list[str] = typer.Option([], "--method-arg", "-a", help="METHOD.FIELD=VALUE, e.g. inpo.inversion=ddim "
                                         "(fields: `bench list METHOD`)"),
    train_arg: list[str] = typer.Option([], "--train-arg", "-t",
                                        help="[METHOD.]FIELD=VALUE training setting, e.g. batch_size=8 or dpo.lr=1e-5"),
    run_dir: Path = typer.Option(None, help="where records go (default: runs/<suite>-<time>)"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --run-dir (skip finished methods)"),
    json_path: Path = typer.Option(None, "--json", callback=_output_file, help="also write a summary JSON here"),
    pipeline: str = typer.Option(None, help="override the suite's pipeline (local diffusers directory or hub id)"),
    data: str = typer.Option(None, help="override the suite's preference data (Pick-a-Pic v2 schema)"),
    prompts: str = typer.Option(None, help="override the suite's evaluation prompts: a text file (one per line), "
                                "or a standard set NAME or NAME=PATH (pickapic-test, parti, hpdv2, drawbench)"),
    dtype: str = typer.Option(None, "--dtype",
                              help="precision of the frozen UNet and text encoders and of evaluation for the base model "
                                   "and every policy: fp32, fp16 or bf16 (the VAE and trained weights stay fp32; fp16/bf16 "
                                   "need the same --train-arg mixed_precision); default: the suite's (toy fp32, "
                                   "sd15/sdxl fp16)"),
    weights: list[str] = typer.Option([], "--weights", help=_WEIGHTS_HELP),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help=_PICKLE_HELP),
    metric_arg: list[str] = typer.Option([], "--metric-arg", help=_METRIC_ARG_HELP),
    clip_backbone: str = typer.Option(None, "--clip-backbone", help=_DEPRECATED_HELP.format("clip.backbone")),
    hps_version: str = typer.Option(None, "--hps-version", help=_DEPRECATED_HELP.format("hps.version")),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
    jobs: int = typer.Option(1, "--jobs", "-j", help="worker processes for the run's independent trainings (methods x "
                             "seeds x budgets), each with 1/N of the threads; a record equals --jobs 1's at the same "
                             "threads per run"),
    threads: int = typer.Option(None, "--threads", help="torch threads of this run (split among --jobs); default: "
                                "torch's ($OMP_NUM_THREADS, else the cores)"),
    launcher: str = typer.Option("local", help="where the runs execute: local (this machine, --jobs workers), slurm "
                                 "(one Slurm job per run through submitit, into a shared --run-dir) or submitit-local"),
    launcher_arg: list[str] = typer.Option([], "--launcher-arg", help="KEY=VALUE for submitit's executor, e.g. "
                                           "slurm_partition=gpu, gpus_per_node=1, timeout_min=240; repeatable"),
    dry_run: bool = typer.Option(False, "--dry-run",
                                 help="build the pipeline's shapes on the meta device (no weights) and report parameters, "
                                      "NFE per step, memory per process and the budget in steps and GPU-hours; "
                                      "processes: $WORLD_SIZE, else the recipe's"),
    seconds_per_nfe: float = typer.Option(None, "--seconds-per-nfe",
                                          help="with --dry-run: device-seconds per UNet evaluation of one latent, "
                                               "for GPU-hours"),
) -> None:
    """Train each method under the same budget, evaluate against the base model, write run records."""
    _quiet_libraries()
    from bench.harness.dryrun import dry_run as plan_dry_run  # deferred: loads diffusers
    from bench.harness.dryrun import report_notes, report_tables
    from bench.harness.run import execute, parse_method_specs, plan_run, summary
    from bench.harness.suites import get_suite
    from bench.results.tables import write_run_tables
    from methods.alignment import METHODS

    try:
        the_suite = get_suite(suite)
        try:
            seed_list = [int(s) for s in _split(seeds)]
        except ValueError:
            _fail(f"--seeds {seeds!r}: expected comma-separated integers")
        if run_dir is None and resume:
            _fail("--resume needs --run-dir")
        target = run_dir or Path("runs") / f"{suite}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        budgets = [Budget.parse(b) for b in _split(budget)] if budget else None
        algorithms = parse_method_specs(_split(methods) if methods else list(the_suite.default_methods))
        configs = {label: METHODS.get(algorithm).Config for label, algorithm in algorithms.items()}
        method_args = parse_plugin_args(method_arg, "--method-arg", configs, kind="method", where="--methods",
                                        canonical=METHODS.canonical)
        train_args = parse_plugin_args(train_arg, "--train-arg", dict.fromkeys(["*", *configs], TrainConfig),
                                       kind="method", where="--methods", bare="*", canonical=METHODS.canonical)
        scorer_options = _scorer_options(list(the_suite.metrics), f"the {suite} suite's metrics", weights, allow_pickle,
                                         metric_arg, hps_version=hps_version, clip_backbone=clip_backbone)
        resolved = [a if label == a else f"{label}={a}" for label, a in algorithms.items()]  # a deprecated name warns once
        plan = plan_run(the_suite, resolved,
                        budgets=budgets, seeds=seed_list, method_args=method_args, train_args=train_args,
                        run_dir=target, resume=resume, progress=not quiet, pipeline=pipeline, preference_data=data,
                        prompts=["(dry run: prompts not loaded)"] if dry_run and prompts is None else prompts,
                        dtype=dtype, scorer_options=scorer_options)
        if dry_run:
            report = plan_dry_run(plan, seconds_per_nfe=seconds_per_nfe)
            for table in report_tables(report):
                console.print(table)
            console.print("\n".join(report_notes(report)), highlight=False, soft_wrap=True)
            if json_path is not None:
                write_json_atomic(json_path, report.to_dict())
                console.print(f"dry-run report written to {json_path}")
            return
        if processes().is_main_process:
            console.print(f"suite [bold]{suite}[/]: {the_suite.description}; budget "
                          f"{', '.join(map(str, plan.budgets))} per method; records in {plan.run_dir}", highlight=False)

        def announce(path: Path, record: dict) -> None:
            metric = the_suite.primary_metric
            stat = record["metrics"][metric]
            console.print(f"  {record['method']:>6}  {metric} {stat['mean']:.3f} "
                          f"[{stat['ci_low']:.3f}, {stat['ci_high']:.3f}]  -> {path}", highlight=False)

        if threads is not None:
            if threads < 1:
                _fail(f"--threads must be >= 1, got {threads}")
            torch.set_num_threads(threads)
        paths = execute(plan, on_record=announce, jobs=jobs, launcher=launcher,
                        launcher_args=_launcher_args(launcher_arg))
    except _user_errors() as err:
        _fail(str(err))
    if not processes().is_main_process:  # under accelerate launch / torchrun, one process reports
        return

    _print_table(write_run_tables(paths, plan.run_dir, the_suite.primary_metric),
                 f"{suite}: {the_suite.primary_metric}, budget {', '.join(map(str, plan.budgets))} per method")
    if json_path is not None:
        write_json_atomic(json_path, summary(plan, paths))
        console.print(f"summary written to {json_path}")


@app.command()
def tune(
    methods: str = typer.Option(None, "--methods", "-m", help="comma-separated method names; default: the suite's"),
    trials: int = typer.Option(8, help="trials per method (the same for every method)"),
    suite: str = typer.Option("toy", help="suite to tune on (its validation prompts)"),
    budget: str = typer.Option(None, help="compute budget of every trial and of the final runs; default: the suite's"),
    objective: str = typer.Option(None, help="scorer to optimise on the validation prompts; default: the suite's "
                                  "primary metric (the oracle on the toy)"),
    seed: int = typer.Option(0, help="seed of the sampler and of every trial's training"),
    storage: str = typer.Option(None, help="Optuna storage URL shared by several machines (default: RUN_DIR/tune.db)"),
    run_dir: Path = typer.Option(None, help="where the study, trials and final records go (default: runs/tune-<time>)"),
    resume: bool = typer.Option(False, "--resume", help="continue the sweep in --run-dir"),
    final_seeds: str = typer.Option("0,1,2", help="seeds the best settings are retrained on, evaluated on test prompts"),
    final_budgets: str = typer.Option(None, help="budgets of the final runs (default: the tuning budget)"),
    no_final: bool = typer.Option(False, "--no-final", help="tune only; no retraining on the test prompts"),
    export: Path = typer.Option(None, "--export", callback=_output_file,
                                help="also write the chosen settings as a suite's tuned.json (the toy ships one)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
) -> None:
    """Tune every method with the same number of trials on validation prompts, then retrain the best settings on
    several seeds and report them on test prompts."""
    _quiet_libraries()
    from bench.harness.suites import get_suite  # deferred: loads diffusers and optuna
    from bench.harness.tune import plan_tune, suite_defaults
    from bench.harness.tune import tune as run_tune

    try:
        the_suite = get_suite(suite)
        if run_dir is None and resume:
            _fail("--resume needs --run-dir")
        try:
            seeds = [int(s) for s in _split(final_seeds)]
        except ValueError:
            _fail(f"--final-seeds {final_seeds!r}: expected comma-separated integers")
        plan = plan_tune(the_suite, _split(methods) if methods else list(the_suite.default_methods), trials=trials,
                         budget=Budget.parse(budget) if budget else None, objective=objective,
                         run_dir=run_dir or Path("runs") / f"tune-{suite}-{datetime.now().strftime('%Y%m%d-%H%M%S')}",
                         seed=seed, storage=storage, resume=resume, progress=not quiet, final_seeds=seeds,
                         final_budgets=[Budget.parse(b) for b in _split(final_budgets)] if final_budgets else None)
        console.print(f"tuning {', '.join(plan.methods)} on {suite}: {trials} trials each at {plan.budget}, objective "
                      f"{plan.objective} on the validation prompts; study in {plan.storage_url}", highlight=False)
        result = run_tune(plan, final=not no_final)
    except _user_errors() as err:
        _fail(str(err))
    for name, entry in result["methods"].items():
        best = entry["best"]
        params = ", ".join(f"{k.split('.', 1)[1]}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in best["params"].items())
        console.print(f"  {name:>10}  best trial {best['trial']}: {plan.objective} {best['value']:.3f} ({params}); "
                      f"cost {entry['cost']['nfe']:.3g} NFE, {entry['cost']['seconds']:.0f} s", highlight=False)
    if export is not None:
        write_json_atomic(export, {"source": str(plan.run_dir / "tune.json"), "suite": suite,
                                   "methods": suite_defaults(result)})
        console.print(f"tuned settings written to {export}")


@app.command()
def invert(
    samplers: str = typer.Option("ddim", help="comma-separated inversion samplers (see `bench list`)"),
    sampler_arg: list[str] = typer.Option([], "--sampler-arg", help="SAMPLER.FIELD=VALUE setting of a sampler in "
                                          "--samplers, e.g. bdia.gamma=0.5 (fields: `bench list SAMPLER`); repeatable"),
    steps: int = typer.Option(50, help="sampling steps (the same level path for every sampler)"),
    guidances: str = typer.Option("1", "--guidances", "--guidance", help="comma-separated classifier-free guidance "
                                  "scales, each used for inversion and reconstruction (e.g. 1,7.5)"),
    dtype: str = typer.Option("float32", help="float32 or float64"),
    images_dir: Path = typer.Option(None, help="invert these images instead of toy renders"),
    prompt: str = typer.Option("", help="prompt for --images-dir images"),
    images: int = typer.Option(8, help="number of toy renders (held-out captions) when no --images-dir"),
    pipeline: str = typer.Option(None, help="pipeline directory or hub id (default: the toy pipeline)"),
    out: Path = typer.Option(Path("runs/invert"), callback=_output_dir, help="where the JSON, table and figures go"),
    json_path: Path = typer.Option(None, "--json", callback=_output_file, help="also write the records here"),
    repeats: int = typer.Option(1, help="timed runs per sampler (median reported)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
) -> None:
    """Invert and reconstruct the same images with each sampler: error, NFE, time, overhead vs the compute floor."""
    _quiet_libraries()
    from bench.harness.invert import InvertConfig, invert_record, load_inputs  # deferred: loads diffusers
    from bench.results.inversion import write_inversion
    from bench.results.report import three_significant
    from methods.inversion import SAMPLERS

    try:
        scales = tuple(float(w) for w in _split(guidances))
    except ValueError:
        _fail(f"--guidances {guidances!r}: expected comma-separated numbers")
    try:
        names = tuple(_split(samplers))
        cfg = InvertConfig(samplers=names, steps=steps, guidances=scales, dtype=dtype, repeats=repeats,
                           sampler_configs=parse_plugin_configs(sampler_arg, "--sampler-arg", SAMPLERS, names,
                                                                where="--samplers"))
        backbone, pixels, prompts = load_inputs(pipeline, images_dir, prompt, images)
    except (ValueError, FileNotFoundError, *_user_errors()) as err:
        _fail(str(err))
    record = invert_record(backbone, pixels, prompts, cfg, progress=not quiet)
    table = write_inversion(record, out)
    if json_path is not None:
        write_json_atomic(json_path, record)
    _print_table(three_significant(table), f"inversion: {len(pixels)} images, {steps} steps, guidance "
                                           f"{', '.join(f'{w:g}' for w in scales)}, {dtype}; stored state per image "
                                           "in latents (N = steps)")
    ref = record["diffusers_reference"]
    if ref:
        console.print(f"diffusers DDIMInverseScheduler: max |Δ latent| {ref['max_abs_latent_diff']:.2e}, "
                      f"ours/diffusers time {ref['speed_ratio_ours_over_diffusers']:.3f}", highlight=False)
    console.print(f"records, table and figures in {out}")


@app.command()
def speed(
    samplers: str = typer.Option("ddim,edict,bdia,belm", help="comma-separated inversion samplers"),
    steps: int = typer.Option(50, help="sampling steps"),
    images: int = typer.Option(8, help="batch of toy renders inverted at once"),
    dtype: str = typer.Option("float32", help="float32 or float64"),
    repeats: int = typer.Option(3, help="timed round trips per sampler (median reported)"),
    pipeline: str = typer.Option(None, help="pipeline directory or hub id (default: the toy pipeline)"),
    json_path: Path = typer.Option(None, "--json", callback=_output_file, help="also write the timings here"),
) -> None:
    """Inversion speed: seconds per image, ratio to DDIM and overhead over the UNet compute floor (medians)."""
    _quiet_libraries()
    from bench.harness.invert import InvertConfig, load_inputs, speed_record  # deferred: loads diffusers
    from bench.results.inversion import speed_table

    try:
        names = _split(samplers)
        cfg = InvertConfig(samplers=tuple(names), steps=steps, dtype=dtype, repeats=repeats)
        backbone, pixels, prompts = load_inputs(pipeline, count=images)
    except (ValueError, *_user_errors()) as err:
        _fail(str(err))
    record = speed_record(backbone, pixels, prompts, cfg)
    _print_table(speed_table(record, names), f"inversion speed: batch {images}, {steps} steps, guidance 1, {dtype}, "
                                             f"median of {repeats}, t_fwd {record['records'][0]['t_fwd'] * 1e3:.1f} ms")
    if json_path is not None:
        write_json_atomic(json_path, record)


@app.command()
def report(
    paths: list[Path] = typer.Argument(..., help="run records or directories of them"),
    group_by: str = typer.Option("suite,budget", help="row keys among suite, budget, seed (seeds are aggregated "
                                                     "unless listed)"),
    metrics: str = typer.Option(None, help="comma-separated metrics (default: all recorded)"),
    formats: str = typer.Option("md,csv,tex", "--format", help="any of md, csv, tex"),
    out: Path = typer.Option(Path("report"), callback=_output_dir, help="where table.md/.csv/.tex go"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="skip missing or corrupt records instead of failing"),
    pairs: bool = typer.Option(False, "--pairs", help="also write pairs.md/.csv/.tex: every two methods of one suite and "
                               "budget paired on their shared training seeds and the same images (Δ and win rate with "
                               "95% CIs, bootstrap p Holm-adjusted over the table) for the primary metric and --metrics"),
    protocol: str = typer.Option(None, help="also write protocol.md/.csv: every run's --metrics (default: the primary "
                                 "metric) as a paper reports it: imagereward (mean per prompt, then over prompts) or "
                                 "kto-median-of-k (win rate of median images vs the base model; odd k)"),
) -> None:
    """Comparison tables from run records: one row per method, mean ± 95% CI, win rate and Δ vs base, budget used."""
    from bench.results.tables import FORMATS, write_report  # deferred: loads pandas and matplotlib

    wanted = tuple(_split(formats))
    if set(wanted) - set(FORMATS):
        _fail(f"--format {formats!r}: choose from md, csv, tex")
    try:
        written, shown = write_report(paths, out, group_by=tuple(_split(group_by)), formats=wanted,
                                      metrics=_split(metrics) if metrics else None, skip_bad=skip_bad, pairs=pairs,
                                      protocol=protocol, progress=True)
    except (ValueError, KeyError, *_user_errors()) as err:
        _fail(str(err))
    for title, table in shown:
        _print_table(table, title)
    console.print("written: " + ", ".join(map(str, written)))


@app.command()
def figures(
    paths: list[Path] = typer.Argument(..., help="run records, `bench invert` results or directories of them"),
    out: Path = typer.Option(Path("figures"), callback=_output_dir, help="output directory"),
    fmt: str = typer.Option("png", "--format", help="png or pdf"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="skip missing or corrupt records instead of failing"),
) -> None:
    """Paper figures: efficiency frontier, win rates, proxy vs oracle, inversion error and time, sample grids."""
    from bench.results.leaderboard import build_figures  # deferred: loads pandas and matplotlib

    if fmt not in ("png", "pdf"):
        _fail(f"--format {fmt!r}: choose png or pdf")
    try:
        written = build_figures(paths, out, fmt, skip_bad=skip_bad)
    except (ValueError, KeyError, *_user_errors()) as err:
        _fail(str(err))
    if not written:
        _fail(f"nothing to plot in {', '.join(map(str, paths))}")
    console.print("written: " + ", ".join(map(str, written)))


@app.command()
def leaderboard(
    results: Path = typer.Option(Path("results"), callback=_output_dir,
                                 help="the results directory (records under results/runs/)"),
    check: bool = typer.Option(False, "--check", help="fail, naming what differs, if the committed leaderboard is stale"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="skip missing or corrupt records instead of failing"),
) -> None:
    """Rebuild results/leaderboard.md, .csv, figures/ and index.html from the committed run records."""
    from bench.results.leaderboard import build  # deferred: loads pandas and matplotlib
    from bench.results.leaderboard import check as check_leaderboard

    try:
        if check:
            problems = check_leaderboard(results, skip_bad=skip_bad)
            if problems:
                for problem in problems:
                    err_console.print(f"stale leaderboard: {problem}", highlight=False)
                raise typer.Exit(code=1)
            console.print(f"{results}: leaderboard up to date")
            return
        manifest = build(results, skip_bad=skip_bad, progress=True)
    except _user_errors() as err:
        _fail(str(err))
    console.print(f"{results}: {len(manifest['records'])} records -> {len(manifest['outputs'])} files")


@app.command("list")
def list_registry(
    name: str = typer.Argument(None, help="a method, sampler or metric: list its settings (type, default, help)"),
) -> None:
    """List the registered alignment methods, inversion samplers, metrics and suites; with NAME, that plugin's
    settings: every field of its Config with type, default and help (and, for a method, what `bench tune` searches)."""
    from bench.harness.suites import SUITES  # deferred: the registries import their plugins (diffusers)
    from methods.alignment import METHODS
    from methods.inversion import SAMPLERS
    from metrics import SCORERS

    def summary(obj) -> str:
        doc = (obj.__doc__ or sys.modules[obj.__module__].__doc__ or "").strip()
        return " ".join(doc.split("\n\n")[0].split())

    if name is None:
        for title, registry in (("methods", METHODS), ("samplers", SAMPLERS), ("metrics", SCORERS), ("suites", SUITES)):
            table = Table(title=title, show_header=False, title_justify="left")
            for entry, obj in registry.items():
                table.add_row(entry, summary(obj))
            console.print(table)
        return
    plugins = (("method", METHODS, "bench run --method-arg"), ("sampler", SAMPLERS, "bench invert --sampler-arg"),
               ("metric", SCORERS, "bench run/eval --metric-arg"))
    found = [(kind, registry, flag) for kind, registry, flag in plugins if name in registry]
    if not found:
        _fail(str(UnknownNameError("plugin", name, sorted(entry for _, registry, _ in plugins for entry in registry))))
    for kind, registry, flag in found:
        cls = registry.get(name)
        lines = [f"[bold]{kind} {name}[/]: {escape(summary(cls))}"]
        for row in field_rows(cls.Config):
            search = f"  (bench tune searches {row['search']})" if row["search"] else ""
            lines += [escape(f"  {row['field']}: {row['type']} = {row['default']}{search}"), f"      {escape(row['help'])}"]
        if len(lines) == 1:
            lines.append("  no settings")
        else:
            lines.append(f"set with: {flag} {name}.FIELD=VALUE")
        if kind == "sampler":
            lines.append(escape("as InPO's inverter: bench run --method-arg inpo.inversion_args=FIELD=VALUE[,FIELD=VALUE]"))
        if kind == "method":
            lr = search_space(TrainConfig)["lr"].describe()
            lines.append(escape(f"bench tune also searches the learning rate over {lr} (--train-arg {name}.lr=VALUE "
                                "sets it)"))
        console.print("\n".join(lines), highlight=False, soft_wrap=True)


@app.command("eval")
def eval_images(
    metrics: str = typer.Option(..., "--metrics", "-m", help="comma-separated scorers, e.g. pickscore,clip,aesthetic "
                                "(see `bench list`)"),
    images: Path = typer.Option(None, "--images", help="folder of .png/.jpg/.jpeg/.webp images, scored in natural "
                                "file-name order (2.png before 10.png)"),
    prompts: Path = typer.Option(None, "--prompts", help="text file: one prompt per image in the same order, or one "
                                 "prompt for all"),
    toy_renders: int = typer.Option(None, "--toy-renders", help="instead of --images: score N ground-truth toy renders "
                                    "of the held-out captions (offline; for oracle, toy-clip, toy-pickscore)"),
    toy_samples: int = typer.Option(None, "--toy-samples", help="instead of --images: score N samples of the toy "
                                    "pipeline (base model) for the held-out captions, DDIM 20 steps, CFG 3 (offline)"),
    pipeline: Path = typer.Option(None, "--pipeline", help="pipeline for --toy-samples (default: the toy build's)"),
    save_images: Path = typer.Option(None, "--save-images", help="with --toy-renders/--toy-samples: also write the "
                                     "scored images (DIR/00000.png ...) and DIR/prompts.txt, for --images/--prompts"),
    weights: list[str] = typer.Option([], "--weights", help=_WEIGHTS_HELP),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help=_PICKLE_HELP),
    metric_arg: list[str] = typer.Option([], "--metric-arg", help=_METRIC_ARG_HELP),
    clip_backbone: str = typer.Option(None, "--clip-backbone", help=_DEPRECATED_HELP.format("clip.backbone")),
    hps_version: str = typer.Option(None, "--hps-version", help=_DEPRECATED_HELP.format("hps.version")),
    json_path: Path = typer.Option(None, "--json", callback=_output_file,
                                   help="write per-image scores and scorer descriptions (weight paths, SHA256) here"),
    batch_size: int = typer.Option(32, "--batch-size", help="images read and scored at a time"),
    seed: int = typer.Option(0, help="toy renders: seed of the scenes' unnamed variables (position jitter, y, radius); "
                             "toy samples: sample i uses seed + i"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bar"),
) -> None:
    """Score images with each metric: mean, 95% bootstrap CI and n per metric; per-image scores to --json.

    Every scorer is built (weights found and loaded) before any image is read or sampled, so missing weights
    stop the command with exit code 2 having written nothing.
    """
    _quiet_libraries()
    from bench.harness.score_images import plan_eval, score_images  # deferred: loads diffusers and the scorers

    names = _split(metrics)
    if not names:
        _fail("--metrics: give at least one scorer")
    try:
        options = _scorer_options(names, "--metrics", weights, allow_pickle, metric_arg, hps_version=hps_version,
                                  clip_backbone=clip_backbone)
        plan = plan_eval(names, options, images=images, prompts=prompts, toy_renders=toy_renders,
                         toy_samples=toy_samples, pipeline=pipeline, seed=seed, batch_size=batch_size,
                         save_images=save_images)
        record = score_images(plan, progress=not quiet)
    except (ValueError, OSError, *_user_errors()) as err:
        _fail(str(err))
    n = len(record["prompts"])
    if save_images is not None:
        console.print(f"{n} images and prompts.txt written to {save_images}")
    table = Table(title=f"{n} images from {plan.description}")
    for column in ("metric", "mean", "95% CI", "n", "better", "scale"):
        table.add_column(column)
    for name, stat in record["aggregates"].items():
        scorer = record["scorers"][name]
        table.add_row(name, f"{stat['mean']:.4g}", f"[{stat['ci_low']:.4g}, {stat['ci_high']:.4g}]", str(stat["n"]),
                      "higher" if scorer["higher_is_better"] else "lower", scorer["scale"])
    console.print(table)
    if json_path is not None:
        write_json_atomic(json_path, record)
        console.print(f"per-image scores written to {json_path}")


@app.command("weights")
def list_weights(
    metrics: str = typer.Option(None, "--metrics", "-m", help="only these scorers (default: every registered one)"),
    no_hash: bool = typer.Option(False, "--no-hash", help="skip SHA256 (hashing multi-GB files takes seconds)"),
    json_path: Path = typer.Option(None, "--json", callback=_output_file, help="also write the listing here"),
) -> None:
    """List each scorer's weight files: where each was found (or "missing"), size and SHA256."""
    from metrics import SCORERS  # deferred: the scorers load transformers and open_clip
    from metrics.build import weight_rows

    try:
        names = _split(metrics) if metrics else SCORERS.names()
        SCORERS.check(names)
    except _user_errors() as err:
        _fail(str(err))
    rows = weight_rows(names, hash_files=not no_hash)
    table = Table(title="scorer weights (explicit --weights NAME=PATH, then $BENCH_WEIGHTS_DIR, then the hub cache)")
    for column in ("metric", "file", "found at", "size", "sha256"):
        table.add_column(column, overflow="fold")
    for row in rows:
        if row["file"] is None:
            table.add_row(row["metric"], "(none needed)", "", "", "")
            continue
        size = "" if row["bytes"] is None else f"{row['bytes'] / 2**20:.1f} MiB"
        label = row["file"] if row["file"].endswith("(model directory)") else f"{row['file']}\n[dim]{row['repo']}[/]"
        table.add_row(row["metric"], label, row["path"] or "[red]missing[/]", size, row["sha256"] or "")
    console.print(table)
    if json_path is not None:
        write_json_atomic(json_path, {"weights": rows})


@toy_app.command("build")
def toy_build(
    out: Path = typer.Option(None, callback=_output_dir, help="output directory (default: the cache's toy/ directory)"),
    reuse_pipeline: Path = typer.Option(None, "--reuse-pipeline",
                                        help="an earlier build's pipeline/ directory: skip pretraining, make only the "
                                             "preference data and the report anew (~2 min)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
) -> None:
    """Train the toy pipeline (deterministic, ~11 min on 2 cores), sample and label its preference data."""
    _quiet_libraries()
    from bench.harness.toy_build.build import build_toy  # deferred: loads diffusers

    if reuse_pipeline is not None and not (reuse_pipeline / "model_index.json").is_file():
        _fail(f"--reuse-pipeline {reuse_pipeline}: not a pipeline directory (no model_index.json)")
    target = out or build_dir()
    report = build_toy(target, progress=not quiet, reuse_pipeline=reuse_pipeline)
    console.print(json.dumps(report, indent=1))
    console.print(f"toy build written to {target}; use it with BENCH_TOY_DIR={target} bench run ...")


@toy_app.command("build-scorers")
def toy_build_scorers(
    out: Path = typer.Option(None, callback=_output_dir,
                             help="output directory (default: the cache's toy/scorers/; the shipped ones are in "
                                  "bench/toy/assets/scorers/)"),
    prefs: Path = typer.Option(None, help="preference pairs for toy-pickscore (default: the toy build's prefs.parquet)"),
    pipeline: Path = typer.Option(None, help="pipeline whose samples the report scores (default: the toy build's)"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
) -> None:
    """Train the toy proxy scorers toy-clip and toy-pickscore and report their Spearman ρ with the oracle
    (deterministic; ~4 CPU-minutes: ~7 min with OMP_NUM_THREADS=1 on a busy 2-core machine)."""
    _quiet_libraries()
    from bench.harness.toy_build.scorers import build_toy_scorers  # deferred: loads diffusers and open_clip

    target = out or build_dir() / "scorers"
    try:
        report = build_toy_scorers(target, prefs or toy_dir() / "prefs.parquet", pipeline=pipeline or toy_dir() / "pipeline",
                                   progress=not quiet)
    except _user_errors() as err:
        _fail(str(err))
    console.print(json.dumps(report, indent=1))
    console.print(f"toy scorers written to {target}; use them with --weights toy-clip={target} "
                  f"(or BENCH_TOY_DIR=DIR holding scorers/)")


def main() -> None:
    # Denormal floats make CPU kernels 10-100x slower (seen here with lightly trained toy weights).
    torch.set_flush_denormal(True)
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted; resume with `bench run --resume --run-dir DIR`")
        sys.exit(130)


if __name__ == "__main__":
    main()
