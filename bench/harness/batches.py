"""Deterministic, resumable batch drawing from encoded preferences, by data kind.

- `pairs`  (DPO, InPO): epochs over the pairs, each epoch a permutation seeded by (seed, epoch);
- `images` (SFT): the same over the pairs' preferred images;
- `binary` (KTO): images drawn with replacement with the method's sampling weights (uniform if none),
  from the training generator;
- `prompts` (online methods, `ExperienceSampler`): epochs over the training prompts, which the policy samples for.

Each draw is made for the global batch (the local batch size times the number of processes) and
sliced to this process's shard (`methods.shards`), so a sample's place in the data order does not
depend on the number of processes. The sampler's whole state is (epoch, cursor); with the training
generator's state it makes a run resumable bit for bit.
"""

from __future__ import annotations

import torch

from bench.core.backbone import Backbone
from bench.harness.data import EncodedPreferences
from methods.alignment.base import ImageBatch, OnlineMethod, PairBatch, PromptBatch, Reward
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


class ExperienceSampler:
    """Micro-batches of an online method's experience (data kind `prompts`): when the last collection is used up,
    the next `batch_size` training prompts (epochs over the prompts, each a permutation seeded by (seed, epoch))
    are sampled by the current policy and scored (`OnlineMethod.collect`); `next` hands out its micro-batches in
    order. Under several processes a collection is `batch_size` prompts per process, drawn for the global batch and
    sharded as `BatchSampler` shards (a prompt's whole group in one process). `images` counts the images scored
    (the samples drawn, by every process). Between collections (`resumable`), the state
    (epoch, cursor, the method's own state) with the training generator's makes a run resumable bit for bit; the
    trainer checkpoints only there, so a checkpoint never holds experience."""

    def __init__(self, method: OnlineMethod, policy: Backbone, data: EncodedPreferences, reward: Reward,
                 batch_size: int, seed: int, device: torch.device | str = "cpu"):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.method, self.policy, self.data, self.reward = method, policy, data, reward
        self.batch_size, self.seed, self.device = batch_size, seed, device
        self.epoch, self.cursor, self.images = 0, 0, 0
        self.pending: list = []

    @property
    def resumable(self) -> bool:
        return not self.pending

    def _next_prompts(self) -> torch.Tensor:
        """This process's `batch_size` prompts of the next global collection (`batch_size` × processes prompts)."""
        shard = current()
        picked, need = [], self.batch_size * shard.world
        while need > 0:
            order = torch.randperm(len(self.data.prompts), generator=torch.Generator().manual_seed(
                self.seed * 1_000_003 + self.epoch))
            take = order[self.cursor:self.cursor + need]
            picked.append(take)
            need -= len(take)
            self.cursor += len(take)
            if self.cursor >= len(order):
                self.epoch, self.cursor = self.epoch + 1, 0
        return torch.cat(picked)[shard.rows(self.batch_size)]

    def _score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        self.images += len(prompts) * current().world  # every process scores as many
        return self.reward(images, prompts)

    def next(self, rng: torch.Generator):
        if not self.pending:
            ids = self._next_prompts()
            reward = _CountedReward(self.reward, self._score)
            batch = PromptBatch(self.data.conditioning(ids).to(self.device), [self.data.prompts[i] for i in ids.tolist()],
                                ids, reward)
            self.pending = list(self.method.collect(self.policy, batch, rng))
        return self.pending.pop(0)

    def state_dict(self) -> dict:
        if self.pending:
            raise RuntimeError("an experience sampler is checkpointed between collections only")
        return {"epoch": self.epoch, "cursor": self.cursor, "images": self.images, "method": self.method.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.cursor, self.images, self.pending = state["epoch"], state["cursor"], state["images"], []
        self.method.load_state_dict(state["method"])


class _CountedReward:
    """`reward` with its calls routed through `score` (which counts them); the same name and differentiability."""

    def __init__(self, reward: Reward, score):
        self.name, self.differentiable, self._score, self._reward = reward.name, reward.differentiable, score, reward

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self._score(images, prompts)

    def non_differentiable(self) -> list[str]:
        return self._reward.non_differentiable() if hasattr(self._reward, "non_differentiable") else [self.name]
