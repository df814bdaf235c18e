"""DPO-γ-t: Diffusion-DPO with γ-discounted timestep sampling, the offline adaptation of the temporal
discounting of Yang, Chen & Zhou, "A Dense Reward View on Aligning Text-to-Image Diffusion with
Preference" (ICML 2024). Registered as `dpo-gamma-t`; `dense-dpo` is its deprecated former name.

Reference implementation of the original: Shentao-YANG/Dense_Reward_T2I @863a383. That method is
**online**: it samples 50-step DDIM (η = 1, CFG) rollouts, scores them with ImageReward (or HPSv2), and
trains with a ListMLE loss on z = τ · mean_s clip(log π_θ − log π_init, ±c) over denoising-step indices
i_s ~ p(i) ∝ γ^i, i = 0 the noisiest step (`train_t2i.py`, `policy_loss_weights = γ^[0..49]`;
`preference_based_policy_learner.py`, `get_pl_loss_logit`). For two trajectories ListMLE is
−log σ(z_w − z_l). None of that (rollouts, clipped per-step log-ratios) is here.

This method keeps only the discounting: the Diffusion-DPO loss (see `dpo.py`, in the loss space
`loss_space`) on Pick-a-Pic-style pairs, with the pair's shared t drawn from the `sampling_steps`
DDIM timesteps t_0 > t_1 > ... (t_0 the noisiest) with

    p(t_i) = γ^i (1 − γ) / (1 − γ^N),     N = sampling_steps
    z      = −(β/2) (Δ_θ − Δ_ref),        loss = mean_pairs −log σ(z)

with Δ the winner-minus-loser error in the loss space, ‖ŷ − y‖² averaged over (C, H, W). Early, noisy
steps, which shape the layout, carry more weight; γ = 1 gives uniform steps. Those are also where the
spaces differ most: ‖v̂ − v‖² = ‖ε̂ − ε‖² / ᾱ_t, and ᾱ_t is about 0.006 at t = 981, so on a v-model the
default v-space loss weighs these steps far more than the ε-space one (mean ᾱ_t under γ = 0.9, 50
steps, is 0.075 on SD's schedule). On ε-models (SD 1.5, SDXL) the default is ε-space, as in Diffusion-DPO.
On a flow model (SD3) the grid is the flow sampler's shifted σ levels (`Backbone.timesteps`; SD3.5, shift 3:
t_0 = 1000, σ = 1, pure noise) and the default space the velocity u = ε − x0: at σ = 1 both images of a pair sit at
the same x_σ = ε, and their errors differ only through their targets ε − x0 (in ε-space they would both be 0 there,
ε̂ = x_σ + (1 − σ) û = ε exactly, so `loss_space=eps` gives the noisiest step no signal on a flow model).
Defaults: γ = 0.9 and N = 50 (the paper's single-prompt setting); β = 5000 as in `dpo.py`.
`safeguard=true` adds Diffusion-SDPO's winner-preserving rescaling of the losers' gradient (see `dpo.py`).
Cost per pair: as DPO, 8F.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bench.core.backbone import Backbone
from bench.core.search_space import FloatRange
from methods.alignment.base import METHODS, AlignmentMethod, LossOutput, PairBatch, noise_pairs
from methods.alignment.dpo import BETA_SEARCH, SafeguardConfig, pair_preference_loss
from methods.checks import require
from methods.shards import sample_categorical

# γ search range: the paper's 0.9 (its single- and multi-prompt setting; no grid published) inside; 1.0 is DPO
# on the sampler's grid (the undiscounted control); at 0.7 the first 5 of 50 steps hold 83% of the mass and the
# 20th step 0.02%, so below it the later, detail-shaping steps are practically never trained.
GAMMA_SEARCH = FloatRange(0.7, 1.0)


@dataclass
class DPOGammaTConfig(SafeguardConfig):
    beta: float = field(default=5000.0, metadata={"help": "DPO β (as `dpo`: official Diffusion-DPO default)",
                                                  "search": BETA_SEARCH})
    gamma: float = field(default=0.9, metadata={"help": "temporal discount γ in (0, 1]; p(step i) ∝ γ^i, i = 0 noisiest",
                                                "search": GAMMA_SEARCH})
    sampling_steps: int = field(default=50, metadata={"help": "DDIM sampling steps whose timesteps t is drawn from"})

    def __post_init__(self):
        super().__post_init__()
        require(self.beta > 0, "beta", "> 0", self.beta)
        require(0 < self.gamma <= 1, "gamma", "in (0, 1]", self.gamma)
        require(self.sampling_steps >= 1, "sampling_steps", ">= 1", self.sampling_steps)


def step_probabilities(num_steps: int, gamma: float) -> torch.Tensor:
    """p(i) = γ^i / Σ_j γ^j over the sampling steps i = 0 (noisiest) .. num_steps − 1, float64 (num_steps,)."""
    weights = torch.tensor(gamma, dtype=torch.float64) ** torch.arange(num_steps, dtype=torch.float64)
    return weights / weights.sum()


def sample_discounted_timesteps(backbone: Backbone, n: int, num_steps: int, gamma: float,
                                rng: torch.Generator) -> torch.Tensor:
    """n DDIM timesteps (n,) of a `num_steps`-step sampler, step i drawn with probability ∝ γ^i."""
    timesteps = backbone.timesteps(num_steps)  # (num_steps,) descending: index 0 is the noisiest
    index = sample_categorical(step_probabilities(num_steps, gamma), n, rng)
    return timesteps[index]


class DPOGammaT(AlignmentMethod, name="dpo-gamma-t", data_kind="pairs", needs_reference=True, config=DPOGammaTConfig):
    def loss(self, batch: PairBatch, policy: Backbone, reference: Backbone, rng: torch.Generator) -> LossOutput:
        cfg = self.config
        t = sample_discounted_timesteps(policy, len(batch), cfg.sampling_steps, cfg.gamma, rng)  # (B,)
        pairs = noise_pairs(policy, batch, self.loss_space(policy), rng, t)
        out = pair_preference_loss(policy, reference, pairs, cfg.beta, cfg.safeguard_margin(policy.family))
        out.logs["mean_t"] = t.float().mean().item()
        return out

    def max_nfe_per_item(self, embedded_guidance: bool = False) -> int:
        return 8


METHODS.alias("dense-dpo", DPOGammaT.name, note="it is offline Diffusion-DPO with γ-discounted timestep sampling, "
                                                "not Yang et al.'s online dense-reward method")
