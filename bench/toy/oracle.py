"""The toy world's ground-truth reward (version 2), computed from pixels.

For an image x (RGB in [0, 1], 32x32) and the combo its caption names (background colour b, shape
colour c, kind, position, size class), every pixel p gets

    near_bg(p) = exp(-|x_p - b|^2 / (2 * 0.15^2)),    f(p) = 1 - near_bg(p)     (non-background weight)
    t(p) = clamp(<x_p - b, c - b> / |c - b|^2, 0, 1)                          (share of c in the best b/c mix)
    e(p) = |x_p - b - t(p) (c - b)|^2,   q(p) = exp(-e(p) / (2 * 0.15^2))     (how well that mix fits x_p)
    cov(p) = u(p) sigmoid((u(p) - k) / (k / 4)),  u = t q,  k = 0.1 / |c - b|  (soft coverage by the shape)

For a ground-truth render (`world.render`: x = b + coverage * (c - b), anti-aliased) u is the true
coverage exactly, edge pixels included. The noise floor k (a colour distance of 0.1 from b along c - b)
keeps faint coverage, which a ground-truth render has only on the outermost edge pixels (< 2 px of area
in all), out of the shape terms: without it 8-bit rounding of a gray background (0.5 -> 128/255, +0.002
in every pixel) spread ~2 px of soft area over the frame and took small triangles from 5.8 to 0.2, and
pixel noise of 0.02 per channel halved the renders' mean score. With A = sum_p cov the soft area,
(mx, my) the cov-weighted centroid, [A_lo, A_hi] the areas the size class allows for the captioned kind
(world.SIZES radii) and x_t the captioned column (world.POSITIONS), the reward is

    R = bgok * colour * shape * size * pos * (5 + centring),        0 <= R <= 6,

with every term in [0, 1], equal to 1 for every image the caption describes (plateaus over the caption's
allowed ranges) and falling smoothly outside:

- bgok     = min(1, sum_p near_bg / (H*W - A_hi))                    background clean and of the right colour
- colour   = sum_p f q / sum_p f                                     the share of non-background that is a b/c mix
- size     = exp(-dlog^2 / (2 * 0.25^2)), dlog = distance of ln A from [ln A_lo, ln A_hi]
- pos      = exp(-dx^2 / (2 * 2^2)),      dx = distance of mx from [x_t - 2, x_t + 2] (world.X_JITTER)
- shape    = exp(-relu(0.88 - iou)^2 / (2 * 0.15^2)) * exp(-relu(0.05 - gap)^2 / (2 * 0.05^2)),
             iou = soft IoU sum min(cov, T) / sum max(cov, T) with T the captioned kind's template,
             gap = iou - max IoU with the other two kinds' templates
- centring = exp(-(my - 15.5)^2 / (2 * 3^2))                         hidden "taste": no caption mentions it

A template T_k is `world.shape_coverage` of kind k (sigmoid of the signed inside-margin, edge width
matched to the renderer's anti-aliasing) fitted to the image by moments: its visible (in-frame) area
equals A and its visible centroid (mx, my), after 4 fixed-point steps from r = sqrt(A / area per r^2)
at (mx, my). The steps matter for shapes the frame clips (a large square at x = 6 loses 2 columns):
without them such a square's IoU with its own kind fell to 0.875, with them it is >= 0.94.

What each factor stops (v1 was additive, R = bgok + colour * (1 + pos + shape + size + centring), and
gave a full-frame fill of the caption's colour 3.19 on average over the test prompts and 3.98 on
"center square" ones, above the base model's mean 3.89):
- the product: every captioned attribute gates the rest, so no image scores by excelling at some terms;
- bgok: fills, haze, textured or wrong-colour backgrounds (a full-frame fill scores 0; the shape on the
  other background colour < 0.001);
- colour: any other colour (the closest pair, blue drawn for cyan on black, leaves a residual e = 0.19,
  q = 0.01) and noise; a blank image is caught by `size` (A = 0);
- size: 3x too large or small, two shapes, checkerboards, half-strength shapes (A off the class's range);
- pos: the wrong column (6 px beyond the jitter range: pos = 0.011);
- shape: wrong kinds and non-shapes. The `gap` factor is there because of measurement: a crisp wrong
  kind of the same area has IoU 0.67-0.86 with the captioned kind's template, while the base model's
  blurry samples have median IoU 0.80 with their own, so no threshold on IoU alone ranks a crisp
  wrong shape below the base model. Relative to the best other kind, a ground-truth render leads by
  >= 0.08 (circles and squares) or >= 0.16 (triangles), a base-model sample by 0.04 (median), and a
  crisp wrong kind trails by 0.13-0.32 (shape <= 0.002). The `iou` factor keeps rings, blobs, pairs
  and other shapes that resemble no kind at low IoU; ground-truth renders have iou >= 0.889 (small
  triangles, whose corners the template's sigmoid rounds), hence the plateau from 0.88.
- `5 + centring`: the hidden taste decides at most a sixth of R, so it reorders correct images but
  cannot lift an incorrect one; renders (y uniform in [9, 23]) average centring 0.50.

The plateaus are tolerances, not rewards: within them the oracle is indifferent (e.g. to a stray pixel
of the shape's colour once iou stays >= 0.88), and gradient ascent found nothing that outscores an image
the caption describes. Measured on the 64 test prompts: ground-truth renders average 5.50, the base model
2.60 (256 samples as the toy suite evaluates them; v1 gave 4.71 and 3.89), the adversarial gallery of
`tests/test_oracle_adversarial.py` at most 0.57 (two shapes stacked in the right column); gradient
ascent on the pixels from noise ends at the captioned shape, scoring 5.94-6.00 per prompt.

Every term is computed in log space (`oracle_log_reward` is finite where R underflows, e.g. for noise)
in float64 and is differentiable with respect to the pixels (`oracle_terms(..., differentiable=True)`
keeps the graph); `oracle_terms` otherwise detaches and returns float32 for scoring. ln R is flat for a
pixel far from both b and the b/c segment (Gaussian kernels), so ascent from noise needs the smoothing
described in `tests/test_oracle_adversarial.py`. The oracle is
deterministic and batched. `ORACLE_VERSION` is part of the `oracle` scorer's description, so records
and caches scored by another version are not reused.
"""

from __future__ import annotations

import torch

from bench.toy.world import (
    AREA_PER_RADIUS2,
    BACKGROUNDS,
    COLOURS,
    IMAGE_SIZE,
    POSITIONS,
    SHAPES,
    SIZES,
    X_JITTER,
    Y_CENTRE,
    Combo,
    parse_caption,
    shape_coverage,
)

ORACLE_VERSION = 2  # 1: additive bgok + colour * (1 + ...); 2: multiplicative, soft coverage (this module)
TERMS = ("reward", "bgok", "colour", "shape", "size", "pos", "centring")
BG_SIGMA = 0.15  # as v1: near_bg = 0.5 for a pixel 0.1 off the background in every channel
FIT_SIGMA = 0.15  # q: base-model samples keep colour ~0.94; the closest wrong colour has q ~0.01
SIZE_LOG_SIGMA = 0.25  # a class's range edge x 1.28 in area -> size e^-0.5
POS_SIGMA = 2.0  # px beyond X_JITTER -> e^-0.5 at 2 px
IOU_FULL, IOU_SIGMA = 0.88, 0.15  # renders have iou >= 0.889; iou 0.6 (a ring, a pair) -> 0.18
GAP_FULL, GAP_SIGMA = 0.05, 0.05  # renders lead the other kinds by >= 0.08, crisp wrong kinds trail by >= 0.13
CENTRING_SIGMA = 3.0  # as v1
TEMPLATE_FIT_STEPS = 4  # a clipped large square's iou: 0.875 unfitted, 0.94-0.95 after 3-4 steps
# Colour distance along c - b under which coverage is background noise, not shape: the base model's
# background pixels lie 0.011 (median) / 0.028 (90th percentile) from b; 8-bit rounding of gray 0.5 is 0.0034.
NOISE_FLOOR = 0.1
_EPS = 1e-12


def _grid(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    coords = torch.arange(IMAGE_SIZE, dtype=torch.float64, device=device)  # pixel centres
    return torch.meshgrid(coords, coords, indexing="ij")  # (H, W) each


def _per_image(combos: list[Combo], table: dict, key: str, device: torch.device) -> torch.Tensor:
    return torch.tensor([table[getattr(c, key)] for c in combos], dtype=torch.float64, device=device)


def _soft_coverage(combos: list[Combo], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(near_bg, q, cov), each (N, H, W), for images x (N, 3, H, W) float64 in [0, 1]; cov = t q above the floor."""
    b = _per_image(combos, BACKGROUNDS, "background", x.device)[:, :, None, None]  # (N, 3, 1, 1)
    c = _per_image(combos, COLOURS, "colour", x.device)[:, :, None, None]
    d = c - b
    near_bg = torch.exp(-((x - b) ** 2).sum(1) / (2 * BG_SIGMA**2))
    t = (((x - b) * d).sum(1) / (d**2).sum(1)).clamp(0, 1)  # (N, H, W)
    e = ((x - b - t[:, None] * d) ** 2).sum(1)
    q = torch.exp(-e / (2 * FIT_SIGMA**2))
    floor = NOISE_FLOOR / d.flatten(1).norm(dim=1)[:, None, None]  # in units of t, (N, 1, 1)
    return near_bg, q, t * q * torch.sigmoid((t * q - floor) / (floor / 4))


def _fit_template(kind: str, area: torch.Tensor, mx: torch.Tensor, my: torch.Tensor, ys: torch.Tensor,
                  xs: torch.Tensor) -> torch.Tensor:
    """Template of `kind` (N, H, W) whose in-frame area and centroid match `area` and (mx, my), (N,) each."""
    area = area.clamp(min=1e-6)
    radius = (area / AREA_PER_RADIUS2[kind]).sqrt().clamp(0.5, 2 * IMAGE_SIZE)
    cx, cy = mx, my
    for _ in range(TEMPLATE_FIT_STEPS):
        template = shape_coverage(kind, cx[:, None, None], cy[:, None, None], radius[:, None, None], ys, xs)
        t_area = template.sum((1, 2)).clamp(min=1e-6)
        tx, ty = (template * xs).sum((1, 2)) / t_area, (template * ys).sum((1, 2)) / t_area
        radius = (radius * (area / t_area).sqrt().clamp(0.5, 2)).clamp(0.5, 2 * IMAGE_SIZE)
        cx, cy = cx + (mx - tx), cy + (my - ty)
    return shape_coverage(kind, cx[:, None, None], cy[:, None, None], radius[:, None, None], ys, xs)


def _soft_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.minimum(a, b).sum((1, 2)) / (torch.maximum(a, b).sum((1, 2)) + _EPS)


def _log_terms(combos: list[Combo], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """log of bgok, colour, shape, size, pos and (not in log) centring, each (N,); x (N, 3, H, W) float64."""
    _, _, h, w = x.shape
    ys, xs = _grid(x.device)
    near_bg, q, cov = _soft_coverage(combos, x)
    f = 1 - near_bg
    per_r2 = _per_image(combos, AREA_PER_RADIUS2, "shape", x.device)
    area_lo = per_r2 * _per_image(combos, {k: v[0] for k, v in SIZES.items()}, "size", x.device) ** 2
    area_hi = per_r2 * _per_image(combos, {k: v[1] for k, v in SIZES.items()}, "size", x.device) ** 2

    log_bgok = (torch.log(near_bg.sum((1, 2)) + _EPS) - torch.log(h * w - area_hi)).clamp(max=0)
    log_colour = torch.log((f * q).sum((1, 2)) + _EPS) - torch.log(f.sum((1, 2)) + _EPS)

    area = cov.sum((1, 2))  # (N,)
    log_area = torch.log(area + _EPS)
    dlog = torch.relu(torch.log(area_lo) - log_area) + torch.relu(log_area - torch.log(area_hi))
    log_size = -(dlog**2) / (2 * SIZE_LOG_SIGMA**2)

    mx = (cov * xs).sum((1, 2)) / (area + _EPS)
    my = (cov * ys).sum((1, 2)) / (area + _EPS)
    dx = torch.relu((mx - _per_image(combos, POSITIONS, "position", x.device)).abs() - X_JITTER)
    log_pos = -(dx**2) / (2 * POS_SIGMA**2)
    centring = torch.exp(-((my - Y_CENTRE) ** 2) / (2 * CENTRING_SIGMA**2))

    ious = torch.stack([_soft_iou(cov, _fit_template(kind, area, mx, my, ys, xs)) for kind in SHAPES], 1)  # (N, 3)
    own_kind = torch.tensor([SHAPES.index(c.shape) for c in combos], device=x.device)
    own = ious.gather(1, own_kind[:, None])[:, 0]
    other = ious.masked_fill(torch.nn.functional.one_hot(own_kind, len(SHAPES)).bool(), -1.0).amax(1)
    log_shape = (-(torch.relu(IOU_FULL - own) ** 2) / (2 * IOU_SIGMA**2)
                 - torch.relu(GAP_FULL - (own - other)) ** 2 / (2 * GAP_SIGMA**2))
    return {"bgok": log_bgok, "colour": log_colour, "shape": log_shape, "size": log_size, "pos": log_pos,
            "centring": centring}


def _prepare(prompts: list[str], images: torch.Tensor) -> tuple[list[Combo], torch.Tensor]:
    if images.ndim != 4 or images.shape[1:] != (3, IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(f"oracle expects images of shape (N, 3, {IMAGE_SIZE}, {IMAGE_SIZE}), got {tuple(images.shape)}")
    if len(prompts) != images.shape[0]:
        raise ValueError(f"{len(prompts)} prompts for {images.shape[0]} images")
    return [parse_caption(p) for p in prompts], images.double().clamp(0, 1)


def oracle_log_reward(prompts: list[str], images: torch.Tensor) -> torch.Tensor:
    """ln R per image, (N,) float64, differentiable w.r.t. images (N, 3, 32, 32) float RGB in [0, 1].

    The sum of the terms' logs: finite (and with useful gradients) where R itself underflows to 0, so
    this is the objective for gradient ascent on the pixels.
    """
    combos, x = _prepare(prompts, images)
    logs = _log_terms(combos, x)
    return sum(v for k, v in logs.items() if k != "centring") + torch.log(5 + logs["centring"])


def oracle_terms(prompts: list[str], images: torch.Tensor, *, differentiable: bool = False) -> dict[str, torch.Tensor]:
    """Every oracle term (TERMS) per image. images: (N, 3, 32, 32) float RGB in [0, 1]. Returns name -> (N,).

    By default detached float32 on the CPU (scoring); with `differentiable=True`, float64 on the images'
    device with the autograd graph kept.
    """
    if not differentiable:
        images = images.detach().cpu()
    combos, x = _prepare(prompts, images)
    logs = _log_terms(combos, x)
    terms = {k: (v if k == "centring" else torch.exp(v)) for k, v in logs.items()}
    reward = terms["bgok"] * terms["colour"] * terms["shape"] * terms["size"] * terms["pos"] * (5 + terms["centring"])
    out = {"reward": reward, **{k: terms[k] for k in TERMS if k != "reward"}}
    return out if differentiable else {k: v.float() for k, v in out.items()}


def oracle_reward(prompts: list[str], images: torch.Tensor) -> torch.Tensor:
    """The ground-truth reward R per image, shape (N,); see the module docstring."""
    return oracle_terms(prompts, images)["reward"]


def captioned_coverage(prompts: list[str], images: torch.Tensor) -> torch.Tensor:
    """cov, the soft coverage by the captioned colour the oracle scores, (N, 32, 32) float64 (differentiable)."""
    combos, x = _prepare(prompts, images)
    return _soft_coverage(combos, x)[2]
