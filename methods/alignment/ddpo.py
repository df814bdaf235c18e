"""DDPO-IS (Black et al. 2023, "Training Diffusion Models with Reinforcement Learning", kvablack/ddpo-pytorch):
policy gradient with importance sampling and PPO clipping on the stochastic DDIM chain.

Rollouts: DDIM with η = 1 and guidance w (in sampling and in the training forward), N = 50 steps; per step the
Gaussian log-probability of `methods.policy_gradient` (`ddim_step_with_logprob`, @1958463). Advantages from
per-prompt statistics (`stat_tracking.py` @2fda3d4): each prompt keeps its last `buffer_size` rewards; while it has
fewer than `min_count`, the whole collection's mean and std stand in; A = (r − mean) / (std + 1e-6) with the
population std, clipped to ±adv_clip_max. Loss (`train.py` @18294d8): L = mean max(−Aρ, −A clip(ρ, 1 ± ε)),
ρ = exp(log π_θ − log π_old), accumulated over the trained timesteps of each trajectory (a random
⌊N·timestep_fraction⌋ of them, independently per trajectory) into one optimizer step; no KL term.
Defaults from `config/base.py` @beb8c2f (lr 3e-4 with LoRA there: the learning rate is the run's `--train-arg`).

Adaptation: one sample per prompt and per collection (DDPO draws prompts at random, so a prompt's samples
arrive over collections, which the per-prompt buffer gathers); a collection is the run's `batch_size` prompts.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import torch

from methods.checks import require
from methods.policy_gradient import PolicyGradient, PolicyGradientConfig


@dataclass
class DDPOConfig(PolicyGradientConfig):
    buffer_size: int = field(default=16, metadata={"help": "rewards kept per prompt for its statistics"})
    min_count: int = field(default=16, metadata={"help": "a prompt with fewer rewards uses the collection's statistics"})

    def __post_init__(self):
        super().__post_init__()
        require(self.buffer_size >= 1, "buffer_size", ">= 1", self.buffer_size)
        require(self.min_count >= 1, "min_count", ">= 1", self.min_count)


class DDPO(PolicyGradient, name="ddpo", needs_reference=False, config=DDPOConfig, schedules=("vp",)):
    """DDPO-IS: PPO-clipped policy gradient on the DDIM chain, advantages from per-prompt reward statistics."""

    def __init__(self, config: DDPOConfig | None = None):
        super().__init__(config)
        self.buffers: dict[int, deque] = {}

    def advantages(self, rewards: torch.Tensor, prompt_ids: torch.Tensor) -> torch.Tensor:
        """DDPO's `PerPromptStatTracker.update`: add the rewards to their prompts' buffers, then normalise each by its
        prompt's buffer (population std + 1e-6), or by the collection's while the buffer holds < min_count. Every
        process sees the whole collection (`PolicyGradient.collect`), so every process holds the same buffers."""
        out = torch.empty_like(rewards, dtype=torch.float64)
        ids = prompt_ids.tolist()
        for prompt in set(ids):
            rows = [i for i, p in enumerate(ids) if p == prompt]
            buffer = self.buffers.setdefault(prompt, deque(maxlen=self.config.buffer_size))
            buffer.extend(rewards[rows].tolist())
            enough = len(buffer) >= self.config.min_count
            stats = torch.tensor(list(buffer), dtype=torch.float64) if enough else rewards.double()
            out[rows] = (rewards[rows].double() - stats.mean()) / (stats.std(unbiased=False) + 1e-6)
        return out.to(rewards.dtype)

    def state_dict(self) -> dict:
        return {"buffers": {prompt: list(values) for prompt, values in self.buffers.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.buffers = {int(prompt): deque(values, maxlen=self.config.buffer_size)
                        for prompt, values in state["buffers"].items()}
