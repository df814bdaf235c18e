"""Online methods (data kind `prompts`): reward backpropagation (`draft`: DRaFT-K and ReFL) against finite differences
on a tiny float64 model, the dense-reward loss against values computed by hand (/work/shared/research/
online_and_flow.md §6), the error for a reward without gradients, and every online method's declared worst-case NFE
against the Backbone's counter over one optimizer step."""

import copy
import math

import pytest
import torch

from methods.alignment.base import PromptBatch
from methods.alignment.ddpo import DDPO, DDPOConfig
from methods.alignment.dense_reward import DenseReward, DenseRewardConfig, dense_reward_loss, step_weights
from methods.alignment.draft import Draft, DraftConfig, ddim_steps
from methods.alignment.grpo import GRPO, GRPOConfig

PROMPTS = ["a red circle", "a blue square"]


class RedReward:
    """A differentiable reward: the mean red value of each image (B,)."""

    name = "red"
    differentiable = True

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return images[:, 0].mean(dim=(1, 2))


def trainable(backbone):
    """The policy as the trainer builds it: a trainable copy of the UNet over the frozen rest."""
    return backbone.with_unet(copy.deepcopy(backbone.unet).requires_grad_(True))


def prompt_batch(backbone, reward=None) -> PromptBatch:
    return PromptBatch(backbone.encode_prompts(PROMPTS), list(PROMPTS), torch.arange(len(PROMPTS)),
                       reward if reward is not None else RedReward())


# ---------------------------------------------------------------------------------------------------- dense reward
def test_dense_reward_loss_by_hand_and_no_gradient_through_a_clipped_step():
    # τ = 10, c = 1e-4: z_w = 10 · mean(2e-5, 4e-5) = 3e-4; z_l = 10 · mean(−1e-4, clip(5e-3) = 1e-4) = 0
    # L = −log σ(3e-4) = log 2 − 1.5e-4 + O(1e-8) = 0.692997
    winner = torch.tensor([[2e-5, 4e-5]], dtype=torch.float64, requires_grad=True)
    loser = torch.tensor([[-1e-4, 5e-3]], dtype=torch.float64, requires_grad=True)
    loss, z_winner, z_loser = dense_reward_loss(winner, loser, tau=10.0, clip=1e-4)
    assert loss.item() == pytest.approx(0.692997, abs=1e-6)
    assert z_winner.item() == pytest.approx(3e-4, rel=1e-12) and z_loser.item() == pytest.approx(0.0, abs=1e-15)
    loss.backward()
    assert loser.grad[0, 1].item() == 0.0  # 5e-3 lies outside ±c
    dz = -torch.sigmoid(torch.tensor(-3e-4, dtype=torch.float64)).item() * 10 / 2  # dL/dΔ of an unclipped step
    assert winner.grad[0].tolist() == pytest.approx([dz, dz], rel=1e-12)
    # loser[0, 0] = −c sits on the bound, where torch's clamp (the repo's too) passes no gradient: not asserted


def test_step_weights_discount_from_the_noisiest_step():
    weights = step_weights(0.9, 50)
    assert weights[0].item() == pytest.approx(0.1 / (1 - 0.9**50), abs=1e-12)
    assert weights[0].item() == pytest.approx(0.100518, abs=1e-6)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-15) and (weights[1:] < weights[:-1]).all()


class RecordingReward(RedReward):
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        self.last = super().__call__(images, prompts).float().cpu()
        return self.last


def test_dense_reward_keeps_ranks_by_reward_and_pairs_the_better_as_winner(tiny_backbone):
    # R = 4, K = 3, record_start 1: ranks ⌊linspace(1, 3, 3)⌋ = 1, 2, 3 (the best three); all 3 pairs of each prompt
    config = DenseRewardConfig(steps=2, rollouts_per_prompt=4, kept_per_prompt=3, record_start=1, pairs_per_prompt=3,
                               logit_steps=2)
    method, policy, reward = DenseReward(config), trainable(tiny_backbone), RecordingReward()
    (pairs,) = method.collect(policy, prompt_batch(tiny_backbone, reward), torch.Generator().manual_seed(0))
    assert len(pairs) == 6 and pairs.steps.shape == (12, 2) and pairs.rollout.latents.shape[0] == 6
    for prompt, all_rewards in enumerate(reward.last.view(2, 4)):
        assert pairs.rewards[3 * prompt:3 * prompt + 3].tolist() == all_rewards.sort().values[1:].tolist()
    assert (pairs.rewards[pairs.winners] >= pairs.rewards[pairs.losers]).all()
    assert (pairs.winners // 3 == pairs.losers // 3).all()  # pairs within a prompt
    out = method.loss(pairs, policy, tiny_backbone, torch.Generator())
    assert out.loss.item() == pytest.approx(math.log(2), abs=1e-7)  # π_θ = π_init: every log-ratio is 0
    out.loss.backward()
    assert policy.unet.conv_in.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------- draft / refl
@pytest.fixture()
def float64_backbone(tiny_backbone):
    return tiny_backbone.to(dtype=torch.float64)


def param_gradient_and_central_difference(policy, loss_fn, h=1e-5):
    """(∂L/∂w from backward, (L(w + h) − L(w − h)) / 2h) for one UNet weight w."""
    weight = policy.unet.conv_in.weight
    index = (1, 2, 1, 1)
    policy.unet.zero_grad(set_to_none=True)
    loss_fn().backward()
    gradient = weight.grad[index].item()
    values = []
    for shift in (h, -h):
        with torch.no_grad():
            weight[index] += shift
        values.append(loss_fn().item())
        with torch.no_grad():
            weight[index] -= shift
    return gradient, (values[0] - values[1]) / (2 * h)


@pytest.mark.parametrize("config", [
    DraftConfig(steps=2, k=2, guidance=2.0),  # full DRaFT: the whole chain differentiated
    DraftConfig(mode="refl", steps=3, refl_min_step=0, refl_max_step=0, eta=0.0, guidance=2.0),  # x̂0 of t_0
], ids=["draft-full", "refl"])
def test_reward_gradient_matches_finite_differences_end_to_end(float64_backbone, config):
    policy = trainable(float64_backbone)
    method = Draft(config)
    (micro_batch,) = method.collect(policy, prompt_batch(policy), torch.Generator().manual_seed(0))
    gradient, difference = param_gradient_and_central_difference(
        policy, lambda: method.loss(micro_batch, policy, None, torch.Generator().manual_seed(1)).loss)
    assert abs(gradient) > 1e-8  # refl scales its loss by 1e-3: about 2e-6 here
    assert gradient == pytest.approx(difference, rel=1e-6)


def test_draft_1_gradient_is_the_derivative_of_the_last_step_with_the_earlier_ones_frozen(float64_backbone):
    policy = trainable(float64_backbone)
    method = Draft(DraftConfig(steps=3, k=1, guidance=2.0))
    (micro_batch,) = method.collect(policy, prompt_batch(policy), torch.Generator().manual_seed(0))
    assert micro_batch.graded_from == 2
    timesteps = policy.timesteps(3)
    next_levels = torch.cat([timesteps[1:], torch.tensor([-1])])
    rng = torch.Generator()
    with torch.no_grad():  # x at the last step's level, from the unperturbed weights
        x_last = ddim_steps(policy, micro_batch.noise, micro_batch.cond, timesteps[:2], next_levels[:2], eta=0.0,
                            guidance=2.0, rng=rng)

    def last_step_loss():
        x0 = ddim_steps(policy, x_last, micro_batch.cond, timesteps[2:], next_levels[2:], eta=0.0, guidance=2.0, rng=rng)
        return -RedReward()(policy.decode(x0, grad=True), PROMPTS).mean()

    policy.unet.zero_grad(set_to_none=True)
    out = method.loss(micro_batch, policy, None, rng)
    assert out.loss.item() == pytest.approx(last_step_loss().item(), rel=1e-12)
    out.loss.backward()
    from_method = policy.unet.conv_in.weight.grad[1, 2, 1, 1].item()
    gradient, difference = param_gradient_and_central_difference(policy, last_step_loss)
    assert from_method == pytest.approx(gradient, rel=1e-10)
    assert from_method == pytest.approx(difference, rel=1e-6)


def test_refl_loss_is_the_hinge_of_the_reward_scaled(tiny_backbone):
    policy = trainable(tiny_backbone)
    method = Draft(DraftConfig(mode="refl", steps=4, refl_min_step=1, refl_max_step=3))
    (micro_batch,) = method.collect(policy, prompt_batch(policy), torch.Generator().manual_seed(0))
    assert 1 <= micro_batch.graded_from <= 3
    out = method.loss(micro_batch, policy, None, torch.Generator().manual_seed(1))
    assert out.loss.item() == pytest.approx((2.0 - out.logs["reward"]) * 1e-3, rel=1e-5)  # red ∈ [0, 1] < λ = 2


def test_a_reward_without_gradients_is_refused_in_one_line_naming_the_scorer(tiny_backbone, monkeypatch):
    from bench.harness.reward import ScorerReward
    from metrics.toy_clip import ToyClipScorer

    monkeypatch.setattr(ToyClipScorer, "differentiable", False)  # every scorer available offline has gradients
    method = Draft()
    reward = ScorerReward("oracle,toy-clip:0.01")
    assert not reward.differentiable and reward.non_differentiable() == ["toy-clip"]
    with pytest.raises(ValueError) as err:
        method.collect(tiny_backbone, prompt_batch(tiny_backbone, reward), torch.Generator())
    assert str(err.value) == ("draft needs a differentiable reward; toy-clip is not "
                              "(use a differentiable scorer such as toy-pickscore)")

    class Opaque:
        name = "opaque-reward"
        differentiable = False

    with pytest.raises(ValueError, match=r"^draft needs a differentiable reward; opaque-reward is not \(") as err:
        method.collect(tiny_backbone, prompt_batch(tiny_backbone, Opaque()), torch.Generator())
    assert "\n" not in str(err.value)


def test_draft_config_resolves_the_mode_defaults_and_checks_the_steps():
    assert Draft().describe()["steps"] == 50 and Draft().describe()["guidance"] == 7.5
    refl = Draft(DraftConfig(mode="refl")).describe()
    assert (refl["steps"], refl["guidance"], refl["eta"]) == (40, 1.0, 1.0)
    with pytest.raises(ValueError, match="refl_max_step must be < steps = 30"):
        DraftConfig(mode="refl", steps=30)
    with pytest.raises(ValueError, match="k must be in"):
        DraftConfig(steps=4, k=5)


# ---------------------------------------------------------------------------------------------------- NFE
@pytest.mark.parametrize("method", [
    Draft(DraftConfig(steps=3, k=2, guidance=2.0)),
    Draft(DraftConfig(mode="refl", steps=3, refl_min_step=2, refl_max_step=2, guidance=2.0)),
    Draft(DraftConfig(mode="refl", steps=3, refl_min_step=1, refl_max_step=1)),  # no guidance, η = 1
    DDPO(DDPOConfig(steps=3, guidance=2.0)),
    DDPO(DDPOConfig(steps=3, guidance=2.0, timestep_fraction=0.5)),
    GRPO(GRPOConfig(steps=3, guidance=2.0, group_size=2)),
    GRPO(GRPOConfig(steps=3, guidance=2.0, group_size=2, kl_beta=0.1)),
    DenseReward(DenseRewardConfig(steps=3, guidance=2.0, rollouts_per_prompt=3, kept_per_prompt=2, logit_steps=2)),
    DenseReward(DenseRewardConfig(steps=3, guidance=1.0, rollouts_per_prompt=3, kept_per_prompt=3, pairs_per_prompt=2)),
], ids=["draft", "refl", "refl-no-cfg", "ddpo", "ddpo-half", "grpo", "grpo-kl", "dense-reward", "dense-reward-no-cfg"])
def test_one_optimizer_step_costs_the_declared_nfe(tiny_backbone, method):
    policy = trainable(tiny_backbone)
    reference = tiny_backbone if method.needs_reference else None
    batch = prompt_batch(tiny_backbone)
    rng = torch.Generator().manual_seed(0)
    before = tiny_backbone.nfe.total
    micro_batches = method.collect(policy, batch, rng)
    assert len(micro_batches) >= method.accumulation()
    for micro_batch in micro_batches[:method.accumulation()]:
        loss = method.loss(micro_batch, policy, reference, rng).loss
        assert math.isfinite(loss.item())
        loss.backward()
    assert tiny_backbone.nfe.total - before == method.max_nfe_per_item() * len(batch)


def test_the_oracle_reward_has_gradients_to_the_pixels_and_scores_as_when_evaluating():
    from bench.harness.reward import ScorerReward
    from bench.toy.world import held_out_combos, render_dataset

    images, prompts = render_dataset(held_out_combos(3), 1, seed=0)
    reward = ScorerReward("oracle")
    assert reward.differentiable
    with torch.no_grad():
        scored = reward(images, prompts)  # as evaluation scores it: float32, no graph
    pixels = images.clone().requires_grad_(True)
    value = reward(pixels, prompts)
    value.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    torch.testing.assert_close(value.detach(), scored, rtol=1e-6, atol=1e-6)
