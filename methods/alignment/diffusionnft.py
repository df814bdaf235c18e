"""DiffusionNFT (Zheng et al., ICLR 2026, "DiffusionNFT: Online Diffusion Reinforcement with Forward Process",
arXiv 2509.16117; NVlabs/DiffusionNFT `scripts/train_nft_sd3.py` @24af555): negative-aware fine-tuning of a
rectified-flow model on the forward process. No likelihoods and no reverse-process SDE: the policy is trained by
flow matching on its own clean samples, pulled towards the well-rewarded ones and pushed from the others through
two implicit policies, and samples without classifier-free guidance.

Collection: an "old" policy θ_old samples G images per prompt (`group_size`) with a deterministic solver, 10 steps,
no guidance (`solver` "dpm2": DPM-Solver++(2M) in data prediction, Lu et al. 2022, as the repo's
`flow_grpo/diffusers_patch/solver.py` `dpm_step`: first order, i.e. the Euler step x' = x + (σ' − σ) u, at the first
and last steps and where the step before started at σ = 1; second order elsewhere, with λ = ln((1 − σ)/σ),
h = λ' − λ, r = (λ − λ_prev)/h, D = x̂0 + (x̂0 − x̂0_prev)/(2r), x' = (σ'/σ) x − (1 − σ')(e^{−h} − 1) D). Only the
final latents x0 are kept. Rewards become advantages as Flow-GRPO's tracker makes them (per-prompt mean, the
collection's std: `methods.policy_gradient.prompt_advantages`), then an optimality weight

    r = clamp((clip(A, ±m) / m) / 2 + 1/2, 0, 1) ∈ [0, 1],     m = adv_clip_max.

Loss, per trajectory at a level σ of the sampling grid (a random ⌊N · timestep_fraction⌋ of the N per trajectory,
one micro-batch each), with fresh ε, x_σ = (1 − σ) x0 + σ ε, the velocities v_θ (with gradients), v_old (θ_old)
and v_ref (the base model), all conditional (CFG-free), and β the strength of the implicit policies:

    v⁺ = β v_θ + (1 − β) v_old,     v⁻ = (1 + β) v_old − β v_θ,     x̂0^± = x_σ − σ v^±
    w^± = stopgrad(mean over (C, H, W) of |x̂0^± − x0|), at least 1e-5            (adaptive weighting)
    L = m · mean_i [ r_i ‖x̂0⁺ − x0‖² / (w⁺ β) + (1 − r_i) ‖x̂0⁻ − x0‖² / (w⁻ β) ] + kl_beta · mean ‖v_θ − v_ref‖²

(‖·‖² the mean over (C, H, W)). The old policy follows the trained one after every collection (the repo's epoch):
θ_old ← d θ_old + (1 − d) θ, d = min(uprate · (k − flat), uphold) (0 while k < flat), k the optimizer steps so far
(`return_decay`; `decay_type` 1: flat 0, uprate 0.001, uphold 0.5; 2: 75, 0.0075, 0.999; 0: d = 0, θ_old = θ).
Here k counts collections: one collection is one optimizer step at grad_accum 1 (the recipes' one gradient step per
epoch); with grad_accum g, θ_old moves after each of the g collections of a step. The repo keeps θ_old as a second
LoRA adapter; here it is a copy of the trainable weights (the adapters under LoRA, every weight in full
fine-tuning), swapped in for its forwards, and checkpointed with the run (`state_dict`).
Evaluation: the policy is sampled as it was trained to be, CFG-free (`evaluation`), as upstream evaluates its
checkpoints, against the base model at the suite's guidance.
Defaults: config/nft.py `sd3_pickscore` (β = 1, decay_type 1, adv_mode "all") and config/base.py @24af555 (N = 10,
G = 24, adv_clip 5, fraction 0.99, train.beta = 1e-4, global std); the learning rate, LoRA (r 32, α 64) and EMA are
the run's `--train-arg` (no EMA here). Not implemented: the other adv_modes (positive_only, negative_only, one_only,
binary), off in every recipe.
Cost per prompt (c = 2 with sampling guidance, 1 without and where the backbone embeds the guidance scale, FLUX.1-dev:
`guided_branches`): G · (N c + T (4 + [kl_beta > 0])): per trained level the old policy's forward, the policy's
forward and backward (3) and the reference's forward.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from bench.core.backbone import Backbone, Conditioning
from bench.core.config import EvalConfig
from bench.core.search_space import FloatRange
from methods.alignment.base import GradedForward, LossOutput, MethodConfig, OnlineMethod, PromptBatch
from methods.checks import require
from methods.policy_gradient import prompt_advantages
from methods.shards import current, gather_rows, sample_noise, sample_permutations

SOLVERS = ("dpm2", "euler")
# (flat, uprate, uphold) of the old policy's decay per `decay_type` (train_nft_sd3.py `return_decay`)
DECAY_SCHEDULES = {0: (0, 0.0, 0.0), 1: (0, 0.001, 0.5), 2: (75, 0.0075, 0.999)}


@dataclass
class DiffusionNFTConfig(MethodConfig):
    steps: int = field(default=10, metadata={"help": "sampling steps N of a collection, and the grid of trained σ"})
    solver: str = field(default="dpm2", metadata={
        "help": "deterministic sampler of the collections: 'dpm2' (DPM-Solver++(2M), the repo's) or 'euler'"})
    guidance: float = field(default=1.0, metadata={
        "help": "classifier-free guidance while sampling, in collections and at evaluation (1: none, DiffusionNFT's); "
                "training forwards are conditional"})
    group_size: int = field(default=24, metadata={"help": "samples per prompt G (a group)"})
    beta: float = field(default=1.0, metadata={"help": "strength β of the implicit policies v± (ocr recipe 0.1)",
                                               "search": FloatRange(0.05, 1.0, log=True)})
    adv_clip_max: float = field(default=5.0, metadata={
        "help": "advantages are clipped to ±m and mapped to r in [0, 1]; the loss is scaled by m"})
    timestep_fraction: float = field(default=0.99, metadata={
        "help": "a random ⌊N·fraction⌋ of the N sampling levels are trained per trajectory"})
    kl_beta: float = field(default=1e-4, metadata={"help": "weight of ‖v_θ − v_ref‖² to the reference (0: none)",
                                                   "search": FloatRange(0.0, 1e-3)})
    global_std: bool = field(default=True, metadata={
        "help": "advantages divide by the std of the whole collection's rewards (else the prompt's)"})
    decay_type: int = field(default=1, metadata={
        "help": "old-policy decay d = min(uprate·(k − flat), uphold): 1 (0, 0.001, 0.5), 2 (75, 0.0075, 0.999), "
                "0 (d = 0)"})

    def __post_init__(self):
        super().__post_init__()
        require(self.steps >= 2, "steps", ">= 2", self.steps)
        require(self.solver in SOLVERS, "solver", f"one of {SOLVERS}", self.solver)
        require(self.guidance >= 1, "guidance", ">= 1", self.guidance)
        require(self.group_size >= 2, "group_size", ">= 2", self.group_size)
        require(self.beta > 0, "beta", "> 0", self.beta)
        require(self.adv_clip_max > 0, "adv_clip_max", "> 0", self.adv_clip_max)
        require(0 < self.timestep_fraction <= 1, "timestep_fraction", "in (0, 1]", self.timestep_fraction)
        require(self.kl_beta >= 0, "kl_beta", ">= 0", self.kl_beta)
        require(self.decay_type in DECAY_SCHEDULES, "decay_type", f"one of {tuple(DECAY_SCHEDULES)}", self.decay_type)

    def guidance_factor(self) -> int:
        return 1 if self.guidance == 1 else 2


def old_policy_decay(step: int, decay_type: int) -> float:
    """d of θ_old ← d θ_old + (1 − d) θ after `step` optimizer steps (`return_decay`)."""
    flat, uprate, uphold = DECAY_SCHEDULES[decay_type]
    return 0.0 if step < flat else min((step - flat) * uprate, uphold)


def optimality_weight(advantages: torch.Tensor, adv_clip_max: float) -> torch.Tensor:
    """r = clamp((clip(A, ±m) / m) / 2 + 1/2, 0, 1) (B,)."""
    clipped = advantages.clamp(-adv_clip_max, adv_clip_max)
    return ((clipped / adv_clip_max) / 2 + 0.5).clamp(0, 1)


def nft_loss(x0: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor, v_theta: torch.Tensor, v_old: torch.Tensor,
             v_ref: torch.Tensor | None, r: torch.Tensor, *, beta: float, adv_clip_max: float,
             kl_beta: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of the module docstring on latents (B, C, h, w) at σ (B,) with optimality weights r (B,), and its
    parts (B,): the positive and negative terms and the KL (0 without v_ref)."""
    dims = tuple(range(1, x0.ndim))
    sigma = sigma.view(-1, *([1] * (x0.ndim - 1))).to(x0)
    v_positive = beta * v_theta + (1 - beta) * v_old.detach()
    v_negative = (1 + beta) * v_old.detach() - beta * v_theta

    def adaptive_error(x0_hat: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # float64, as the repo's weight_factor
            weight = (x0_hat.double() - x0.double()).abs().mean(dim=dims, keepdim=True).clamp(min=1e-5)
        return ((x0_hat - x0) ** 2 / weight.to(x0_hat.dtype)).mean(dim=dims)

    positive = adaptive_error(x_t - sigma * v_positive)  # (B,)
    negative = adaptive_error(x_t - sigma * v_negative)
    policy = adv_clip_max * (r * positive / beta + (1 - r) * negative / beta)
    kl = ((v_theta - v_ref) ** 2).mean(dim=dims) if v_ref is not None else torch.zeros_like(policy)
    return policy.mean() + kl_beta * kl.mean(), {"positive": positive, "negative": negative, "kl": kl}


def trainable_parameters(policy: Backbone) -> list[torch.nn.Parameter]:
    """The policy's trained weights: LoRA's adapters, or every weight of a fully fine-tuned denoiser."""
    return [p for p in policy.unet.parameters() if p.requires_grad]


@torch.no_grad()
def sample_flow(backbone: Backbone, cond: Conditioning, noise: torch.Tensor, *, steps: int, guidance: float,
                solver: str) -> torch.Tensor:
    """Deterministic sampling of the N = `steps` flow levels from `noise` (B, C, h, w) at σ = 1 to σ = 0: the
    final latents. "euler": x' = x + (σ' − σ) u every step; "dpm2": DPM-Solver++(2M) as the module docstring (the
    repo's `run_sampling(..., solver="dpm2", determistic=True)`). One guided velocity per step (B or 2B NFE)."""
    levels = backbone.timesteps(steps)  # (N,) descending float64
    sigmas = torch.cat([backbone.sigmas(levels), torch.zeros(1, dtype=torch.float64)]).tolist()  # (N + 1,)
    x, batch, previous_x0 = noise, noise.shape[0], None

    def log_snr(sigma: float) -> float:
        return math.log((1 - sigma) / sigma)

    for i, t in enumerate(levels.tolist()):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        velocity = backbone.prediction(x, torch.full((batch,), t, dtype=torch.float64), cond, "flow", guidance)
        x0 = x - sigma * velocity
        first_order = solver == "euler" or i == 0 or i == steps - 1 or sigmas[i - 1] == 1
        if first_order:  # DDIM = DPM-Solver++(1) = Euler on a flow
            x = x + (sigma_next - sigma) * velocity
        else:
            h = log_snr(sigma_next) - log_snr(sigma)
            ratio = (log_snr(sigma) - log_snr(sigmas[i - 1])) / h
            d = x0 + (x0 - previous_x0) / (2 * ratio)
            x = (sigma_next / sigma) * x - (1 - sigma_next) * math.expm1(-h) * d
        previous_x0 = x0
    return x


@dataclass
class NFTBatch:
    """One micro-batch: the collection's clean samples, each at one level of the sampling grid."""

    x0: torch.Tensor  # (B, C, h, w) the old policy's samples
    cond: Conditioning  # (B,)
    levels: torch.Tensor  # (B,) float64 level t = 1000σ of each sample here
    r: torch.Tensor  # (B,) optimality weights in [0, 1]
    rewards: torch.Tensor  # (B,) (logged)

    def __len__(self) -> int:
        return len(self.levels)


class DiffusionNFT(OnlineMethod, name="diffusionnft", needs_reference=True, config=DiffusionNFTConfig,
                   schedules=("flow",)):
    """DiffusionNFT: flow matching on the policy's own clean samples through implicit positive and negative
    policies; flow backbones only."""

    def __init__(self, config: DiffusionNFTConfig | None = None):
        super().__init__(config)
        self.old: list[torch.Tensor] | None = None  # θ_old, in the order of `trainable_parameters`
        self.collections = 0  # collections made so far (the optimizer steps at grad_accum 1)

    def samples_per_prompt(self) -> int:
        return self.config.group_size

    def evaluation(self, suite: EvalConfig) -> EvalConfig:
        """The policy is evaluated as it samples, at `guidance` (1: CFG-free), with the suite's sampler and steps:
        upstream evaluates its checkpoints without CFG (README, "Local LoRA checkpoint, w/o CFG":
        `scripts/evaluation.py --guidance_scale 1.0`; `config/nft.py` `_get_config` sets `sample.guidance_scale =
        1.0`, which the training script's `eval` samples with) and compares them with the base model under CFG (the
        paper's SD3.5-M tables). So does the harness: Δ vs base is this policy without guidance against the base
        model at the suite's guidance."""
        return dataclasses.replace(suite, guidance=self.config.guidance)

    def trained_steps(self) -> int:
        return max(1, int(self.config.steps * self.config.timestep_fraction))

    def accumulation(self) -> int:
        return self.trained_steps()

    def graded_forward(self, embedded_guidance: bool = False) -> GradedForward:
        """Every sample at one level, conditional (CFG-free; θ_old's forward has no gradient)."""
        return GradedForward(self.samples_per_prompt())

    def max_nfe_per_item(self, embedded_guidance: bool = False) -> int:
        cfg = self.config
        per_level = 4 + (1 if cfg.kl_beta > 0 else 0)  # old forward, graded forward + backward, reference forward
        return cfg.group_size * (cfg.steps * self.guided_branches(embedded_guidance) + self.trained_steps() * per_level)

    def _advance_old(self, params: list[torch.nn.Parameter]) -> None:
        """θ_old ← d θ_old + (1 − d) θ after the optimizer steps of the last collection (θ_old = θ at the first)."""
        with torch.no_grad():
            if self.old is None:
                self.old = [p.detach().clone() for p in params]
            else:
                decay = old_policy_decay(self.collections, self.config.decay_type)
                self.old = [old.to(p) for old, p in zip(self.old, params, strict=True)]
                for old, p in zip(self.old, params):
                    old.mul_(decay).add_(p.detach(), alpha=1 - decay)
        self.collections += 1

    @contextmanager
    def _old_weights(self, params: list[torch.nn.Parameter]) -> Iterator[None]:
        """The policy computes with θ_old inside the block (no gradients): the weights' storage is swapped, not copied.
        The autocast cache (a half-precision copy of each float32 weight, kept per weight tensor for one autocast
        region) is cleared on both sides, so neither policy computes with the other's cached weights."""
        current_weights = [p.data for p in params]
        torch.clear_autocast_cache()
        try:
            for p, old in zip(params, self.old, strict=True):
                p.data = old
            with torch.no_grad():
                yield
        finally:
            for p, weights in zip(params, current_weights):
                p.data = weights
            torch.clear_autocast_cache()

    @torch.no_grad()
    def collect(self, policy: Backbone, batch: PromptBatch, rng: torch.Generator) -> list[NFTBatch]:
        self.check_schedule(policy.native_space)
        cfg, g = self.config, self.config.group_size
        params = trainable_parameters(policy)
        self._advance_old(params)
        cond = batch.cond.map(lambda x: x.repeat_interleave(g, dim=0))
        prompts = [p for p in batch.prompts for _ in range(g)]
        like = torch.empty(len(batch) * g, *policy.latent_shape, device=policy.device, dtype=policy.latent_dtype)
        noise = sample_noise(like, rng)  # (B·G, C, h, w) independent per sample
        with self._old_weights(params):
            x0 = sample_flow(policy, cond, noise, steps=cfg.steps, guidance=cfg.guidance, solver=cfg.solver)
        rewards = batch.reward(policy.decode(x0), prompts).float()  # (B·G,) this process's
        everyone = gather_rows(rewards).cpu()
        ids = gather_rows(batch.prompt_ids.to(rewards.device)).cpu().repeat_interleave(g)
        advantages = prompt_advantages(everyone, ids, global_std=cfg.global_std)[current().rows(len(rewards))]
        r = optimality_weight(advantages, cfg.adv_clip_max).to(policy.device)
        levels = policy.timesteps(cfg.steps)  # (N,) the sampling grid
        order = sample_permutations(len(rewards), cfg.steps, rng)  # (B·G, N) per trajectory, as the repo's perms_time
        rewards = rewards.cpu()
        return [NFTBatch(x0, cond, levels[order[:, j]], r, rewards) for j in range(self.trained_steps())]

    def loss(self, batch: NFTBatch, policy: Backbone, reference: Backbone | None, rng: torch.Generator) -> LossOutput:
        self.check_schedule(policy.native_space)
        cfg = self.config
        noise = sample_noise(batch.x0, rng)  # fresh ε per trained level
        x_t = policy.add_noise(batch.x0, noise, batch.levels)  # (1 − σ) x0 + σ ε
        params = trainable_parameters(policy)
        with self._old_weights(params):
            v_old = policy.prediction(x_t, batch.levels, batch.cond, "flow")
        v_theta = policy.prediction(x_t, batch.levels, batch.cond, "flow")
        v_ref = None
        if cfg.kl_beta > 0:
            with torch.no_grad():
                v_ref = reference.prediction(x_t, batch.levels, batch.cond, "flow")
        loss, parts = nft_loss(batch.x0, x_t, policy.sigmas(batch.levels), v_theta, v_old, v_ref, batch.r,
                               beta=cfg.beta, adv_clip_max=cfg.adv_clip_max, kl_beta=cfg.kl_beta)
        return LossOutput(loss, {"loss": loss.item(), "positive": parts["positive"].mean().item(),
                                 "negative": parts["negative"].mean().item(), "kl": parts["kl"].mean().item(),
                                 "old_deviation": ((v_theta.detach() - v_old) ** 2).mean().item(),
                                 "reward": float(batch.rewards.mean())})

    def state_dict(self) -> dict:
        return {"collections": self.collections, "old": None if self.old is None else [t.cpu() for t in self.old]}

    def load_state_dict(self, state: dict) -> None:
        self.collections, self.old = state["collections"], state["old"]
