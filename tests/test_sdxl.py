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


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_trains_a_step_on_sdxl(tiny_sdxl_backbone, sdxl_data, method):
    before = {k: v.clone() for k, v in tiny_sdxl_backbone.unet.state_dict().items()}
    trainer = Trainer(METHODS.get(method)(), tiny_sdxl_backbone, sdxl_data, TrainConfig(lr=1e-3, batch_size=2),
                      Budget.parse("1steps"), progress=False)
    result = trainer.fit()
    assert result.steps == 1 and torch.isfinite(torch.tensor(result.history[0]["loss"]))
    # before the first update the policy is the reference: every implicit reward is 0
    at_init = {"dpo": math.log(2), "dpo-gamma-t": math.log(2), "inpo": math.log(2), "mapo": None, "kto": 0.5,
               "dspo": 0.25, "sft": None}[method]
    if at_init is not None:
        assert result.history[0]["loss"] == pytest.approx(at_init, abs=1e-6)
    moved = [not torch.equal(before[k], v) for k, v in result.policy.unet.state_dict().items()]
    assert any(moved)


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
