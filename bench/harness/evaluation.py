"""Evaluation: fixed prompts x fixed seeds, identical for every method and the base model.

Image i of the evaluation set is prompt `prompts[i // k]` with seed `eval.seed + i` (k images per
prompt), sampled with DDIM (`bench.harness.sampling`) and scored by every requested scorer. Under several
processes each samples and scores a contiguous share of the images and the scores are gathered in
order (an image depends only on its prompt and seed, so the result does not depend on the number of
processes). Aggregates are means with 95% CIs from a bootstrap over prompts; comparisons with the base
model are paired over the same images (`bench.core.stats`).

`bench eval` scores images it did not sample (a folder, toy renders) with the same `score_batches` and
`aggregate`, so its numbers are computed as a run record's are.

Set metrics (`metrics.sets`: FD, precision/recall/density/coverage, Vendi) read image features that the same pass
extracts (`evaluate(features=...)`), against a suite's reference set (`reference_images`): on the toy, ground-truth
renders of the evaluated prompts, one per evaluated image.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from accelerate.utils import gather_object

from bench.core.backbone import Backbone
from bench.core.config import EvalConfig
from bench.core.processes import processes
from bench.core.stats import bootstrap_mean, paired_comparison
from bench.harness.data import image_batches, image_files
from bench.harness.sampling import generate, generate_inference_time
from bench.toy.world import parse_caption, render, sample_scene
from methods.alignment.base import Reward
from methods.inference import InferenceTimeMethod
from metrics.base import Scorer
from metrics.sets.base import SetMetric
from metrics.sets.build import build_set_metrics, collect_features, describe_set_metrics, evaluate_set_metrics
from metrics.sets.features import FeatureBackbone

TOY_RENDERS = "toy-renders"  # a suite's reference set: ground-truth renders of the evaluated toy captions
REFERENCE_SEED = 1  # of those renders' unnamed variables (the toy build's preference data uses 0)


def evaluation_set(prompts: list[str], cfg: EvalConfig) -> tuple[list[str], list[int]]:
    """(prompt per image, seed per image): each prompt `images_per_prompt` times, seeds seed + i."""
    per_image = [p for p in prompts for _ in range(cfg.images_per_prompt)]
    return per_image, [cfg.seed + i for i in range(len(per_image))]


@dataclass
class EvalResult:
    prompts: list[str]
    seeds: list[int]
    scores: dict[str, list[float]]  # metric -> per-image score
    components: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # metric -> term -> per image
    seconds: float = 0.0
    nfe: int = 0
    features: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # backbone -> (N, D); not recorded

    def to_dict(self) -> dict:
        return {"prompts": self.prompts, "seeds": self.seeds, "scores": self.scores, "components": self.components,
                "seconds": self.seconds, "nfe": self.nfe}

    @classmethod
    def from_dict(cls, d: dict) -> EvalResult:
        return cls(d["prompts"], d["seeds"], d["scores"], d.get("components", {}), d.get("seconds", 0.0), d.get("nfe", 0))


def evaluate(backbone: Backbone, prompts: list[str], cfg: EvalConfig, scorers: dict[str, Scorer], *,
             progress: bool = False, desc: str = "eval", features: dict[str, FeatureBackbone] | None = None,
             inference: tuple[InferenceTimeMethod, Reward, int] | None = None) -> tuple[EvalResult, torch.Tensor]:
    """Sample the evaluation set and score it (and extract each feature backbone's features, for set metrics);
    returns the result (all images) and this process's images (N_local, 3, H, W), the first ones of the set on the
    main process. With `inference` (an inference-time method, its reward, the run seed), the method makes each
    image from the base model's initial noise instead of plain sampling (`generate_inference_time`); `result.nfe` is
    its cost."""
    per_image, seeds = evaluation_set(prompts, cfg)
    state = processes()
    with state.split_between_processes({"prompts": per_image, "seeds": seeds}) as share:  # contiguous shares
        local_prompts, local_seeds = share["prompts"], share["seeds"]
    nfe_before, t0 = backbone.nfe.total, time.perf_counter()
    if inference is not None:
        method, reward, run_seed = inference
        images = generate_inference_time(backbone, method, local_prompts, local_seeds, reward, run_seed=run_seed,
                                         batch_size=cfg.batch_size, progress=progress and state.is_main_process,
                                         desc=desc)
    else:
        images = generate(backbone, local_prompts, local_seeds, steps=cfg.steps, guidance=cfg.guidance,
                          batch_size=cfg.batch_size, progress=progress and state.is_main_process, desc=desc)
    local_features: dict[str, torch.Tensor] = {}
    batches = collect_features(features or {}, [(range(len(local_prompts)), local_prompts, images)], len(local_prompts),
                               local_features)
    local_scores, local_components = score_batches(scorers, batches, len(local_prompts))
    local = {"scores": local_scores, "components": local_components, "nfe": backbone.nfe.total - nfe_before,
             "features": local_features}
    shares = gather_object([local]) if state.num_processes > 1 else [local]
    scores = {name: [v for s in shares for v in s["scores"][name]] for name in scorers}
    components = {name: {k: [v for s in shares for v in s["components"][name][k]] for k in terms}
                  for name, terms in shares[0]["components"].items()}
    gathered = {key: torch.cat([s["features"][key] for s in shares]) for key in local_features}
    result = EvalResult(per_image, seeds, scores, components, time.perf_counter() - t0, sum(s["nfe"] for s in shares),
                        gathered)
    return result, images


def reference_features(reference: str, prompts: list[str], backbones: dict[str, FeatureBackbone], *,
                       batch_size: int = 128) -> tuple[dict[str, torch.Tensor], dict]:
    """(backbone -> (M, D) features, what the set is) of the reference set of set metrics: `toy-renders` renders each
    of `prompts` (toy captions, one image per entry, scenes drawn with `REFERENCE_SEED`); anything else is a folder of
    images (real scale, e.g. COCO val), read `batch_size` at a time in natural file-name order."""
    if reference == TOY_RENDERS:
        rng = random.Random(REFERENCE_SEED)
        images, files = render([sample_scene(parse_caption(prompt), rng) for prompt in prompts]), None
        described = {"reference": TOY_RENDERS, "n": len(prompts), "seed": REFERENCE_SEED}
    else:
        images, files = None, tuple(image_files(reference))
        described = {"reference": str(reference), "n": len(files), "files_sha256": _names_digest(files)}
    features: dict[str, torch.Tensor] = {}
    count = len(prompts) if files is None else len(files)
    for _ in collect_features(backbones, image_batches(files, images, [""] * count, batch_size), count, features):
        pass  # collect_features fills `features` as the batches pass
    return features, described


def _names_digest(files: tuple) -> str:
    return hashlib.sha256("\n".join(p.name for p in files).encode()).hexdigest()


def score_batches(scorers: dict[str, Scorer], batches: Iterable[tuple[Sequence[int], list[str], torch.Tensor]],
                  n: int) -> tuple[dict[str, list[float]], dict[str, dict[str, list[float]]]]:
    """Every scorer on N images given in batches of (image indices, prompts, images (B, 3, H, W)), in any order:
    (metric -> N per-image scores, metric -> term -> N per-image values for scorers with diagnostic terms), in
    image order. An image no batch covers keeps NaN."""
    scores = {name: [math.nan] * n for name in scorers}
    components: dict[str, dict[str, list[float]]] = {}
    for index, prompts, images in batches:
        with torch.no_grad():
            scored = {name: (scorer.score(prompts, images), scorer.components(prompts, images))
                      for name, scorer in scorers.items()}
        for name, (values, terms) in scored.items():
            for i, value in zip(index, values.tolist()):
                scores[name][i] = value
            for term, term_values in terms.items():
                column = components.setdefault(name, {}).setdefault(term, [math.nan] * n)
                for i, value in zip(index, term_values.tolist()):
                    column[i] = value
    return scores, components


def aggregate(result: EvalResult, cfg: EvalConfig) -> dict[str, dict]:
    """Per metric: mean over images and its 95% CI, bootstrapping prompts (`bench.core.stats`)."""
    return {name: bootstrap_mean(torch.tensor(values), groups=result.prompts, resamples=cfg.bootstrap, seed=cfg.seed)
            for name, values in result.scores.items()}


def compare_to_base(result: EvalResult, base: EvalResult, scorers: dict[str, Scorer],
                    cfg: EvalConfig) -> tuple[dict[str, dict], dict[str, dict]]:
    """(win rate vs base, mean change vs base) per metric, paired over the same prompts and seeds."""
    if result.prompts != base.prompts or result.seeds != base.seeds:
        raise ValueError("cannot compare with the base run: its evaluation prompts or seeds differ")
    wins, deltas = {}, {}
    for name, values in result.scores.items():
        if name not in base.scores:
            continue
        wins[name], deltas[name] = paired_comparison(
            torch.tensor(values), torch.tensor(base.scores[name]), groups=result.prompts,
            higher_is_better=scorers[name].higher_is_better, resamples=cfg.bootstrap, seed=cfg.seed)
    return wins, deltas


@dataclass
class SetEvaluation:
    """A run's set metrics (`metrics.sets`), their feature backbones and its reference set, whose features are
    extracted once (on first use) for every record of the run."""

    metrics: dict[str, SetMetric]
    backbones: dict[str, FeatureBackbone]
    reference: str | None  # `TOY_RENDERS` or a folder; None: only set metrics that need none
    _reference: tuple[dict[str, torch.Tensor], dict] | None = field(default=None, repr=False)

    @classmethod
    def build(cls, names: Sequence[str], reference: str | None) -> SetEvaluation | None:
        """The set metrics `names` built (weights found and loaded), or None for none."""
        if not names:
            return None
        metrics, backbones = build_set_metrics(list(names))
        return cls(metrics, backbones, reference)

    def describe(self) -> dict[str, dict]:
        return describe_set_metrics(self.metrics, self.backbones)

    def fields(self, result: EvalResult) -> dict:
        """The record's `set_metrics` (each metric's values with 95% CIs over prompts), their descriptions and the
        reference set, from `result.features` (an `evaluate(features=self.backbones)`)."""
        if self._reference is None:
            needed = self.reference is not None and any(m.needs_reference for m in self.metrics.values())
            self._reference = (reference_features(self.reference, result.prompts, self.backbones) if needed
                               else ({}, {}))
        features, described = self._reference
        return {"set_metrics": evaluate_set_metrics(self.metrics, result.features, features, result.prompts),
                "set_metric_descriptions": self.describe(), "reference_set": described}
