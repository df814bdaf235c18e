"""Pretraining of the toy pipeline on rendered scenes: first the VAE, then UNet + text encoder.

VAE: reconstruction MSE in [-1, 1] plus a small KL to N(0, I) (weight per latent element), as SD's
autoencoder is trained (without its perceptual and GAN terms, which a 32x32 world does not need).
Afterwards `scaling_factor` = 1 / std(latents), the rule SD used to pick 0.18215.

Denoiser: the standard diffusion loss with the schedule's own target (v for v-prediction),
t ~ U{0..999}, 10% caption dropout for classifier-free guidance, the text encoder trained jointly,
AdamW with a one-cycle learning rate, gradient clipping at 1 and an EMA of the weights (diffusers'
`EMAModel`), whose weights are the ones kept.

Everything is deterministic given the seed (explicit generators; fixed thread count is the caller's).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.training_utils import EMAModel
from transformers import CLIPTextModel

from bench.core.progress import progress_bar


@dataclass(frozen=True)
class PretrainConfig:
    renders_per_combo: int = 40  # x 216 combos = 8,640 training renders
    vae_steps: int = 700
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-3
    denoiser_steps: int = 1500
    denoiser_lr: float = 1e-3
    batch_size: int = 64
    caption_dropout: float = 0.1
    ema_decay: float = 0.995
    seed: int = 0

    def __post_init__(self):
        for name in ("renders_per_combo", "vae_steps", "denoiser_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if not 0 <= self.caption_dropout < 1:
            raise ValueError("caption_dropout must be in [0, 1)")


def _one_cycle(optimizer: torch.optim.Optimizer, lr: float, steps: int):
    # 5% warmup (at least two steps, which OneCycleLR needs), then cosine annealing.
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=max(0.05, 2 / steps))


def pretrain_vae(vae: AutoencoderKL, images: torch.Tensor, cfg: PretrainConfig, *, progress: bool = True) -> None:
    """Train `vae` in place on images (N, 3, H, W) in [0, 1]; then set its scaling factor."""
    gen = torch.Generator().manual_seed(cfg.seed)
    vae.train().requires_grad_(True)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    schedule = _one_cycle(optimizer, cfg.vae_lr, cfg.vae_steps)
    bar = progress_bar(range(cfg.vae_steps), enabled=progress, desc="toy VAE")
    for _ in bar:
        x = images[torch.randint(0, len(images), (cfg.batch_size,), generator=gen)] * 2 - 1  # (B, 3, H, W)
        posterior = vae.encode(x).latent_dist
        z = posterior.sample(generator=gen)  # (B, C, h, w)
        mse = ((vae.decode(z).sample - x) ** 2).mean()
        kl = posterior.kl().mean() / z[0].numel()
        loss = mse + cfg.vae_kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(mse=f"{mse.item():.4f}")
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        latents = torch.cat([vae.encode(x * 2 - 1).latent_dist.mode() for x in images.split(512)])
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))


def denoiser_training(modules: list[torch.nn.Module], cfg: PretrainConfig):
    """(params, AdamW, one-cycle lr schedule, EMA) for pretraining `modules` jointly, set to train mode."""
    for m in modules:
        m.train().requires_grad_(True)
    params = [p for m in modules for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=cfg.denoiser_lr, weight_decay=0.0)
    schedule = _one_cycle(optimizer, cfg.denoiser_lr, cfg.denoiser_steps)
    return params, optimizer, schedule, EMAModel(params, decay=cfg.ema_decay, use_ema_warmup=True, power=0.75)


def optimizer_step(loss: torch.Tensor, params: list, optimizer, schedule, ema, bar) -> None:
    """One pretraining update: backward, gradient clip at 1, AdamW and lr steps, EMA of the weights, the bar's loss."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    schedule.step()
    ema.step(params)
    bar.set_postfix(loss=f"{loss.item():.4f}")


def pretrain_denoiser(unet: UNet2DConditionModel, text_encoder: CLIPTextModel, scheduler: DDIMScheduler,
                      latents: torch.Tensor, token_ids: torch.Tensor, null_ids: torch.Tensor, cfg: PretrainConfig,
                      *, progress: bool = True) -> None:
    """Train UNet and text encoder in place; on return both hold their EMA weights.

    latents: (N, C, h, w) scaled; token_ids: (N, L) captions; null_ids: (L,) the empty prompt.
    """
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    modules = [unet, text_encoder]
    params, optimizer, schedule, ema = denoiser_training(modules, cfg)
    abar = scheduler.alphas_cumprod.to(torch.float64)
    bar = progress_bar(range(cfg.denoiser_steps), enabled=progress, desc="toy UNet")
    for _ in bar:
        idx = torch.randint(0, len(latents), (cfg.batch_size,), generator=gen)
        x0, ids = latents[idx], token_ids[idx].clone()  # (B, C, h, w), (B, L)
        ids[torch.rand(cfg.batch_size, generator=gen) < cfg.caption_dropout] = null_ids
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=gen)
        a = abar[t].sqrt().float().view(-1, 1, 1, 1)
        s = (1 - abar[t]).sqrt().float().view(-1, 1, 1, 1)
        x_t = a * x0 + s * noise
        target = {"epsilon": noise, "v_prediction": a * noise - s * x0, "sample": x0}[scheduler.config.prediction_type]
        pred = unet(x_t, t, encoder_hidden_states=text_encoder(ids).last_hidden_state).sample
        loss = ((pred - target) ** 2).mean()
        optimizer_step(loss, params, optimizer, schedule, ema, bar)
    ema.copy_to(params)
    for m in modules:
        m.eval().requires_grad_(False)
