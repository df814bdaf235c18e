"""Shard-aware draws: the rows two simulated processes draw, put back together, are the one-process draws."""

from __future__ import annotations

import pytest
import torch

from methods.shards import sample_categorical, sample_noise, sample_timesteps, sample_uniform, sharded, stacked


class _Backbone:
    num_train_timesteps = 1000


def _draws(rng: torch.Generator, n: int) -> dict[str, torch.Tensor]:
    """Every kind of draw for a local batch of n rows, and a stacked (2n, ...) tensor of pairs."""
    out = {
        "t": sample_timesteps(_Backbone(), n, rng),
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


@pytest.mark.parametrize("name", ["sft", "dpo", "kto", "inpo", "dspo", "dpo-gamma-t", "mapo"])
def test_every_method_draws_the_same_for_a_batch_and_for_its_shards(tiny_backbone, name):
    """The generator ends in the same state after a whole batch and after either shard (so the next step's
    draws agree), and the shards' losses average to the batch's (except KTO, whose reference point z0
    is a global mean that needs the process group)."""
    import copy

    from methods.alignment import METHODS
    from methods.alignment.base import ImageBatch, PairBatch

    method = METHODS.get(name)()
    policy_unet = copy.deepcopy(tiny_backbone.unet)
    with torch.no_grad():
        for p in policy_unet.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    policy = tiny_backbone.with_unet(policy_unet)
    g = torch.Generator().manual_seed(0)
    shape = (4, *tiny_backbone.latent_shape)
    cond = tiny_backbone.encode_prompts([f"a small red circle {i}" for i in range(4)])
    if method.data_kind == "pairs":
        whole = PairBatch(torch.randn(shape, generator=g), torch.randn(shape, generator=g), cond)
        shard = [PairBatch(whole.winner[r * 2:r * 2 + 2], whole.loser[r * 2:r * 2 + 2], cond[torch.arange(r * 2, r * 2 + 2)])
                 for r in range(2)]
    else:
        whole = ImageBatch(torch.randn(shape, generator=g), cond, torch.tensor([True, False, True, True]))
        shard = [ImageBatch(whole.latents[r * 2:r * 2 + 2], cond[torch.arange(r * 2, r * 2 + 2)],
                            whole.desirable[r * 2:r * 2 + 2]) for r in range(2)]
    rng = torch.Generator().manual_seed(1)
    with torch.no_grad():
        loss = method.loss(whole, policy, tiny_backbone, rng).loss.item()
    losses = []
    for r in range(2):
        rng_r = torch.Generator().manual_seed(1)
        with sharded(r, 2), torch.no_grad():
            losses.append(method.loss(shard[r], policy, tiny_backbone, rng_r).loss.item())
        assert torch.equal(rng_r.get_state(), rng.get_state()), f"shard {r} consumed the generator differently"
    if name != "kto":
        assert sum(losses) / 2 == pytest.approx(loss, rel=1e-5, abs=1e-7)
