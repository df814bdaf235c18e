"""DOODL: direct optimisation of diffusion latents (Wallace, Gokul, Ermon & Naik, "End-to-End Diffusion Latent
Optimization Improves Classifier Guidance", ICCV 2023, arXiv 2303.13703; salesforce/DOODL @52a52da, `doodl.py`
`gen` with `latent_traversal=True`, and its `memcnn/models/revop.py`). Inference-time: nothing is trained; each
evaluated image's initial noise is optimised against a differentiable reward r of the decoded image.

The chain is EDICT sampling (`methods.inversion.edict`, leapfrog on, the reference's `SteppingLayer` +
`MixingLayer`) over N steps from the tied pair x_T = y_T = z, with the guided ε̂ = ε_u + w (ε_c − ε_u); its two
outputs (x_0, y_0) are both decoded and scored, and DOODL ascends their mean

    J(z) = ½ [r(D(x_0)) + r(D(y_0))]

(the reference sums its loss over both images, `optimize_first_edict_image_only=False`). One optimisation step
m = 0, 1, ..., M−1 (the reference's traversal step, `use_momentum=True`, `tied_latents=True`,
`renormalize_latents=True`):

    g_m = clip(½ λ ∇_z J(z_m), −c, c)               elementwise; ½: the reference's −0.5·∂L/∂(x_T, y_T), L = −λ r
                                                   summed over both images, averaged over the tied pair
    b_m = μ b_{m−1} + g_m,   b_0 = g_0              SGD momentum μ = 0.9, no dampening, no Nesterov
    z_{m+1} = ‖z_0‖ · ẑ / ‖ẑ‖,   ẑ = z_m + b_m + σ ξ_m,   ξ_m ~ N(0, I)   the norm of the original noise, per image

with λ = `grad_scale` = 1, c = `clip_grad_val` = 1e-3, σ = `perturb_grad_scale` = 1e-4 and M = 50 traversal steps
(the reference's defaults in `gen`). The image is x_0 of the chain from z_M (the reference saves chain x's image).

Reversible backpropagation (memory independent of N): ∇_z J is the vector-Jacobian product of the chain, walked
back from (x_0, y_0) without a stored chain. Each EDICT step, from level t down to t' with the DDIM coefficients
A, B and roles (u, v) = (x, y), or (y, x) on leapfrogged steps,

    u' = A u + B ε̂(v, t),   v' = A v + B ε̂(u', t),   x'' = p x' + (1−p) y',   y'' = p y' + (1−p) x'',

is inverted exactly (EDICT's inverse: the mixing layer, then v = (v' − B ε̂(u', t))/A, u = (u' − B ε̂(v, t))/A),
and its two ε̂ evaluations are the very ones the step's vector-Jacobian product needs: with cotangents (ḡ_u', ḡ_v'),

    ĝ_u' = ḡ_u' + J_ε̂(u')ᵀ (B ḡ_v'),     ḡ_v = A ḡ_v' + J_ε̂(v)ᵀ (B ĝ_u'),     ḡ_u = A ĝ_u'

(and the transpose of the linear mixing layer). So each ε̂ of the inverse is evaluated with a graph at its input and
pulled back at once: one UNet graph is alive at a time, and the state is the pair and its cotangents. This is
memcnn's `InvertibleModuleWrapper(keep_input=False)` (inputs rebuilt by the inverse) without its separate
recomputation of the step's forward; the reference runs `keep_input=True` in `gen`, keeping every step's input pair
(memory linear in N, in latents) and recomputing each step's forward with gradients from it.

Cost per image (c = 2 with guidance, 1 without; a graded forward counts 3: itself and its backward):
an optimisation step is a chain without gradients (2Nc) and the walk back (2 graded ε̂ per step: 6Nc), so
`max_nfe_per_image` = M · 8Nc + 2Nc for the final chain = 40,200 at the defaults. The reference's traversal step
costs the same 8Nc = 800 (its forward without gradients, 200, and per step the forward recomputed with gradients and
its backward, 600). VAE decodes (2 images per optimisation step, with gradients) and reward calls are not counted.

Adaptations: the chain runs on the backbone's DDIM schedule (`sampling_levels`: its timesteps, the last step to
`final_alpha_cumprod`, as evaluation samples; the reference's scheduler uses 980, ..., 0 and `set_alpha_to_one=False`),
in the backbone's latent dtype; the reward is the run's (`bench run --reward`, any differentiable scorer) on the
whole decoded image (the reference's CLIP, aesthetic and FGVC losses average over random crops, `MakeCutouts`, a
matter of the scorer); ξ_m of image i is drawn from the i-th generator handed to `generate`, and a batch of images is
optimised together (their objectives are independent, so the summed objective's gradient is each image's own; the
reference optimises one image per call); M counts updates, so the image comes from
z_M (the reference saves the image of z_{M−1} at its last traversal step, whose gradient it computes and drops).
Not implemented: the reference's other modes (`opt_t`, optimising a partly denoised latent; `source_im`, editing an
inverted image with untied chains; Nesterov momentum). The paper's text was not read beyond its abstract: the
defaults above are the code's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bench.core.backbone import Backbone, Conditioning
from bench.core.search_space import FloatRange
from methods.alignment.base import Reward, require_differentiable
from methods.checks import require
from methods.inference import InferenceTimeMethod
from methods.inversion.base import (
    InversionState,
    as_latent_scale,
    ddim_coefficients,
    per_sample_levels,
    sampling_levels,
    walk,
)
from methods.inversion.edict import EDICT, EDICTConfig, _roles


@dataclass
class DOODLConfig:
    steps: int = field(default=50, metadata={"help": "EDICT sampling steps N of the chain (doodl.py gen: steps=50)"})
    p: float = field(default=0.93, metadata={"help": "EDICT mixing weight p in (0, 1] (gen: mix_weight=0.93)"})
    guidance: float = field(default=7.5, metadata={
        "help": "classifier-free guidance w of the chain (gen: sd_guidance_scale=7.5)"})
    opt_steps: int = field(default=50, metadata={
        "help": "optimisation steps M per image (gen: num_traversal_steps=50); 0 samples EDICT from the noise"})
    grad_scale: float = field(default=1.0, metadata={
        "help": "the step size: the update is clip(grad_scale · ∇J / 2, ±clip_grad) (gen: grad_scale=1, the scale of "
                "its loss)",
        "search": FloatRange(0.1, 10.0, log=True)})
    clip_grad: float = field(default=1e-3, metadata={
        "help": "elementwise bound on the update before momentum (gen: clip_grad_val=1e-3)",
        "search": FloatRange(1e-4, 1e-2, log=True)})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum μ, no dampening (doodl.py: 0.9); 0: plain"})
    perturb: float = field(default=1e-4, metadata={
        "help": "std σ of the noise added to the latents at each update (gen: perturb_grad_scale=1e-4)"})
    renormalize: bool = field(default=True, metadata={
        "help": "rescale the latents to the norm of the initial noise after each update (gen: renormalize_latents)"})

    def __post_init__(self):
        require(self.steps >= 1, "steps", ">= 1", self.steps)
        require(0 < self.p <= 1, "p (mixing weight)", "in (0, 1]", self.p)
        require(self.guidance >= 1, "guidance", ">= 1", self.guidance)
        require(self.opt_steps >= 0, "opt_steps", ">= 0", self.opt_steps)
        require(self.grad_scale > 0, "grad_scale", "> 0", self.grad_scale)
        require(self.clip_grad > 0, "clip_grad", "> 0", self.clip_grad)
        require(0 <= self.momentum < 1, "momentum", "in [0, 1)", self.momentum)
        require(self.perturb >= 0, "perturb", ">= 0", self.perturb)

    def guidance_factor(self) -> int:
        """UNet evaluations per latent of a guided ε̂: 2 with guidance, 1 without."""
        return 1 if self.guidance == 1 else 2


@dataclass
class ChainGradient:
    """∇_z J of the EDICT chain from the tied pair (z, z), and what computing it measured."""

    grad: torch.Tensor  # (B, C, h, w) ∇_z J
    objective: torch.Tensor  # (B,) J(z) = ½ [r(D(x_0)) + r(D(y_0))]
    inversion_error: float  # max |walked-back top − z|: rounding the exact inverse amplified (1/p² per step)


@dataclass
class DOODLResult:
    latents: torch.Tensor  # (B, C, h, w) x_0 of the chain from the optimised noise: the images
    noise: torch.Tensor  # (B, C, h, w) the optimised z_M
    objectives: torch.Tensor  # (M, B) J(z_m) before each update m
    inversion_error: float  # the largest over the optimisation steps


def chain_levels(backbone: Backbone, steps: int, batch: int) -> torch.Tensor:
    """(N+1, B) the levels of an N-step sampling chain, clean end first (`sampling_levels`), shared by the batch."""
    return per_sample_levels(sampling_levels(backbone, steps), batch)


def eps_and_pullback(backbone: Backbone, z: torch.Tensor, t: torch.Tensor, cond: Conditioning, guidance: float,
                     cotangent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ε̂(z, t) (n, C, h, w) and J_ε̂(z)ᵀ · cotangent: one graded evaluation whose graph is freed on return."""
    with torch.enable_grad():
        leaf = z.detach().requires_grad_(True)
        eps = backbone.eps(leaf, t, cond, guidance)
        (pulled,) = torch.autograd.grad(eps, leaf, cotangent)
    return eps.detach(), pulled


def edict_step_backward(backbone: Backbone, p: float, x: torch.Tensor, y: torch.Tensor, grad_x: torch.Tensor,
                        grad_y: torch.Tensor, hi: torch.Tensor, lo: torch.Tensor, swap: torch.Tensor,
                        cond: Conditioning, guidance: float) -> tuple[torch.Tensor, ...]:
    """One EDICT sampling step (level hi down to lo (n,), `swap` (n,) its leapfrog roles) walked back from its
    output (x, y) (n, C, h, w) with their cotangents: the step's input by EDICT's exact inverse, and the input's
    cotangents. Returns (x, y, grad_x, grad_y) at level hi."""
    a, b = (as_latent_scale(coef, x) for coef in ddim_coefficients(backbone, hi, lo))
    # mixing layer x'' = p x' + (1 − p) y', y'' = p y' + (1 − p) x'': its inverse, and its transpose
    y_coupled = (y - (1 - p) * x) / p
    x_coupled = (x - (1 - p) * y_coupled) / p
    grad_x_total = grad_x + (1 - p) * grad_y  # x'' also feeds y''
    grad_x_coupled, grad_y_coupled = p * grad_x_total, p * grad_y + (1 - p) * grad_x_total
    # coupling u' = a u + b ε̂(v), v' = a v + b ε̂(u'): undone in reverse order, each ε̂ pulling its cotangent back
    first, second = _roles(x_coupled, y_coupled, swap)
    grad_first, grad_second = _roles(grad_x_coupled, grad_y_coupled, swap)
    eps_first, pulled = eps_and_pullback(backbone, first, hi, cond, guidance, b * grad_second)
    second = (second - b * eps_first) / a
    grad_first = grad_first + pulled
    eps_second, pulled = eps_and_pullback(backbone, second, hi, cond, guidance, b * grad_first)
    first = (first - b * eps_second) / a
    grad_first, grad_second = a * grad_first, a * grad_second + pulled
    return (*_roles(first, second, swap), *_roles(grad_first, grad_second, swap))


def chain_gradient(backbone: Backbone, sampler: EDICT, z: torch.Tensor, levels: torch.Tensor, cond: Conditioning,
                   prompts: list[str], reward: Reward, guidance: float) -> ChainGradient:
    """∇_z J for the EDICT chain of `sampler` on `levels` (N+1, B) from the tied pair (z, z) (B, C, h, w): the chain
    without gradients, both outputs decoded and scored with gradients, then walked back step by step
    (`edict_step_backward`); the memory holds the pair, its cotangents and one UNet graph whatever N."""
    batch = z.shape[0]
    x, y = sampler.reconstruct_pair(backbone, InversionState(z, levels), cond, guidance)  # (B, C, h, w) each
    with torch.enable_grad():
        x_leaf, y_leaf = x.detach().requires_grad_(True), y.detach().requires_grad_(True)
        rewards = reward(backbone.decode(torch.cat([x_leaf, y_leaf]), grad=True), [*prompts, *prompts])  # (2B,)
        objective = 0.5 * (rewards[:batch] + rewards[batch:])  # (B,) images are scored independently
        grad_x, grad_y = torch.autograd.grad(objective.sum(), (x_leaf, y_leaf))
    swaps = sampler._swaps(levels)  # (N, B)
    for i, active, lo, hi in walk(levels):
        x[active], y[active], grad_x[active], grad_y[active] = edict_step_backward(
            backbone, sampler.config.p, x[active], y[active], grad_x[active], grad_y[active], hi, lo, swaps[i, active],
            cond[active], guidance)
    error = torch.maximum((x - z).abs().max(), (y - z).abs().max()).item()
    return ChainGradient(grad_x + grad_y, objective.detach(), error)  # x_T = y_T = z: the pair's gradients add


def doodl_update(z: torch.Tensor, grad: torch.Tensor, velocity: torch.Tensor | None, norm: torch.Tensor,
                 config: DOODLConfig, rngs: list[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """One update of the latents z (B, C, h, w) from ∇_z J: clipped step, momentum, perturbation (image i's from
    rngs[i]) and the norm constraint ‖z‖ = `norm` (B,) per image. Returns (z, the momentum buffer b)."""
    step = (0.5 * config.grad_scale * grad).clamp(-config.clip_grad, config.clip_grad)
    velocity = step if velocity is None else config.momentum * velocity + step
    z = z + velocity
    if config.perturb > 0:
        xi = torch.stack([torch.randn(z.shape[1:], generator=rng, dtype=torch.float32) for rng in rngs])  # (B, C, h, w)
        z = z + config.perturb * xi.to(z)
    if config.renormalize:
        z = z * (norm / z.flatten(1).norm(dim=1)).view(-1, *([1] * (z.ndim - 1)))
    return z, velocity


class DOODL(InferenceTimeMethod, name="doodl", config=DOODLConfig, schedules=("vp",)):
    """Optimise each image's initial noise through the EDICT chain against the reward (see the module docstring)."""

    def sampler(self) -> EDICT:
        return EDICT(EDICTConfig(p=self.config.p, leapfrog=True))  # doodl.py: leapfrog steps hard-coded

    def check_reward(self, reward: Reward) -> None:
        require_differentiable(reward, self.name)

    def max_nfe_per_image(self) -> int:
        cfg = self.config
        chain = 2 * cfg.steps * cfg.guidance_factor()  # EDICT: two sequential ε̂ per step
        return cfg.opt_steps * 4 * chain + chain  # per update: the chain (1×) and its walk back (3×: graded ε̂)

    @torch.no_grad()
    def optimise(self, backbone: Backbone, cond: Conditioning, noise: torch.Tensor, prompts: list[str],
                 reward: Reward, rngs: list[torch.Generator]) -> DOODLResult:
        """`opt_steps` updates of the noise (B, C, h, w) (`rngs`: one generator per image), then the chain from the
        result."""
        self.check_reward(reward)
        cfg, sampler = self.config, self.sampler()
        levels = chain_levels(backbone, cfg.steps, noise.shape[0])
        z, velocity, norm = noise.clone(), None, noise.flatten(1).norm(dim=1)  # norm (B,) of the original noise
        objectives, error = [], 0.0
        for _ in range(cfg.opt_steps):
            gradient = chain_gradient(backbone, sampler, z, levels, cond, prompts, reward, cfg.guidance)
            z, velocity = doodl_update(z, gradient.grad, velocity, norm, cfg, rngs)
            objectives.append(gradient.objective)
            error = max(error, gradient.inversion_error)
        latents, _ = sampler.reconstruct_pair(backbone, InversionState(z, levels), cond, cfg.guidance)
        stacked = torch.stack(objectives) if objectives else noise.new_zeros((0, noise.shape[0]))
        return DOODLResult(latents, z, stacked, error)

    def generate(self, backbone: Backbone, cond: Conditioning, noise: torch.Tensor, prompts: list[str],
                 reward: Reward, rngs: list[torch.Generator]) -> torch.Tensor:
        return self.optimise(backbone, cond, noise, prompts, reward, rngs).latents
