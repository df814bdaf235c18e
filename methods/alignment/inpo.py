"""InPO: Inversion Preference Optimization, DDIM-InPO (Lu et al., CVPR 2025, arXiv 2503.18454).

Reference implementation: JaydenLyh/InPO @a9cfc4d, `train.py` L958-1052 (forked from Diffusion-DPO).
Instead of noising x0 forward with fresh ε, each image is DDIM-inverted to its noisy latent with the
**policy** UNet (no gradient, conditional, no guidance), and the noise "that explains" it is

    ε̂ = (x_τ − √ᾱ_t x0) / √(1 − ᾱ_t)

which replaces ε in the Diffusion-DPO loss (see `dpo.py`; one t per pair, shared by both images), in the
loss space (`loss_space`, see `base.py`): the per-image error is mean_{C,H,W} ‖ε̂_θ(x_τ, t, c) − ε̂‖² in
ε-space (the repo's, SD's native space: at real scale nothing changes), or ‖v̂_θ(x_τ, t, c) − v̂‖² with
v̂ = a_t ε̂ − s_t x0 in v-space (the toy's native space; ‖v̂_θ − v̂‖² = ‖ε̂_θ − ε̂‖² / ᾱ_t, so β acts
1/ᾱ_t times as strongly per t as in ε-space).

Two modes:
- `faithful` (the default with `inversion=ddim`): the official grid. `DDIMInverseScheduler.set_timesteps(10)` in diffusers
  0.20 gives levels {−99, 1, 101, ..., 801} (SD's "leading" spacing with steps_offset 1: 100·k + 1, rolled by
  one place, the first set to the second − 100; read in the 0.20.0 wheel's `scheduling_ddim_inverse.py`,
  not {1, ..., 901}); every grid point g < t is stepped g → g + 100 with ε
  evaluated at g, and 0.1·σ·N(0, I) is added after each step. The latent therefore ends at
  τ = (largest grid point < t) + 100, not at t, while ᾱ_t is used above.
- `exact` (the default with any other inverter): the same grid but the last step ends exactly at t,
  no noise injected, ε evaluated at the step's target level; any registered deterministic inverter can
  be used (`inversion=<sampler>`), so with an exact inverter (bdia, belm, edict) the latent really is at
  level t. A stochastic inverter is refused: ddpm-ef's last latent is fresh noise, which would make InPO
  Diffusion-DPO with unshared noise.

The inverter's own settings are part of InPO's config, `inversion_args` (its sampler's Config fields,
`bench list SAMPLER`; default: that sampler's defaults): `--method-arg inpo.inversion=bdia --method-arg
inpo.inversion_args=gamma=0.5`. They belong to the method rather than to a run-wide `--sampler-arg`: two
labels of InPO in one run (an ablation) can invert differently, and suites, `bench tune` and `--resume`
carry them with the rest of the method's config. Records store them resolved: every field of the
inverter's Config (in faithful mode, the official DDIM settings).

Flow form (our adaptation; InPO is published for SD 1.5 and SDXL only). On a flow-matching backbone (SD3:
x_σ = (1 − σ) x0 + σ ε, native prediction the velocity u = ε − x0, levels t = 1000·σ drawn by
`Backbone.training_levels`, see `base.py`) the same code runs with the backbone's (a_t, s_t) = (1 − σ, σ):

    inversion   z_k = Φ_{j→k}(z_j, ε̂(z_j, τ)) = z_j + (σ_k − σ_j) v_θ(z_j, σ_τ) (1 − σ_τ) / (1 − σ_j),   from x0 at σ = 0
                (ε̂ = z + (1 − σ_τ) v_θ(z, σ_τ), the policy's; with τ = j, `eval_at=source`, it is the Euler step
                z_j + (σ_k − σ_j) v_θ(z_j, σ_j) of the probability-flow ODE dz/dσ = v_θ(z, σ), integrated upward
                from the image as flow inversion does, research notes §8)
    noise       ε̂ = (x_σ − (1 − σ) x0) / σ                     the noise that explains x_σ at the drawn σ
    target      û = ε̂ − x0 = (x_σ − x0) / σ                     the implied velocity, the flow-space target
    error       e = mean_{C,H,W} ‖v̂(x_σ, σ, c) − û‖²            for the policy and the reference, then DPO's z

(σ > 0 at every flow training level: the smallest is 3·0.001/1.002 = 0.003 at shift 3.) `mode=exact
inversion_args=eval_at=source` is this policy ODE inversion to exactly σ (with the path's grid points below σ as
Euler steps): the flow form. The default `faithful` mode runs there too, as the official grid read in levels,
σ ∈ {0 (level −99, the clean end), 0.001, 0.101, ..., 0.801} in steps of 0.1, Euler steps with the velocity at the
source, 0.1 times the posterior standard deviation (VDM form, `ddpm_variance`) added per step and the latent
ending at σ_τ = (largest grid σ below σ_t) + 0.1 while the target uses σ_t: the VP repo's quirk transcribed, not a
flow method of its own. In velocity space ‖v̂ − û‖² = ‖ε̂_θ − ε̂‖² / (1 − σ)², so β acts 1/(1 − σ)² times as strongly
per σ as in ε-space (`loss_space=eps` gives the ε-space loss on a flow model).

Defaults: β = 2000 (official SD 1.5 example; SDXL uses 5000), 10 grid steps, noise 0.1.
`safeguard=true` adds Diffusion-SDPO's winner-preserving rescaling of the losers' gradient (see `dpo.py`).
Cost per pair: 8F as DPO, plus the inverter's no-grad forwards: one per image per inversion step with
DDIM (≤ 10 steps: ≤ 28F), two with EDICT.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bench.core.backbone import Backbone, Conditioning
from bench.core.config import OverrideError, apply_overrides, as_dict
from methods.alignment.base import AlignmentMethod, LossOutput, NoisyLatents, PairBatch, sample_levels
from methods.alignment.dpo import BETA_SEARCH, SafeguardConfig, pair_preference_loss
from methods.checks import require
from methods.inversion.base import SAMPLERS
from methods.inversion.ddim import DDIMConfig
from methods.shards import stacked

MODES = ("faithful", "exact")


@dataclass
class InPOConfig(SafeguardConfig):
    # β: the DPO-family range (see dpo.py), with InPO's examples' 2000 (SD 1.5) and 5000 (SDXL) inside. The
    # inversion settings stay fixed: they define the method (the official grid) rather than tune it.
    beta: float = field(default=2000.0, metadata={"help": "DPO β (official SD 1.5 example; SDXL 5000)",
                                                  "search": BETA_SEARCH})
    mode: str = field(default="", metadata={"help": "'faithful' (official grid, DDIM only) or 'exact' (ends at t); "
                                                    "default: faithful with ddim, exact with any other inverter"})
    grid_steps: int = field(default=10, metadata={"help": "inverse-scheduler steps over [0, T) (official: 10)"})
    inversion_noise: float = field(default=0.1, metadata={"help": "σ multiplier injected per step (faithful mode)"})
    inversion: str = field(default="ddim", metadata={"help": "registered inverter (exact mode)"})
    inversion_args: dict = field(default_factory=dict, metadata={
        "help": "the inverter's settings, FIELD=VALUE[,FIELD=VALUE] of its Config (`bench list SAMPLER`), e.g. "
                "gamma=0.5 for bdia (exact mode; default: the sampler's defaults)"})

    def __post_init__(self):
        super().__post_init__()
        require(self.beta > 0, "beta", "> 0", self.beta)
        require(not self.mode or self.mode in MODES, "mode", f"one of {MODES}", self.mode)
        require(self.grid_steps >= 1, "grid_steps", ">= 1", self.grid_steps)
        require(self.inversion_noise >= 0, "inversion_noise", ">= 0", self.inversion_noise)
        if self.resolved_mode == "faithful" and self.inversion != "ddim":
            raise ValueError("mode=faithful reproduces the official DDIM inversion; use mode=exact with other inverters")
        if SAMPLERS.get(self.inversion).stochastic:  # unknown names fail here too, before training
            usable = ", ".join(name for name in SAMPLERS if not SAMPLERS.get(name).stochastic)
            raise ValueError(f"inversion={self.inversion}: InPO needs a deterministic inverter; {self.inversion}'s "
                             f"inverted latent is fresh noise, which makes InPO DPO with unshared noise (use {usable})")
        if self.resolved_mode == "faithful" and self.inversion_args:
            raise ValueError("inversion_args configures the inverter of mode=exact; mode=faithful runs the official "
                             "DDIM inversion (eval_at=source, noise_scale=inversion_noise)")
        self.inverter_config()  # an unknown field or a bad value fails here, before training

    @property
    def resolved_mode(self) -> str:
        return self.mode or ("faithful" if self.inversion == "ddim" else "exact")

    def inverter_config(self):
        """The inverter's Config: the official DDIM settings in faithful mode, else the sampler's defaults with
        `inversion_args` applied (OverrideError, a ValueError, names an unknown field or a bad value)."""
        if self.resolved_mode == "faithful":
            return DDIMConfig(eval_at="source", noise_scale=self.inversion_noise)
        try:
            return apply_overrides(SAMPLERS.get(self.inversion).Config(), self.inversion_args)
        except OverrideError as err:
            raise OverrideError(f"inversion_args of {self.inversion}: {err}") from None


def inversion_levels(t: torch.Tensor, num_train_timesteps: int, grid_steps: int, mode: str) -> torch.Tensor:
    """Per-sample level paths (K+1, B) from the clean end to the inverted level.

    Grid {−(Δ−1), 1, 1+Δ, ..., 1+(n−2)Δ}, Δ = T // n (for T = 1000, n = 10: −99, 1, 101, ..., 801).
    Faithful: the grid points g < t, then last + Δ. Exact: the grid points g < t, then t.
    Paths are padded to the longest possible, K = grid_steps, by repeating their last level (skipped
    steps), so the shape, and the draws made per step, do not depend on the batch or its shard.
    """
    delta = num_train_timesteps // grid_steps
    grid = [1 - delta] + [1 + k * delta for k in range(grid_steps - 1)]
    paths = []
    for level in t.tolist():
        points = [g for g in grid if g < level]
        paths.append(points + [points[-1] + delta if mode == "faithful" else level])
    length = grid_steps + 1  # at most grid_steps points lie below t, plus the end point
    return torch.tensor([p + [p[-1]] * (length - len(p)) for p in paths], dtype=torch.float64).T


def inverted_noise(x_t: torch.Tensor, x0: torch.Tensor, levels: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """ε̂ = (x_t − a_t x0) / s_t, with `levels` = (a_t, s_t) (B,) float64 (`Backbone.noise_levels`; on SD
    a_t = √ᾱ_t, s_t = √(1 − ᾱ_t); on a flow schedule a_t = 1 − σ, s_t = σ)."""
    a, s = (c.view(-1, *([1] * (x0.ndim - 1))) for c in levels)
    return ((x_t.double() - a * x0.double()) / s).to(x_t.dtype)


class InPO(AlignmentMethod, name="inpo", data_kind="pairs", needs_reference=True, config=InPOConfig):
    def __init__(self, config=None):
        super().__init__(config)
        name = "ddim" if self.config.resolved_mode == "faithful" else self.config.inversion
        self.inverter = SAMPLERS.get(name)(self.config.inverter_config())

    def loss(self, batch: PairBatch, policy: Backbone, reference: Backbone, rng: torch.Generator) -> LossOutput:
        t = sample_levels(policy, len(batch), rng).repeat(2)  # (2B,) shared within each pair
        x0 = torch.cat([batch.winner, batch.loser])  # (2B, C, h, w)
        cond = Conditioning.cat([batch.cond, batch.cond])
        levels = inversion_levels(t, policy.num_train_timesteps, self.config.grid_steps, self.config.resolved_mode)
        with stacked(2):  # x0 is cat(winners, losers): per-row draws follow each half's global rows
            x_t = self.inverter.invert(policy, x0, cond, levels, guidance=1.0, rng=rng).latents
        eps_hat = inverted_noise(x_t, x0, tuple(c.to(x0.device) for c in policy.noise_levels(t)))
        space = self.loss_space(policy)
        target = policy.target(x0, eps_hat, t, space)  # ε̂, or a_t ε̂ − s_t x0 in v-space
        out = pair_preference_loss(policy, reference, NoisyLatents(x_t, t, cond, target, space), self.config.beta,
                                   self.config.safeguard_margin(policy.family))
        out.logs["inversion_steps"] = float((levels[1:] != levels[:-1]).sum(0).float().mean())
        return out

    def check_schedule(self, native_space: str) -> None:
        """As every method's, and the inverter's: a flow-only inverter cannot invert a VP model's latents (nor a
        VP-only one a flow model's)."""
        super().check_schedule(native_space)
        SAMPLERS.get(self.config.inversion).check_schedule(native_space)

    def max_nfe_per_item(self, embedded_guidance: bool = False) -> int:
        return 8 + 2 * self.config.grid_steps * self.inverter.inversion_calls_per_step

    def describe(self, native_space: str | None = None) -> dict:
        """The config with `mode` resolved and `inversion_args` as every field of the inverter's Config."""
        return {**super().describe(native_space), "mode": self.config.resolved_mode,
                "inversion_args": as_dict(self.inverter.config)}
