"""Random draws that do not depend on how a global batch is split across processes.

Under `accelerate launch` / `torchrun` with N processes, every process holds the same training
generator and a contiguous shard of each global batch. A draw for the local batch is made for the
whole global batch (N times the local size) and the process keeps its own rows, so every sample gets
the draw it would get in a single-process run: t, ε, prompt dropout and inversion noise, and thus
the trained model, are the same for any number of processes (up to the order of floating-point
reductions). With one process this is exactly a plain draw.

A local tensor made of stacked blocks, e.g. a pair method's (2B, ...) = cat(winners, losers), is
declared with `stacked(2)`: a draw for it is made as (blocks, global rows per block) and each block's
shard is kept, so row i of every block still gets the draw of its global sample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1
    blocks: int = 1  # local tensors are this many stacked blocks of local rows (see `stacked`)

    def rows(self, local: int) -> slice:
        """This process's rows of a global batch made of `world` local batches of `local` rows."""
        return slice(self.rank * local, (self.rank + 1) * local)


_current = Shard()


def current() -> Shard:
    return _current


@contextmanager
def sharded(rank: int, world: int) -> Iterator[Shard]:
    """Within the block, draws are made for the global batch and sliced to shard `rank` of `world`."""
    global _current
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, {world})")
    previous, _current = _current, Shard(rank, world)
    try:
        yield _current
    finally:
        _current = previous


@contextmanager
def stacked(blocks: int) -> Iterator[Shard]:
    """Within the block, local tensors (n, ...) are `blocks` stacked blocks of n / blocks rows each."""
    global _current
    if blocks < 1:
        raise ValueError(f"blocks must be >= 1, got {blocks}")
    previous, _current = _current, Shard(_current.rank, _current.world, blocks)
    try:
        yield _current
    finally:
        _current = previous


def _local(draw: Callable[[int], torch.Tensor], n: int) -> torch.Tensor:
    """This process's n rows of `draw(global rows)`, block by block."""
    shard = current()
    if n % shard.blocks:
        raise ValueError(f"{n} rows do not split into {shard.blocks} stacked blocks")
    per_block = n // shard.blocks
    full = draw(n * shard.world)  # (blocks * world * per_block, ...)
    full = full.reshape(shard.blocks, shard.world * per_block, *full.shape[1:])
    return full[:, shard.rows(per_block)].reshape(n, *full.shape[2:])


def sample_levels(backbone, n: int, rng: torch.Generator) -> torch.Tensor:
    """n local training levels (n,) float64: `Backbone.training_levels` of the global batch, this process's rows (VP:
    t ~ U{0, ..., T−1} as floats; flow: uniform over the scheduler's shifted training table)."""
    return _local(lambda rows: backbone.training_levels(rows, rng), n)


def sample_noise(like: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """ε ~ N(0, I) shaped like `like` (local rows first), drawn on the CPU generator (device-independent)."""
    rest = like.shape[1:]
    return _local(lambda rows: torch.randn((rows, *rest), generator=rng, dtype=torch.float32), like.shape[0]).to(like)


def sample_uniform(n: int, rng: torch.Generator) -> torch.Tensor:
    """U[0, 1) for n local samples, shape (n,)."""
    return _local(lambda rows: torch.rand(rows, generator=rng), n)


def sample_categorical(probs: torch.Tensor, n: int, rng: torch.Generator) -> torch.Tensor:
    """n local draws (n,) of an index with probabilities `probs` (with replacement)."""
    return _local(lambda rows: torch.multinomial(probs, rows, replacement=True, generator=rng), n)


def sample_permutations(n: int, size: int, rng: torch.Generator) -> torch.Tensor:
    """n local random permutations of range(size), shape (n, size), one per row."""
    return _local(lambda rows: torch.stack([torch.randperm(size, generator=rng) for _ in range(rows)])
                  if rows else torch.empty((0, size), dtype=torch.long), n)


def gather_rows(local: torch.Tensor) -> torch.Tensor:
    """The global batch (world·n, ...) from every process's local rows (n, ...), in rank order (what a one-process
    run holds); `local` itself in one process. Every process must call it with the same shape, on the device its
    process group communicates on (CPU for gloo, the GPU for NCCL)."""
    if current().world == 1 or not torch.distributed.is_initialized():
        return local
    parts = [torch.empty_like(local) for _ in range(current().world)]
    torch.distributed.all_gather(parts, local.contiguous())
    return torch.cat(parts)


def global_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean over processes of a per-process mean (equal shards): the global batch's mean, detached."""
    if current().world == 1 or not torch.distributed.is_initialized():
        return value.detach()
    total = value.detach().clone()
    torch.distributed.all_reduce(total)
    return total / current().world
