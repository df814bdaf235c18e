"""GRPO for diffusion models as DanceGRPO trains SD 1.x (Xue et al. 2025, "DanceGRPO", XueZeyue/DanceGRPO
`fastvideo/train_grpo_sd.py` @789dbdb): group-relative policy optimisation on the stochastic DDIM chain.

For each prompt, G samples (`group_size`) from the same initial noise (`same_noise`, DanceGRPO's init_same_noise)
or from independent noise; DDPO's DDIM η = 1 step and log-probability (`methods.policy_gradient`); advantages
A = (r − mean_group r) / (std_group r + 1e-8) with the sample std (ddof 1, torch's default there), clipped to
±adv_clip_max; the last sampling step is never trained (timesteps[:-1]) and a random ⌊(N − 1)·timestep_fraction⌋
of the others are, per trajectory; PPO clipping as DDPO. Optional KL to the reference model in closed form between
the two Gaussians of a step (same std s): KL = mean (μ_θ − μ_ref)² / (2 s²), weighted by `kl_beta` (0: none, as
DanceGRPO; Flow-GRPO's form).
Defaults: the SD config of DanceGRPO (fork shijian2001/DanceGRPO `config_sd/base.py` @8285ddc): N = 50, guidance 5,
clip 1e-4, adv_clip 5, group 16 (the learning rate is the run's `--train-arg`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bench.core.backbone import Backbone
from bench.core.search_space import FloatRange
from methods.alignment.base import PromptBatch
from methods.checks import require
from methods.policy_gradient import (
    PolicyGradient,
    PolicyGradientConfig,
    StepBatch,
    gaussian_kl,
    group_advantages,
    step_log_prob,
)
from methods.shards import sample_noise


@dataclass
class GRPOConfig(PolicyGradientConfig):
    group_size: int = field(default=16, metadata={"help": "samples per prompt G (a group)"})
    same_noise: bool = field(default=True, metadata={"help": "a group's samples start from the same noise x_T"})
    kl_beta: float = field(default=0.0, metadata={"help": "weight of the per-step KL to the reference (0: none)",
                                                  "search": FloatRange(0.0, 0.1)})

    def __post_init__(self):
        super().__post_init__()
        require(self.group_size >= 2, "group_size", ">= 2", self.group_size)
        require(self.kl_beta >= 0, "kl_beta", ">= 0", self.kl_beta)


class GRPO(PolicyGradient, name="grpo", needs_reference=True, config=GRPOConfig, schedules=("vp",)):
    """Group-relative policy optimisation (DanceGRPO's SD form): G samples per prompt, group-normalised advantages."""

    def samples_per_prompt(self) -> int:
        return self.config.group_size

    def trainable_steps(self) -> int:
        return self.config.steps - 1  # DanceGRPO drops the last step

    def initial_noise(self, policy: Backbone, batch: PromptBatch, rng: torch.Generator) -> torch.Tensor:
        if not self.config.same_noise:
            return super().initial_noise(policy, batch, rng)
        like = torch.empty(len(batch), *policy.latent_shape, device=policy.device, dtype=policy.latent_dtype)
        return sample_noise(like, rng).repeat_interleave(self.config.group_size, dim=0)

    def advantages(self, rewards: torch.Tensor, prompt_ids: torch.Tensor) -> torch.Tensor:
        groups = torch.arange(len(prompt_ids)).repeat_interleave(self.config.group_size)
        return group_advantages(rewards, groups, delta=1e-8, unbiased=True)

    def train_nfe_per_step(self, embedded_guidance: bool = False) -> int:
        kl = self.guided_branches(embedded_guidance) if self.config.kl_beta > 0 else 0  # the reference's guided forward
        return super().train_nfe_per_step(embedded_guidance) + kl

    def kl_loss(self, batch: StepBatch, mean: torch.Tensor, std: torch.Tensor,
                reference: Backbone | None) -> tuple[torch.Tensor, dict[str, float]]:
        if self.config.kl_beta == 0:
            return mean.new_zeros(()), {}
        with torch.no_grad():
            _, reference_mean, _ = step_log_prob(reference, batch.rollout, batch.step, eta=self.config.eta,
                                                 guidance=self.config.guidance)
        kl = gaussian_kl(mean, reference_mean, std).mean()
        return self.config.kl_beta * kl, {"kl": kl.item()}
