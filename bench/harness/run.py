"""`bench run`: train every requested method under the suite's budget, evaluate, write records.

Flow: validate everything (methods, their arguments, budget, run directory) before any work; load
the Backbone; evaluate the base model (cached: it never changes for a given pipeline, prompt set and
evaluation config); encode the preference data once (cached); then per method and training seed:
train with checkpoints, evaluate on the same prompts and seeds, compare with the base run, and
write the run record atomically. `resume=True` skips runs whose record exists and continues a
killed run from its checkpoint.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import itertools
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.core.backbone import Backbone
from bench.core.budget import Budget, Usage
from bench.core.cache import cache_dir
from bench.core.config import PIPELINE_DTYPES, EvalConfig, OverrideError, TrainConfig, apply_overrides, as_dict
from bench.core.processes import processes
from bench.core.records import (
    ALIGNMENT_RUN,
    RUN_MANIFEST,
    SCHEMA_VERSION,
    RecordError,
    new_record,
    read_record,
    write_json_atomic,
)
from bench.harness.data import encode_preferences, load_pickapic, png_bytes, preference_pairs
from bench.harness.evaluation import EvalResult, aggregate, compare_to_base, evaluate
from bench.harness.prompts import prompt_digest, resolve_prompts
from bench.harness.suites import Suite
from bench.harness.trainer import Trainer, declared_step_cost
from methods.alignment import METHODS, AlignmentMethod
from metrics import SCORERS, Scorer
from metrics.build import ScorerOptions, build_scorers

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
    scorer_options: ScorerOptions = field(default_factory=ScorerOptions)  # weights paths, HPS version, CLIP backbone
    native_space: str | None = None  # the pipeline's prediction space ("eps", "v"); None until it is known
    tuning: dict[str, dict] = field(default_factory=dict)  # method -> how its settings were tuned (`bench.harness.tune`)
    algorithms: dict[str, str] = field(default_factory=dict)  # label -> registered method, where they differ

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
            "budgets": [{"unit": b.unit, "limit": b.limit} for b in self.budgets],
            "seeds": self.seeds,
            "eval": as_dict(self.eval),
            "methods": {name: {**({"algorithm": self.algorithms[name]} if self.algorithms.get(name, name) != name else {}),
                               "config": m.describe(self.native_space), "train": as_dict(self.train_configs[name])}
                        for name, m in self.methods.items()},
        }


def parse_method_args(items: list[str], option: str = "--method-arg", any_method: bool = False) -> dict[str, dict]:
    """["inpo.inversion=bdia", "dpo.beta=2000"] -> {"inpo": {"inversion": "bdia"}, "dpo": {"beta": "2000"}};
    with `any_method`, a bare FIELD=VALUE applies to every method (key "*")."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.rpartition(".") if "." in key else ("*" if any_method else "", "", key)
        if not sep or not name or (not dot and not any_method) or not method:
            raise RunSetupError(f"{option} {item!r}: expected METHOD.FIELD=VALUE, e.g. inpo.inversion=ddim"
                                + (" (or FIELD=VALUE for every method)" if any_method else ""))
        out.setdefault(method.strip(), {})[name.strip()] = value.strip()
    return out


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
             scorer_options: ScorerOptions | None = None, split: str = "test") -> RunPlan:
    """Validate a run request completely; raises RunSetupError (or UnknownNameError) before any work.

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
    for name, algorithm in algorithms.items():  # the suite's settings by method, the user's by label
        cls = METHODS.get(algorithm)
        try:
            config = apply_overrides(cls.Config(), {**suite_method_args.get(algorithm, {}), **method_args.get(name, {})})
            methods[name] = cls(config)
            train_configs[name] = apply_overrides(suite.train, {**suite_train_args.get(algorithm, {}),
                                                                **train_args.get("*", {}), **train_args.get(name, {})})
        except (OverrideError, ValueError, KeyError) as err:
            raise RunSetupError(f"{name}: {err}") from None
    budgets = budgets or [suite.budget]
    if len(set(budgets)) != len(budgets):
        raise RunSetupError(f"a budget is listed twice: {', '.join(map(str, budgets))}")
    for budget in budgets:
        for name, method in methods.items():
            step = declared_step_cost(method, train_configs[name], budget.unit)
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
    plan = RunPlan(suite, methods, train_configs, budgets, seeds, Path(run_dir), resume, progress,
                   pipeline or suite.pipeline, preference_data or suite.preference_data, suite.eval,
                   *resolve_prompts(prompts if prompts is not None else source), split, dtype, scorer_options,
                   tuning={name: suite.tuning[a] for name, a in algorithms.items() if a in suite.tuning},
                   algorithms={name: a for name, a in algorithms.items() if name != a},
                   native_space=Backbone.native_space_of(pipeline or suite.pipeline))  # records "native" resolved
    manifest = plan.run_dir / "run.json"
    if resume:
        if not manifest.exists():
            raise RunSetupError(f"--resume: {plan.run_dir} holds no run (no run.json)")
        stored = {"dtype": "fp32", "scorer_options": ScorerOptions().recorded(),  # runs started before these existed
                  "eval_split": "test",
                  **read_record(manifest, RUN_MANIFEST)["config"]}
        if stored != json.loads(json.dumps(plan.config())):
            diff = sorted(k for k in plan.config() if stored.get(k) != json.loads(json.dumps(plan.config()))[k])
            raise RunSetupError(f"--resume: {plan.run_dir} was started with a different configuration ({', '.join(diff)})")
    elif plan.run_dir.exists() and any(plan.run_dir.iterdir()):
        raise RunSetupError(f"run directory {plan.run_dir} is not empty; pass --resume to continue it or choose another")
    return plan


def _scorer_identity(described: dict) -> dict:
    """What a score depends on: a scorer's description (`Scorer.describe()`) with its weights' SHA256s, without
    local paths."""
    weights = [{k: v for k, v in w.items() if k != "path"} for w in described.get("weights", [])]
    return {**described, "weights": weights}


def _base_cache_key(backbone: Backbone, plan: RunPlan, scorers: dict[str, Scorer]) -> str:
    identities = {name: _scorer_identity(scorer.describe()) for name, scorer in scorers.items()}
    payload = json.dumps({"unet": backbone.fingerprint("unet"), "vae": backbone.fingerprint("vae"), "dtype": plan.dtype,
                          "text": backbone.fingerprint("text"), "prompts": plan.prompts, "eval": as_dict(plan.eval),
                          "scorers": identities, "schema": SCHEMA_VERSION}, sort_keys=True)
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


def base_record(backbone: Backbone, plan: RunPlan, scorers: dict[str, Scorer]) -> dict:
    """The base model's record, from the cache when this pipeline, prompts, evaluation config and scorers (their
    weights' SHA256s, HPS version, CLIP backbone) were seen before."""
    cached = cache_dir() / "base" / f"{_base_cache_key(backbone, plan, scorers)}.json"
    if cached.exists():
        try:
            stored = read_record(cached)
        except RecordError as err:
            log.warning("ignoring unreadable base cache: %s", err)
        else:
            return _record(plan, "base", None, _budget_summary(plan.budgets[0].unit, 0), None,
                           EvalResult.from_dict(stored["evaluation"]), scorers, None, backbone, stored["samples"])
    result, images = evaluate(backbone, plan.prompts, plan.eval, scorers, progress=plan.progress, desc="eval base")
    record = _record(plan, "base", None, _budget_summary(plan.budgets[0].unit, 0), None, result, scorers, None,
                     backbone, sample_thumbnails(images, plan))
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


def _record(plan: RunPlan, method: str, seed: int | None, budget: dict, training: dict | None, result: EvalResult,
            scorers: dict[str, Scorer], base: EvalResult | None, backbone: Backbone, samples: dict,
            splits: dict | None = None) -> dict:
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
    return record


def record_name(method: str, budget: Budget, seed: int) -> str:
    return f"{method}-{budget}-s{seed}"


def execute(plan: RunPlan, *, on_record=None, trainer_callbacks=None) -> list[Path]:
    """Run the plan; returns the record paths in order (base first, then per budget, seed and method).
    `on_record(path, record)` is called as each record lands. Under several processes (accelerate
    launch / torchrun) all of them train and evaluate; the main process alone writes files."""
    state = processes()
    main = state.is_main_process

    def land(path: Path, record: dict) -> None:
        if main:
            write_json_atomic(path, record)
            if on_record:
                on_record(path, record)
        state.wait_for_everyone()

    # Everything that can fail on the user's input (scorer weights, pipeline, preference data) is loaded
    # before anything is written or evaluated.
    scorers = build_scorers(list(plan.suite.metrics), plan.scorer_options)
    backbone = Backbone.from_pretrained(plan.pipeline, device=state.device, dtype=PIPELINE_DTYPES[plan.dtype])
    if plan.native_space != backbone.native_space:  # unreadable before loading (e.g. a hub id not cached yet)
        plan = dataclasses.replace(plan, native_space=backbone.native_space)
    runs = [(budget, seed, name, method, plan.run_dir / f"{record_name(name, budget, seed)}.json")
            for budget, seed, (name, method) in itertools.product(plan.budgets, plan.seeds, plan.methods.items())]
    pairs, splits = None, prompt_splits(plan, None)
    if not all(plan.resume and path.exists() for *_, path in runs):
        pairs = preference_pairs(load_pickapic(plan.preference_data, plan.suite.preference_split), plan.suite.max_pairs)
        splits = prompt_splits(plan, list(dict.fromkeys(pairs.captions)))
        if splits["overlap_with_train"]:
            log.warning("%d of the %d %s prompts also occur in the preference data", splits["overlap_with_train"],
                        len(plan.prompts), plan.split)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    if not plan.resume and main:
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
    else:
        base = {**base_record(backbone, plan, scorers), "splits": splits}
    land(base_path, base)
    paths = [base_path]
    base_eval = EvalResult.from_dict(base["evaluation"])

    data = None
    for budget, seed, name, method, path in runs:
        if plan.resume and path.exists():
            paths.append(path)
            if on_record and main:
                on_record(path, read_record(path))
            continue
        if data is None:
            data = encode_preferences(backbone, pairs)
        ckpt = plan.run_dir / f"{record_name(name, budget, seed)}.ckpt"
        backbone.nfe.reset()
        trainer = Trainer(method, backbone, data, plan.train_configs[name], budget, seed=seed, checkpoint_path=ckpt,
                          progress=plan.progress, callbacks=trainer_callbacks)
        result = trainer.fit()
        evaluation, images = evaluate(result.policy, plan.prompts, plan.eval, scorers, progress=plan.progress,
                                      desc=f"eval {name}")
        training = {"steps": result.steps, "final_loss": result.history[-1].get("loss") if result.history else None,
                    "history": result.history, "processes": state.num_processes, "device": str(state.device),
                    "data": {"pairs": data.num_pairs, "images": data.num_images, "prompts": len(data.prompts)}}
        record = _record(plan, name, seed, _budget_summary(budget.unit, budget.limit, result.usage), training,
                         evaluation, scorers, base_eval, backbone, sample_thumbnails(images, plan), splits)
        land(path, record)
        if main:
            ckpt.unlink(missing_ok=True)
        paths.append(path)
    return paths


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
