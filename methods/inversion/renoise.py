"""ReNoise: fixed-point refinement of each DDIM inversion step (Garibi, Patashnik, Voynov, Averbuch-Elor
& Cohen-Or, "ReNoise: Real Image Inversion Through Iterative Noising", ECCV 2024;
garibida/ReNoise-Inversion @fa83238, `src/renoise_inversion.py` `inversion_step`).

An inversion step from level j up to k solves z_k = Φ_{j→k}(z_j, ε̂(z_k, k)), whose solution is
exactly undone by the DDIM sampling step z_j = Φ_{k→j}(z_k, ε̂(z_k, k)). Starting from z^(0) = z_j,

    ε^(m) = ε̂(z^(m), k),   z^(m+1) = Φ_{j→k}(z_j, ε^(m)),   m = 0 ... K

and the step ends at z_k = Φ_{j→k}(z_j, mean of the last `average` estimates ε^(m)). K = 0 is DDIM
inversion. The reference averages a fixed window of iterations, ε^(8), ε^(9) of its default K = 9
(`average_step_range = (8, 10)`, and ε^(0..4) below t = 250 with K capped at 5); we average the last
`average` estimates at every step. Its optional noise regularisation and noise correction are not
implemented. Reconstruction is DDIM sampling. Not exact: the error shrinks as K grows while the
iteration contracts. Cost: (K + 1) model calls per inversion step, one per reconstruction step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bench.core.backbone import Backbone, Conditioning
from methods.checks import require
from methods.inversion.base import InversionSampler, InversionState, ddim_map, per_sample_levels, walk
from methods.inversion.ddim import DDIMInversion


@dataclass(frozen=True)
class ReNoiseConfig:
    iterations: int = field(default=1, metadata={
        "help": "fixed-point iterations K per inversion step (the reference's SD 1.5 example: 1); 0 is DDIM inversion"})
    average: int = field(default=2, metadata={"help": "how many of the last noise estimates ε^(m) are averaged"})

    def __post_init__(self):
        require(self.iterations >= 0, "iterations (K)", ">= 0", self.iterations)
        require(self.average >= 1, "average", ">= 1", self.average)


class ReNoise(InversionSampler, name="renoise", config=ReNoiseConfig):
    @property
    def inversion_calls_per_step(self) -> int:
        return self.config.iterations + 1

    @torch.no_grad()
    def invert(self, backbone: Backbone, x0: torch.Tensor, cond: Conditioning, levels: torch.Tensor,
               guidance: float = 1.0, rng: torch.Generator | None = None) -> InversionState:
        levels = per_sample_levels(levels, x0.shape[0])  # (K+1, B)
        z = x0.clone()
        for _, active, src, dst in walk(levels):
            start, c = z[active], cond[active]
            noises = [backbone.eps(start, dst, c, guidance)]  # ε^(0): the DDIM inversion step
            for _ in range(self.config.iterations):
                noises.append(backbone.eps(ddim_map(backbone, start, noises[-1], src, dst), dst, c, guidance))
            z[active] = ddim_map(backbone, start, torch.stack(noises[-self.config.average:]).mean(0), src, dst)
        return InversionState(z, levels)

    def reconstruct(self, backbone: Backbone, state: InversionState, cond: Conditioning,
                    guidance: float = 1.0) -> torch.Tensor:
        return DDIMInversion().reconstruct(backbone, state, cond, guidance)
