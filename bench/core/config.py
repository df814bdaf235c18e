"""Typed, validated configuration of training and evaluation, and `key=value` overrides of any config.

Each field's `metadata["help"]` documents it (`bench list NAME` prints it, `field_rows`); `apply_overrides`
turns CLI strings such as `lr=3e-5` or `inversion=bdia` into a new validated dataclass, coercing by the
field's type. Every plugin (method, inversion sampler, scorer) has such a Config, and its options reach it
through one parser, `parse_plugin_args`: `--method-arg`, `--sampler-arg` and `--metric-arg NAME.FIELD=VALUE`
fail alike, in one line, on an unknown plugin or field (naming the nearest one) or a value of the wrong type.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch

from bench.core.search_space import FloatRange

MIXED_PRECISION = ("no", "fp16", "bf16")
# The frozen pipeline's storage and evaluation precision (`bench run --dtype`); the VAE is float32 always.
PIPELINE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
OPTIMIZERS = ("adamw", "adafactor")
# LoRA (`TrainConfig.lora_*`). The attention projections that Flow-GRPO's `train_sd3.py` adapts (r 32, α 64, init
# "gaussian"; DiffusionNFT the same): to_q, to_k, to_v, to_out.0 are also the names of diffusers' UNet2DConditionModel
# attention (self and cross), add_*_proj and to_add_out are SD3's joint-attention context projections.
LORA_TARGETS = "to_q,to_k,to_v,to_out.0,add_q_proj,add_k_proj,add_v_proj,to_add_out"
# lora_init -> peft's `init_lora_weights`: A drawn as named, B zero (so an untrained adapter leaves the base as it is)
LORA_INITS = {"gaussian": "gaussian", "kaiming": True}


@dataclass(frozen=True)
class TrainConfig:
    lr: float = field(default=1e-5, metadata={
        "help": "AdamW learning rate (after warmup)",
        # bench tune: every method's lr is searched over the same range (a suite may narrow it, `Suite.search`);
        # it spans KTO's 1e-7-scale SD recipes to the toy's 1e-5-1e-4.
        "search": FloatRange(1e-7, 1e-3, log=True)})
    batch_size: int = field(default=16, metadata={"help": "training items per micro-batch (pairs, or images)"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    weight_decay: float = field(default=1e-2, metadata={"help": "AdamW weight decay (Diffusion-DPO: 1e-2)"})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW β1"})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW β2"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping norm (Diffusion-DPO: 1)"})
    warmup_steps: int = field(default=0, metadata={"help": "linear learning-rate warmup, in optimizer steps"})
    prompt_dropout: float = field(default=0.2, metadata={"help": "probability of training a pair/image on the empty prompt"})
    mixed_precision: str = field(default="no", metadata={"help": "accelerate mixed precision: no, fp16, bf16"})
    checkpoint_every: int = field(default=50, metadata={"help": "optimizer steps between resumable checkpoints"})
    optimizer: str = field(default="adamw", metadata={"help": "adamw, or adafactor (Diffusion-DPO's SDXL recipe)"})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "recompute UNet activations in backward"})
    lora_rank: int = field(default=0, metadata={
        "help": "train peft LoRA adapters of this rank on lora_targets, the denoiser's weights frozen (0: train every "
                "weight). Flow-GRPO and DiffusionNFT: 32"})
    lora_alpha: float | None = field(default=None, metadata={
        "help": "LoRA α: an adapter adds (α / r) B A to its layer's weight (peft's scaling); none: α = r (scale 1). "
                "Flow-GRPO and DiffusionNFT: 64 at r 32"})
    lora_targets: str = field(default=LORA_TARGETS, metadata={
        "help": "comma-separated names of the Linear layers LoRA adapts: a layer is adapted when its module name is a "
                "target or ends with '.' + a target (peft's rule); targets the denoiser lacks are skipped, none "
                "matching is an error. Default: the attention projections of SD UNets (to_q,to_k,to_v,to_out.0) and of "
                "SD3's joint attention (also add_q_proj,add_k_proj,add_v_proj,to_add_out), Flow-GRPO's list"})
    lora_init: str = field(default="gaussian", metadata={
        "help": "LoRA initialisation, B = 0 either way (training starts at the base): gaussian (A ~ N(0, 1/r²), peft's "
                "'gaussian', Flow-GRPO's) or kaiming (A Kaiming-uniform, peft's default)"})
    train_guidance: float = field(default=1.0, metadata={
        "help": "the guidance scale a guidance-distilled backbone (FLUX.1-dev) receives as its input in training "
                "forwards that pass none (every offline method's; online rollouts pass their own); ignored by backbones "
                "without a guidance input. 1: the conditional prediction; diffusers' FLUX training scripts: 3.5"})

    def __post_init__(self):
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("batch_size", "grad_accum", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.max_grad_norm <= 0:
            raise ValueError("warmup_steps and weight_decay must be >= 0 and max_grad_norm > 0")
        if not 0 <= self.prompt_dropout < 1:
            raise ValueError(f"prompt_dropout must be in [0, 1), got {self.prompt_dropout}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0 (0: full fine-tuning), got {self.lora_rank}")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise ValueError(f"lora_alpha must be > 0 (or none: the rank), got {self.lora_alpha}")
        if not split_list(self.lora_targets):
            raise ValueError(f"lora_targets must name at least one module, got {self.lora_targets!r}")
        if not self.train_guidance > 0:
            raise ValueError(f"train_guidance must be > 0, got {self.train_guidance}")
        if self.lora_init not in LORA_INITS:
            raise ValueError(f"lora_init must be one of {tuple(LORA_INITS)}, got {self.lora_init!r}")
        unused = [name for name in ("lora_alpha", "lora_targets", "lora_init")
                  if getattr(self, name) != _LORA_DEFAULTS[name]]
        if self.lora_rank == 0 and unused:
            raise ValueError(f"{', '.join(unused)} set without LoRA: set lora_rank > 0 as well")


_LORA_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name.startswith("lora_")}


@dataclass(frozen=True)
class EvalConfig:
    images_per_prompt: int = field(default=4, metadata={"help": "seeds per evaluation prompt"})
    steps: int = field(default=20, metadata={"help": "DDIM sampling steps"})
    guidance: float = field(default=3.0, metadata={"help": "classifier-free guidance scale"})
    seed: int = field(default=0, metadata={"help": "image i of the evaluation uses seed + i"})
    batch_size: int = field(default=128, metadata={"help": "images sampled per batch"})
    bootstrap: int = field(default=2000, metadata={"help": "bootstrap resamples for confidence intervals"})
    sample_images: int = field(default=8, metadata={"help": "evaluation images kept as thumbnails in run records"})

    def __post_init__(self):
        for name in ("images_per_prompt", "steps", "batch_size", "bootstrap"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {self.guidance}")


def split_list(text: str | None) -> list[str]:
    """"a, b,,c" -> ["a", "b", "c"] (a comma-separated option); None -> []."""
    return [item.strip() for item in (text or "").split(",") if item.strip()]


class OverrideError(ValueError):
    """An override that names no plugin or field, or whose value does not parse or validate (a one-line message)."""


def _nearest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else ""


def _coerce(value, kind, name: str):
    if not isinstance(value, str):
        return value  # already typed (suite definitions)
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union else ()
    if type(None) in options:  # `float | None`: "none" is None, anything else the other type
        if value.lower() in ("none", "null"):
            return None
        (kind,) = [option for option in options if option is not type(None)]
    if kind is bool or kind == "bool":
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise OverrideError(f"{name}: expected a boolean, got {value!r}")
    for typ, label in ((int, "int"), (float, "float")):
        if kind is typ or kind == label:
            try:
                return typ(float(value)) if typ is int and float(value).is_integer() else typ(value)
            except ValueError:
                raise OverrideError(f"{name}: expected {label}, got {value!r}") from None
    if kind is dict or typing.get_origin(kind) is dict:  # "a=1,b=2": the settings of a nested plugin
        pairs = [item.partition("=") for item in value.split(",") if item.strip()]
        if any(not sep or not key.strip() for key, sep, _ in pairs):
            raise OverrideError(f"{name}: expected FIELD=VALUE[,FIELD=VALUE...], got {value!r}")
        return {key.strip(): raw.strip() for key, _, raw in pairs}
    return value


def _field_type(config_cls: type, key: str):
    """The type of field `key` of dataclass `config_cls`; OverrideError, naming the nearest field, if it has none."""
    names = [f.name for f in dataclasses.fields(config_cls)]
    if key not in names:
        raise OverrideError(f"{config_cls.__name__} has no field {key!r}{_nearest(key, names)} "
                            f"(fields: {', '.join(names) or 'none'})")
    return typing.get_type_hints(config_cls)[key]


def apply_overrides(config, overrides: Mapping[str, object]):
    """A copy of dataclass `config` with overrides (strings coerced to the fields' types), validated."""
    if not overrides:
        return config
    values = {key: _coerce(raw, _field_type(type(config), key), key) for key, raw in overrides.items()}
    try:
        return dataclasses.replace(config, **values)
    except ValueError as err:
        raise OverrideError(str(err)) from None


def parse_plugin_args(items: Iterable[str], option: str, configs: Mapping[str, type], *, kind: str, where: str,
                      bare: str | None = None, canonical: Callable[[str], str] | None = None) -> dict[str, dict]:
    """`NAME.FIELD=VALUE` items -> {NAME: {FIELD: value}}, each value coerced to the type of its field in
    `configs[NAME]` (the Config class of every plugin the command uses), so nothing runs on a typo.

    The one parser of `--method-arg`, `--train-arg`, `--sampler-arg` and `--metric-arg`, and so of one set of
    one-line OverrideErrors: an item not of the form NAME.FIELD=VALUE; a NAME not in `configs` (`where` says
    where they come from, e.g. "--samplers") or a FIELD not in its Config, each with the nearest known name; a
    VALUE that is not of the field's type. Values are checked against the Config's own rules (`__post_init__`)
    when they are applied (`apply_overrides`). NAME is everything before the last dot (labels may hold dots);
    with `bare`, an item without NAME is for `bare` (`--train-arg lr=1e-5`: every method). `canonical` maps a
    deprecated name to its current one.
    """
    out: dict[str, dict] = {}
    for item in items:
        key, sep, value = (part.strip() for part in item.partition("="))
        name, dot, field_name = key.rpartition(".")
        if not dot and bare is not None:
            name = bare
        if not sep or not field_name or not name:
            form = f"[{kind.upper()}.]FIELD=VALUE" if bare is not None else f"{kind.upper()}.FIELD=VALUE"
            raise OverrideError(f"{option} {item!r}: expected {form}")
        name = canonical(name) if canonical and name not in configs else name
        if name not in configs:
            known = ", ".join(n for n in configs if n != bare) or "none"
            raise OverrideError(f"{option} {item}: {kind} {name!r} is not in {where} ({known}){_nearest(name, configs)}")
        try:
            field_type = _field_type(configs[name], field_name)
        except OverrideError as err:
            raise OverrideError(f"{option} {item}: {err}") from None
        label = field_name if name == bare else f"{name}.{field_name}"
        out.setdefault(name, {})[field_name] = _coerce(value, field_type, f"{option} {label}")
    return out


def parse_plugin_configs(items: Iterable[str], option: str, registry, names: Iterable[str], *,
                         where: str) -> dict[str, object]:
    """The Config of every plugin in `names` (registered in `registry`: samplers, scorers), its defaults with the
    `NAME.FIELD=VALUE` items applied (`parse_plugin_args`, then the Config's validation: OverrideError)."""
    classes = {name: registry.get(name).Config for name in names}
    given = parse_plugin_args(items, option, classes, kind=registry.kind, where=where)
    configs = {}
    for name, config_cls in classes.items():
        try:
            configs[name] = apply_overrides(config_cls(), given.get(name, {}))
        except OverrideError as err:
            raise OverrideError(f"{option} {name}: {err}") from None
    return configs


def field_rows(config_cls: type) -> list[dict]:
    """Each field of dataclass `config_cls`: name, type, default, help and declared search range ("" if none),
    for `bench list NAME`."""
    rows = []
    for f in dataclasses.fields(config_cls):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        search = f.metadata.get("search")
        rows.append({"field": f.name, "type": f.type if isinstance(f.type, str) else f.type.__name__,
                     "default": repr(default), "help": f.metadata.get("help", ""),
                     "search": search.describe() if search is not None else ""})
    return rows


def as_dict(config) -> dict:
    return dataclasses.asdict(config)
