"""Shard-aware draws: the rows two simulated processes draw, put back together, are the one-process draws
(every method's draws and loss over shards: test_contracts.py)."""

from __future__ import annotations

import pytest
import torch

from methods.shards import sample_categorical, sample_levels, sample_noise, sample_uniform, sharded, stacked


class _Backbone:
    @staticmethod
    def training_levels(n: int, rng: torch.Generator) -> torch.Tensor:  # as a VP Backbone draws them
        return torch.randint(0, 1000, (n,), generator=rng).to(torch.float64)


def _draws(rng: torch.Generator, n: int) -> dict[str, torch.Tensor]:
    """Every kind of draw for a local batch of n rows, and a stacked (2n, ...) tensor of pairs."""
    out = {
        "t": sample_levels(_Backbone(), n, rng),
        "eps": sample_noise(torch.zeros(n, 2, 3, 3), rng),
        "u": sample_uniform(n, rng),
        "cat": sample_categorical(torch.tensor([0.2, 0.3, 0.5]), n, rng),
    }
    with stacked(2):
        out["pair_eps"] = sample_noise(torch.zeros(2 * n, 4), rng)
    return out


def test_two_shards_reassemble_the_single_process_draws():
    whole = _draws(torch.Generator().manual_seed(7), 6)
    shards = []
    for rank in range(2):
        with sharded(rank, 2):
            shards.append(_draws(torch.Generator().manual_seed(7), 3))
    for key in ("t", "eps", "u", "cat"):
        assert torch.equal(torch.cat([shards[0][key], shards[1][key]]), whole[key]), key
    # a pair tensor (2n, ...) = cat(winners, losers): rank r holds winners r*3..r*3+2 and the same losers
    w, lo = whole["pair_eps"][:6], whole["pair_eps"][6:]
    for rank in range(2):
        assert torch.equal(shards[rank]["pair_eps"], torch.cat([w[3 * rank:3 * rank + 3], lo[3 * rank:3 * rank + 3]]))


def test_one_process_draws_are_plain_draws():
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(sample_noise(torch.zeros(4, 5), a), torch.randn(4, 5, generator=b))
    with stacked(2):
        assert torch.equal(sample_noise(torch.zeros(4, 5), a), torch.randn(4, 5, generator=b))


def test_bad_shards_and_blocks_are_refused():
    with pytest.raises(ValueError, match=r"rank 2 is not in \[0, 2\)"), sharded(2, 2):
        pass
    with stacked(2), pytest.raises(ValueError, match="3 rows do not split into 2 stacked blocks"):
        sample_uniform(3, torch.Generator())
