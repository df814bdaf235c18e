"""Typed, validated configuration of training and evaluation, and `key=value` overrides.

Each field's `metadata["help"]` documents it; `apply_overrides` turns CLI strings such as
`lr=3e-5` or `inversion=bdia` into a new validated dataclass, coercing by the field's type.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field

import torch

from bench.core.search_space import FloatRange

MIXED_PRECISION = ("no", "fp16", "bf16")
# The frozen pipeline's storage and evaluation precision (`bench run --dtype`); the VAE is float32 always.
PIPELINE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
OPTIMIZERS = ("adamw", "adafactor")


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


class OverrideError(ValueError):
    """A `key=value` override that names no field or whose value does not parse."""


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
    return value


def apply_overrides(config, overrides: dict):
    """A copy of dataclass `config` with overrides (strings coerced to the fields' types), validated."""
    if not overrides:
        return config
    hints = typing.get_type_hints(type(config))
    names = {f.name for f in dataclasses.fields(config)}
    values = {}
    for key, raw in overrides.items():
        if key not in names:
            raise OverrideError(f"{type(config).__name__} has no field {key!r}; fields: {', '.join(sorted(names))}")
        values[key] = _coerce(raw, hints[key], key)
    try:
        return dataclasses.replace(config, **values)
    except ValueError as err:
        raise OverrideError(str(err)) from None


def as_dict(config) -> dict:
    return dataclasses.asdict(config)
