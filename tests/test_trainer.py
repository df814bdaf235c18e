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


def test_a_finished_runs_policy_is_freed_before_the_next_run_allocates(toy_setup):
    """Under mixed precision accelerate binds the prepared policy's forward to it (a reference cycle), so a finished
    run's policy copy and optimizer outlive it until collected: on a GPU each method of a run would add its copy to
    the next one's peak memory. fit() collects first; with the collector otherwise off, at most the last run's copy
    is left beside the base denoiser."""
    import gc

    from diffusers import UNet2DConditionModel

    def denoisers() -> int:
        return sum(isinstance(o, UNet2DConditionModel) for o in gc.get_objects())

    gc.collect()
    before = denoisers()
    gc.disable()
    try:
        alive = []
        for method in ("dpo", "sft", "kto"):
            _train(toy_setup, method, "1steps", mixed_precision="bf16")  # the result dropped at once
            alive.append(denoisers() - before)
    finally:
        gc.enable()
    assert alive == [1, 1, 1]  # without fit()'s collection: [1, 2, 3]


def test_adafactor_and_gradient_checkpointing_give_the_same_first_step_loss(toy_setup):
    plain = _train(toy_setup, "dpo", "2steps")
    other = _train(toy_setup, "dpo", "2steps", optimizer="adafactor", gradient_checkpointing=True)
    assert other.history[0]["loss"] == pytest.approx(plain.history[0]["loss"], abs=1e-6)  # same weights, same draws
    assert other.history[1]["loss"] != pytest.approx(plain.history[1]["loss"], abs=1e-9)  # a different update


def test_train_guidance_is_ignored_by_a_denoiser_without_a_guidance_input(toy_setup):
    """`train_guidance` reaches only a denoiser that embeds the guidance scale (FLUX.1-dev: tests/test_backbone_flux.py);
    the toy SD pipeline trains bit for bit as without it. It is a positive scale."""
    plain = _train(toy_setup, "dpo", "2steps")
    distilled = _train(toy_setup, "dpo", "2steps", train_guidance=3.5)
    assert [logs["loss"] for logs in distilled.history] == [logs["loss"] for logs in plain.history]
    trained, other = plain.policy.unet.state_dict(), distilled.policy.unet.state_dict()
    assert all(torch.equal(trained[k], other[k]) for k in trained)
    with pytest.raises(ValueError, match="train_guidance must be > 0"):
        TrainConfig(train_guidance=0.0)


def test_a_run_started_before_train_guidance_resumes_and_not_at_another_scale(tmp_path, monkeypatch, tiny_toy_dir):
    """run.json written before TrainConfig had train_guidance: the run trained at the default, so it resumes, and
    asking it to resume at another scale is a different configuration."""
    import json

    from bench.core.records import RUN_MANIFEST, new_record
    from bench.harness.run import RunSetupError, plan_run
    from bench.harness.suites import get_suite

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BENCH_TOY_DIR", str(tiny_toy_dir))
    suite = get_suite("toy")
    config = json.loads(json.dumps(plan_run(suite, ["dpo"], run_dir=tmp_path / "new").config()))
    assert config["methods"]["dpo"]["train"]["train_guidance"] == 1.0  # recorded
    del config["methods"]["dpo"]["train"]["train_guidance"]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "run.json").write_text(json.dumps(new_record(RUN_MANIFEST, config=config)))
    plan_run(suite, ["dpo"], run_dir=tmp_path / "old", resume=True)  # resumes
    with pytest.raises(RunSetupError, match=r"different configuration \(methods\)"):
        plan_run(suite, ["dpo"], run_dir=tmp_path / "old", resume=True, train_args={"dpo": {"train_guidance": "3.5"}})


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



def _same_run(a, b) -> None:
    """Two TrainResults of the same budget: the same weights, steps, counted usage and losses."""
    assert a.steps == b.steps
    assert (a.usage.steps, a.usage.samples, a.usage.nfe) == (b.usage.steps, b.usage.samples, b.usage.nfe)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert a.policy.dtype == b.policy.dtype
    for x, y in zip(a.policy.unet.state_dict().values(), b.policy.unet.state_dict().values(), strict=True):
        assert torch.equal(x, y)


def test_milestones_hand_over_the_policies_of_separate_runs(tiny_toy_dir):
    """KTO at batch 2 costs 8 NFE a step: training to 60nfe (7 steps) through milestones 20nfe (2 steps; a third
    would cross it) and 40nfe (5 steps) hands each milestone what a separate run of that budget returns, also in a
    bf16 base (the frozen copy is rounded as `fit()` rounds), although the callback samples images with it and
    draws from the global RNG; and training goes on to the separate 60nfe run's policy."""
    from bench.harness.sampling import generate

    base = Backbone.from_pretrained(tiny_toy_dir / "pipeline", dtype=torch.bfloat16)
    data = encode_preferences(base, preference_pairs(load_pickapic(tiny_toy_dir / "prefs.parquet")))
    config = TrainConfig(lr=1e-3, batch_size=2, mixed_precision="bf16", prompt_dropout=0.5)

    def train(budget, **kwargs):
        return Trainer(METHODS.get("kto")(), base, data, config, Budget.parse(budget), seed=0, progress=False,
                       **kwargs).fit()

    reached = {}

    def on_milestone(budget, result):
        reached[str(budget)] = result
        generate(result.policy, ["a red circle"], [0], steps=2, guidance=3.0)
        torch.rand(100)

    final = train("60nfe", milestones=[Budget.parse("40nfe"), Budget.parse("20nfe")], on_milestone=on_milestone)
    assert list(reached) == ["20nfe", "40nfe"] and [r.steps for r in reached.values()] == [2, 5]
    for budget, result in reached.items():
        _same_run(result, train(budget))
    _same_run(final, train("60nfe"))
    with pytest.raises(ValueError, match="does not nest"):
        Trainer(METHODS.get("kto")(), base, data, config, Budget.parse("60nfe"), milestones=[Budget.parse("5steps")])


def test_a_checkpoint_trained_past_a_budget_is_not_resumed(toy_setup, tmp_path, caplog):
    """A checkpoint left by a run of a larger budget (here: at step 4 of 6) holds no state that a run of 3 steps, or
    one with a milestone at 3 steps, passes through: such a run trains from the start. A run to 6 steps resumes it."""
    import shutil

    def crash(step, logs):
        if step == 5:
            raise KeyboardInterrupt

    ckpt = tmp_path / "dpo.ckpt"
    with pytest.raises(KeyboardInterrupt):
        _train(toy_setup, "dpo", "6steps", ckpt=ckpt, callbacks=[crash], checkpoint_every=4)
    assert torch.load(ckpt, weights_only=True)["step"] == 4

    steps = []
    shutil.copy(ckpt, tmp_path / "short.ckpt")
    with caplog.at_level("WARNING"):
        short = _train(toy_setup, "dpo", "3steps", ckpt=tmp_path / "short.ckpt", callbacks=[lambda s, _: steps.append(s)])
    assert steps == [1, 2, 3] and "trained past" in caplog.text
    _same_run(short, _train(toy_setup, "dpo", "3steps"))

    reached = {}
    shutil.copy(ckpt, tmp_path / "chain.ckpt")
    backbone, data = toy_setup
    chain = Trainer(METHODS.get("dpo")(), backbone, data, TrainConfig(lr=1e-3, batch_size=2, checkpoint_every=4),
                    Budget.parse("6steps"), seed=0, checkpoint_path=tmp_path / "chain.ckpt", progress=False,
                    milestones=[Budget.parse("3steps")], on_milestone=lambda b, r: reached.update({str(b): r})).fit()
    _same_run(reached["3steps"], short)
    assert chain.steps == 6

    steps.clear()
    resumed = _train(toy_setup, "dpo", "6steps", ckpt=ckpt, callbacks=[lambda s, _: steps.append(s)], checkpoint_every=4)
    assert steps == [5, 6]  # its own checkpoint: resumed
    _same_run(resumed, chain)


def test_an_online_run_checkpoints_between_collections_and_resumes_to_identical_results(toy_setup, tmp_path):
    """GRPO with 2 inner epochs collects on steps 1, 3, 5 and uses each collection up on steps 2, 4, 6: a checkpoint
    due at step 3 (mid-collection) waits for step 4; a run killed at step 5 resumes from it to the uninterrupted run's
    numbers."""
    from test_online_methods import RedReward

    backbone, data = toy_setup
    method_args = {"steps": 4, "group_size": 2, "inner_epochs": 2, "guidance": 1.0, "clip_range": 0.2}

    def train(ckpt=None, callbacks=None):
        config = TrainConfig(lr=1e-3, batch_size=2, checkpoint_every=3)
        trainer = Trainer(METHODS.get("grpo")(METHODS.get("grpo").Config(**method_args)), backbone, data, config,
                          Budget.parse("6steps"), seed=0, checkpoint_path=ckpt, progress=False, callbacks=callbacks,
                          reward=RedReward())
        return trainer.fit()

    uninterrupted = train()
    assert [h["reward_images"] for h in uninterrupted.history] == [4, 4, 8, 8, 12, 12]  # 2 prompts x 2 samples
    assert uninterrupted.usage.samples == 12

    def crash(step, logs):
        if step == 5:
            raise KeyboardInterrupt

    ckpt = tmp_path / "grpo.ckpt"
    with pytest.raises(KeyboardInterrupt):
        train(ckpt, [crash])
    assert torch.load(ckpt, weights_only=True)["step"] == 4  # due at 3, written when step 4 ends the collection
    resumed = train(ckpt)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in uninterrupted.history]
    for a, b in zip(resumed.policy.unet.state_dict().values(), uninterrupted.policy.unet.state_dict().values()):
        assert torch.equal(a, b)


def test_an_online_method_without_a_reward_is_refused(toy_setup):
    backbone, data = toy_setup
    with pytest.raises(ValueError, match="grpo is an online method: it needs a reward"):
        Trainer(METHODS.get("grpo")(), backbone, data, TrainConfig(), Budget.parse("1steps"))


def test_probes_run_at_nfe_multiples_on_a_copy_and_leave_training_as_it_was(toy_setup):
    """A probe (the reward curve) samples images and draws from the global RNG; training goes on as without it."""
    from test_online_methods import RedReward

    backbone, data = toy_setup
    grpo = METHODS.get("grpo")
    calls = []

    def probe(result):
        calls.append(result.usage.nfe)
        torch.rand(10)  # a draw from the global generator, as sampling makes
        with torch.no_grad():
            images = result.policy.decode(torch.randn(1, *result.policy.latent_shape))
        return {"val/red": float(images[:, 0].mean())}

    def train(**probing):
        config = TrainConfig(lr=1e-3, batch_size=2)
        method = grpo(grpo.Config(steps=3, group_size=2, guidance=1.0, clip_range=0.2))
        return Trainer(method, backbone, data, config, Budget.parse("5steps"), seed=0, progress=False,
                       reward=RedReward(), **probing).fit()

    plain = train()
    probed = train(probe_every=60.0, on_probe=probe)  # each step costs 2 prompts x 2 samples x (3 + 2 x 3) = 36 NFE
    assert calls == [72, 144, 180]  # the steps that reach 60, 120 and 180
    assert [h["loss"] for h in probed.history] == [h["loss"] for h in plain.history]
    assert [("val/red" in h) for h in probed.history] == [False, True, False, True, True]
