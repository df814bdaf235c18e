"""Null-text inversion (Mokady, Hertz, Aberman, Pritch & Cohen-Or, CVPR 2023; google/prompt-to-prompt
@9c472e4, `null_text_w_ptp.ipynb` `NullInversion`).

1. Pivots z*_0 = x0, ..., z*_K: DDIM inversion with the prompt at w = 1 (`ddim.py`).
2. From z̄_K = z*_K down, for sampling step i = 0, 1, ... (level t to t'), starting from the previous
   step's embedding (the empty prompt's at i = 0), take up to `inner_steps` Adam steps
   (lr 1e-2 (1 − i/100); `NullTextConfig` holds these settings) on the unconditional embedding ∅_i, minimising

       ‖Φ_{t→t'}(z̄_t, ε̂_w(z̄_t, t, c, ∅_i)) − z*_{t'}‖²  (mean),   ε̂_w = ε_∅ + w (ε_c − ε_∅),

   stopping early once the loss is below 1e-5 + i·2e-5; then z̄_{t'} = Φ_{t→t'}(z̄_t, ε̂_w(·, ∅_i)). Φ is taken as
   a_t' x̂0 + s_t' ε̂ of the guided denoised pair (`base.ddim_step`): CFG is affine in the prediction, so it combines
   the branches' pairs (x̂0, ε̂) as it combines their ε̂, and no step divides by a_t (0 at σ = 1 on a flow schedule).
3. Reconstruction is DDIM sampling with CFG at w and ∅_i at step i (`extra["uncond_embeds"]`).

w is the `guidance` argument (p2p: 7.5; at w = 1 there is nothing to optimise) and must be the same
in `invert` and `reconstruct`. Each sample has its own embedding, Adam state and early stop, so a
batch optimises as its samples would alone. With `inner_steps = 0` it is DDIM inversion followed by
CFG sampling. Not exact. Cost per step: 1 (ε_c) + J (ε_∅ forward, then backward to the embedding
through the frozen UNet, charged as 2 more by `Backbone.nfe`) + 2 (CFG step) evaluations, J ≤ inner_steps;
reconstruction 2 per step. Stored for reconstruction: the last latent and one embedding ∅_i (L × D) per
step, also at w = 1 where they are all the empty prompt's (SD 1.5: 77·768 / (4·64·64) ≈ 3.6 latents each).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bench.core.backbone import Backbone, Conditioning
from methods.checks import require
from methods.inversion.base import (
    InversionSampler,
    InversionState,
    ddim_step,
    denoising_step,
    per_sample_levels,
    steps_above,
    walk,
)
from methods.inversion.ddim import DDIMInversion

LR_DECAY = 100  # lr (1 − i/100): p2p's schedule, which reaches 0 at sampling step 100


@dataclass(frozen=True)
class NullTextConfig:
    inner_steps: int = field(default=10, metadata={
        "help": "most Adam steps on each sampling step's unconditional embedding (p2p: num_inner_steps=10); 0 is DDIM "
                "inversion followed by CFG sampling"})
    lr: float = field(default=1e-2, metadata={"help": "Adam learning rate at sampling step 0, then lr (1 − i/100) (p2p: 1e-2)"})
    early_stop: float = field(default=1e-5, metadata={
        "help": "a step's optimisation stops once its loss is below early_stop + i · early_stop_slope (p2p: 1e-5)"})
    early_stop_slope: float = field(default=2e-5, metadata={"help": "growth of that bound per sampling step i (p2p: 2e-5)"})

    def __post_init__(self):
        require(self.inner_steps >= 0, "inner_steps", ">= 0", self.inner_steps)
        require(self.lr > 0, "lr", "> 0", self.lr)
        if not (self.early_stop >= 0 and self.early_stop_slope >= 0):
            raise ValueError(f"early_stop and early_stop_slope must be >= 0, got {self.early_stop}, {self.early_stop_slope}")


class NullTextInversion(InversionSampler, name="null-text", config=NullTextConfig,
                        max_steps=LR_DECAY):  # the lr schedule lr (1 − i/100) reaches 0 at step 100
    @torch.no_grad()
    def invert(self, backbone: Backbone, x0: torch.Tensor, cond: Conditioning, levels: torch.Tensor,
               guidance: float = 7.5, rng: torch.Generator | None = None) -> InversionState:
        levels = per_sample_levels(levels, x0.shape[0])  # (K+1, B)
        from_top = steps_above(levels)  # (K, B) the step index i of p2p
        if from_top.max() >= LR_DECAY:
            raise ValueError(f"null-text inversion's lr schedule lr (1 − i/100) allows at most {LR_DECAY} steps")
        pivots, ddim = [x0], DDIMInversion()  # z*_0 ... z*_K, each (B, C, h, w)
        for i in range(len(levels) - 1):
            pivots.append(ddim.invert(backbone, pivots[-1], cond, levels[i:i + 2]).latents)
        null = backbone.null_conditioning(x0.shape[0])
        embeds = null.embeds.to(backbone.latent_dtype, copy=True)  # (B, L, D) each sample's ∅, optimised in >= fp32
        per_step = embeds.expand(len(levels) - 1, *embeds.shape).clone()  # (K, B, L, D) ∅ of every step
        state = InversionState(pivots[-1], levels, {"uncond_embeds": per_step}, per_step=("uncond_embeds",))
        if self.config.inner_steps == 0 or guidance == 1.0:  # nothing to optimise: ε̂_w = ε_c at w = 1
            return state
        z = pivots[-1].clone()  # z̄
        for i, active, src, dst in walk(levels, down=True):
            zs, c = z[active], cond[active]
            denoised_c = backbone.denoise(zs, src, c)  # (x̂0, ε̂) of the conditional branch, each (n, C, h, w)
            start = Conditioning(embeds[active], null[active].added)
            uncond = self._optimise(backbone, zs, src, dst, denoised_c, start, pivots[i][active], from_top[i, active],
                                    guidance)
            embeds[active] = per_step[i, active] = uncond.embeds
            z[active] = denoising_step(backbone, zs, src, dst, c, guidance, uncond=uncond)
        return state

    def _optimise(self, backbone: Backbone, z: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
                  denoised_c: tuple[torch.Tensor, torch.Tensor], start: Conditioning, target: torch.Tensor,
                  from_top: torch.Tensor, guidance: float) -> Conditioning:
        """Adam on each sample's ∅ (n, L, D) from `start` until its loss is below the early-stop bound; `denoised_c`
        is the conditional branch's (x̂0, ε̂)."""
        params = [e.clone().requires_grad_(True) for e in start.embeds]  # n × (L, D)
        config = self.config
        optim = torch.optim.Adam([{"params": [p], "lr": config.lr * (1 - i / LR_DECAY)} for p, i in
                                  zip(params, from_top.tolist())])
        bound = config.early_stop + from_top.double() * config.early_stop_slope  # (n,)
        todo = torch.arange(len(params))
        with torch.enable_grad():
            for _ in range(config.inner_steps):
                trial = Conditioning(torch.stack(params), start.added)[todo]
                denoised_u = backbone.denoise(z[todo], src[todo], trial)  # the UNet's conditional branch given ∅
                x0_hat, eps = (part_u + guidance * (part_c[todo] - part_u)  # the guided pair (x̂0, ε̂)
                               for part_u, part_c in zip(denoised_u, denoised_c))
                loss = ((ddim_step(backbone, x0_hat, eps, dst[todo]) - target[todo]) ** 2).flatten(1).mean(1)
                grads = torch.autograd.grad(loss.sum(), [params[j] for j in todo])
                optim.zero_grad()  # grads of stopped samples stay None: Adam leaves them untouched
                for j, grad in zip(todo.tolist(), grads):
                    params[j].grad = grad
                optim.step()
                todo = todo[loss.detach().cpu().double() >= bound[todo]]
                if len(todo) == 0:
                    break
        return Conditioning(torch.stack(params).detach(), start.added)

    @torch.no_grad()
    def reconstruct(self, backbone: Backbone, state: InversionState, cond: Conditioning,
                    guidance: float = 7.5) -> torch.Tensor:
        levels = state.levels
        null = backbone.null_conditioning(len(state.latents))
        per_step = state.extra.get("uncond_embeds", null.embeds.expand(len(levels) - 1, *null.embeds.shape))
        z = state.latents.clone()
        for i, active, src, dst in walk(levels, down=True):
            uncond = Conditioning(per_step[i, active], null[active].added)
            z[active] = denoising_step(backbone, z[active], src, dst, cond[active], guidance, uncond=uncond)
        return z
