"""Random draws that do not depend on how a global batch is split across processes.

Under `accelerate launch` / `torchrun` with N processes, every process holds the same training
generator and a contiguous shard of each global batch. A draw for the local batch is made for the
whole global batch (N times the local size) and the process keeps its own rows, so every sample gets
the draw it would get in a single-process run: t, ε, prompt dropout and inversion noise, and thus
the trained model, are the same for any number of processes (up to the order of floating-point
reductions). With one process this is exactly a plain draw.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Shard:
    rank: int = 0
    world: int = 1

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


def sample_timesteps(backbone, n: int, rng: torch.Generator) -> torch.Tensor:
    """t ~ U{0, ..., T-1} for n local samples, shape (n,)."""
    shard = current()
    t = torch.randint(0, backbone.num_train_timesteps, (n * shard.world,), generator=rng)
    return t[shard.rows(n)]


def sample_noise(like: torch.Tensor, rng: torch.Generator) -> torch.Tensor:
    """ε ~ N(0, I) shaped like `like` (local rows first), drawn on the CPU generator (device-independent)."""
    shard = current()
    n = like.shape[0]
    noise = torch.randn((n * shard.world, *like.shape[1:]), generator=rng, dtype=torch.float32)
    return noise[shard.rows(n)].to(like)


def sample_uniform(n: int, rng: torch.Generator) -> torch.Tensor:
    """U[0, 1) for n local samples, shape (n,)."""
    shard = current()
    return torch.rand(n * shard.world, generator=rng)[shard.rows(n)]


def sample_categorical(probs: torch.Tensor, n: int, rng: torch.Generator) -> torch.Tensor:
    """n local draws (n,) of an index with probabilities `probs` (with replacement)."""
    shard = current()
    return torch.multinomial(probs, n * shard.world, replacement=True, generator=rng)[shard.rows(n)]


def global_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean over processes of a per-process mean (equal shards): the global batch's mean, detached."""
    if current().world == 1 or not torch.distributed.is_initialized():
        return value.detach()
    total = value.detach().clone()
    torch.distributed.all_reduce(total)
    return total / current().world
