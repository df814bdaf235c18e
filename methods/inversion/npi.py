"""Negative-prompt inversion (Miyake, Iohara, Saito & Tanaka, arXiv 2305.16807, 2023).

Null-text inversion without the optimisation: the unconditional embedding is replaced by the prompt's
own, ∅ = c. Inversion is DDIM inversion with the prompt at w = 1 (the pivots of null-text inversion,
see `ddim.py`); in reconstruction classifier-free guidance collapses,

    ε̂ = ε(z, t, ∅) + w (ε(z, t, c) − ε(z, t, ∅)) = ε(z, t, c)     for every w,

so reconstruction is conditional DDIM sampling at w = 1, and only the conditional branch is run.
Not exact (the DDIM inversion error). Cost: N model calls per direction, no optimisation.
(No reference code was released; the paper reports ≈ 5 s at 512 px, 50 steps, > 30× faster than
null-text inversion.)
"""

from __future__ import annotations

import torch

from bench.core.backbone import Backbone, Conditioning
from methods.inversion.base import InversionSampler, InversionState, NoSettings
from methods.inversion.ddim import DDIMInversion


class NegativePromptInversion(InversionSampler, name="npi", config=NoSettings):  # DDIM inversion, conditional DDIM sampling
    def invert(self, backbone: Backbone, x0: torch.Tensor, cond: Conditioning, levels: torch.Tensor,
               guidance: float = 1.0, rng: torch.Generator | None = None) -> InversionState:
        """DDIM inversion at w = 1 whatever `guidance` (the guidance of the later reconstruction)."""
        return DDIMInversion().invert(backbone, x0, cond, levels, guidance=1.0)

    def reconstruct(self, backbone: Backbone, state: InversionState, cond: Conditioning,
                    guidance: float = 1.0) -> torch.Tensor:
        """CFG with ∅ = c, which is conditional DDIM at w = 1 for every `guidance`."""
        return DDIMInversion().reconstruct(backbone, state, cond, guidance=1.0)
