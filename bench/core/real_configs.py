"""The official component configs of SD 1.5, SDXL base, SD3.5 Medium and FLUX.1-dev, so their shapes can be built
offline.

`bench run --dry-run` builds every part of a real pipeline on the meta device from these dicts when
its hub id is not a local directory (no hub, no weights). Each dict is the hub repository's config
file as published (diffusers/transformers bookkeeping keys such as `_diffusers_version` dropped):

- SD 1.5: runwayml/stable-diffusion-v1-5 (mirrored as stable-diffusion-v1-5/stable-diffusion-v1-5),
  `model_index.json`, `unet/config.json`, `vae/config.json`, `text_encoder/config.json`,
  `scheduler/scheduler_config.json`;
- SDXL: stabilityai/stable-diffusion-xl-base-1.0, the same files plus `text_encoder_2/config.json`;
- SD3.5 Medium: stabilityai/stable-diffusion-3.5-medium (gated), `model_index.json`, `transformer/config.json`,
  `vae/config.json`, `text_encoder{,_2,_3}/config.json`, `scheduler/scheduler_config.json`;
- FLUX.1-dev: black-forest-labs/FLUX.1-dev (gated), `model_index.json`, `transformer/config.json`,
  `vae/config.json`, `text_encoder{,_2}/config.json`, `scheduler/scheduler_config.json`.

The two gated repositories could not be read here; their dicts are reconstructed and checked against public
copies of the same files that third-party loaders write out for the gated checkpoints: the SD3.5 Medium transformer
and VAE as a Tenstorrent (SPDX: Tenstorrent AI ULC, 2025) SD3.5 FP8 loader for Comfy-Org/stable-diffusion-3.5-fp8
spells them (24 layers, 24 heads of 64, dual attention in layers 0-12, RMS q/k norm, pos_embed_max_size 384; VAE
scale 1.5305, shift 0.0609, no quant convs); the FLUX.1-dev transformer as several copies of its `config.json`
quote it (guidance_embeds true, in_channels 64, 19 double + 38 single blocks, axes_dims_rope [16, 56, 56]) and its
VAE (scale 0.3611, shift 0.1159); T5-XXL is google/t5-v1_1-xxl's config as both pipelines ship it. SD3.5's
scheduler is FlowMatchEulerDiscreteScheduler with shift 3.0 (read from the HF mirror
frankjoshua/stable-diffusion-3.5-medium, `scheduler/scheduler_config.json`); FLUX.1-dev's adds resolution-dependent
("dynamic") shifting, μ from 0.5 at 256 image tokens to 1.15 at 4096.

Built from these, SD 1.5 has 859,520,964 UNet, 83,653,863 VAE and 123,060,480 text-encoder
parameters; SDXL 2,567,463,684 UNet, 83,653,863 VAE and 123,060,480 + 694,659,840 text-encoder ones.
SD3.5 Medium: a 2,243,171,520-parameter transformer (MMDiT-X) plus its fixed sin-cos position table, a persistent
buffer of 384² x 1536 = 226,492,416 values stored in the checkpoint (2,469,663,936 in all: Stability AI's
"2.5 billion parameters"); an 83,819,683-parameter VAE (16 latent channels, no quant convs); CLIP-L with its
projection 123,650,304, CLIP-G with its projection 694,659,840, T5-XXL's encoder 4,762,310,656.
FLUX.1-dev: an 11,901,408,320-parameter transformer (the published 12B), the same VAE shape (83,819,683),
CLIP-L without projection 123,060,480 and T5-XXL's encoder 4,762,310,656 (tests/test_dryrun.py checks every count).

The launch shape of the suites' recipes (`RECIPE_LAUNCH`): Diffusion-DPO's `launchers/sd15.sh` and
`launchers/sdxl.sh`, 16 processes (devices) and 2048 pairs per optimizer step (16 x 1 pair x 128
accumulation), for sd15-pickapic, sdxl-pickapic and sd35-medium (whose offline DPO follows that recipe);
Flow-GRPO's `pickscore_flux` (yifan123/flow_grpo config/grpo.py @31c71b9), 32 processes and 576 items per step
(32 x 3 x 6 accumulation), for flux-dev.
"""

from __future__ import annotations

_CLIP_L = {  # openai/clip-vit-large-patch14's text tower: SD 1.5's encoder and SDXL's first
    "architectures": ["CLIPTextModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 0,
    "dropout": 0.0,
    "eos_token_id": 2,
    "hidden_act": "quick_gelu",
    "hidden_size": 768,
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 77,
    "model_type": "clip_text_model",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "projection_dim": 768,
    "vocab_size": 49408,
}

_SD_VAE = {
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "scaling_factor": 0.18215,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

SD15: dict[str, dict] = {
    "model_index": {
        "_class_name": "StableDiffusionPipeline",
        "scheduler": ["diffusers", "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
    },
    "unet": {
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "addition_embed_type": None,
        "addition_embed_type_num_heads": 64,
        "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False,
        "class_embed_type": None,
        "class_embeddings_concat": False,
        "conv_in_kernel": 3,
        "conv_out_kernel": 3,
        "cross_attention_dim": 768,
        "cross_attention_norm": None,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1,
        "dual_cross_attention": False,
        "encoder_hid_dim": None,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_only_cross_attention": None,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "num_class_embeds": None,
        "only_cross_attention": False,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": None,
        "resnet_out_scale_factor": 1.0,
        "resnet_skip_time_act": False,
        "resnet_time_scale_shift": "default",
        "sample_size": 64,
        "time_cond_proj_dim": None,
        "time_embedding_act_fn": None,
        "time_embedding_dim": None,
        "time_embedding_type": "positional",
        "timestep_post_act": None,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "upcast_attention": None,
        "use_linear_projection": False,
    },
    "vae": _SD_VAE,
    "text_encoder": _CLIP_L,
    "scheduler": {
        "_class_name": "PNDMScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
    },
}

SDXL: dict[str, dict] = {
    "model_index": {
        "_class_name": "StableDiffusionXLPipeline",
        "force_zeros_for_empty_prompt": True,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    },
    "unet": {
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256,
        "attention_head_dim": [5, 10, 20],
        "block_out_channels": [320, 640, 1280],
        "center_input_sample": False,
        "class_embed_type": None,
        "class_embeddings_concat": False,
        "conv_in_kernel": 3,
        "conv_out_kernel": 3,
        "cross_attention_dim": 2048,
        "cross_attention_norm": None,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "downsample_padding": 1,
        "dual_cross_attention": False,
        "encoder_hid_dim": None,
        "encoder_hid_dim_type": None,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_only_cross_attention": None,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "num_attention_heads": None,
        "num_class_embeds": None,
        "only_cross_attention": False,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": 2816,
        "resnet_out_scale_factor": 1.0,
        "resnet_skip_time_act": False,
        "resnet_time_scale_shift": "default",
        "sample_size": 128,
        "time_cond_proj_dim": None,
        "time_embedding_act_fn": None,
        "time_embedding_dim": None,
        "time_embedding_type": "positional",
        "timestep_post_act": None,
        "transformer_layers_per_block": [1, 2, 10],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "upcast_attention": None,
        "use_linear_projection": True,
    },
    "vae": {**_SD_VAE, "force_upcast": True, "sample_size": 1024, "scaling_factor": 0.13025},
    "text_encoder": _CLIP_L,
    "text_encoder_2": {  # laion/CLIP-ViT-bigG-14-laion2B-39B-b160k's text tower, with its projection
        "architectures": ["CLIPTextModelWithProjection"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": "gelu",
        "hidden_size": 1280,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 5120,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": 20,
        "num_hidden_layers": 32,
        "pad_token_id": 1,
        "projection_dim": 1280,
        "vocab_size": 49408,
    },
    "scheduler": {
        "_class_name": "EulerDiscreteScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "interpolation_type": "linear",
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "sample_max_value": 1.0,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": None,
        "use_karras_sigmas": False,
    },
}

_CLIP_G = SDXL["text_encoder_2"]  # laion's CLIP-G text tower with its projection: SDXL's and SD3's second encoder

_T5_XXL = {  # google/t5-v1_1-xxl's encoder, as SD3's text_encoder_3 and FLUX's text_encoder_2 ship it
    "architectures": ["T5EncoderModel"],
    "classifier_dropout": 0.0,
    "d_ff": 10240,
    "d_kv": 64,
    "d_model": 4096,
    "decoder_start_token_id": 0,
    "dense_act_fn": "gelu_new",
    "dropout_rate": 0.1,
    "eos_token_id": 1,
    "feed_forward_proj": "gated-gelu",
    "initializer_factor": 1.0,
    "is_encoder_decoder": True,
    "is_gated_act": True,
    "layer_norm_epsilon": 1e-06,
    "model_type": "t5",
    "num_decoder_layers": 24,
    "num_heads": 64,
    "num_layers": 24,
    "output_past": True,
    "pad_token_id": 0,
    "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32,
    "tie_word_embeddings": False,
    "use_cache": True,
    "vocab_size": 32128,
}

_FLOW_VAE = {  # SD3's and FLUX's autoencoder: 16 latent channels, no quant convs, a shift besides the scale
    "_class_name": "AutoencoderKL",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 16,
    "latents_mean": None,
    "latents_std": None,
    "layers_per_block": 2,
    "mid_block_add_attention": True,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "use_post_quant_conv": False,
    "use_quant_conv": False,
}

SD35_MEDIUM: dict[str, dict] = {
    "model_index": {
        "_class_name": "StableDiffusion3Pipeline",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_3": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "tokenizer_3": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "SD3Transformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    },
    "transformer": {  # MMDiT-X: SD3's joint blocks with a second (image-only) attention in blocks 0-12, RMS q/k norm
        "_class_name": "SD3Transformer2DModel",
        "attention_head_dim": 64,
        "caption_projection_dim": 1536,
        "dual_attention_layers": list(range(13)),
        "in_channels": 16,
        "joint_attention_dim": 4096,
        "num_attention_heads": 24,
        "num_layers": 24,
        "out_channels": 16,
        "patch_size": 2,
        "pooled_projection_dim": 2048,
        "pos_embed_max_size": 384,
        "qk_norm": "rms_norm",
        "sample_size": 128,
    },
    "vae": _FLOW_VAE,
    "text_encoder": {**_CLIP_L, "architectures": ["CLIPTextModelWithProjection"]},
    "text_encoder_2": _CLIP_G,
    "text_encoder_3": _T5_XXL,
    "scheduler": {
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "num_train_timesteps": 1000,
        "shift": 3.0,
    },
}

FLUX_DEV: dict[str, dict] = {
    "model_index": {
        "_class_name": "FluxPipeline",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "T5TokenizerFast"],
        "transformer": ["diffusers", "FluxTransformer2DModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    },
    "transformer": {  # 19 double-stream (MMDiT) + 38 single-stream blocks on 2x2-packed latents (16 x 4 = 64 channels)
        "_class_name": "FluxTransformer2DModel",
        "attention_head_dim": 128,
        "axes_dims_rope": [16, 56, 56],
        "guidance_embeds": True,
        "in_channels": 64,
        "joint_attention_dim": 4096,
        "num_attention_heads": 24,
        "num_layers": 19,
        "num_single_layers": 38,
        "patch_size": 1,
        "pooled_projection_dim": 768,
    },
    "vae": {**_FLOW_VAE, "scaling_factor": 0.3611, "shift_factor": 0.1159},
    "text_encoder": _CLIP_L,
    "text_encoder_2": _T5_XXL,
    "scheduler": {
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "base_image_seq_len": 256,
        "base_shift": 0.5,
        "max_image_seq_len": 4096,
        "max_shift": 1.15,
        "num_train_timesteps": 1000,
        "shift": 3.0,
        "use_dynamic_shifting": True,
    },
}

PIPELINE_CONFIGS: dict[str, dict[str, dict]] = {
    "runwayml/stable-diffusion-v1-5": SD15,
    "stable-diffusion-v1-5/stable-diffusion-v1-5": SD15,
    "stabilityai/stable-diffusion-xl-base-1.0": SDXL,
    "stabilityai/stable-diffusion-3.5-medium": SD35_MEDIUM,
    "black-forest-labs/FLUX.1-dev": FLUX_DEV,
}


# suite -> (processes, global batch: items per optimizer step); Diffusion-DPO's launchers, Flow-GRPO's FLUX config
# (module docstring)
RECIPE_LAUNCH: dict[str, tuple[int, int]] = {
    "sd15-pickapic": (16, 2048),
    "sdxl-pickapic": (16, 2048),
    "sd35-medium": (16, 2048),
    "flux-dev": (32, 576),
}
