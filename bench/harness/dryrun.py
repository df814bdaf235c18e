"""`bench run --dry-run`: a recipe's real shapes, step cost, memory and GPU-hours, with no weights.

Every component of the suite's pipeline is built from its config on the meta device (shapes only: no
memory, no weights, no hub): a local diffusers directory's config files, or, for the SD 1.5, SDXL, SD3.5 Medium
and FLUX.1-dev hub ids, the official configs in `bench.core.real_configs`. Inconsistent configs, launch shapes or
arguments raise `DryRunError` (a `RunSetupError`: one line, exit code 2 from the CLI).

Four families (the report's `family`), told apart by the denoiser's folder and class:

    sd, sdxl   unet/ UNet2DConditionModel; CLIP-L (SDXL: + CLIP-G with projection, pooled + 6 time ids);
               cross_attention_dim = the encoders' hidden sizes, in/out channels = the VAE's latent channels
    sd3        transformer/ SD3Transformer2DModel (Backbone's flow family); CLIP-L and CLIP-G with projections, T5
               optional; joint_attention_dim = T5's d_model (the CLIPs' 768 + 1280 zero-padded to it), pooled
               projections = the two projections (768 + 1280 = 2048), in/out channels = the VAE's (16); the forward
               takes 77 CLIP + 256 T5 tokens, as Backbone encodes them
    flux       transformer/ FluxTransformer2DModel; CLIP-L without projection
               and T5; joint_attention_dim = T5's d_model, pooled_projection_dim = CLIP-L's hidden size (768),
               in_channels = 4 x the VAE's 16 (2 x 2 latent patches packed into one token); the forward (as diffusers'
               FluxPipeline calls it) takes the packed latents with their position ids, 512 T5 tokens, CLIP-L's
               pooled output, σ and the distilled guidance scale

The "UNet" below is whichever denoiser the family has; "NFE" counts its evaluations of one latent.

Step cost, from each method's own declaration (`bench.harness.trainer.declared_step_cost`):

    nfe_step     = batch_size x grad_accum x processes x max_nfe_per_item      (worst case; on FLUX.1-dev, whose
                   transformer embeds the guidance scale, a guided forward counts 1 per latent, not CFG's 2)
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
                             without a reference. Floating-point buffers count as frozen weights (SD3's 226 M-value
                             sin-cos position table: in F at b, and in the fp32 trainable copy at 4)
    gradients    4 P
    optimizer    AdamW: 8 P (two fp32 moments). Adafactor as `make_optimizer` builds it (β1 = None: no
                 first moment): 4 x Σ over ≥2-D tensors of (prod(shape[:-1]) + prod(shape[:-2]) x shape[-1])
                 (its factored second moment) + 4 x numel of 1-D tensors
    autocast     2 P under fp16/bf16: the half-precision casts of the trainable weights, held for backward
    activations  the bytes autograd saves for one micro-batch's backward: the graded denoiser forwards alive
                 together, and the VAE decoder's saves where the loss backpropagates through the decode (each method
                 declares them: `AlignmentMethod.graded_forward`), traced on the meta device in the compute dtype
                 (fp32 without mixed precision), with fused attention (flash / memory-efficient SDPA saves q, k, v,
                 the output and an fp32 log-sum-exp, not the L x L matrix). Per method, with B = batch_size and c = 2
                 under classifier-free guidance (w ≠ 1: the cond and uncond branches run as one call of 2x the
                 latents, `Backbone.prediction`), 1 without it and on FLUX.1-dev (guidance embedded, one branch):
                   offline        one forward of B x images per item latents (a pair is 2)
                   ddpo, grpo,    one forward of B x G x c latents (G = samples_per_prompt): every trajectory
                   flow-grpo      at one step; each trained step is its own micro-batch, backpropagated before
                                  the next, so one graph is alive (a KL reference forward has no gradient)
                   diffusionnft   one forward of B x G latents (conditional; θ_old's forward has no gradient)
                   dense-reward   S = logit_steps forwards of 2 x B x pairs_per_prompt x c latents alive together
                                  ([winners; losers] at each drawn step; z sums the S log-ratios before the backward)
                   draft          K forwards of B x c latents (the last K sampling steps, chained; refl: 1), and
                                  the VAE decoder's saves for B images (decoded with gradients)
                 Why: gpu-check on one H200 measured the online methods 1.10 (ddpo) to 1.75 (grpo) over an estimate
                 of one forward of B x samples_per_prompt latents, which missed CFG's second branch, dense-reward's
                 S graphs and draft's decode; the peak of simultaneously saved bytes measured on the tiny CPU shapes
                 is 0.96-0.97 of this estimate for each (tests/test_dryrun.py). With gradient checkpointing, per graph:
                 the saves outside checkpointed blocks + every block's inputs, and once the largest block's saves
                 (recomputed one block at a time in backward)
    total        the sum: an upper bound on the step's peak (gradients build up as activations are freed), reached
                 where micro-batches accumulate (ddpo's and grpo's one per trained step: the gradients are whole
                 while the next micro-batch's activations are alive)

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

Not counted: the CUDA context and allocator slack (~1 GiB), transient no-grad forwards (rollouts, references, the
reward's scoring), the reward model and, where draft backpropagates through it, its saves (PickScore's ViT-H/14:
0.2 GiB per image in fp16), the preference data (kept on the CPU) and evaluation. Nor autocast's fp32 islands: under
CUDA fp16 autocast, group / layer norms run in fp32 and save fp32 inputs, and the SiLU after a norm saves that fp32
output, so the SD 1.5 UNet saves 1.31x its fp16 trace and the VAE decoder 1.68x (traced with fake CUDA tensors, the
weights' fp16 casts aside). Where activations dominate, that is what remains: SD 1.5 grpo's 29.3 GiB x 0.31 = 9.2 GiB,
its H200 peak 8.7 GiB over this estimate's 45.8.
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
from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel
from peft import inject_adapter_in_model
from rich.table import Table
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from bench.core.backbone import takes_guidance_input
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
DENOISERS = {"UNet2DConditionModel": UNet2DConditionModel, "SD3Transformer2DModel": SD3Transformer2DModel,
             "FluxTransformer2DModel": FluxTransformer2DModel}
TRANSFORMER_FAMILIES = {"StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux", "SD3Transformer2DModel": "sd3",
                        "FluxTransformer2DModel": "flux"}
FAMILY_DENOISER = {"sd": "UNet2DConditionModel", "sdxl": "UNet2DConditionModel", "sd3": "SD3Transformer2DModel",
                   "flux": "FluxTransformer2DModel"}
TEXT_ENCODERS = {"CLIPTextModel": lambda c: CLIPTextModel(CLIPTextConfig.from_dict(c)),
                 "CLIPTextModelWithProjection": lambda c: CLIPTextModelWithProjection(CLIPTextConfig.from_dict(c)),
                 "T5EncoderModel": lambda c: T5EncoderModel(T5Config.from_dict(c))}
# The text encoders of each transformer family by folder, where model_index.json does not name their classes
FAMILY_TEXT_ENCODERS = {"sd3": {"text_encoder": "CLIPTextModelWithProjection", "text_encoder_2": "CLIPTextModelWithProjection",
                                "text_encoder_3": "T5EncoderModel"},
                        "flux": {"text_encoder": "CLIPTextModel", "text_encoder_2": "T5EncoderModel"}}
# T5 tokens of the text sequence: SD3 as `Backbone` encodes it (CLIP's 77 then T5's `max_sequence_length` = 256, the
# default of diffusers' StableDiffusion3Pipeline, zeros without a T5); FLUX.1-dev as diffusers' FluxPipeline (512, its
# default for dev). Flow-GRPO's recipes encode 128 T5 tokens for both.
T5_TOKENS = {"sd3": 256, "flux": 512}
FLUX_PACKING = 2  # FLUX packs 2 x 2 latent patches into one token: in_channels = 4 x the VAE's latent channels


def denoiser_key(configs: dict) -> str:
    """The folder of the pipeline's denoiser: "transformer" (SD3, FLUX) or "unet"."""
    return "transformer" if "transformer" in configs else "unet"


def pipeline_family(configs: dict) -> str:
    """"sd" or "sdxl" for UNet pipelines (SDXL: a second text encoder), "sd3" or "flux" for transformer pipelines: the
    pipeline class model_index.json names, else the transformer config's `_class_name`, else its keys (FLUX's
    single-stream blocks)."""
    if denoiser_key(configs) == "unet":
        return "sdxl" if "text_encoder_2" in configs else "sd"
    transformer = configs["transformer"]
    for name in (configs.get("model_index", {}).get("_class_name"), transformer.get("_class_name")):
        if name in TRANSFORMER_FAMILIES:
            return TRANSFORMER_FAMILIES[name]
    return "flux" if "num_single_layers" in transformer else "sd3"


# a diffusers pipeline directory's config file of each component
CONFIG_FILES = {"model_index": "model_index.json", "unet": "unet/config.json", "transformer": "transformer/config.json",
                "vae": "vae/config.json", "text_encoder": "text_encoder/config.json",
                "text_encoder_2": "text_encoder_2/config.json", "text_encoder_3": "text_encoder_3/config.json",
                "scheduler": "scheduler/scheduler_config.json"}


def write_config_files(configs: dict[str, dict], path: Path) -> Path:
    """Component configs as a diffusers directory without weights, what `component_configs` reads back."""
    for name, config in configs.items():
        (path / CONFIG_FILES[name]).parent.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILES[name]).write_text(json.dumps(config))
    return path


def component_configs(pipeline: str) -> tuple[dict[str, dict], str]:
    """The pipeline's component configs and where they came from: a local diffusers directory's files,
    else the built-in official config of a known hub id."""
    path = Path(pipeline)
    if path.is_dir():
        transformer = (path / CONFIG_FILES["transformer"]).is_file()
        extra_encoders = ["text_encoder_2"]  # used only where model_index.json names them
        if transformer:  # SD3 / FLUX: transformer/ instead of unet/, and SD3's T5 in text_encoder_3/
            extra_encoders.append("text_encoder_3")
        skipped = ("unet",) if transformer else ("transformer", "text_encoder_3")
        files = {name: rel for name, rel in CONFIG_FILES.items() if name not in skipped}
        configs = {}
        for name, rel in files.items():
            if (path / rel).is_file():
                try:
                    configs[name] = json.loads((path / rel).read_text())
                except json.JSONDecodeError as err:
                    raise DryRunError(f"{path / rel} is not valid JSON: {err}") from None
            elif name not in ("model_index", *extra_encoders):
                raise DryRunError(f"pipeline directory {path} has no {rel}")
        for name in extra_encoders:
            if name in configs and not (configs.get("model_index", {}).get(name) or [None])[0]:
                configs.pop(name)  # a stale folder the pipeline does not use (as Backbone.from_pretrained)
        return configs, f"config files in {path}"
    if pipeline in PIPELINE_CONFIGS:
        return json.loads(json.dumps(PIPELINE_CONFIGS[pipeline])), f"built-in official config of {pipeline}"
    raise DryRunError(f"no config for pipeline {pipeline!r} offline: pass a local diffusers directory (--pipeline DIR) "
                      f"or one of {', '.join(PIPELINE_CONFIGS)}")


def _text_encoder_class(name: str, config: dict, configs: dict, family: str) -> str:
    """A transformer pipeline's text encoder class: as model_index.json names it, else by its config (a T5), else the
    family's (`FAMILY_TEXT_ENCODERS`)."""
    named = (configs.get("model_index", {}).get(name) or [None, None])[-1]
    if named in TEXT_ENCODERS:
        return named
    if config.get("model_type") == "t5" or "d_model" in config:
        return "T5EncoderModel"
    return FAMILY_TEXT_ENCODERS[family].get(name, "CLIPTextModelWithProjection")


def build_on_meta(configs: dict[str, dict]) -> dict[str, torch.nn.Module]:
    """The denoiser (UNet, SD3 or FLUX transformer), VAE and text encoder(s) built from their configs on the meta device
    (the classes Backbone loads; for FLUX, those of diffusers' FluxPipeline)."""
    family = pipeline_family(configs)
    builders = {"vae": lambda c: AutoencoderKL.from_config(c)}
    if family in ("sd", "sdxl"):
        builders = {"unet": lambda c: UNet2DConditionModel.from_config(c), **builders,
                    "text_encoder": TEXT_ENCODERS["CLIPTextModel"],
                    "text_encoder_2": TEXT_ENCODERS["CLIPTextModelWithProjection"]}
    else:
        denoiser = DENOISERS[FAMILY_DENOISER[family]]
        builders = {"transformer": lambda c: denoiser.from_config(c), **builders}
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            if name in configs:
                builders[name] = TEXT_ENCODERS[_text_encoder_class(name, configs[name], configs, family)]
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


def module_family(modules: dict[str, torch.nn.Module]) -> str:
    """"sd", "sdxl", "sd3" or "flux" of built components (`pipeline_family` of their configs)."""
    if "unet" in modules:
        return "sdxl" if "text_encoder_2" in modules else "sd"
    return "flux" if isinstance(modules["transformer"], FluxTransformer2DModel) else "sd3"


def check_consistency(modules: dict[str, torch.nn.Module]) -> None:
    """The checks a real load would fail on only after minutes of downloading: the denoiser's text width is the text
    encoders', its channels are the VAE's latent channels (FLUX: x 4, 2 x 2 patches packed), its pooled input the
    encoders' pooled width (SDXL: plus six time ids)."""
    if "unet" not in modules:
        _check_transformer(modules, module_family(modules))
        return
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


def _width(encoder: torch.nn.Module) -> int:
    """A text encoder's per-token width: CLIP's hidden_size, T5's d_model."""
    config = encoder.config
    return config.d_model if isinstance(encoder, T5EncoderModel) else config.hidden_size


def _check_transformer(modules: dict[str, torch.nn.Module], family: str) -> None:
    """SD3: CLIP-L and CLIP-G with projections (their hidden states concatenated, zero-padded to joint_attention_dim,
    then T5's tokens), pooled projections = both projections; FLUX: CLIP-L's pooled output and T5's tokens. Latent
    channels: SD3's in/out = the VAE's; FLUX's = 4 x the VAE's (2 x 2 packing), rotary axes summing to the head width."""
    transformer, vae = modules["transformer"].config, modules["vae"].config
    t5_name = "text_encoder_3" if family == "sd3" else "text_encoder_2"
    t5 = modules.get(t5_name)
    clips = [modules[n] for n in (("text_encoder", "text_encoder_2") if family == "sd3" else ("text_encoder",))
             if n in modules]
    expected = {"sd3": ["CLIPTextModelWithProjection"] * 2, "flux": ["CLIPTextModel"]}[family]
    shaped = {"sd3": "an SD3", "flux": "a FLUX"}[family]
    if [type(m).__name__ for m in clips] != expected:
        names = " and ".join(("text_encoder", "text_encoder_2")[: len(expected)])
        raise DryRunError(f"{shaped}-shaped pipeline needs {names} as {' and '.join(expected)}")
    if family == "flux" and t5 is None:
        raise DryRunError(f"{shaped}-shaped pipeline needs its T5 encoder in text_encoder_2")
    if t5 is not None and not isinstance(t5, T5EncoderModel):
        raise DryRunError(f"{t5_name} is a {type(t5).__name__}; expected a T5EncoderModel")
    joint = transformer.joint_attention_dim
    if t5 is not None and _width(t5) != joint:
        raise DryRunError(f"transformer joint_attention_dim {joint} != {t5_name} (T5) d_model {_width(t5)}")
    clip_width = sum(_width(m) for m in clips)
    if family == "sd3" and clip_width > joint:
        raise DryRunError(f"transformer joint_attention_dim {joint} < the CLIP hidden sizes "
                          f"{' + '.join(str(_width(m)) for m in clips)} it pads")
    pooled = (sum(m.config.projection_dim for m in clips) if family == "sd3" else clip_width)
    if transformer.pooled_projection_dim != pooled:
        what = ("text_encoder + text_encoder_2 projection_dim " + " + ".join(str(m.config.projection_dim) for m in clips)
                if family == "sd3" else f"text_encoder hidden size {clip_width}")
        raise DryRunError(f"transformer pooled_projection_dim {transformer.pooled_projection_dim} != {what}")
    pack = FLUX_PACKING ** 2 if family == "flux" else 1
    for side in ("in_channels", "out_channels"):
        channels = getattr(transformer, side) or transformer.in_channels  # FLUX: out_channels None = in_channels
        if channels != vae.latent_channels * pack:
            packing = f" x {pack} (2 x 2 packing)" if pack > 1 else ""
            raise DryRunError(f"vae latent_channels {vae.latent_channels}{packing} != transformer {side} {channels}")
    factor = 2 ** (len(vae.block_out_channels) - 1)
    if vae.sample_size % factor:
        raise DryRunError(f"vae sample_size {vae.sample_size} is not divisible by its downsampling factor {factor}")
    size = vae.sample_size // factor
    patch = transformer.patch_size if family == "sd3" else FLUX_PACKING
    if size % patch:
        raise DryRunError(f"latent size {size} is not divisible by the transformer's {patch} x {patch} patches")
    if family == "sd3" and transformer.pos_embed_max_size and size // patch > transformer.pos_embed_max_size:
        raise DryRunError(f"{size // patch} patches per side exceed the transformer's pos_embed_max_size "
                          f"{transformer.pos_embed_max_size}")
    if family == "flux" and sum(transformer.axes_dims_rope) != transformer.attention_head_dim:
        raise DryRunError(f"transformer axes_dims_rope {list(transformer.axes_dims_rope)} do not sum to "
                          f"attention_head_dim {transformer.attention_head_dim}")


def latent_shape_of(modules: dict[str, torch.nn.Module]) -> tuple[int, int, int]:
    """One image's latent (C, h, w) at the VAE's sample size, as Backbone holds it (FLUX packs it only for the
    transformer's forward)."""
    vae = modules["vae"].config
    factor = 2 ** (len(vae.block_out_channels) - 1)
    channels = modules["unet"].config.in_channels if "unet" in modules else vae.latent_channels
    return (channels, vae.sample_size // factor, vae.sample_size // factor)


@dataclass(frozen=True)
class TextShapes:
    """The conditioning the denoiser's forward takes: per-token width and count, and the pooled width (None: none)."""
    width: int
    tokens: int
    pooled: int | None


def text_shapes(modules: dict[str, torch.nn.Module]) -> TextShapes:
    """SD: CLIP's hidden states (77 tokens); SDXL: both CLIPs' concatenated, pooled = CLIP-G's projection; SD3: 77 CLIP +
    256 T5 tokens at joint_attention_dim, pooled = both projections; FLUX: 512 T5 tokens, pooled = CLIP-L's output."""
    family = module_family(modules)
    first = modules["text_encoder"].config
    if family in ("sd", "sdxl"):
        encoders = [modules[n] for n in ("text_encoder", "text_encoder_2") if n in modules]
        pooled = encoders[-1].config.projection_dim if family == "sdxl" else None
        return TextShapes(sum(e.config.hidden_size for e in encoders), first.max_position_embeddings, pooled)
    transformer = modules["transformer"].config
    if family == "sd3":
        pooled = sum(modules[n].config.projection_dim for n in ("text_encoder", "text_encoder_2"))
        return TextShapes(transformer.joint_attention_dim, first.max_position_embeddings + T5_TOKENS["sd3"], pooled)
    return TextShapes(transformer.joint_attention_dim, T5_TOKENS["flux"], first.hidden_size)


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def buffer_count(module: torch.nn.Module) -> int:
    """Floating-point buffer values: weights that do not train but are stored and held (SD3's 226 M-value sin-cos
    position table); integer buffers (CLIP's position ids) are not counted."""
    return sum(b.numel() for b in module.buffers() if b.is_floating_point())


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


def denoiser_class(config: dict) -> type[torch.nn.Module]:
    """The diffusers class of a denoiser config: its `_class_name`, else by its keys (FLUX's single-stream blocks, SD3's
    caption projection), else a UNet."""
    if config.get("_class_name") in DENOISERS:
        return DENOISERS[config["_class_name"]]
    if "num_single_layers" in config:
        return FluxTransformer2DModel
    return SD3Transformer2DModel if "caption_projection_dim" in config else UNet2DConditionModel


def denoiser_inputs(denoiser: torch.nn.Module, text: TextShapes, latent_shape: tuple[int, int, int], latents: int,
                    dtype: torch.dtype) -> dict:
    """Meta tensors for one training forward of `latents` latents, as each family's call takes them (Backbone's UNet and
    SD3 calls; diffusers' FluxPipeline call for FLUX)."""
    def empty(*shape, dtype=dtype):
        return torch.empty(*shape, device="meta", dtype=dtype)

    x = empty(latents, *latent_shape)  # (B, C, h, w)
    embeds = empty(latents, text.tokens, text.width)  # (B, L, D)
    if isinstance(denoiser, UNet2DConditionModel):
        added = None
        if text.pooled is not None:  # SDXL: pooled text embedding (B, D2) and time ids (B, 6)
            added = {"text_embeds": empty(latents, text.pooled), "time_ids": empty(latents, 6)}
        t = torch.zeros(latents, dtype=torch.long, device="meta")
        return {"sample": x, "timestep": t, "encoder_hidden_states": embeds, "added_cond_kwargs": added}
    inputs = {"encoder_hidden_states": embeds, "pooled_projections": empty(latents, text.pooled),
              "timestep": empty(latents, dtype=torch.float32), "return_dict": False}  # SD3: 1000 σ, float32
    if isinstance(denoiser, SD3Transformer2DModel):
        return {"hidden_states": x, **inputs}
    channels, h, w = latent_shape  # FLUX: 2 x 2 patches packed into tokens, with their (0, row, column) ids
    tokens = (h // FLUX_PACKING) * (w // FLUX_PACKING)
    inputs["timestep"] = empty(latents)  # σ in [0, 1], in the latents' dtype (FluxPipeline's call)
    if denoiser.config.guidance_embeds:  # FLUX.1-dev's distilled guidance scale (B,)
        inputs["guidance"] = empty(latents, dtype=torch.float32)
    return {"hidden_states": empty(latents, tokens, channels * FLUX_PACKING ** 2), **inputs,  # (B, h w / 4, 4 C)
            "img_ids": empty(tokens, 3), "txt_ids": empty(text.tokens, 3)}


def activation_bytes(unet_config: dict, text_width: int, text_tokens: int, pooled_width: int | None,
                     latent_shape: tuple[int, int, int], latents: int, dtype: torch.dtype, checkpointing: bool,
                     lora: TrainConfig | None = None, graphs: int = 1) -> int:
    """Bytes autograd holds after `graphs` training forwards of `latents` latents each, alive together (module
    docstring), traced on meta; with `lora` (a config with lora_rank > 0) of the denoiser with its adapters, only they
    trainable. `unet_config` is the denoiser's config (a UNet's, or by its `_class_name` an SD3 or FLUX transformer's);
    `latent_shape` one image's latent as the VAE makes it (C, h, w). With checkpointing each graph keeps its saves
    outside the blocks and its blocks' inputs, and one block's saves are recomputed at a time."""
    with torch.device("meta"):
        denoiser = denoiser_class(unet_config).from_config(unet_config)
        if lora is not None and lora.lora_rank:
            inject_adapter_in_model(lora_config(lora), denoiser, low_cpu_mem_usage=True)  # only the adapters trainable
    torch.nn.Module.to(denoiser, dtype).train()
    weights = {id(t) for t in (*denoiser.parameters(), *denoiser.buffers())}
    outer, blocks = _SavedBytes(weights), []

    def counting_checkpoint(module, *args):
        block = _SavedBytes(weights)
        with torch.autograd.graph.saved_tensors_hooks(block.pack, lambda t: t):
            out = module(*args)
        blocks.append((block.bytes, args))
        return out

    if checkpointing:
        denoiser.enable_gradient_checkpointing(gradient_checkpointing_func=counting_checkpoint)
    inputs = denoiser_inputs(denoiser, TextShapes(text_width, text_tokens, pooled_width), latent_shape, latents, dtype)
    with unittest.mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", _fused_sdpa), \
            torch.autograd.graph.saved_tensors_hooks(outer.pack, lambda t: t):
        denoiser(**inputs)
    for _, args in blocks:  # checkpointed blocks keep their inputs (FLUX's rotary (cos, sin) pair too) to recompute
        outer.add(arg for a in args for arg in (a if isinstance(a, tuple) else (a,)))
    return graphs * outer.bytes + max((b for b, _ in blocks), default=0)


def decoder_activation_bytes(vae_config: dict, latent_shape: tuple[int, int, int], images: int,
                             dtype: torch.dtype) -> int:
    """Bytes autograd holds after decoding `images` latents with gradients to them through the frozen VAE decoder
    (`Backbone.decode(grad=True)`: reward backpropagation), traced on meta in `dtype` with fused attention; the weights
    are not counted."""
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(vae_config)
    torch.nn.Module.to(vae, dtype).eval().requires_grad_(False)
    saved = _SavedBytes({id(t) for t in (*vae.parameters(), *vae.buffers())})
    z = torch.empty(images, *latent_shape, device="meta", dtype=dtype, requires_grad=True)
    with unittest.mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", _fused_sdpa), \
            torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        ((vae.decode(z / vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)
    return saved.bytes


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
                  seconds_per_nfe: float | None, denoiser: torch.nn.Module, frozen_bytes: int, frozen_width: int,
                  activations, decoder_activations, embedded_guidance: bool) -> dict:
    """One method's report row. `embedded_guidance`: the denoiser takes the guidance scale as an input (FLUX.1-dev's
    `guidance_embeds`), so a guided forward is one branch, in NFE and in activations."""
    autocast = cfg.mixed_precision != "no"
    if cfg.lora_rank:
        try:
            shapes = lora_shapes(denoiser, cfg)
        except ValueError as err:
            raise DryRunError(f"{name}: {err}") from None
        trainable = lora_parameter_count(denoiser, cfg)
        # autocast's casts of a frozen fp32 denoiser are kept for the backward to the adapters (module docstring)
        frozen_casts = 2 * parameter_count(denoiser) if autocast and frozen_width == 4 else 0
    else:
        shapes, trainable, frozen_casts = [tuple(p.shape) for p in denoiser.parameters()], parameter_count(denoiser), 0
        frozen_bytes += 4 * buffer_count(denoiser)  # the trainable copy's buffers (SD3's position table), fp32
    micro_latents = declared_step_cost(method, dataclasses.replace(cfg, grad_accum=1), "samples")  # per process
    nfe_step = declared_step_cost(method, cfg, "nfe", processes, embedded_guidance=embedded_guidance)
    samples_step = declared_step_cost(method, cfg, "samples", processes)
    per_item = method.graded_forward(embedded_guidance=embedded_guidance)
    graded = dataclasses.replace(per_item, latents=cfg.batch_size * per_item.latents,
                                 decoded=cfg.batch_size * per_item.decoded)
    dtype = COMPUTE_DTYPES[cfg.mixed_precision]
    denoiser_saves = activations(graded.latents, dtype, cfg.gradient_checkpointing, cfg if cfg.lora_rank else None,
                                 graded.graphs)
    decoder_saves = decoder_activations(graded.decoded, dtype) if graded.decoded else 0
    memory = {"weights_trainable": 4 * trainable, "weights_frozen": frozen_bytes, "gradients": 4 * trainable,
              "optimizer": optimizer_state_bytes_of(shapes, cfg.optimizer),
              "autocast_copies": (2 * trainable if autocast else 0) + frozen_casts,
              "activations": denoiser_saves + decoder_saves}
    memory["total"] = sum(memory.values())
    lora = ({"rank": cfg.lora_rank, "alpha": cfg.lora_alpha if cfg.lora_alpha is not None else cfg.lora_rank,
             "targets": cfg.lora_targets, "layers": len(shapes) // 2} if cfg.lora_rank else None)
    return {"method": name, "data_kind": method.data_kind, "needs_reference": method.needs_reference,
            "trainable_parameters": trainable, "lora": lora,
            "batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
            "items_per_step": cfg.batch_size * cfg.grad_accum * processes,
            "nfe_per_item": method.max_nfe_per_item(embedded_guidance=embedded_guidance),
            "nfe_per_step": nfe_step, "samples_per_step": samples_step, "micro_batch_latents": micro_latents,
            "graded_forward": {"latents": graded.latents, "graphs": graded.graphs, "decoded_images": graded.decoded,
                               "denoiser_bytes": denoiser_saves, "vae_decoder_bytes": decoder_saves},
            "mixed_precision": cfg.mixed_precision, "gradient_checkpointing": cfg.gradient_checkpointing,
            "optimizer": cfg.optimizer, "memory_bytes": memory,
            "budgets": [budget_plan(b, nfe_step, samples_step, processes, seconds_per_nfe) for b in budgets]}


def _scheduler_entry(config: dict, family: str) -> dict:
    """The scheduler row: the class Backbone builds from the pipeline's scheduler config."""
    given = str(config.get("_class_name", "?"))
    if family in ("sd", "sdxl"):
        described = f"DDIMScheduler (as Backbone loads it), from {given}"
    else:
        shift = "dynamic shift" if config.get("use_dynamic_shifting") else f"shift {config.get('shift', 1.0):g}"
        described = f"{given} ({shift}{', as Backbone loads it' if family == 'sd3' else ''})"
    return {"component": "scheduler", "class": described, "parameters": 0, "buffers": 0, "trainable": False}


def _family_assumptions(family: str, text: TextShapes, latent_shape: tuple[int, int, int]) -> list[str]:
    """What the activation trace of a transformer family feeds it."""
    if family == "sd3":
        return [f"SD3 forward: latents {'x'.join(map(str, latent_shape))} in 2 x 2 patches, {text.tokens} text tokens "
                f"(CLIP 77 + T5 {T5_TOKENS['sd3']}, as Backbone encodes them) x {text.width}, pooled {text.pooled}"]
    channels, h, w = latent_shape
    return [f"FLUX forward: latents {channels}x{h}x{w} packed 2 x 2 into {h * w // FLUX_PACKING ** 2} tokens of "
            f"{channels * FLUX_PACKING ** 2}, {text.tokens} T5 tokens x {text.width} (FluxPipeline's max_sequence_length), "
            f"pooled CLIP {text.pooled}, distilled guidance embedded (no CFG batch)"]


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
    family, key = module_family(modules), denoiser_key(modules)
    denoiser, text, latent_shape = modules[key], text_shapes(modules), latent_shape_of(modules)
    components = [{"component": name, "class": type(module).__name__, "parameters": parameter_count(module),
                   "buffers": buffer_count(module), "trainable": name == key} for name, module in modules.items()]
    if "scheduler" in configs:
        components.append(_scheduler_entry(configs["scheduler"], family))
    frozen_width = PIPELINE_DTYPES[plan.dtype].itemsize  # the base denoiser and text encoders; the VAE is fp32
    frozen_bytes = sum((c["parameters"] + c["buffers"]) * (4 if c["component"] == "vae" else frozen_width)
                       for c in components)

    traced: dict[tuple, int] = {}

    def activations(latents: int, dtype: torch.dtype, checkpointing: bool, lora: TrainConfig | None,
                    graphs: int = 1) -> int:
        key = (latents, dtype, checkpointing, lora and (lora.lora_rank, lora.lora_targets), graphs)
        if key not in traced:
            config = {**dict(denoiser.config), "_class_name": type(denoiser).__name__}
            traced[key] = activation_bytes(config, text.width, text.tokens, text.pooled, latent_shape, latents, dtype,
                                           checkpointing, lora, graphs)
        return traced[key]

    def decoder_activations(images: int, dtype: torch.dtype) -> int:
        key = ("vae", images, dtype)
        if key not in traced:
            traced[key] = decoder_activation_bytes(dict(modules["vae"].config), latent_shape, images, dtype)
        return traced[key]

    embedded_guidance = takes_guidance_input(denoiser.config)  # as `Backbone.embeds_guidance`
    methods = [_method_entry(name, method, plan.train_configs[name], processes, plan.budgets, seconds_per_nfe, denoiser,
                             frozen_bytes, frozen_width, activations, decoder_activations, embedded_guidance)
               for name, method in plan.methods.items()]
    part = "UNet" if key == "unet" else "transformer"
    assumptions = [
        f"weights: trainable {part} fp32 (mixed precision autocasts, keeps fp32 weights); frozen base {part} and text "
        f"encoders {plan.dtype} (--dtype), VAE fp32, as `bench run` loads them (the base {part} stays for evaluation even "
        "without a reference)",
        "gradients fp32; AdamW 2 fp32 moments; Adafactor without first moment, factored fp32 second moment",
        "LoRA (lora_rank > 0): only the fp32 adapters train (weights, gradients, optimizer state, autocast casts); the "
        f"policy's frozen weights are the base {part}'s tensors, counted once at their dtype, and a frozen fp32 {part}'s "
        "autocast casts are kept for the backward",
        "autocast: fp16/bf16 casts of the trainable weights, held for backward",
        "activations: the graded forwards of one per-process micro-batch alive together (offline: batch x images per "
        "item latents; online: as each method's loss runs them, classifier-free guidance's two branches and draft's "
        "VAE decode included), traced on meta in the compute dtype, fused attention (no L x L matrix); checkpointing "
        "keeps block inputs + the largest block; accumulation does not add (one micro-batch alive)",
        "total = sum of the rows, an upper bound on the peak; CUDA context and allocator slack (~1 GiB) not counted",
        "NFE per step: the method's declared worst case x batch x accumulation x processes (a backward counts 2)",
        f"GPU-h = NFE x seconds-per-NFE / 3600 (device-seconds per {part} evaluation of one latent); wall-clock = GPU-h / "
        "processes",
    ]
    if key == "transformer":
        assumptions += _family_assumptions(family, text, latent_shape)
        if any(c["buffers"] for c in components):
            assumptions.append("buffers (SD3's sin-cos position table) are weights too: frozen at --dtype, and the full "
                               "fine-tuning copy's in fp32")
    if seconds_per_nfe is None:
        notes.append(f"pass --seconds-per-nfe (device-seconds per {part} evaluation of one latent) for GPU-hours")
    return DryRunReport(suite, plan.pipeline, source, family, processes, latent_shape, components,
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
    """What a method trains: every denoiser weight, or LoRA adapters (rank, α, adapter parameters)."""
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
        buffers = f" + {_count(c['buffers'])} buffer values" if c.get("buffers") else ""
        parts.add_row(c["component"], c["class"], _count(c["parameters"]) + buffers, "yes" if c["trainable"] else "no")

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
