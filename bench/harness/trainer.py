"""One training loop for every alignment method, on accelerate.

The policy is a trainable copy of the base UNet (or LoRA adapters on it, below); the reference is the base UNet
itself, frozen (both share the Backbone's encoders, schedule and NFE counter). The policy's weights are float32 whatever the
base's storage (a half-precision base keeps its frozen UNet in half, as Diffusion-DPO's `train.py` keeps
its reference UNet in `weight_dtype`, so the policy starts from the half-rounded weights); the loss runs
under `mixed_precision`'s autocast, reference forwards included, so policy and reference compute alike
(`bench.harness.run` requires `mixed_precision` to equal a half-precision base's dtype). The trained policy is
returned in the base's dtype without the autocast wrapper, so the base model and every policy are
evaluated with the same arithmetic (in half precision, as the papers' fp16 inference: an update smaller
than half a unit in the last place of a weight does not survive). Per optimizer step: `grad_accum`
micro-batches drawn by `BatchSampler`, prompt dropout (the empty prompt replaces a pair's or image's
prompt with probability p), `method.loss`, backward, gradient clipping, AdamW, linear warmup.

LoRA (`lora_rank` r > 0; Hu et al. 2021, through peft, as Flow-GRPO's and DiffusionNFT's SD3 recipes: r 32, α 64,
"gaussian" init, the attention projections): the policy is the base denoiser with peft LoRA adapters on the Linear
layers `lora_targets` names, W x + (α / r) B A x, and only the adapters train (float32, the optimizer over them alone).
Where the adapters live: on a copy of the base denoiser's *modules* whose frozen weights are the base's own tensors
(`copy.deepcopy` with the parameters and buffers in its memo), so the frozen weights cost no memory and stay in the
base's dtype (no second float32 copy, as the recipes' single transformer), while peft's wrapping, train mode, gradient
checkpointing and accelerate's prepare (autocast wrapper, DDP) touch the copy only. The reference is `self.base`: the
same frozen tensors without the adapters, i.e. the denoiser with its adapters disabled (bit for bit what peft's
`disable_adapter` computes: a disabled LoRA layer is its base layer). Chosen over injecting into `self.base.unet` in
place because the base is shared by the run (its evaluation, other methods, probes, milestones' copies, checkpoints,
fingerprints): in place, its module tree, requires_grad flags, forward (accelerate's wrapper) and DDP would have to be
undone on every exit path; here `fit()` only restores the requires_grad flags peft cleared on the shared tensors. A
checkpoint holds the adapters only; milestones and `fit()` hand over a frozen copy of the base with the adapters merged
(W + (α / r) B A in the adapters' float32, then the base's dtype), evaluated as the base model is. Both A inits leave B = 0, so
training starts at the base (DPO's first loss is ln 2); the adapters are drawn from the run's seed.

The budget meter decides before each step whether it fits; every step's cost is measured (steps,
images, NFE from the Backbone's counter, seconds). A checkpoint (policy, optimizer, LR schedule,
sampler position, generator state, meter, history) is written atomically every `checkpoint_every`
steps and at the end; `fit()` continues from it, so a killed run resumes to the same numbers.

Nested budgets. Nothing in training depends on the budget's limit (the learning-rate schedule is a warmup in
steps, every draw comes from the seed), so a run trained to a larger limit of a counted unit (`NESTED_UNITS`)
passes through exactly the state in which a run with a smaller limit stops. `milestones` are such smaller limits:
before a step, once the next step no longer fits under a milestone, the trainer checkpoints, hands a frozen copy
of the policy with the usage, steps and history so far to `on_milestone` (as `fit()` would return them for that
budget) and trains on. The callback runs under a forked global RNG and on a copy of the weights, so whatever it
does (e.g. evaluate) leaves training as it was.
"""

from __future__ import annotations

import copy
import gc
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from transformers.optimization import Adafactor

from bench.core.backbone import Backbone
from bench.core.budget import Budget, BudgetMeter, Usage
from bench.core.config import LORA_INITS, TrainConfig, split_list
from bench.core.progress import progress_bar
from bench.core.records import atomic_output
from bench.harness.batches import BatchSampler, ExperienceSampler
from bench.harness.data import EncodedPreferences
from methods.alignment.base import AlignmentMethod, ImageBatch, OnlineMethod, PairBatch, Reward
from methods.shards import sample_uniform, sharded

log = logging.getLogger(__name__)

# Budget units in which a run trained to a larger limit passes through the state a smaller limit stops in: counted,
# so the same for every run of a seed. Time units are measured: a run stopped at 90 s need not stop where a longer
# run is at 90 s, so each of their limits trains on its own.
NESTED_UNITS = ("steps", "samples", "nfe")


@dataclass
class TrainResult:
    policy: Backbone
    usage: Usage
    steps: int
    history: list[dict] = field(default_factory=list)  # per-step logs


def declared_step_cost(method: AlignmentMethod, config: TrainConfig, unit: str, processes: int = 1, *,
                       embedded_guidance: bool = False) -> float:
    """A step's worst-case cost in `unit` from the method's declaration (time units: unknown, 0). `embedded_guidance`:
    the backbone takes the guidance scale as an input (`Backbone.embeds_guidance`, FLUX.1-dev), so a guided forward
    costs 1 NFE per latent, not CFG's 2 (`AlignmentMethod.max_nfe_per_item`)."""
    items = config.batch_size * config.grad_accum * processes
    images_per_item = (method.samples_per_prompt() if isinstance(method, OnlineMethod)
                       else 2 if method.data_kind == "pairs" else 1)
    return {"steps": 1, "samples": items * images_per_item,
            "nfe": items * method.max_nfe_per_item(embedded_guidance=embedded_guidance), "seconds": 0.0, "gpu-h": 0.0}[unit]


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, or Adafactor configured as Diffusion-DPO's SDXL recipe (fixed lr, no relative step)."""
    if cfg.optimizer == "adafactor":
        return Adafactor(params, lr=cfg.lr, weight_decay=cfg.weight_decay, clip_threshold=1.0, scale_parameter=False,
                         relative_step=False)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay)


LORA_ADAPTER = "default"  # peft's adapter name: parameters are `<layer>.lora_A.default.weight`, `.lora_B.`


def lora_config(cfg: TrainConfig) -> LoraConfig:
    """peft's LoraConfig of `cfg` (lora_rank > 0): rank r, α (None: r), the target names, the initialisation."""
    return LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha if cfg.lora_alpha is not None else cfg.lora_rank,
                      target_modules=split_list(cfg.lora_targets), init_lora_weights=LORA_INITS[cfg.lora_init],
                      lora_dropout=0.0, bias="none")


def lora_target_layers(denoiser: torch.nn.Module, targets: str) -> dict[str, torch.nn.Linear]:
    """The layers LoRA adapts in `denoiser`, by module name: each whose name is one of the comma-separated `targets`
    or ends with "." + one (peft's rule for a list of target_modules). A target the denoiser lacks (an SD3 name in a
    UNet) is skipped; ValueError if none matches or a match is not a Linear layer."""
    names = split_list(targets)
    layers = {name: module for name, module in denoiser.named_modules()
              if any(name == t or name.endswith(f".{t}") for t in names)}
    if not layers:
        raise ValueError(f"lora_targets {targets!r} match no module of the {type(denoiser).__name__}")
    for name, module in layers.items():
        if not isinstance(module, torch.nn.Linear):
            raise ValueError(f"lora_targets: {name} is a {type(module).__name__}; LoRA here adapts Linear layers")
    return layers


def lora_parameter_count(denoiser: torch.nn.Module, cfg: TrainConfig) -> int:
    """Adapter parameters LoRA of rank r adds: r (in + out) per adapted Linear layer (A is r x in, B out x r)."""
    return sum(cfg.lora_rank * (layer.in_features + layer.out_features)
               for layer in lora_target_layers(denoiser, cfg.lora_targets).values())


def lora_parameters(module: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The LoRA adapter weights of `module` by name (`...to_q.lora_A.default.weight`)."""
    return {name: p for name, p in module.named_parameters() if ".lora_A." in name or ".lora_B." in name}


def merged_lora_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapted layers' weights with their adapters merged, W + (α / r) B A, in the adapters' dtype, keyed as in the
    base denoiser's state dict (`...to_q.weight`)."""
    merged = {}
    for name, layer in module.named_modules():
        if isinstance(layer, LoraLayer):
            delta = layer.get_delta_weight(LORA_ADAPTER)  # (out, in), scaled by α / r
            merged[f"{name}.weight"] = layer.get_base_layer().weight.to(delta.dtype) + delta
    return merged


class Trainer:
    def __init__(self, method: AlignmentMethod, base: Backbone, data: EncodedPreferences, config: TrainConfig,
                 budget: Budget, *, seed: int = 0, checkpoint_path: str | os.PathLike | None = None,
                 progress: bool = True, callbacks: list[Callable[[int, dict], None]] | None = None,
                 milestones: Sequence[Budget] = (), on_milestone: Callable[[Budget, TrainResult], None] | None = None,
                 reward: Reward | None = None, probe_every: float = 0.0,
                 on_probe: Callable[[TrainResult], dict[str, float]] | None = None):
        """`callbacks(step, logs)` run after every step. `milestones`: smaller limits of the budget's unit (one of
        `NESTED_UNITS`) that training passes through; at each, `on_milestone(milestone, result)` receives what `fit()`
        would return had the budget been that milestone (see the module docstring). `reward`: what an online method
        (data kind `prompts`) maximises; it samples for the prompts of `data`. `on_probe(result)` runs after each
        step at which the NFE used crosses a multiple of `probe_every` (0: never), like `on_milestone` on a frozen copy
        under a forked RNG; the values it returns join that step's logs (the history: e.g. a reward curve)."""
        if isinstance(method, OnlineMethod) and reward is None:
            raise ValueError(f"{method.name} is an online method: it needs a reward to train on")
        method.check_schedule(base.native_space)  # e.g. a DDIM-step policy gradient on a flow model: one line, no NaN
        self.method, self.base, self.data, self.config, self.budget = method, base, data, config, budget
        self.reward = reward
        # micro-batches per optimizer step: grad_accum item batches, each `accumulation()` micro-batches for an
        # online method (e.g. one per trained timestep)
        self.micro_batches = config.grad_accum * (method.accumulation() if isinstance(method, OnlineMethod) else 1)
        self.seed = seed
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.progress = progress
        self.callbacks = callbacks or []
        for milestone in milestones:
            if milestone.unit != budget.unit or milestone.unit not in NESTED_UNITS or not milestone.limit < budget.limit:
                raise ValueError(f"milestone {milestone} does not nest in budget {budget}: a milestone is a smaller "
                                 f"limit in the budget's unit, one of {', '.join(NESTED_UNITS)}")
        if len(set(milestones)) != len(milestones):
            raise ValueError(f"a milestone is listed twice: {', '.join(map(str, milestones))}")
        self.milestones = sorted(milestones, key=lambda m: m.limit)
        self.on_milestone = on_milestone
        if probe_every < 0:
            raise ValueError(f"probe_every must be >= 0, got {probe_every}")
        self.probe_every, self.on_probe = probe_every, on_probe

    def _prompt_dropout(self, batch, rng: torch.Generator) -> None:
        if self.config.prompt_dropout == 0 or not isinstance(batch, PairBatch | ImageBatch):  # online: no dropout
            return
        drop = sample_uniform(len(batch), rng) < self.config.prompt_dropout
        batch.cond = batch.cond.where(drop.to(batch.cond.embeds.device), self.base.null_conditioning(len(batch)))

    def fit(self) -> TrainResult:
        cfg = self.config
        # a previous fit's policy, optimizer and accelerate's autocast wrapper (model.forward bound to the model) form
        # reference cycles that hold their device memory until collected: collect them before this run allocates
        gc.collect()
        # accelerate keeps one process-wide state; each method of a run may choose its own mixed precision
        # and accumulation, so start from a clean state (the process group, PartialState, is kept).
        AcceleratorState._reset_state(reset_partial_state=False)
        GradientState._reset_state()
        accelerator = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=self.micro_batches,
                                  cpu=self.base.device.type == "cpu")
        base_flags = [(p, p.requires_grad) for p in self.base.unet.parameters()]
        try:
            if cfg.lora_rank:
                unet = self._lora_policy()
            else:  # trainable weights in float32 (float64 for a float64 base), whatever the frozen base's storage
                unet = torch.nn.Module.to(copy.deepcopy(self.base.unet), self.base.latent_dtype).train().requires_grad_(True)
            if cfg.gradient_checkpointing:
                unet.enable_gradient_checkpointing()
            params = [p for p in unet.parameters() if p.requires_grad]
            optimizer = make_optimizer(params, cfg)
            warmup = max(cfg.warmup_steps, 1)
            schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
            unet, optimizer = accelerator.prepare(unet, optimizer)
            # training forwards that pass no guidance scale give a guidance-distilled denoiser (FLUX.1-dev) the
            # config's `train_guidance`, policy and reference alike; views, so the base evaluates as before
            policy = self.base.with_unet(unet).with_default_guidance(cfg.train_guidance)
            # with LoRA the base is the policy's denoiser with its adapters disabled: the same frozen tensors
            reference = self.base.with_default_guidance(cfg.train_guidance) if self.method.needs_reference else None

            with sharded(accelerator.process_index, accelerator.num_processes):
                return self._loop(accelerator, unet, optimizer, schedule, params, policy, reference)
        finally:  # the LoRA policy shares the base's tensors, and peft froze them: as they were
            for param, flag in base_flags:
                param.requires_grad_(flag)

    def _lora_policy(self) -> torch.nn.Module:
        """The base denoiser with peft LoRA adapters on `lora_targets`: a copy of its modules whose frozen weights are
        the base's own tensors (no memory), so adapters, train mode, gradient checkpointing and accelerate's wrapping
        stay on the copy. The adapters are drawn from the run's seed (not the global generator) in `latent_dtype`."""
        cfg, base = self.config, self.base.unet
        lora_target_layers(base, cfg.lora_targets)  # one-line ValueError if no Linear layer matches
        shared = {id(t): t for t in (*base.parameters(), *base.buffers())}
        unet = copy.deepcopy(base, memo=shared)
        devices = [self.base.device] if self.base.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            inject_adapter_in_model(lora_config(cfg), unet, LORA_ADAPTER)  # marks only the adapters trainable
        for layer in unet.modules():
            if isinstance(layer, LoraLayer):  # float32 adapters (float64 for a float64 base), as full fine-tuning
                torch.nn.Module.to(layer.lora_A, self.base.latent_dtype)
                torch.nn.Module.to(layer.lora_B, self.base.latent_dtype)
        adapters = {id(p) for p in lora_parameters(unet).values()}
        for param in unet.parameters():
            param.requires_grad_(id(param) in adapters)
        return unet.train()

    def _loop(self, accelerator, unet, optimizer, schedule, params, policy, reference) -> TrainResult:
        cfg, world = self.config, accelerator.num_processes
        rng = torch.Generator().manual_seed(self.seed)
        if isinstance(self.method, OnlineMethod):
            sampler = ExperienceSampler(self.method, policy, self.data, self.reward, cfg.batch_size, self.seed,
                                        accelerator.device)
        else:
            weights = self.method.sampling_weights(self.data.desirable) if self.method.data_kind == "binary" else None
            sampler = BatchSampler(self.data, self.method.data_kind, cfg.batch_size, self.seed, weights,
                                   accelerator.device)
        meter = BudgetMeter(self.budget)
        meter_before: dict | None = meter.state_dict()  # the meter before the last step (a checkpoint's position)
        history: list[dict] = []
        step = saved = 0
        declared = declared_step_cost(self.method, cfg, self.budget.unit, world,
                                      embedded_guidance=self.base.embeds_guidance)
        if self.checkpoint_path is not None and self.checkpoint_path.exists():
            state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
            if self._trained_past_a_stop(state, declared):
                log.warning("%s: checkpoint %s was trained past one of this run's budgets (%s); training from the "
                            "start instead", self.method.name, self.checkpoint_path,
                            ", ".join(map(str, (*self.milestones, self.budget))))
            else:
                self._load_policy(accelerator.unwrap_model(unet), state["policy"])
                optimizer.load_state_dict(state["optimizer"])
                schedule.load_state_dict(state["schedule"])
                rng.set_state(state["rng"])
                sampler.load_state_dict(state["sampler"])
                meter.load_state_dict(state["meter"])
                history, step = state["history"], state["step"]
                meter_before, saved = state.get("meter_before"), step
                log.info("resumed %s from step %d (%s used)", self.method.name, step, meter.used)

        stops = list(self.milestones)  # milestones not reached yet, smallest first
        desc = " → ".join(map(str, (*stops, self.budget))) if stops else ""
        bar = progress_bar(total=self.budget.limit, initial=meter.used.get(self.budget.unit),
                           enabled=self.progress and accelerator.is_main_process,
                           desc=f"train {self.method.name} {desc}".rstrip(), unit=self.budget.unit, leave=False)

        def checkpoint() -> bool:
            nonlocal saved
            if not getattr(sampler, "resumable", True):  # mid-collection: the next step that ends one checkpoints
                return False
            self._save(accelerator, unet, optimizer, schedule, rng, sampler, meter, meter_before, history, step)
            saved = step
            return True

        due = False
        while True:
            while stops and not _meter_at(stops[0], meter.state_dict()).fits(declared):
                if self.checkpoint_path is not None and saved != step:
                    checkpoint()  # a separate run of this budget checkpoints here too, at its end
                self._reach(stops.pop(0), accelerator, unet, meter, step, history)
            if not meter.fits(declared):
                break
            nfe_before, t0 = self.base.nfe.total, time.perf_counter()
            logs: dict[str, float] = {}
            images, scored_before = 0, getattr(sampler, "images", 0)
            for _ in range(self.micro_batches):
                with accelerator.accumulate(unet):
                    batch = sampler.next(rng)
                    self._prompt_dropout(batch, rng)
                    with accelerator.autocast():  # accelerate autocasts the prepared policy only; the reference too
                        out = self.method.loss(batch, policy, reference, rng)
                    accelerator.backward(out.loss)
                    if accelerator.sync_gradients:
                        logs["grad_norm"] = float(accelerator.clip_grad_norm_(params, cfg.max_grad_norm))
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                if not isinstance(self.method, OnlineMethod):
                    images += len(batch) * (2 if isinstance(batch, PairBatch) else 1) * world
                for key, value in out.logs.items():
                    logs[key] = logs.get(key, 0.0) + value / self.micro_batches
            if accelerator.optimizer_step_was_skipped:  # fp16: the loss scaler found inf/NaN gradients and lowered
                logs["optimizer_step_skipped"] = 1.0    # its scale instead of stepping (the first steps often do)
            if isinstance(self.method, OnlineMethod):  # the images it sampled and scored this step
                images = sampler.images - scored_before
                logs["reward_images"] = float(sampler.images)
            schedule.step()
            step += 1
            nfe, seconds = self.base.nfe.total - nfe_before, time.perf_counter() - t0
            if world > 1:
                nfe, seconds = self._reduce_across_processes(logs, nfe, seconds, world)
            usage = Usage(steps=1, samples=images, nfe=nfe, seconds=seconds, device_seconds=seconds * world)
            meter_before, nfe_used_before = meter.state_dict(), meter.used.nfe
            meter.add(usage)
            logs.update(step=step, lr=schedule.get_last_lr()[0], nfe=meter.used.nfe, seconds=meter.used.seconds)
            if self.on_probe is not None and self.probe_every and (
                    meter.used.nfe // self.probe_every > nfe_used_before // self.probe_every):
                logs.update(self._on_frozen_copy(self.on_probe, accelerator, unet, meter, step, history))
            history.append(logs)
            bar.update(usage.get(self.budget.unit))
            bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}")
            if self.checkpoint_path is not None and (step % cfg.checkpoint_every == 0 or due):
                due = not checkpoint()  # an online method's checkpoint waits for the end of its collection
            for callback in self.callbacks:
                callback(step, logs)
        bar.close()
        if self.checkpoint_path is not None and saved != step:
            checkpoint()
        if self.config.lora_rank:  # the adapters merged into a copy of the base, evaluated as the base model is
            final = self._frozen_copy(accelerator.unwrap_model(unet))
        else:
            final = accelerator.unwrap_model(unet, keep_fp32_wrapper=False).eval().requires_grad_(False)
            torch.nn.Module.to(final, self.base.dtype)  # evaluated as the base model is
        return TrainResult(self.base.with_unet(final), meter.used, step, history)

    def _reach(self, milestone: Budget, accelerator, unet, meter: BudgetMeter, step: int, history: list[dict]) -> None:
        """Hand `on_milestone` what `fit()` returns at the end of a run whose budget is `milestone`: the policy (a frozen
        copy in the base's dtype, as `fit()` casts it), the usage, steps and history so far. It runs under a forked
        global RNG (CPU and the device's), on a copy: training goes on from the same weights and generator states."""
        if self.on_milestone is not None:
            self._on_frozen_copy(lambda result: self.on_milestone(milestone, result), accelerator, unet, meter, step,
                                 history)

    def _on_frozen_copy(self, fn, accelerator, unet, meter: BudgetMeter, step: int, history: list[dict]):
        """`fn(result)` with the policy so far (a frozen copy in the base's dtype, as `fit()` casts it), the usage, steps
        and history, under a forked global RNG (CPU and the device's): training goes on from the same weights and
        generator states."""
        frozen = self._frozen_copy(accelerator.unwrap_model(unet))  # the module itself, its autocast wrapper in place
        result = TrainResult(self.base.with_unet(frozen), meter.used, step, list(history))
        devices = [self.base.device] if self.base.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            return fn(result)

    def _frozen_copy(self, trained: torch.nn.Module) -> torch.nn.Module:
        """A frozen copy of the base denoiser, in eval mode and the base's storage dtype, holding the trained weights:
        the policy's (float32 -> the base's dtype, rounded as `fit()`'s .to() rounds), or with LoRA the base's with
        the adapters merged (W + (α / r) B A, computed in the adapters' dtype, then rounded alike)."""
        frozen = copy.deepcopy(self.base.unet).eval().requires_grad_(False)
        if not self.config.lora_rank:
            frozen.load_state_dict(trained.state_dict())
            return frozen
        result = frozen.load_state_dict(merged_lora_weights(trained), strict=False)
        if result.unexpected_keys:
            raise RuntimeError(f"merged LoRA weights not in the base denoiser: {', '.join(result.unexpected_keys[:3])}")
        return frozen

    def _policy_state(self, trained: torch.nn.Module) -> dict[str, torch.Tensor]:
        """What a checkpoint holds of the policy: its weights, or with LoRA only the adapters' (the base is frozen)."""
        if self.config.lora_rank:
            return {name: p.detach() for name, p in lora_parameters(trained).items()}
        return trained.state_dict()

    def _load_policy(self, trained: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        """Restore `_policy_state` into the policy; a checkpoint of the other kind (full weights for LoRA, adapters of
        another rank or targets) is an error, not a silent partial load."""
        if not self.config.lora_rank:
            trained.load_state_dict(state)
            return
        adapters = lora_parameters(trained)
        shapes = {name: tuple(p.shape) for name, p in adapters.items()}
        if shapes != {name: tuple(t.shape) for name, t in state.items()}:
            raise ValueError(f"checkpoint {self.checkpoint_path} does not hold this run's LoRA adapters (rank "
                             f"{self.config.lora_rank} on {self.config.lora_targets}); remove it to train from the start")
        with torch.no_grad():
            for name, param in adapters.items():
                param.copy_(state[name])

    def _trained_past_a_stop(self, state: dict, declared: float) -> bool:
        """Whether a checkpoint went on training after one of this run's milestones or its budget would have stopped
        it (it was written by a run of a larger budget): then it holds no state this run passes through. A checkpoint
        written at a stop (the meter no longer fits it, but fitted before the last step) is on the path."""
        before = state.get("meter_before")
        for stop in (*self.milestones, self.budget):
            if before is not None:
                if not _meter_at(stop, before).fits(declared):
                    return True
            elif stop is not self.budget and not _meter_at(stop, state["meter"]).fits(declared):
                return True  # an earlier version's checkpoint, at or past a milestone: which of the two is unknown
        return False

    @staticmethod
    def _reduce_across_processes(logs: dict[str, float], nfe: int, seconds: float, world: int) -> tuple[int, float]:
        """Every process's evaluations count (sum); the slowest process sets the step's time (max); the
        method's logged means are over equal shards, so their mean over processes is the global batch's.
        `logs` is updated in place, so every process logs the same numbers."""
        keys = sorted(k for k in logs if k != "grad_norm")  # the clipped norm is already global
        sums = torch.tensor([float(nfe)] + [logs[k] for k in keys], dtype=torch.float64)
        slowest = torch.tensor([seconds], dtype=torch.float64)
        torch.distributed.all_reduce(sums)
        torch.distributed.all_reduce(slowest, op=torch.distributed.ReduceOp.MAX)
        logs.update({k: float(v) / world for k, v in zip(keys, sums[1:])})
        return int(sums[0]), float(slowest)

    def _save(self, accelerator, unet, optimizer, schedule, rng, sampler, meter, meter_before, history, step) -> None:
        state = {
            "policy": self._policy_state(accelerator.unwrap_model(unet)),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "rng": rng.get_state(),
            "sampler": sampler.state_dict(),
            "meter": meter.state_dict(),
            "meter_before": meter_before,
            "history": history,
            "step": step,
        }
        if accelerator.is_main_process:
            with atomic_output(self.checkpoint_path) as tmp:
                torch.save(state, tmp)
        accelerator.wait_for_everyone()


def _meter_at(budget: Budget, state: dict) -> BudgetMeter:
    """A meter for `budget` at a recorded position (`BudgetMeter.state_dict()`): whether a step fits under another
    limit of the same unit."""
    meter = BudgetMeter(budget)
    meter.load_state_dict(state)
    return meter
