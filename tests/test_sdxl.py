"""SDXL-shaped backbones through the same interface: two text encoders, pooled embeddings,
micro-conditioning; every method trains a step and every exact sampler round-trips on one."""

from __future__ import annotations

import math

import pytest
import torch

from bench.core.backbone import Backbone, BackboneLoadError
from bench.core.budget import Budget
from bench.core.config import TrainConfig
from bench.harness.data import encode_preferences, load_pickapic, preference_pairs
from bench.harness.trainer import Trainer
from methods.alignment import METHODS
from methods.inversion import SAMPLERS
from methods.inversion.base import sampling_levels

PROMPT = "a small red circle on the left, black background"


def test_sdxl_conditioning_layout(tiny_sdxl_backbone):
    backbone = tiny_sdxl_backbone
    assert backbone.family == "sdxl"
    cond = backbone.encode_prompts([PROMPT, "x"])
    assert cond.embeds.shape == (2, 16, 32)  # penultimate states of both encoders, 16 + 16 features
    assert cond.added["text_embeds"].shape == (2, 16)
    assert cond.added["time_ids"].tolist() == [[32, 32, 0, 0, 32, 32]] * 2
    null = backbone.null_conditioning(3)
    assert len(null) == 3 and null.embeds.abs().sum() == 0 and null.added["text_embeds"].abs().sum() == 0


def test_sdxl_cfg_and_save_load_round_trip(tiny_sdxl_backbone, tmp_path):
    backbone = tiny_sdxl_backbone
    cond = backbone.encode_prompts([PROMPT] * 2)
    x = torch.randn(2, *backbone.latent_shape, generator=torch.Generator().manual_seed(0))
    backbone.nfe.reset()
    guided = backbone.eps(x, 400, cond, guidance=5.0)
    assert backbone.nfe.forward == 4 and backbone.nfe.calls == 1
    backbone.save_pretrained(tmp_path / "sdxl", include_tokenizer=False)
    loaded = Backbone.from_pretrained(tmp_path / "sdxl")
    assert loaded.family == "sdxl" and loaded.force_zeros_for_empty_prompt
    assert torch.allclose(loaded.eps(x, 400, loaded.encode_prompts([PROMPT] * 2), guidance=5.0), guided, atol=1e-5)


def test_sdxl_unet_without_second_encoder_is_refused(tiny_sdxl_backbone):
    b = tiny_sdxl_backbone
    with pytest.raises(BackboneLoadError, match="text_encoder_2"):
        Backbone(b.unet, b.vae, b.text_encoder, b.tokenizer, b.scheduler)


@pytest.fixture()
def sdxl_data(tiny_sdxl_backbone, tiny_toy_dir):
    return encode_preferences(tiny_sdxl_backbone, preference_pairs(load_pickapic(tiny_toy_dir / "prefs.parquet"),
                                                                   max_pairs=8))


# Before the first update the policy is the reference, so every implicit reward is 0 and the loss is known by hand:
# −log σ(0) = log 2 for the DPO family, KTO's 1 − σ(0) = ½, DSPO's squared error (0 − ½)² = ¼. (That every method
# trains a step on SD and SDXL shapes is a registry contract, tests/test_contracts.py.)
LOSS_AT_INIT = {"dpo": math.log(2), "dpo-gamma-t": math.log(2), "inpo": math.log(2), "kto": 0.5, "dspo": 0.25}


@pytest.mark.parametrize("method", sorted(LOSS_AT_INIT))
def test_first_loss_on_sdxl_is_the_zero_reward_value(tiny_sdxl_backbone, sdxl_data, method):
    trainer = Trainer(METHODS.get(method)(), tiny_sdxl_backbone, sdxl_data, TrainConfig(lr=1e-3, batch_size=2),
                      Budget.parse("1steps"), progress=False)
    assert trainer.fit().history[0]["loss"] == pytest.approx(LOSS_AT_INIT[method], abs=1e-6)


def test_every_exact_sampler_round_trips_on_sdxl(tiny_sdxl_backbone):
    backbone = tiny_sdxl_backbone
    for module in (backbone.unet, backbone.text_encoder, backbone.text_encoder_2):
        module.double()
    cond = backbone.encode_prompts([PROMPT] * 2)
    x0 = torch.randn(2, *backbone.latent_shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = [name for name in SAMPLERS.names() if SAMPLERS.get(name).exact]
    for name in exact:
        sampler = SAMPLERS.get(name)()
        state = sampler.invert(backbone, x0, cond, sampling_levels(backbone, 10), rng=torch.Generator().manual_seed(0))
        error = ((sampler.reconstruct(backbone, state, cond) - x0) ** 2).mean().item()
        assert error < 1e-16, (name, error)
    inexact = SAMPLERS.get("ddim")()
    state = inexact.invert(backbone, x0, cond, sampling_levels(backbone, 10))
    assert ((inexact.reconstruct(backbone, state, cond) - x0) ** 2).mean().item() > 1e-12
