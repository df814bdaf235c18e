"""The toy world's ground-truth reward, computed from pixels.

For an image x (RGB in [0, 1], 32x32) and the combo its caption names (background colour b,
shape colour c, kind, position, size class), with soft per-pixel memberships

    near_bg(p) = exp(-|x_p - b|^2 / (2 * 0.15^2)),  near_fg(p) = exp(-|x_p - c|^2 / (2 * 0.25^2)),
    f(p) = 1 - near_bg(p)  (foreground weight),     M = {p : f(p) > 0.5}  (foreground mask),

and A_t the nominal area of the captioned shape (middle of its size class), the reward is

    R = bgok + colour * (1 + pos + shape + size + centring),    0 <= R <= 6,

with every term in [0, 1]:

- bgok     = min(1, sum_p near_bg(p) / (H*W - A_t))         clean background of the right colour
- colour   = purity * coverage, purity = sum f^2 near_fg / sum f^2, coverage = min(1, sum near_fg / (A_t/2))
- pos      = exp(-(cx - x_t)^2 / (2 * 2.5^2)),  cx the f-weighted centroid, x_t the captioned column
- shape    = clip((IoU(M, T) - 0.5) / 0.5, 0, 1), T the captioned shape with area |M| centred at M's
             centroid (a circle scored as a square has IoU ~0.82, as a triangle ~0.69)
- size     = exp(-ln(|M| / A_t)^2 / (2 * 0.4^2))
- centring = exp(-(cy - 15.5)^2 / (2 * 3^2))                 hidden "taste": no caption mentions it

Gating the caption terms by `colour` stops blank or noise images from scoring well (an additive
version rewarded a blank gray image with ~2; here a blank image scores at most 1). `centring` is
the hidden preference: renders put the shape at a uniform y in [9, 23], so the base model learns
no preference for centred shapes, while pairs labelled by this oracle do carry one.

The oracle is deterministic and batched; `oracle_terms` returns every term for diagnostics.
"""

from __future__ import annotations

import math

import torch

from bench.toy.world import (
    BACKGROUNDS,
    COLOURS,
    IMAGE_SIZE,
    POSITIONS,
    Y_CENTRE,
    nominal_area,
    parse_caption,
    shape_mask,
)

TERMS = ("reward", "bgok", "colour", "pos", "shape", "size", "centring")
BG_SIGMA = 0.15
FG_SIGMA = 0.25
POS_SIGMA = 2.5
SIZE_LOG_SIGMA = 0.4
CENTRING_SIGMA = 3.0


def _radius_for_area(shape: str, area: torch.Tensor) -> torch.Tensor:
    """The `radius` (see world.shape_mask) that gives a shape of the given area."""
    per_r2 = {"circle": math.pi, "square": 4.0, "triangle": 3 * math.sqrt(3) / 4}[shape]
    return (area / per_r2).sqrt()


def oracle_terms(prompts: list[str], images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every oracle term per image. images: (N, 3, 32, 32) float RGB in [0, 1]. Returns name -> (N,)."""
    if images.ndim != 4 or images.shape[1:] != (3, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"oracle expects images of shape (N, 3, {IMAGE_SIZE}, {IMAGE_SIZE}), got {tuple(images.shape)}")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"{len(prompts)} prompts for {images.shape[0]} images")
    combos = [parse_caption(p) for p in prompts]
    x = images.detach().double().clamp(0, 1).cpu()  # (N, 3, H, W)
    n, _, h, w = x.shape
    bg = torch.tensor([BACKGROUNDS[c.background] for c in combos], dtype=torch.float64)[:, :, None, None]
    fg = torch.tensor([COLOURS[c.colour] for c in combos], dtype=torch.float64)[:, :, None, None]
    target_area = torch.tensor([nominal_area(c) for c in combos], dtype=torch.float64)  # (N,)
    target_x = torch.tensor([POSITIONS[c.position] for c in combos], dtype=torch.float64)

    near_bg = torch.exp(-((x - bg) ** 2).sum(1) / (2 * BG_SIGMA**2))  # (N, H, W)
    near_fg = torch.exp(-((x - fg) ** 2).sum(1) / (2 * FG_SIGMA**2))
    f = 1 - near_bg
    mask = f > 0.5
    eps = 1e-8

    bgok = (near_bg.sum((1, 2)) / (h * w - target_area)).clamp(max=1)
    purity = (f**2 * near_fg).sum((1, 2)) / ((f**2).sum((1, 2)) + eps)
    coverage = (near_fg.sum((1, 2)) / (target_area / 2)).clamp(max=1)
    colour = purity * coverage

    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    f_mass = f.sum((1, 2)) + eps
    cx = (f * xs).sum((1, 2)) / f_mass
    cy = (f * ys).sum((1, 2)) / f_mass
    pos = torch.exp(-((cx - target_x) ** 2) / (2 * POS_SIGMA**2))
    centring = torch.exp(-((cy - Y_CENTRE) ** 2) / (2 * CENTRING_SIGMA**2))

    area = mask.sum((1, 2)).double()
    size = torch.exp(-torch.log((area + eps) / target_area) ** 2 / (2 * SIZE_LOG_SIGMA**2))
    size = torch.where(area > 0, size, torch.zeros_like(size))

    # Shape fidelity: IoU of the mask with the ideal captioned shape of the same area and centroid.
    m = mask.float()
    mcount = m.sum((1, 2)).clamp(min=1)
    mcx = (m * xs).sum((1, 2)) / mcount
    mcy = (m * ys).sum((1, 2)) / mcount
    shape = torch.zeros(n, dtype=torch.float64)
    for kind in {c.shape for c in combos}:
        idx = torch.tensor([i for i, c in enumerate(combos) if c.shape == kind])
        radius = _radius_for_area(kind, area[idx])
        template = shape_mask(kind, mcx[idx, None, None], mcy[idx, None, None], radius[:, None, None], ys, xs)
        inter = (template & mask[idx]).sum((1, 2)).double()
        union = (template | mask[idx]).sum((1, 2)).double()
        iou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
        shape[idx] = ((iou - 0.5) / 0.5).clamp(0, 1)

    reward = bgok + colour * (1 + pos + shape + size + centring)
    terms = {"reward": reward, "bgok": bgok, "colour": colour, "pos": pos, "shape": shape, "size": size,
             "centring": centring}
    return {k: v.float() for k, v in terms.items()}


def oracle_reward(prompts: list[str], images: torch.Tensor) -> torch.Tensor:
    """The ground-truth reward R per image, shape (N,); see the module docstring."""
    return oracle_terms(prompts, images)["reward"]

