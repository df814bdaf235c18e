"""One object over a Stable-Diffusion-shaped pipeline's parts; methods and samplers talk only to it.

A `Backbone` holds a denoiser, an `AutoencoderKL`, the text encoder(s) with their tokenizers and the noise
schedule. Four families share the interface (`family`):

- "sd": a diffusers `UNet2DConditionModel`, a transformers `CLIPTextModel` + `CLIPTokenizer` and the DDIM
  schedule. The toy pipeline and SD 1.5 are the same class with other weights (`Backbone.from_pretrained(dir_or_hub_id)`).
- "sdxl": SDXL-shaped pipelines add a second encoder (`CLIPTextModelWithProjection` + tokenizer) and
  micro-conditioning: as diffusers' `StableDiffusionXLPipeline.encode_prompt` does, the per-token embeddings are the
  penultimate hidden states of both encoders concatenated on the feature axis, the pooled embedding is the second
  encoder's projection, the time ids are (H, W, 0, 0, H, W), and the empty prompt is all zeros when the pipeline sets
  `force_zeros_for_empty_prompt` (SDXL base does).
- "sd3": SD3-shaped pipelines (Esser et al. 2024, "Scaling Rectified Flow Transformers for High-Resolution Image
  Synthesis"; diffusers' `pipelines/stable_diffusion_3/pipeline_stable_diffusion_3.py`): an `SD3Transformer2DModel`
  on a rectified-flow schedule (`FlowMatchEulerDiscreteScheduler`), two CLIP encoders (`CLIPTextModelWithProjection`,
  CLIP-L and CLIP-G) and an optional T5 (`T5EncoderModel`). As `StableDiffusion3Pipeline.encode_prompt` does, the
  per-token embeddings are both CLIPs' penultimate hidden states concatenated on features, zero-padded to the
  transformer's `joint_attention_dim` and concatenated along the sequence with T5's last hidden states (without T5,
  zeros of (B, `max_sequence_length` = 256, joint_attention_dim)); the pooled projection is both CLIPs' `text_embeds`
  concatenated (`Conditioning.added["pooled_projections"]`); the unconditional branch of CFG is the encoded empty
  prompt (SD3 does not zero it). Its VAE has a `shift_factor`: latents = (z − shift) · scale.
- "flux": FLUX-shaped pipelines (Black Forest Labs' FLUX.1; diffusers' `pipelines/flux/pipeline_flux.py`): a
  `FluxTransformer2DModel` on the same rectified-flow schedule, guidance-distilled (FLUX.1-dev), a CLIP-L
  (`CLIPTextModel`) whose pooled output is the transformer's `pooled_projections`, and a T5 (`T5EncoderModel`,
  required) whose last hidden states over `max_sequence_length` = 512 tokens are the per-token embeddings, as
  `FluxPipeline.encode_prompt` does; the VAE has 16 channels and FLUX's scale and shift (0.3611, 0.1159). The Backbone
  holds the T5 and its tokenizer as `text_encoder_3`/`tokenizer_3` in every family (diffusers' FLUX folders are
  `text_encoder_2/`, `tokenizer_2/`; `from_pretrained`/`save_pretrained` map them). Latents stay (B, C, h, w) in the
  interface, as every family's; only `model_output` packs them into FLUX's sequence of 2×2 patches (B, h/2 · w/2, 4C)
  with their position ids (0, row, column) and the text's zero ids, and unpacks the output (FluxPipeline's
  `_pack_latents`, `_prepare_latent_image_ids`, `_unpack_latents`).

  Guidance on FLUX. A guidance-distilled transformer takes the guidance scale w as an input (its `guidance` embedding,
  FluxPipeline's `guidance_scale`, 3.5 by default for dev) and was distilled to approximate classifier-free guidance at
  scale w with one forward. So `prediction(..., guidance=w)` (and `eps`, `denoise`) on FLUX passes w as the embedded
  guidance and runs no unconditional branch: 1 NFE per latent at every w, and w = 1 is the (approximate) conditional
  prediction, as CFG's w = 1 is on the other families. There is no unconditional branch for an `uncond` to enter: a
  guided call with one (null-text inversion) is refused. A FLUX transformer without the embedding (`guidance_embeds`
  False, FLUX.1-schnell-shaped) takes w = 1 only. `embeds_guidance` says whether the denoiser takes w as an input.

  A call that passes no w (guidance None, e.g. every training forward of an offline method) gets `default_guidance` on
  a transformer that embeds it, and w = 1 (no guidance: the conditional prediction) on every other denoiser. The base
  is 1; the trainer's policy and reference are views at `TrainConfig.train_guidance` (`with_default_guidance`), so
  FLUX.1-dev can be trained at the scale it samples at (3.5, as diffusers' FLUX training scripts pass it) while no
  method names the family.

The attribute `unet` holds the denoiser whatever the family: a UNet, an SD3 or a FLUX transformer.

Levels. A noise level t is a float64 value of the denoiser's own timestep: the integer DDPM timestep on the
variance-preserving (VP) schedule of the UNet families (the UNet receives it as an integer, as diffusers passes it),
1000·σ on the flow schedule (what `StableDiffusion3Pipeline` passes to the transformer; FluxPipeline passes
t / 1000 = σ, which the FLUX transformer multiplies back by 1000). t < 0 (by convention −1)
is the clean end of the chain. `noise_levels(t)` gives (a_t, s_t) of x_t = a_t x_0 + s_t ε, float64, the schedule
every method and sampler reads:

    schedule  levels t                      a_t              s_t                clean end (t < 0)
    VP        0 ... T−1 (DDPM timesteps)    √ᾱ_t             √(1 − ᾱ_t)         ᾱ = `final_alpha_cumprod`
    flow      1000·σ, σ in [0, 1]           1 − σ            σ                  σ = 0 (also at t = 0)

with ᾱ_t = `alphas_cumprod[t]` (DDIM notation, Song et al. 2021) and σ = t / `num_train_timesteps`, so that on the
flow schedule x_σ = (1 − σ) x_0 + σ ε (σ = 1 pure noise). `timesteps(N)` is the family's N sampling levels, descending:
DDIM's (981, 961, ..., 1 for 50 on SD), or the shifted `FlowMatchEulerDiscreteScheduler` ones (1000, ..., for
SD3.5's shift 3: 1000, 960.1, 913.3, ... for 10 steps). With resolution-dependent ("dynamic") shifting (FLUX.1-dev)
the shift comes from the image's token count n as the pipelines compute it (`calculate_shift`: μ linear in n between
(base_image_seq_len, base_shift) and (max_image_seq_len, max_shift); σ' = e^μ / (e^μ + 1/σ − 1)), and on FLUX the
unshifted σ are FluxPipeline's linspace(1, 1/N, N) (FLUX.1-dev at 1024²: n = 4096, μ = 1.15). `training_levels(n,
rng)` draws levels as each family's training does.

Prediction spaces. The UNet may predict ε (`epsilon`), v = a_t ε − s_t x_0 (`v_prediction`, Salimans & Ho 2022;
SD 2.x) or x_0 (`sample`); the SD3 transformer predicts the flow velocity u = ε − x_0 (diffusers'
`flow_prediction`), whose Euler step is x_σ' = x_σ + (σ' − σ) u. These are the prediction spaces (`SPACES`: "eps",
"v", "x0", "flow"); each is a linear function of (x_0, ε) at level t, and, given x_t, invertible:

    space   target (from x_0, ε)     (x_0, ε) from a prediction y and x_t
    eps     ε                        x_0 = (x_t − s_t y) / a_t,   ε = y
    v       a_t ε − s_t x_0          x_0 = a_t x_t − s_t y,       ε = s_t x_t + a_t y     (a² + s² = 1: VP)
    x0      x_0                      x_0 = y,                     ε = (x_t − a_t y) / s_t
    flow    ε − x_0                  x_0 = x_t − s_t y,           ε = x_t + a_t y         (a + s = 1: flow)

The v and flow rows are written for their own schedule, on which the factor they leave out (a² + s², a + s) is 1;
`PredictionSpace.solve_any` divides it back for any other (the native space is always on its own schedule). So any
space converts to any other in one place (`convert`): `native_space` is the model's own, `prediction(x_t, t, c,
space)` is its output in a given space, `target(x_0, ε, t, space)` the regression target there, and `eps()` is ε, in
which samplers and inverters work whatever the parametrisation. (ε from a flow prediction is x_t + a_t y, defined
at every level; x_0 from ε divides by a_t, which is 0 at σ = 1, the first flow sampling level: `denoise(x_t, t, c)`
gives the pair (x̂0, ε̂) a sampling step needs, each from the space's own solve.)

`alphas_cumprod` is diffusers' table promoted to float64: the same numbers diffusers uses, with all further
coefficient arithmetic in float64 (VP only; `alpha_bar` refuses a flow backbone).

Every denoiser call goes through `model_output`, which counts NFE: one per latent in the batch, and a call made with
gradients enabled, on trainable weights or on an input (null-text inversion optimises the empty-prompt embedding),
is also charged 2 per latent for its backward.

Precision. `from_pretrained(dtype=torch.float16)` holds the frozen denoiser and text encoders in half
precision, as Diffusion-DPO's `train.py` holds its reference UNet and text encoder in the mixed-precision
`weight_dtype` (SalesforceAIResearch/DiffusionDPO); the VAE stays float32 (SDXL's VAE overflows in
fp16, which is why that repo's SDXL launcher swaps in `madebyollin/sdxl-vae-fp16-fix`). Latents stay in
`latent_dtype` (float32, or float64 for a float64 backbone): `model_output` casts its inputs to the
denoiser's dtype and its output back to the latents' dtype, so schedules, losses and samplers never run in
half precision whatever the denoiser's storage. The SD3 transformer's timestep goes in as float32 (what diffusers
passes, and what its sinusoidal embedding computes in) whatever the weights' dtype: fp16 would round 960.13 to 960.
FLUX's σ and guidance go in as float32 too; its transformer casts both to its weights' dtype itself, as under
FluxPipeline.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import diffusers
import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)
from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel

from bench.core.clip_bpe import CLIP_VOCAB_SIZE, clip_bpe_tokenizer
from bench.core.real_configs import PIPELINE_CONFIGS

log = logging.getLogger(__name__)


@dataclass
class Conditioning:
    """Text conditioning for a batch: per-token embeddings and the denoiser's extra inputs: for SDXL-shaped UNets
    the `added_cond_kwargs` (pooled text embeddings "text_embeds", micro-conditioning "time_ids"), for SD3 and FLUX the
    transformer's "pooled_projections" (FLUX's text position ids are zeros, made in `Backbone.model_output`)."""

    embeds: torch.Tensor  # (B, L, D)
    added: dict[str, torch.Tensor] | None = None  # name -> (B, ...)

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def map(self, fn) -> Conditioning:
        added = None if self.added is None else {k: fn(v) for k, v in self.added.items()}
        return Conditioning(fn(self.embeds), added)

    def __getitem__(self, index) -> Conditioning:
        return self.map(lambda t: t[index])

    def to(self, *args, **kwargs) -> Conditioning:
        return self.map(lambda t: t.to(*args, **kwargs))

    @staticmethod
    def cat(items: list[Conditioning]) -> Conditioning:
        added = None
        if items[0].added is not None:
            added = {k: torch.cat([c.added[k] for c in items]) for k in items[0].added}
        return Conditioning(torch.cat([c.embeds for c in items]), added)

    def where(self, mask: torch.Tensor, other: Conditioning) -> Conditioning:
        """Per-sample choice: `other` where mask (B,) is True, else self (prompt dropout)."""

        def pick(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return torch.where(mask.view(-1, *([1] * (a.ndim - 1))), b, a)

        added = None if self.added is None else {k: pick(v, other.added[k]) for k, v in self.added.items()}
        return Conditioning(pick(self.embeds, other.embeds), added)


@dataclass(frozen=True)
class PredictionSpace:
    """A quantity a denoiser can regress, as a linear function of (x_0, ε) at level t (coefficients
    a_t, s_t broadcast against the latents), and its inverse given x_t.

    `solve` is written for the schedule the space belongs to; where it leaves out a factor that is 1 there
    (`unit`: a² + s² for v on the VP schedule, a + s for flow on the flow schedule), `solve_any` divides it back and
    is exact on any schedule. The Backbone solves its native space with `solve` (the same numbers as the textbook
    form); the native space is always on its own schedule."""

    name: str
    target: Callable  # (x0, eps, a, s) -> the quantity
    solve: Callable  # (y, x_t, a, s) -> (x0, eps) that y and x_t = a x0 + s eps imply, where unit(a, s) = 1
    unit: Callable | None = None  # (a, s) -> the factor `solve` takes to be 1; None: `solve` is exact everywhere

    def solve_any(self, y, x_t, a, s):
        """(x0, eps) from y and x_t on any schedule (a, s)."""
        x0, eps = self.solve(y, x_t, a, s)
        if self.unit is None:
            return x0, eps
        unit = self.unit(a, s)
        return x0 / unit, eps / unit


SPACES: dict[str, PredictionSpace] = {space.name: space for space in (
    PredictionSpace("eps", lambda x0, eps, a, s: eps, lambda y, x_t, a, s: ((x_t - s * y) / a, y)),
    PredictionSpace("v", lambda x0, eps, a, s: a * eps - s * x0, lambda y, x_t, a, s: (a * x_t - s * y, s * x_t + a * y),
                    unit=lambda a, s: a * a + s * s),  # a² + s² = 1 on a variance-preserving schedule
    PredictionSpace("x0", lambda x0, eps, a, s: x0, lambda y, x_t, a, s: (y, (x_t - a * y) / s)),
    # rectified flow (SD3): x_t = (1 − σ) x0 + σ ε and u = ε − x0; x_t − s u = (a + s) x0, x_t + a u = (a + s) ε
    PredictionSpace("flow", lambda x0, eps, a, s: eps - x0, lambda y, x_t, a, s: (x_t - s * y, x_t + a * y),
                    unit=lambda a, s: a + s),  # a + s = 1 on the flow schedule
)}
# diffusers' prediction_type -> space ("flow_prediction" is diffusers' name for u = ε − x0 in its multistep solvers;
# a FlowMatchEulerDiscreteScheduler has no prediction_type, `Backbone.prediction_type` reports this one for it)
PREDICTION_TYPE_SPACES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0", "flow_prediction": "flow"}
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler",)  # scheduler classes whose levels are 1000·σ of a flow
MAX_SEQUENCE_LENGTH = {"sd3": 256, "flux": 512}  # T5 tokens: diffusers' pipelines' defaults (FluxPipeline's for dev)
FLUX_PATCH = 2  # FLUX packs 2 x 2 latent patches into one token of 4 C channels (FluxPipeline._pack_latents)
PIPELINE_CLASSES = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline", "sd3": "StableDiffusion3Pipeline",
                    "flux": "FluxPipeline"}


def takes_guidance_input(denoiser_config) -> bool:
    """Whether a denoiser with this diffusers config takes the guidance scale as an input: a guidance-distilled FLUX
    transformer (`guidance_embeds`, FLUX.1-dev), whose guided prediction is one forward, not CFG's two branches."""
    return bool(denoiser_config.get("guidance_embeds", False))


def is_flow_scheduler(class_name: str) -> bool:
    """Whether a diffusers scheduler class (by name, e.g. a config's `_class_name`) runs a rectified-flow schedule."""
    return class_name in FLOW_SCHEDULERS


def space_of(prediction_type: str) -> str:
    """The prediction space of a diffusers `prediction_type` ("epsilon" -> "eps", "v_prediction" -> "v", ...)."""
    try:
        return PREDICTION_TYPE_SPACES[prediction_type]
    except KeyError:
        raise ValueError(f"unsupported prediction_type {prediction_type!r}; expected one of "
                         f"{', '.join(PREDICTION_TYPE_SPACES)}") from None


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> FLUX's token sequence (B, h/2 · w/2, 4C) of 2×2 patches, row-major over patches, channels
    (c, dy, dx) within one (`FluxPipeline._pack_latents`)."""
    batch, channels, height, width = latents.shape
    patches = latents.view(batch, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return patches.reshape(batch, (height // 2) * (width // 2), channels * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """FLUX's token sequence (B, h/2 · w/2, 4C) -> latents (B, C, h, w), the inverse of `pack_latents`
    (`FluxPipeline._unpack_latents`)."""
    batch, _, features = tokens.shape
    patches = tokens.view(batch, height // 2, width // 2, features // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return patches.reshape(batch, features // 4, height, width)


def latent_image_ids(rows: int, columns: int) -> torch.Tensor:
    """FLUX's position ids of the packed image tokens (rows · columns, 3): (0, row, column), float32
    (`FluxPipeline._prepare_latent_image_ids`; the text tokens' ids are zeros)."""
    ids = torch.zeros(rows, columns, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(columns)[None, :]
    return ids.reshape(rows * columns, 3)


@dataclass
class NFECounter:
    """Denoiser (UNet or transformer) evaluations of one latent. `total` charges a backward pass as 2 forwards."""

    forward: int = 0
    grad_forward: int = 0  # forwards made with gradients on weights or inputs (each implies a backward)
    calls: int = 0  # denoiser invocations (a CFG evaluation of a batch is one call of 2B latents)
    # (latents in the call, with gradients) -> invocations: what `bench speed --methods` prices its compute floor by
    calls_by_batch: dict[tuple[int, bool], int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.forward + 2 * self.grad_forward

    def reset(self) -> None:
        self.forward = self.grad_forward = self.calls = 0
        self.calls_by_batch = {}


class BackboneLoadError(RuntimeError):
    """A pipeline that cannot be loaded (missing files, offline hub, mismatched tokenizer)."""


class Backbone:
    """Denoiser + VAE + text encoder(s) + tokenizer(s) + noise schedule behind one small interface."""

    # the embedded guidance scale a call that passes none gets, on a denoiser that takes one (`embeds_guidance`; module
    # docstring); 1: the conditional prediction. Views set it (`with_default_guidance`).
    default_guidance: float = 1.0

    def __init__(
        self,
        unet: UNet2DConditionModel | SD3Transformer2DModel | FluxTransformer2DModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel | CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        scheduler: DDIMScheduler | FlowMatchEulerDiscreteScheduler,
        *,
        text_encoder_2: CLIPTextModelWithProjection | None = None,
        tokenizer_2: CLIPTokenizer | None = None,
        text_encoder_3: T5EncoderModel | None = None,
        tokenizer_3=None,
        max_sequence_length: int | None = None,
        force_zeros_for_empty_prompt: bool = True,
        source: str = "",
        counter: NFECounter | None = None,
    ):
        """`unet` is the denoiser: a `UNet2DConditionModel` ("sd", "sdxl"), an `SD3Transformer2DModel` ("sd3") or a
        `FluxTransformer2DModel` ("flux"). `text_encoder_3`/`tokenizer_3` are the T5 and its tokenizer (optional for
        SD3, required for FLUX, whose only other encoder is `text_encoder`, CLIP-L), `max_sequence_length` its token
        count (None: diffusers' default, 256 for SD3, 512 for FLUX; the zeros that stand in for SD3's T5 when it is
        absent have that length too)."""
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.text_encoder_2, self.tokenizer_2 = text_encoder_2, tokenizer_2
        self.text_encoder_3, self.tokenizer_3 = text_encoder_3, tokenizer_3
        self.max_sequence_length = (max_sequence_length if max_sequence_length is not None
                                    else MAX_SEQUENCE_LENGTH.get(self.family, 256))
        self.force_zeros_for_empty_prompt = force_zeros_for_empty_prompt
        self.scheduler = scheduler
        self.source = source
        self.nfe = counter if counter is not None else NFECounter()
        if self.family in ("sdxl", "sd3") and (text_encoder_2 is None or tokenizer_2 is None):
            shape = "an SDXL-shaped UNet (addition_embed_type='text_time')" if self.family == "sdxl" else "an SD3 transformer"
            raise BackboneLoadError(f"{shape} needs text_encoder_2 and tokenizer_2")
        if self.family == "flux" and (text_encoder_3 is None or text_encoder_2 is not None):
            raise BackboneLoadError("a FLUX transformer takes CLIP-L (text_encoder) and a T5 (text_encoder_3), "
                                    "and no second CLIP")
        if (text_encoder_3 is None) != (tokenizer_3 is None):
            raise BackboneLoadError("text_encoder_3 (T5) and tokenizer_3 come together")
        for tok, enc in self._text_encoders():
            if len(tok) != enc.config.vocab_size:
                raise BackboneLoadError(
                    f"tokenizer has {len(tok)} tokens but the text encoder expects {enc.config.vocab_size}"
                    " (an offline CLIPTokenizer.from_pretrained without its files returns a 2-token tokenizer)"
                )
        if text_encoder_3 is not None and len(tokenizer_3) > text_encoder_3.config.vocab_size:
            raise BackboneLoadError(f"tokenizer_3 has {len(tokenizer_3)} tokens, more than T5's "
                                    f"{text_encoder_3.config.vocab_size}")
        if not self.is_flow and self.prediction_type == "flow_prediction":
            raise BackboneLoadError("a flow prediction (u = ε − x0) needs a flow-matching scheduler "
                                    f"({', '.join(FLOW_SCHEDULERS)}), not {type(scheduler).__name__}")
        if self.is_flow:  # VP-only tables
            self.alphas_cumprod, self.final_alpha_cumprod = None, None
        else:
            self.alphas_cumprod = scheduler.alphas_cumprod.to(torch.float64)  # (T,)
            self.final_alpha_cumprod = float(scheduler.final_alpha_cumprod)
        self._null: Conditioning | None = None
        self._fingerprints: dict[str, str] = {}

    def _text_encoders(self) -> list[tuple[CLIPTokenizer, torch.nn.Module]]:
        """The CLIP (tokenizer, encoder) pairs."""
        pairs = [(self.tokenizer, self.text_encoder)]
        if self.text_encoder_2 is not None:
            pairs.append((self.tokenizer_2, self.text_encoder_2))
        return pairs

    def _all_text_encoders(self) -> list[torch.nn.Module]:
        """Every text encoder: the CLIPs and SD3's T5."""
        return [enc for _, enc in self._text_encoders()] + ([self.text_encoder_3] if self.text_encoder_3 is not None else [])

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike, *, dtype: torch.dtype = torch.float32,
                        device: str | torch.device = "cpu") -> Backbone:
        """Load a diffusers-format pipeline from a local directory or a hub id: SD-1.5- or SDXL-shaped (`unet/`, DDIM
        schedule), SD3-shaped (model_index `_class_name` "StableDiffusion3Pipeline", `transformer/`, flow schedule;
        `text_encoder_3/` T5 optional) or FLUX-shaped ("FluxPipeline", `transformer/` a FluxTransformer2DModel, CLIP-L in
        `text_encoder/`, the T5 in `text_encoder_2/` with its tokenizer in `tokenizer_2/`).

        `dtype` is the denoiser's and text encoders' (fp16/bf16 halve the frozen weights' memory); the VAE is
        always loaded in float32.

        A directory without a `tokenizer/` (or `tokenizer_2/`) folder gets the CLIP BPE tokenizer built from
        open_clip's vocabulary (the toy pipeline ships that way: no third-party files in the repo).
        """
        source = str(path_or_id)
        Backbone.check_source(source)
        local = Path(source).is_dir()
        text_encoder_3 = tokenizer_3 = None
        try:
            index = DiffusionPipeline.load_config(source)
            flux = (index.get("_class_name") == PIPELINE_CLASSES["flux"]
                    or (index.get("transformer") or [None, None])[1] == "FluxTransformer2DModel")
            sd3 = not flux and (index.get("_class_name") == PIPELINE_CLASSES["sd3"] or "transformer" in index)
            if sd3 or flux:
                if local and not (Path(source) / "transformer").is_dir():
                    shape = "FLUX-shaped (FluxPipeline)" if flux else "SD3-shaped (StableDiffusion3Pipeline)"
                    raise BackboneLoadError(f"{source} is a {shape} pipeline without its transformer/ folder")
                transformer_class, clip_class = ((FluxTransformer2DModel, CLIPTextModel) if flux else
                                                 (SD3Transformer2DModel, CLIPTextModelWithProjection))
                unet = transformer_class.from_pretrained(source, subfolder="transformer", torch_dtype=dtype)
                text_encoder = clip_class.from_pretrained(source, subfolder="text_encoder", dtype=dtype)
                scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(source, subfolder="scheduler")
            else:
                unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", torch_dtype=dtype)
                text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype)
                scheduler = DDIMScheduler.from_pretrained(source, subfolder="scheduler")
            vae = AutoencoderKL.from_pretrained(source, subfolder="vae", torch_dtype=torch.float32)
            text_encoder_2 = None
            if flux:  # the T5 is FLUX's second encoder: held as text_encoder_3 (module docstring)
                text_encoder_3 = T5EncoderModel.from_pretrained(source, subfolder="text_encoder_2", dtype=dtype)
                tokenizer_3 = AutoTokenizer.from_pretrained(source, subfolder="tokenizer_2")
            elif (index.get("text_encoder_2") or [None])[0] is not None:
                text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(source, subfolder="text_encoder_2", dtype=dtype)
            if sd3 and (index.get("text_encoder_3") or [None])[0] is not None:
                text_encoder_3 = T5EncoderModel.from_pretrained(source, subfolder="text_encoder_3", dtype=dtype)
                tokenizer_3 = AutoTokenizer.from_pretrained(source, subfolder="tokenizer_3")
        except (OSError, ValueError) as err:
            where = "local directory" if local else "hub id"
            offline = " (HF_HUB_OFFLINE=1: only the local cache is read)" if os.environ.get("HF_HUB_OFFLINE") else ""
            raise BackboneLoadError(
                f"cannot load pipeline from {where} {source!r}{offline}: {str(err).splitlines()[0]}. "
                "Pass a local diffusers-format directory, or fetch it first with `huggingface-cli download <id>`."
            ) from err
        tokenizers = [cls._load_tokenizer(source, local, sub, enc)
                      for sub, enc in (("tokenizer", text_encoder), ("tokenizer_2", text_encoder_2)) if enc is not None]
        for module in (unet, vae, text_encoder, text_encoder_2, text_encoder_3):
            if module is not None:
                module.requires_grad_(False).eval().to(device)
        return cls(unet, vae, text_encoder, tokenizers[0], scheduler, text_encoder_2=text_encoder_2,
                   tokenizer_2=tokenizers[1] if len(tokenizers) > 1 else None, text_encoder_3=text_encoder_3,
                   tokenizer_3=tokenizer_3, force_zeros_for_empty_prompt=index.get("force_zeros_for_empty_prompt", True),
                   max_sequence_length=index.get("max_sequence_length"), source=source)

    @staticmethod
    def _load_tokenizer(source: str, local: bool, subfolder: str, encoder) -> CLIPTokenizer:
        if local and not (Path(source) / subfolder).is_dir():
            if encoder.config.vocab_size != CLIP_VOCAB_SIZE:
                raise BackboneLoadError(f"{source} has no {subfolder}/ and its text encoder is not CLIP-BPE sized")
            return clip_bpe_tokenizer(encoder.config.max_position_embeddings)
        return CLIPTokenizer.from_pretrained(source, subfolder=subfolder)

    def save_pretrained(self, path: str | os.PathLike, *, dtype: torch.dtype | None = None,
                        include_tokenizer: bool = True) -> None:
        """Write a diffusers-format directory (one `DiffusionPipeline.from_pretrained` of the family's pipeline class
        loads too). Without the tokenizers, `from_pretrained` rebuilds the CLIP BPE tokenizer from open_clip's
        vocabulary (so no third-party files are written); a T5 tokenizer cannot be rebuilt and is always written. FLUX's
        T5 goes to diffusers' `text_encoder_2/`, `tokenizer_2/` (module docstring)."""
        family = self.family
        transformer = family in ("sd3", "flux")
        t5_tokenizer = {"sd3": "tokenizer_3", "flux": "tokenizer_2"}.get(family)
        second = (self.text_encoder_3, self.tokenizer_3) if family == "flux" else (self.text_encoder_2, self.tokenizer_2)
        modules = {"transformer" if transformer else "unet": self.unet, "vae": self.vae, "text_encoder": self.text_encoder,
                   "text_encoder_2": second[0]}
        tokenizers = {"tokenizer": self.tokenizer, "tokenizer_2": second[1]}
        if family == "sd3":
            modules["text_encoder_3"], tokenizers["tokenizer_3"] = self.text_encoder_3, self.tokenizer_3
        for name, module in modules.items():
            if module is None:
                continue
            saved = module
            if dtype is not None:  # nn.Module.to: diffusers' override warns about fp32-pinned modules it has none of
                saved = torch.nn.Module.to(copy.deepcopy(module), dtype)
            saved.save_pretrained(Path(path) / name, safe_serialization=True)
        self.scheduler.save_pretrained(Path(path) / "scheduler")
        kept = {name: tok is not None and (include_tokenizer or name == t5_tokenizer) for name, tok in tokenizers.items()}
        for name, tok in tokenizers.items():
            if kept[name]:
                tok.save_pretrained(Path(path) / name)
        index = {"_class_name": PIPELINE_CLASSES[family], "_diffusers_version": diffusers.__version__,
                 "scheduler": ["diffusers", type(self.scheduler).__name__]}
        for name, module in {**modules, **tokenizers}.items():
            if module is not None or name in ("text_encoder_2", "tokenizer_2") and family == "sdxl" or transformer:
                library = "diffusers" if name in ("unet", "transformer", "vae") else "transformers"
                keep = module is not None and kept.get(name, True)
                index[name] = [library, type(module).__name__] if keep else [None, None]
        if family == "sdxl":
            index["force_zeros_for_empty_prompt"] = self.force_zeros_for_empty_prompt
        elif transformer:
            index.update(image_encoder=[None, None], feature_extractor=[None, None])
            if self.max_sequence_length != MAX_SEQUENCE_LENGTH[family]:  # e.g. the toy flow pipeline's 0 (no T5)
                index["max_sequence_length"] = self.max_sequence_length
        else:
            index.update(safety_checker=[None, None], feature_extractor=[None, None], requires_safety_checker=False)
        (Path(path) / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")

    # ------------------------------------------------------------------ views and properties
    def with_unet(self, unet: torch.nn.Module) -> Backbone:
        """A view sharing everything (encoders, schedule, NFE counter) but the denoiser."""
        view = copy.copy(self)
        view.unet = unet
        view._fingerprints = {k: v for k, v in self._fingerprints.items() if k != "unet"}
        return view

    def with_default_guidance(self, guidance: float) -> Backbone:
        """A view sharing everything whose calls without a guidance scale give a guidance-distilled transformer
        `guidance` as its embedded scale (`default_guidance`); on a denoiser without that input it computes as this
        backbone does."""
        view = copy.copy(self)
        view.default_guidance = float(guidance)
        return view

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The denoiser's weights' dtype."""
        return next(self.unet.parameters()).dtype

    @property
    def latent_dtype(self) -> torch.dtype:
        """The dtype latents are sampled and encoded in: float32, or float64 for a float64 denoiser."""
        return torch.promote_types(self.dtype, torch.float32)

    @property
    def is_flow(self) -> bool:
        """Whether the schedule is a rectified flow (a = 1 − σ, s = σ, levels 1000·σ), decided by the scheduler's class;
        else it is the variance-preserving DDPM schedule (a = √ᾱ, s = √(1 − ᾱ), integer levels)."""
        return is_flow_scheduler(type(self.scheduler).__name__)

    @property
    def prediction_type(self) -> str:
        """diffusers' name of what the denoiser predicts: the scheduler's `prediction_type`, or "flow_prediction" for a
        flow-matching scheduler (which has none: its model predicts u = ε − x0)."""
        return "flow_prediction" if self.is_flow else self.scheduler.config.prediction_type

    @property
    def native_space(self) -> str:
        """The space the denoiser predicts in, what it was trained to regress: "eps", "v", "x0" or "flow" (`SPACES`)."""
        return space_of(self.prediction_type)

    @staticmethod
    def check_source(path_or_id: str | os.PathLike) -> None:
        """BackboneLoadError (one line) unless `path_or_id` can name a pipeline: a directory, or a hub id (a path
        that looks local, absolute, relative or with more than one "/", must exist as a directory). Cheap: a run
        checks it before announcing itself; `from_pretrained` checks it again."""
        source = str(path_or_id)
        if Path(source).is_dir():
            return
        if os.path.exists(source):
            raise BackboneLoadError(f"pipeline path {source!r} is not a directory")
        if os.path.isabs(source) or source.startswith((".", "~")) or source.count("/") > 1:
            raise BackboneLoadError(f"pipeline directory {source!r} does not exist")

    @staticmethod
    def native_space_of(path_or_id: str | os.PathLike) -> str | None:
        """A pipeline's `native_space` without loading it: from a local directory's scheduler config, the hub
        cache (never the network), or the built-in official config of a known hub id; None if none is found.
        A flow-matching scheduler (`_class_name`, e.g. SD3's FlowMatchEulerDiscreteScheduler) is "flow"."""
        source = str(path_or_id)
        try:
            with warnings.catch_warnings():  # huggingface_hub's deprecation notes about arguments diffusers passes
                warnings.simplefilter("ignore", UserWarning)
                config = DDIMScheduler.load_config(source, subfolder="scheduler", local_files_only=True)  # any scheduler's
        except (OSError, ValueError):
            config = PIPELINE_CONFIGS.get(source, {}).get("scheduler")
            if config is None:
                return None
        if is_flow_scheduler(config.get("_class_name", "")):
            return "flow"
        return space_of(config.get("prediction_type", "epsilon"))

    @staticmethod
    def embeds_guidance_of(path_or_id: str | os.PathLike) -> bool:
        """A pipeline's `embeds_guidance` without loading it: from a local directory's `transformer/` config, the hub
        cache (never the network), or the built-in official config of a known hub id; False where none is found (a UNet
        pipeline has no `transformer/`)."""
        source = str(path_or_id)
        try:
            with warnings.catch_warnings():  # as `native_space_of`
                warnings.simplefilter("ignore", UserWarning)
                config = FluxTransformer2DModel.load_config(source, subfolder="transformer", local_files_only=True)
        except (OSError, ValueError):
            config = PIPELINE_CONFIGS.get(source, {}).get("transformer")
        return config is not None and takes_guidance_input(config)

    @property
    def family(self) -> str:
        """"sd3" for an SD3 transformer, "flux" for a FLUX transformer, "sdxl" for UNets with SDXL's text-time
        micro-conditioning, else "sd" (SD 1.x/2.x-shaped)."""
        denoiser = getattr(self.unet, "module", self.unet)  # through DDP
        denoiser = getattr(denoiser, "_orig_mod", denoiser)  # through torch.compile
        if isinstance(denoiser, SD3Transformer2DModel):
            return "sd3"
        if isinstance(denoiser, FluxTransformer2DModel):
            return "flux"
        return "sdxl" if self.unet_config.get("addition_embed_type") == "text_time" else "sd"

    @property
    def unet_config(self):
        """The denoiser's diffusers config, through a distributed wrapper (a policy prepared by accelerate holds DDP)."""
        return getattr(self.unet, "module", self.unet).config

    @property
    def embeds_guidance(self) -> bool:
        """Whether the denoiser takes the guidance scale as an input (a guidance-distilled FLUX transformer, FLUX.1-dev):
        then a guided prediction is one forward per latent at every w, not classifier-free guidance's two branches."""
        return takes_guidance_input(self.unet_config)

    def resolve_guidance(self, guidance: float | None) -> float:
        """`guidance` as given; none: `default_guidance` where the denoiser embeds the scale, else 1 (no guidance)."""
        if guidance is not None:
            return guidance
        return self.default_guidance if self.embeds_guidance else 1.0

    @property
    def num_train_timesteps(self) -> int:
        return self.scheduler.config.num_train_timesteps

    @property
    def image_size(self) -> int:
        return int(self.vae.config.sample_size)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one image's latents as the interface holds them (FLUX's unpacked: C = in_channels / 4)."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)  # the VAE's downsampling
        channels = self.unet_config.in_channels // (FLUX_PATCH ** 2 if self.family == "flux" else 1)
        return (channels, self.image_size // factor, self.image_size // factor)

    @property
    def image_tokens(self) -> int:
        """The transformer's image sequence length: (h / p) (w / p) for SD3's patch p or FLUX's 2 x 2 packing (1 patch
        per latent pixel for a UNet)."""
        _, height, width = self.latent_shape
        patch = FLUX_PATCH if self.family == "flux" else self.unet_config.get("patch_size", 1)
        return (height // patch) * (width // patch)

    def fingerprint(self, part: str) -> str:
        """sha256 over the weights of "unet" (the denoiser), "vae" or "text" (every text encoder); keys caches of
        derived data."""
        modules = {"unet": [self.unet], "vae": [self.vae], "text": self._all_text_encoders()}[part]
        cache = self._fingerprints
        if part not in cache:
            digest = hashlib.sha256()
            for module in modules:
                for name, tensor in sorted(module.state_dict().items()):
                    digest.update(name.encode())
                    digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            cache[part] = digest.hexdigest()[:16]
        return cache[part]

    # ------------------------------------------------------------------ schedule
    def alpha_bar(self, t: torch.Tensor | int | float) -> torch.Tensor:
        """ᾱ at VP levels t (float64; integer-valued, indexed with `.long()`); t < 0 is the clean end
        (`final_alpha_cumprod`). VP only: a flow schedule has no ᾱ (use `noise_levels`)."""
        if self.is_flow:
            raise ValueError("alpha_bar is the variance-preserving schedule's ᾱ_t; this backbone runs a flow-matching "
                             "schedule (a_t = 1 − σ, s_t = σ): read noise_levels(t)")
        t = torch.as_tensor(t, dtype=torch.float64)
        table = self.alphas_cumprod
        clean = torch.tensor(self.final_alpha_cumprod, dtype=torch.float64)
        return torch.where(t >= 0, table[t.clamp(min=0).long()], clean)

    def sigmas(self, t: torch.Tensor | int | float) -> torch.Tensor:
        """σ = t / T at flow levels t (float64), 0 at the clean end (t <= 0). Flow only."""
        if not self.is_flow:
            raise ValueError("sigmas are the flow schedule's; this backbone's schedule is variance-preserving")
        return (torch.as_tensor(t, dtype=torch.float64) / self.num_train_timesteps).clamp(min=0)

    def noise_levels(self, t: torch.Tensor | int | float) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_t, s_t) at levels t, float64, of x_t = a_t x_0 + s_t ε: the schedule as every method and sampler reads
        it, whatever the family: VP a_t = √ᾱ_t, s_t = √(1 − ᾱ_t); flow a_t = 1 − σ, s_t = σ (module docstring)."""
        if self.is_flow:
            sigma = self.sigmas(t)
            return 1 - sigma, sigma
        abar = self.alpha_bar(t)
        return abar.sqrt(), (1 - abar).sqrt()

    def coefficients(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a_t, s_t) shaped to broadcast against `like` (B, C, H, W), in its dtype and device."""
        shape = (-1, *([1] * (like.ndim - 1)))
        a, s = self.noise_levels(t)
        return a.view(shape).to(like), s.view(shape).to(like)

    def _sampling_scheduler(self, num_steps: int):
        """A copy of the scheduler after `set_timesteps(num_steps)` as the family's pipeline calls it: a flow scheduler
        with resolution-dependent shifting gets μ from the image's token count (`StableDiffusion3Pipeline.__call__`,
        `FluxPipeline.__call__`), and FLUX's unshifted σ are FluxPipeline's linspace(1, 1/N, N)."""
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        scheduler = copy.deepcopy(self.scheduler)
        kwargs = {}
        if self.is_flow and scheduler.config.get("use_dynamic_shifting"):
            config = scheduler.config  # diffusers' calculate_shift (and its defaults): μ linear in the token count
            slope = ((config.get("max_shift", 1.15) - config.get("base_shift", 0.5))
                     / (config.get("max_image_seq_len", 4096) - config.get("base_image_seq_len", 256)))
            intercept = config.get("base_shift", 0.5) - slope * config.get("base_image_seq_len", 256)
            kwargs["mu"] = self.image_tokens * slope + intercept
        if self.family == "flux" and not scheduler.config.get("use_flow_sigmas"):
            kwargs["sigmas"] = np.linspace(1.0, 1 / num_steps, num_steps)  # FluxPipeline's, before the shift
        scheduler.set_timesteps(num_steps, **kwargs)
        return scheduler

    def timesteps(self, num_steps: int) -> torch.Tensor:
        """The `num_steps` sampling levels, descending, float64: DDIM's timesteps (981, 961, ..., 1 for 50 on SD),
        or the flow scheduler's shifted 1000·σ (SD3.5, shift 3, 10 steps: 1000, 960.13, ..., 8.93; FLUX.1-dev at
        1024², μ = 1.15, 28 steps: 1000, 988.41, 976.22, ..., 104.72). A sampler's last step goes to the
        clean end (−1)."""
        return self._sampling_scheduler(num_steps).timesteps.to(torch.float64)

    def training_levels(self, n: int, rng: torch.Generator) -> torch.Tensor:
        """n training levels (n,) float64 drawn from `rng`, uniform over the family's training table: VP t ~ U{0, ...,
        T−1}, flow the scheduler's T training timesteps 1000·σ_j, σ_j = j/T shifted as its `sigmas` with a static
        shift (SD3.5: 3), unshifted with dynamic shifting (FLUX.1-dev), the table diffusers' training scripts
        (train_dreambooth_sd3.py, train_dreambooth_flux.py, weighting "none") index. One process's draw:
        `methods.shards.sample_levels` shards it."""
        if not self.is_flow:
            return torch.randint(0, self.num_train_timesteps, (n,), generator=rng).to(torch.float64)
        table = type(self.scheduler).from_config(self.scheduler.config).timesteps.to(torch.float64)  # (T,) descending
        return table[torch.randint(0, len(table), (n,), generator=rng)]

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = a_t x0 + s_t ε, per-sample t (B,)."""
        a, s = self.coefficients(t, x0)
        return a * x0 + s * noise

    # ------------------------------------------------------------------ text and images
    def _encode_text(self, tokenizer: CLIPTokenizer, encoder: torch.nn.Module, prompts: list[str]):
        max_len = min(tokenizer.model_max_length, encoder.config.max_position_embeddings)
        ids = tokenizer(list(prompts), padding="max_length", max_length=max_len, truncation=True,
                        return_tensors="pt").input_ids
        return encoder(ids.to(next(encoder.parameters()).device), output_hidden_states=self.family not in ("sd", "flux"))

    def _t5_embeds(self, prompts: list[str]) -> torch.Tensor:
        """The T5 sequence (B, max_sequence_length, D): T5's last hidden states (no attention mask, as diffusers'
        `_get_t5_prompt_embeds` of SD3 and FLUX), or zeros of the transformer's joint_attention_dim when an SD3 pipeline
        has no T5."""
        if self.text_encoder_3 is None:
            clip = self.text_encoder
            return torch.zeros(len(prompts), self.max_sequence_length, self.unet_config.joint_attention_dim,
                               device=next(clip.parameters()).device, dtype=clip.dtype)
        ids = self.tokenizer_3(list(prompts), padding="max_length", max_length=self.max_sequence_length, truncation=True,
                               add_special_tokens=True, return_tensors="pt").input_ids
        return self.text_encoder_3(ids.to(next(self.text_encoder_3.parameters()).device))[0]

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> Conditioning:
        """Per-token text embeddings (B, L, D); for SDXL also the pooled embedding and time ids, for SD3 and FLUX the
        pooled projections (module docstring)."""
        if self.family == "sd":
            return Conditioning(self._encode_text(self.tokenizer, self.text_encoder, prompts).last_hidden_state.to(self.dtype))
        if self.family == "flux":  # FluxPipeline.encode_prompt: T5's tokens, CLIP-L's pooled output
            pooled = self._encode_text(self.tokenizer, self.text_encoder, prompts).pooler_output  # (B, P)
            t5 = self._t5_embeds(prompts)  # (B, max_sequence_length, D_joint)
            return Conditioning(t5.to(self.dtype), {"pooled_projections": pooled.to(t5.device, self.dtype)})
        first = self._encode_text(self.tokenizer, self.text_encoder, prompts)
        second = self._encode_text(self.tokenizer_2, self.text_encoder_2, prompts)
        embeds = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)  # (B, L, D1 + D2)
        if self.family == "sd3":
            t5 = self._t5_embeds(prompts)  # (B, L_t5, D_joint)
            embeds = torch.nn.functional.pad(embeds, (0, t5.shape[-1] - embeds.shape[-1]))  # (B, L, D_joint)
            embeds = torch.cat([embeds, t5.to(embeds.device)], dim=-2)  # (B, L + L_t5, D_joint)
            pooled = torch.cat([first.text_embeds, second.text_embeds], dim=-1)  # (B, P1 + P2)
            return Conditioning(embeds.to(self.dtype), {"pooled_projections": pooled.to(self.dtype)})
        size = self.image_size
        time_ids = torch.tensor([size, size, 0, 0, size, size], dtype=self.dtype).expand(len(prompts), 6)
        added = {"text_embeds": second.text_embeds.to(self.dtype), "time_ids": time_ids.to(embeds.device)}
        return Conditioning(embeds.to(self.dtype), added)

    def null_conditioning(self, batch: int) -> Conditioning:
        """The empty prompt's conditioning, repeated to `batch` (unconditional branch of CFG)."""
        if self._null is None:
            null = self.encode_prompts([""])
            if self.family == "sdxl" and self.force_zeros_for_empty_prompt:
                null = Conditioning(torch.zeros_like(null.embeds), {"text_embeds": torch.zeros_like(null.added["text_embeds"]),
                                                                    "time_ids": null.added["time_ids"]})
            self._null = null
        return self._null.map(lambda t: t.expand(batch, *t.shape[1:]))

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, *, generator: torch.Generator | None = None,
                      batch_size: int = 64) -> torch.Tensor:
        """Images (B, 3, H, W) float RGB in [0, 1] -> scaled latents (B, C, h, w), in `latent_dtype`:
        (z − shift_factor) · scaling_factor (SD3's VAE has a shift; SD's has none).

        Uses the posterior mean unless a generator is given, in which case it samples
        `latent_dist` as the Diffusion-DPO training script does.
        """
        if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (self.image_size,) * 2:
            raise ValueError(
                f"images must be (B, 3, {self.image_size}, {self.image_size}) for this model, got {tuple(images.shape)}"
            )
        vae_dtype = next(self.vae.parameters()).dtype
        shift = self.vae.config.get("shift_factor")
        out = []
        for chunk in images.split(batch_size):
            dist = self.vae.encode(chunk.to(self.device, vae_dtype) * 2 - 1).latent_dist
            latents = dist.sample(generator=generator) if generator is not None else dist.mode()
            if shift is not None:
                latents = latents - shift
            out.append(latents * self.vae.config.scaling_factor)
        return torch.cat(out).to(self.latent_dtype)

    def decode(self, latents: torch.Tensor, *, batch_size: int = 64, grad: bool = False) -> torch.Tensor:
        """Scaled latents (B, C, h, w) -> images (B, 3, H, W) RGB in [0, 1], float32 (float64 for float64 latents);
        with `grad`, differentiable in the latents (reward backpropagation)."""
        vae_dtype = next(self.vae.parameters()).dtype
        shift = self.vae.config.get("shift_factor")
        out = []
        with torch.set_grad_enabled(grad):
            for chunk in latents.split(batch_size):
                z = chunk.to(vae_dtype) / self.vae.config.scaling_factor
                pixels = self.vae.decode(z if shift is None else z + shift).sample
                out.append(((pixels.to(torch.promote_types(latents.dtype, torch.float32)) + 1) / 2).clamp(0, 1))
        return torch.cat(out)

    # ------------------------------------------------------------------ denoiser
    def _as_batch_timesteps(self, t: torch.Tensor | int | float, batch: int) -> torch.Tensor:
        """Levels as a float64 (B,) tensor on the denoiser's device."""
        t = torch.as_tensor(t, dtype=torch.float64, device=self.device)
        return t.expand(batch) if t.ndim == 0 else t

    def model_output(self, x_t: torch.Tensor, t: torch.Tensor | int | float, cond: Conditioning, *,
                     guidance: float | None = None) -> torch.Tensor:
        """The denoiser's raw prediction (its own parametrisation) at x_t (B, C, h, w), in x_t's shape and dtype, counted
        in `nfe`. `guidance` is FLUX's embedded guidance scale (module docstring; None: `resolve_guidance`); the other
        families take none here (their guidance is CFG's two branches, `prediction`).

        Inputs are cast to the denoiser's weights' dtype (a half-precision frozen UNet takes half inputs; a float32
        policy under mixed precision takes float32 and autocasts itself). A UNet takes the levels as integer
        timesteps; the SD3 transformer takes 1000·σ as float32 (`StableDiffusion3Pipeline`'s call); the FLUX
        transformer takes σ = float32(t) / 1000 and w as float32 (FluxPipeline's call), on the packed latents.
        """
        flux = self.family == "flux"
        guidance = self.resolve_guidance(guidance)
        if guidance != 1.0 and not self.embeds_guidance:
            raise ValueError(f"guidance {guidance} is an input only of a guidance-distilled FLUX transformer "
                             f"(guidance_embeds); this {self.family} denoiser takes CFG's branches (`prediction`)")
        batch = x_t.shape[0]
        self.nfe.calls += 1
        self.nfe.forward += batch
        inputs = [x_t, cond.embeds, *(cond.added or {}).values()]
        weights = next(self.unet.parameters())
        graded = torch.is_grad_enabled() and (any(t.requires_grad for t in inputs) or self._denoiser_trains())
        if graded:
            self.nfe.grad_forward += batch  # a backward will follow: through the weights or to an input (null-text)
        key = (batch, bool(graded))
        self.nfe.calls_by_batch[key] = self.nfe.calls_by_batch.get(key, 0) + 1
        cond = cond.to(weights.dtype)
        levels = self._as_batch_timesteps(t, batch)  # (B,) float64
        if flux:
            _, _, height, width = x_t.shape
            embedded = None
            if self.embeds_guidance:
                embedded = torch.full((batch,), guidance, dtype=torch.float32, device=x_t.device)
            tokens = self.unet(hidden_states=pack_latents(x_t.to(weights.dtype)),  # (B, h/2 · w/2, 4C)
                               timestep=levels.to(torch.float32) / 1000, guidance=embedded,
                               pooled_projections=cond.added["pooled_projections"], encoder_hidden_states=cond.embeds,
                               txt_ids=torch.zeros(cond.embeds.shape[1], 3, device=x_t.device, dtype=weights.dtype),
                               img_ids=latent_image_ids(height // FLUX_PATCH, width // FLUX_PATCH).to(x_t.device,
                                                                                                       weights.dtype),
                               return_dict=False)[0]
            return unpack_latents(tokens, height, width).to(x_t.dtype)
        if self.family == "sd3":
            return self.unet(hidden_states=x_t.to(weights.dtype), timestep=levels.to(torch.float32),
                             encoder_hidden_states=cond.embeds, pooled_projections=cond.added["pooled_projections"],
                             return_dict=False)[0].to(x_t.dtype)
        return self.unet(x_t.to(weights.dtype), levels.long(), encoder_hidden_states=cond.embeds,
                         added_cond_kwargs=cond.added).sample.to(x_t.dtype)

    def _denoiser_trains(self) -> bool:
        """Whether any parameter of the denoiser requires grad (a LoRA policy's first parameter is a frozen base
        weight). The parameter that answered yes last time is asked first (one check while training); otherwise every
        parameter is, so the answer follows requires_grad as it changes (e.g. a policy frozen after training)."""
        unet_ref, param_ref = getattr(self, "_trainable_param", (None, None))
        if unet_ref is not None and unet_ref() is self.unet:
            param = param_ref() if param_ref is not None else None
            if param is not None and param.requires_grad:
                return True
        param = next((p for p in self.unet.parameters() if p.requires_grad), None)
        self._trainable_param = (weakref.ref(self.unet), weakref.ref(param) if param is not None else None)
        return param is not None

    def convert(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int | float, space: str) -> torch.Tensor:
        """A raw model output (B, C, H, W) at x_t, level t, in prediction space `space` (see the module docstring)."""
        native = self.native_space
        if space == native:
            return output
        if space not in SPACES:
            raise ValueError(f"unknown prediction space {space!r}; expected one of {', '.join(SPACES)}")
        a, s = self.coefficients(self._as_batch_timesteps(t, x_t.shape[0]).cpu(), x_t)
        x0, eps = SPACES[native].solve(output, x_t, a, s)  # the native space is on its own schedule
        return SPACES[space].target(x0, eps, a, s)

    def to_eps(self, output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int | float) -> torch.Tensor:
        """Convert a raw model output to ε."""
        return self.convert(output, x_t, t, "eps")

    def prediction(self, x_t: torch.Tensor, t: torch.Tensor | int | float, cond: Conditioning, space: str,
                   guidance: float | None = None, uncond: Conditioning | None = None) -> torch.Tensor:
        """The model's prediction at (x_t, t, c) in `space`, (B, C, H, W), with classifier-free guidance
        y_u + w (y_c − y_u) in that space when w ≠ 1 (Ho & Salimans 2022; `uncond` defaults to the empty prompt).

        At w = 1 only the conditional branch is evaluated (B NFE, one call); otherwise both branches run in one batched
        denoiser call (2B NFE). A guidance-distilled FLUX transformer takes w as its embedded guidance instead: one
        call, B NFE, at every w, and no `uncond` at w ≠ 1 (module docstring). No w (None): `resolve_guidance`, i.e. 1
        (no guidance) but on a transformer that embeds it, which gets `default_guidance`."""
        guidance = self.resolve_guidance(guidance)
        batch = x_t.shape[0]
        t = self._as_batch_timesteps(t, batch)
        if self.family == "flux":
            if uncond is not None and guidance != 1.0:
                raise ValueError("a guidance-distilled FLUX transformer embeds the guidance scale and runs no "
                                 "unconditional branch for `uncond` to enter")
            return self.convert(self.model_output(x_t, t, cond, guidance=guidance), x_t, t, space)
        if guidance == 1.0:
            return self.convert(self.model_output(x_t, t, cond), x_t, t, space)
        uncond = uncond if uncond is not None else self.null_conditioning(batch)
        x2, t2 = torch.cat([x_t, x_t]), torch.cat([t, t])
        pred_u, pred_c = self.convert(self.model_output(x2, t2, Conditioning.cat([uncond, cond])), x2, t2, space).chunk(2)
        return pred_u + guidance * (pred_c - pred_u)

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, space: str) -> torch.Tensor:
        """The regression target in `space` for x_t = a_t x0 + s_t ε (as `add_noise`): ε, v = a_t ε − s_t x0, x0 or
        the flow velocity ε − x0."""
        if space not in SPACES:
            raise ValueError(f"unknown prediction space {space!r}; expected one of {', '.join(SPACES)}")
        a, s = self.coefficients(torch.as_tensor(t).cpu(), x0)
        return SPACES[space].target(x0, noise, a, s)

    def eps(self, x_t: torch.Tensor, t: torch.Tensor | int | float, cond: Conditioning, guidance: float | None = None,
            uncond: Conditioning | None = None) -> torch.Tensor:
        """ε̂(x_t, t, c), with classifier-free guidance when w ≠ 1: ε_u + w (ε_c − ε_u) on a VP schedule; on a flow
        schedule the ε̂ of `denoise`, from the guided velocity u_u + w (u_c − u_u) (what StableDiffusion3Pipeline
        guides; CFG is affine, so the two agree up to rounding). Same calls and NFE as `prediction`."""
        if self.is_flow:
            return self.denoise(x_t, t, cond, guidance, uncond)[1]
        return self.prediction(x_t, t, cond, "eps", guidance, uncond)

    def denoise(self, x_t: torch.Tensor, t: torch.Tensor | int | float, cond: Conditioning,
                guidance: float | None = None, uncond: Conditioning | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂0, ε̂), each (B, C, H, W): the pair x_t = a_t x̂0 + s_t ε̂ that the (guided) prediction at (x_t, t, c)
        implies, what a DDIM step x' = a' x̂0 + s' ε̂ reads (`methods.inversion.base.ddim_step`). Each comes from the
        space's own solve (module docstring), never dividing by an a_t that can be 0:

            VP    ε̂ = `eps`, guided in ε                 x̂0 = (x_t − s_t ε̂) / a_t      (a_t > 0 at every VP level)
            flow  u = the velocity, guided in u          x̂0 = x_t − σ u,  ε̂ = x_t + (1 − σ) u

        On a flow schedule a_t = 0 at σ = 1, the first sampling level, where ε̂ = x_t says nothing of x̂0: both come
        from the velocity. Same calls and NFE as `eps`."""
        t = self._as_batch_timesteps(t, x_t.shape[0])
        a, s = self.coefficients(t.cpu(), x_t)
        if self.is_flow:
            velocity = self.prediction(x_t, t, cond, self.native_space, guidance, uncond)
            return SPACES[self.native_space].solve(velocity, x_t, a, s)  # the native space is on its own schedule
        return SPACES["eps"].solve(self.eps(x_t, t, cond, guidance, uncond), x_t, a, s)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Backbone:
        """Move (and/or cast) every module in place; returns self."""
        for module in (self.unet, self.vae, *self._all_text_encoders()):
            torch.nn.Module.to(module, device=device, dtype=dtype)
        self._null = None
        return self
