"""The training loop: budget accounting in every unit, measured NFE per method, and exact resume."""

from __future__ import annotations

import math

import pytest
import torch

from bench.core.backbone import Backbone
from bench.core.budget import Budget
from bench.core.config import TrainConfig
from bench.harness.data import encode_preferences, load_pickapic, preference_pairs
from bench.harness.trainer import Trainer
from methods.alignment import METHODS


@pytest.fixture(scope="module")
def toy_setup(tiny_toy_dir):
    backbone = Backbone.from_pretrained(tiny_toy_dir / "pipeline")
    data = encode_preferences(backbone, preference_pairs(load_pickapic(tiny_toy_dir / "prefs.parquet")))
    return backbone, data


def _train(toy_setup, method, budget, *, ckpt=None, callbacks=None, batch_size=2, **cfg):
    backbone, data = toy_setup
    config = TrainConfig(lr=1e-3, batch_size=batch_size, checkpoint_every=cfg.pop("checkpoint_every", 2), **cfg)
    trainer = Trainer(METHODS.get(method)(), backbone, data, config, Budget.parse(budget), seed=0,
                      checkpoint_path=ckpt, progress=False, callbacks=callbacks)
    return trainer.fit()


@pytest.mark.parametrize("method, per_item, items", [("dpo", 8, 2), ("kto", 4, 2), ("sft", 3, 2)])
def test_measured_nfe_per_step(toy_setup, method, per_item, items):
    result = _train(toy_setup, method, "3steps", batch_size=items)
    assert result.steps == 3
    assert result.usage.nfe == 3 * per_item * items  # a backward counts as 2 forwards
    assert result.usage.samples == 3 * items * (2 if method == "dpo" else 1)


@pytest.mark.parametrize("budget", ["100nfe", "13samples", "4steps"])
def test_budget_stops_at_limit(toy_setup, budget):
    limit = Budget.parse(budget)
    result = _train(toy_setup, "dpo", budget)
    used = result.usage.get(limit.unit)
    step_cost = {"nfe": 16, "samples": 4, "steps": 1}[limit.unit]
    assert limit.limit - step_cost < used <= limit.limit


def test_inpo_steps_cost_at_most_declared_worst_case(toy_setup):
    result = _train(toy_setup, "inpo", "200nfe")
    assert result.usage.nfe <= 200
    per_step = [b["nfe"] - a["nfe"] for a, b in zip([{"nfe": 0}] + result.history, result.history)]
    assert all(16 < cost <= 2 * 28 for cost in per_step)  # 8F per pair plus 2F per inversion step


def test_resume_after_interruption_gives_identical_results(toy_setup, tmp_path):
    uninterrupted = _train(toy_setup, "dpo", "7steps", prompt_dropout=0.5)

    def crash(step, logs):
        if step == 5:  # checkpoints were written at steps 2 and 4; step 5 is lost
            raise KeyboardInterrupt

    ckpt = tmp_path / "dpo.ckpt"
    with pytest.raises(KeyboardInterrupt):
        _train(toy_setup, "dpo", "7steps", ckpt=ckpt, callbacks=[crash], prompt_dropout=0.5)
    assert torch.load(ckpt, weights_only=True)["step"] == 4
    resumed = _train(toy_setup, "dpo", "7steps", ckpt=ckpt, prompt_dropout=0.5)
    assert resumed.steps == uninterrupted.steps == 7
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in uninterrupted.history]
    for a, b in zip(resumed.policy.unet.state_dict().values(), uninterrupted.policy.unet.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.usage.nfe == uninterrupted.usage.nfe


def test_training_moves_the_policy_not_the_reference(toy_setup):
    backbone, _ = toy_setup
    before = {k: v.clone() for k, v in backbone.unet.state_dict().items()}
    result = _train(toy_setup, "dpo", "3steps")
    assert all(torch.equal(before[k], v) for k, v in backbone.unet.state_dict().items())
    assert any(not torch.equal(before[k], v) for k, v in result.policy.unet.state_dict().items())
    assert not any(p.requires_grad for p in result.policy.unet.parameters())


def test_gradient_accumulation_and_mixed_precision_in_one_process(toy_setup):
    accumulated = _train(toy_setup, "dpo", "2steps", grad_accum=3)
    assert accumulated.steps == 2 and accumulated.usage.samples == 2 * 3 * 2 * 2  # steps x micro x pairs x 2
    assert accumulated.usage.nfe == 2 * 3 * 2 * 8
    bf16 = _train(toy_setup, "kto", "2steps", mixed_precision="bf16")
    assert bf16.steps == 2 and all(torch.isfinite(torch.tensor(h["loss"])) for h in bf16.history)


def test_adafactor_and_gradient_checkpointing_give_the_same_first_step_loss(toy_setup):
    plain = _train(toy_setup, "dpo", "2steps")
    other = _train(toy_setup, "dpo", "2steps", optimizer="adafactor", gradient_checkpointing=True)
    assert other.history[0]["loss"] == pytest.approx(plain.history[0]["loss"], abs=1e-6)  # same weights, same draws
    assert other.history[1]["loss"] != pytest.approx(plain.history[1]["loss"], abs=1e-9)  # a different update


def test_half_precision_base_trains_fp32_weights_and_evaluates_like_the_base(tiny_toy_dir, tmp_path):
    """A bf16 base (frozen reference in bf16, as Diffusion-DPO's train.py) trains a float32 policy under bf16
    autocast; the policy comes back in bf16 without the autocast wrapper, so an (almost) untrained policy
    samples exactly the base model's images: base and policies are evaluated with the same arithmetic."""
    from bench.harness.sampling import generate

    base = Backbone.from_pretrained(tiny_toy_dir / "pipeline", dtype=torch.bfloat16)
    data = encode_preferences(base, preference_pairs(load_pickapic(tiny_toy_dir / "prefs.parquet")))
    assert data.latents.dtype == torch.float32  # the fp32 VAE's latents, not rounded to bf16
    config = TrainConfig(lr=1e-30, batch_size=2, weight_decay=0.0, mixed_precision="bf16", checkpoint_every=100)
    result = Trainer(METHODS.get("dpo")(), base, data, config, Budget.parse("2steps"), seed=0, progress=False,
                     checkpoint_path=tmp_path / "dpo.ckpt").fit()
    trained = torch.load(tmp_path / "dpo.ckpt", weights_only=True)["policy"]  # the weights as they trained
    assert {v.dtype for v in trained.values()} == {torch.float32}
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in result.history) and result.steps == 2
    assert base.dtype == torch.bfloat16 and result.policy.dtype == torch.bfloat16
    assert "_original_forward" not in vars(result.policy.unet)  # accelerate's autocast wrapper removed
    prompts, seeds = ["a red circle", "a blue square"], [0, 1]
    assert torch.equal(generate(result.policy, prompts, seeds, steps=3, guidance=3.0),
                       generate(base, prompts, seeds, steps=3, guidance=3.0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reference_computes_under_the_policys_autocast(tiny_toy_dir, dtype):
    """Before any update the policy equals the reference, so every pair's DPO logit is 0 and the loss is ln 2
    exactly, also under bf16 mixed precision: the reference's forwards run under the same autocast as the
    policy's (without it, an fp32 reference against a bf16-autocast policy starts off ln 2 by ~1e-2 at β 5000)."""
    base = Backbone.from_pretrained(tiny_toy_dir / "pipeline", dtype=dtype)
    data = encode_preferences(base, preference_pairs(load_pickapic(tiny_toy_dir / "prefs.parquet")))
    config = TrainConfig(lr=1e-30, batch_size=4, weight_decay=0.0, mixed_precision="bf16")
    result = Trainer(METHODS.get("dpo")(), base, data, config, Budget.parse("2steps"), seed=0, progress=False).fit()
    assert [h["loss"] for h in result.history] == pytest.approx([math.log(2)] * 2, abs=1e-7)
