"""`bench run --dry-run`: a recipe's real shapes, step cost, memory and GPU-hours, with no weights.

Every component of the suite's pipeline is built from its config on the meta device (shapes only: no
memory, no weights, no hub): a local diffusers directory's config files, or, for the SD 1.5 and SDXL
hub ids, the official configs in `bench.core.real_configs`. Inconsistent configs, launch shapes or
arguments raise `DryRunError` (a `RunSetupError`: one line, exit code 2 from the CLI).

Step cost, from each method's own declaration (`bench.harness.trainer.declared_step_cost`):

    nfe_step     = batch_size x grad_accum x processes x max_nfe_per_item      (worst case)
    samples_step = batch_size x grad_accum x processes x images per item        (a pair is 2)

Budget -> steps as the budget meter stops (`used + step cost <= limit`, bench/core/budget.py), with s_nfe
(`--seconds-per-nfe`) the device-seconds of one UNet evaluation of one latent at the recipe's
resolution and precision (a backward counting as 2 NFE, as the meter counts):

    cost per step:  steps 1 | samples samples_step | nfe nfe_step | gpu-h nfe_step x s_nfe / 3600
                    | seconds (wall-clock) nfe_step x s_nfe / processes
    steps = floor(limit / cost per step);  nfe = steps x nfe_step;  gpu-h = nfe x s_nfe / 3600;
    wall-clock hours = gpu-h / processes

Memory per process, in bytes (P = trainable parameters: the UNet's, or with LoRA the adapters' A, F = frozen UNet +
text encoder parameters, V = VAE parameters, b = 4 for `--dtype fp32`, 2 for fp16 / bf16):

    weights      4 P + b F + 4 V   the trainable copy in fp32 (accelerate's mixed precision keeps fp32 weights
                             and autocasts), and the frozen base UNet and text encoder(s) in the run's dtype
                             and the VAE in fp32, as `bench run` loads them (`Backbone.from_pretrained`); the
                             trainer copies the base UNet for every method, so the frozen UNet is there even
                             without a reference
    gradients    4 P
    optimizer    AdamW: 8 P (two fp32 moments). Adafactor as `make_optimizer` builds it (β1 = None: no
                 first moment): 4 x Σ over ≥2-D tensors of (prod(shape[:-1]) + prod(shape[:-2]) x shape[-1])
                 (its factored second moment) + 4 x numel of 1-D tensors
    autocast     2 P under fp16/bf16: the half-precision casts of the trainable weights, held for backward
    activations  the bytes autograd saves in one policy forward of a micro-batch (batch_size x images per
                 item latents), traced on the meta device in the compute dtype (fp32 without mixed
                 precision), with fused attention (flash / memory-efficient SDPA saves q, k, v, the output
                 and an fp32 log-sum-exp, not the L x L matrix). With gradient checkpointing: the saves
                 outside checkpointed blocks + every block's inputs + the largest block's saves (recomputed
                 one block at a time in backward)
    total        the sum: an upper bound on the step's peak (gradients build up as activations are freed)

LoRA (`--train-arg lora_rank=r`, `bench.harness.trainer`): the trainable parameters are the adapters, A = Σ r (in +
out) over the Linear layers that `lora_targets` names (`lora_parameter_count`), in fp32; the policy's frozen weights
are the base UNet's own tensors, so there is no trainable copy and the frozen weights count once, at their dtype:

    weights      4 A + b F + 4 V
    gradients    4 A
    optimizer    AdamW 8 A; Adafactor over the adapter matrices (r x in and out x r: 4 (r + in) + 4 (out + r) each)
    autocast     2 A under fp16/bf16, + 2 x (frozen UNet parameters) when that UNet is fp32 (--dtype fp32): autocast
                 casts the frozen weights too, and the backward to the adapters below keeps the casts
    activations  traced as above with the adapters injected (peft, on meta), only they requiring grad: a frozen
                 layer keeps no input for a weight gradient, an adapter keeps its input and its r-wide projection

Not counted: the CUDA context and allocator slack (~1 GiB), transient no-grad reference forwards,
autocast's fp32 islands (norms, softmax), the preference data (kept on the CPU) and evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import unittest.mock
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from peft import inject_adapter_in_model
from rich.table import Table
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from bench.core.budget import Budget
from bench.core.config import PIPELINE_DTYPES, TrainConfig
from bench.core.real_configs import PIPELINE_CONFIGS, RECIPE_LAUNCH
from bench.core.records import DRY_RUN, new_record
from bench.harness.run import RunPlan, RunSetupError
from bench.harness.trainer import declared_step_cost, lora_config, lora_parameter_count, lora_target_layers
from methods.alignment import AlignmentMethod

GiB = 2**30
COMPUTE_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class DryRunError(RunSetupError):
    """An inconsistent pipeline config, launch shape or dry-run argument."""


# ---------------------------------------------------------------------------------------------- configs and shapes
def component_configs(pipeline: str) -> tuple[dict[str, dict], str]:
    """The pipeline's component configs and where they came from: a local diffusers directory's files,
    else the built-in official config of a known hub id."""
    path = Path(pipeline)
    if path.is_dir():
        files = {"model_index": "model_index.json", "unet": "unet/config.json", "vae": "vae/config.json",
                 "text_encoder": "text_encoder/config.json", "text_encoder_2": "text_encoder_2/config.json",
                 "scheduler": "scheduler/scheduler_config.json"}
        configs = {}
        for name, rel in files.items():
            if (path / rel).is_file():
                try:
                    configs[name] = json.loads((path / rel).read_text())
                except json.JSONDecodeError as err:
                    raise DryRunError(f"{path / rel} is not valid JSON: {err}") from None
            elif name not in ("text_encoder_2", "model_index"):
                raise DryRunError(f"pipeline directory {path} has no {rel}")
        if "text_encoder_2" in configs and not (configs.get("model_index", {}).get("text_encoder_2") or [None])[0]:
            configs.pop("text_encoder_2")  # a stale folder the pipeline does not use (as Backbone.from_pretrained)
        return configs, f"config files in {path}"
    if pipeline in PIPELINE_CONFIGS:
        return json.loads(json.dumps(PIPELINE_CONFIGS[pipeline])), f"built-in official config of {pipeline}"
    raise DryRunError(f"no config for pipeline {pipeline!r} offline: pass a local diffusers directory (--pipeline DIR) "
                      f"or one of {', '.join(PIPELINE_CONFIGS)}")


def build_on_meta(configs: dict[str, dict]) -> dict[str, torch.nn.Module]:
    """UNet, VAE and text encoder(s) built from their configs on the meta device (the classes Backbone loads)."""
    builders = {"unet": lambda c: UNet2DConditionModel.from_config(c),
                "vae": lambda c: AutoencoderKL.from_config(c),
                "text_encoder": lambda c: CLIPTextModel(CLIPTextConfig.from_dict(c)),
                "text_encoder_2": lambda c: CLIPTextModelWithProjection(CLIPTextConfig.from_dict(c))}
    modules = {}
    for name, build in builders.items():
        if name not in configs:
            continue
        try:
            with torch.device("meta"):
                modules[name] = build(configs[name])
        except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise DryRunError(f"{name} config does not build: {reason}") from None
    return modules


def check_consistency(modules: dict[str, torch.nn.Module]) -> None:
    """The checks a real load would fail on only after minutes of downloading: the UNet's cross-attention width
    is the text encoders' (concatenated for SDXL), its channels are the VAE's latent channels, SDXL's added
    embedding matches the second encoder's projection plus six time ids."""
    unet, vae = modules["unet"].config, modules["vae"].config
    sdxl = unet.get("addition_embed_type") == "text_time"
    if sdxl != ("text_encoder_2" in modules):
        raise DryRunError("an SDXL-shaped unet (addition_embed_type text_time) needs text_encoder_2, and only it"
                          if sdxl else "text_encoder_2 is given but the unet has no text_time added embedding")
    encoders = [modules[n].config for n in ("text_encoder", "text_encoder_2") if n in modules]
    text_width = sum(enc.hidden_size for enc in encoders)
    cross = set(unet.cross_attention_dim) if isinstance(unet.cross_attention_dim, (list, tuple)) else {unet.cross_attention_dim}
    if cross != {text_width}:
        widths = " + ".join(str(enc.hidden_size) for enc in encoders)
        raise DryRunError(f"unet cross_attention_dim {unet.cross_attention_dim} != text encoder hidden size {widths}")
    for side in ("in_channels", "out_channels"):
        if getattr(unet, side) != vae.latent_channels:
            raise DryRunError(f"vae latent_channels {vae.latent_channels} != unet {side} {getattr(unet, side)}")
    factor = 2 ** (len(vae.block_out_channels) - 1)
    if vae.sample_size % factor:
        raise DryRunError(f"vae sample_size {vae.sample_size} is not divisible by its downsampling factor {factor}")
    if sdxl:
        expected = modules["text_encoder_2"].config.projection_dim + 6 * unet.addition_time_embed_dim
        if unet.projection_class_embeddings_input_dim != expected:
            raise DryRunError(f"unet projection_class_embeddings_input_dim {unet.projection_class_embeddings_input_dim} "
                              f"!= text_encoder_2 projection_dim + 6 x addition_time_embed_dim = {expected}")


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------- memory
def optimizer_state_bytes(unet: torch.nn.Module, optimizer: str) -> int:
    """fp32 optimizer state of the trainable UNet (module docstring)."""
    return optimizer_state_bytes_of([tuple(p.shape) for p in unet.parameters()], optimizer)


def optimizer_state_bytes_of(shapes: list[tuple[int, ...]], optimizer: str) -> int:
    """fp32 optimizer state of trainable tensors of these shapes (module docstring)."""
    if optimizer == "adamw":
        return 8 * sum(math.prod(shape) for shape in shapes)
    total = 0
    for shape in shapes:
        if len(shape) >= 2:  # transformers' Adafactor: row stats shape[:-1], column stats shape[:-2] + shape[-1:]
            total += math.prod(shape[:-1]) + math.prod(shape[:-2]) * shape[-1]
        else:
            total += math.prod(shape)
    return 4 * total


def lora_shapes(unet: torch.nn.Module, cfg: TrainConfig) -> list[tuple[int, int]]:
    """The adapter matrices LoRA of rank r adds to `unet`: A (r, in) and B (out, r) per adapted Linear layer."""
    shapes = []
    for layer in lora_target_layers(unet, cfg.lora_targets).values():
        shapes += [(cfg.lora_rank, layer.in_features), (layer.out_features, cfg.lora_rank)]
    return shapes


class _FusedAttention(torch.autograd.Function):
    """Stand-in for a fused attention kernel while tracing: saves what flash / memory-efficient SDPA saves
    for backward (q, k, v, the output and the fp32 row log-sum-exp), never the L x L attention matrix."""

    @staticmethod
    def forward(ctx, query, key, value):
        out = query.new_empty(*query.shape[:-1], value.shape[-1])  # (B, H, Lq, Dv)
        ctx.save_for_backward(query, key, value, out, query.new_empty(query.shape[:-1], dtype=torch.float32))
        return out


def _fused_sdpa(query, key, value, *args, **kwargs):
    return _FusedAttention.apply(query, key, value)


class _SavedBytes:
    """A saved-tensor hook that collects the distinct tensors (views counted once, as their base) autograd keeps."""

    def __init__(self, exclude: set[int]):
        self.exclude, self.tensors = exclude, {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        base = tensor if tensor._base is None else tensor._base
        if id(base) not in self.exclude:
            self.tensors[id(base)] = base  # held, so ids stay unique
        return tensor

    def add(self, tensors) -> None:
        for tensor in tensors:
            if isinstance(tensor, torch.Tensor):
                self.pack(tensor)

    @property
    def bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())


def activation_bytes(unet_config: dict, text_width: int, text_tokens: int, pooled_width: int | None,
                     latent_shape: tuple[int, int, int], latents: int, dtype: torch.dtype, checkpointing: bool,
                     lora: TrainConfig | None = None) -> int:
    """Bytes autograd holds after one training forward of `latents` latents (module docstring), traced on meta; with
    `lora` (a config with lora_rank > 0) of the UNet with its adapters, only they trainable."""
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        if lora is not None and lora.lora_rank:
            inject_adapter_in_model(lora_config(lora), unet, low_cpu_mem_usage=True)  # only the adapters trainable
    torch.nn.Module.to(unet, dtype).train()
    params = {id(p) for p in unet.parameters()}
    outer, blocks = _SavedBytes(params), []

    def counting_checkpoint(module, *args):
        block = _SavedBytes(params)
        with torch.autograd.graph.saved_tensors_hooks(block.pack, lambda t: t):
            out = module(*args)
        blocks.append((block.bytes, args))
        return out

    if checkpointing:
        unet.enable_gradient_checkpointing(gradient_checkpointing_func=counting_checkpoint)
    x = torch.empty(latents, *latent_shape, device="meta", dtype=dtype)  # (B, C, h, w)
    t = torch.zeros(latents, dtype=torch.long, device="meta")
    embeds = torch.empty(latents, text_tokens, text_width, device="meta", dtype=dtype)  # (B, L, D)
    added = None
    if pooled_width is not None:  # SDXL: pooled text embedding (B, D2) and time ids (B, 6)
        added = {"text_embeds": torch.empty(latents, pooled_width, device="meta", dtype=dtype),
                 "time_ids": torch.empty(latents, 6, device="meta", dtype=dtype)}
    with unittest.mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", _fused_sdpa), \
            torch.autograd.graph.saved_tensors_hooks(outer.pack, lambda t: t):
        unet(x, t, encoder_hidden_states=embeds, added_cond_kwargs=added)
    for _, args in blocks:  # checkpointed blocks keep their inputs for the recomputation
        outer.add(args)
    return outer.bytes + max((b for b, _ in blocks), default=0)


# ---------------------------------------------------------------------------------------------- the report
@dataclass
class DryRunReport:
    suite: str
    pipeline: str
    config_source: str
    family: str
    processes: int
    latent_shape: tuple[int, int, int]
    components: list[dict]
    methods: list[dict]
    seconds_per_nfe: float | None
    assumptions: list[str]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The report as a `dry-run` record (`bench.core.records.DRY_RUN`)."""
        return new_record(DRY_RUN, **dataclasses.asdict(self))


def resolve_processes(suite: str, processes: int | None = None) -> int:
    """The devices the run is planned for: given, else the launcher's (`WORLD_SIZE`, set by accelerate launch and
    torchrun), else the recipe's (`bench.core.real_configs.RECIPE_LAUNCH`), else 1."""
    if processes is None and os.environ.get("WORLD_SIZE"):
        try:
            processes = int(os.environ["WORLD_SIZE"])
        except ValueError:
            raise DryRunError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None
    if processes is None:
        processes = RECIPE_LAUNCH.get(suite, (1, None))[0]
    if processes < 1:
        raise DryRunError(f"the number of processes must be >= 1, got {processes}")
    return processes


def budget_plan(budget: Budget, nfe_step: float, samples_step: float, processes: int,
                seconds_per_nfe: float | None) -> dict:
    """Steps, samples, NFE, GPU-hours and wall-clock hours that `budget` buys (module docstring)."""
    timed = seconds_per_nfe is not None
    cost = {"steps": 1, "samples": samples_step, "nfe": nfe_step,
            "gpu-h": nfe_step * seconds_per_nfe / 3600 if timed else None,
            "seconds": nfe_step * seconds_per_nfe / processes if timed else None}[budget.unit]
    if not cost:  # unknown without a time per NFE, or 0: a method that does not train (inference-time) buys no steps
        return {"budget": str(budget), "steps": None, "samples": None, "nfe": None, "gpu_hours": None, "wall_hours": None}
    steps = math.floor(budget.limit / cost * (1 + 1e-12))  # the meter's `used + cost <= limit`, float-safe
    nfe = steps * nfe_step
    gpu_hours = nfe * seconds_per_nfe / 3600 if timed else None
    return {"budget": str(budget), "steps": steps, "samples": steps * samples_step, "nfe": nfe, "gpu_hours": gpu_hours,
            "wall_hours": gpu_hours / processes if timed else None}


def _method_entry(name: str, method: AlignmentMethod, cfg: TrainConfig, processes: int, budgets: list[Budget],
                  seconds_per_nfe: float | None, unet: torch.nn.Module, frozen_bytes: int, frozen_width: int,
                  activations) -> dict:
    autocast = cfg.mixed_precision != "no"
    if cfg.lora_rank:
        try:
            shapes = lora_shapes(unet, cfg)
        except ValueError as err:
            raise DryRunError(f"{name}: {err}") from None
        trainable = lora_parameter_count(unet, cfg)
        # autocast's casts of a frozen fp32 UNet are kept for the backward to the adapters (module docstring)
        frozen_casts = 2 * parameter_count(unet) if autocast and frozen_width == 4 else 0
    else:
        shapes, trainable, frozen_casts = [tuple(p.shape) for p in unet.parameters()], parameter_count(unet), 0
    micro_latents = declared_step_cost(method, dataclasses.replace(cfg, grad_accum=1), "samples")  # per process
    nfe_step = declared_step_cost(method, cfg, "nfe", processes)
    samples_step = declared_step_cost(method, cfg, "samples", processes)
    memory = {"weights_trainable": 4 * trainable, "weights_frozen": frozen_bytes, "gradients": 4 * trainable,
              "optimizer": optimizer_state_bytes_of(shapes, cfg.optimizer),
              "autocast_copies": (2 * trainable if autocast else 0) + frozen_casts,
              "activations": activations(micro_latents, COMPUTE_DTYPES[cfg.mixed_precision], cfg.gradient_checkpointing,
                                         cfg if cfg.lora_rank else None)}
    memory["total"] = sum(memory.values())
    lora = ({"rank": cfg.lora_rank, "alpha": cfg.lora_alpha if cfg.lora_alpha is not None else cfg.lora_rank,
             "targets": cfg.lora_targets, "layers": len(shapes) // 2} if cfg.lora_rank else None)
    return {"method": name, "data_kind": method.data_kind, "needs_reference": method.needs_reference,
            "trainable_parameters": trainable, "lora": lora,
            "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
            "items_per_step": cfg.batch_size * cfg.grad_accum * processes, "nfe_per_item": method.max_nfe_per_item(),
            "nfe_per_step": nfe_step, "samples_per_step": samples_step, "micro_batch_latents": micro_latents,
            "mixed_precision": cfg.mixed_precision, "gradient_checkpointing": cfg.gradient_checkpointing,
            "optimizer": cfg.optimizer, "memory_bytes": memory,
            "budgets": [budget_plan(b, nfe_step, samples_step, processes, seconds_per_nfe) for b in budgets]}


def dry_run(plan: RunPlan, *, processes: int | None = None, seconds_per_nfe: float | None = None) -> DryRunReport:
    """Build the plan's pipeline on the meta device, check it, and estimate each method's step cost, memory and
    budget in steps, NFE and GPU-hours. Raises DryRunError on an inconsistent config or launch shape."""
    if seconds_per_nfe is not None and not seconds_per_nfe > 0:
        raise DryRunError(f"--seconds-per-nfe must be > 0, got {seconds_per_nfe:g}")
    suite = plan.suite.name
    processes = resolve_processes(suite, processes)
    notes = []
    if suite in RECIPE_LAUNCH:
        recipe_processes, global_batch = RECIPE_LAUNCH[suite]
        if global_batch % processes:
            raise DryRunError(f"the {suite} recipe's batch of {global_batch} items per step is not divisible by "
                              f"{processes} processes")
        base = plan.suite.train
        if base.batch_size * base.grad_accum * processes != global_batch:
            notes.append(f"{processes} processes x {base.batch_size} x {base.grad_accum} accumulation = "
                         f"{base.batch_size * base.grad_accum * processes} items per step; the recipe's is {global_batch} "
                         f"({recipe_processes} processes): set grad_accum={global_batch // processes // base.batch_size} "
                         "with --train-arg to keep it")
    configs, source = component_configs(plan.pipeline)
    modules = build_on_meta(configs)
    check_consistency(modules)
    unet, vae = modules["unet"], modules["vae"]
    encoders = [modules[n] for n in ("text_encoder", "text_encoder_2") if n in modules]
    sdxl = "text_encoder_2" in modules
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    latent_shape = (unet.config.in_channels, vae.config.sample_size // factor, vae.config.sample_size // factor)
    components = [{"component": name, "class": type(module).__name__, "parameters": parameter_count(module),
                   "trainable": name == "unet"} for name, module in modules.items()]
    if "scheduler" in configs:
        components.append({"component": "scheduler", "class": "DDIMScheduler (as Backbone loads it), from "
                           + str(configs["scheduler"].get("_class_name", "?")), "parameters": 0, "trainable": False})
    frozen_width = PIPELINE_DTYPES[plan.dtype].itemsize  # the base UNet and text encoders; the VAE is fp32
    frozen_bytes = sum(c["parameters"] * (4 if c["component"] == "vae" else frozen_width) for c in components)

    traced: dict[tuple, int] = {}

    def activations(latents: int, dtype: torch.dtype, checkpointing: bool, lora: TrainConfig | None) -> int:
        key = (latents, dtype, checkpointing, lora and (lora.lora_rank, lora.lora_targets))
        if key not in traced:
            traced[key] = activation_bytes(dict(unet.config), sum(e.config.hidden_size for e in encoders),
                                           encoders[0].config.max_position_embeddings,
                                           encoders[-1].config.projection_dim if sdxl else None,
                                           latent_shape, latents, dtype, checkpointing, lora)
        return traced[key]

    methods = [_method_entry(name, method, plan.train_configs[name], processes, plan.budgets, seconds_per_nfe, unet,
                             frozen_bytes, frozen_width, activations) for name, method in plan.methods.items()]
    assumptions = [
        "weights: trainable UNet fp32 (mixed precision autocasts, keeps fp32 weights); frozen base UNet and text "
        f"encoders {plan.dtype} (--dtype), VAE fp32, as `bench run` loads them (the base UNet stays for evaluation even "
        "without a reference)",
        "gradients fp32; AdamW 2 fp32 moments; Adafactor without first moment, factored fp32 second moment",
        "LoRA (lora_rank > 0): only the fp32 adapters train (weights, gradients, optimizer state, autocast casts); the "
        "policy's frozen weights are the base UNet's tensors, counted once at their dtype, and a frozen fp32 UNet's "
        "autocast casts are kept for the backward",
        "autocast: fp16/bf16 casts of the trainable weights, held for backward",
        "activations: one policy forward of the per-process micro-batch (batch x images per item latents), traced on "
        "meta in the compute dtype, fused attention (no L x L matrix); checkpointing keeps block inputs + the "
        "largest block; accumulation does not add (one micro-batch alive)",
        "total = sum of the rows, an upper bound on the peak; CUDA context and allocator slack (~1 GiB) not counted",
        "NFE per step: the method's declared worst case x batch x accumulation x processes (a backward counts 2)",
        "GPU-h = NFE x seconds-per-NFE / 3600 (device-seconds per UNet evaluation of one latent); wall-clock = GPU-h / "
        "processes",
    ]
    if seconds_per_nfe is None:
        notes.append("pass --seconds-per-nfe (device-seconds per UNet evaluation of one latent) for GPU-hours")
    return DryRunReport(suite, plan.pipeline, source, "sdxl" if sdxl else "sd", processes, latent_shape, components,
                        methods, seconds_per_nfe, assumptions, notes)


# ---------------------------------------------------------------------------------------------- printing
def _count(n: int) -> str:
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n:,} ({n / size:.{3 if suffix == 'B' else 1}f}{suffix})"
    return f"{n:,}"


def _maybe(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def _trains(entry: dict) -> str:
    """What a method trains: every UNet weight, or LoRA adapters (rank, α, adapter parameters)."""
    lora = entry.get("lora")
    if not lora:
        return "all"
    return f"LoRA r{lora['rank']} α{lora['alpha']:g} {entry['trainable_parameters'] / 1e6:.1f}M"


def report_tables(report: DryRunReport) -> list:
    """The report as rich tables: components, step cost and memory per process, budget."""
    parts = Table(title=f"dry run {report.suite}: {report.pipeline} ({report.family}; {report.config_source}); latents "
                        f"{'x'.join(map(str, report.latent_shape))}; {report.processes} process(es)")
    for column in ("component", "class", "parameters", "trainable"):
        parts.add_column(column, justify="right" if column == "parameters" else "left")
    for c in report.components:
        parts.add_row(c["component"], c["class"], _count(c["parameters"]), "yes" if c["trainable"] else "no")

    cost = Table(title="step cost and estimated memory per process (GiB)")
    for column in ("method", "data", "ref", "batch x accum x procs = items", "NFE/item", "NFE/step", "precision", "grad ckpt",
                   "optimizer", "trains", "weights", "grads", "optim", "autocast", "activations", "total"):
        cost.add_column(column, justify="left" if column in ("method", "data", "optimizer", "precision", "trains")
                        else "right")
    for m in report.methods:
        mem = {k: f"{v / GiB:.2f}" for k, v in m["memory_bytes"].items()}
        weights = (m["memory_bytes"]["weights_trainable"] + m["memory_bytes"]["weights_frozen"]) / GiB
        cost.add_row(m["method"], m["data_kind"], "yes" if m["needs_reference"] else "no",
                     f"{m['batch_size']}x{m['grad_accum']}x{report.processes}={m['items_per_step']}",
                     str(m["nfe_per_item"]), f"{m['nfe_per_step']:,}", m["mixed_precision"],
                     "on" if m["gradient_checkpointing"] else "off", m["optimizer"], _trains(m), f"{weights:.2f}",
                     mem["gradients"],
                     mem["optimizer"], mem["autocast_copies"], mem["activations"], mem["total"])

    spn = _maybe(report.seconds_per_nfe, "g")
    budget = Table(title=f"budget (seconds per NFE: {spn})")
    for column in ("method", "budget", "steps", "samples", "NFE", "GPU-h", "wall-clock h"):
        budget.add_column(column, justify="left" if column in ("method", "budget") else "right")
    for m in report.methods:
        for b in m["budgets"]:
            budget.add_row(m["method"], b["budget"], _maybe(b["steps"], ","), _maybe(b["samples"], ","),
                           _maybe(b["nfe"], ".4g"), _maybe(b["gpu_hours"], ",.2f"), _maybe(b["wall_hours"], ",.2f"))
    return [parts, cost, budget]


def report_notes(report: DryRunReport) -> list[str]:
    return [*(f"note: {n}" for n in report.notes), "assumptions:", *(f"  - {a}" for a in report.assumptions)]
