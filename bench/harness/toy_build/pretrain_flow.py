"""Pretraining of the toy flow pipeline: the SD3 transformer and its two CLIP encoders, with the rectified-flow loss.

SD3's objective (Esser et al. 2024, "Scaling Rectified Flow Transformers for High-Resolution Image Synthesis", §2-3;
diffusers `examples/dreambooth/train_dreambooth_sd3.py`, the training step): with x_σ = (1 − σ) x_0 + σ ε,

    L(θ) = E_{σ, x_0, ε} ‖u_θ(x_σ, σ, c) − (ε − x_0)‖²,

σ drawn from the logit-normal density (SD3 §3.1, "rf/lognorm(0.00, 1.00)", the paper's best): u = sigmoid(n),
n ~ N(0, 1) (`diffusers.training_utils.compute_density_for_timestep_sampling("logit_normal", ...)`, here with
this loop's generator), index ⌊u · 1000⌋ into the training scheduler's table, σ and the transformer's timestep
1000·σ from that index (the script's `get_sigmas`); the loss weighting for logit-normal sampling is 1
(`compute_loss_weighting_for_sd3`). As the SD toy: 10% caption dropout (the empty prompt, the Backbone's
unconditional branch), both text encoders trained jointly, AdamW with a one-cycle learning rate, gradient clipping at
1, an EMA of the weights whose weights are kept. The VAE latents are given (the SD toy's VAE, or one trained by
`pretrain.pretrain_vae`).

Deterministic given the seed (explicit generators; fixed thread count is the caller's).
"""

from __future__ import annotations

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from diffusers.training_utils import compute_density_for_timestep_sampling
from transformers import CLIPTextModelWithProjection

from bench.core.progress import progress_bar
from bench.harness.toy_build.pretrain import PretrainConfig, denoiser_training, optimizer_step


def flow_text_conditioning(clip_l: CLIPTextModelWithProjection, clip_g: CLIPTextModelWithProjection,
                           token_ids: torch.Tensor, t5_tokens: int, joint_dim: int):
    """(embeds (B, L + t5_tokens, joint_dim), pooled (B, P_l + P_g)) as `Backbone.encode_prompts` makes them for an SD3
    pipeline without T5, differentiable: both CLIPs' penultimate hidden states concatenated on features, zero-padded to
    the joint width, then `t5_tokens` zero tokens; the pooled embedding is both projections concatenated."""
    first = clip_l(token_ids, output_hidden_states=True)
    second = clip_g(token_ids, output_hidden_states=True)
    embeds = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)  # (B, L, D_l + D_g)
    embeds = torch.nn.functional.pad(embeds, (0, joint_dim - embeds.shape[-1]))  # (B, L, D_joint)
    embeds = torch.cat([embeds, embeds.new_zeros(embeds.shape[0], t5_tokens, joint_dim)], dim=-2)
    return embeds, torch.cat([first.text_embeds, second.text_embeds], dim=-1)


def pretrain_flow_denoiser(transformer: SD3Transformer2DModel, clip_l: CLIPTextModelWithProjection,
                           clip_g: CLIPTextModelWithProjection, scheduler: FlowMatchEulerDiscreteScheduler,
                           latents: torch.Tensor, token_ids: torch.Tensor, null_ids: torch.Tensor, t5_tokens: int,
                           cfg: PretrainConfig, *, progress: bool = True) -> None:
    """Train the transformer and both encoders in place; on return all three hold their EMA weights.

    latents: (N, C, h, w) scaled; token_ids: (N, L) captions; null_ids: (L,) the empty prompt.
    """
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    modules = [transformer, clip_l, clip_g]
    params, optimizer, schedule, ema = denoiser_training(modules, cfg)
    table = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config)  # the training table, no set_timesteps
    sigmas, levels = table.sigmas.to(torch.float32), table.timesteps.to(torch.float32)  # (T+1,), (T,) descending
    joint_dim = transformer.config.joint_attention_dim
    bar = progress_bar(range(cfg.denoiser_steps), enabled=progress, desc="toy SD3 transformer")
    for _ in bar:
        idx = torch.randint(0, len(latents), (cfg.batch_size,), generator=gen)
        x0, ids = latents[idx], token_ids[idx].clone()  # (B, C, h, w), (B, L)
        ids[torch.rand(cfg.batch_size, generator=gen) < cfg.caption_dropout] = null_ids
        noise = torch.randn(x0.shape, generator=gen)
        u = compute_density_for_timestep_sampling("logit_normal", cfg.batch_size, logit_mean=0.0, logit_std=1.0,
                                                  generator=gen)  # (B,) in (0, 1)
        j = (u * table.config.num_train_timesteps).long()
        sigma = sigmas[j].view(-1, 1, 1, 1)
        x_sigma = (1 - sigma) * x0 + sigma * noise
        embeds, pooled = flow_text_conditioning(clip_l, clip_g, ids, t5_tokens, joint_dim)
        pred = transformer(hidden_states=x_sigma, timestep=levels[j], encoder_hidden_states=embeds,
                           pooled_projections=pooled, return_dict=False)[0]
        loss = ((pred - (noise - x0)) ** 2).mean()
        optimizer_step(loss, params, optimizer, schedule, ema, bar)
    ema.copy_to(params)
    for m in modules:
        m.eval().requires_grad_(False)
