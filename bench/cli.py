"""The `bench` command line: a thin layer over the harness (no logic of its own).

Each command parses its options, calls the function that does the work, and prints. Errors a user can fix
(unknown names, bad budgets or arguments, missing files or weights) print one line naming the problem and exit with
code 2, before any work starts where they can be detected.

The harness, the plugins and the results layer load diffusers, transformers and datasets (seconds), so each
command imports what it calls in its body ("deferred" below): `bench --help` and a command's own `--help` do not
wait for them.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from bench.core.config import parse_plugin_configs, split_list
from bench.core.processes import processes
from bench.core.records import write_json_atomic
from bench.toy.paths import build_dir, toy_dir

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
    from bench.harness.requests import USER_ERRORS  # deferred: the modules of these errors load diffusers

    return USER_ERRORS


def _print_table(df, title: str) -> None:
    table = Table(title=title)
    for column in df.columns:
        table.add_column(str(column), overflow="fold")
    for row in df.itertuples(index=False):
        table.add_row(*(escape(str(cell)) for cell in row))
    console.print(table)


def _deprecated(notices: list[str]) -> None:
    for notice in notices:
        err_console.print(f"[yellow]deprecated:[/] {notice}", highlight=False, soft_wrap=True)


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


# Options several commands share.
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")]
SkipBad = Annotated[bool, typer.Option("--skip-bad", help="skip missing or corrupt records instead of failing")]
Weights = Annotated[list[str], typer.Option("--weights", help="NAME=PATH: local weights (file or directory) for "
                                            "scorer NAME; repeatable")]
AllowPickle = Annotated[bool, typer.Option("--allow-pickle", help="load checkpoints holding pickled Python objects "
                                           "(runs their code: trusted files only)")]
MetricArg = Annotated[list[str], typer.Option("--metric-arg", help="METRIC.FIELD=VALUE setting of a scorer in the "
                                              "metrics, e.g. hps.version=v2.0 or clip.backbone=ViT-B-32:openai "
                                              "(fields: `bench list METRIC`); repeatable")]
_DEPRECATED_HELP = "deprecated alias of --metric-arg {}=VALUE (removed in the next release)"
ClipBackbone = Annotated[str, typer.Option("--clip-backbone", help=_DEPRECATED_HELP.format("clip.backbone"))]
HpsVersion = Annotated[str, typer.Option("--hps-version", help=_DEPRECATED_HELP.format("hps.version"))]


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
    reward: str = typer.Option(None, help="what online methods (ddpo, grpo, draft, dense-reward) train on: a scorer or "
                               "a weighted sum, e.g. toy-pickscore or pickscore:1,hps:0.5; default: the suite's primary "
                               "metric (the oracle on the toy). Evaluation scores every metric either way"),
    set_metrics: str = typer.Option(None, "--set-metrics", help="comma-separated metrics of the image set (fd-*, "
                                    "prdc-*, vendi-*: see `bench list`), '' for none; default: the suite's (toy: "
                                    "fd-toyclip,prdc-toyclip,vendi-toyclip against renders of the test prompts)"),
    curve_every: float = typer.Option(None, "--curve-every", help="online methods: evaluate on the validation prompts "
                                      "(one image each, every metric) every this many training NFE, the reward-hacking "
                                      "curve in the record's history (val/METRIC); 0: never; default: the suite's "
                                      "(toy 1e4)"),
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
    weights: Weights = [],
    allow_pickle: AllowPickle = False,
    metric_arg: MetricArg = [],
    clip_backbone: ClipBackbone = None,
    hps_version: HpsVersion = None,
    quiet: Quiet = False,
    jobs: int = typer.Option(1, "--jobs", "-j", help="worker processes for the run's independent trainings (each "
                             "method and seed, trained once through all its budgets), each with 1/N of the threads; a "
                             "record equals --jobs 1's at the same threads per run"),
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
    from bench.harness.requests import ScorerArgs, parse_key_values, run_request, set_threads
    from bench.harness.run import check_launch, execute, summary
    from bench.results.tables import write_run_tables

    try:
        scorers = ScorerArgs(tuple(weights), allow_pickle, tuple(metric_arg),
                             (("hps_version", hps_version), ("clip_backbone", clip_backbone)))
        request = run_request(suite, methods=methods, budgets=budget, seeds=seeds, method_args=method_arg,
                              train_args=train_arg, scorers=scorers, run_dir=run_dir, resume=resume, progress=not quiet,
                              pipeline=pipeline, data=data, prompts=prompts, dtype=dtype, dry_run=dry_run,
                              reward=reward, curve_every=curve_every, set_metrics=set_metrics)
        _deprecated(request.notices)
        plan, the_suite = request.plan, request.suite
        if dry_run:
            report = plan_dry_run(plan, seconds_per_nfe=seconds_per_nfe)
            for table in report_tables(report):
                console.print(table)
            console.print("\n".join(report_notes(report)), highlight=False, soft_wrap=True)
            if json_path is not None:
                write_json_atomic(json_path, report.to_dict())
                console.print(f"dry-run report written to {json_path}")
            return
        check_launch(jobs, launcher)
        set_threads(threads)
        if processes().is_main_process:
            console.print(f"suite [bold]{suite}[/]: {the_suite.description}; budget "
                          f"{', '.join(map(str, plan.budgets))} per method; records in {plan.run_dir}", highlight=False)

        def announce(path: Path, record: dict) -> None:
            stat = record["metrics"][the_suite.primary_metric]
            console.print(f"  {record['method']:>6}  {the_suite.primary_metric} {stat['mean']:.3f} "
                          f"[{stat['ci_low']:.3f}, {stat['ci_high']:.3f}]  -> {path}", highlight=False)

        paths = execute(plan, on_record=announce, jobs=jobs, launcher=launcher,
                        launcher_args=parse_key_values(launcher_arg, "--launcher-arg", "timeout_min=240"))
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
    method_arg: list[str] = typer.Option([], "--method-arg", "-a", help="METHOD.FIELD=VALUE fixed in every trial and "
                                         "final run, not searched, e.g. sdpo.safeguard=true with --methods sdpo=dpo"),
    train_arg: list[str] = typer.Option([], "--train-arg", "-t", help="[METHOD.]FIELD=VALUE training setting fixed in "
                                        "every trial and final run (a field given is not searched)"),
    export: Path = typer.Option(None, "--export", callback=_output_file,
                                help="also write the chosen settings as a suite's tuned.json (the toy ships one)"),
    jobs: int = typer.Option(1, "--jobs", "-j", help="worker processes for the trials and the final runs, each with "
                             "1/N of the threads; every trial and record equals --jobs 1's at the same threads per run "
                             "(the seeded start-up trials run side by side, each later trial once its method's earlier "
                             "ones are done)"),
    quiet: Quiet = False,
) -> None:
    """Tune every method with the same number of trials on validation prompts, then retrain the best settings on
    several seeds and report them on test prompts."""
    _quiet_libraries()
    from bench.harness.requests import tune_request  # deferred: loads diffusers and optuna
    from bench.harness.run import check_launch
    from bench.harness.tune import suite_defaults
    from bench.harness.tune import tune as run_tune

    try:
        check_launch(jobs)
        plan = tune_request(suite, methods=methods, trials=trials, budget=budget, objective=objective, seed=seed,
                            storage=storage, run_dir=run_dir, resume=resume, progress=not quiet,
                            final_seeds=final_seeds, final_budgets=final_budgets, method_args=method_arg,
                            train_args=train_arg).plan
        console.print(f"tuning {', '.join(plan.methods)} on {suite}: {trials} trials each at {plan.budget}, objective "
                      f"{plan.objective} on the validation prompts; study in {plan.storage_url}", highlight=False)
        result = run_tune(plan, final=not no_final, jobs=jobs)
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
    pipeline: str = typer.Option(None, help="pipeline directory or hub id (default: the suite's)"),
    suite: str = typer.Option("toy", help="whose pipeline inverts (e.g. toy-flow, a flow-matching model)"),
    out: Path = typer.Option(Path("runs/invert"), callback=_output_dir, help="where the JSON, table and figures go"),
    json_path: Path = typer.Option(None, "--json", callback=_output_file, help="also write the records here"),
    repeats: int = typer.Option(1, help="timed runs per sampler (median reported)"),
    quiet: Quiet = False,
) -> None:
    """Invert and reconstruct the same images with each sampler: error, NFE, time, overhead vs the compute floor."""
    _quiet_libraries()
    from bench.harness.invert import InvertConfig, check_schedules, invert_record, load_inputs  # deferred: diffusers
    from bench.harness.suites import get_suite
    from bench.results.inversion import write_inversion
    from bench.results.report import three_significant
    from methods.inversion import SAMPLERS

    try:
        scales = tuple(float(w) for w in split_list(guidances))
    except ValueError:
        _fail(f"--guidances {guidances!r}: expected comma-separated numbers")
    try:
        names = tuple(split_list(samplers))
        cfg = InvertConfig(samplers=names, steps=steps, guidances=scales, dtype=dtype, repeats=repeats,
                           sampler_configs=parse_plugin_configs(sampler_arg, "--sampler-arg", SAMPLERS, names,
                                                                where="--samplers"))
        backbone, pixels, prompts = load_inputs(pipeline or get_suite(suite).pipeline, images_dir, prompt, images)
        check_schedules(names, backbone.native_space)
    except (ValueError, FileNotFoundError, *_user_errors()) as err:
        _fail(str(err))
    try:
        record = invert_record(backbone, pixels, prompts, cfg, progress=not quiet)
    except ValueError as err:  # a sampler whose maths has no step on this level path (e.g. belm up to σ = 1)
        _fail(str(err))
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


SPEED_SAMPLERS = {"vp": "ddim,edict,bdia,belm",  # `bench speed`'s default samplers per schedule (DDIM, the reference,
                  "flow": "euler,rf-solver,fireflow,bdia,rex"}  # is timed first either way)


@app.command()
def speed(
    samplers: str = typer.Option(None, help="comma-separated inversion samplers; default: "
                                 f"{SPEED_SAMPLERS['vp']} (flow pipelines: {SPEED_SAMPLERS['flow']})"),
    steps: int = typer.Option(50, help="sampling steps"),
    images: int = typer.Option(8, help="batch of toy renders inverted at once"),
    dtype: str = typer.Option("float32", help="float32 or float64"),
    repeats: int = typer.Option(3, help="timed round trips per sampler (median reported)"),
    pipeline: str = typer.Option(None, help="pipeline directory or hub id (default: the suite's)"),
    json_path: Path = typer.Option(None, "--json", callback=_output_file, help="also write the timings here"),
    methods: str = typer.Option(None, "--methods", "-m", help="time these alignment methods' optimizer steps instead "
                                "(seconds per step against the UNet compute of its calls), e.g. grpo,ddpo,dpo"),
    suite: str = typer.Option("toy", help="whose pipeline inverts (e.g. toy-flow); with --methods, the suite they "
                              "train on"),
    train_steps: int = typer.Option(3, help="--methods: optimizer steps timed per method (median reported)"),
    warmup: int = typer.Option(1, help="--methods: untimed optimizer steps first"),
) -> None:
    """Inversion speed on the suite's pipeline: seconds per image, ratio to DDIM and overhead over the denoiser's
    compute floor (medians); with --methods, each method's seconds per optimizer step against the same floor."""
    _quiet_libraries()
    if methods:
        return _method_speed(methods, suite, train_steps, warmup, repeats, json_path)
    from bench.core.schedules import schedule_of
    from bench.harness.invert import InvertConfig, check_schedules, load_inputs, speed_record  # deferred: diffusers
    from bench.harness.suites import get_suite
    from bench.results.inversion import speed_table

    try:
        settings = dict(steps=steps, dtype=dtype, repeats=repeats)
        cfg = InvertConfig(samplers=tuple(split_list(samplers)), **settings) if samplers else None  # before loading
        backbone, pixels, prompts = load_inputs(pipeline or get_suite(suite).pipeline, count=images)
        cfg = cfg or InvertConfig(samplers=tuple(split_list(SPEED_SAMPLERS[schedule_of(backbone.native_space)])),
                                  **settings)
        names = list(cfg.samplers)
        check_schedules(("ddim", *names), backbone.native_space)  # the reference too
        record = speed_record(backbone, pixels, prompts, cfg)
    except (ValueError, *_user_errors()) as err:  # ValueError: also a sampler with no step on this level path
        _fail(str(err))
    _print_table(speed_table(record, names), f"inversion speed: batch {images}, {steps} steps, guidance 1, {dtype}, "
                                             f"median of {repeats}, t_fwd {record['records'][0]['t_fwd'] * 1e3:.1f} ms")
    if json_path is not None:
        write_json_atomic(json_path, record)


def _method_speed(methods: str, suite: str, steps: int, warmup: int, repeats: int, json_path: Path | None) -> None:
    import pandas as pd

    from bench.harness.method_speed import time_methods  # deferred: loads diffusers
    from bench.harness.suites import get_suite

    try:
        timings = time_methods(get_suite(suite), split_list(methods), steps=steps, warmup=warmup, repeats=repeats)
    except _user_errors() as err:
        _fail(str(err))
    table = pd.DataFrame([{"method": t["method"], "s / step": f"{t['seconds_per_step']:.3f}",
                           "NFE / step": f"{t['nfe_per_step']:.0f}", "floor s / step": f"{t['floor_seconds_per_step']:.3f}",
                           "overhead": f"{t['overhead']:.2f}"} for t in timings])
    _print_table(table, f"optimizer step speed on {suite}: median of {steps} steps after {warmup}, {torch.get_num_threads()} "
                        "threads; floor = the UNet compute of the step's calls")
    if json_path is not None:
        write_json_atomic(json_path, {"suite": suite, "steps": steps, "warmup": warmup, "methods": timings})


@app.command("gpu-check")
def gpu_check(
    device: str = typer.Option("cuda", help="torch device: cuda (the real shapes) or cpu (with --tiny)"),
    tiny: bool = typer.Option(False, "--tiny", help="tiny shapes in float32: the same code in under a minute on a CPU"),
    families: str = typer.Option("sd15,sdxl", help="pipeline shapes: sd15 (suite sd15-pickapic), sdxl (sdxl-pickapic)"),
    methods: str = typer.Option(None, "--methods", "-m", help="alignment methods to time (default: every one that trains)"),
    steps: int = typer.Option(None, help="timed optimizer steps per method, median (default: 1)"),
    warmup: int = typer.Option(None, help="untimed optimizer steps first (default: 1; 0 with --tiny)"),
    repeats: int = typer.Option(None, help="timed repeats of sampling and scoring, median (default: 2; 1 with --tiny)"),
    json_path: Path = typer.Option(Path("gpu-check.json"), "--json", callback=_output_file, help="where the record goes"),
) -> None:
    """Measured step time and peak memory of every method at SD 1.5 / SDXL shapes (random weights) beside the dry
    run's estimate; sampling and scoring throughput against diffusers' pipeline and a per-image scorer loop."""
    _quiet_libraries()
    from bench.harness.gpu_check import GpuCheckConfig, report_tables  # deferred: loads diffusers
    from bench.harness.gpu_check import gpu_check as run_check

    try:
        cfg = GpuCheckConfig(device=device, tiny=tiny, families=tuple(split_list(families)), steps=steps, warmup=warmup,
                             repeats=repeats, methods=tuple(split_list(methods)) if methods else None)
        record = run_check(cfg, progress=lambda phase: console.print(f"[dim]gpu-check: {phase}[/]", highlight=False),
                           save=lambda partial: write_json_atomic(json_path, partial))
    except _user_errors() as err:
        _fail(str(err))
    write_json_atomic(json_path, record)
    for table in report_tables(record):
        console.print(table)
    console.print(f"record written to {json_path}")
    failed = [f"{family} {r['method']}" for family, rows in record["families"].items() for r in rows if "error" in r]
    if failed:
        console.print(f"[red]gpu-check: {len(failed)} method(s) failed: {', '.join(failed)} (errors in the record)[/]")
        raise typer.Exit(1)


@app.command()
def report(
    paths: list[Path] = typer.Argument(..., help="run records or directories of them"),
    group_by: str = typer.Option("suite,budget", help="row keys among suite, budget, seed (seeds are aggregated "
                                                     "unless listed)"),
    metrics: str = typer.Option(None, help="comma-separated metrics (default: all recorded)"),
    formats: str = typer.Option("md,csv,tex", "--format", help="any of md, csv, tex"),
    out: Path = typer.Option(Path("report"), callback=_output_dir, help="where table.md/.csv/.tex go"),
    skip_bad: SkipBad = False,
    pairs: bool = typer.Option(False, "--pairs", help="also write pairs.md/.csv/.tex: every two methods of one suite and "
                               "budget paired on their shared training seeds and the same images (Δ and win rate with "
                               "95% CIs, bootstrap p Holm-adjusted over the table) for the primary metric and --metrics"),
    protocol: str = typer.Option(None, help="also write protocol.md/.csv: every run's --metrics (default: the primary "
                                 "metric) as a paper reports it: imagereward (mean per prompt, then over prompts) or "
                                 "kto-median-of-k (win rate of median images vs the base model; odd k)"),
) -> None:
    """Comparison tables from run records: one row per method, mean ± 95% CI, win rate and Δ vs base, budget used."""
    from bench.results.tables import FORMATS, write_report  # deferred: loads pandas and matplotlib

    wanted = tuple(split_list(formats))
    if set(wanted) - set(FORMATS):
        _fail(f"--format {formats!r}: choose from md, csv, tex")
    try:
        written, shown = write_report(paths, out, group_by=tuple(split_list(group_by)), formats=wanted,
                                      metrics=split_list(metrics) if metrics else None, skip_bad=skip_bad, pairs=pairs,
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
    skip_bad: SkipBad = False,
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
    skip_bad: SkipBad = False,
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
    name: str = typer.Argument(None, help="a method, sampler or metric: list its settings (type, default, help); a "
                               "suite: what its runs use"),
) -> None:
    """List the registered alignment methods, inversion samplers, metrics and suites; with NAME, that plugin's
    settings: every field of its Config with type, default and help (and, for a method, what `bench tune` searches),
    or a suite's pipeline, data, prompts, metrics, budget, recipe and per-method settings."""
    from bench.harness.catalog import catalog, plugin_settings  # deferred: the registries import their plugins

    if name is None:
        for title, entries in catalog().items():
            table = Table(title=title, show_header=False, title_justify="left")
            for entry in entries:
                table.add_row(*entry)
            console.print(table)
        return
    try:
        blocks = plugin_settings(name)
    except _user_errors() as err:
        _fail(str(err))
    for title, *lines in blocks:
        console.print("\n".join([f"[bold]{escape(title)}[/]", *map(escape, lines)]), highlight=False, soft_wrap=True)


@app.command("eval")
def eval_images(
    metrics: str = typer.Option(..., "--metrics", "-m", help="comma-separated scorers, e.g. pickscore,clip,aesthetic, "
                                "and set metrics, e.g. fd-dinov2,prdc-dinov2,vendi-dinov2 (see `bench list`)"),
    images: Path = typer.Option(None, "--images", help="folder of .png/.jpg/.jpeg/.webp images, scored in natural "
                                "file-name order (2.png before 10.png)"),
    prompts: Path = typer.Option(None, "--prompts", help="text file: one prompt per image in the same order, or one "
                                 "prompt for all (not needed when only fd-*/prdc-* score the folder)"),
    toy_renders: int = typer.Option(None, "--toy-renders", help="instead of --images: score N ground-truth toy renders "
                                    "of the held-out captions (offline; for oracle, toy-clip, toy-pickscore, *-toyclip)"),
    toy_samples: int = typer.Option(None, "--toy-samples", help="instead of --images: score N samples of the toy "
                                    "pipeline (base model) for the held-out captions, DDIM 20 steps, CFG 3 (offline; "
                                    "past 64 the captions repeat: 256 gives 4 per caption)"),
    pipeline: Path = typer.Option(None, "--pipeline", help="pipeline for --toy-samples (default: the toy build's)"),
    reference: Path = typer.Option(None, "--reference", help="folder of reference images for the set metrics that "
                                   "compare with one (fd-*, prdc-*)"),
    reference_toy_renders: int = typer.Option(None, "--reference-toy-renders", help="instead of --reference: M "
                                              "ground-truth toy renders of the held-out captions"),
    reference_seed: int = typer.Option(1, "--reference-seed", help="seed of the reference toy renders' scenes (default "
                                       "1: other scenes than --toy-renders' default seed 0)"),
    save_images: Path = typer.Option(None, "--save-images", help="with --toy-renders/--toy-samples: also write the "
                                     "scored images (DIR/00000.png ...) and DIR/prompts.txt, for --images/--prompts"),
    weights: Weights = [],
    allow_pickle: AllowPickle = False,
    metric_arg: MetricArg = [],
    clip_backbone: ClipBackbone = None,
    hps_version: HpsVersion = None,
    json_path: Path = typer.Option(None, "--json", callback=_output_file,
                                   help="write per-image scores, set metrics and descriptions (weight paths, SHA256) "
                                        "here"),
    batch_size: int = typer.Option(32, "--batch-size", help="images read and scored at a time"),
    seed: int = typer.Option(0, help="toy renders: seed of the scenes' unnamed variables (position jitter, y, radius); "
                             "toy samples: sample i uses seed + i"),
    quiet: Quiet = False,
) -> None:
    """Score images with each metric: mean, 95% bootstrap CI and n per scorer; each set metric's values with 95% CIs;
    per-image scores to --json.

    Every scorer and feature backbone is built (weights found and loaded) before any image is read or sampled, so
    missing weights stop the command with exit code 2 having written nothing.
    """
    _quiet_libraries()
    from bench.harness.requests import ScorerArgs  # deferred: loads diffusers and the scorers
    from bench.harness.score_images import eval_options, plan_eval, score_images, set_metrics_table
    from bench.results.tables import eval_table

    names = split_list(metrics)
    if not names:
        _fail("--metrics: give at least one scorer or set metric")
    try:
        request = eval_options(names, ScorerArgs(tuple(weights), allow_pickle, tuple(metric_arg),
                                                 (("hps_version", hps_version), ("clip_backbone", clip_backbone))))
        _deprecated(request.notices)
        plan = plan_eval(request.scorers, request.options, images=images, prompts=prompts, toy_renders=toy_renders,
                         toy_samples=toy_samples, pipeline=pipeline, seed=seed, batch_size=batch_size,
                         save_images=save_images, set_metrics=request.set_metrics, set_options=request.set_options,
                         reference=reference, reference_toy_renders=reference_toy_renders, reference_seed=reference_seed)
        record = score_images(plan, progress=not quiet)
    except (ValueError, OSError, *_user_errors()) as err:
        _fail(str(err))
    n = plan.n_images
    if save_images is not None:
        console.print(f"{n} images and prompts.txt written to {save_images}")
    if record["scores"]:
        _print_table(eval_table(record), f"{n} images from {plan.description}")
    if record["set_metrics"]:
        against = f" against {plan.reference_description}" if plan.reference_description else ""
        _print_table(set_metrics_table(record), f"set metrics of {n} images from {plan.description}{against}")
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
    from bench.results.tables import weights_table  # deferred: the scorers load transformers and open_clip
    from metrics import SCORERS
    from metrics.build import weight_rows

    try:
        names = split_list(metrics) if metrics else SCORERS.names()
        SCORERS.check(names)
    except _user_errors() as err:
        _fail(str(err))
    rows = weight_rows(names, hash_files=not no_hash)
    _print_table(weights_table(rows), "scorer weights (explicit --weights NAME=PATH, then $BENCH_WEIGHTS_DIR, then the "
                 "hub cache)")
    if json_path is not None:
        write_json_atomic(json_path, {"weights": rows})


@toy_app.command("build")
def toy_build(
    out: Path = typer.Option(None, callback=_output_dir, help="output directory (default: the cache's toy/ directory; "
                             "toy-flow/ for --family flow)"),
    reuse_pipeline: Path = typer.Option(None, "--reuse-pipeline",
                                        help="an earlier build's pipeline/ directory: skip pretraining, make only the "
                                             "preference data and the report anew (~2 min)"),
    family: str = typer.Option("sd", help="sd: the SD-shaped UNet pipeline (suite toy); flow: an SD3-shaped "
                               "transformer trained with the rectified-flow loss (suite toy-flow)"),
    vae: Path = typer.Option(None, "--vae", help="--family flow: the pipeline directory whose trained vae/ it reuses "
                             "(default: the toy build's pipeline/)"),
    quiet: Quiet = False,
) -> None:
    """Train the toy pipeline (deterministic, ~11 min on 2 cores), sample and label its preference data."""
    _quiet_libraries()
    from bench.harness.toy_build.build import ToyBuildConfig, ToyFlowBuildConfig, build_toy  # deferred: loads diffusers

    if family not in ("sd", "flow"):
        _fail(f"--family {family!r}: expected sd or flow")
    if vae is not None and family != "flow":
        _fail("--vae applies to --family flow only")
    if reuse_pipeline is not None and not (reuse_pipeline / "model_index.json").is_file():
        _fail(f"--reuse-pipeline {reuse_pipeline}: not a pipeline directory (no model_index.json)")
    vae_from = None
    if family == "flow" and reuse_pipeline is None:
        vae_from = vae or toy_dir() / "pipeline"
        if not (vae_from / "vae").is_dir():
            _fail(f"--vae {vae_from}: no vae/ directory")
    target = out or (build_dir().with_name("toy-flow") if family == "flow" else build_dir())
    cfg = ToyFlowBuildConfig() if family == "flow" else ToyBuildConfig()
    report = build_toy(target, cfg, progress=not quiet, reuse_pipeline=reuse_pipeline, vae_from=vae_from)
    console.print(json.dumps(report, indent=1))
    env = "BENCH_TOY_FLOW_DIR" if family == "flow" else "BENCH_TOY_DIR"
    console.print(f"toy build written to {target}; use it with {env}={target} bench run ...")


@toy_app.command("build-scorers")
def toy_build_scorers(
    out: Path = typer.Option(None, callback=_output_dir,
                             help="output directory (default: the cache's toy/scorers/; the shipped ones are in "
                                  "bench/toy/assets/scorers/)"),
    prefs: Path = typer.Option(None, help="preference pairs for toy-pickscore (default: the toy build's prefs.parquet)"),
    pipeline: Path = typer.Option(None, help="pipeline whose samples the report scores (default: the toy build's)"),
    quiet: Quiet = False,
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
