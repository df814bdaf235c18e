"""`bench run`: train every requested method under the suite's budget, evaluate, write records.

Flow: validate everything (methods, their arguments, budget, run directory) before any work; load
the Backbone; evaluate the base model (cached: it never changes for a given pipeline, prompt set and
evaluation config); encode the preference data once (cached); then per method and training seed:
train with checkpoints, evaluate on the same prompts and seeds, compare with the base run, and
write the run record atomically. `resume=True` skips runs whose record exists and continues a
killed run from its checkpoint.

Budgets of one counted unit nest (`bench.harness.trainer.NESTED_UNITS`: steps, samples, nfe): training does not
depend on the limit, so a run trained to the largest passes through the state in which each smaller one stops.
Each method and seed therefore trains once per such unit, to the largest budget not yet recorded, and lands each
smaller budget's record as training reaches it (`_chains`); the records are those separate runs write, only the
timings differ. A time budget (seconds, gpu-h) trains on its own.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import re
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.core.backbone import Backbone
from bench.core.budget import Budget, Usage
from bench.core.cache import cache_dir
from bench.core.config import PIPELINE_DTYPES, EvalConfig, OverrideError, TrainConfig, apply_overrides, as_dict
from bench.core.locks import LOCK_ENV, DirectoryHeldError, describe_holder, foreign_holder, hold_directory
from bench.core.processes import processes
from bench.core.progress import progress_bar
from bench.core.records import (
    ALIGNMENT_RUN,
    RUN_MANIFEST,
    SCHEMA_VERSION,
    RecordError,
    new_record,
    read_record,
    write_json_atomic,
)
from bench.harness.data import check_data_source, encode_preferences, load_pickapic, png_bytes, preference_pairs
from bench.harness.evaluation import EvalResult, SetEvaluation, aggregate, compare_to_base, evaluate, evaluation_set
from bench.harness.prompts import prompt_digest, resolve_prompts
from bench.harness.reward import ScorerReward, parse_reward
from bench.harness.suites import Suite
from bench.harness.trainer import NESTED_UNITS, Trainer, TrainResult, declared_step_cost
from bench.toy.paths import toy_dirs
from methods.alignment import METHODS, AlignmentMethod, OnlineMethod
from methods.inference import InferenceTimeMethod
from metrics import SCORERS, SET_METRICS, Scorer
from metrics.build import ScorerOptions, build_scorers, recorded_before_configs

log = logging.getLogger(__name__)


class RunSetupError(ValueError):
    """A run that cannot start: bad arguments or an unusable run directory (nothing is written)."""


@dataclass
class RunPlan:
    suite: Suite
    methods: dict[str, AlignmentMethod]
    train_configs: dict[str, TrainConfig]
    budgets: list[Budget]
    seeds: list[int]
    run_dir: Path
    resume: bool = False
    progress: bool = True
    pipeline: str = ""
    preference_data: str = ""
    eval: EvalConfig = field(default_factory=EvalConfig)
    prompts: list[str] = field(default_factory=list)  # the evaluation prompts, resolved
    prompt_source: dict = field(default_factory=dict)  # where they came from (`bench.harness.prompts.resolve_prompts`)
    split: str = "test"  # which of the suite's prompt sets they are: "test" (reported) or "validation" (tuning)
    dtype: str = "fp32"  # the frozen pipeline's UNet and text encoders, and evaluation (PIPELINE_DTYPES)
    scorer_options: ScorerOptions = field(default_factory=ScorerOptions)  # scorer Configs, weights paths, pickles
    native_space: str | None = None  # the pipeline's prediction space ("eps", "v"); None until it is known
    tuning: dict[str, dict] = field(default_factory=dict)  # method -> how its settings were tuned (`bench.harness.tune`)
    algorithms: dict[str, str] = field(default_factory=dict)  # label -> registered method, where they differ
    reward: str = ""  # what online methods train on (`bench.harness.reward`: "oracle", "pickscore:1,hps:0.5")
    curve_every: float = 0.0  # online methods: NFE between evaluations on the validation prompts (0: none)
    set_metrics: tuple[str, ...] = ()  # the suite's set metrics (`metrics.sets`)

    @property
    def online(self) -> bool:
        """Whether a method uses the reward: one that trains on it (online) or spends inference on it."""
        return any(isinstance(method, OnlineMethod | InferenceTimeMethod) for method in self.methods.values())

    def config(self) -> dict:
        """The full configuration, as stored in run.json and in every record."""
        return {
            "suite": self.suite.name,
            "pipeline": self.pipeline,
            "dtype": self.dtype,
            "preference_data": self.preference_data,
            "preference_split": self.suite.preference_split,
            "max_pairs": self.suite.max_pairs,
            "eval_split": self.split,
            "eval_prompt_source": self.prompt_source,
            "eval_prompts": self.prompts,
            "metrics": list(self.suite.metrics),
            "scorer_options": self.scorer_options.recorded(),
            "scorer_configs": self.scorer_options.recorded_configs(list(self.suite.metrics)),
            "budgets": [{"unit": b.unit, "limit": b.limit} for b in self.budgets],
            "seeds": self.seeds,
            "eval": as_dict(self.eval),
            **({"reward": self.reward, "curve_every": self.curve_every} if self.online else {}),  # offline: as before
            **({"set_metrics": list(self.set_metrics), "reference": self.suite.reference} if self.set_metrics else {}),
            "methods": {name: {**({"algorithm": self.algorithms[name]} if self.algorithms.get(name, name) != name else {}),
                               "config": m.describe(self.native_space), "train": as_dict(self.train_configs[name])}
                        for name, m in self.methods.items()},
        }


LABEL = re.compile(r"[a-z0-9][a-z0-9._-]*")


def parse_method_specs(specs: list[str]) -> dict[str, str]:
    """["dpo", "uniform-t=dpo-gamma-t"] -> {"dpo": "dpo", "uniform-t": "dpo-gamma-t"}: each entry is a registered
    method or LABEL=METHOD, which runs METHOD under its own label (its records, arguments and rows go by the
    label), so that one method can be compared with itself under other settings, e.g. an ablation. A
    deprecated method name warns and becomes its current name."""
    out: dict[str, str] = {}
    for spec in specs:
        label, sep, name = (part.strip() for part in spec.partition("="))
        algorithm = METHODS.resolve(name if sep else label)
        label = label if sep else algorithm
        if sep and not LABEL.fullmatch(label):
            raise RunSetupError(f"--methods {spec!r}: a label is lower-case letters, digits, '.', '_' and '-'")
        if label == "base" or (label != algorithm and (label in METHODS or METHODS.canonical(label) != label)):
            raise RunSetupError(f"--methods {spec!r}: the label {label!r} is taken (the base model or another method)")
        if label in out:
            raise RunSetupError(f"--methods lists {label!r} twice; give one of them a label, e.g. {label}-b={algorithm}")
        out[label] = algorithm
    return out


def plan_run(suite: Suite, method_names: list[str], *, budgets: list[Budget] | None = None, seeds: list[int] | None = None,
             method_args: dict[str, dict[str, str]] | None = None, train_args: dict[str, dict[str, str]] | None = None,
             run_dir: Path, resume: bool = False,
             progress: bool = True, pipeline: str | None = None, preference_data: str | None = None,
             prompts: str | None = None, dtype: str | None = None,
             scorer_options: ScorerOptions | None = None, split: str = "test", reward: str | None = None,
             curve_every: float | None = None, set_metrics: list[str] | None = None) -> RunPlan:
    """Validate a run request completely; raises RunSetupError (or UnknownNameError) before any work.

    `reward` is what online methods train on (default: the suite's primary metric, the oracle on the toy);
    `curve_every` how often (NFE) they are evaluated on the validation prompts during training (default: the suite's);
    `set_metrics` the metrics of the image set (FD, PRDC, Vendi; default: the suite's, [] for none).

    `split` picks the suite's evaluation prompts: "test" (reported) or "validation" (what `bench tune`
    evaluates trials on); `prompts` replaces the test prompts (a file or a standard set)."""
    if not method_names:
        raise RunSetupError("no methods given; e.g. --methods dpo,inpo,kto")
    algorithms = parse_method_specs(method_names)  # label -> registered method
    method_names = list(algorithms)
    SCORERS.check(list(suite.metrics))
    scorer_options = scorer_options or ScorerOptions()
    try:
        scorer_options.check(list(suite.metrics))
    except ValueError as err:
        raise RunSetupError(f"{err} (the {suite.name} suite's metrics)") from None
    def current_names(given: dict) -> dict:  # deprecated method names -> their new names ("*" and labels kept)
        return {name if name == "*" or name in algorithms else METHODS.resolve(name): value for name, value in given.items()}

    method_args, train_args = current_names(method_args or {}), current_names(train_args or {})
    for option, given in (("--method-arg", method_args), ("--train-arg", train_args)):
        for name in given:
            if name != "*" and name not in method_names:
                raise RunSetupError(f"{option} for {name!r}, which is not in --methods")
    suite_method_args = {METHODS.canonical(name): value for name, value in suite.method_args.items()}
    suite_train_args = {METHODS.canonical(name): value for name, value in suite.train_args.items()}
    methods, train_configs = {}, {}
    for name, algorithm in algorithms.items():  # the suite's settings by method (then a variant's), the user's by label
        cls = METHODS.get(algorithm)
        variant = name if name != algorithm and suite.variants.get(name) == algorithm else None
        try:
            config = apply_overrides(cls.Config(), {**suite_method_args.get(algorithm, {}),
                                                    **suite_method_args.get(variant, {}), **method_args.get(name, {})})
            methods[name] = cls(config)
            train_configs[name] = apply_overrides(suite.train, {**suite_train_args.get(algorithm, {}),
                                                                **suite_train_args.get(variant, {}),
                                                                **train_args.get("*", {}), **train_args.get(name, {})})
        except (OverrideError, ValueError, KeyError) as err:
            raise RunSetupError(f"{name}: {err}") from None
    budgets = budgets or [suite.budget]
    if len(set(budgets)) != len(budgets):
        raise RunSetupError(f"a budget is listed twice: {', '.join(map(str, budgets))}")
    Backbone.check_source(pipeline or suite.pipeline)  # mistyped paths, before the run is announced
    if preference_data is not None:
        check_data_source(preference_data)
    embedded_guidance = Backbone.embeds_guidance_of(pipeline or suite.pipeline)  # FLUX.1-dev: a guided forward is 1 NFE
    for budget in budgets:
        for name, method in methods.items():
            step = declared_step_cost(method, train_configs[name], budget.unit, embedded_guidance=embedded_guidance)
            if step > budget.limit:
                raise RunSetupError(f"budget {budget} is smaller than one {name} step ({step:g} {budget.unit} at "
                                    f"batch size {train_configs[name].batch_size}); raise the budget")
    dtype = dtype or suite.dtype
    if dtype not in PIPELINE_DTYPES:
        raise RunSetupError(f"--dtype {dtype!r}: expected one of {', '.join(PIPELINE_DTYPES)}")
    for name, config in train_configs.items():  # a half-precision reference and the policy must compute alike
        if dtype != "fp32" and config.mixed_precision != dtype:
            raise RunSetupError(f"{name}: --dtype {dtype} holds the reference UNet in {dtype}, so the policy must train "
                                f"under the same autocast: add --train-arg mixed_precision={dtype} (it is "
                                f"{config.mixed_precision!r})")
    seeds = seeds if seeds is not None else [0]
    if not seeds or len(set(seeds)) != len(seeds):
        raise RunSetupError(f"seeds must be distinct and non-empty, got {seeds}")
    try:
        source = suite.prompts_for(split)
    except ValueError as err:
        raise RunSetupError(str(err)) from None
    if prompts is not None and split != "test":
        raise RunSetupError("--prompts replaces the test prompts; validation prompts are the suite's own")
    native_space = Backbone.native_space_of(pipeline or suite.pipeline)  # None: not readable offline (hub id)
    for name, method in methods.items():
        if native_space is not None:
            try:
                method.check_schedule(native_space)
            except ValueError as err:
                raise RunSetupError(f"{name}: {err} ({pipeline or suite.pipeline})") from None
    plan = RunPlan(suite, methods, train_configs, budgets, seeds, Path(run_dir), resume, progress,
                   pipeline or suite.pipeline, preference_data or suite.preference_data, suite.eval,
                   *resolve_prompts(prompts if prompts is not None else source), split, dtype, scorer_options,
                   tuning={name: suite.tuning[key] for name, a in algorithms.items()
                           if (key := name if suite.variants.get(name) == a else a) in suite.tuning},
                   algorithms={name: a for name, a in algorithms.items() if name != a},
                   native_space=native_space,  # records "native" resolved
                   reward=reward or suite.primary_metric,
                   curve_every=suite.curve_every if curve_every is None else curve_every,
                   set_metrics=suite.set_metrics if set_metrics is None else tuple(set_metrics))
    _check_set_metrics(plan)
    if plan.curve_every < 0:
        raise RunSetupError(f"--curve-every must be >= 0, got {plan.curve_every}")
    try:
        parse_reward(plan.reward)
    except OverrideError as err:
        raise RunSetupError(str(err)) from None
    manifest = plan.run_dir / "run.json"
    if (holder := foreign_holder(plan.run_dir)) is not None:
        raise RunSetupError(f"run directory {describe_holder(plan.run_dir, holder)}")
    if resume:
        if not manifest.exists():
            raise RunSetupError(f"--resume: {plan.run_dir} holds no run (no run.json)")
        stored = _fields_added_since({"dtype": "fp32", "eval_split": "test",  # runs started before these existed
                                      **recorded_before_configs(read_record(manifest, RUN_MANIFEST)["config"])}, plan)
        if stored != json.loads(json.dumps(plan.config())):
            diff = sorted(k for k in plan.config() if stored.get(k) != json.loads(json.dumps(plan.config()))[k])
            raise RunSetupError(f"--resume: {plan.run_dir} was started with a different configuration ({', '.join(diff)})")
    elif plan.run_dir.exists() and any(plan.run_dir.iterdir()):
        raise RunSetupError(f"run directory {plan.run_dir} is not empty; pass --resume to continue it or choose another")
    return plan


def _check_set_metrics(plan: RunPlan) -> None:
    """RunSetupError unless each set metric can be computed on the run's evaluation images (and the suite names a
    reference set for those that compare with one)."""
    SET_METRICS.check(list(plan.set_metrics))
    per_image, _ = evaluation_set(plan.prompts, plan.eval)
    for name in plan.set_metrics:
        metric = SET_METRICS.get(name)()
        if metric.needs_reference and plan.suite.reference is None:
            raise RunSetupError(f"{name} compares with a reference set, and the {plan.suite.name} suite names none; "
                                "leave it out with --set-metrics")
        try:
            metric.check_sets(len(per_image), len(per_image), per_image)
        except ValueError as err:
            raise RunSetupError(f"{str(err).split(';')[0]} (the run evaluates {len(per_image)} images of "
                                f"{len(plan.prompts)} prompts); evaluate more, or leave it out with --set-metrics") from None


def _fields_added_since(stored: dict, plan: RunPlan) -> dict:
    """`stored` (a run's recorded configuration) with the method Config and TrainConfig fields added since it was
    recorded (e.g. TrainConfig's lora_*), which the run therefore used at their defaults, filled in where this plan has
    them at their defaults too (as described): such a run resumes, and one asked to resume with another value for the
    new field does not."""
    described = json.loads(json.dumps(plan.config()["methods"]))
    for name, method in plan.methods.items():
        for part, config in (("config", method.config), ("train", plan.train_configs[name])):
            recorded = stored.get("methods", {}).get(name, {}).get(part)
            if recorded is None:
                continue
            defaults = type(config)()
            for f in dataclasses.fields(config):
                if f.name not in recorded and getattr(config, f.name) == getattr(defaults, f.name):
                    recorded[f.name] = described[name][part][f.name]
    return stored


def _scorer_identity(described: dict) -> dict:
    """What a score depends on: a scorer's description (`Scorer.describe()`) with its weights' SHA256s, without
    local paths."""
    weights = [{k: v for k, v in w.items() if k != "path"} for w in described.get("weights", [])]
    return {**described, "weights": weights}


def _base_cache_key(backbone: Backbone, plan: RunPlan, scorers: dict[str, Scorer],
                    sets: SetEvaluation | None = None) -> str:
    identities = {name: _scorer_identity(scorer.describe()) for name, scorer in scorers.items()}
    described = {}
    if sets is not None:  # as the scorers': the backbones' weights by SHA256, not by where they are on this machine
        set_identities = {name: {**d, "backbone": _scorer_identity(d["backbone"])} for name, d in sets.describe().items()}
        described = {"sets": json.loads(json.dumps(set_identities)), "reference": sets.reference}
    payload = json.dumps({"unet": backbone.fingerprint("unet"), "vae": backbone.fingerprint("vae"), "dtype": plan.dtype,
                          "text": backbone.fingerprint("text"), "prompts": plan.prompts, "eval": as_dict(plan.eval),
                          "scorers": identities, "schema": SCHEMA_VERSION, **described}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _budget_summary(unit: str, limit: float, usage: Usage | None = None) -> dict:
    """The record's budget: limit and use in its unit, and use in every unit (the base model: none, limit 0)."""
    usage = usage or Usage()
    return {"unit": unit, "limit": limit, "used": usage.get(unit), "seconds": usage.seconds, "usage": vars(usage)}


def sample_thumbnails(images: torch.Tensor, plan: RunPlan, size: int = 128) -> dict:
    """The first `eval.sample_images` evaluation images as PNG (base64), at most `size` px, for figures."""
    k = min(plan.eval.sample_images, len(images))
    thumbs = images[:k]
    if thumbs.shape[-1] > size:
        thumbs = torch.nn.functional.interpolate(thumbs, size=(size, size), mode="bilinear", antialias=True)
    return {"indices": list(range(k)), "png_base64": [base64.b64encode(png_bytes(img)).decode() for img in thumbs]}


def base_record(backbone: Backbone, plan: RunPlan, scorers: dict[str, Scorer], sets: SetEvaluation | None = None) -> dict:
    """The base model's record, from the cache when this pipeline, prompts, evaluation config and scorers (their
    weights' SHA256s, HPS version, CLIP backbone) were seen before, here or where the toy build ships them
    (`<toy dir>/base/`: the toy suite's test and validation evaluations, so a first run does not recompute what
    never changes between runs)."""
    key = f"{_base_cache_key(backbone, plan, scorers, sets)}.json"
    cached = cache_dir() / "base" / key
    for found in (cached, *(d / "base" / key for d in toy_dirs())):
        if not found.exists():
            continue
        try:
            stored = read_record(found)
        except RecordError as err:
            log.warning("ignoring unreadable base cache: %s", err)
        else:
            set_fields = {key: stored[key] for key in SET_FIELDS if key in stored}
            return {**_record(plan, "base", None, _budget_summary(plan.budgets[0].unit, 0), None,
                              EvalResult.from_dict(stored["evaluation"]), scorers, None, backbone, stored["samples"]),
                    **set_fields}
    result, images = evaluate(backbone, plan.prompts, plan.eval, scorers, progress=plan.progress, desc="eval base",
                              features=sets.backbones if sets else None)
    record = _record(plan, "base", None, _budget_summary(plan.budgets[0].unit, 0), None, result, scorers, None,
                     backbone, sample_thumbnails(images, plan), sets=sets)
    if processes().is_main_process:
        write_json_atomic(cached, record)
    return record


def prompt_splits(plan: RunPlan, train_prompts: list[str] | None) -> dict:
    """The record's prompt sets: the preference data's prompts (train) and the evaluated ones, each with its count
    and SHA256, and how many evaluation prompts also occur in the preference data (0 on the suites shipped here)."""
    splits = {plan.split: prompt_digest(plan.prompts)}
    if train_prompts is not None:
        splits["train"] = prompt_digest(train_prompts)
        splits["overlap_with_train"] = len(set(plan.prompts) & set(train_prompts))
    return splits


SET_FIELDS = ("set_metrics", "set_metric_descriptions", "reference_set")  # a record's set metrics (`SetEvaluation`)


def _record(plan: RunPlan, method: str, seed: int | None, budget: dict, training: dict | None, result: EvalResult,
            scorers: dict[str, Scorer], base: EvalResult | None, backbone: Backbone, samples: dict,
            splits: dict | None = None, sets: SetEvaluation | None = None) -> dict:
    record = new_record(
        ALIGNMENT_RUN,
        suite=plan.suite.name,
        method=method,
        seed=seed,
        config=plan.config(),
        splits=splits if splits is not None else prompt_splits(plan, None),
        tuning=plan.tuning.get(method),
        pipeline_weights={part: backbone.fingerprint(part) for part in ("unet", "vae", "text")},
        budget=budget,
        training=training,
        evaluation=result.to_dict(),
        samples=samples,
        scorers={name: s.describe() for name, s in scorers.items()},
        metrics=aggregate(result, plan.eval),
    )
    if base is not None:
        wins, deltas = compare_to_base(result, base, scorers, plan.eval)
        record["win_rate_vs_base"], record["delta_vs_base"] = wins, deltas
    if sets is not None:
        record.update(sets.fields(result))
    return record


def record_name(method: str, budget: Budget, seed: int) -> str:
    return f"{method}-{budget}-s{seed}"


LAUNCHERS = ("local", "slurm", "submitit-local")  # where the runs of --jobs / a cluster grid execute


def check_launch(jobs: int, launcher: str = "local") -> None:
    """RunSetupError (one line) unless `jobs` and `launcher` are ones `execute` takes; the CLI checks them before it
    announces a run."""
    if jobs < 1:
        raise RunSetupError(f"--jobs must be >= 1, got {jobs}")
    if launcher not in LAUNCHERS:
        raise RunSetupError(f"--launcher {launcher!r}: expected one of {', '.join(LAUNCHERS)}")


def execute(plan: RunPlan, *, on_record=None, trainer_callbacks=None, jobs: int = 1, launcher: str = "local",
            launcher_args: dict | None = None) -> list[Path]:
    """Run the plan; returns the record paths in order (base first, then per budget, seed and method).
    `on_record(path, record)` is called as each record lands. Under several processes (accelerate
    launch / torchrun) all of them train and evaluate; the main process alone writes files, and holds the run
    directory (`bench.core.locks`) while it does: a second run into it stops with a RunSetupError naming the
    holder. `jobs` > 1 trains the plan's independent trainings (per method and seed, a chain of nested budgets
    (`_chains`) or a time budget's run) in that many worker processes (`_execute_parallel`), each with its share of
    the threads; every record is the one `jobs=1` writes at the same thread count per run. `launcher` "slurm"
    submits each chain as a Slurm job through submitit (`launcher_args`: submitit's parameters, e.g.
    slurm_partition, gpus_per_node, timeout_min), all writing to this (shared) run directory; "submitit-local" runs
    the same path as local processes."""
    check_launch(jobs, launcher)
    state = processes()
    if jobs > 1 and state.num_processes > 1:
        raise RunSetupError("--jobs runs independent runs in worker processes; it cannot be combined with a "
                            "multi-process launch (accelerate launch / torchrun), which splits each run instead")
    try:
        with hold_directory(plan.run_dir) if state.is_main_process else contextlib.nullcontext() as token:
            if launcher != "local":
                return _execute_submitit(plan, launcher, launcher_args or {}, token, on_record)
            if jobs > 1:
                return _execute_parallel(plan, jobs, token, on_record)
            return _execute_held(plan, on_record=on_record, trainer_callbacks=trainer_callbacks)
    except DirectoryHeldError as err:
        raise RunSetupError(f"run directory {err}") from None


Run = tuple[Budget, int, str, Path]  # budget, seed, method, record path


@dataclass
class _Session:
    """What every run of a plan shares within one process: scorers, the pipeline, the preference data (encoded
    on first use) and the base model's evaluation."""

    plan: RunPlan
    scorers: dict[str, Scorer]
    backbone: Backbone
    pairs: object
    splits: dict
    base_eval: EvalResult
    data: object = None
    reward: ScorerReward | None = None  # of the online methods
    sets: SetEvaluation | None = None  # the set metrics
    _validation: list[str] | None = None

    def validation_prompts(self) -> list[str]:
        """The suite's validation prompts (resolved once): what online runs' reward curves are measured on."""
        if self._validation is None:
            self._validation = list(resolve_prompts(self.plan.suite.prompts_for("validation"))[0])
        return self._validation

    def runs(self) -> list[Run]:
        """(budget, seed, method, record path) in plan order."""
        return [(budget, seed, name, self.plan.run_dir / f"{record_name(name, budget, seed)}.json")
                for budget, seed, name in itertools.product(self.plan.budgets, self.plan.seeds, self.plan.methods)]

    def pending(self, on_record=None) -> list[Run]:
        """The runs without a record yet; those a resumed run already finished are reported to `on_record`."""
        out = []
        for run in self.runs():
            if not (self.plan.resume and run[3].exists()):
                out.append(run)
            elif on_record:
                on_record(run[3], read_record(run[3]))
        return out


def _chains(runs: list[Run]) -> list[list[Run]]:
    """`runs` grouped into trainings: per method and seed, the budgets of a unit in `NESTED_UNITS` form one chain,
    smallest first, trained once to its largest (the others are its milestones); a time budget is a chain of its
    own. Chains in the order of their first run."""
    chains: dict[tuple, list[Run]] = {}
    for run in runs:
        budget, seed, name, _ = run
        key = (name, seed, budget.unit) if budget.unit in NESTED_UNITS else (name, seed, budget)
        chains.setdefault(key, []).append(run)
    return [sorted(chain, key=lambda run: run[0].limit) for chain in chains.values()]


def _chain_label(chain: list[Run]) -> str:
    """"dpo 20000nfe → 40000nfe s0": a chain as its progress bar names it."""
    return f"{chain[0][2]} {' → '.join(str(run[0]) for run in chain)} s{chain[0][1]}"


def _lander(on_record):
    """`land(path, record)`: the main process writes the record atomically (unless `write=False`: it is on disk
    already) and reports it; all processes wait."""
    state = processes()

    def land(path: Path, record: dict, write: bool = True) -> None:
        if state.is_main_process:
            if write:
                write_json_atomic(path, record)
            if on_record:
                on_record(path, record)
        state.wait_for_everyone()

    return land


def _open_session(plan: RunPlan, land) -> tuple[_Session, Path]:
    """Load everything that can fail on the user's input (scorer weights, pipeline, preference data) before anything
    is written; write run.json (unless resuming) and the base model's record; returns the session and base.json."""
    state = processes()
    scorers = build_scorers(list(plan.suite.metrics), plan.scorer_options)
    backbone = Backbone.from_pretrained(plan.pipeline, device=state.device, dtype=PIPELINE_DTYPES[plan.dtype])
    if plan.native_space != backbone.native_space:  # unreadable before loading (e.g. a hub id not cached yet)
        plan = dataclasses.replace(plan, native_space=backbone.native_space)
    reward = ScorerReward(plan.reward, plan.scorer_options.subset(list(parse_reward(plan.reward)))) if plan.online else None
    for name, method in plan.methods.items():
        if reward is not None and isinstance(method, OnlineMethod | InferenceTimeMethod):
            try:
                method.check_reward(reward)
            except ValueError as err:
                raise RunSetupError(f"{name}: {err}") from None
    sets = SetEvaluation.build(plan.set_metrics, plan.suite.reference)
    session = _Session(plan, scorers, backbone, None, prompt_splits(plan, None), None, reward=reward, sets=sets)
    if not all(plan.resume and path.exists() for *_, path in session.runs()):
        session.pairs = preference_pairs(load_pickapic(plan.preference_data, plan.suite.preference_split),
                                         plan.suite.max_pairs)
        session.splits = prompt_splits(plan, list(dict.fromkeys(session.pairs.captions)))
        if session.splits["overlap_with_train"]:
            log.warning("%d of the %d %s prompts also occur in the preference data",
                        session.splits["overlap_with_train"], len(plan.prompts), plan.split)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    if not plan.resume and state.is_main_process:
        write_json_atomic(plan.run_dir / "run.json", new_record(RUN_MANIFEST, config=plan.config(),
                                                                processes=state.num_processes))
    state.wait_for_everyone()
    base_path = plan.run_dir / "base.json"
    if plan.resume and base_path.exists():
        base = read_record(base_path)
        for name, scorer in scorers.items():  # new records are paired with this base: the same scorers must score them
            if _scorer_identity(base["scorers"].get(name, {})) != _scorer_identity(scorer.describe()):
                raise RunSetupError(f"--resume: the {name} scorer differs from the one that scored {base_path} (other "
                                    "weights, version or backbone); start a new --run-dir")
        land(base_path, base, write=False)
    else:
        base = {**base_record(backbone, plan, scorers, session.sets), "splits": session.splits}
        land(base_path, base)
    session.base_eval = EvalResult.from_dict(base["evaluation"])
    return session, base_path


def _train_and_record(session: _Session, chain: list[Run], land, callbacks=None) -> None:
    """Train one method at one seed to the chain's largest budget (from its checkpoint if there is one); at each of
    the chain's budgets, evaluate the policy on the plan's prompts, compare it with the base model, and land the
    record (`_chains`: the smaller budgets are milestones the training passes through). The checkpoint is named
    after the largest budget's record."""
    plan, backbone, state = session.plan, session.backbone, processes()
    *milestones, (budget, seed, name, _) = chain
    paths = {run[0]: run[3] for run in chain}
    if isinstance(plan.methods[name], InferenceTimeMethod):
        _evaluate_inference_time(session, name, seed, chain, land)
        return
    if session.data is None:
        session.data = encode_preferences(backbone, session.pairs)
    ckpt = plan.run_dir / f"{record_name(name, budget, seed)}.ckpt"

    sampled = plan.methods[name].evaluation(plan.eval)  # the suite's sampling, or the method's own (CFG-free)

    def land_record(reached: Budget, result: TrainResult) -> None:
        evaluation, images = evaluate(result.policy, plan.prompts, sampled, session.scorers, progress=plan.progress,
                                      desc=f"eval {name} {reached}" if milestones else f"eval {name}",
                                      features=session.sets.backbones if session.sets else None)
        data = session.data
        training = {"steps": result.steps, "final_loss": result.history[-1].get("loss") if result.history else None,
                    "history": result.history, "processes": state.num_processes, "device": str(state.device),
                    "data": {"pairs": data.num_pairs, "images": data.num_images, "prompts": len(data.prompts)}}
        record = _record(plan, name, seed, _budget_summary(reached.unit, reached.limit, result.usage), training,
                         evaluation, session.scorers, session.base_eval, backbone, sample_thumbnails(images, plan),
                         session.splits, sets=session.sets)
        land(paths[reached], {**record, "sampling": {"steps": sampled.steps, "guidance": sampled.guidance}})

    def probe(result: TrainResult) -> dict[str, float]:  # the reward curve: every metric on the validation prompts
        curve_eval = dataclasses.replace(sampled, images_per_prompt=1)
        evaluation, _ = evaluate(result.policy, session.validation_prompts(), curve_eval, session.scorers)
        return {f"val/{metric}": sum(values) / len(values) for metric, values in evaluation.scores.items()}

    online = isinstance(plan.methods[name], OnlineMethod)
    backbone.nfe.reset()
    trainer = Trainer(plan.methods[name], backbone, session.data, plan.train_configs[name], budget, seed=seed,
                      checkpoint_path=ckpt, progress=plan.progress, callbacks=callbacks,
                      milestones=[run[0] for run in milestones], on_milestone=land_record, reward=session.reward,
                      probe_every=plan.curve_every if online else 0.0, on_probe=probe if online else None)
    land_record(budget, trainer.fit())
    if state.is_main_process:
        for run in chain:  # the chain's, and any a smaller budget's separate run left (an earlier version's)
            (plan.run_dir / f"{record_name(name, run[0], seed)}.ckpt").unlink(missing_ok=True)


def _evaluate_inference_time(session: _Session, name: str, seed: int, chain: list[Run], land) -> None:
    """An inference-time method (e.g. DOODL): no training; evaluation makes each image with the method from the base
    model's initial noise, and the record holds its cost per evaluated image (`inference`) beside a training cost of 0.
    The budgets of the chain bound training, which it does not do: each gets the same record."""
    plan, backbone = session.plan, session.backbone
    method = plan.methods[name]
    backbone.nfe.reset()
    evaluation, images = evaluate(backbone, plan.prompts, plan.eval, session.scorers, progress=plan.progress,
                                  desc=f"eval {name}", features=session.sets.backbones if session.sets else None,
                                  inference=(method, session.reward, seed))
    training = {"steps": 0, "final_loss": None, "history": [], "processes": processes().num_processes,
                "device": str(processes().device), "data": None}
    inference = {"nfe": evaluation.nfe, "images": len(evaluation.prompts),
                 "nfe_per_image": evaluation.nfe / len(evaluation.prompts),
                 "declared_nfe_per_image": method.max_nfe_per_image(), "seconds": evaluation.seconds,
                 "reward": plan.reward}
    for budget, _, _, path in chain:
        record = _record(plan, name, seed, _budget_summary(budget.unit, budget.limit), training, evaluation,
                         session.scorers, session.base_eval, backbone, sample_thumbnails(images, plan), session.splits,
                         sets=session.sets)
        land(path, {**record, "inference": inference})


def _execute_held(plan: RunPlan, *, on_record=None, trainer_callbacks=None) -> list[Path]:
    land = _lander(on_record)
    session, base_path = _open_session(plan, land)
    for chain in _chains(session.pending(on_record if processes().is_main_process else None)):
        _train_and_record(session, chain, land, trainer_callbacks)
    return [base_path] + [path for *_, path in session.runs()]


_WORKER: dict = {}  # in a worker process of `_execute_parallel`: its session and the progress queue


def _worker_start(plan: RunPlan, token: str, threads: int, queue) -> None:
    os.environ[LOCK_ENV] = token  # a worker of the run that holds the directory
    torch.set_num_threads(threads)
    _WORKER["session"] = _open_session(dataclasses.replace(plan, resume=True, progress=False), _lander(None))[0]
    _WORKER["queue"] = queue


def _worker_run(chain: list[tuple[Budget, int, str, str]]) -> list[str]:
    """Train one chain (`_chains`) in this worker; its records land as training reaches them, each reported on the
    queue ("record", path) as it lands, with the progress ("progress", pid, label, limit, used) after each step."""
    session, queue = _WORKER["session"], _WORKER["queue"]
    chain = [(budget, seed, name, Path(path)) for budget, seed, name, path in chain]
    largest = chain[-1][0]
    label = _chain_label(chain)

    def report(step: int, logs: dict) -> None:
        queue.put(("progress", os.getpid(), label, largest.limit, logs.get(largest.unit, step)))

    if queue is not None:
        report(0, {largest.unit: 0.0})
    land = _lander((lambda path, record: queue.put(("record", str(path)))) if queue is not None else None)
    _train_and_record(session, chain, land, [report] if queue is not None else None)
    return [str(run[3]) for run in chain]


def _cluster_job(plan: RunPlan, token: str, chain: list[tuple[Budget, int, str, str]]) -> list[str]:
    """One chain as a submitit job (a Slurm job, or a local process): a worker of its own."""
    _worker_start(plan, token, torch.get_num_threads(), None)
    return _worker_run(chain)


def _execute_submitit(plan: RunPlan, launcher: str, launcher_args: dict, token: str, on_record) -> list[Path]:
    """The base model and run.json here, then one submitit job per chain of runs not yet recorded (`_chains`), with
    the job logs in `RUN_DIR/jobs/`; a job's failure is raised here with its log's path. The run directory must be
    on a file system the jobs share."""
    try:
        import submitit  # optional: pip install 'diffusion-align-bench[cluster]'
    except ImportError:
        raise RunSetupError(f"--launcher {launcher} needs submitit: pip install 'diffusion-align-bench[cluster]'") from None
    land = _lander(on_record)
    session, base_path = _open_session(plan, land)
    runs = session.runs()
    executor = submitit.AutoExecutor(folder=plan.run_dir / "jobs", cluster="slurm" if launcher == "slurm" else "local")
    try:
        executor.update_parameters(name=f"bench-{plan.suite.name}", **launcher_args)
    except (TypeError, ValueError) as err:
        raise RunSetupError(f"--launcher-arg: {err}") from None
    worker_plan = dataclasses.replace(plan, resume=True, progress=False)
    submitted = [executor.submit(_cluster_job, worker_plan, token, [(*run[:3], str(run[3])) for run in chain])
                 for chain in _chains(session.pending(on_record))]
    for job in submitted:
        for path in map(Path, job.result()):  # waits; a failed job raises with its log
            if on_record:
                on_record(path, read_record(path))
    return [base_path] + [path for *_, path in runs]


def _execute_parallel(plan: RunPlan, jobs: int, token: str, on_record) -> list[Path]:
    """The base model and run.json first, here; then each chain of runs not yet recorded (`_chains`: a method and
    seed's nested budgets, trained once) goes to one of `jobs` spawned worker processes (largest budget first, so
    the pool ends together), each with 1/jobs of this process's threads and its own copy of the pipeline, scorers
    and encoded data. Workers write their records atomically as training reaches each budget; a killed parallel run
    resumes like any other. One progress bar per worker shows its chain."""
    land = _lander(on_record)
    session, base_path = _open_session(plan, land)
    runs = session.runs()
    chains = sorted(_chains(session.pending(on_record)), key=lambda chain: -chain[-1][0].limit)
    threads = max(1, torch.get_num_threads() // jobs)
    reported: set[Path] = set()

    def report(path: Path) -> None:
        if path not in reported:
            reported.add(path)
            if on_record:
                on_record(path, read_record(path))

    with multiprocessing.Manager() as manager:
        queue = manager.Queue()
        bars, labels = {}, {}  # worker pid -> its progress bar, the chain it shows
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_start,
                                 initargs=(dataclasses.replace(plan, resume=True), token, threads, queue)) as pool:
            waiting = {pool.submit(_worker_run, [(*run[:3], str(run[3])) for run in chain]) for chain in chains}
            while waiting:
                done, waiting = wait(waiting, timeout=0.5, return_when=FIRST_COMPLETED)
                while not queue.empty():  # a worker puts its messages before its chain completes
                    kind, *message = queue.get()
                    if kind == "record":
                        report(Path(message[0]))
                        continue
                    pid, label, total, used = message
                    bar = bars.setdefault(pid, progress_bar(total=total, enabled=plan.progress, position=len(bars),
                                                            leave=False))
                    if labels.get(pid) != label:
                        labels[pid] = label
                        bar.reset(total=total)
                        bar.set_description(label)
                    bar.n = min(used, total)
                    bar.refresh()
                for future in done:
                    for path in future.result():  # a worker's exception surfaces here
                        report(Path(path))
        for bar in bars.values():
            bar.close()
    return [base_path] + [path for *_, path in runs]


def summary(plan: RunPlan, paths: list[Path]) -> dict:
    """The `--json` summary: one entry per run with budget, metrics and the paired comparison."""
    runs = []
    for path in paths:
        record = read_record(path)
        entry = {"method": record["method"], "seed": record["seed"],
                 "budget": {k: record["budget"][k] for k in ("unit", "limit", "used", "seconds")},
                 "metrics": record["metrics"], "record": str(path)}
        if record["method"] != "base":
            entry["win_rate_vs_base"] = record["win_rate_vs_base"]
            entry["delta_vs_base"] = record["delta_vs_base"]
        runs.append(entry)
    return {"suite": plan.suite.name, "run_dir": str(plan.run_dir), "runs": runs}
