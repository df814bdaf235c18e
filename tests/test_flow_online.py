"""Online methods for flow models: Flow-GRPO's SDE step, log-probability, KL and advantages, and DiffusionNFT's loss,
optimality weight, old-policy decay and sampler, against values computed by hand (/work/shared/research/
online_and_flow.md §4, §5); both methods through the trainer on the tiny SD3-shaped backbone (a finite loss, moved
weights, the declared NFE), and their one-line refusal of a variance-preserving backbone."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import build_tiny_sd3_backbone
from test_online_methods import PROMPTS, RedReward, prompt_batch, trainable

from bench.core.budget import Budget
from bench.core.config import TrainConfig
from bench.harness.data import EncodedPreferences
from bench.harness.trainer import Trainer, declared_step_cost
from methods.alignment.diffusionnft import (
    DiffusionNFT,
    DiffusionNFTConfig,
    nft_loss,
    old_policy_decay,
    optimality_weight,
    sample_flow,
)
from methods.alignment.flow_grpo import FlowGRPO, FlowGRPOConfig, kept_weights
from methods.policy_gradient import (
    flow_rollout,
    flow_sde_step_distribution,
    flow_step_log_prob,
    gaussian_kl,
    gaussian_log_prob,
    prompt_advantages,
)

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def scalar(value: float) -> torch.Tensor:
    """A (1, 1, 1, 1) float64 latent."""
    return torch.full((1, 1, 1, 1), value, dtype=torch.float64)


def levels(*sigmas: float) -> torch.Tensor:
    return torch.tensor(sigmas, dtype=torch.float64)


# ---------------------------------------------------------------------------------------------------- Flow-GRPO
def test_sde_step_mean_std_and_log_prob_by_hand():
    # σ = 0.75 → 0.5, a = 0.7, x = 1, u = −1: σ_t = 0.7 √3 = 1.212436; dσ = −0.25;
    # μ = 1 · (1 − 1.47 · 0.25 / 1.5) + (−1)(1 + 1.47 · 0.25 / 1.5)(−0.25) = 0.755 + 0.31125 = 1.06625;
    # s = σ_t √0.25 = 0.606218; at x' = μ + 0.3 s: log p = −0.045 − ln s − ln √(2π) = −0.463423
    mean, std, sde_std = flow_sde_step_distribution(scalar(1.0), scalar(-1.0), levels(0.75), levels(0.5),
                                                    noise_level=0.7, sigma_max=0.960129)
    assert sde_std.item() == pytest.approx(0.7 * math.sqrt(3), abs=1e-12) and sde_std.item() == pytest.approx(1.212436,
                                                                                                              abs=1e-6)
    assert mean.item() == pytest.approx(1.06625, abs=1e-12)
    assert std.item() == pytest.approx(0.606218, abs=1e-6)
    assert gaussian_log_prob(mean + 0.3 * std, mean, std).item() == pytest.approx(-0.463423, abs=1e-6)


def test_first_step_uses_sigma_max_in_the_denominator_and_its_std_is_the_noise_level():
    # σ = 1 → σ_1 = 0.960129 (SD3.5, 10 steps): σ_t = a √(1 / (1 − σ_max)), s = σ_t √(1 − σ_1) = a exactly;
    # log p at μ + 0.3 s = −0.045 − ln 0.7 − ln √(2π) = −0.607264
    sigma_max = 0.960129
    mean, std, sde_std = flow_sde_step_distribution(scalar(1.0), scalar(-1.0), levels(1.0), levels(sigma_max),
                                                    noise_level=0.7, sigma_max=sigma_max)
    assert std.item() == pytest.approx(0.7, abs=1e-12)
    assert sde_std.item() == pytest.approx(0.7 / math.sqrt(1 - sigma_max), abs=1e-12)
    # μ = x (1 − σ_t² dσ' / 2) + u dσ' with dσ' = σ_max − 1 (the (1 − σ) term vanishes at σ = 1)
    dt = sigma_max - 1
    assert mean.item() == pytest.approx(1 + sde_std.item() ** 2 * dt / 2 - dt, abs=1e-12)
    assert gaussian_log_prob(mean + 0.3 * std, mean, std).item() == pytest.approx(-0.607264, abs=1e-6)
    assert gaussian_log_prob(mean + 0.3 * std, mean, std).item() == pytest.approx(
        -0.045 - math.log(0.7) - LOG_SQRT_2PI, abs=1e-12)


def test_noise_level_zero_is_the_euler_step_of_the_ode():
    x, u = scalar(0.3), scalar(-1.7)
    mean, std, _ = flow_sde_step_distribution(x, u, levels(0.75), levels(0.5), noise_level=0.0, sigma_max=0.96)
    assert mean.item() == pytest.approx(0.3 + (0.5 - 0.75) * -1.7, abs=1e-15) and std.item() == 0.0


def test_kl_of_the_reference_code_is_dt_times_the_closed_form():
    # Δμ = 0.01 at σ = 0.75, dσ = −0.25, a = 0.7: the code's Δμ²/(2σ_t²) = 1e-4 / 2.94 = 3.401361e-05; the Gaussians'
    # KL Δμ²/(2 s²), s² = σ_t² |dσ|: 1.360544e-04
    mean, std, sde_std = flow_sde_step_distribution(scalar(1.0), scalar(-1.0), levels(0.75), levels(0.5),
                                                    noise_level=0.7, sigma_max=0.96)
    assert gaussian_kl(mean + 0.01, mean, sde_std).item() == pytest.approx(3.401361e-05, rel=1e-6)
    assert gaussian_kl(mean + 0.01, mean, std).item() == pytest.approx(1.360544e-04, rel=1e-6)


def test_prompt_advantages_by_hand():
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0], dtype=torch.float64)
    one_prompt = prompt_advantages(rewards, torch.zeros(4, dtype=torch.long), global_std=True)
    std = math.sqrt((4 + 1 + 0 + 9) / 4)  # population std of the four: 1.870829
    assert one_prompt.tolist() == pytest.approx([-2 / (std + 1e-4), -1 / (std + 1e-4), 0.0, 3 / (std + 1e-4)],
                                                abs=1e-12)
    assert one_prompt[3].item() == pytest.approx(1.603481, abs=1e-6)  # DDPO's δ = 1e-6 gives 1.603567
    groups = torch.tensor([0, 0, 1, 1])  # prompt means 1.5 and 4.5
    per_prompt = prompt_advantages(rewards, groups, global_std=False)  # stds 0.5 and 1.5
    assert per_prompt.tolist() == pytest.approx([-0.5 / 0.5001, 0.5 / 0.5001, -1.5 / 1.5001, 1.5 / 1.5001], abs=1e-12)
    global_std = prompt_advantages(rewards, groups, global_std=True)
    assert global_std.tolist() == pytest.approx([x / (std + 1e-4) for x in (-0.5, 0.5, -1.5, 1.5)], abs=1e-12)


def test_samples_with_zero_advantage_are_left_out_and_shards_average_to_the_kept_mean():
    advantages = torch.tensor([0.0, 0.0, 1.0, -1.0, 0.5, 0.0])
    assert kept_weights(advantages, slice(0, 6)).tolist() == [0, 0, 2, 2, 2, 0]  # 3 of 6 kept
    losses = torch.tensor([5.0, 7.0, 1.0, 2.0, 3.0, 11.0])  # per sample; only the kept three count: mean 2
    shards = [(kept_weights(advantages, rows) * losses[rows]).mean() for rows in (slice(0, 3), slice(3, 6))]
    assert (sum(shards) / 2).item() == pytest.approx(2.0)
    assert kept_weights(torch.zeros(4), slice(0, 4)).tolist() == [0, 0, 0, 0]  # nothing kept: no NaN


def test_a_micro_batch_recomputes_the_rollout_log_probs_and_the_first_loss_has_the_policy_gradient():
    backbone = build_tiny_sd3_backbone(t5=False).to(dtype=torch.float64)
    policy = trainable(backbone)
    method = FlowGRPO(FlowGRPOConfig(steps=3, group_size=3, guidance=2.0, kl_beta=0.05))
    micro_batches = method.collect(policy, prompt_batch(backbone), torch.Generator().manual_seed(0))
    assert len(micro_batches) == method.accumulation() == 2  # ⌊3 · 0.99⌋: all but the last step
    assert [int(b.step[0]) for b in micro_batches] == [0, 1]  # in order, as train_sd3.py
    batch = micro_batches[1]
    assert batch.rollout.latents.shape == (6, 4, 4, 8, 8) and batch.rollout.log_probs.shape == (6, 3)
    with torch.no_grad():
        log_prob, _, _, _ = flow_step_log_prob(policy, batch.rollout, batch.step, noise_level=0.7, guidance=2.0)
    torch.testing.assert_close(log_prob, batch.rollout.log_probs[:, 1], rtol=0, atol=1e-10)
    # π_θ = π_old = π_ref: ρ = 1 (inside the clip) and KL = 0, so L = −mean(A) = 0 (advantages sum to 0 per prompt)
    # and its gradient is −mean(A ∇ log π_θ)
    out = method.loss(batch, policy, backbone, torch.Generator())
    assert (batch.advantages != 0).all() and out.loss.item() == pytest.approx(0.0, abs=1e-7)  # float32 A
    assert out.logs["approx_kl"] < 1e-20 and out.logs["kl"] < 1e-20 and out.logs["kept"] == 1.0
    out.loss.backward()
    gradient = [p.grad.clone() for p in policy.unet.parameters()]
    policy.unet.zero_grad(set_to_none=True)
    log_prob, _, _, _ = flow_step_log_prob(policy, batch.rollout, batch.step, noise_level=0.7, guidance=2.0)
    (-(batch.advantages * log_prob).mean()).backward()
    assert max(g.abs().max().item() for g in gradient) > 0
    for g, p in zip(gradient, policy.unet.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-6, atol=1e-12)  # the KL's gradient at Δμ = 0 is 0


class PromptZeroIsConstant(RedReward):
    """Red for the second prompt; a constant for the first (its group's advantages are 0)."""

    def __call__(self, images, prompts):
        red = super().__call__(images, prompts)
        return torch.where(torch.tensor([p == PROMPTS[0] for p in prompts]), torch.ones_like(red), red)


def test_a_group_of_equal_rewards_weighs_nothing(tiny_sd3_backbone):
    method = FlowGRPO(FlowGRPOConfig(steps=2, group_size=2, guidance=1.0, kl_beta=0.0))
    batch = method.collect(trainable(tiny_sd3_backbone), prompt_batch(tiny_sd3_backbone, PromptZeroIsConstant()),
                           torch.Generator().manual_seed(0))[0]
    assert batch.advantages[:2].tolist() == [0.0, 0.0] and (batch.advantages[2:] != 0).all()
    assert batch.weights.tolist() == [0.0, 0.0, 2.0, 2.0]


def test_fast_rollout_is_the_ode_outside_its_window():
    backbone = build_tiny_sd3_backbone(t5=False).to(dtype=torch.float64)
    cond = backbone.encode_prompts(PROMPTS)
    noise = torch.randn((2, *backbone.latent_shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rollout = flow_rollout(backbone, cond, noise, steps=4, noise_level=0.8, guidance=1.0,
                           rng=torch.Generator().manual_seed(1), window=(1, 3))
    t = backbone.timesteps(4)
    sigma = backbone.sigmas(t).tolist() + [0.0]
    assert rollout.latents.shape == (2, 3, 4, 8, 8) and rollout.log_probs.shape == (2, 2)
    assert torch.equal(rollout.levels, t[1:3]) and rollout.next_levels.tolist() == [t[2].item(), t[3].item()]
    assert rollout.sigma_max == sigma[1]

    def euler(x, k):
        return x + (sigma[k + 1] - sigma[k]) * backbone.prediction(x, t[k], cond, "flow")

    torch.testing.assert_close(rollout.latents[:, 0], euler(noise, 0), rtol=0, atol=1e-12)  # before the window
    torch.testing.assert_close(rollout.samples, euler(rollout.latents[:, 2], 3), rtol=0, atol=1e-12)  # after it
    assert (rollout.latents[:, 2] - euler(rollout.latents[:, 1], 2)).abs().max() > 1e-3  # a noisy SDE step inside


def test_fast_trains_its_window_only():
    method = FlowGRPO(FlowGRPOConfig(steps=6, sde_window=2, window_low=1, window_high=4))
    assert method.trained_steps() == method.accumulation() == 2
    starts = {method.window(torch.Generator().manual_seed(seed))[0] for seed in range(40)}
    assert starts == {1, 2}  # k0 ∈ {low, ..., high − W}
    with pytest.raises(ValueError, match=r"window_low must be <= window_high − sde_window = 1, got 2"):
        FlowGRPOConfig(steps=6, sde_window=2, window_low=2, window_high=3)


# ---------------------------------------------------------------------------------------------------- DiffusionNFT
def test_nft_loss_by_hand():
    # x0 = 1, ε = 0.5, σ = 0.4 → x_σ = 0.8; v_θ = −0.4, v_old = −0.45, v_ref = −0.5; A = 2.5 → r = 0.75; m = 5
    x0, x_t, sigma = scalar(1.0), scalar(0.8), levels(0.4)
    r = optimality_weight(torch.tensor([2.5], dtype=torch.float64), 5.0)
    assert r.item() == 0.75
    v_old, v_ref = scalar(-0.45), scalar(-0.5)
    # β = 1: v⁺ = v_θ → x̂0⁺ = 0.96, w⁺ = 0.04, term 0.04² / 0.04 = 0.04; v⁻ = 2 v_old − v_θ = −0.5 → x̂0⁻ = 1, term 0;
    # L = 5 · 0.75 · 0.04 + 1e-4 · 0.1² = 0.150001
    v_theta = scalar(-0.4).requires_grad_(True)
    loss, parts = nft_loss(x0, x_t, sigma, v_theta, v_old, v_ref, r, beta=1.0, adv_clip_max=5.0, kl_beta=1e-4)
    assert loss.item() == pytest.approx(0.150001, abs=1e-9)
    assert parts["positive"].item() == pytest.approx(0.04, abs=1e-12) and parts["negative"].item() == 0.0
    loss.backward()  # dL/dv_θ = 5 · 0.75 · 2 (x̂0⁺ − x0)(−σ) / w⁺ + 1e-4 · 2 (v_θ − v_ref) = 3 + 2e-5 (w⁺ held)
    assert v_theta.grad.item() == pytest.approx(3.00002, abs=1e-9)
    # β = 0.1: v⁺ = −0.445 → x̂0⁺ = 0.978, term 0.022; v⁻ = −0.455 → x̂0⁻ = 0.982, term 0.018;
    # L = 5 (0.75 · 0.022 + 0.25 · 0.018) / 0.1 + 1e-6 = 1.050001
    loss, parts = nft_loss(x0, x_t, sigma, scalar(-0.4), v_old, v_ref, r, beta=0.1, adv_clip_max=5.0, kl_beta=1e-4)
    assert loss.item() == pytest.approx(1.050001, abs=1e-9)
    assert parts["positive"].item() == pytest.approx(0.022, abs=1e-12)
    assert parts["negative"].item() == pytest.approx(0.018, abs=1e-12)


def test_optimality_weight_and_old_policy_decay_by_hand():
    advantages = torch.tensor([-7.0, -5.0, 0.0, 2.5, 9.0])
    assert optimality_weight(advantages, 5.0).tolist() == [0.0, 0.0, 0.5, 0.75, 1.0]
    assert [old_policy_decay(k, 1) for k in (0, 1, 250, 500, 10_000)] == pytest.approx([0, 0.001, 0.25, 0.5, 0.5])
    assert [old_policy_decay(k, 2) for k in (0, 74, 75, 76, 10_000)] == pytest.approx([0, 0, 0, 0.0075, 0.999])
    assert old_policy_decay(1_000, 0) == 0.0


def test_dpm2_sampler_follows_the_reference_solver():
    backbone = build_tiny_sd3_backbone(t5=False).to(dtype=torch.float64)
    cond = backbone.encode_prompts(PROMPTS)
    noise = torch.randn((2, *backbone.latent_shape), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    steps = 4
    t = backbone.timesteps(steps)
    sigmas = torch.cat([backbone.sigmas(t), torch.zeros(1, dtype=torch.float64)])

    def lam(s):  # log-SNR of the flow, −∞ at σ = 1 and +∞ at σ = 0 (the repo's float64 arithmetic)
        return torch.log(1 - s) - torch.log(s)

    # the repo's solver.py `dpm_step` written out: DDIM (η = 0) at the first and last steps, else the 2M update
    x, x0_predictions = noise, []
    for i in range(steps):
        x0 = x - sigmas[i] * backbone.prediction(x, t[i], cond, "flow")
        x0_predictions.append(x0)
        s, s_next = sigmas[i], sigmas[i + 1]
        if i in (0, steps - 1):
            eps = (x - (1 - s) * x0) / s
            x = (1 - s_next) * x0 + s_next * eps
        else:
            h, h0 = lam(s_next) - lam(s), lam(s) - lam(sigmas[i - 1])
            d1 = (h / h0) * (x0 - x0_predictions[-2])  # 0 at i = 1, where the step before started at σ = 1
            x = (s_next / s) * x - (1 - s_next) * torch.expm1(-h) * (x0 + 0.5 * d1)
    torch.testing.assert_close(sample_flow(backbone, cond, noise, steps=steps, guidance=1.0, solver="dpm2"), x,
                               rtol=0, atol=1e-12)

    euler = noise
    for i in range(steps):
        euler = euler + (sigmas[i + 1] - sigmas[i]) * backbone.prediction(euler, t[i], cond, "flow")
    torch.testing.assert_close(sample_flow(backbone, cond, noise, steps=steps, guidance=1.0, solver="euler"), euler,
                               rtol=0, atol=1e-12)
    assert (euler - x).abs().max() > 1e-6  # the second-order step differs


def test_old_policy_is_swapped_in_and_follows_the_policy(tiny_sd3_backbone):
    policy = trainable(tiny_sd3_backbone)
    method = DiffusionNFT(DiffusionNFTConfig(steps=2, group_size=2, decay_type=1))
    rng = torch.Generator().manual_seed(0)
    batch = method.collect(policy, prompt_batch(tiny_sd3_backbone), rng)[0]
    weight = policy.unet.pos_embed.proj.weight
    assert method.collections == 1 and torch.equal(method.old[0], next(policy.unet.parameters()).detach())
    initial = weight.detach().clone()
    with torch.no_grad():
        weight.add_(0.1)  # an optimizer step
    # under autocast, the old forward then the policy's: each with its own weights (the cast cache is cleared)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = method.loss(batch, policy, tiny_sd3_backbone, torch.Generator().manual_seed(1))
    assert out.logs["old_deviation"] > 1e-6 and torch.equal(weight.detach(), initial + 0.1)
    method.collect(policy, prompt_batch(tiny_sd3_backbone), rng)  # the next collection: d = 0.001 after one step
    index = [name for name, p in policy.unet.named_parameters()].index("pos_embed.proj.weight")
    torch.testing.assert_close(method.old[index], 0.001 * initial + 0.999 * (initial + 0.1))
    state = method.state_dict()
    restored = DiffusionNFT(method.config)
    restored.load_state_dict(state)
    assert restored.collections == 2 and torch.equal(restored.old[index], method.old[index])


# ---------------------------------------------------------------------------------------------------- both
def prompt_data(backbone) -> EncodedPreferences:
    """Two training prompts (an online method samples for them; the latents are placeholders)."""
    return EncodedPreferences(torch.zeros(2, *backbone.latent_shape), ["w", "l"], torch.arange(2), list(PROMPTS),
                              backbone.encode_prompts(PROMPTS), torch.tensor([0]), torch.tensor([1]),
                              torch.tensor([True, False]))


@pytest.mark.parametrize("method, lora, per_prompt", [
    (FlowGRPO(FlowGRPOConfig(steps=3, group_size=2, guidance=2.0)), 0, 2 * (3 * 2 + 2 * (6 + 2))),
    (FlowGRPO(FlowGRPOConfig(steps=4, group_size=2, guidance=1.0, sde_window=2, noise_level=0.8, clip_range=1e-5,
                             kl_beta=0.0)), 0, 2 * (4 + 2 * 3)),  # Fast: the window's 2 steps trained
    (DiffusionNFT(DiffusionNFTConfig(steps=3, group_size=2)), 0, 2 * (3 + 2 * 5)),
    (DiffusionNFT(DiffusionNFTConfig(steps=3, group_size=2, solver="euler", kl_beta=0.0)), 4, 2 * (3 + 2 * 4)),
], ids=["flow-grpo", "flow-grpo-fast", "diffusionnft", "diffusionnft-lora"])
def test_one_trainer_step_on_the_sd3_backbone(tiny_sd3_backbone, method, lora, per_prompt):
    """Per prompt G (N c + T (3c + c [β > 0])) for Flow-GRPO, G (N c + T (4 + [kl_beta > 0])) for DiffusionNFT."""
    config = TrainConfig(lr=1e-3, batch_size=2, lora_rank=lora)
    before = {k: v.clone() for k, v in tiny_sd3_backbone.unet.state_dict().items()}
    result = Trainer(method, tiny_sd3_backbone, prompt_data(tiny_sd3_backbone), config, Budget.parse("1steps"), seed=0,
                     progress=False, reward=RedReward()).fit()
    assert result.steps == 1 and math.isfinite(result.history[0]["loss"])
    assert any(not torch.equal(before[k], v) for k, v in result.policy.unet.state_dict().items())
    assert method.max_nfe_per_item() == per_prompt
    assert result.usage.nfe == declared_step_cost(method, config, "nfe") == 2 * per_prompt
    assert result.usage.samples == 2 * 2  # two prompts, two samples each


def test_the_paper_defaults_cost_what_the_research_notes_count():
    # Flow-GRPO pickscore_sd3: per image 10 · 2 sampling + 9 · (3 · 2 + 2) training = 92; G = 24
    assert FlowGRPO().max_nfe_per_item() == 24 * 92
    # DiffusionNFT: per image 10 sampling (no CFG) + 9 · 5 training = 55
    assert DiffusionNFT().max_nfe_per_item() == 24 * 55


@pytest.mark.parametrize("method", [FlowGRPO(), DiffusionNFT()], ids=lambda m: m.name)
def test_a_variance_preserving_backbone_is_refused_in_one_line(tiny_backbone, method):
    with pytest.raises(ValueError) as err:
        method.collect(trainable(tiny_backbone), prompt_batch(tiny_backbone), torch.Generator())
    assert str(err.value) == (f"{method.name} trains flow-matching backbones (x_σ = (1 − σ) x0 + σ ε, e.g. SD3); "
                              "this pipeline predicts v on a vp schedule")
    assert type(method).schedules == ("flow",)


def test_a_run_of_a_flow_only_method_on_a_vp_suite_stops_before_any_work(tmp_path):
    """Planned on the toy (a v-prediction UNet): one line naming the method and the pipeline, exit code 2."""
    from typer.testing import CliRunner

    from bench.cli import app

    result = CliRunner().invoke(app, ["run", "--methods", "dpo,diffusionnft", "--run-dir", str(tmp_path / "run")])
    assert result.exit_code == 2 and "diffusionnft: diffusionnft trains flow-matching backbones" in result.output
    assert "this pipeline predicts v on a vp schedule" in result.output and not (tmp_path / "run").exists()
