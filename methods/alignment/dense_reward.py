"""Dense-reward preference optimisation (Yang, Chen & Zhou, ICML 2024, "A Dense Reward View on Aligning
Text-to-Image Diffusion with Preference", arXiv 2402.08265; Shentao-YANG/Dense_Reward_T2I @2343bed): DPO on the
policy's own trajectories, each step's log-ratio to the initial model discounted by γ^i (i = 0 the noisiest step),
which weighs the early steps that set an image's layout.

Rollouts (`preference_based_policy_learner.py` `collect_rollout`): R trajectories per prompt of the stochastic DDIM
chain (η = 1, guidance w, per-step log-probabilities as DDPO's, `methods.policy_gradient.rollout`), scored by the
reward; sorted by reward, the ranks ⌊linspace(record_start, R − 1, K)⌋ are kept (R = 12, K = 5: ranks 0, 2, 5, 8, 11).
Pairs (`calculate_pl_loss_and_backward`): `pairs_per_prompt` random combinations of 2 of the K kept trajectories,
ranked by reward (ties broken at random, as ListMLE's shuffle does). Logit of a trajectory (`get_pl_loss_logit`):

    z = τ · (1/S) Σ_s clip(log π_θ(x_{i_s+1} | x_{i_s}) − log π_init(x_{i_s+1} | x_{i_s}), −c, c),
    i_s ~ p(i) = γ^i / Σ_j γ^j  (i = 0 .. N−1, S draws with replacement; train_t2i.py `pl_weights_name="gamma"`)

with π_init the frozen base model (`reference`) and log π the per-element mean Gaussian log-density of a DDIM step
(`methods.policy_gradient.gaussian_log_prob`, as the repo's `step_forward_logprob`). Loss: ListMLE (`reward_loss.py`
`listMLELoss`) over the pair, which for two is

    L = −log σ(z_w − z_l)

averaged over pairs (the repo divides each combination's loss by their number). Clipping stops the gradient of a
step whose log-ratio has left [−c, c]: the loss keeps the policy near π_init step by step.
Defaults: the single-prompt configuration (`parse_args.py`): N = 50, w = 7.5 (`use_cfg_in_train=1`), γ = 0.9,
τ = 10, c = 1e-4, S = 3, R = K = 5 (`num_rollout_trajs` None → `num_traj_for_pref_comp`), one pair per prompt. The
multi-prompt configuration (`single_flag=0`) is τ = 12.5, c = 5e-4, S = 1, R = 12 (HPSv2 reward, LoRA rank 32).

Simplifications, all stated:
- No replay buffer: the repo fills a buffer of 1,000 prompts' kept trajectories and re-collects every p_step = 2,500
  optimizer steps, sampling pairs from the whole buffer; here each collection (the run's `batch_size` prompts) is
  trained on for `updates_per_collection` optimizer steps (default 1: on-policy), each with fresh pairs and steps.
- Step indices are drawn per trajectory; the repo draws one set of S indices per slot of the pair, shared by the
  prompts of its micro-batch.
- Pairs only (`pl_loss_num_traj = 2`, the repo's default): no longer Plackett-Luce lists.
- Not implemented (off by default in the repo): the extra log-ratio to the sampling policy (`reg_to_pi_old`) and the
  unclipped warm-up (`no_reg_warmup_ratio`).
- The learning rate, weight decay, gradient clipping and the trained weights (the repo trains LoRA rank 4, lr 3e-5,
  wd 2e-3, clip 1.0, total batch 4) are the run's `--train-arg`.
Cost per prompt (c = 2 with guidance, 1 where the backbone embeds the guidance scale: `guided_branches`): rollouts
R·N·c; per pair 2 trajectories × S steps × (a graded policy forward 3c + a reference forward c) = 8Sc.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bench.core.backbone import Backbone
from bench.core.search_space import FloatRange
from methods.alignment.base import GradedForward, LossOutput, OnlineMethod, PromptBatch
from methods.checks import require
from methods.policy_gradient import Rollout, RolloutConfig, rollout, step_log_prob
from methods.shards import sample_categorical, sample_noise, sample_permutations, stacked


@dataclass
class DenseRewardConfig(RolloutConfig):
    guidance: float = field(default=7.5, metadata={"help": "classifier-free guidance in rollouts and in training"})
    rollouts_per_prompt: int = field(default=5, metadata={"help": "trajectories R sampled per prompt"})
    kept_per_prompt: int = field(default=5, metadata={"help": "trajectories K kept per prompt, by reward rank"})
    record_start: int = field(default=0, metadata={"help": "lowest reward rank kept (ranks linspace(start, R−1, K))"})
    pairs_per_prompt: int = field(default=1, metadata={"help": "pairs of kept trajectories trained per prompt"})
    logit_steps: int = field(default=3, metadata={"help": "step indices S drawn per trajectory for its logit"})
    gamma: float = field(default=0.9, metadata={"help": "discount γ: step i is drawn with probability ∝ γ^i"})
    tau: float = field(default=10.0, metadata={"help": "temperature τ of the logit (the KL weight)",
                                               "search": FloatRange(1.0, 100.0, log=True)})
    log_ratio_clip: float = field(default=1e-4, metadata={"help": "each step's log-ratio is clipped to ±c",
                                                          "search": FloatRange(1e-5, 1e-2, log=True)})
    updates_per_collection: int = field(default=1, metadata={"help": "optimizer steps per collection"})

    def __post_init__(self):
        super().__post_init__()
        require(self.kept_per_prompt >= 2, "kept_per_prompt", ">= 2", self.kept_per_prompt)
        free = self.rollouts_per_prompt - self.kept_per_prompt  # ranks left out
        require(0 <= self.record_start <= free, "record_start", f"in [0, R − K = {free}]", self.record_start)
        pairs = self.kept_per_prompt * (self.kept_per_prompt - 1) // 2
        require(1 <= self.pairs_per_prompt <= pairs, "pairs_per_prompt", f"in [1, K(K−1)/2 = {pairs}]",
                self.pairs_per_prompt)
        require(self.logit_steps >= 1, "logit_steps", ">= 1", self.logit_steps)
        require(0 < self.gamma <= 1, "gamma", "in (0, 1]", self.gamma)
        require(self.tau > 0, "tau", "> 0", self.tau)
        require(self.log_ratio_clip > 0, "log_ratio_clip", "> 0", self.log_ratio_clip)
        require(self.updates_per_collection >= 1, "updates_per_collection", ">= 1", self.updates_per_collection)


def step_weights(gamma: float, steps: int) -> torch.Tensor:
    """p(i) = γ^i / Σ_j γ^j over the steps i = 0 .. N−1 of a trajectory (0 the noisiest), float64 (N,)."""
    weights = torch.full((steps,), gamma, dtype=torch.float64).pow(torch.arange(steps, dtype=torch.float64))
    return weights / weights.sum()


def dense_reward_loss(winner_log_ratios: torch.Tensor, loser_log_ratios: torch.Tensor, *, tau: float,
                      clip: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, z_w, z_l) from per-step log-ratios log π_θ − log π_init at the drawn steps, (P, S) each:
    z = τ mean_s clip(Δ_s, ±c) (P,), loss = mean_pairs −log σ(z_w − z_l)."""
    z_winner = tau * winner_log_ratios.clamp(-clip, clip).mean(dim=1)
    z_loser = tau * loser_log_ratios.clamp(-clip, clip).mean(dim=1)
    return -F.logsigmoid(z_winner - z_loser).mean(), z_winner, z_loser


@dataclass
class TrajectoryPairs:
    """One optimizer step's pairs: the kept trajectories of a collection and which of them are compared."""

    rollout: Rollout  # (B·K, ...) kept trajectories, prompt-major
    winners: torch.Tensor  # (P,) rows of `rollout`
    losers: torch.Tensor  # (P,)
    steps: torch.Tensor  # (2P, S) step indices of [winners; losers]
    rewards: torch.Tensor  # (B·K,) of the kept trajectories (logged)

    def __len__(self) -> int:
        return len(self.winners)


class DenseReward(OnlineMethod, name="dense-reward", needs_reference=True, config=DenseRewardConfig,
                  schedules=("vp",)):
    """Temporally discounted DPO on the policy's own trajectories, ranked by the reward."""

    def samples_per_prompt(self) -> int:
        return self.config.rollouts_per_prompt

    def graded_forward(self, embedded_guidance: bool = False) -> GradedForward:
        """[winners; losers] of every kept pair, guided, at each of the S = logit_steps drawn steps, alive together
        (z sums the S log-ratios before the backward)."""
        return GradedForward(2 * self.config.pairs_per_prompt * self.guided_branches(embedded_guidance),
                             graphs=self.config.logit_steps)

    def max_nfe_per_item(self, embedded_guidance: bool = False) -> int:
        cfg, c = self.config, self.guided_branches(embedded_guidance)
        return cfg.rollouts_per_prompt * cfg.steps * c + cfg.pairs_per_prompt * 2 * cfg.logit_steps * (3 * c + c)

    @torch.no_grad()
    def collect(self, policy: Backbone, batch: PromptBatch, rng: torch.Generator) -> list[TrajectoryPairs]:
        cfg = self.config
        r, k = cfg.rollouts_per_prompt, cfg.kept_per_prompt
        cond = batch.cond.map(lambda x: x.repeat_interleave(r, dim=0))
        like = torch.empty(len(batch) * r, *policy.latent_shape, device=policy.device, dtype=policy.latent_dtype)
        trajectories = rollout(policy, cond, sample_noise(like, rng), steps=cfg.steps, eta=cfg.eta,
                               guidance=cfg.guidance, rng=rng)
        prompts = [p for p in batch.prompts for _ in range(r)]
        rewards = batch.reward(policy.decode(trajectories.samples), prompts).float().cpu().view(len(batch), r)
        ranks = torch.linspace(cfg.record_start, r - 1, k).long()  # the repo's `rollout_store_idx`
        kept = []
        shuffles = sample_permutations(len(batch), r, rng)  # (B, R): drawn for the global batch (`methods.shards`)
        for i, shuffled in enumerate(shuffles):  # ascending reward, ties in random order
            order = shuffled[rewards[i, shuffled].sort(stable=True).indices]
            kept.append(i * r + order[ranks])
        kept = torch.cat(kept)  # (B·K,) rows of the rollouts, each prompt's K by ascending reward
        stored = Rollout(trajectories.latents[kept], trajectories.log_probs[kept], trajectories.timesteps,
                         trajectories.cond[kept])
        combinations = torch.combinations(torch.arange(k), 2)  # (K(K−1)/2, 2): (lower, higher) reward rank
        weights = step_weights(cfg.gamma, cfg.steps)
        micro_batches = []
        for _ in range(cfg.updates_per_collection):
            picks = sample_permutations(len(batch), len(combinations), rng)[:, :cfg.pairs_per_prompt]  # (B, pairs)
            pairs = torch.cat([i * k + combinations[pick] for i, pick in enumerate(picks)])  # (P, 2) rows of `stored`
            with stacked(2):  # [winners; losers]: each block's rows get their global pairs' draws
                steps = sample_categorical(weights, 2 * len(pairs) * cfg.logit_steps, rng).view(2 * len(pairs), -1)
            micro_batches.append(TrajectoryPairs(stored, pairs[:, 1], pairs[:, 0], steps, rewards.flatten()[kept]))
        return micro_batches

    def loss(self, batch: TrajectoryPairs, policy: Backbone, reference: Backbone | None,
             rng: torch.Generator) -> LossOutput:
        cfg = self.config
        rows = torch.cat([batch.winners, batch.losers])  # (2P,)
        compared = Rollout(batch.rollout.latents[rows], batch.rollout.log_probs[rows], batch.rollout.timesteps,
                           batch.rollout.cond[rows])
        log_ratios = []
        for s in range(cfg.logit_steps):
            log_prob, _, _ = step_log_prob(policy, compared, batch.steps[:, s], eta=cfg.eta, guidance=cfg.guidance)
            with torch.no_grad():
                ref_log_prob, _, _ = step_log_prob(reference, compared, batch.steps[:, s], eta=cfg.eta,
                                                   guidance=cfg.guidance)
            log_ratios.append(log_prob - ref_log_prob)
        winner_log_ratios, loser_log_ratios = torch.stack(log_ratios, dim=1).chunk(2)  # (P, S) each
        loss, z_winner, z_loser = dense_reward_loss(winner_log_ratios, loser_log_ratios, tau=cfg.tau,
                                                    clip=cfg.log_ratio_clip)
        all_ratios = torch.cat([winner_log_ratios, loser_log_ratios]).detach()
        return LossOutput(loss, {
            "loss": loss.item(),
            "implicit_acc": (z_winner > z_loser).float().mean().item(),
            "clip_fraction": (all_ratios.abs() > cfg.log_ratio_clip).float().mean().item(),
            "reward": float(batch.rewards.mean()),
        })
