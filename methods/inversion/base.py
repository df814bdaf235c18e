"""The contract of an inversion sampler, and the DDIM map they share.

An inverter walks a latent up a path of noise levels, `levels` of shape (K+1,) or (K+1, B), float64 values
of the denoiser's timestep (integer DDPM timesteps on the VP schedule, 1000·σ on a flow schedule), with
levels[0] the start (a negative level is the clean end of the chain, see `Backbone.noise_levels`), and
a sampler walks it back down. Per-sample paths let InPO invert every pair to its own t in one batch;
a step whose level does not change is skipped without evaluating the model (`walk`).

DDIM map to level k (Song et al. 2021, Eq. 12 with η = 0) from the denoised pair (x̂0, ε̂) of a latent z at
level j, z = a_j x̂0 + s_j ε̂, with (a, s) = `Backbone.noise_levels` in float64 coefficients:

    z_k = a_k x̂0 + s_k ε̂                                                          (`ddim_step`)

(a = √ᾱ, s = √(1 − ᾱ) on the VP schedule; a = 1 − σ, s = σ on a flow schedule, where it is the Euler step
z + (σ_k − σ_j) u of the velocity u = ε̂ − x̂0). A sampling step takes the pair from the model at z's own level,
`Backbone.denoise(z, j)` (`denoising_step`), which never divides by a_j (0 at σ = 1, a flow schedule's first level).
An inversion step evaluates ε̂ elsewhere (DDIM's target level, say); z's pair is then x̂0 = (z − s_j ε̂) / a_j:

    Φ_{j→k}(z, ε) = a_k (z − s_j ε) / a_j + s_k ε                                  (`ddim_map`)

which needs a_j > 0, as holds at the source of every inversion step (it lies below the top of the path).

`TwoStepSampler` is the mechanism BDIA and O-BELM share: an exact linear two-step update whose
forward and inverse use the same float64 coefficients, with the pair of latents as the state.

A sampler declares the noise schedules it is defined on (`schedules`, as an alignment method does): the solvers of
the flow ODE dx/dσ = u(x, σ) in σ (`FlowODESampler`: Euler, RF-Solver, FireFlow; RF-Inversion) are flow-only and
refuse a VP backbone in one line (`check_schedule`); they read the velocity u = ε̂ − x̂0 of `Backbone.prediction` in
the "flow" space at model level 1000 σ (the clean end at σ = 0, `flow_velocity`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from bench.core.backbone import Backbone, Conditioning
from bench.core.registry import Registry
from bench.core.schedules import SCHEDULES, check_declared_schedules, require_schedule

SAMPLERS: Registry[type[InversionSampler]] = Registry("sampler", entry_point_group="diffusion_align_bench.samplers")
@dataclass(frozen=True)
class StoredSize:
    """What an inversion keeps for its reconstruction, per image, in latents (C·h·w numbers each):
    `fixed` + `per_step` · N for a path of N steps."""

    fixed: float
    per_step: float
    steps: int

    @property
    def total(self) -> float:
        return self.fixed + self.per_step * self.steps


@dataclass
class InversionState:
    """What `invert` hands to `reconstruct`: the last latent, the path, and whatever else the sampler
    keeps in `extra`, each entry either per sample (B, ...) or, if named in `per_step`, per step of
    the path (K, B, ...), step axis first."""

    latents: torch.Tensor  # (B, C, h, w) at the last level of the path
    levels: torch.Tensor  # (K+1, B) the path walked
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # e.g. a second latent, noise maps
    per_step: tuple[str, ...] = ()  # the entries of `extra` with a leading step axis (K, B, ...)

    def stored_size(self) -> StoredSize:
        """The latents and `extra` tensors, per image, counted in latents (numbers / (C·h·w)); the
        per-step entries make the part that grows with the steps. The level path (K+1 levels per
        image) is bookkeeping and not counted. Checks each entry's leading axes against its kind."""
        batch, steps, latent = self.latents.shape[0], self.levels.shape[0] - 1, self.latents[0].numel()
        if unknown := set(self.per_step) - set(self.extra):
            raise ValueError(f"per_step names {sorted(unknown)}, which are not in extra ({sorted(self.extra)})")
        fixed, per_step = 1.0, 0.0  # the last latent
        for name, tensor in self.extra.items():
            lead = (steps, batch) if name in self.per_step else (batch,)
            if tuple(tensor.shape[:len(lead)]) != lead:
                kind = "(K, B, ...) per step" if name in self.per_step else "(B, ...) per sample"
                raise ValueError(f"extra[{name!r}] has shape {tuple(tensor.shape)}, not {kind} with K = {steps}, "
                                 f"B = {batch}")
            if name in self.per_step:
                per_step += tensor.numel() / (steps * batch * latent)
            else:
                fixed += tensor.numel() / (batch * latent)
        return StoredSize(fixed, per_step, steps)


class InversionSampler(ABC):
    """A sampler's settings are its `Config`, a frozen dataclass beside it whose fields carry their help text
    (`bench list NAME`) and the paper's defaults, validated on construction. `cls()` uses the defaults and
    `cls(config)` anything else, so every caller (`bench invert --sampler-arg NAME.FIELD=VALUE`, InPO's
    `inversion_args`) configures every sampler the same way.

    A sampler declares its name, Config and what it is (`exact`, `stochastic`, `max_steps`; the defaults below) as
    class keywords, which set those class attributes; a class given `name` is registered in `SAMPLERS`:

        class EDICT(InversionSampler, name="edict", config=EDICTConfig, exact=True):

    A subclass without `name` (a shared base such as `TwoStepSampler`) is not registered, and its subclasses inherit
    what it sets; an unknown keyword is a TypeError."""

    name: ClassVar[str]
    Config: ClassVar[type]
    # What a sampler is, declared where it holds (the tests measure it): exact, reconstruct(invert(x)) == x up to
    # floating point; stochastic, invert draws noise from `rng`, so the inverted latent is not a function of x0 alone.
    exact: ClassVar[bool] = False
    stochastic: ClassVar[bool] = False
    max_steps: ClassVar[int | None] = None  # the most sampling steps the method is defined for (None: any)
    # The noise schedules it is defined on (as `AlignmentMethod.schedules`): ("flow",) for a solver of the flow ODE
    # dx/dσ = u(x, σ) in σ itself (Euler, RF-Solver, FireFlow, RF-Inversion), which refuses a VP backbone in one line
    schedules: ClassVar[tuple[str, ...]] = SCHEDULES

    def __init_subclass__(cls, **keywords):
        super().__init_subclass__()
        SAMPLERS.declare(cls, keywords, ("name", "Config", "exact", "stochastic", "max_steps", "schedules"),
                         check=check_declared_schedules)

    @classmethod
    def check_schedule(cls, native_space: str) -> None:
        """ValueError (one line) unless the sampler is defined on the schedule of a backbone with this native space
        (`Backbone.native_space`): a capability, as `AlignmentMethod.check_schedule`."""
        require_schedule(cls.name, "inverts", cls.schedules, native_space)

    def __init__(self, config=None):
        self.config = config if config is not None else self.Config()
        if not isinstance(self.config, self.Config):
            raise TypeError(f"{self.name} takes its Config ({self.Config.__name__}), got {self.config!r}")

    @property
    def inversion_calls_per_step(self) -> int:
        """Sequential model calls per inversion step at guidance 1 (the budget's worst case per latent)."""
        return 1

    def inversion_calls(self, steps: int) -> int:
        """Sequential model calls of one latent's inversion along a path of `steps` steps at guidance 1: `steps` ·
        `inversion_calls_per_step` unless the sampler shares calls between steps (FireFlow: steps + 1)."""
        return steps * self.inversion_calls_per_step

    @abstractmethod
    def invert(self, backbone: Backbone, x0: torch.Tensor, cond: Conditioning, levels: torch.Tensor,
               guidance: float = 1.0, rng: torch.Generator | None = None) -> InversionState:
        """Walk x0 (B, C, h, w) up `levels`."""

    @abstractmethod
    def reconstruct(self, backbone: Backbone, state: InversionState, cond: Conditioning,
                    guidance: float = 1.0) -> torch.Tensor:
        """Walk the state back down its path; returns latents at levels[0]."""


@dataclass(frozen=True)
class NoSettings:
    """The Config of a sampler that has no settings."""


def per_sample_levels(levels: torch.Tensor, batch: int) -> torch.Tensor:
    """(K+1,) or (K+1, B) -> (K+1, B) float64 levels, checked: K >= 1 and every path non-decreasing."""
    levels = torch.as_tensor(levels, dtype=torch.float64)
    if levels.ndim not in (1, 2) or levels.shape[0] < 2:
        raise ValueError(f"levels must be (K+1,) or (K+1, B) with K >= 1 steps, got shape {tuple(levels.shape)}")
    levels = levels[:, None].expand(-1, batch) if levels.ndim == 1 else levels
    if levels.shape[1] != batch:
        raise ValueError(f"levels has {levels.shape[1]} paths for a batch of {batch}")
    if (levels[1:] < levels[:-1]).any():
        raise ValueError("levels must be non-decreasing along each path (clean end first)")
    return levels


def walk(levels: torch.Tensor, down: bool = False,
         skip: torch.Tensor | None = None) -> Iterator[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The steps of the paths `levels` (K+1, B), up (i = 0 ... K−1) or down (i = K−1 ... 0).

    Yields (i, active, src, dst) for step i between levels[i] and levels[i+1]: `active` (n,) the
    samples whose level changes there (and are not masked by `skip` (K, B)), src and dst (n,) their
    levels. Steps where no sample moves are not yielded.
    """
    order = range(len(levels) - 2, -1, -1) if down else range(len(levels) - 1)
    for i in order:
        lo, hi = levels[i], levels[i + 1]
        moves = hi != lo if skip is None else (hi != lo) & ~skip[i]
        active = moves.nonzero().flatten()
        if len(active):
            yield (i, active, hi[active], lo[active]) if down else (i, active, lo[active], hi[active])


def steps_above(levels: torch.Tensor) -> torch.Tensor:
    """(K, B): how many level changes lie above step i on each path, i.e. the step's index in a
    sampling loop that starts at the top (0 = the first sampling step)."""
    changes = (levels[1:] != levels[:-1]).long()  # (K, B)
    return changes.flip(0).cumsum(0).flip(0) - changes


def as_latent_scale(coefficient: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(n,) float64 -> (n, 1, 1, 1) in the dtype and device of `like`."""
    return coefficient.view(-1, *([1] * (like.ndim - 1))).to(like)


def ddim_step(backbone: Backbone, x0_hat: torch.Tensor, eps_hat: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """The DDIM map a_dst x̂0 + s_dst ε̂ (module docstring) of a denoised pair (n, C, h, w) to levels dst (n,)."""
    return backbone.add_noise(x0_hat, eps_hat, dst)


def denoising_step(backbone: Backbone, z: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, cond: Conditioning,
                   guidance: float = 1.0, uncond: Conditioning | None = None) -> torch.Tensor:
    """One deterministic DDIM sampling step of z (n, C, h, w) from levels src to dst (n,), or one level each:
    `ddim_step` of the pair `Backbone.denoise(z, src)`; on a flow schedule the Euler step z + (σ_dst − σ_src) u."""
    return ddim_step(backbone, *backbone.denoise(z, src, cond, guidance, uncond), dst)


def ddim_map(backbone: Backbone, z: torch.Tensor, eps: torch.Tensor, src: torch.Tensor,
             dst: torch.Tensor) -> torch.Tensor:
    """Φ_{src→dst}(z, ε) with per-sample levels src, dst (B,): the DDIM map of z's pair x̂0 = (z − s_src ε) / a_src,
    for an ε evaluated at another level than src (an inversion step); a_src > 0 (module docstring)."""
    a_src, s_src = backbone.coefficients(src, z)
    return ddim_step(backbone, (z - s_src * eps) / a_src, eps, dst)


def ddim_coefficients(backbone: Backbone, src: torch.Tensor, dst: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Φ_{src→dst}(z, ε) = c_z z + c_ε ε: (c_z, c_ε) = (a_dst / a_src, s_dst − a_dst s_src / a_src), float64 (n,);
    a_src > 0, as for `ddim_map`."""
    (a_src, s_src), (a_dst, s_dst) = backbone.noise_levels(src), backbone.noise_levels(dst)
    c_z = a_dst / a_src
    return c_z, s_dst - c_z * s_src


def ddpm_variance(backbone: Backbone, hi: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
    """σ² of the posterior q(x_lo | x_hi, x_0) from level hi down to lo, float64 (n,), for x_t = a_t x_0 + s_t ε:
    s_lo² / s_hi² · (s_hi² − (a_hi / a_lo)² s_lo²) (Kingma et al. 2021, VDM eq. 29, with α_{hi|lo} = a_hi / a_lo);
    on a variance-preserving schedule (a² = ᾱ, s² = 1 − ᾱ) it is DDPM's (1 − ᾱ_lo)/(1 − ᾱ_hi) · (1 − ᾱ_hi/ᾱ_lo)
    (Ho et al. 2020, Eq. 7)."""
    (a_hi, s_hi), (a_lo, s_lo) = backbone.noise_levels(hi), backbone.noise_levels(lo)
    return s_lo**2 / s_hi**2 * (s_hi**2 - (a_hi / a_lo) ** 2 * s_lo**2)


def sampling_levels(backbone: Backbone, steps: int) -> torch.Tensor:
    """[clean, t_N, ..., t_1] ascending, float64: the levels a `steps`-step DDIM sampler visits, reversed
    (for SD at 50 steps: -1, 1, 21, ..., 981)."""
    return torch.cat([torch.tensor([-1.0], dtype=torch.float64), backbone.timesteps(steps).flip(0)])


StepCoefficients = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (c_hi, c_mid, c_ε), each float64 (n,)


class TwoStepSampler(InversionSampler, exact=True):
    """An exact two-step sampler (BDIA, O-BELM): from the latents z_hi, z_mid at levels hi > mid,

        sampling   z_lo = c_hi z_hi + c_mid z_mid + c_ε ε̂(z_mid, mid)
        inversion  z_hi = (z_lo − c_mid z_mid − c_ε ε̂(z_mid, mid)) / c_hi

    with the same float64 coefficients both ways, so the round trip is exact up to rounding (which
    the inverse amplifies by 1/c_hi per step). The first step of a path has no partner latent and is
    a DDIM step (inversion: ε at the target level, as DDIM inversion). The state is therefore the pair
    (z_K, z_{K−1}) (`extra["previous"]`); reconstruction from the pair never evaluates the top level.
    Without `previous` (sampling from z_K alone) the first sampling step is DDIM, which is not exact.
    A path of a single step is one DDIM step whose pair holds x0 itself. A step whose c_hi is 0 (O-BELM from the top
    of a flow schedule, where σ̄ = s/a is infinite) does not depend on z_hi, so no inversion step reaches z_hi:
    `invert` refuses it.
    """

    @abstractmethod
    def coefficients(self, backbone: Backbone, lo: torch.Tensor, mid: torch.Tensor, hi: torch.Tensor) -> StepCoefficients:
        """(c_hi, c_mid, c_ε), each float64 (n,), of the sampling step to level lo from hi > mid > lo."""

    @torch.no_grad()
    def invert(self, backbone: Backbone, x0: torch.Tensor, cond: Conditioning, levels: torch.Tensor,
               guidance: float = 1.0, rng: torch.Generator | None = None) -> InversionState:
        levels = per_sample_levels(levels, x0.shape[0])  # (K+1, B)
        changes = levels[1:] != levels[:-1]
        first = changes & (changes.cumsum(0) == 1)  # (K, B) the first step of each path
        z, below, below_level = x0.clone(), x0.clone(), levels[0].clone()  # z and its partner one level down
        for i, active, src, dst in walk(levels):
            zs, ddim = z[active], first[i, active]  # ddim: rows taking their first step
            eps = backbone.eps(zs, torch.where(ddim, dst, src), cond[active], guidance)
            new = torch.empty_like(zs)
            new[ddim] = ddim_map(backbone, zs[ddim], eps[ddim], src[ddim], dst[ddim])
            two, rows = ~ddim, active[~ddim]
            coefficients = self.coefficients(backbone, below_level[rows], src[two], dst[two])  # float64 (n,) each
            if (coefficients[0] == 0).any():
                level = dst[two][coefficients[0] == 0][0].item()
                raise ValueError(f"{self.name} cannot invert to level {level:g}: its sampling step from there gives the "
                                 "latent at that level weight 0, so no inversion step reaches it; invert to a lower level")
            c_hi, c_mid, c_eps = (as_latent_scale(c, zs) for c in coefficients)
            new[two] = (below[rows] - c_mid * zs[two] - c_eps * eps[two]) / c_hi
            below[active], below_level[active] = zs, src
            z[active] = new
        return InversionState(z, levels, {"previous": below})

    @torch.no_grad()
    def reconstruct(self, backbone: Backbone, state: InversionState, cond: Conditioning,
                    guidance: float = 1.0) -> torch.Tensor:
        levels = state.levels
        changes = levels[1:] != levels[:-1]
        top = changes & (steps_above(levels) == 0)  # (K, B) the last step of each path
        above, above_level = state.latents.clone(), levels[-1].clone()  # the partner one level up
        previous = state.extra.get("previous")
        z = state.latents.clone() if previous is None else previous.clone()
        for i, active, src, dst in walk(levels, down=True, skip=None if previous is None else top):
            zs, ddim = z[active], top[i, active]  # ddim: rows taking their first step (only without the pair)
            x0_hat, eps = backbone.denoise(zs, src, cond[active], guidance)
            new = torch.empty_like(zs)
            new[ddim] = ddim_step(backbone, x0_hat[ddim], eps[ddim], dst[ddim])
            two, rows = ~ddim, active[~ddim]
            coefficients = self.coefficients(backbone, dst[two], src[two], above_level[rows])  # float64 (n,) each
            c_hi, c_mid, c_eps = (as_latent_scale(c, zs) for c in coefficients)
            new[two] = c_hi * above[rows] + c_mid * zs[two] + c_eps * eps[two]
            above[active], above_level[active] = zs, src
            z[active] = new
        return z


# ----------------------------------------------------------------------------------------------- flow ODE solvers
# The solvers of the flow ODE dx/dσ = u(x, σ) in σ itself (rectified flow, SD3/FLUX: x_σ = (1 − σ) x0 + σ ε and
# u = ε − x0; inversion integrates σ upward from 0, sampling downward from 1). Their steps read the velocity of
# `Backbone.prediction` in the "flow" space, guided in u (as StableDiffusion3Pipeline), at model level 1000 σ.


def flow_model_levels(levels: torch.Tensor) -> torch.Tensor:
    """The denoiser levels (n,) float64 of path levels on a flow schedule: 1000 σ, the clean end (−1) at σ = 0, where
    the flow solvers' reference code evaluates the velocity (their inversions start with u(x0, 0))."""
    return levels.clamp(min=0)


def flow_velocity(backbone: Backbone, z: torch.Tensor, levels: torch.Tensor, cond: Conditioning,
                  guidance: float = 1.0) -> torch.Tensor:
    """u(z, σ) (n, C, h, w) at path levels (n,) on a flow backbone, classifier-free guided in u when w ≠ 1."""
    return backbone.prediction(z, flow_model_levels(levels), cond, "flow", guidance)


def flow_sigmas(backbone: Backbone, levels: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """σ at path levels (n,), shaped (n, 1, 1, 1) in the dtype of `like` (the clean end is σ = 0)."""
    return as_latent_scale(backbone.sigmas(levels), like)


class FlowODESampler(InversionSampler, schedules=("flow",)):
    """A one-step solver of the flow ODE run up the path to invert and down it to reconstruct, the same `step` both
    ways (as RF-Solver-Edit and FireFlow run one `denoise` loop with the timesteps reversed for inversion); the state
    is the last latent alone. `step` gets the velocity at its start, evaluated here, or, for rows where the previous
    step handed one on (FireFlow's reuse), that one instead; walking down starts afresh."""

    @abstractmethod
    def step(self, backbone: Backbone, z: torch.Tensor, velocity: torch.Tensor, src: torch.Tensor, dst: torch.Tensor,
             cond: Conditioning, guidance: float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """z (n, C, h, w) at levels src to levels dst (n,), either direction, from `velocity` u(z, src); returns z at
        dst and the velocity the next step may start from (None: the next step evaluates its own)."""

    @torch.no_grad()
    def integrate(self, backbone: Backbone, z: torch.Tensor, levels: torch.Tensor, cond: Conditioning,
                  guidance: float = 1.0, down: bool = False) -> torch.Tensor:
        """Walk z (B, C, h, w) along the paths `levels` (K+1, B), up (inversion) or down (sampling)."""
        self.check_schedule(backbone.native_space)
        z = z.clone()
        handed, has_handed = torch.zeros_like(z), torch.zeros(z.shape[0], dtype=torch.bool, device=z.device)
        for _, active, src, dst in walk(levels, down=down):
            zs, velocity = z[active], handed[active].clone()
            fresh = ~has_handed[active]  # rows whose starting velocity the model gives
            if fresh.any():
                velocity[fresh] = flow_velocity(backbone, zs[fresh], src[fresh], cond[active[fresh]], guidance)
            z[active], next_velocity = self.step(backbone, zs, velocity, src, dst, cond[active], guidance)
            if next_velocity is not None:
                handed[active], has_handed[active] = next_velocity, True
        return z

    def invert(self, backbone: Backbone, x0: torch.Tensor, cond: Conditioning, levels: torch.Tensor,
               guidance: float = 1.0, rng: torch.Generator | None = None) -> InversionState:
        levels = per_sample_levels(levels, x0.shape[0])  # (K+1, B)
        return InversionState(self.integrate(backbone, x0, levels, cond, guidance), levels)

    def reconstruct(self, backbone: Backbone, state: InversionState, cond: Conditioning,
                    guidance: float = 1.0) -> torch.Tensor:
        return self.integrate(backbone, state.latents, state.levels, cond, guidance, down=True)
