"""The toy world: procedurally rendered 32x32 images of one coloured shape, with captions.

A scene is one shape (circle, square, triangle) of one colour, at one horizontal position (left,
center, right), of one size class (small, large), on a black or gray background. The caption names
all five attributes::

    "a small red circle on the left, black background"

Two nuisance variables are *not* named by the caption and are drawn uniformly when rendering: the
exact radius within the size class and the vertical centre y in [9, 23]. The oracle's hidden
"taste" term (see :mod:`bench.toy.oracle`) prefers vertically centred shapes, so preference pairs
labelled by the oracle carry a signal that the captions, and hence the base model, do not.

Rendering is deterministic given the scene (4x4 supersampled anti-aliasing); images are float RGB in
[0, 1], shape (3, 32, 32).
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass

import torch

IMAGE_SIZE = 32
SUPERSAMPLE = 4

SHAPES = ("circle", "square", "triangle")
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.10, 0.10),
    "green": (0.10, 0.80, 0.15),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.90, 0.10),
    "magenta": (0.90, 0.15, 0.85),
    "cyan": (0.10, 0.85, 0.90),
}
BACKGROUNDS: dict[str, tuple[float, float, float]] = {"black": (0.0, 0.0, 0.0), "gray": (0.5, 0.5, 0.5)}
POSITIONS: dict[str, float] = {"left": 8.0, "center": 16.0, "right": 24.0}  # target x centre, pixels
# Size classes as a "radius" range in pixels: circle radius, square half-side, triangle circumradius.
SIZES: dict[str, tuple[float, float]] = {"small": (3.5, 5.0), "large": (6.5, 8.5)}
X_JITTER = 2.0  # uniform +-px around the position's centre
Y_RANGE = (9.0, 23.0)  # hidden nuisance: vertical centre, uniform
Y_CENTRE = (IMAGE_SIZE - 1) / 2  # 15.5, the pixel-grid centre the hidden taste term prefers


@dataclass(frozen=True)
class Combo:
    """The captioned attributes of a scene (what a prompt asks for)."""

    size: str
    colour: str
    shape: str
    position: str
    background: str

    @property
    def caption(self) -> str:
        where = "in the center" if self.position == "center" else f"on the {self.position}"
        return f"a {self.size} {self.colour} {self.shape} {where}, {self.background} background"


@dataclass(frozen=True)
class Scene:
    """A fully specified scene: the combo plus the nuisance variables the caption leaves open."""

    combo: Combo
    cx: float
    cy: float
    radius: float


def all_combos() -> list[Combo]:
    """Every captionable combination, in a fixed order (216 of them)."""
    return [
        Combo(size, colour, shape, position, background)
        for size, colour, shape, position, background in itertools.product(
            SIZES, COLOURS, SHAPES, POSITIONS, BACKGROUNDS
        )
    ]


def split_combos(n_eval: int = 64, seed: int = 0) -> tuple[list[Combo], list[Combo]]:
    """Deterministic split of the combos into (preference-training, evaluation) prompt sets."""
    combos = all_combos()
    order = list(range(len(combos)))
    random.Random(seed).shuffle(order)
    eval_idx = set(order[:n_eval])
    train = [c for i, c in enumerate(combos) if i not in eval_idx]
    held_out = [c for i, c in enumerate(combos) if i in eval_idx]
    return train, held_out


_CAPTIONS = {c.caption: c for c in all_combos()}


def parse_caption(caption: str) -> Combo:
    """The combo a caption names; raises ValueError for text outside the toy grammar."""
    try:
        return _CAPTIONS[caption.strip().lower()]
    except KeyError:
        raise ValueError(f"not a toy-world caption: {caption!r}") from None


def sample_scene(combo: Combo, rng: random.Random) -> Scene:
    """Draw the nuisance variables (x jitter, y, radius) for a combo."""
    cx = POSITIONS[combo.position] + rng.uniform(-X_JITTER, X_JITTER)
    cy = rng.uniform(*Y_RANGE)
    radius = rng.uniform(*SIZES[combo.size])
    return Scene(combo, cx, cy, radius)


def shape_mask(shape: str, cx: torch.Tensor, cy: torch.Tensor, radius: torch.Tensor, ys: torch.Tensor,
               xs: torch.Tensor) -> torch.Tensor:
    """Boolean coverage of sample points (ys, xs) by shapes, vectorised over a batch.

    cx, cy, radius: (B, 1, 1); ys, xs: (H, W) pixel-centre coordinates. Returns (B, H, W).
    A square has half-side `radius`; a triangle is equilateral, pointing up, with circumradius
    `radius` and its centroid at (cx, cy).
    """
    dx, dy = xs - cx, ys - cy  # (B, H, W)
    if shape == "circle":
        return dx**2 + dy**2 <= radius**2
    if shape == "square":
        return (dx.abs() <= radius) & (dy.abs() <= radius)
    if shape == "triangle":
        # Inside the three half-planes of an equilateral triangle with apex up (y grows downwards).
        bottom = dy <= radius / 2
        s3 = math.sqrt(3.0)
        left = -s3 * dx - dy <= radius
        right = s3 * dx - dy <= radius
        return bottom & left & right
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def nominal_area(combo: Combo) -> float:
    """Area in pixels of the captioned shape at the middle of its size class."""
    r = sum(SIZES[combo.size]) / 2
    return {"circle": math.pi * r**2, "square": 4 * r**2, "triangle": 3 * math.sqrt(3) / 4 * r**2}[combo.shape]


def _pixel_grid(size: int, supersample: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = size * supersample
    coords = (torch.arange(n, dtype=torch.float64) + 0.5) / supersample - 0.5  # pixel centres at 0..size-1
    return torch.meshgrid(coords, coords, indexing="ij")


def render(scenes: list[Scene]) -> torch.Tensor:
    """Render scenes to float RGB images in [0, 1], shape (B, 3, 32, 32), anti-aliased."""
    ys, xs = _pixel_grid(IMAGE_SIZE, SUPERSAMPLE)
    images = torch.empty(len(scenes), 3, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.float32)
    for i, scene in enumerate(scenes):
        c = scene.combo
        params = [torch.tensor([[[v]]], dtype=torch.float64) for v in (scene.cx, scene.cy, scene.radius)]
        cover = shape_mask(c.shape, *params, ys, xs)[0].double()  # (H*s, W*s)
        cover = torch.nn.functional.avg_pool2d(cover[None, None], SUPERSAMPLE)[0, 0]  # (H, W) in [0, 1]
        fg = torch.tensor(COLOURS[c.colour], dtype=torch.float64)[:, None, None]
        bg = torch.tensor(BACKGROUNDS[c.background], dtype=torch.float64)[:, None, None]
        images[i] = (cover * fg + (1 - cover) * bg).float()
    return images


def render_dataset(combos: list[Combo], per_combo: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """`per_combo` random renders of every combo: images (N, 3, 32, 32) and their captions."""
    rng = random.Random(seed)
    scenes = [sample_scene(c, rng) for c in combos for _ in range(per_combo)]
    return render(scenes), [s.combo.caption for s in scenes]
