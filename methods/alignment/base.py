"""The contract every alignment method implements, and the pieces they share.

A method declares the data it trains on (`pairs`: winner/loser latents of one prompt; `binary`:
single images labelled desirable or not; `images`: preferred images only), whether it needs the
frozen reference model, a typed config with its paper's defaults, and its worst-case NFE per training
item (a pair for `pairs`, an image otherwise), which the budget meter uses to stop a run before it
crosses its limit. `loss(batch, policy, reference, rng)` returns the loss and scalar logs.

Every loss is a function of per-sample errors in one prediction space (`bench.core.backbone.SPACES`),

    L = mean over (C, H, W) of (ŷ_θ(x_t, t, c) − y)²,     y = ε, v = a_t ε − s_t x0, x0, or u = ε − x0,

chosen by the config's `loss_space` (`MethodConfig`): "native" (the default) is the space the backbone
predicts in, what it was pretrained to regress (ε for SD 1.5 and SDXL, so there every loss is exactly
its paper's; v for the toy; the velocity u = ε − x0 for the SD3-shaped flow family, as Flow-DPO's loss,
research notes §7), or an explicit "eps", "v", "x0" or "flow". Spaces weigh the timesteps differently:
ε̂ − ε = a_t (v̂ − v) on a VP schedule and ε̂ − ε = a_t (û − u) on a flow one (ε̂ = x_t + a_t û, a_t = 1 − σ),
so ‖ŷ − y‖² = ‖ε̂ − ε‖² / a_t² in v- and flow-space (1/ᾱ_t, 1/(1 − σ)²), and a β tuned in ε-space acts
1/a_t² times as strongly per t there. `AlignmentMethod.loss_space(backbone)` resolves "native", and run
records store the resolved space (`describe(native_space)`). Methods never branch on the model family: the
backbone converts, and every loss reads the same on both families.

Noise levels. Training levels come from `Backbone.training_levels`, uniform over the family's training table
(`sample_levels`): on VP t ~ U{0, ..., T−1}, Diffusion-DPO's draw (`train.py` L1044) and, bit for bit, the draw
made here before the flow family; on a flow schedule the scheduler's T training timesteps 1000·σ_j, shifted
(σ_j = s·u / (1 + (s − 1)·u), u = j/T, j = 1, ..., T, shift s = 3 on SD3.5), each with probability 1/T: diffusers' SD3 training
draw with `weighting_scheme="none"` (`noise_scheduler.timesteps[(u·T).long()]`, u ~ U[0, 1)). Flow-DPO draws the
table index from a logit-normal u instead (SD3's default, `compute_density_for_timestep_sampling("logit_normal")`,
research notes §7). The backbone does not offer that draw, and we keep uniform: it is the offline methods' own
recipe (Diffusion-DPO and the methods forked from it, InPO and DSPO, draw t uniformly over the training table)
carried to the flow schedule, with its shift as the one flow-specific choice, whereas Flow-DPO is an online method
whose paper form we have not read (§7, UNVERIFIED).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import torch

from bench.core.backbone import SPACES, Backbone, Conditioning
from bench.core.config import EvalConfig
from bench.core.registry import Registry
from bench.core.schedules import SCHEDULES, check_declared_schedules, require_schedule
from methods.checks import require
from methods.shards import sample_levels, sample_noise

METHODS: Registry[type[AlignmentMethod]] = Registry("method", entry_point_group="diffusion_align_bench.methods")

DATA_KINDS = ("pairs", "binary", "images", "prompts")  # prompts: an online method samples its own images
NATIVE = "native"  # loss_space: the backbone's own prediction space
LOSS_SPACES = (NATIVE, *SPACES)


@dataclass
class MethodConfig:
    """What every method's Config shares: subclass it (and call `super().__post_init__()` from a
    `__post_init__` of your own)."""

    loss_space: str = field(default=NATIVE, kw_only=True, metadata={
        "help": "prediction space of the loss: 'native' (the backbone's own: ε for SD 1.5/SDXL, v for the toy, the "
                "velocity ε − x0 for SD3), 'eps', 'v', 'x0' or 'flow'"})

    def __post_init__(self):
        require(self.loss_space in LOSS_SPACES, "loss_space", f"one of {LOSS_SPACES}", self.loss_space)


def _check_data_kind(cls: type[AlignmentMethod]) -> None:
    if getattr(cls, "data_kind", None) not in DATA_KINDS:
        raise ValueError(f"{cls.__name__}.data_kind must be one of {DATA_KINDS}")
    check_declared_schedules(cls)


def resolve_loss_space(loss_space: str, native_space: str) -> str:
    """A config's `loss_space` with "native" replaced by the backbone's `native_space`."""
    return native_space if loss_space == NATIVE else loss_space


@dataclass
class PairBatch:
    winner: torch.Tensor  # (B, C, h, w) latents of the preferred images
    loser: torch.Tensor  # (B, C, h, w)
    cond: Conditioning  # (B,) the shared prompt of each pair (after prompt dropout)

    def __len__(self) -> int:
        return self.winner.shape[0]


@dataclass
class ImageBatch:
    latents: torch.Tensor  # (B, C, h, w)
    cond: Conditioning  # (B,)
    desirable: torch.Tensor  # (B,) bool

    def __len__(self) -> int:
        return self.latents.shape[0]


@dataclass(frozen=True)
class GradedForward:
    """What one item of a micro-batch holds for its loss's backward, as the dry run prices activations
    (`bench.harness.dryrun`): `graphs` denoiser forwards of `latents` latents each alive together (classifier-free
    guidance's cond and uncond branches run as one call of twice the latents, and count), and `decoded` images decoded
    by the VAE with gradients."""

    latents: int
    graphs: int = 1
    decoded: int = 0


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, differentiable w.r.t. the policy
    logs: dict[str, float] = field(default_factory=dict)


class AlignmentMethod(ABC):
    """A method declares its name, data kind, need of the reference model, Config and (if not "offline") `kind` as
    class keywords, which set the class attributes below; a class given `name` is registered in `METHODS`:

        class DPO(AlignmentMethod, name="dpo", data_kind="pairs", needs_reference=True, config=DPOConfig):

    A subclass without `name` (a base several methods share) is not registered, and its subclasses inherit what it
    sets; an unknown keyword is a TypeError."""

    name: ClassVar[str]
    data_kind: ClassVar[str]
    needs_reference: ClassVar[bool]
    Config: ClassVar[type]
    kind: ClassVar[str] = "offline"  # how it uses data: "offline" (a fixed dataset), "online" (its own rollouts) or
    # "inference-time" (compute spent per evaluated image); the leaderboard page filters on it
    schedules: ClassVar[tuple[str, ...]] = SCHEDULES  # what it trains on; ("flow",): flow-matching models only

    def __init_subclass__(cls, **keywords):
        super().__init_subclass__()
        METHODS.declare(cls, keywords, ("name", "data_kind", "needs_reference", "Config", "kind", "schedules"),
                        check=_check_data_kind)

    def check_schedule(self, native_space: str) -> None:
        """ValueError (one line) unless the method, as configured, trains on the schedule of a backbone with this
        native space (its class's `schedules`; a method may add what its settings need): a capability, checked when a
        run is planned and again by the Trainer."""
        require_schedule(self.name, "trains", self.schedules, native_space)

    def __init__(self, config=None):
        self.config = config if config is not None else self.Config()

    @abstractmethod
    def loss(self, batch, policy: Backbone, reference: Backbone | None, rng: torch.Generator) -> LossOutput:
        """The method's loss on one batch; `rng` draws every random quantity (t, ε, ...)."""

    @abstractmethod
    def max_nfe_per_item(self, embedded_guidance: bool = False) -> int:
        """Worst-case NFE per training item (pair or image), a backward counting as 2. `embedded_guidance`: the backbone
        takes the guidance scale as an input (`Backbone.embeds_guidance`, FLUX.1-dev), so a guided forward is one
        latent's evaluation, not classifier-free guidance's two (`OnlineMethod.guided_branches`); a method whose
        forwards are unguided (every offline one) ignores it."""

    def graded_forward(self, embedded_guidance: bool = False) -> GradedForward:
        """Per item, what its loss holds for the backward (`GradedForward`): by default one forward of the item's
        images (a pair's two). `embedded_guidance`: the backbone takes the guidance scale as an input (FLUX), so a
        guided prediction is one branch."""
        return GradedForward(2 if self.data_kind == "pairs" else 1)

    def loss_space(self, backbone: Backbone) -> str:
        """The prediction space this method's loss uses on `backbone` ("eps", "v" or "x0")."""
        return resolve_loss_space(self.config.loss_space, backbone.native_space)

    def describe(self, native_space: str | None = None) -> dict:
        """The configuration as recorded in run records, with any default resolved: `loss_space` "native"
        becomes `native_space` (the backbone's, e.g. "v") when it is given."""
        described = dataclasses.asdict(self.config)
        if native_space is not None and "loss_space" in described:
            described["loss_space"] = resolve_loss_space(self.config.loss_space, native_space)
        return described

    def sampling_weights(self, desirable: torch.Tensor) -> torch.Tensor | None:
        """For `binary` data: relative probability of drawing each image, or None for uniform."""
        return None

    def evaluation(self, suite: EvalConfig) -> EvalConfig:
        """How the trained policy is sampled when it is evaluated: the suite's sampler settings, unless the method
        defines its own (a CFG-free method, `diffusionnft`). The base model is always sampled as the suite says, so
        Δ vs base compares the method, sampled as its paper samples it, with the base model as the suite samples it."""
        return suite


class Reward(Protocol):
    """What an online method maximises: a score per image (B,) of decoded images (B, 3, H, W) in [0, 1] with their
    prompts; `differentiable` says whether gradients flow from the score to the pixels (reward backpropagation
    needs it). Built by the harness from the scorers (`bench run --reward`)."""

    name: str
    differentiable: bool

    def __call__(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor: ...


def require_differentiable(reward: Reward, method: str) -> None:
    """For methods that backpropagate through the reward (draft, doodl): ValueError, naming the scorers that stop
    gradients (or the reward), unless `reward` is differentiable."""
    if getattr(reward, "differentiable", False):
        return
    names = reward.non_differentiable() if hasattr(reward, "non_differentiable") else []
    names = names or [getattr(reward, "name", type(reward).__name__)]
    verb = "is" if len(names) == 1 else "are"
    raise ValueError(f"{method} needs a differentiable reward; {', '.join(names)} {verb} not "
                     "(use a differentiable scorer such as toy-pickscore)")


@dataclass
class PromptBatch:
    """What an online method (data kind `prompts`) samples for: prompts of the training data and the reward."""

    cond: Conditioning  # (B,) text conditioning
    prompts: list[str]  # (B,)
    prompt_ids: torch.Tensor  # (B,) index of each prompt in the training prompts (the groups of group statistics)
    reward: Reward

    def __len__(self) -> int:
        return len(self.prompts)


class OnlineMethod(AlignmentMethod, data_kind="prompts", kind="online"):
    """A method that trains on its own samples: `collect` samples the policy for a batch of prompts, scores the
    samples with the reward and returns the experience as micro-batches in training order; the trainer passes each
    micro-batch to `loss` (under `accumulation()` gradient-accumulation steps per micro-batch of the optimizer step:
    e.g. one per trained timestep, as DDPO accumulates over timesteps) and collects again when they are used up.
    An item is a prompt: `max_nfe_per_item` is the worst case per prompt of an optimizer step, a collection (all its
    samples' rollouts) included, each guided forward counted as `guided_branches` latents."""

    @abstractmethod
    def collect(self, policy: Backbone, batch: PromptBatch, rng: torch.Generator) -> list:
        """Sample, score and turn into micro-batches for `loss` (without gradients)."""

    def accumulation(self) -> int:
        """Micro-batches (of `collect`'s) per item batch of an optimizer step, accumulated into one update."""
        return 1

    def samples_per_prompt(self) -> int:
        """Images a collection samples (and scores) per prompt."""
        return 1

    def guidance_factor(self) -> int:
        """Denoiser evaluations per latent of a guided prediction in its rollouts: 2 with classifier-free guidance, 1
        without (its config's `guidance_factor`, where the config has one)."""
        factor = getattr(self.config, "guidance_factor", None)
        return factor() if factor is not None else 1

    def guided_branches(self, embedded_guidance: bool) -> int:
        """Latents per sample in a guided forward: `guidance_factor`, or 1 where the backbone takes the guidance scale
        as an input (FLUX)."""
        return 1 if embedded_guidance else self.guidance_factor()

    def graded_forward(self, embedded_guidance: bool = False) -> GradedForward:
        """By default one forward of every sample of a prompt at one step, guided as its rollouts are."""
        return GradedForward(self.samples_per_prompt() * self.guided_branches(embedded_guidance))

    def check_reward(self, reward: Reward) -> None:
        """ValueError (one line) if this method cannot train on `reward` (e.g. reward backpropagation on a reward
        without gradients); the harness asks before any work."""

    def state_dict(self) -> dict:
        """State the method carries across collections (e.g. DDPO's per-prompt reward statistics), checkpointed with
        the run; none by default."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict`."""


@dataclass
class NoisyLatents:
    """Latents at noise levels t, and what a model's prediction there is regressed on, in the loss space."""

    x_t: torch.Tensor  # (N, C, h, w)
    t: torch.Tensor  # (N,)
    cond: Conditioning  # (N,)
    target: torch.Tensor  # (N, C, h, w) y in `space`: ε, v = a_t ε − s_t x0, or x0 (`Backbone.target`)
    space: str

    def error(self, backbone: Backbone, cond: Conditioning | None = None) -> torch.Tensor:
        """Per-sample error of `backbone` against the target (`prediction_mse`), (N,); `cond` replaces the
        latents' own conditioning."""
        return prediction_mse(backbone, self.x_t, self.t, self.cond if cond is None else cond, self.target, self.space)


def noise_images(backbone: Backbone, batch: ImageBatch, space: str, rng: torch.Generator) -> NoisyLatents:
    """Noise every image with its own level t (`sample_levels`) and ε (drawn after t)."""
    t = sample_levels(backbone, len(batch), rng)  # (B,)
    noise = sample_noise(batch.latents, rng)  # (B, C, h, w)
    x_t = backbone.add_noise(batch.latents, noise, t)
    return NoisyLatents(x_t, t, batch.cond, backbone.target(batch.latents, noise, t, space), space)


def noise_pairs(backbone: Backbone, batch: PairBatch, space: str, rng: torch.Generator,
                t: torch.Tensor | None = None) -> NoisyLatents:
    """Stack winners and losers as [winners; losers] (2B, ...) and noise them with one (t, ε) shared within each
    pair, as Diffusion-DPO does (`train.py` L1044, L1054-1055) and Flow-DPO shares (σ, ε) (research notes §7). `t`
    (B,) defaults to `sample_levels`; ε is drawn after t."""
    t = (sample_levels(backbone, len(batch), rng) if t is None else t).repeat(2)
    noise = sample_noise(batch.winner, rng).repeat(2, 1, 1, 1)
    x0 = torch.cat([batch.winner, batch.loser])
    cond = Conditioning.cat([batch.cond, batch.cond])
    return NoisyLatents(backbone.add_noise(x0, noise, t), t, cond, backbone.target(x0, noise, t, space), space)


def prediction_mse(backbone: Backbone, x_t: torch.Tensor, t: torch.Tensor, cond: Conditioning, target: torch.Tensor,
                   space: str) -> torch.Tensor:
    """Per-sample error in `space`: mean over (C, H, W) of (ŷ(x_t, t, c) − y)², shape (B,), with ŷ the model's
    prediction converted to `space` and y = `target` already in it (`Backbone.target`)."""
    prediction = backbone.prediction(x_t, t.to(backbone.device), cond, space)
    return ((prediction.float() - target.float()) ** 2).mean(dim=(1, 2, 3))

