"""LoRA adapters through peft (`--train-arg lora_rank=r`): a step changes only the adapters, the base stays bit for bit
as it was, the policy starts at the reference (DPO's ln 2), the NFE meter charges the backward, SD3's transformer trains,
a killed LoRA run resumes to the uninterrupted one's numbers, and the dry run counts the adapters as peft injects them."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from test_contracts import BACKBONE_FIXTURES, FLOW_ONLY, TRAINED_METHODS, VARIABLE_STEP_COST

from bench.core.backbone import Backbone
from bench.core.budget import Budget
from bench.core.config import LORA_TARGETS, TrainConfig, apply_overrides, split_list
from bench.harness.data import encode_preferences, load_pickapic, preference_pairs
from bench.harness.trainer import Trainer, declared_step_cost, lora_config, lora_parameter_count, lora_target_layers
from methods.alignment import METHODS

RANK = 4
SD_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # what LORA_TARGETS finds in a UNet
SD3_TARGETS = (*SD_TARGETS, "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


@pytest.fixture(scope="module")
def toy_setup(tiny_toy_dir):
    backbone = Backbone.from_pretrained(tiny_toy_dir / "pipeline")
    data = encode_preferences(backbone, preference_pairs(load_pickapic(tiny_toy_dir / "prefs.parquet")))
    return backbone, data


class Captured:
    """The LoRA policy module `Trainer.fit()` builds (it keeps it to itself), and its weights when it was built."""

    def __init__(self, monkeypatch):
        self.unet, self.initial = None, None
        build = Trainer._lora_policy

        def capture(trainer):
            self.unet = build(trainer)
            self.initial = {k: v.detach().clone() for k, v in self.unet.state_dict().items()}
            return self.unet

        monkeypatch.setattr(Trainer, "_lora_policy", capture)


def _config(**overrides) -> TrainConfig:
    return TrainConfig(**{"lr": 1e-3, "batch_size": 2, "lora_rank": RANK, **overrides})


def _train(backbone, data, budget="1steps", method="dpo", **kwargs):
    config = kwargs.pop("config", None) or _config()
    return Trainer(METHODS.get(method)(), backbone, data, config, Budget.parse(budget), seed=0, progress=False,
                   **kwargs).fit()


def _linear_layers(unet: torch.nn.Module, targets) -> dict[str, torch.nn.Linear]:
    """The Linear layers whose module name ends with a target (by hand, not through the trainer's matcher)."""
    return {name: m for name, m in unet.named_modules() if isinstance(m, torch.nn.Linear)
            and any(name.split(".")[-1] == t or name.endswith("." + t) for t in targets)}


# ----------------------------------------------------------------------------------------------- config


def test_lora_settings_come_through_train_args_and_are_validated():
    config = apply_overrides(TrainConfig(), {"lora_rank": "32", "lora_alpha": "64", "lora_init": "gaussian"})
    assert (config.lora_rank, config.lora_alpha, config.lora_targets) == (32, 64.0, LORA_TARGETS)
    assert split_list(config.lora_targets) == list(SD3_TARGETS)  # Flow-GRPO's list
    peft_config = lora_config(config)
    assert (peft_config.r, peft_config.lora_alpha, peft_config.init_lora_weights) == (32, 64.0, "gaussian")
    assert lora_config(TrainConfig(lora_rank=8)).lora_alpha == 8  # none: α = r, scale 1
    for bad, message in (({"lora_rank": -1}, "lora_rank must be >= 0"), ({"lora_rank": 4, "lora_alpha": 0},
                          "lora_alpha must be > 0"), ({"lora_rank": 4, "lora_targets": " , "}, "lora_targets must name"),
                         ({"lora_rank": 4, "lora_init": "pissa"}, "lora_init must be one of"),
                         ({"lora_alpha": 64}, "lora_alpha set without LoRA")):
        with pytest.raises(ValueError, match=message):
            TrainConfig(**bad)


def test_targets_match_as_peft_matches_them(tiny_backbone, tiny_sd3_backbone):
    """By name suffix after a dot; names one family lacks are skipped (no error), as peft does with a list."""
    for backbone, expected in ((tiny_backbone, SD_TARGETS), (tiny_sd3_backbone, SD3_TARGETS)):
        ours = lora_target_layers(backbone.unet, LORA_TARGETS)
        assert set(ours) == set(_linear_layers(backbone.unet, expected)) and ours
        unet = copy.deepcopy(backbone.unet)
        inject_adapter_in_model(LoraConfig(r=RANK, target_modules=split_list(LORA_TARGETS)), unet)
        assert {n.rsplit(".lora_A.", 1)[0] for n, _ in unet.named_parameters() if ".lora_A." in n} == set(ours)
    with pytest.raises(ValueError, match="match no module"):
        lora_target_layers(tiny_backbone.unet, "add_q_proj,nothing")
    with pytest.raises(ValueError, match="is a Conv2d"):
        lora_target_layers(tiny_backbone.unet, "conv_in")


# ----------------------------------------------------------------------------------------------- training


def test_a_lora_step_changes_only_adapter_weights(toy_setup, monkeypatch):
    backbone, data = toy_setup
    base_before = {k: v.clone() for k, v in backbone.unet.state_dict().items()}
    flags_before = [p.requires_grad for p in backbone.unet.parameters()]
    captured = Captured(monkeypatch)
    result = _train(backbone, data, "1steps")
    assert result.steps == 1

    # the base: bit-identical, same keys (no peft layers left in it), same requires_grad
    after = backbone.unet.state_dict()
    assert list(after) == list(base_before) and all(torch.equal(base_before[k], v) for k, v in after.items())
    assert [p.requires_grad for p in backbone.unet.parameters()] == flags_before

    # the policy module: only lora_A / lora_B tensors changed; its frozen weights are the base's own tensors
    trained = captured.unet.state_dict()
    changed = sorted(k for k, v in trained.items() if not torch.equal(captured.initial[k], v))
    assert changed and all(".lora_A." in k or ".lora_B." in k for k in changed)
    assert any(".lora_B." in k for k in changed)  # B left zero: the policy moved
    base_params = {id(p) for p in backbone.unet.parameters()}
    frozen = [(n, p) for n, p in captured.unet.named_parameters() if ".lora_" not in n]
    assert all(id(p) in base_params and not p.requires_grad for _, p in frozen) and len(frozen) == len(base_params)

    # adapter count r (in + out) over the targeted Linear layers, by hand
    adapters = {n: p for n, p in captured.unet.named_parameters() if ".lora_" in n}
    layers = _linear_layers(backbone.unet, SD_TARGETS)
    assert len(adapters) == 2 * len(layers) and len(layers) == 7 * 2 * 4  # 7 blocks: self, cross attention: q, k, v, out
    assert sum(p.numel() for p in adapters.values()) == sum(RANK * (m.in_features + m.out_features)
                                                            for m in layers.values())
    assert sum(p.numel() for p in adapters.values()) == lora_parameter_count(backbone.unet, _config())
    assert all(p.requires_grad and p.dtype == torch.float32 for p in adapters.values())

    # the returned policy: frozen, the base's dtype and keys, its targeted weights W + (α / r) B A, the rest the base's
    policy = result.policy.unet.state_dict()
    assert list(policy) == list(base_before) and not any(p.requires_grad for p in result.policy.unet.parameters())
    for name in layers:
        a, b = trained[f"{name}.lora_A.default.weight"], trained[f"{name}.lora_B.default.weight"]
        assert torch.allclose(policy[f"{name}.weight"], base_before[f"{name}.weight"] + (b @ a) * 1.0, atol=1e-7, rtol=0)
    moved = {k for k in policy if not torch.equal(policy[k], base_before[k])}
    assert moved and moved <= {f"{name}.weight" for name in layers}


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_lora_dpo_starts_at_ln2_and_adapters_start_gaussian_with_zero_b(toy_setup, monkeypatch, mixed_precision):
    """peft's "gaussian" init (Flow-GRPO's) draws A ~ N(0, 1/r²) and sets B = 0, so before the first update the policy
    computes what the reference (its base, the adapters disabled) computes: every DPO logit is 0, the loss ln 2."""
    backbone, data = toy_setup
    captured = Captured(monkeypatch)
    result = _train(backbone, data, "2steps", config=_config(batch_size=4, mixed_precision=mixed_precision))
    assert result.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert result.history[1]["loss"] != pytest.approx(math.log(2), abs=1e-7)  # the adapters moved it
    init = captured.initial
    b_init = [v for k, v in init.items() if ".lora_B." in k]
    a_init = torch.cat([v.flatten() for k, v in init.items() if ".lora_A." in k])
    assert all(torch.count_nonzero(b) == 0 for b in b_init)
    assert a_init.std().item() == pytest.approx(1 / RANK, rel=0.1) and abs(a_init.mean().item()) < 0.02


@pytest.mark.parametrize("name", TRAINED_METHODS)
def test_every_method_trains_a_lora_step_at_its_declared_nfe(request, tiny_toy_dir, name):
    from test_online_methods import RedReward

    # on the tiny SD-shaped UNet, or the tiny SD3 transformer for a method that trains flow models only
    tiny_backbone = request.getfixturevalue(BACKBONE_FIXTURES["sd3" if name in FLOW_ONLY else "sd"])
    data = encode_preferences(tiny_backbone, preference_pairs(load_pickapic(tiny_toy_dir / "prefs.parquet"), max_pairs=8))
    method, config = METHODS.get(name)(), _config()
    result = Trainer(method, tiny_backbone, data, config, Budget.parse("1steps"), seed=0, progress=False,
                     reward=RedReward() if method.kind == "online" else None).fit()
    assert result.steps == 1 and math.isfinite(result.history[0]["loss"])
    declared = declared_step_cost(method, config, "nfe")
    assert result.usage.nfe == VARIABLE_STEP_COST.get(name, lambda logs, items: declared)(result.history[0], 2) <= declared
    assert any(not torch.equal(a, b) for a, b in zip(result.policy.unet.state_dict().values(),
                                                     tiny_backbone.unet.state_dict().values()))


def test_a_half_precision_base_keeps_its_weights_and_trains_fp32_adapters(tiny_toy_dir, tmp_path, monkeypatch):
    """A bf16 base: the policy's frozen weights stay the base's bf16 tensors, the adapters train in fp32 under bf16
    autocast, and the merged policy comes back in bf16 without accelerate's wrapper; an untrained one samples exactly
    the base's images."""
    from bench.harness.sampling import generate

    base = Backbone.from_pretrained(tiny_toy_dir / "pipeline", dtype=torch.bfloat16)
    data = encode_preferences(base, preference_pairs(load_pickapic(tiny_toy_dir / "prefs.parquet")))
    captured = Captured(monkeypatch)
    config = _config(lr=1e-30, weight_decay=0.0, mixed_precision="bf16", checkpoint_every=100)
    result = _train(base, data, "2steps", config=config, checkpoint_path=tmp_path / "dpo.ckpt")
    adapters = torch.load(tmp_path / "dpo.ckpt", weights_only=True)["policy"]
    assert adapters and {v.dtype for v in adapters.values()} == {torch.float32}
    assert {p.dtype for n, p in captured.unet.named_parameters() if ".lora_" not in n} == {torch.bfloat16}
    assert result.policy.dtype == torch.bfloat16 and "_original_forward" not in vars(result.policy.unet)
    prompts, seeds = ["a red circle", "a blue square"], [0, 1]
    assert torch.equal(generate(result.policy, prompts, seeds, steps=3, guidance=3.0),
                       generate(base, prompts, seeds, steps=3, guidance=3.0))


def test_the_nfe_meter_charges_the_backward_of_a_lora_policy(toy_setup, tiny_backbone):
    backbone, data = toy_setup
    result = _train(backbone, data, "2steps")
    assert result.usage.nfe == 2 * 2 * 8  # as full fine-tuning: 8 NFE per pair (4 forwards, 2 of them with backward)

    unet = copy.deepcopy(tiny_backbone.unet)
    inject_adapter_in_model(lora_config(_config()), unet)
    policy = tiny_backbone.with_unet(unet)
    assert not next(unet.parameters()).requires_grad  # the first parameter is a frozen base weight
    x, cond = torch.randn(3, *policy.latent_shape), tiny_backbone.null_conditioning(3)
    policy.nfe.reset()
    policy.model_output(x, 500, cond).sum().backward()
    assert (policy.nfe.forward, policy.nfe.grad_forward, policy.nfe.total) == (3, 3, 9)  # B latents with grad: 3B
    with torch.no_grad():
        policy.model_output(x, 500, cond)
    unet.requires_grad_(False)  # frozen after training: no backward follows any more
    policy.model_output(x, 500, cond)
    assert (policy.nfe.forward, policy.nfe.grad_forward, policy.nfe.total) == (9, 3, 15)
    for name, param in unet.named_parameters():  # trainable again: charged again (the cached answer follows)
        param.requires_grad_(".lora_B." in name)
    policy.model_output(x, 500, cond)
    assert policy.nfe.grad_forward == 6


def test_one_lora_step_on_the_sd3_transformer(tiny_sd3_backbone, tiny_toy_dir, monkeypatch):
    backbone = tiny_sd3_backbone
    data = encode_preferences(backbone, preference_pairs(load_pickapic(tiny_toy_dir / "prefs.parquet"), max_pairs=8))
    base_before = {k: v.clone() for k, v in backbone.unet.state_dict().items()}
    captured = Captured(monkeypatch)
    config = _config(lora_alpha=2 * RANK, gradient_checkpointing=True)  # α = 2r as Flow-GRPO's 64 at r 32
    result = _train(backbone, data, "1steps", config=config)
    assert result.steps == 1 and result.history[0]["loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert all(torch.equal(base_before[k], v) for k, v in backbone.unet.state_dict().items())
    adapted = {n.rsplit(".lora_A.", 1)[0] for n, _ in captured.unet.named_parameters() if ".lora_A." in n}
    layers = _linear_layers(backbone.unet, SD3_TARGETS)
    assert adapted == set(layers) and {n.rsplit(".", 1)[-1] for n in adapted} >= {"add_q_proj", "add_k_proj", "add_v_proj"}
    changed = [k for k, v in captured.unet.state_dict().items() if not torch.equal(captured.initial[k], v)]
    assert changed and all(".lora_A." in k or ".lora_B." in k for k in changed)
    policy = result.policy.unet.state_dict()
    for name in layers:
        trained = captured.unet.state_dict()
        a, b = trained[f"{name}.lora_A.default.weight"], trained[f"{name}.lora_B.default.weight"]
        assert torch.allclose(policy[f"{name}.weight"], base_before[f"{name}.weight"] + (b @ a) * 2.0, atol=1e-7, rtol=0)


def test_a_killed_lora_run_resumes_to_the_uninterrupted_ones_numbers(toy_setup, tmp_path):
    backbone, data = toy_setup
    config = _config(prompt_dropout=0.5, checkpoint_every=2)
    uninterrupted = _train(backbone, data, "5steps", config=config)

    def crash(step, logs):
        if step == 3:  # the checkpoint of step 2 holds the adapters; step 3 is lost
            raise KeyboardInterrupt

    ckpt = tmp_path / "dpo-lora.ckpt"
    with pytest.raises(KeyboardInterrupt):
        _train(backbone, data, "5steps", config=config, checkpoint_path=ckpt, callbacks=[crash])
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 2 and state["policy"] and all(".lora_A." in k or ".lora_B." in k for k in state["policy"])
    resumed = _train(backbone, data, "5steps", config=config, checkpoint_path=ckpt)
    assert resumed.steps == uninterrupted.steps == 5 and resumed.usage.nfe == uninterrupted.usage.nfe
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in uninterrupted.history]
    for a, b in zip(resumed.policy.unet.state_dict().values(), uninterrupted.policy.unet.state_dict().values()):
        assert torch.equal(a, b)

    full = TrainConfig(lr=1e-3, batch_size=2, prompt_dropout=0.5, checkpoint_every=2)  # full weights: not adapters
    with pytest.raises(RuntimeError, match="Missing key"):
        _train(backbone, data, "5steps", config=full, checkpoint_path=ckpt)
    with pytest.raises(ValueError, match="does not hold this run's LoRA adapters"):
        _train(backbone, data, "5steps", config=_config(lora_rank=2 * RANK, prompt_dropout=0.5), checkpoint_path=ckpt)


def test_lora_milestones_hand_over_the_policy_a_separate_run_returns(toy_setup):
    backbone, data = toy_setup
    reached = {}
    chain = Trainer(METHODS.get("dpo")(), backbone, data, _config(), Budget.parse("3steps"), seed=0, progress=False,
                    milestones=[Budget.parse("2steps")], on_milestone=lambda b, r: reached.update({str(b): r})).fit()
    short = _train(backbone, data, "2steps")
    assert chain.steps == 3 and [h["loss"] for h in reached["2steps"].history] == [h["loss"] for h in short.history]
    for a, b in zip(reached["2steps"].policy.unet.state_dict().values(), short.policy.unet.state_dict().values()):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------- dry run


def test_the_dry_run_counts_the_adapters_peft_injects(tmp_path):
    from bench.core.real_configs import SD15
    from bench.harness.dryrun import build_on_meta, dry_run
    from bench.harness.run import plan_run
    from bench.harness.suites import get_suite

    def plan(**train):
        return plan_run(get_suite("sd15-pickapic"), ["dpo"], run_dir=tmp_path / "never-written", prompts=["a prompt"],
                        set_metrics=[], train_args={"*": train})

    full, lora = (dry_run(plan(**train), processes=1).methods[0] for train in ({}, {"lora_rank": "32", "lora_alpha": "64"}))
    unet = build_on_meta(SD15)["unet"]
    inject_adapter_in_model(LoraConfig(r=32, lora_alpha=64, target_modules=list(SD3_TARGETS)), unet,
                            low_cpu_mem_usage=True)
    injected = sum(p.numel() for n, p in unet.named_parameters() if ".lora_" in n)
    first = unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.base_layer  # 320 -> 320
    assert 32 * (first.in_features + first.out_features) == 20_480
    assert lora["trainable_parameters"] == injected == 6_377_472  # SD 1.5's attention projections at r 32
    assert lora["lora"] == {"rank": 32, "alpha": 64, "targets": LORA_TARGETS, "layers": 128}
    mem, full_mem = lora["memory_bytes"], full["memory_bytes"]
    assert mem["weights_trainable"] == mem["gradients"] == 4 * injected and mem["optimizer"] == 8 * injected
    assert mem["weights_frozen"] == full_mem["weights_frozen"]  # the frozen UNet once, in fp16 (no trainable copy)
    assert mem["autocast_copies"] == 2 * injected  # fp16 autocast of the adapters; the fp16 base needs no cast
    assert 0 < mem["activations"] < full_mem["activations"] and mem["total"] == sum(v for k, v in mem.items() if k != "total")
    assert full["trainable_parameters"] == 859_520_964 and full["lora"] is None


# ----------------------------------------------------------------------------------------------- old run directories


def test_a_run_started_before_lora_resumes_and_not_as_a_lora_run(tmp_path, monkeypatch, tiny_toy_dir):
    """run.json written before TrainConfig had lora_*: the run trained full weights, so it resumes as such (the fields
    at their defaults), and asking it to resume with LoRA is a different configuration."""
    import json

    from bench.core.records import RUN_MANIFEST, new_record
    from bench.harness.run import RunSetupError, plan_run
    from bench.harness.suites import get_suite

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BENCH_TOY_DIR", str(tiny_toy_dir))
    suite = get_suite("toy")
    config = json.loads(json.dumps(plan_run(suite, ["dpo", "kto"], run_dir=tmp_path / "new").config()))
    assert config["methods"]["dpo"]["train"]["lora_rank"] == 0  # a record says whether LoRA trained
    for method in ("dpo", "kto"):
        for key in ("lora_rank", "lora_alpha", "lora_targets", "lora_init"):
            del config["methods"][method]["train"][key]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "run.json").write_text(json.dumps(new_record(RUN_MANIFEST, config=config)))
    plan_run(suite, ["dpo", "kto"], run_dir=tmp_path / "old", resume=True)  # resumes
    with pytest.raises(RunSetupError, match=r"different configuration \(methods\)"):
        plan_run(suite, ["dpo", "kto"], run_dir=tmp_path / "old", resume=True, train_args={"dpo": {"lora_rank": "32"}})
