"""Flow-GRPO (Liu et al. 2025, "Flow-GRPO: Training Flow Matching Models via Online RL", arXiv 2505.05470;
yifan123/flow_grpo): group-relative policy optimisation of a rectified-flow model, whose deterministic ODE sampler is
turned into an SDE with the same marginals so that each step is a Gaussian policy.

Rollouts (`flow_grpo/diffusers_patch/sd3_sde_with_logprob.py` `sde_step_with_logprob` @54809b5): G samples per prompt
(`group_size`) from independent noise over the N shifted flow levels σ_0 = 1 > ... > σ_{N−1} > σ_N = 0, each step an
Euler-Maruyama step of the SDE with noise level a (`noise_level`), with the guided velocity u = u_u + w (u_c − u_u):

    σ_t = a √(σ / (1 − σ))             (σ = 1 is replaced by σ_max = σ_1 in the denominator only, as the code does)
    μ   = x (1 + σ_t² dσ / (2σ)) + u (1 + σ_t² (1 − σ) / (2σ)) dσ,    dσ = σ' − σ < 0
    x'  = μ + s z,  s = σ_t √(−dσ),    log π(x' | x, c) = mean over (C, H, W) of [ −(x'−μ)²/(2s²) − ln s − ln √(2π) ]

(`methods.policy_gradient.flow_sde_step_distribution`). Advantages (`flow_grpo/stat_tracking.py` @94e23ee, the tracker
cleared every epoch): A = (r − mean_prompt r) / (std + 1e-4), the population std of the whole collection's rewards
(`global_std`, the pickscore_sd3 default) or of the prompt's; clipped to ±adv_clip_max. Samples whose A is 0 (a
prompt whose G rewards are all equal) are left out of the loss (`train_sd3.py` @74db691 masks them out): here they
weigh 0 and the mean is over the others (of the global batch, so several processes average to one process's loss).
Loss per trained step (`train_sd3.py` @74db691, training loop), ρ = exp(log π_θ − log π_old):

    L = mean max(−A ρ, −A clip(ρ, 1 ± ε)) + β · KL,     KL = mean over (C, H, W) of (μ_θ − μ_ref)² / (2 σ_t²)

with μ_ref the reference (base) model's mean of the same step (guided as the policy's). The code divides by σ_t², not
by the step's variance s² = σ_t² |dσ|: its KL is |dσ| times the closed-form KL between the two Gaussians,
(μ_θ − μ_ref)² / (2 s²), which `kl_exact` uses instead (β = 0.01 was tuned with the code's form). The first
⌊N · timestep_fraction⌋ steps (fraction 0.99: all but the last) are trained, in order, each a micro-batch of every
trajectory of the collection, accumulated into one optimizer step.

Flow-GRPO-Fast (`sde_window` W > 0; README and config/grpo.py `pickscore_sd3_fast` @1f4ca40; the window logic from
`sd3_pipeline_with_logprob_fast.py`, read in identical derived copies, e.g. Xianchao-Wu/flow_grpo @6cf00e0): only the
steps k in a window [k0, k0 + W), k0 ~ U{window_low, ..., window_high − W} drawn once per collection, are SDE steps;
the others are Euler steps of the ODE (a = 0). Only the window's W steps are stored and trained. The Fast recipe is
W = 2, a = 0.8, clip 1e-5, β = 0 (set them: the defaults are Flow-GRPO's).
Defaults: `pickscore_sd3` (config/grpo.py @31c71b9, config/base.py @54809b5): N = 10, a = 0.7, w = 4.5 in sampling and
training, G = 24, clip 1e-4, adv_clip 5, fraction 0.99, β = 0.01 (geneval/ocr 0.04), global std. The learning rate,
LoRA (r 32, α 64) and EMA are the run's `--train-arg` (no EMA here).
Not implemented: the "cps" SDE (`sde_type`, whose log-probability drops every constant) and reusing samples over
several inner epochs (num_inner_epochs is 1 in every recipe).
Cost per prompt (c = 2 with guidance, 1 without and where the backbone embeds the guidance scale, FLUX.1-dev:
`guided_branches`; a graded forward counts 3): G · (N c + T (3c + c [β > 0])), T the trained steps (⌊N · fraction⌋,
or W).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bench.core.backbone import Backbone
from bench.core.search_space import FloatRange
from methods.alignment.base import LossOutput, MethodConfig, OnlineMethod, PromptBatch
from methods.checks import require
from methods.policy_gradient import (
    FlowRollout,
    clipped_surrogate,
    flow_rollout,
    flow_step_log_prob,
    gaussian_kl,
    prompt_advantages,
)
from methods.shards import current, gather_rows, sample_noise


@dataclass
class FlowGRPOConfig(MethodConfig):
    steps: int = field(default=10, metadata={"help": "sampling steps N of a rollout (Flow-GRPO: 10 in training)"})
    noise_level: float = field(default=0.7, metadata={
        "help": "noise level a of the SDE, σ_t = a √(σ/(1−σ)) (Flow-GRPO 0.7; Fast 0.8)"})
    guidance: float = field(default=4.5, metadata={"help": "classifier-free guidance in rollouts and in training"})
    group_size: int = field(default=24, metadata={"help": "samples per prompt G (a group)"})
    clip_range: float = field(default=1e-4, metadata={"help": "PPO clip range ε of the ratio (Fast: 1e-5)",
                                                      "search": FloatRange(1e-5, 1e-1, log=True)})
    adv_clip_max: float = field(default=5.0, metadata={"help": "advantages are clipped to ±this"})
    timestep_fraction: float = field(default=0.99, metadata={
        "help": "the first ⌊N·fraction⌋ steps are trained (0.99: all but the last); ignored with sde_window"})
    kl_beta: float = field(default=0.01, metadata={"help": "weight β of the per-step KL to the reference (0: none; "
                                                           "geneval/ocr 0.04, Fast 0)",
                                                   "search": FloatRange(0.0, 0.1)})
    kl_exact: bool = field(default=False, metadata={
        "help": "KL as the closed form (μ_θ−μ_ref)²/(2s²) instead of the code's (μ_θ−μ_ref)²/(2σ_t²) = |dσ|·KL"})
    global_std: bool = field(default=True, metadata={
        "help": "advantages divide by the std of the whole collection's rewards (else the prompt's)"})
    sde_window: int = field(default=0, metadata={
        "help": "Flow-GRPO-Fast: SDE (and training) on a random window of W steps only, ODE elsewhere (0: every step)"})
    window_low: int = field(default=0, metadata={"help": "Fast: the window starts at or after this step"})
    window_high: int | None = field(default=None, metadata={
        "help": "Fast: the window ends at or before this step (None: N)"})

    def __post_init__(self):
        super().__post_init__()
        require(self.steps >= 2, "steps", ">= 2", self.steps)
        require(self.noise_level > 0, "noise_level", "> 0", self.noise_level)
        require(self.guidance >= 1, "guidance", ">= 1", self.guidance)
        require(self.group_size >= 2, "group_size", ">= 2", self.group_size)
        require(self.clip_range > 0, "clip_range", "> 0", self.clip_range)
        require(self.adv_clip_max > 0, "adv_clip_max", "> 0", self.adv_clip_max)
        require(0 < self.timestep_fraction <= 1, "timestep_fraction", "in (0, 1]", self.timestep_fraction)
        require(self.kl_beta >= 0, "kl_beta", ">= 0", self.kl_beta)
        require(0 <= self.sde_window <= self.steps, "sde_window", f"in [0, steps = {self.steps}]", self.sde_window)
        high = self.window_end()
        require(0 <= self.window_low, "window_low", ">= 0", self.window_low)
        require(high <= self.steps, "window_high", f"<= steps = {self.steps}", self.window_high)
        if self.sde_window:
            require(self.window_low + self.sde_window <= high, "window_low",
                    f"<= window_high − sde_window = {high - self.sde_window}", self.window_low)

    def window_end(self) -> int:
        return self.steps if self.window_high is None else self.window_high

    def guidance_factor(self) -> int:
        """Denoiser evaluations per latent of a guided velocity: 2 with guidance, 1 without."""
        return 1 if self.guidance == 1 else 2


@dataclass
class FlowStepBatch:
    """One micro-batch: every trajectory of a collection at one of its stored steps."""

    rollout: FlowRollout  # (B, ...)
    step: torch.Tensor  # (B,) the stored step k of each trajectory trained here
    advantages: torch.Tensor  # (B,) clipped
    weights: torch.Tensor  # (B,) 0 for a sample left out (A = 0), else 1 / (the global batch's share kept)
    rewards: torch.Tensor  # (B,) what the advantages came from (logged)

    def __len__(self) -> int:
        return len(self.step)


def kept_weights(advantages: torch.Tensor, local: slice) -> torch.Tensor:
    """Per-sample weights (rows `local` of the global batch) that leave out the samples whose advantage is 0 and make
    a mean over a process's rows, averaged over processes, the mean over the kept samples of the global batch: 1 /
    (fraction of the global batch kept) for a kept sample, else 0 (all 0 if none is kept)."""
    kept = (advantages != 0).double()
    share = kept.mean()
    weights = kept / share if share > 0 else kept
    return weights[local].to(advantages.dtype)


class FlowGRPO(OnlineMethod, name="flow-grpo", needs_reference=True, config=FlowGRPOConfig,
               schedules=("flow",)):
    """Flow-GRPO (or Flow-GRPO-Fast with `sde_window`): PPO with group-relative advantages on the SDE form of a flow
    model's sampler; flow backbones only."""

    def samples_per_prompt(self) -> int:
        return self.config.group_size

    def trained_steps(self) -> int:
        cfg = self.config
        return cfg.sde_window if cfg.sde_window else max(1, int(cfg.steps * cfg.timestep_fraction))

    def accumulation(self) -> int:
        return self.trained_steps()

    def max_nfe_per_item(self, embedded_guidance: bool = False) -> int:
        cfg, c = self.config, self.guided_branches(embedded_guidance)
        per_step = 3 * c + (c if cfg.kl_beta > 0 else 0)  # graded forward + backward, the reference's forward
        return cfg.group_size * (cfg.steps * c + self.trained_steps() * per_step)

    def window(self, rng: torch.Generator) -> tuple[int, int]:
        """The SDE steps [k0, k0 + W) of a collection: every step, or Fast's random window."""
        cfg = self.config
        if not cfg.sde_window:
            return 0, cfg.steps
        start = int(torch.randint(cfg.window_low, cfg.window_end() - cfg.sde_window + 1, (1,), generator=rng))
        return start, start + cfg.sde_window

    @torch.no_grad()
    def collect(self, policy: Backbone, batch: PromptBatch, rng: torch.Generator) -> list[FlowStepBatch]:
        self.check_schedule(policy.native_space)
        cfg, g = self.config, self.config.group_size
        cond = batch.cond.map(lambda x: x.repeat_interleave(g, dim=0))
        prompts = [p for p in batch.prompts for _ in range(g)]
        like = torch.empty(len(batch) * g, *policy.latent_shape, device=policy.device, dtype=policy.latent_dtype)
        noise = sample_noise(like, rng)  # (B·G, C, h, w) x at σ = 1, independent per sample
        trajectories = flow_rollout(policy, cond, noise, steps=cfg.steps, noise_level=cfg.noise_level,
                                    guidance=cfg.guidance, rng=rng, window=self.window(rng))
        rewards = batch.reward(policy.decode(trajectories.samples), prompts).float()  # (B·G,) this process's
        everyone = gather_rows(rewards).cpu()  # (world·B·G,): statistics of whole groups and the whole collection
        ids = gather_rows(batch.prompt_ids.to(rewards.device)).cpu().repeat_interleave(g)
        advantages = prompt_advantages(everyone, ids, global_std=cfg.global_std)
        advantages = advantages.clamp(-cfg.adv_clip_max, cfg.adv_clip_max)
        local = current().rows(len(rewards))
        weights = kept_weights(advantages, local).to(policy.device)
        advantages = advantages[local].to(policy.device)
        rewards = rewards.cpu()
        return [FlowStepBatch(trajectories, torch.full((len(rewards),), j), advantages, weights, rewards)
                for j in range(self.trained_steps())]

    def loss(self, batch: FlowStepBatch, policy: Backbone, reference: Backbone | None,
             rng: torch.Generator) -> LossOutput:
        self.check_schedule(policy.native_space)
        cfg = self.config
        old = batch.rollout.log_probs[torch.arange(len(batch)), batch.step]
        log_prob, mean, std, sde_std = flow_step_log_prob(policy, batch.rollout, batch.step,
                                                          noise_level=cfg.noise_level, guidance=cfg.guidance)
        # weights >= 0 scale each sample's surrogate: max(−Awρ, −Aw clip(ρ)) = w max(−Aρ, −A clip(ρ))
        loss, logs = clipped_surrogate(log_prob, old, batch.advantages * batch.weights, cfg.clip_range)
        if cfg.kl_beta > 0:
            with torch.no_grad():
                _, reference_mean, _, _ = flow_step_log_prob(reference, batch.rollout, batch.step,
                                                             noise_level=cfg.noise_level, guidance=cfg.guidance)
            kl = gaussian_kl(mean, reference_mean, std if cfg.kl_exact else sde_std)  # (B,)
            weighted_kl = (batch.weights * kl).mean()
            loss = loss + cfg.kl_beta * weighted_kl
            logs["kl"] = weighted_kl.item()
        return LossOutput(loss, {"loss": loss.item(), **logs, "kept": float((batch.weights > 0).float().mean()),
                                 "reward": float(batch.rewards.mean())})
