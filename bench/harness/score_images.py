"""`bench eval`: score images the benchmark did not sample for a run, with the numbers a run record would give.

The images come from one source: a folder (.png/.jpg/.jpeg/.webp, in natural file-name order: 2.png before
10.png) with a prompt file (one prompt per image, or one for all), or N ground-truth renders or base-model
samples of the toy world's held-out captions (`bench.toy.world.held_out_combos`). Samples use the toy suite's
evaluation sampler (its `EvalConfig`: DDIM 20 steps, guidance 3; image i seed + i). Scores come from
`bench.harness.evaluation.score_batches` and the aggregates (mean, 95% CI from a bootstrap over prompts) from
`bench.harness.evaluation.aggregate` with the default `EvalConfig`'s 2000 resamples and seed 0: the functions that
make a run record's numbers. The result is a `bench-eval` record (`bench.core.records.EVAL`).

`--metrics` also takes set metrics (`metrics.sets`: `fd-*`, `prdc-*`, `vendi-*`), numbers about the image set as a
whole: FD and precision/recall/density/coverage against a reference set (`--reference DIR`, a folder of images, or
`--reference-toy-renders M`, ground-truth renders of the held-out captions drawn with `--reference-seed`), Vendi
within each prompt's images. Their features come from the same read of the images as the scores (one pass per
backbone, `metrics.sets.build.collect_features`), and the record holds each one's values with 95% CIs
(`set_metrics`), its description and backbone weights (`set_metric_descriptions`), its Config and the reference.
A folder scored only by set metrics that need no prompts (FD, PRDC) needs no prompt file.

`plan_eval` checks every input (ValueError naming the flag) and `score_images` builds every scorer and feature
backbone (weights found and loaded) before any image is read or sampled, so bad input stops the command having
written nothing.

`bench run` does not compute set metrics yet; a run's would come from the same `metrics.sets.build` functions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import torch

from bench.core.backbone import Backbone
from bench.core.config import EvalConfig
from bench.core.progress import progress_bar
from bench.core.records import EVAL, new_record
from bench.core.registry import UnknownNameError
from bench.harness.data import image_batches, image_files, png_bytes
from bench.harness.evaluation import EvalResult, aggregate, score_batches
from bench.harness.sampling import generate
from bench.harness.suites import get_suite
from bench.toy.world import held_out_combos, render_dataset
from metrics.base import SCORERS
from metrics.build import ScorerOptions, build_scorers
from metrics.sets import SET_METRICS
from metrics.sets.build import (
    SetMetricOptions,
    build_set_metrics,
    collect_features,
    describe_set_metrics,
    evaluate_set_metrics,
)

if TYPE_CHECKING:
    from bench.harness.requests import ScorerArgs


@dataclass(frozen=True)
class MetricRequest:
    """`--metrics` split by kind, each kind with its options (`eval_options`)."""

    scorers: list[str]  # per-image scorers, in the order given
    options: ScorerOptions
    set_metrics: list[str]
    set_options: SetMetricOptions
    notices: list[str] = field(default_factory=list)  # one per deprecated flag given


def eval_options(names: list[str], args: ScorerArgs) -> MetricRequest:
    """`--metrics` `names` split into per-image scorers and set metrics, and the `--weights NAME=PATH` and
    `--metric-arg NAME.FIELD=VALUE` items of `args` handed to the kind their NAME is (UnknownNameError, listing both
    kinds, for a name of neither)."""
    for name in names:
        if name not in SCORERS and name not in SET_METRICS:
            raise UnknownNameError("metric", name, sorted([*SCORERS.names(), *SET_METRICS.names()]))
    set_names = [name for name in names if name in SET_METRICS]

    def for_sets(items: tuple[str, ...], separator: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        ours = tuple(item for item in items if item.partition(separator)[0].strip() in SET_METRICS)
        return tuple(item for item in items if item not in ours), ours

    scorer_weights, set_weights = for_sets(args.weights, "=")
    scorer_args, set_args = for_sets(args.metric_args, ".")
    scorer_names = [name for name in names if name not in SET_METRICS]
    options, notices = dataclasses.replace(args, weights=scorer_weights, metric_args=scorer_args).options(
        scorer_names, "--metrics")
    set_options = SetMetricOptions.from_args(set_names, where="--metrics", weights=set_weights, metric_args=set_args)
    return MetricRequest(scorer_names, options, set_names, set_options, notices)


@dataclass(frozen=True)
class EvalPlan:
    """A checked `bench eval` (`plan_eval`): the scorers to build and exactly one source of images."""

    metrics: tuple[str, ...]
    options: ScorerOptions
    batch_size: int  # images read and scored at a time
    folder: Path | None  # --images: a folder of images ...
    files: tuple[Path, ...] | None  # ... its image files in natural order
    prompt_file: Path | None
    prompts: tuple[str, ...] | None  # one per file (None for the toy sources: their captions are the prompts)
    toy_renders: int | None
    toy_samples: int | None
    pipeline: Path | None  # of the toy samples; None: the toy suite's
    seed: int  # renders: of the scenes' unnamed variables; samples: image i uses seed + i
    save_images: Path | None  # where the toy images are also written as PNGs with prompts.txt
    set_metrics: tuple[str, ...] = ()  # set metrics (`metrics.sets`) on the same images
    set_options: SetMetricOptions = field(default_factory=SetMetricOptions)
    reference: Path | None = None  # --reference: a folder of reference images ...
    reference_files: tuple[Path, ...] | None = None  # ... its image files in natural order
    reference_toy_renders: int | None = None  # ... or ground-truth renders of the held-out captions
    reference_seed: int = 1  # of the reference renders' scenes

    @property
    def n_images(self) -> int:
        return len(self.files) if self.files is not None else self.toy_renders or self.toy_samples

    @property
    def reference_description(self) -> str | None:
        """The reference set, in words (None: none)."""
        if self.reference is not None:
            return f"{len(self.reference_files)} images in {self.reference}"
        if self.reference_toy_renders is not None:
            return f"{self.reference_toy_renders} toy renders (held-out captions, seed {self.reference_seed})"
        return None

    @property
    def description(self) -> str:
        """What is scored, in words (the terminal table's title)."""
        if self.folder is not None:
            return str(self.folder)
        if self.toy_renders is not None:
            return f"{self.toy_renders} toy renders (held-out captions, seed {self.seed})"
        return (f"{self.toy_samples} toy-pipeline samples (held-out captions, seeds {self.seed}.."
                f"{self.seed + self.toy_samples - 1})")


def plan_eval(metrics: list[str], options: ScorerOptions, *, images: Path | None = None, prompts: Path | None = None,
              toy_renders: int | None = None, toy_samples: int | None = None, pipeline: Path | None = None,
              seed: int = 0, batch_size: int = 32, save_images: Path | None = None, set_metrics: Sequence[str] = (),
              set_options: SetMetricOptions | None = None, reference: Path | None = None,
              reference_toy_renders: int | None = None, reference_seed: int = 1) -> EvalPlan:
    """`bench eval`'s inputs, checked before any work (ValueError naming the flag): the per-image scorers `metrics`
    and the `set_metrics`, a folder `images` with its `prompts` file (listed and read here; optional when only set
    metrics that need no prompts score it), or `toy_renders` or `toy_samples` (from `pipeline`) of the held-out
    captions, optionally written to the empty or new directory `save_images`; for set metrics that compare with a
    reference set, a folder `reference` or `reference_toy_renders` renders drawn with `reference_seed`."""
    options.check(list(metrics))
    if batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch_size}")
    if sum(x is not None for x in (images, toy_renders, toy_samples)) != 1:
        raise ValueError("give either --images DIR (with --prompts FILE), --toy-renders N or --toy-samples N")
    if pipeline is not None and toy_samples is None:
        raise ValueError("--pipeline applies to --toy-samples")
    if save_images is not None:
        if images is not None:
            raise ValueError("--save-images applies to --toy-renders/--toy-samples (--images are files already)")
        if save_images.exists() and (not save_images.is_dir() or any(save_images.iterdir())):
            raise ValueError(f"--save-images {save_images}: exists and is not an empty directory")
    files = per_image = None
    if images is not None:
        try:
            files = tuple(image_files(images))  # natural order: 2.png before 10.png
        except FileNotFoundError as err:
            raise ValueError(f"--images: {err}") from None
        if prompts is not None:
            per_image = tuple(read_prompts(prompts, len(files)))
        elif metrics:
            raise ValueError("--images needs --prompts FILE (one prompt per image, or one for all)")
    else:
        count, flag = (toy_renders, "--toy-renders") if toy_renders is not None else (toy_samples, "--toy-samples")
        if count < 1:
            raise ValueError(f"{flag} must be >= 1, got {count}")
        if prompts is not None:
            raise ValueError(f"--prompts does not apply to {flag} (the held-out toy captions are the prompts)")
        if pipeline is not None and not pipeline.is_dir():
            raise ValueError(f"--pipeline {pipeline}: not a directory")
    set_options = set_options or SetMetricOptions()
    reference_files = check_reference(list(set_metrics), reference, reference_toy_renders)
    n = len(files) if files is not None else count
    groups = per_image if images is not None else [c.caption for c in held_out_combos(count)]
    reference_n = len(reference_files) if reference_files is not None else reference_toy_renders
    for name in set_metrics:
        SET_METRICS.get(name)(set_options.config(name)).check_sets(n, reference_n, groups)
    return EvalPlan(tuple(metrics), options, batch_size, images, files, prompts, per_image, toy_renders, toy_samples,
                    pipeline, seed, save_images, tuple(set_metrics), set_options, reference, reference_files,
                    reference_toy_renders, reference_seed)


def check_reference(set_metrics: list[str], reference: Path | None,
                    reference_toy_renders: int | None) -> tuple[Path, ...] | None:
    """The reference folder's image files in natural order (None: no folder), after checking that at most one
    reference source is given, only for set metrics that compare with one (ValueError naming the flag)."""
    if reference is None and reference_toy_renders is None:
        return None
    if reference is not None and reference_toy_renders is not None:
        raise ValueError("give either --reference DIR or --reference-toy-renders N, not both")
    flag = "--reference" if reference is not None else "--reference-toy-renders"
    if not any(SET_METRICS.get(name).needs_reference for name in set_metrics):
        comparing = [name for name in SET_METRICS.names() if SET_METRICS.get(name).needs_reference]
        raise ValueError(f"{flag} applies to set metrics that compare with a reference set ({', '.join(comparing)}); "
                         "none is in --metrics")
    if reference_toy_renders is not None:
        if reference_toy_renders < 1:
            raise ValueError(f"--reference-toy-renders must be >= 1, got {reference_toy_renders}")
        return None
    try:
        return tuple(image_files(reference))
    except FileNotFoundError as err:
        raise ValueError(f"--reference: {err}") from None


def read_prompts(path: Path, n_images: int) -> list[str]:
    """One prompt per image from a text file with one per line, or its single line for every image (trailing blank
    lines ignored); ValueError if the file cannot be read or holds another number of prompts."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"--prompts {path}: {getattr(err, 'strerror', None) or err}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if len(lines) == 1:
        return lines * n_images
    if len(lines) != n_images:
        raise ValueError(f"--prompts {path}: {len(lines)} prompts for {n_images} images; give one per image (in natural "
                         "file-name order: 2.png before 10.png) or a single prompt for all")
    return lines


def toy_images(plan: EvalPlan, *, progress: bool = False) -> tuple[torch.Tensor, list[str], dict]:
    """(images (N, 3, 32, 32), captions, what made them, for the record's `source`) of a toy source: ground-truth
    renders (scene variables drawn with `plan.seed`), or samples of the base model with the toy suite's sampler."""
    if plan.toy_renders is not None:
        images, captions = render_dataset(held_out_combos(plan.toy_renders), 1, plan.seed)
        return images, captions, {"toy_renders": plan.toy_renders, "seed": plan.seed}
    suite = get_suite("toy")
    source = plan.pipeline or suite.pipeline
    captions = [combo.caption for combo in held_out_combos(plan.toy_samples)]
    seeds = [plan.seed + i for i in range(plan.toy_samples)]
    sampler = {"steps": suite.eval.steps, "guidance": suite.eval.guidance}
    images = generate(Backbone.from_pretrained(source), captions, seeds, batch_size=suite.eval.batch_size,
                      progress=progress, desc="toy samples", **sampler)
    return images, captions, {"toy_samples": plan.toy_samples, "pipeline": str(source), "seeds": seeds, **sampler}


def save_images(out: Path, images: torch.Tensor, prompts: list[str]) -> None:
    """`images` as out/00000.png ... and out/prompts.txt, one prompt a line: re-scorable with --images/--prompts."""
    out.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        (out / f"{i:05d}.png").write_bytes(png_bytes(image))
    (out / "prompts.txt").write_text("".join(p + "\n" for p in prompts), encoding="utf-8")


def score_images(plan: EvalPlan, *, progress: bool = False) -> dict:
    """Build every scorer and feature backbone, make or read the images (writing the toy ones to `plan.save_images`),
    score them and extract their features in one pass, then the reference set's features; the `bench-eval` record:
    per-image scores and diagnostic terms, aggregates, each scorer's description (weight paths and SHA256) and Config,
    and each set metric's values with CIs, description (its backbone's weights) and Config."""
    scorers = build_scorers(list(plan.metrics), plan.options)  # first: missing weights stop before any image
    set_metrics, backbones = build_set_metrics(plan.set_metrics, plan.set_options)
    if plan.files is None:
        pixels, prompts, source = toy_images(plan, progress=progress)
        if plan.save_images is not None:
            save_images(plan.save_images, pixels, prompts)
    else:
        pixels, prompts, source = None, None if plan.prompts is None else list(plan.prompts), {}
    n = plan.n_images
    features: dict[str, torch.Tensor] = {}  # backbone -> (N, D)
    batches = collect_features(backbones, image_batches(plan.files, pixels, prompts or [""] * n, plan.batch_size), n,
                               features)
    scores, components = score_batches(scorers, progress_bar(batches, enabled=progress, desc="scoring",
                                                             total=None if plan.files else -(-n // plan.batch_size)), n)
    compared = {metric.Features.key: backbones[metric.Features.key] for metric in set_metrics.values()
                if metric.needs_reference}
    reference_features, reference = reference_set_features(plan, compared, progress=progress)
    return new_record(
        EVAL,
        source={"images": str(plan.folder) if plan.folder else None,
                "prompts": str(plan.prompt_file) if plan.prompt_file else None,
                "toy_renders": plan.toy_renders, "toy_samples": plan.toy_samples, **source,
                "saved_images": str(plan.save_images) if plan.save_images else None},
        files=[p.name for p in plan.files] if plan.files else None,
        prompts=prompts,
        scores=scores,
        components=components,
        aggregates=aggregate(EvalResult(prompts, source.get("seeds", []), scores, components), EvalConfig()) if scores
        else {},
        scorers={name: scorer.describe() for name, scorer in scorers.items()},
        scorer_configs=plan.options.recorded_configs(list(plan.metrics)),
        set_metrics=evaluate_set_metrics(set_metrics, features, reference_features, prompts, seed=EvalConfig().seed),
        set_metric_descriptions=describe_set_metrics(set_metrics, backbones),
        set_metric_configs=plan.set_options.recorded_configs(plan.set_metrics),
        reference=reference,
    )


def reference_set_features(plan: EvalPlan, backbones: dict, *, progress: bool = False) -> tuple[dict[str, torch.Tensor],
                                                                                                  dict | None]:
    """(backbone -> (M, D) features of the reference set, what the reference set is for the record), one pass over the
    reference images (a folder read `plan.batch_size` at a time, or toy renders); ({}, None) without one."""
    if plan.reference_description is None:
        return {}, None
    if plan.reference_toy_renders is not None:
        images, _ = render_dataset(held_out_combos(plan.reference_toy_renders), 1, plan.reference_seed)
        files, count = None, plan.reference_toy_renders
        described = {"toy_renders": count, "seed": plan.reference_seed}
    else:
        images, files, count = None, plan.reference_files, len(plan.reference_files)
        described = {"images": str(plan.reference), "files": [p.name for p in files]}
    features: dict[str, torch.Tensor] = {}
    batches = collect_features(backbones, image_batches(files, images, [""] * count, plan.batch_size), count, features)
    for _ in progress_bar(batches, enabled=progress, desc="reference features",
                          total=None if files else -(-count // plan.batch_size)):
        pass  # collect_features fills `features` as the batches pass
    return features, {"description": plan.reference_description, "n": count, **described}


def set_metrics_table(record: dict) -> pd.DataFrame:
    """A `bench-eval` record's set metrics: one row per value with the value, its 95% CI, the set sizes, the
    direction and how the interval was made."""
    rows = []
    for name, result in record["set_metrics"].items():
        described = record["set_metric_descriptions"][name]["values"]
        for value_name, value in result["values"].items():
            rows.append({"metric": name, "value": value_name, "estimate": f"{value['value']:.4g}",
                         "95% CI": f"[{value['ci_low']:.4g}, {value['ci_high']:.4g}]", "n": result["n"],
                         "reference n": "" if result["reference_n"] is None else result["reference_n"],
                         "better": "higher" if described[value_name]["higher_is_better"] else "lower",
                         "interval": result["interval"].split(" over ")[0]})
    return pd.DataFrame(rows)
