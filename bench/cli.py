"""The `bench` command line: a thin layer over the harness (no logic of its own).

Errors a user can fix (unknown names, bad budgets or arguments, missing files or weights) print one
line naming the problem and exit with code 2, before any work starts where they can be detected.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="diffusion-align-bench: compare diffusion alignment methods under one compute budget.")
toy_app = typer.Typer(no_args_is_help=True, help="The toy world: build its pipeline and preference data.")
app.add_typer(toy_app, name="toy")
console = Console(width=None if sys.stdout.isatty() else 160)  # logs and pipes get the whole table on one line
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _quiet_libraries() -> None:
    import datasets
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
    from bench.core.backbone import BackboneLoadError
    from bench.core.budget import BudgetError
    from bench.core.config import OverrideError
    from bench.core.records import RecordError
    from bench.core.registry import UnknownNameError
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
_CLIP_HELP = "backbone of `clip`: transformers id or directory, or open_clip NAME[:TAG] (default openai/clip-vit-large-patch14)"
_HPS_HELP = "version of `hps`: v2.1 (default) or v2.0"


def _held_out_renders(images: int):
    """(pixels (N, 3, H, W), prompts): ground-truth renders of the first N held-out toy captions, seed 0."""
    from bench.toy.world import render_dataset, split_combos

    held_out = split_combos().test
    if not 1 <= images <= len(held_out):
        raise ValueError(f"--images {images}: the toy world has {len(held_out)} held-out captions; "
                         f"choose 1 to {len(held_out)}")
    return render_dataset(held_out[:images], 1, seed=0)


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
    method_arg: list[str] = typer.Option([], "--method-arg", "-a", help="METHOD.FIELD=VALUE, e.g. inpo.inversion=ddim"),
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
    clip_backbone: str = typer.Option(None, "--clip-backbone", help=_CLIP_HELP),
    hps_version: str = typer.Option(None, "--hps-version", help=_HPS_HELP),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
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
    from bench.core.budget import Budget
    from bench.core.processes import processes
    from bench.core.records import write_json_atomic
    from bench.harness.run import execute, parse_method_args, plan_run, summary
    from bench.harness.suites import get_suite
    from bench.results.report import comparison_table, directions, display_table, write_tables
    from metrics.build import ScorerOptions

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
        method_names = _split(methods) if methods else list(the_suite.default_methods)
        plan = plan_run(the_suite, method_names, budgets=budgets, seeds=seed_list,
                        method_args=parse_method_args(method_arg),
                        train_args=parse_method_args(train_arg, "--train-arg", any_method=True), run_dir=target, resume=resume,
                        progress=not quiet, pipeline=pipeline, preference_data=data,
                        prompts=["(dry run: prompts not loaded)"] if dry_run and prompts is None else prompts,
                        dtype=dtype, scorer_options=ScorerOptions(_parse_weights(weights), hps_version, clip_backbone,
                                                                  allow_pickle))
        if dry_run:
            from bench.harness.dryrun import dry_run as plan_dry_run
            from bench.harness.dryrun import report_notes, report_tables

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

        paths = execute(plan, on_record=announce)
    except _user_errors() as err:
        _fail(str(err))
    from bench.core.records import read_record

    if not processes().is_main_process:  # under accelerate launch / torchrun, one process reports
        return

    records = [read_record(p) for p in paths]
    df = comparison_table(records, group_by=("suite", "budget", "seed"), metrics=[the_suite.primary_metric])
    higher = directions(records)
    write_tables(df, higher, plan.run_dir, caption=f"{suite}: {the_suite.primary_metric}")
    _print_table(display_table(df, higher, "plain"),
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
    from bench.core.budget import Budget
    from bench.core.records import write_json_atomic
    from bench.harness.suites import get_suite
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
    from bench.core.backbone import Backbone
    from bench.core.records import environment, now, write_json_atomic, write_text_atomic
    from bench.harness.invert import InvertConfig, load_image_dir, run_inversion_benchmark
    from bench.harness.suites import get_suite
    from bench.results.figures import inversion_error_vs_nfe, inversion_time_per_image
    from bench.results.report import inversion_table, three_significant

    try:
        scales = tuple(float(w) for w in _split(guidances))
    except ValueError:
        _fail(f"--guidances {guidances!r}: expected comma-separated numbers")
    try:
        cfg = InvertConfig(samplers=tuple(_split(samplers)), steps=steps, guidances=scales, dtype=dtype, repeats=repeats)
        if images_dir is None:
            pixels, prompts = _held_out_renders(images)
        backbone = Backbone.from_pretrained(pipeline or get_suite("toy").pipeline)
        if images_dir is not None:
            pixels = load_image_dir(images_dir, backbone.image_size)
            prompts = [prompt] * len(pixels)
    except (ValueError, FileNotFoundError, *_user_errors()) as err:
        _fail(str(err))
    result = run_inversion_benchmark(backbone, pixels, prompts, cfg, progress=not quiet)
    result.update(environment=environment(), created=now(), pipeline=backbone.source)
    write_json_atomic(out / "invert.json", result)
    if json_path is not None:
        write_json_atomic(json_path, result)
    df = inversion_table(result["records"])
    write_text_atomic(out / "table.md", df.to_markdown(index=False, floatfmt=".3g") + "\n")
    inversion_error_vs_nfe(result["records"], out / "error_vs_nfe.png")
    inversion_time_per_image(result["records"], out / "time_per_image.png")
    _print_table(three_significant(df), f"inversion: {len(pixels)} images, {steps} steps, guidance "
                                        f"{', '.join(f'{w:g}' for w in scales)}, {dtype}; stored state per image in "
                                        "latents (N = steps)")
    ref = result["diffusers_reference"]
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
    from bench.core.backbone import Backbone
    from bench.core.records import environment, now, write_json_atomic
    from bench.harness.invert import InvertConfig, run_inversion_benchmark
    from bench.harness.suites import get_suite
    from bench.results.report import stored_state

    try:
        names = _split(samplers)
        cfg = InvertConfig(samplers=tuple(dict.fromkeys(["ddim", *names])), steps=steps, dtype=dtype, repeats=repeats)
        pixels, prompts = _held_out_renders(images)
        backbone = Backbone.from_pretrained(pipeline or get_suite("toy").pipeline)
    except (ValueError, *_user_errors()) as err:
        _fail(str(err))
    result = run_inversion_benchmark(backbone, pixels, prompts, cfg, progress=False)
    ddim = next(r for r in result["records"] if r["sampler"] == "ddim")
    ddim_seconds = ddim["seconds_invert"] + ddim["seconds_reconstruct"]
    table = Table(title=f"inversion speed: batch {images}, {steps} steps, guidance 1, {dtype}, median of {repeats}, "
                        f"t_fwd {result['records'][0]['t_fwd'] * 1e3:.1f} ms")
    for column in ("sampler", "s/image invert", "s/image reconstruct", "time vs ddim", "overhead vs floor",
                   "stored latents/image"):
        table.add_column(column)
    for r in result["records"]:
        if r["sampler"] not in names:
            continue
        r["time_vs_ddim"] = (r["seconds_invert"] + r["seconds_reconstruct"]) / ddim_seconds
        table.add_row(r["sampler"], f"{r['seconds_invert'] / images:.4f}", f"{r['seconds_reconstruct'] / images:.4f}",
                      f"{r['time_vs_ddim']:.3f}", f"{r['overhead_ratio']:.3f}", stored_state(r))
    console.print(table)
    if json_path is not None:
        write_json_atomic(json_path, {**result, "environment": environment(), "created": now()})


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
) -> None:
    """Comparison tables from run records: one row per method, mean ± 95% CI, win rate and Δ vs base, budget used."""
    from bench.results.report import (
        comparison_table,
        directions,
        display_pairs,
        display_table,
        find_records,
        load_records,
        pairs_table,
        write_pairs,
        write_tables,
    )

    try:
        records = [r for _, r in load_records(find_records(paths), skip_bad=skip_bad, progress=True)]
        if not records:
            _fail(f"no alignment run records in {', '.join(map(str, paths))}")
        wanted = _split(formats)
        if set(wanted) - {"md", "csv", "tex"}:
            _fail(f"--format {formats!r}: choose from md, csv, tex")
        df = comparison_table(records, tuple(_split(group_by)), _split(metrics) if metrics else None)
        paired = pairs_table(records, _split(metrics) if metrics else None) if pairs else None
    except (ValueError, KeyError, *_user_errors()) as err:
        _fail(str(err))
    higher = directions(records)
    written = write_tables(df, higher, out, formats=tuple(wanted), caption="comparison under equal compute budgets")
    _print_table(display_table(df, higher, "plain"), f"{len(records)} run records")
    if paired is not None:
        written += write_pairs(paired, out, formats=tuple(wanted))
        _print_table(display_pairs(paired, "plain"), "paired differences between methods (Holm-adjusted p)")
    console.print("written: " + ", ".join(map(str, written)))


@app.command()
def figures(
    paths: list[Path] = typer.Argument(..., help="run records, `bench invert` results or directories of them"),
    out: Path = typer.Option(Path("figures"), callback=_output_dir, help="output directory"),
    fmt: str = typer.Option("png", "--format", help="png or pdf"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="skip missing or corrupt records instead of failing"),
) -> None:
    """Paper figures: efficiency frontier, win rates, proxy vs oracle, inversion error and time, sample grids."""
    from bench.results.leaderboard import build_figures

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
    from bench.results.leaderboard import build
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
def list_registry() -> None:
    """List the registered alignment methods, inversion samplers, metrics and suites."""
    from bench.harness.suites import SUITES
    from methods.alignment import METHODS
    from methods.inversion import SAMPLERS
    from metrics import SCORERS

    for title, registry in (("methods", METHODS), ("samplers", SAMPLERS), ("metrics", SCORERS), ("suites", SUITES)):
        table = Table(title=title, show_header=False, title_justify="left")
        for name, obj in registry.items():
            doc = (obj.__doc__ or sys.modules[obj.__module__].__doc__ or "").strip()
            table.add_row(name, " ".join(doc.split("\n\n")[0].split()))
        console.print(table)


def _parse_weights(items: list[str]) -> dict[str, Path]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            _fail(f"--weights {item!r}: expected NAME=PATH, e.g. pickscore=/models/PickScore_v1")
        out[name.strip()] = Path(path.strip()).expanduser()
    return out



def _read_prompts(path: Path, n_images: int) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        _fail(f"--prompts {path}: {getattr(err, 'strerror', None) or err}")
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) == 1:
        return lines * n_images
    if len(lines) != n_images:
        _fail(f"--prompts {path}: {len(lines)} prompts for {n_images} images; give one per image (in natural "
              "file-name order: 2.png before 10.png) or a single prompt for all")
    return lines


def _load_image(path: Path):
    """(3, H, W) float RGB in [0, 1] at the file's own size (each scorer preprocesses as its model expects)."""
    import numpy as np
    import torch
    from PIL import Image

    from bench.harness.data import as_rgb

    with Image.open(path) as img:
        array = np.asarray(as_rgb(img), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


def _image_batches(files: list[Path] | None, images, prompts: list[str], batch_size: int):
    """(indices, prompts, images (B, 3, H, W)) of equal-size images, `batch_size` files read at a time."""
    import torch

    for start in range(0, len(prompts), batch_size):
        index = list(range(start, min(start + batch_size, len(prompts))))
        if files is None:
            yield index, [prompts[i] for i in index], images[index[0]:index[-1] + 1]
            continue
        loaded = {i: _load_image(files[i]) for i in index}
        sizes = {}
        for i, tensor in loaded.items():
            sizes.setdefault(tuple(tensor.shape), []).append(i)
        for group in sizes.values():
            yield group, [prompts[i] for i in group], torch.stack([loaded[i] for i in group])


TOY_SAMPLING = {"steps": 20, "guidance": 3.0}  # the toy suite's evaluation sampler (bench.core.config.EvalConfig defaults)


def _toy_images(renders: int | None, samples: int | None, seed: int, pipeline: Path | None, quiet: bool):
    """(images (N, 3, 32, 32), captions, source facts) for the held-out toy captions, cycled: ground-truth
    renders (scene variables drawn with `seed`), or base-model samples of the toy pipeline (image i: seed + i)."""
    import random

    from bench.toy.world import render, sample_scene, split_combos

    held_out = split_combos().test
    if renders is not None:
        rng = random.Random(seed)
        scenes = [sample_scene(held_out[i % len(held_out)], rng) for i in range(renders)]
        return render(scenes), [s.combo.caption for s in scenes], {"toy_renders": renders, "seed": seed}
    from bench.core.backbone import Backbone
    from bench.harness.sampling import generate
    from bench.toy.paths import toy_dir

    source = pipeline or toy_dir() / "pipeline"
    captions = [held_out[i % len(held_out)].caption for i in range(samples)]
    seeds = [seed + i for i in range(samples)]
    images = generate(Backbone.from_pretrained(source), captions, seeds, progress=not quiet, desc="toy samples",
                      **TOY_SAMPLING)
    return images.clamp(0, 1), captions, {"toy_samples": samples, "pipeline": str(source), "seeds": seeds,
                                          **TOY_SAMPLING}


def _save_images(out: Path, images, prompts: list[str]) -> None:
    """images as out/00000.png ... and out/prompts.txt, one prompt a line: re-scorable with --images/--prompts."""
    from bench.harness.toy_build.preferences import png_bytes

    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        (out / f"{i:05d}.png").write_bytes(png_bytes(image))
    (out / "prompts.txt").write_text("".join(p + "\n" for p in prompts), encoding="utf-8")


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
    clip_backbone: str = typer.Option(None, "--clip-backbone", help=_CLIP_HELP),
    hps_version: str = typer.Option(None, "--hps-version", help=_HPS_HELP),
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
    import torch

    from bench.core.progress import progress_bar
    from bench.core.records import environment, now, write_json_atomic
    from bench.core.stats import bootstrap_mean
    from metrics import SCORERS
    from metrics.build import ScorerOptions, build_scorers

    names = _split(metrics)
    if not names:
        _fail("--metrics: give at least one scorer")
    try:
        SCORERS.check(names)
    except _user_errors() as err:
        _fail(str(err))
    options = ScorerOptions(_parse_weights(weights), hps_version, clip_backbone, allow_pickle)
    try:
        options.check(names)
    except ValueError as err:
        _fail(str(err))
    if batch_size < 1:
        _fail(f"--batch-size must be >= 1, got {batch_size}")
    if sum(x is not None for x in (images, toy_renders, toy_samples)) != 1:
        _fail("give either --images DIR (with --prompts FILE), --toy-renders N or --toy-samples N")
    if pipeline is not None and toy_samples is None:
        _fail("--pipeline applies to --toy-samples")
    if save_images is not None:
        if images is not None:
            _fail("--save-images applies to --toy-renders/--toy-samples (--images are files already)")
        if save_images.exists() and (not save_images.is_dir() or any(save_images.iterdir())):
            _fail(f"--save-images {save_images}: exists and is not an empty directory")
    files = None
    if images is not None:
        from bench.harness.data import image_files

        try:
            files = image_files(images)  # natural order: 2.png before 10.png
        except FileNotFoundError as err:
            _fail(f"--images: {err}")
        if prompts is None:
            _fail("--images needs --prompts FILE (one prompt per image, or one for all)")
        per_image = _read_prompts(prompts, len(files))
    else:
        count, flag = (toy_renders, "--toy-renders") if toy_renders is not None else (toy_samples, "--toy-samples")
        if count < 1:
            _fail(f"{flag} must be >= 1, got {count}")
        if prompts is not None:
            _fail(f"--prompts does not apply to {flag} (the held-out toy captions are the prompts)")
        if pipeline is not None and not pipeline.is_dir():
            _fail(f"--pipeline {pipeline}: not a directory")

    try:  # every scorer first: missing weights stop here, before any image is made or read
        scorers = build_scorers(names, options)
    except (ValueError, *_user_errors()) as err:
        _fail(str(err))

    pixels, toy_source = None, {}
    if files is None:
        try:
            pixels, per_image, toy_source = _toy_images(toy_renders, toy_samples, seed, pipeline, quiet)
        except (ValueError, *_user_errors()) as err:
            _fail(str(err))
        if save_images is not None:
            _save_images(save_images, pixels, per_image)
            console.print(f"{len(per_image)} images and prompts.txt written to {save_images}")

    n = len(per_image)
    scores = {name: torch.full((n,), float("nan")) for name in names}
    components: dict[str, dict[str, torch.Tensor]] = {}
    batches = _image_batches(files, pixels, per_image, batch_size)
    try:
        for index, batch_prompts, batch_images in progress_bar(batches, enabled=not quiet, desc="scoring",
                                                              total=None if files else -(-n // batch_size)):
            for name, scorer in scorers.items():
                scores[name][index] = scorer.score(batch_prompts, batch_images).float().cpu()
                for term, values in scorer.components(batch_prompts, batch_images).items():
                    components.setdefault(name, {}).setdefault(term, torch.full((n,), float("nan")))[index] = values.float()
    except (ValueError, OSError, *_user_errors()) as err:
        _fail(str(err))

    if files:
        source = str(images)
    elif toy_renders is not None:
        source = f"{toy_renders} toy renders (held-out captions, seed {seed})"
    else:
        source = f"{toy_samples} toy-pipeline samples (held-out captions, seeds {seed}..{seed + toy_samples - 1})"
    aggregates = {name: bootstrap_mean(values, groups=per_image) for name, values in scores.items()}  # CI over prompts
    table = Table(title=f"{n} images from {source}")
    for column in ("metric", "mean", "95% CI", "n", "better", "scale"):
        table.add_column(column)
    for name, stat in aggregates.items():
        table.add_row(name, f"{stat['mean']:.4g}", f"[{stat['ci_low']:.4g}, {stat['ci_high']:.4g}]", str(stat["n"]),
                      "higher" if scorers[name].higher_is_better else "lower", scorers[name].scale)
    console.print(table)
    if json_path is not None:
        payload = {
            "kind": "bench-eval", "schema_version": 1, "created": now(), "environment": environment(),
            "source": {"images": str(images) if files else None, "prompts": str(prompts) if prompts else None,
                       "toy_renders": toy_renders, "toy_samples": toy_samples, **toy_source,
                       "saved_images": str(save_images) if save_images else None},
            "files": [p.name for p in files] if files else None, "prompts": per_image,
            "scores": {name: values.tolist() for name, values in scores.items()},
            "components": {name: {t: v.tolist() for t, v in terms.items()} for name, terms in components.items()},
            "aggregates": aggregates, "scorers": {name: s.describe() for name, s in scorers.items()},
        }
        write_json_atomic(json_path, payload)
        console.print(f"per-image scores written to {json_path}")


@app.command("weights")
def list_weights(
    metrics: str = typer.Option(None, "--metrics", "-m", help="only these scorers (default: every registered one)"),
    no_hash: bool = typer.Option(False, "--no-hash", help="skip SHA256 (hashing multi-GB files takes seconds)"),
    json_path: Path = typer.Option(None, "--json", callback=_output_file, help="also write the listing here"),
) -> None:
    """List each scorer's weight files: where each was found (or "missing"), size and SHA256."""
    from bench.core.records import write_json_atomic
    from metrics import SCORERS
    from metrics.base import MissingWeightsError, weight_record

    try:
        names = _split(metrics) if metrics else SCORERS.names()
        SCORERS.check(names)
    except _user_errors() as err:
        _fail(str(err))
    rows = []
    for name in names:
        cls = SCORERS.get(name)
        for spec in cls.weight_specs():
            row = {"metric": name, "file": spec.label, "repo": spec.repo, "description": spec.description,
                   "path": None, "bytes": None, "sha256": None}
            try:
                path = cls.locate_weights(spec)
            except MissingWeightsError:
                rows.append(row)
                continue
            row["path"] = str(path)
            if no_hash:
                row["bytes"] = (sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir()
                                else path.stat().st_size)
            else:
                record = weight_record(spec, path)
                row.update(bytes=record["bytes"], sha256=record["sha256"], files=record.get("files"))
            rows.append(row)
        if not cls.weight_specs():
            rows.append({"metric": name, "file": None, "repo": None, "description": "no weights", "path": None,
                         "bytes": None, "sha256": None})
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
    from bench.core.cache import cache_dir
    from bench.harness.toy_build.build import build_toy

    if reuse_pipeline is not None and not (reuse_pipeline / "model_index.json").is_file():
        _fail(f"--reuse-pipeline {reuse_pipeline}: not a pipeline directory (no model_index.json)")
    target = out or cache_dir() / "toy"
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
    from bench.core.cache import cache_dir
    from bench.harness.toy_build.scorers import build_toy_scorers
    from bench.toy.paths import toy_dir

    target = out or cache_dir() / "toy" / "scorers"
    try:
        report = build_toy_scorers(target, prefs or toy_dir() / "prefs.parquet", pipeline=pipeline or toy_dir() / "pipeline",
                                   progress=not quiet)
    except _user_errors() as err:
        _fail(str(err))
    console.print(json.dumps(report, indent=1))
    console.print(f"toy scorers written to {target}; use them with --weights toy-clip={target} "
                  f"(or BENCH_TOY_DIR=DIR holding scorers/)")


def main() -> None:
    import torch

    # Denormal floats make CPU kernels 10-100x slower (seen here with lightly trained toy weights).
    torch.set_flush_denormal(True)
    try:
        app()
    except KeyboardInterrupt:
        err_console.print("interrupted; resume with `bench run --resume --run-dir DIR`")
        sys.exit(130)


if __name__ == "__main__":
    main()
