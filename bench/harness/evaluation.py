"""Evaluation: fixed prompts x fixed seeds, identical for every method and the base model.

Image i of the evaluation set is prompt `prompts[i // k]` with seed `eval.seed + i` (k images per
prompt), sampled with DDIM (`bench.harness.sampling`) and scored by every requested scorer. Under several
processes each samples and scores a contiguous share of the images and the scores are gathered in
order (an image depends only on its prompt and seed, so the result does not depend on the number of
processes). Aggregates are means with 95% CIs from a bootstrap over prompts; comparisons with the base
model are paired over the same images (`bench.core.stats`).

`bench eval` scores images it did not sample (a folder, toy renders) with the same `score_batches` and
`aggregate`, so its numbers are computed as a run record's are.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
from accelerate.utils import gather_object

from bench.core.backbone import Backbone
from bench.core.config import EvalConfig
from bench.core.processes import processes
from bench.core.stats import bootstrap_mean, paired_comparison
from bench.harness.sampling import generate
from metrics.base import Scorer


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

    def to_dict(self) -> dict:
        return {"prompts": self.prompts, "seeds": self.seeds, "scores": self.scores, "components": self.components,
                "seconds": self.seconds, "nfe": self.nfe}

    @classmethod
    def from_dict(cls, d: dict) -> EvalResult:
        return cls(d["prompts"], d["seeds"], d["scores"], d.get("components", {}), d.get("seconds", 0.0), d.get("nfe", 0))


def evaluate(backbone: Backbone, prompts: list[str], cfg: EvalConfig, scorers: dict[str, Scorer], *,
             progress: bool = False, desc: str = "eval") -> tuple[EvalResult, torch.Tensor]:
    """Sample the evaluation set and score it; returns the result (all images) and this process's images
    (N_local, 3, H, W), the first ones of the set on the main process."""
    per_image, seeds = evaluation_set(prompts, cfg)
    state = processes()
    with state.split_between_processes({"prompts": per_image, "seeds": seeds}) as share:  # contiguous shares
        local_prompts, local_seeds = share["prompts"], share["seeds"]
    nfe_before, t0 = backbone.nfe.total, time.perf_counter()
    images = generate(backbone, local_prompts, local_seeds, steps=cfg.steps, guidance=cfg.guidance,
                      batch_size=cfg.batch_size, progress=progress and state.is_main_process, desc=desc)
    local_scores, local_components = score_batches(scorers, [(range(len(local_prompts)), local_prompts, images)],
                                                   len(local_prompts))
    local = {"scores": local_scores, "components": local_components, "nfe": backbone.nfe.total - nfe_before}
    shares = gather_object([local]) if state.num_processes > 1 else [local]
    scores = {name: [v for s in shares for v in s["scores"][name]] for name in scorers}
    components = {name: {k: [v for s in shares for v in s["components"][name][k]] for k in terms}
                  for name, terms in shares[0]["components"].items()}
    result = EvalResult(per_image, seeds, scores, components, time.perf_counter() - t0, sum(s["nfe"] for s in shares))
    return result, images


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
