"""The toy world's renderer, captions and oracle reward."""

from __future__ import annotations

import math
import random

import pytest
import torch

from bench.toy.oracle import captioned_coverage, oracle_terms
from bench.toy.world import (
    Combo,
    Scene,
    _pixel_grid,
    all_combos,
    parse_caption,
    render,
    render_dataset,
    sample_scene,
    shape_coverage,
    shape_margin,
    shape_mask,
    split_combos,
)


def test_combos_captions_and_split():
    combos = all_combos()
    assert len(combos) == 216 and len({c.caption for c in combos}) == 216
    assert parse_caption("A small red circle on the left, black background") == Combo("small", "red", "circle",
                                                                                     "left", "black")
    with pytest.raises(ValueError, match="not a toy-world caption"):
        parse_caption("a photo of a cat")
    splits = split_combos()
    train, validation, test = splits.train, splits.validation, splits.test
    assert (len(train), len(validation), len(test)) == (120, 32, 64)
    assert not set(train) & set(validation) and not set(train) & set(test) and not set(validation) & set(test)
    assert set(train) | set(validation) | set(test) == set(all_combos())
    assert split_combos() == splits  # deterministic
    assert splits.captions("test")[0] == test[0].caption
    with pytest.raises(ValueError, match="unknown split"):
        splits.captions("val")


def test_rendering_is_deterministic_and_in_range():
    a, caps = render_dataset(all_combos()[:10], 2, seed=3)
    b, _ = render_dataset(all_combos()[:10], 2, seed=3)
    assert torch.equal(a, b) and a.shape == (20, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    assert caps[0] == caps[1] == all_combos()[0].caption


def test_ground_truth_renders_score_high():
    images, captions = render_dataset(all_combos(), 2, seed=0)
    terms = oracle_terms(captions, images)
    assert terms["reward"].mean() > 5.0  # only the hidden centring term differs between renders
    for name in ("bgok", "colour", "shape", "size", "pos"):
        assert terms[name].mean() > 0.99 and terms[name].min() > 0.9, name


def test_soft_coverage_of_a_render_is_its_true_coverage():
    scenes = [Scene(c, 9.3, 12.7, 4.1) for c in all_combos()[:12]] + [Scene(Combo("large", "cyan", "square", "left",
                                                                                      "gray"), 6.0, 15.5, 8.5)]
    images = render(scenes)
    ys, xs = _pixel_grid(32, 4)
    for scene, cov in zip(scenes, captioned_coverage([s.combo.caption for s in scenes], images)):
        params = [torch.tensor([[[v]]], dtype=torch.float64) for v in (scene.cx, scene.cy, scene.radius)]
        truth = torch.nn.functional.avg_pool2d(shape_mask(scene.combo.shape, *params, ys, xs).double()[None], 4)[0, 0]
        # t * q is exact up to the renders' float32; the noise floor only drops faint edge pixels (< ~0.3)
        assert (cov - truth)[truth >= 0.5].abs().max() < 1e-3 and (cov - truth).abs().max() < 0.2
        assert 0 <= truth.sum() - cov.sum() < 2.0


def test_shapes_are_defined_once_by_their_margin():
    gen = torch.Generator().manual_seed(0)
    ys, xs = (torch.rand(2, 64, 64, generator=gen, dtype=torch.float64) * 32).unbind(0)
    cx, cy, r = (torch.rand(3, 8, 1, 1, generator=gen, dtype=torch.float64) * torch.tensor([32, 32, 9.0]).view(3, 1, 1, 1)
                 + torch.tensor([0, 0, 1.0]).view(3, 1, 1, 1)).unbind(0)
    dx, dy, s3 = xs - cx, ys - cy, math.sqrt(3.0)
    reference = {"circle": dx**2 + dy**2 <= r**2, "square": (dx.abs() <= r) & (dy.abs() <= r),
                 "triangle": (dy <= r / 2) & (-s3 * dx - dy <= r) & (s3 * dx - dy <= r)}  # the v1 renderer's tests
    for shape, inside in reference.items():
        margin = shape_margin(shape, cx, cy, r, ys, xs)
        assert torch.equal(shape_mask(shape, cx, cy, r, ys, xs), inside) and torch.equal(margin >= 0, inside)
        soft = shape_coverage(shape, cx, cy, r, ys, xs)
        assert torch.equal(soft > 0.5, margin > 0) and ((soft - 0.5).abs() > 0.49)[margin.abs() > 1].all()
        rendered = render([Scene(Combo("large", "red", shape, "center", "black"), 15.3, 16.2, 7.1)])[0, 0] / 0.95
        coarse_y, coarse_x = _pixel_grid(32, 1)
        template = shape_coverage(shape, *(torch.tensor([[[v]]], dtype=torch.float64) for v in (15.3, 16.2, 7.1)),
                                  coarse_y, coarse_x)[0]
        iou = torch.minimum(rendered, template).sum() / torch.maximum(rendered, template).sum()
        assert iou > 0.95, (shape, iou)  # the sigmoid edge matches the 4x4 box filter


def test_blank_noise_and_wrong_colour_images_score_low():
    caption = "a large red square in the center, black background"
    blank = torch.zeros(1, 3, 32, 32)
    assert oracle_terms([caption], blank)["reward"].item() < 1e-6  # nothing of the colour drawn: size = 0
    noise = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert oracle_terms([caption] * 4, noise)["reward"].max() < 0.01
    red = render([Scene(parse_caption(caption), 16, 15.5, 7.5)])
    wrong = "a large blue square in the center, black background"
    assert oracle_terms([caption], red)["reward"] > 5.99 and oracle_terms([wrong], red)["reward"] < 0.01


def test_shape_term_discriminates_shapes():
    scenes = [Scene(Combo("large", "red", s, "center", "black"), 16, 15.5, 7.5) for s in ("circle", "square", "triangle")]
    images = render(scenes)
    for kind in ("circle", "square", "triangle"):
        caption = f"a large red {kind} in the center, black background"
        shape = oracle_terms([caption] * 3, images)["shape"]
        own = ["circle", "square", "triangle"].index(kind)
        assert shape[own] > 0.99 and all(shape[i] < 0.05 for i in range(3) if i != own)


def test_hidden_centring_term_prefers_vertically_centred_shapes():
    combo = Combo("small", "green", "circle", "left", "gray")
    images = render([Scene(combo, 8, y, 4.5) for y in (15.5, 19.5, 23.0)])
    terms = oracle_terms([combo.caption] * 3, images)
    assert terms["centring"][0] > 0.99 > terms["centring"][1] > terms["centring"][2]
    assert terms["reward"][0] > terms["reward"][1] > terms["reward"][2]
    assert "centre" not in combo.caption and "vertical" not in combo.caption


def test_scene_sampling_respects_caption():
    rng = random.Random(0)
    combo = Combo("large", "yellow", "triangle", "right", "black")
    for _ in range(50):
        scene = sample_scene(combo, rng)
        assert 22 <= scene.cx <= 26 and 9 <= scene.cy <= 23 and 6.5 <= scene.radius <= 8.5


def test_oracle_input_errors():
    with pytest.raises(ValueError, match="shape"):
        oracle_terms(["a small red circle on the left, black background"], torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="prompts"):
        oracle_terms([], torch.zeros(1, 3, 32, 32))
