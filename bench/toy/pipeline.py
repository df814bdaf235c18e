"""The tiny SD-shaped pipeline's architecture: the same diffusers/transformers classes as SD 1.5.

- VAE: `AutoencoderKL`, RGB 32x32 <-> 4x8x8 latents (three encoder blocks, x4 downsampling).
- Denoiser: `UNet2DConditionModel` on 4x8x8 latents with cross-attention at both levels.
- Text encoder: `CLIPTextModel` (2 layers) over the real CLIP BPE vocabulary (49,408 tokens).
- Schedule: `DDIMScheduler` with SD's scaled-linear betas (0.00085 -> 0.012, 1000 steps,
  `steps_offset=1`, `set_alpha_to_one=False`) and v-prediction, as SD 2.x uses: a prototype found
  that ε-prediction left visible colour noise after minutes of CPU pretraining, while a clean-image
  (here v) target trained clean samples.

`build_components` also makes the tiny random models the tests use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

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


def build_components(arch: ToyArchitecture, seed: int = 0):
    """Randomly initialised (unet, vae, text_encoder, scheduler) for `arch`, deterministic in `seed`."""
    torch.manual_seed(seed)
    n = len(arch.vae_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=arch.vae_channels, layers_per_block=1,
        latent_channels=arch.latent_channels, norm_num_groups=arch.norm_groups, sample_size=arch.image_size,
        mid_block_add_attention=False, scaling_factor=1.0,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=arch.text_hidden, intermediate_size=4 * arch.text_hidden,
        num_hidden_layers=arch.text_layers, num_attention_heads=4, max_position_embeddings=arch.max_prompt_tokens,
        projection_dim=arch.text_hidden,
    ))
    levels = len(arch.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=arch.image_size // 2 ** (n - 1), in_channels=arch.latent_channels,
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
