"""Toy preference pairs: base-model samples labelled by the oracle with Bradley-Terry noise.

For each training prompt, K images are sampled from the base model with fixed seeds; every pair
(i, j) of them becomes one comparison, image i preferred with probability

    P(i ≻ j) = σ((R_i − R_j) / T)          (Bradley & Terry 1952; T the label temperature)

drawn from a seeded generator. T → 0 gives oracle-consistent labels; larger T noisier ones, like
human raters. Rows follow the Pick-a-Pic v2 schema (`caption`, `jpg_0`, `jpg_1`, `label_0`,
`label_1`, `image_0_uid`, `image_1_uid`, `best_image_uid`, `model_0`, `model_1`, `has_label`,
`are_different`, `ranking_id`); `jpg_*` hold PNG bytes (lossless, so the stored image is the one
scored), and `reward_0`/`reward_1` keep the oracle scores for diagnostics.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import datasets
import torch

from bench.core.backbone import Backbone
from bench.core.progress import progress_bar
from bench.harness.data import decode_images, png_bytes
from bench.harness.sampling import generate
from bench.toy.oracle import oracle_reward


@dataclass(frozen=True)
class PreferenceConfig:
    samples_per_prompt: int = 4
    groups_per_prompt: int = 2  # independent groups of `samples_per_prompt` images per prompt
    steps: int = 20
    guidance: float = 3.0
    temperature: float = 0.1
    seed: int = 100_000  # image seeds are seed + i; labels use a generator seeded with `seed`

    def __post_init__(self):
        if self.samples_per_prompt < 2 or self.groups_per_prompt < 1:
            raise ValueError("need samples_per_prompt >= 2 and groups_per_prompt >= 1")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


def generate_preferences(backbone: Backbone, prompts: list[str], cfg: PreferenceConfig, *,
                         progress: bool = True) -> datasets.Dataset:
    """Sample, score and pair base-model images for `prompts`; a Pick-a-Pic-schema dataset."""
    k = cfg.samples_per_prompt
    groups = [(p, g) for p in prompts for g in range(cfg.groups_per_prompt)]
    per_image = [p for p, _ in groups for _ in range(k)]
    seeds = [cfg.seed + i for i in range(len(per_image))]
    images = generate(backbone, per_image, seeds, steps=cfg.steps, guidance=cfg.guidance, progress=progress,
                      desc="toy preference images")
    # Decode the stored bytes before scoring, so the reward is that of the image the dataset holds.
    blobs = [png_bytes(img) for img in images]
    rewards = oracle_reward(per_image, decode_images(blobs, backbone.image_size))
    labels = torch.Generator().manual_seed(cfg.seed)
    rows = {name: [] for name in ("caption", "jpg_0", "jpg_1", "label_0", "label_1", "image_0_uid", "image_1_uid",
                                  "best_image_uid", "model_0", "model_1", "has_label", "are_different",
                                  "ranking_id", "reward_0", "reward_1")}
    for g, (prompt, _) in enumerate(progress_bar(groups, enabled=progress, desc="toy preference pairs")):
        for i, j in itertools.combinations(range(g * k, (g + 1) * k), 2):
            p_first = torch.sigmoid((rewards[i] - rewards[j]) / cfg.temperature)
            first_wins = bool(torch.rand((), generator=labels) < p_first)
            uid_i, uid_j = f"toy-{seeds[i]}", f"toy-{seeds[j]}"
            rows["caption"].append(prompt)
            rows["jpg_0"].append(blobs[i])
            rows["jpg_1"].append(blobs[j])
            rows["label_0"].append(1.0 if first_wins else 0.0)
            rows["label_1"].append(0.0 if first_wins else 1.0)
            rows["image_0_uid"].append(uid_i)
            rows["image_1_uid"].append(uid_j)
            rows["best_image_uid"].append(uid_i if first_wins else uid_j)
            rows["model_0"].append("toy-base")
            rows["model_1"].append("toy-base")
            rows["has_label"].append(True)
            rows["are_different"].append(True)
            rows["ranking_id"].append(len(rows["ranking_id"]))
            rows["reward_0"].append(float(rewards[i]))
            rows["reward_1"].append(float(rewards[j]))
    return datasets.Dataset.from_dict(rows)
