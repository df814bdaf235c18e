"""Deterministic, resumable batch drawing from encoded preferences, by data kind.

- `pairs`  (DPO, InPO): epochs over the pairs, each epoch a permutation seeded by (seed, epoch);
- `images` (SFT): the same over the pairs' preferred images;
- `binary` (KTO): images drawn with replacement with the method's sampling weights (uniform if none),
  from the training generator.

Each draw is made for the global batch (the local batch size times the number of processes) and
sliced to this process's shard (`methods.shards`), so a sample's place in the data order does not
depend on the number of processes. The sampler's whole state is (epoch, cursor); with the training
generator's state it makes a run resumable bit for bit.
"""

from __future__ import annotations

import torch

from bench.harness.data import EncodedPreferences
from methods.alignment.base import ImageBatch, PairBatch
from methods.shards import current, sample_categorical


class BatchSampler:
    def __init__(self, data: EncodedPreferences, kind: str, batch_size: int, seed: int,
                 weights: torch.Tensor | None = None, device: torch.device | str = "cpu"):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data, self.kind, self.batch_size, self.seed = data, kind, batch_size, seed
        self.weights, self.device = weights, device
        self.epoch, self.cursor = 0, 0
        self._order: torch.Tensor | None = None

    def _population(self) -> int:
        return self.data.num_pairs if self.kind in ("pairs", "images") else self.data.num_images

    def _next_indices(self, rng: torch.Generator) -> torch.Tensor:
        if self.kind == "binary":
            weights = self.weights if self.weights is not None else torch.ones(self.data.num_images, dtype=torch.float64)
            return sample_categorical(weights, self.batch_size, rng)
        shard = current()
        picked, need = [], self.batch_size * shard.world
        while need > 0:
            if self._order is None:
                gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
                self._order = torch.randperm(self._population(), generator=gen)
            take = self._order[self.cursor:self.cursor + need]
            picked.append(take)
            need -= len(take)
            self.cursor += len(take)
            if self.cursor >= len(self._order):
                self.epoch, self.cursor, self._order = self.epoch + 1, 0, None
        return torch.cat(picked)[shard.rows(self.batch_size)]

    def next(self, rng: torch.Generator) -> PairBatch | ImageBatch:
        idx = self._next_indices(rng)
        d = self.data
        if self.kind == "pairs":
            winner, loser = d.pair_winner[idx], d.pair_loser[idx]
            return PairBatch(d.latents[winner].to(self.device), d.latents[loser].to(self.device),
                             d.conditioning(d.image_prompt[winner]).to(self.device))
        images = d.pair_winner[idx] if self.kind == "images" else idx
        return ImageBatch(d.latents[images].to(self.device), d.conditioning(d.image_prompt[images]).to(self.device),
                          d.desirable[images].to(self.device))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor, self._order = state["epoch"], state["cursor"], None
