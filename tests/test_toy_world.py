"""The toy world's renderer, captions and oracle reward."""

from __future__ import annotations

import random

import pytest
import torch

from bench.toy.oracle import oracle_terms
from bench.toy.world import (
    Combo,
    Scene,
    all_combos,
    parse_caption,
    render,
    render_dataset,
    sample_scene,
    split_combos,
)


def test_combos_captions_and_split():
    combos = all_combos()
    assert len(combos) == 216 and len({c.caption for c in combos}) == 216
    assert parse_caption("A small red circle on the left, black background") == Combo("small", "red", "circle",
                                                                                     "left", "black")
    with pytest.raises(ValueError, match="not a toy-world caption"):
        parse_caption("a photo of a cat")
    train, held_out = split_combos()
    assert len(held_out) == 64 and len(train) == 152 and not set(train) & set(held_out)
    assert split_combos() == (train, held_out)  # deterministic


def test_rendering_is_deterministic_and_in_range():
    a, caps = render_dataset(all_combos()[:10], 2, seed=3)
    b, _ = render_dataset(all_combos()[:10], 2, seed=3)
    assert torch.equal(a, b) and a.shape == (20, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    assert caps[0] == caps[1] == all_combos()[0].caption


def test_ground_truth_renders_score_high():
    images, captions = render_dataset(all_combos(), 2, seed=0)
    terms = oracle_terms(captions, images)
    assert terms["reward"].mean() > 4.3
    for name in ("bgok", "shape", "pos"):
        assert terms[name].mean() > 0.85, name


def test_blank_noise_and_wrong_colour_images_score_low():
    caption = "a large red square in the center, black background"
    blank = torch.zeros(1, 3, 32, 32)
    assert oracle_terms([caption], blank)["reward"].item() <= 1.0 + 1e-6  # colour gates everything else
    noise = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert oracle_terms([caption] * 4, noise)["reward"].max() < 0.5
    red = render([Scene(parse_caption(caption), 16, 15.5, 7.5)])
    wrong = "a large blue square in the center, black background"
    assert oracle_terms([caption], red)["reward"] > 5.3 and oracle_terms([wrong], red)["reward"] < 1.5


def test_shape_term_discriminates_shapes():
    scenes = [Scene(Combo("large", "red", s, "center", "black"), 16, 15.5, 7.5) for s in ("circle", "square", "triangle")]
    images = render(scenes)
    for kind in ("circle", "square", "triangle"):
        caption = f"a large red {kind} in the center, black background"
        shape = oracle_terms([caption] * 3, images)["shape"]
        own = ["circle", "square", "triangle"].index(kind)
        assert shape[own] > 0.9 and all(shape[i] < 0.7 for i in range(3) if i != own)


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
