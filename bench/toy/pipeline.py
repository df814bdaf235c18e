"""The tiny SD-shaped pipeline's architecture: the same diffusers/transformers classes as SD 1.5.

- VAE: `AutoencoderKL`, RGB 32x32 <-> 4x8x8 latents (three encoder blocks, x4 downsampling).
- Denoiser: `UNet2DConditionModel` on 4x8x8 latents with cross-attention at both levels.
- Text encoder: `CLIPTextModel` (2 layers) over the real CLIP BPE vocabulary (49,408 tokens).
- Schedule: `DDIMScheduler` with SD's scaled-linear betas (0.00085 -> 0.012, 1000 steps,
  `steps_offset=1`, `set_alpha_to_one=False`) and v-prediction, as SD 2.x uses: a prototype found
  that ε-prediction left visible colour noise after minutes of CPU pretraining, while a clean-image
  (here v) target trained clean samples.

`build_components` also makes the tiny random models the tests use.

The toy flow world (`bench toy build --family flow`, suite `toy-flow`) is a tiny SD3-shaped pipeline on the same
world (`ToyFlowArchitecture`, `build_flow_components`):

- VAE: the SD toy's trained `AutoencoderKL` (4x8x8 latents, no shift factor), reused as it is: SD3's own VAE has 16
  latent channels, but nothing in the flow family depends on the channel count, and sharing the autoencoder keeps the
  two toy worlds' latent spaces identical (only the denoiser and its schedule differ).
- Denoiser: `SD3Transformer2DModel` (MMDiT: joint attention over text and image tokens, AdaLN from the pooled text
  and σ) on the 4x8x8 latents, patch size 1 (64 image tokens: SD3's patch 2 on 8x8 latents would leave 16).
- Text encoders: two `CLIPTextModelWithProjection` (the CLIP-L and CLIP-G slots of SD3; both need the projection that
  gives SD3's pooled embedding, which the SD toy's `CLIPTextModel` lacks), each the size of the SD toy's encoder,
  trained from scratch jointly with the transformer as the SD toy's encoder is. No T5: the T5 sequence is dropped
  (`max_sequence_length` 0, stored in `model_index.json`), where SD3 without T5 feeds 256 zero tokens; for a model
  trained without T5 those tokens carry nothing and would cost 5-10x the transformer's compute on CPU.
- Schedule: `FlowMatchEulerDiscreteScheduler` with shift 1 (SD3 shifts σ towards noise for large images, shift 3 at
  1024²; the toy's 32² images need none), sampled with its Euler step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDIMScheduler, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from bench.core.backbone import Backbone
from bench.core.clip_bpe import CLIP_VOCAB_SIZE, clip_bpe_tokenizer


@dataclass(frozen=True)
class ToyArchitecture:
    image_size: int = 32
    latent_channels: int = 4
    vae_channels: tuple[int, ...] = (32, 64, 64)  # len 3 -> x4 downsampling: 32 px -> 8x8 latents
    unet_channels: tuple[int, ...] = (64, 128)
    text_hidden: int = 32
    text_layers: int = 2
    max_prompt_tokens: int = 16  # toy captions are <= 14 CLIP tokens
    prediction_type: str = "v_prediction"
    norm_groups: int = 16

    def __post_init__(self):
        if self.image_size % 2 ** (len(self.vae_channels) - 1):
            raise ValueError("image_size must be divisible by the VAE's downsampling factor")
        if any(c % self.norm_groups for c in self.vae_channels + self.unet_channels):
            raise ValueError(f"every channel count must be divisible by norm_groups={self.norm_groups}")
        if self.prediction_type not in ("epsilon", "v_prediction", "sample"):
            raise ValueError(f"unknown prediction_type {self.prediction_type!r}")


def sd_ddim_scheduler(prediction_type: str = "epsilon") -> DDIMScheduler:
    """SD 1.5's noise schedule as a DDIM scheduler."""
    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type,
    )


def toy_vae(arch) -> AutoencoderKL:
    """The toy's randomly initialised `AutoencoderKL` (of an SD or a flow toy architecture: the same fields)."""
    n = len(arch.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=arch.vae_channels, layers_per_block=1,
        latent_channels=arch.latent_channels, norm_num_groups=arch.norm_groups, sample_size=arch.image_size,
        mid_block_add_attention=False, scaling_factor=1.0,
    )


def build_components(arch: ToyArchitecture, seed: int = 0):
    """Randomly initialised (unet, vae, text_encoder, scheduler) for `arch`, deterministic in `seed`."""
    torch.manual_seed(seed)
    vae = toy_vae(arch)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=arch.text_hidden, intermediate_size=4 * arch.text_hidden,
        num_hidden_layers=arch.text_layers, num_attention_heads=4, max_position_embeddings=arch.max_prompt_tokens,
        projection_dim=arch.text_hidden,
    ))
    levels = len(arch.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=arch.image_size // 2 ** (len(arch.vae_channels) - 1), in_channels=arch.latent_channels,
        out_channels=arch.latent_channels, down_block_types=("CrossAttnDownBlock2D",) * levels,
        up_block_types=("CrossAttnUpBlock2D",) * levels, block_out_channels=arch.unet_channels, layers_per_block=1,
        cross_attention_dim=arch.text_hidden, attention_head_dim=8, norm_num_groups=arch.norm_groups,
    )
    return unet, vae, text_encoder, sd_ddim_scheduler(arch.prediction_type)


def random_backbone(arch: ToyArchitecture, seed: int = 0) -> Backbone:
    """A Backbone over freshly initialised components (tests, and the start of pretraining)."""
    unet, vae, text_encoder, scheduler = build_components(arch, seed)
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False).eval()
    return Backbone(unet, vae, text_encoder, clip_bpe_tokenizer(arch.max_prompt_tokens), scheduler, source="random")


@dataclass(frozen=True)
class ToyFlowArchitecture:
    """The tiny SD3-shaped pipeline (module docstring). The VAE fields apply only when the build trains a VAE anew
    instead of reusing the SD toy's."""
    image_size: int = 32
    latent_channels: int = 4
    vae_channels: tuple[int, ...] = (32, 64, 64)
    norm_groups: int = 16
    text_hidden: int = 32  # each CLIP; the joint attention width is both concatenated (64)
    text_layers: int = 2  # SD3 reads the penultimate hidden states: the first layer's output here
    max_prompt_tokens: int = 16
    transformer_layers: int = 4
    attention_heads: int = 4
    attention_head_dim: int = 32  # hidden width 4 x 32 = 128
    patch_size: int = 1
    qk_norm: str | None = "rms_norm"  # SD3.5's; steadies attention at the toy's learning rate
    shift: float = 1.0
    t5_tokens: int = 0  # `Backbone.max_sequence_length` without T5 (module docstring)

    def __post_init__(self):
        latent = self.image_size // 2 ** (len(self.vae_channels) - 1)
        if self.image_size % 2 ** (len(self.vae_channels) - 1) or latent % self.patch_size:
            raise ValueError("image_size must be divisible by the VAE's downsampling factor times patch_size")
        if any(c % self.norm_groups for c in self.vae_channels):
            raise ValueError(f"every VAE channel count must be divisible by norm_groups={self.norm_groups}")
        if self.t5_tokens < 0 or self.shift <= 0:
            raise ValueError("t5_tokens must be >= 0 and shift > 0")


def flow_scheduler(shift: float = 1.0) -> FlowMatchEulerDiscreteScheduler:
    """SD3's flow-matching schedule (1000 training levels, σ = t/1000) with the given shift."""
    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)


def build_flow_components(arch: ToyFlowArchitecture, seed: int = 0):
    """Randomly initialised (transformer, vae, clip_l, clip_g, scheduler) for `arch`, deterministic in `seed`."""
    torch.manual_seed(seed)
    vae = toy_vae(arch)
    text = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=arch.text_hidden, intermediate_size=4 * arch.text_hidden,
        num_hidden_layers=arch.text_layers, num_attention_heads=4, max_position_embeddings=arch.max_prompt_tokens,
        projection_dim=arch.text_hidden,
    )
    clip_l, clip_g = CLIPTextModelWithProjection(text), CLIPTextModelWithProjection(text)
    latent = arch.image_size // 2 ** (len(arch.vae_channels) - 1)
    transformer = SD3Transformer2DModel(
        sample_size=latent, patch_size=arch.patch_size, in_channels=arch.latent_channels,
        out_channels=arch.latent_channels, num_layers=arch.transformer_layers,
        attention_head_dim=arch.attention_head_dim, num_attention_heads=arch.attention_heads,
        joint_attention_dim=2 * arch.text_hidden, caption_projection_dim=arch.attention_heads * arch.attention_head_dim,
        pooled_projection_dim=2 * arch.text_hidden, pos_embed_max_size=latent // arch.patch_size, qk_norm=arch.qk_norm,
    )
    return transformer, vae, clip_l, clip_g, flow_scheduler(arch.shift)


def flow_backbone(transformer, vae, clip_l, clip_g, scheduler, arch: ToyFlowArchitecture, source: str = "") -> Backbone:
    """The Backbone over toy flow components (CLIP BPE tokenizers, no T5, `arch.t5_tokens` zero tokens for it)."""
    tokenizer = clip_bpe_tokenizer(arch.max_prompt_tokens)
    return Backbone(transformer, vae, clip_l, tokenizer, scheduler, text_encoder_2=clip_g, tokenizer_2=tokenizer,
                    max_sequence_length=arch.t5_tokens, source=source)


def random_flow_backbone(arch: ToyFlowArchitecture, seed: int = 0) -> Backbone:
    """A Backbone over freshly initialised toy flow components (tests)."""
    modules = build_flow_components(arch, seed)
    for module in modules[:4]:
        module.requires_grad_(False).eval()
    return flow_backbone(*modules, arch, source="random-toy-flow")
