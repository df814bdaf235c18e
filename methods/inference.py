"""The contract of an inference-time alignment method: compute spent per evaluated image, no training.

Such a method (DOODL, and any other that optimises or searches per image against a reward) leaves the model as it
is and replaces evaluation's sampling: for each evaluated image, from the same seeded initial noise x_T as the base
model's image, `generate` returns the latents (B, C, h, w) it settles on, and the harness decodes and scores them as
it does every other method's samples. It trains 0 steps, so its training cost is 0 (`max_nfe_per_item`) and its cost
is declared per evaluated image instead (`max_nfe_per_image`, counted as the Backbone's NFE counter counts: one UNet
evaluation of one latent is 1, a backward through one is 2 more). Its reward is the one online methods train on
(`bench run --reward`); `check_reward` refuses one it cannot use before any work, with a one-line message.

Declared as any method, with class keywords, the data kind (`prompts`: it needs only the prompts it is evaluated on),
the reference (none) and the kind set here:

    class DOODL(InferenceTimeMethod, name="doodl", config=DOODLConfig):
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from bench.core.backbone import Backbone, Conditioning
from methods.alignment.base import AlignmentMethod, LossOutput, Reward


class InferenceTimeMethod(AlignmentMethod, data_kind="prompts", needs_reference=False, kind="inference-time"):
    """`generate` for each evaluated batch; `loss` and the trainer do not apply."""

    @abstractmethod
    def generate(self, backbone: Backbone, cond: Conditioning, noise: torch.Tensor, prompts: list[str],
                 reward: Reward, rngs: list[torch.Generator]) -> torch.Tensor:
        """Latents (B, C, h, w) of the images for `prompts` (B,) with conditioning `cond` (B,), starting from the
        initial noise x_T `noise` (B, C, h, w); `rngs` (B CPU generators) draw what the method draws, image i from
        rngs[i] alone, and nothing couples the images of a batch, so an image does not depend on its batch (up to
        the rounding of batched arithmetic)."""

    @abstractmethod
    def max_nfe_per_image(self) -> int:
        """Worst-case NFE `generate` spends per image (a backward counting as 2), as the Backbone's counter counts."""

    def check_reward(self, reward: Reward) -> None:
        """ValueError (one line) if this method cannot use `reward`; the harness asks before any work."""

    def max_nfe_per_item(self, embedded_guidance: bool = False) -> int:
        """An inference-time method trains on nothing: 0 NFE per training item."""
        return 0

    def loss(self, batch, policy: Backbone, reference: Backbone | None, rng: torch.Generator) -> LossOutput:
        raise NotImplementedError(self._no_training())

    def loss_space(self, backbone: Backbone) -> str:
        raise NotImplementedError(self._no_training())  # its Config is no MethodConfig: there is no loss

    def _no_training(self) -> str:
        return (f"{self.name} is an inference-time method: it trains 0 steps, and evaluation calls its generate() per "
                "image instead of sampling the base model")
