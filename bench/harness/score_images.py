"""`bench eval`: score images the benchmark did not sample for a run, with the numbers a run record would give.

The images come from one source: a folder (.png/.jpg/.jpeg/.webp, in natural file-name order: 2.png before
10.png) with a prompt file (one prompt per image, or one for all), or N ground-truth renders or base-model
samples of the toy world's held-out captions (`bench.toy.world.held_out_combos`). Samples use the toy suite's
evaluation sampler (its `EvalConfig`: DDIM 20 steps, guidance 3; image i seed + i). Scores come from
`bench.harness.evaluation.score_batches` and the aggregates (mean, 95% CI from a bootstrap over prompts) from
`bench.harness.evaluation.aggregate` with the default `EvalConfig`'s 2000 resamples and seed 0: the functions that
make a run record's numbers. The result is a `bench-eval` record (`bench.core.records.EVAL`).

`plan_eval` checks every input (ValueError naming the flag) and `score_images` builds every scorer (weights
found and loaded) before any image is read or sampled, so bad input stops the command having written nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.core.backbone import Backbone
from bench.core.config import EvalConfig
from bench.core.progress import progress_bar
from bench.core.records import EVAL, new_record
from bench.harness.data import as_rgb, image_files, png_bytes
from bench.harness.evaluation import EvalResult, aggregate, score_batches
from bench.harness.sampling import generate
from bench.harness.suites import get_suite
from bench.toy.world import held_out_combos, render_dataset
from metrics.build import ScorerOptions, build_scorers


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
              seed: int = 0, batch_size: int = 32, save_images: Path | None = None) -> EvalPlan:
    """`bench eval`'s inputs, checked before any work (ValueError naming the flag): a folder `images` with its
    `prompts` file (listed and read here), or `toy_renders` or `toy_samples` (from `pipeline`) of the held-out
    captions, optionally written to the empty or new directory `save_images`."""
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
        if prompts is None:
            raise ValueError("--images needs --prompts FILE (one prompt per image, or one for all)")
        per_image = tuple(read_prompts(prompts, len(files)))
    else:
        count, flag = (toy_renders, "--toy-renders") if toy_renders is not None else (toy_samples, "--toy-samples")
        if count < 1:
            raise ValueError(f"{flag} must be >= 1, got {count}")
        if prompts is not None:
            raise ValueError(f"--prompts does not apply to {flag} (the held-out toy captions are the prompts)")
        if pipeline is not None and not pipeline.is_dir():
            raise ValueError(f"--pipeline {pipeline}: not a directory")
    return EvalPlan(tuple(metrics), options, batch_size, images, files, prompts, per_image, toy_renders, toy_samples,
                    pipeline, seed, save_images)


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


def load_image(path: Path) -> torch.Tensor:
    """(3, H, W) float RGB in [0, 1] at the file's own size (each scorer preprocesses as its model expects)."""
    with Image.open(path) as img:
        array = np.asarray(as_rgb(img), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


def image_batches(files: tuple[Path, ...] | None, images: torch.Tensor | None, prompts: list[str],
                  batch_size: int) -> Iterator[tuple[list[int], list[str], torch.Tensor]]:
    """(image indices, prompts, images (B, 3, H, W)) for `score_batches`: slices of `images`, or `batch_size` files
    read at a time and grouped by size (a batch holds images of one size)."""
    for start in range(0, len(prompts), batch_size):
        index = list(range(start, min(start + batch_size, len(prompts))))
        if files is None:
            yield index, [prompts[i] for i in index], images[index[0]:index[-1] + 1]
            continue
        loaded = {i: load_image(files[i]) for i in index}
        sizes: dict[tuple[int, ...], list[int]] = {}
        for i, tensor in loaded.items():
            sizes.setdefault(tuple(tensor.shape), []).append(i)
        for group in sizes.values():
            yield group, [prompts[i] for i in group], torch.stack([loaded[i] for i in group])


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
    """Build every scorer, make or read the images (writing the toy ones to `plan.save_images`), score them; the
    `bench-eval` record: per-image scores and diagnostic terms, aggregates, each scorer's description (weight paths
    and SHA256) and Config."""
    scorers = build_scorers(list(plan.metrics), plan.options)  # first: missing weights stop before any image
    if plan.files is None:
        pixels, prompts, source = toy_images(plan, progress=progress)
        if plan.save_images is not None:
            save_images(plan.save_images, pixels, prompts)
    else:
        pixels, prompts, source = None, list(plan.prompts), {}
    n = len(prompts)
    batches = progress_bar(image_batches(plan.files, pixels, prompts, plan.batch_size), enabled=progress,
                           desc="scoring", total=None if plan.files else -(-n // plan.batch_size))
    scores, components = score_batches(scorers, batches, n)
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
        aggregates=aggregate(EvalResult(prompts, source.get("seeds", []), scores, components), EvalConfig()),
        scorers={name: scorer.describe() for name, scorer in scorers.items()},
        scorer_configs=plan.options.recorded_configs(list(plan.metrics)),
    )
