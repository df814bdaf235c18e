"""Reward backpropagation through the sampler, one method with two modes: DRaFT-K (Clark et al. 2023, "Directly
Fine-Tuning Diffusion Models on Differentiable Rewards", arXiv 2309.17400) and ReFL (Xu et al. 2023, "ImageReward",
arXiv 2304.05977, THUDM/ImageReward `ImageReward/ReFL.py` `Trainer.train` @1beb4e4).

Both sample images from noise with the DDIM chain of the evaluation sampler (diffusers' `DDIMScheduler.step`) over
the N sampling timesteps t_0 > ... > t_{N−1}, each step going to the next level t' (the last one to
`final_alpha_cumprod`), with the guided ε̂ = ε_u + w (ε_c − ε_u) (`methods.policy_gradient.policy_step`):

    x̂0 = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t,       x_t' = √ᾱ_t' x̂0 + √(1 − ᾱ_t' − s²) ε̂ + s z,   s = η σ_t

and differentiate the reward r of the decoded image with respect to the UNet (the VAE decode and the reward model
are differentiated through but not trained). The reward must be differentiable (`Reward.differentiable`); `collect`
says which scorer is not.

`draft` (DRaFT-K; the paper's text and code were not read: this follows the shared research notes, UNVERIFIED):
the first N − K steps without gradient, the last K with gradient (through the UNet at each and through x between
them), the final latent decoded:

    L = −mean_i r(D(x^i_final), c_i)

K = 1 (DRaFT-1, the paper's favoured setting) by default; K = N is full DRaFT (backprop through the whole chain; the
memory holds K steps' graphs). Defaults: N = 50, η = 0, w = 7.5 (SD 1.4 in the paper; UNVERIFIED). DRaFT-LV (K = 1
with n re-noised copies of the last step) is not implemented.

`refl` (ReFL): N = 40 steps; m ~ U{30, ..., 39} once per micro-batch; the first m steps without gradient, then one
UNet call with gradient at t_m predicting x̂0 from its ε̂ (the formula above), decoded:

    L = mean_i φ(r_i) · scale,   φ(r) = relu(λ − r),   λ = 2, scale = 1e-3   (ReFL.py: `F.relu(-rewards + 2)`,
                                                                             `--grad_scale` default 1e-3)

λ = 2 sits above ImageReward's usual scores, so φ(r) = λ − r and the loss is −r·scale + const, whose gradient is
DRaFT's with one late step. For another reward set `refl_lambda` above that reward's range (e.g. > 6 for the toy
oracle's [0, 6]): a sample with r ≥ λ gets no gradient. The reference samples with diffusers' `DDPMScheduler` on 40
steps, which is DDIM with η = 1 on the strided schedule, and without guidance: the refl defaults are η = 1, w = 1.
Two quirks of ReFL.py are not copied: its graded UNet call is passed the integer m (30..39) as its timestep instead
of t_m, and its x̂0 uses ᾱ of the previous step's t (`step(noise_pred, t, latents)` with the loop's last t); here
the call and x̂0 both use t_m, the level the latents are at.

Adaptation: both modes draw x_T and m in `collect`, which samples nothing; the sampling (with gradients) happens in
`loss`, once per optimizer step, on all the collection's prompts (no EMA, no LoRA: the learning rate and the trained
weights are the run's `--train-arg`).
Cost per prompt (c = 2 with guidance, 1 without and where the backbone embeds the guidance scale: `guided_branches`;
a graded forward counts 3: forward and its backward):
draft (N − K)c + 3Kc = (N + 2K)c; refl mc + 3c ≤ (39 + 3)c (VAE and reward model calls are not counted).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bench.core.backbone import SPACES, Backbone, Conditioning
from bench.core.search_space import IntRange
from methods.alignment.base import (
    GradedForward,
    LossOutput,
    MethodConfig,
    OnlineMethod,
    PromptBatch,
    Reward,
    require_differentiable,
)
from methods.checks import require
from methods.policy_gradient import policy_step
from methods.shards import sample_noise

MODES = ("draft", "refl")
MODE_DEFAULTS = {  # what a field left at None means in each mode
    "draft": {"steps": 50, "guidance": 7.5, "eta": 0.0},  # DRaFT, SD 1.4 (research notes, UNVERIFIED)
    "refl": {"steps": 40, "guidance": 1.0, "eta": 1.0},  # ReFL.py: set_timesteps(40), DDPMScheduler, no CFG
}


@dataclass
class DraftConfig(MethodConfig):
    mode: str = field(default="draft", metadata={"help": "'draft' (DRaFT-K) or 'refl' (ReFL)"})
    steps: int | None = field(default=None, metadata={"help": "DDIM steps N; None: 50 (draft), 40 (refl)"})
    guidance: float | None = field(default=None, metadata={
        "help": "classifier-free guidance w while sampling; None: 7.5 (draft), 1 (refl, no guidance)"})
    eta: float | None = field(default=None, metadata={
        "help": "DDIM noise η while sampling; None: 0 (draft), 1 (refl: DDPM's ancestral step)"})
    k: int = field(default=1, metadata={"help": "draft: the last K steps are differentiated (K = N: full DRaFT)",
                                        "search": IntRange(1, 4)})
    refl_min_step: int = field(default=30, metadata={"help": "refl: the graded step m ~ U{min..max} of the N"})
    refl_max_step: int = field(default=39, metadata={"help": "refl: largest m (at most N − 1)"})
    refl_lambda: float = field(default=2.0, metadata={
        "help": "refl: loss relu(λ − r)·scale; λ = 2 for ImageReward, set it above another reward's range"})
    refl_scale: float = field(default=1e-3, metadata={"help": "refl: loss scale (ReFL.py --grad_scale)"})

    def setting(self, name: str):
        """`steps`, `guidance` or `eta`, with None replaced by the mode's default."""
        value = getattr(self, name)
        return MODE_DEFAULTS[self.mode][name] if value is None else value

    def __post_init__(self):
        super().__post_init__()
        require(self.mode in MODES, "mode", f"one of {MODES}", self.mode)
        steps = self.setting("steps")
        require(steps >= 1, "steps", ">= 1", self.steps)
        require(self.setting("guidance") >= 1, "guidance", ">= 1", self.guidance)
        require(self.setting("eta") >= 0, "eta", ">= 0", self.eta)
        if self.mode == "draft":
            require(1 <= self.k <= steps, "k", f"in [1, steps = {steps}]", self.k)
        else:
            require(0 <= self.refl_min_step <= self.refl_max_step, "refl_min_step", f"in [0, {self.refl_max_step}]",
                    self.refl_min_step)
            require(self.refl_max_step < steps, "refl_max_step", f"< steps = {steps}", self.refl_max_step)
        require(self.refl_scale > 0, "refl_scale", "> 0", self.refl_scale)


@dataclass
class RewardBatch:
    """What `loss` samples and scores: the prompts with their conditioning and reward, the initial noise, and the
    first step sampled with gradients (N − K for draft, m for refl)."""

    cond: Conditioning  # (B,)
    prompts: list[str]  # (B,)
    reward: Reward
    noise: torch.Tensor  # (B, C, h, w) x_T
    graded_from: int

    def __len__(self) -> int:
        return len(self.prompts)


def ddim_steps(backbone: Backbone, x: torch.Tensor, cond: Conditioning, levels: torch.Tensor, next_levels: torch.Tensor,
               *, eta: float, guidance: float, rng: torch.Generator) -> torch.Tensor:
    """DDIM steps from x (B, C, h, w) at levels[0] through levels[k] → next_levels[k]; with gradients if enabled."""
    batch = x.shape[0]
    for t, t_next in zip(levels.tolist(), next_levels.tolist()):
        mean, std = policy_step(backbone, x, torch.full((batch,), t), torch.full((batch,), t_next), cond, eta=eta,
                                guidance=guidance)
        x = mean if eta == 0 else mean + std * sample_noise(x, rng)
    return x


class Draft(OnlineMethod, name="draft", needs_reference=False, config=DraftConfig, schedules=("vp",)):
    """DRaFT-K or ReFL (`mode`): maximise a differentiable reward by backpropagating through the last sampling
    steps."""

    def describe(self, native_space: str | None = None) -> dict:
        described = super().describe(native_space)
        described.update({name: self.config.setting(name) for name in ("steps", "guidance", "eta")})
        return described

    def guidance_factor(self) -> int:
        return 1 if self.config.setting("guidance") == 1 else 2

    def graded_forward(self, embedded_guidance: bool = False) -> GradedForward:
        """The last K sampling steps chained with gradients (ReFL: one), guided, then the VAE decode of the image."""
        return GradedForward(self.guided_branches(embedded_guidance), graphs=self.config.k if self.config.mode == "draft"
                             else 1, decoded=1)

    def max_nfe_per_item(self, embedded_guidance: bool = False) -> int:
        c, cfg = self.guided_branches(embedded_guidance), self.config
        if cfg.mode == "draft":
            return (cfg.setting("steps") - cfg.k) * c + 3 * cfg.k * c
        return cfg.refl_max_step * c + 3 * c

    def check_reward(self, reward: Reward) -> None:
        require_differentiable(reward, self.name)

    @torch.no_grad()
    def collect(self, policy: Backbone, batch: PromptBatch, rng: torch.Generator) -> list[RewardBatch]:
        self.check_reward(batch.reward)
        like = torch.empty(len(batch), *policy.latent_shape, device=policy.device, dtype=policy.latent_dtype)
        noise = sample_noise(like, rng)
        cfg = self.config
        if cfg.mode == "draft":
            start = cfg.setting("steps") - cfg.k
        else:
            start = int(torch.randint(cfg.refl_min_step, cfg.refl_max_step + 1, (1,), generator=rng))
        return [RewardBatch(batch.cond, list(batch.prompts), batch.reward, noise, start)]

    def loss(self, batch: RewardBatch, policy: Backbone, reference: Backbone | None,
             rng: torch.Generator) -> LossOutput:
        cfg = self.config
        sampling = dict(eta=cfg.setting("eta"), guidance=cfg.setting("guidance"), rng=rng)
        timesteps = policy.timesteps(cfg.setting("steps"))  # (N,) descending
        next_levels = torch.cat([timesteps[1:], torch.tensor([-1])])  # the last step ends at final_alpha_cumprod
        start = batch.graded_from
        with torch.no_grad():
            x = ddim_steps(policy, batch.noise, batch.cond, timesteps[:start], next_levels[:start], **sampling)
        if cfg.mode == "draft":
            x0 = ddim_steps(policy, x, batch.cond, timesteps[start:], next_levels[start:], **sampling)
        else:
            t = torch.full((len(batch),), int(timesteps[start]))
            eps = policy.eps(x, t, batch.cond, sampling["guidance"])
            a, s = policy.coefficients(t, x)
            x0, _ = SPACES["eps"].solve(eps, x, a, s)  # x̂0 = (x_t − s_t ε̂) / a_t
        rewards = batch.reward(policy.decode(x0, grad=True), batch.prompts)  # (B,)
        if cfg.mode == "draft":
            loss = -rewards.mean()
        else:
            loss = F.relu(cfg.refl_lambda - rewards).mean() * cfg.refl_scale
        return LossOutput(loss, {"loss": loss.item(), "reward": rewards.detach().float().mean().item(),
                                 "graded_from": float(start)})

