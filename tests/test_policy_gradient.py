"""The policy-gradient pieces online methods share (`methods.policy_gradient`), against values computed by hand in
/work/shared/research/online_and_flow.md §1 and §3 from DDPO's and DanceGRPO's code, and DDPO's per-prompt
statistics."""

import math

import pytest
import torch
from diffusers import DDIMScheduler

from methods.alignment.ddpo import DDPO, DDPOConfig
from methods.policy_gradient import (
    clipped_surrogate,
    ddim_step_distribution,
    gaussian_kl,
    gaussian_log_prob,
    group_advantages,
    previous_timesteps,
)


def sd15_alphas() -> torch.Tensor:
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                              set_alpha_to_one=False, clip_sample=False)
    return scheduler.alphas_cumprod.double()


def test_previous_timesteps_step_back_t_over_n_and_clamp_at_zero():
    timesteps = torch.arange(981, 0, -20)  # SD's 50 DDIM timesteps
    prev = previous_timesteps(timesteps, 1000)
    assert prev[:2].tolist() == [961, 941] and prev[-1] == 0  # the last step ends at ᾱ_0, not ᾱ = 1


def test_ddim_eta_1_step_log_prob_equals_the_hand_computed_value():
    # SD 1.5, N = 50, t = 981 -> 961: ᾱ = 0.0057755, ᾱ' = 0.0072817, s = 0.454463; x_t = 1, ε̂ = 0.5
    # -> μ = 1.006384; x' = μ + 0.3 s -> log p = -0.3²/2 - ln s - ln √(2π) = -0.175300
    abar = sd15_alphas()
    x = torch.ones(1, 4, 2, 2, dtype=torch.float64)
    def levels(t: int) -> tuple[torch.Tensor, torch.Tensor]:  # (a, s) = (√ᾱ, √(1 − ᾱ))
        return abar[t:t + 1].sqrt(), (1 - abar[t:t + 1]).sqrt()

    mean, std = ddim_step_distribution(x, 0.5 * torch.ones_like(x), levels(981), levels(961), eta=1.0)
    assert std.item() == pytest.approx(0.454463, abs=1e-6)
    assert mean.flatten()[0].item() == pytest.approx(1.006384, abs=1e-6)
    assert gaussian_log_prob(mean + 0.3 * std, mean, std).item() == pytest.approx(-0.175300, abs=1e-6)
    assert -0.045 - math.log(0.454463) - 0.5 * math.log(2 * math.pi) == pytest.approx(-0.175300, abs=1e-6)


def test_log_prob_has_no_gradient_through_the_sample_only_through_the_mean():
    mean = torch.zeros(2, 3, requires_grad=True)
    x = torch.ones(2, 3, requires_grad=True)
    gaussian_log_prob(x, mean, torch.ones(2, 1)).sum().backward()
    assert x.grad is None and torch.allclose(mean.grad, torch.full((2, 3), 1 / 3))  # d/dμ mean(-(x-μ)²/2) = (x-μ)/3


def test_group_advantages_population_and_sample_std():
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0])
    groups = torch.zeros(4, dtype=torch.long)
    ddpo = group_advantages(rewards, groups, delta=1e-6, unbiased=False)
    grpo = group_advantages(rewards, groups, delta=1e-8, unbiased=True)
    assert ddpo.tolist() == pytest.approx([-1.069044, -0.534522, 0.0, 1.603567], abs=1e-6)
    assert grpo.tolist() == pytest.approx([-0.925820, -0.462910, 0.0, 1.388730], abs=1e-6)


def test_group_advantages_of_equal_rewards_or_a_group_of_one_are_zero_not_nan():
    out = group_advantages(torch.tensor([2.0, 2.0, 2.0, 5.0]), torch.tensor([0, 0, 0, 1]), delta=1e-8, unbiased=True)
    assert out.tolist() == [0.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("ratio, advantage, expected", [
    (1.0002, 1.6, -1.600160),  # outside the clip range: -A (1 + ε)
    (1.00005, 1.6, -1.600080),  # inside: -A ρ
    (0.9998, -1.6, 1.599840),  # ρ < 1 - ε with A < 0: max(-Aρ, -A(1-ε)) = -A(1-ε)
])
def test_clipped_surrogate(ratio, advantage, expected):
    log_prob = torch.tensor([math.log(ratio)], dtype=torch.float64, requires_grad=True)
    loss, logs = clipped_surrogate(log_prob, torch.zeros(1, dtype=torch.float64),
                                   torch.tensor([advantage], dtype=torch.float64), 1e-4)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    clipped = abs(ratio - 1) > 1e-4
    assert logs["clip_fraction"] == float(clipped)
    assert log_prob.grad.item() == (0.0 if clipped else pytest.approx(-advantage * ratio))


def test_gaussian_kl_of_one_step():
    # Δμ = 0.01, s = 0.5: KL = 0.01² / (2·0.25) = 2e-4
    kl = gaussian_kl(torch.full((1, 4), 0.01), torch.zeros(1, 4), torch.full((1, 1), 0.5))
    assert kl.item() == pytest.approx(2e-4, rel=1e-6)


def test_ddpo_uses_the_collection_until_a_prompt_has_min_count_rewards_then_its_buffer():
    method = DDPO(DDPOConfig(buffer_size=3, min_count=2))

    def batch(ids):
        return torch.tensor(ids)

    first = method.advantages(torch.tensor([1.0, 3.0]), batch([0, 1]))  # one reward each: the collection's stats
    assert first.tolist() == pytest.approx([-1.0, 1.0], abs=1e-5)
    second = method.advantages(torch.tensor([5.0, 3.0]), batch([0, 1]))  # buffers {1, 5} and {3, 3}
    assert second.tolist() == pytest.approx([1.0, 0.0], abs=1e-5)
    restored = DDPO(DDPOConfig(buffer_size=3, min_count=2))
    restored.load_state_dict(method.state_dict())
    assert restored.advantages(torch.tensor([9.0]), batch([0])).item() == pytest.approx(
        method.advantages(torch.tensor([9.0]), batch([0])).item())
