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


@dataclass(frozen=True)
class Splits:
    """Three disjoint prompt sets: `train` (preference data), `validation` (tuning), `test` (reported)."""

    train: tuple[Combo, ...]
    validation: tuple[Combo, ...]
    test: tuple[Combo, ...]

    def captions(self, name: str) -> list[str]:
        if name not in SPLIT_NAMES:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLIT_NAMES)}")
        return [c.caption for c in getattr(self, name)]


SPLIT_NAMES = ("train", "validation", "test")


def split_combos(n_test: int = 64, n_validation: int = 32, seed: int = 0) -> Splits:
    """Deterministic split of the 216 combos into train / validation / test prompt sets.

    The combos are shuffled with `seed`; the first `n_test` are the test prompts (the 64 held-out
    prompts every earlier toy record was evaluated on), the next `n_validation` the tuning prompts,
    the rest (120) the preference-training prompts. Each keeps the fixed order of `all_combos()`.
    """
    combos = all_combos()
    order = list(range(len(combos)))
    random.Random(seed).shuffle(order)
    if n_test + n_validation >= len(combos):
        raise ValueError(f"n_test + n_validation must leave training prompts (< {len(combos)})")
    test_idx, val_idx = set(order[:n_test]), set(order[n_test:n_test + n_validation])
    pick = lambda keep: tuple(c for i, c in enumerate(combos) if keep(i))  # noqa: E731
    return Splits(train=pick(lambda i: i not in test_idx and i not in val_idx),
                  validation=pick(val_idx.__contains__), test=pick(test_idx.__contains__))


_CAPTIONS = {c.caption: c for c in all_combos()}


def is_caption(caption: str) -> bool:
    """Whether `caption` is a toy-world caption (`parse_caption` would accept it)."""
    return caption.strip().lower() in _CAPTIONS


def example_caption() -> str:
    return all_combos()[0].caption


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


# Area of each shape per radius**2 (`radius` as in SIZES: circle radius, square half-side, triangle circumradius).
AREA_PER_RADIUS2: dict[str, float] = {"circle": math.pi, "square": 4.0, "triangle": 3 * math.sqrt(3) / 4}
# Width of the soft edge of `shape_coverage`, in pixels: the logistic scale that best matches (least L1 error
# per image, fitted over 432 random renders) the renderer's 4x4 box-filtered edges; 1 / (2 pi) = 0.159 would
# match the variance of a continuous 1-pixel box, the 4x4 staircase is slightly wider.
EDGE_TAU = 0.17


def shape_margin(shape: str, cx: torch.Tensor, cy: torch.Tensor, radius: torch.Tensor, ys: torch.Tensor,
                 xs: torch.Tensor) -> torch.Tensor:
    """Signed inside-margin of sample points (ys, xs) for shapes, in pixels: > 0 inside, < 0 outside.

    cx, cy, radius: (B, 1, 1); ys, xs: (H, W) coordinates. Returns (B, H, W). Near the outline the
    margin is the signed distance to it: exactly for the square's sides and the triangle's, to first
    order for the circle, whose margin (r**2 - d**2) / (2 r) is smooth everywhere (no square root at the
    centre) and has exactly the sign of the renderer's `d**2 <= r**2`. A square has half-side `radius`; a
    triangle is equilateral, pointing up, with circumradius `radius` and its centroid at (cx, cy).
    This is the toy world's one definition of the shapes: `shape_mask` (rendering) is margin >= 0, and
    `shape_coverage` (the oracle's differentiable template) a sigmoid of it.
    """
    dx, dy = xs - cx, ys - cy  # (B, H, W)
    if shape == "circle":
        return (radius**2 - (dx**2 + dy**2)) / (2 * radius)
    if shape == "square":
        return radius - torch.maximum(dx.abs(), dy.abs())
    if shape == "triangle":
        # Distance inside the three half-planes of an equilateral triangle with apex up (y grows downwards):
        # the base dy <= r/2 and the sides -+sqrt(3) dx - dy <= r (normals of length 2, hence the halving).
        s3 = math.sqrt(3.0)
        bottom = radius / 2 - dy
        left = (radius - (-s3 * dx - dy)) / 2
        right = (radius - (s3 * dx - dy)) / 2
        return torch.minimum(bottom, torch.minimum(left, right))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def shape_mask(shape: str, cx: torch.Tensor, cy: torch.Tensor, radius: torch.Tensor, ys: torch.Tensor,
               xs: torch.Tensor) -> torch.Tensor:
    """Boolean coverage of sample points (ys, xs) by shapes, (B, H, W): `shape_margin` >= 0."""
    return shape_margin(shape, cx, cy, radius, ys, xs) >= 0


def shape_coverage(shape: str, cx: torch.Tensor, cy: torch.Tensor, radius: torch.Tensor, ys: torch.Tensor,
                   xs: torch.Tensor, tau: float = EDGE_TAU) -> torch.Tensor:
    """Soft, differentiable pixel coverage by shapes in [0, 1], (B, H, W): sigmoid(margin / tau).

    Evaluated at pixel centres it approximates `render`'s anti-aliased coverage (soft IoU with it 0.96 on
    average, 0.90 at worst: small triangles, whose corners the sigmoid rounds).
    """
    return torch.sigmoid(shape_margin(shape, cx, cy, radius, ys, xs) / tau)


def nominal_area(combo: Combo) -> float:
    """Area in pixels of the captioned shape at the middle of its size class."""
    return AREA_PER_RADIUS2[combo.shape] * (sum(SIZES[combo.size]) / 2) ** 2


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


def held_out_combos(count: int) -> list[Combo]:
    """The first `count` held-out (test) combos in order, cycled past the last one: the toy images `bench eval`,
    `bench invert` and `bench speed` make (`render_dataset(held_out_combos(n), 1, seed)` renders each once)."""
    held_out = split_combos().test
    return [held_out[i % len(held_out)] for i in range(count)]
