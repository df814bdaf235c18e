"""Rollouts of the stochastic DDIM chain with per-step log-probabilities, and the policy-gradient pieces that
the online methods share (DDPO, GRPO, dense reward): `PolicyGradient` is their common collect → PPO loop.

One DDIM step with noise η (Song et al. 2021, eq. 12), as DDPO computes its log-probability
(Black et al. 2023, kvablack/ddpo-pytorch @1958463 `ddim_step_with_logprob`):

    t' = max(t − T/N, 0)                          (clamped: the last step ends at ᾱ_0, so its variance is > 0)
    x̂0 = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t
    σ² = (1−ᾱ_t') / (1−ᾱ_t) · (1 − ᾱ_t/ᾱ_t'),     s = η σ
    μ  = √ᾱ_t' x̂0 + √(1−ᾱ_t'−s²) ε̂,              x_t' = μ + s z
    log π(x_t' | x_t, c) = mean over (C, H, W) of [ −(x_t'−μ)²/(2s²) − ln s − ln √(2π) ]

ε̂ is the guided prediction ε_u + w (ε_c − ε_u) (the Backbone converts any prediction type to ε), in the
rollout and in the recomputation with gradients alike. The log-density is the per-element mean, not the sum,
as in every reference implementation; a ratio is exp of a difference of means.

Advantages and the clipped surrogate (PPO, Schulman et al. 2017, as DDPO and DanceGRPO use it):

    A_i = (r_i − mean_g r) / (std_g r + δ)         over the samples g of one prompt
    L   = mean max(−A ρ, −A clip(ρ, 1 − ε, 1 + ε)),  ρ = exp(log π_θ − log π_old)

The last section holds the same pieces for rectified-flow backbones: Flow-GRPO's SDE step with its log-probability,
its rollouts (optionally SDE on a window of steps only, Flow-GRPO-Fast) and its per-prompt advantages.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass, field

import torch

from bench.core.backbone import Backbone, Conditioning
from bench.core.search_space import FloatRange
from methods.alignment.base import LossOutput, MethodConfig, OnlineMethod, PromptBatch
from methods.checks import require
from methods.shards import current, gather_rows, sample_noise, sample_permutations

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def previous_timesteps(timesteps: torch.Tensor, num_train_timesteps: int) -> torch.Tensor:
    """t' = max(t − T/N, 0) for the N sampling timesteps (N,) of a T-step schedule (DDPO's `prev_timestep`)."""
    return (timesteps - num_train_timesteps // len(timesteps)).clamp(min=0)


def ddim_step_distribution(x_t: torch.Tensor, eps: torch.Tensor, levels_t: tuple[torch.Tensor, torch.Tensor],
                           levels_prev: tuple[torch.Tensor, torch.Tensor], eta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The Gaussian of one DDIM step: mean μ (B, C, h, w) and std s (B, 1, 1, 1) from x_t, ε̂ and the levels
    (a, s) (B,) at t and t' (`Backbone.noise_levels`). With a² = ᾱ, s² = 1 − ᾱ this is the module docstring's step;
    for any x_t = a_t x_0 + s_t ε the variance is the posterior's, s_t'²/s_t² · (s_t² − (a_t/a_t')² s_t'²)
    (`methods.inversion.base.ddpm_variance`), and μ = a_t' x̂0 + √(s_t'² − η²σ²) ε̂."""
    shape = (-1, *([1] * (x_t.ndim - 1)))
    (a_t, s_t), (a_prev, s_prev) = ((c.view(shape).to(x_t) for c in levels) for levels in (levels_t, levels_prev))
    x0 = (x_t - s_t * eps) / a_t
    variance = s_prev**2 / s_t**2 * (s_t**2 - (a_t / a_prev) ** 2 * s_prev**2)
    std = eta * variance.sqrt()
    mean = a_prev * x0 + (s_prev**2 - std**2).clamp(min=0).sqrt() * eps
    return mean, std


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Per-sample mean over elements of log N(x; μ, s²), shape (B,)."""
    log_density = -((x.detach() - mean) ** 2) / (2 * std**2) - std.log() - LOG_SQRT_2PI
    return log_density.mean(dim=tuple(range(1, x.ndim)))


@dataclass
class Rollout:
    """Trajectories of the stochastic DDIM chain: x_T ... x_0 and each step's log-probability under the sampler."""

    latents: torch.Tensor  # (B, N + 1, C, h, w): latents[:, 0] the initial noise, latents[:, N] the sample x̂_0
    log_probs: torch.Tensor  # (B, N) log π_old(x_{k+1} | x_k) of the policy that sampled
    timesteps: torch.Tensor  # (N,) descending sampling timesteps; step k goes timesteps[k] -> previous_timesteps[k]
    cond: Conditioning  # (B,)

    @property
    def samples(self) -> torch.Tensor:
        return self.latents[:, -1]


def policy_step(backbone: Backbone, x_t: torch.Tensor, t: torch.Tensor, t_prev: torch.Tensor, cond: Conditioning,
                *, eta: float, guidance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(μ, s) of π(· | x_t, c) at per-sample levels t → t' (B,): one guided ε̂ (B NFE, 2B with guidance)."""
    eps = backbone.eps(x_t, t, cond, guidance)
    return ddim_step_distribution(x_t, eps, backbone.noise_levels(t.cpu()), backbone.noise_levels(t_prev.cpu()), eta)


@torch.no_grad()
def rollout(backbone: Backbone, cond: Conditioning, noise: torch.Tensor, *, steps: int, eta: float, guidance: float,
            rng: torch.Generator) -> Rollout:
    """Sample N = `steps` stochastic DDIM steps from `noise` (B, C, h, w), recording every latent and log-probability;
    the step noise z is drawn from `rng` (CPU, so the same on every device)."""
    timesteps = backbone.timesteps(steps)
    previous = previous_timesteps(timesteps, backbone.num_train_timesteps)
    x, batch = noise, noise.shape[0]
    latents, log_probs = [x], []
    for t, t_prev in zip(timesteps.tolist(), previous.tolist()):
        level = torch.full((batch,), t, dtype=torch.float64)  # levels are float64 (`Backbone.noise_levels`)
        mean, std = policy_step(backbone, x, level, torch.full((batch,), t_prev, dtype=torch.float64), cond, eta=eta,
                                guidance=guidance)
        x = mean + std * sample_noise(x, rng)  # drawn for the global batch (`methods.shards`)
        latents.append(x)
        log_probs.append(gaussian_log_prob(x, mean, std))
    return Rollout(torch.stack(latents, dim=1), torch.stack(log_probs, dim=1), timesteps, cond)


def step_log_prob(backbone: Backbone, rollout: Rollout, step: torch.Tensor, *, eta: float,
                  guidance: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log π(x_{k+1} | x_k) under `backbone` (with gradients) at step k = step[i] of each trajectory i (B,), with the
    step's (μ, s): one guided ε̂ of the B latents."""
    rows = torch.arange(len(step))
    t = rollout.timesteps[step]
    t_prev = previous_timesteps(rollout.timesteps, backbone.num_train_timesteps)[step]
    x_t, x_next = rollout.latents[rows, step], rollout.latents[rows, step + 1]
    mean, std = policy_step(backbone, x_t, t, t_prev, rollout.cond, eta=eta, guidance=guidance)
    return gaussian_log_prob(x_next, mean, std), mean, std


def group_advantages(rewards: torch.Tensor, groups: torch.Tensor, *, delta: float, unbiased: bool) -> torch.Tensor:
    """(r − mean_g r) / (std_g r + δ) per sample (B,), g the sample's group (B,) (its prompt). `unbiased` chooses
    the sample std (DanceGRPO, ddof 1) over the population std (DDPO, Flow-GRPO). A group whose rewards are all equal,
    or a group of one, gets advantage 0 (never NaN)."""
    advantages = torch.zeros_like(rewards, dtype=torch.float64)
    for g in groups.unique():
        members = groups == g
        r = rewards[members].double()
        std = r.std(unbiased=unbiased) if len(r) > 1 else r.new_zeros(())
        advantages[members] = (r - r.mean()) / (std + delta)
    return advantages.to(rewards.dtype)


def clipped_surrogate(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                      clip_range: float) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's loss mean max(−Aρ, −A clip(ρ, 1±ε)) over samples (B,), and logs: the fraction of clipped ratios and
    the approximate KL ½ mean (log ρ)² (DDPO's `approx_kl`)."""
    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    loss = torch.maximum(-advantages * ratio, -advantages * ratio.clamp(1 - clip_range, 1 + clip_range)).mean()
    clipped = ((ratio - 1).abs() > clip_range).float().mean().item()
    return loss, {"clip_fraction": clipped, "approx_kl": 0.5 * (log_ratio.detach() ** 2).mean().item()}


def gaussian_kl(mean: torch.Tensor, reference_mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, s²) ‖ N(μ_ref, s²)) per sample (B,), per element mean: mean (μ − μ_ref)² / (2 s²) (two Gaussians of
    one step share its std)."""
    return ((mean - reference_mean) ** 2 / (2 * std**2)).mean(dim=tuple(range(1, mean.ndim)))


@dataclass
class RolloutConfig(MethodConfig):
    """The rollouts of a method that trains on stochastic DDIM trajectories (`rollout`)."""

    steps: int = field(default=50, metadata={"help": "DDIM sampling steps N of a rollout"})
    eta: float = field(default=1.0, metadata={"help": "DDIM noise η of the rollouts (> 0: the policy is stochastic)"})
    guidance: float = field(default=5.0, metadata={"help": "classifier-free guidance in rollouts and in training"})

    def __post_init__(self):
        super().__post_init__()
        require(self.steps >= 2, "steps", ">= 2", self.steps)
        require(self.eta > 0, "eta", "> 0", self.eta)
        require(self.guidance >= 1, "guidance", ">= 1", self.guidance)

    def guidance_factor(self) -> int:
        """UNet evaluations per latent of a guided prediction: 2 with guidance, 1 without."""
        return 1 if self.guidance == 1 else 2


@dataclass
class PolicyGradientConfig(RolloutConfig):
    """What DDPO and GRPO share; each method's Config sets the paper's defaults."""

    clip_range: float = field(default=1e-4, metadata={"help": "PPO clip range ε of the ratio",
                                                      "search": FloatRange(1e-5, 1e-1, log=True)})
    adv_clip_max: float = field(default=5.0, metadata={"help": "advantages are clipped to ±this"})
    timestep_fraction: float = field(default=1.0, metadata={"help": "fraction of a trajectory's steps trained"})
    inner_epochs: int = field(default=1, metadata={"help": "optimizer passes over each collection"})

    def __post_init__(self):
        super().__post_init__()
        require(self.clip_range > 0, "clip_range", "> 0", self.clip_range)
        require(self.adv_clip_max > 0, "adv_clip_max", "> 0", self.adv_clip_max)
        require(0 < self.timestep_fraction <= 1, "timestep_fraction", "in (0, 1]", self.timestep_fraction)
        require(self.inner_epochs >= 1, "inner_epochs", ">= 1", self.inner_epochs)


@dataclass
class StepBatch:
    """One micro-batch of PPO: every trajectory of a collection at one of its trained steps."""

    rollout: Rollout  # (B, ...) trajectories
    step: torch.Tensor  # (B,) the step k of each trajectory trained here
    advantages: torch.Tensor  # (B,)
    rewards: torch.Tensor  # (B,) what the advantages came from (logged)

    def __len__(self) -> int:
        return len(self.step)


class PolicyGradient(OnlineMethod):
    """Collect: `samples_per_prompt` rollouts per prompt (stochastic DDIM, `rollout`), decode, score with the reward,
    advantages (`advantages`, clipped to ±adv_clip_max). Train: for each of `inner_epochs` passes, the trained steps of
    every trajectory in a fresh random order (per trajectory, as DDPO's `perms`), one micro-batch per step index,
    accumulated into one optimizer step: L = clipped surrogate (+ `kl_loss`).

    VP schedules only (`schedules=("vp",)` on ddpo and grpo, and on dense-reward and draft, which roll out the same
    way): the stochastic DDIM step's variance divides by a_t, 0 at σ = 1 on a flow schedule; flow-grpo is the flow
    models' form of this method (its SDE step, `flow_sde_step_distribution`)."""

    @abstractmethod
    def advantages(self, rewards: torch.Tensor, prompt_ids: torch.Tensor) -> torch.Tensor:
        """Advantages (B·G,) of the rewards of the samples of the B prompts `prompt_ids` (B,) (prompt-major: the G
        samples of prompt i are rows i·G ... i·G + G − 1). Called with the global batch (every process's samples,
        `collect`), so statistics over a group or the collection are those of a one-process run."""

    def trainable_steps(self) -> int:
        """How many of a trajectory's steps may be trained (from the first)."""
        return self.config.steps

    def trained_steps(self) -> int:
        return max(1, int(self.trainable_steps() * self.config.timestep_fraction))

    def accumulation(self) -> int:
        return self.trained_steps()

    def initial_noise(self, policy: Backbone, batch: PromptBatch, rng: torch.Generator) -> torch.Tensor:
        """x_T for each sample (B·G, C, h, w); by default independent."""
        like = torch.empty(len(batch) * self.samples_per_prompt(), *policy.latent_shape, device=policy.device,
                           dtype=policy.latent_dtype)
        return sample_noise(like, rng)

    def max_nfe_per_item(self, embedded_guidance: bool = False) -> int:
        c = self.guided_branches(embedded_guidance)
        return self.samples_per_prompt() * (self.config.steps * c + self.trained_steps() *
                                            self.train_nfe_per_step(embedded_guidance))

    def train_nfe_per_step(self, embedded_guidance: bool = False) -> int:
        """NFE per trajectory of one trained step: a guided forward with gradients (c = `guided_branches`) and its
        backward (2c)."""
        return 3 * self.guided_branches(embedded_guidance)

    @torch.no_grad()
    def collect(self, policy: Backbone, batch: PromptBatch, rng: torch.Generator) -> list[StepBatch]:
        g = self.samples_per_prompt()
        cond = batch.cond.map(lambda x: x.repeat_interleave(g, dim=0))
        prompts = [p for p in batch.prompts for _ in range(g)]
        noise = self.initial_noise(policy, batch, rng)
        trajectories = rollout(policy, cond, noise, steps=self.config.steps, eta=self.config.eta,
                               guidance=self.config.guidance, rng=rng)
        rewards = batch.reward(policy.decode(trajectories.samples), prompts).float()  # (B·G,) this process's
        everyone = gather_rows(rewards).cpu()  # (world·B·G,): advantages over whole groups and the whole collection
        ids = gather_rows(batch.prompt_ids.to(rewards.device)).cpu()
        advantages = self.advantages(everyone, ids)[current().rows(len(rewards))]
        advantages = advantages.clamp(-self.config.adv_clip_max, self.config.adv_clip_max)
        rewards, n, trained = rewards.cpu(), len(rewards), self.trained_steps()
        micro_batches = []
        for _ in range(self.config.inner_epochs):
            order = sample_permutations(n, self.trainable_steps(), rng)  # (B·G, N') per trajectory
            for j in range(trained):
                micro_batches.append(StepBatch(trajectories, order[:, j], advantages.to(policy.device), rewards))
        return micro_batches

    def loss(self, batch: StepBatch, policy: Backbone, reference: Backbone | None, rng: torch.Generator) -> LossOutput:
        old = batch.rollout.log_probs[torch.arange(len(batch.step)), batch.step]
        log_prob, mean, std = step_log_prob(policy, batch.rollout, batch.step, eta=self.config.eta,
                                            guidance=self.config.guidance)
        loss, logs = clipped_surrogate(log_prob, old, batch.advantages, self.config.clip_range)
        extra, extra_logs = self.kl_loss(batch, mean, std, reference)
        return LossOutput(loss + extra, {"loss": (loss + extra).item(), **logs, **extra_logs,
                                         "reward": float(batch.rewards.mean())})

    def kl_loss(self, batch: StepBatch, mean: torch.Tensor, std: torch.Tensor,
                reference: Backbone | None) -> tuple[torch.Tensor, dict[str, float]]:
        """An extra term (0 by default)."""
        return mean.new_zeros(()), {}


# ---------------------------------------------------------------------------------------------------- flow models
# Policy-gradient pieces for rectified-flow backbones (x_σ = (1 − σ) x0 + σ ε, velocity u = ε − x0, levels t = 1000σ;
# `Backbone.is_flow`), shared by Flow-GRPO and DiffusionNFT (`methods.alignment.flow_grpo`, `.diffusionnft`).
#
# Flow-GRPO's SDE step (Liu et al. 2025, "Flow-GRPO: Training Flow Matching Models via Online RL", yifan123/flow_grpo
# `flow_grpo/diffusers_patch/sd3_sde_with_logprob.py` `sde_step_with_logprob` @54809b5): the reverse-time SDE whose
# marginals are the ODE's, dx = [u + σ_t²/(2σ) (x + (1 − σ) u)] dσ + σ_t dw, one Euler-Maruyama step σ → σ' (dσ < 0):
#
#     σ_t = a √(σ / (1 − σ))                    (σ = 1 is replaced by σ_max, the schedule's second σ, in 1 − σ only)
#     μ   = x (1 + σ_t² dσ / (2σ)) + u (1 + σ_t² (1 − σ) / (2σ)) dσ,     s = σ_t √(−dσ),     x' = μ + s z
#     log π(x' | x, c) = mean over (C, H, W) of [ −(x' − μ)²/(2s²) − ln s − ln √(2π) ]
#
# a = 0 is the Euler step of the ODE, x' = x + dσ u (no noise: a step outside Flow-GRPO-Fast's window).


def flow_sde_step_distribution(x: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
                               *, noise_level: float,
                               sigma_max: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(μ, s, σ_t) of Flow-GRPO's SDE step from x (B, C, h, w) at σ (B,) to σ' (B,) with the velocity u (module
    comment above): μ (B, C, h, w), the step's std s = σ_t √(σ − σ') and σ_t itself, each (B, 1, 1, 1) in x's dtype
    (Flow-GRPO computes the step in float32 whatever the model's precision)."""
    shape = (-1, *([1] * (x.ndim - 1)))
    sigma64 = sigma.to(torch.float64).view(shape)
    dt = sigma_next.to(torch.float64).view(shape) - sigma64  # < 0
    denominator = 1 - torch.where(sigma64 == 1, torch.full_like(sigma64, sigma_max), sigma64)
    sde_std = noise_level * (sigma64 / denominator).sqrt()
    sigma_x, dt_x, sde_std_x = sigma64.to(x), dt.to(x), sde_std.to(x)
    mean = (x * (1 + sde_std_x**2 / (2 * sigma_x) * dt_x)
            + velocity * (1 + sde_std_x**2 * (1 - sigma_x) / (2 * sigma_x)) * dt_x)
    return mean, (sde_std * (-dt).sqrt()).to(x), sde_std_x


@dataclass
class FlowRollout:
    """Trajectories of Flow-GRPO's SDE sampler: the latents around the stored steps (all N, or Flow-GRPO-Fast's window
    of W) and each stored step's log-probability under the sampler."""

    latents: torch.Tensor  # (B, S + 1, C, h, w): latents[:, k] before stored step k, latents[:, k + 1] after it
    log_probs: torch.Tensor  # (B, S) log π_old(latents[:, k + 1] | latents[:, k])
    levels: torch.Tensor  # (S,) float64 level t = 1000σ of each stored step
    next_levels: torch.Tensor  # (S,) the level each step goes to (−1: the clean end, σ = 0)
    samples: torch.Tensor  # (B, C, h, w) the final latents x̂0 (after the ODE steps that follow a window)
    cond: Conditioning  # (B,)
    sigma_max: float  # the schedule's second σ (stands in for σ = 1 in σ_t's denominator)


def flow_policy_step(backbone: Backbone, x: torch.Tensor, t: torch.Tensor, t_next: torch.Tensor, cond: Conditioning,
                     *, noise_level: float, guidance: float,
                     sigma_max: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(μ, s, σ_t) of π(· | x, c) at per-sample levels t → t' (B,): one guided velocity u_u + w (u_c − u_u) (B NFE,
    2B with guidance), then `flow_sde_step_distribution`."""
    velocity = backbone.prediction(x, t, cond, "flow", guidance)
    return flow_sde_step_distribution(x, velocity, backbone.sigmas(t.cpu()), backbone.sigmas(t_next.cpu()),
                                      noise_level=noise_level, sigma_max=sigma_max)


@torch.no_grad()
def flow_rollout(backbone: Backbone, cond: Conditioning, noise: torch.Tensor, *, steps: int, noise_level: float,
                 guidance: float, rng: torch.Generator, window: tuple[int, int] | None = None) -> FlowRollout:
    """Sample the backbone's N = `steps` flow levels from `noise` (B, C, h, w) (σ = 1) to σ = 0: the steps k with
    window[0] <= k < window[1] (default all) take the SDE step with noise level a and are stored with their
    log-probabilities; the others are Euler steps of the ODE (a = 0; Flow-GRPO-Fast). The step noise z is drawn from
    `rng` for the global batch (`methods.shards`). Every step costs one guided velocity (B or 2B NFE)."""
    levels = backbone.timesteps(steps)  # (N,) descending, float64
    next_levels = torch.cat([levels[1:], torch.tensor([-1.0], dtype=torch.float64)])
    start, end = window if window is not None else (0, steps)
    sigma_max = float(backbone.sigmas(next_levels[0]))  # the schedule's second σ (0 for one step)
    x, batch = noise, noise.shape[0]
    latents, log_probs = [], []
    for k, (t, t_next) in enumerate(zip(levels.tolist(), next_levels.tolist())):
        stored = start <= k < end
        mean, std, _ = flow_policy_step(backbone, x, torch.full((batch,), t, dtype=torch.float64),
                                        torch.full((batch,), t_next, dtype=torch.float64), cond,
                                        noise_level=noise_level if stored else 0.0, guidance=guidance,
                                        sigma_max=sigma_max)
        if stored:
            latents.append(x)
            x = mean + std * sample_noise(x, rng)
            log_probs.append(gaussian_log_prob(x, mean, std))
            if k == end - 1:
                latents.append(x)  # after the window's last step
        else:
            x = mean
    return FlowRollout(torch.stack(latents, dim=1), torch.stack(log_probs, dim=1), levels[start:end],
                       next_levels[start:end], x, cond, sigma_max)


def flow_step_log_prob(backbone: Backbone, rollout: FlowRollout, step: torch.Tensor, *, noise_level: float,
                       guidance: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """log π(x_{k+1} | x_k) under `backbone` (with gradients if enabled) at stored step k = step[i] of each trajectory
    i (B,), with the step's (μ, s, σ_t): one guided velocity of the B latents."""
    rows = torch.arange(len(step))
    x, x_next = rollout.latents[rows, step], rollout.latents[rows, step + 1]
    mean, std, sde_std = flow_policy_step(backbone, x, rollout.levels[step], rollout.next_levels[step], rollout.cond,
                                          noise_level=noise_level, guidance=guidance, sigma_max=rollout.sigma_max)
    return gaussian_log_prob(x_next, mean, std), mean, std, sde_std


def prompt_advantages(rewards: torch.Tensor, groups: torch.Tensor, *, global_std: bool,
                      delta: float = 1e-4) -> torch.Tensor:
    """Flow-GRPO's per-prompt statistics (`flow_grpo/stat_tracking.py` `PerPromptStatTracker.update` @94e23ee, cleared
    every epoch): A = (r − mean_g r) / (std + δ) per sample (B,), g the sample's group (its prompt), std the population
    std of the group's rewards, or with `global_std` of all the rewards given (the whole collection). DiffusionNFT
    uses the same tracker."""
    r = rewards.double()
    advantages = torch.zeros_like(r)
    for g in groups.unique():
        members = groups == g
        std = r.std(unbiased=False) if global_std else r[members].std(unbiased=False)
        advantages[members] = (r[members] - r[members].mean()) / (std + delta)
    return advantages.to(rewards.dtype)
