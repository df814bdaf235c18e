"""Pick-a-Pic v2 schema loading (ties dropped, winner first), KTO labels, and the encoded cache."""

from __future__ import annotations

import io

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from bench.harness.data import DataError, as_rgb, decode_images, encode_preferences, load_pickapic, png_bytes, preference_pairs
from bench.toy.world import all_combos, render_dataset


def _jpeg(width: int, height: int, colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


@pytest.fixture()
def pickapic_parquet(tmp_path):
    """Four comparisons in the Pick-a-Pic v2 schema: 0 wins, 1 wins, a tie, and a reused image."""
    images, captions = render_dataset(all_combos()[:3], 1, seed=0)
    a, b, c = (png_bytes(img) for img in images)
    rows = {
        "caption": [captions[0], captions[1], captions[2], captions[0]],
        "jpg_0": [a, b, c, a],
        "jpg_1": [b, c, a, _jpeg(64, 48, (250, 10, 10))],
        "label_0": [1.0, 0.0, 0.5, 0.0],
        "label_1": [0.0, 1.0, 0.5, 1.0],
        "image_0_uid": ["A", "B", "C", "A"],
        "image_1_uid": ["B", "C", "A", "D"],
        "are_different": [True] * 4,
    }
    path = tmp_path / "train-00000.parquet"
    datasets.Dataset.from_dict(rows).to_parquet(str(path))
    return path


def test_loader_drops_ties_and_puts_winner_first(pickapic_parquet):
    pairs = preference_pairs(load_pickapic(pickapic_parquet))
    assert len(pairs) == 3  # the tie is dropped
    assert list(zip(pairs.winner_ids, pairs.loser_ids)) == [("A", "B"), ("C", "B"), ("D", "A")]
    assert preference_pairs(load_pickapic(pickapic_parquet), max_pairs=2).winner_ids == ["A", "C"]
    assert pairs.image_bytes([(1, 1), (0, 0)]) == [load_pickapic(pickapic_parquet)[1]["jpg_1"],
                                                   load_pickapic(pickapic_parquet)[0]["jpg_0"]]


def test_ids_fall_back_to_image_hashes(pickapic_parquet):
    ds = load_pickapic(pickapic_parquet).remove_columns(["image_0_uid", "image_1_uid"])
    pairs = preference_pairs(ds)
    assert len(set(pairs.winner_ids + pairs.loser_ids)) == 4 and pairs.winner_ids[0] == pairs.loser_ids[2]


def test_loader_sources(pickapic_parquet, tmp_path):
    ds = load_pickapic(pickapic_parquet.parent)  # a directory of parquet files
    assert len(ds) == 4
    ds.save_to_disk(str(tmp_path / "saved"))
    assert len(load_pickapic(tmp_path / "saved")) == 4
    with pytest.raises(DataError, match="cannot load preference data 'no-such-org/no-such-data'"):
        load_pickapic("no-such-org/no-such-data")
    bad = tmp_path / "bad.parquet"
    datasets.Dataset.from_dict({"caption": ["x"], "jpg_0": [b""]}).to_parquet(str(bad))
    with pytest.raises(DataError, match="missing Pick-a-Pic v2 columns"):
        load_pickapic(bad)


def test_directory_splits_are_matched_by_name_not_substring(pickapic_parquet, tmp_path):
    root = tmp_path / "pickapic" / "data"
    root.mkdir(parents=True)
    full = load_pickapic(pickapic_parquet)
    for name, rows in (("train-00000-of-00001", 4), ("test-00000-of-00001", 2), ("test_unique-00000-of-00001", 1)):
        full.select(range(rows)).to_parquet(str(root / f"{name}.parquet"))
    assert [len(load_pickapic(root.parent, split)) for split in ("train", "test", "test_unique")] == [4, 2, 1]
    with pytest.raises(DataError, match="no 'validation' parquet files under .* the splits test, test_unique, train"):
        load_pickapic(root.parent, "validation")
    unsplit = tmp_path / "unsplit"
    unsplit.mkdir()
    full.to_parquet(str(unsplit / "prefs.parquet"))  # one dataset without split names: every split reads it
    assert len(load_pickapic(unsplit, "test")) == 4


def test_natural_order_of_image_files():
    from bench.harness.data import natural_key

    names = ["10.png", "2.png", "1\u00b23.png", "02.png", "a.png", "1.png", "img_10.png", "img_9.png", "a", "a1"]
    assert sorted(names, key=natural_key) == ["1.png", "1\u00b23.png", "02.png", "2.png", "10.png", "a", "a1", "a.png",
                                              "img_9.png", "img_10.png"]


def test_images_decode_as_a_viewer_shows_them():
    """16-bit greyscale keeps its values (not clipped to white); an EXIF rotation is applied."""
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(ramp).save(buffer, format="PNG")
    grey = decode_images([buffer.getvalue()], 32)
    assert grey.min().item() == 0.0 and grey.max().item() == 1.0 and abs(grey.mean().item() - 0.5) < 0.01
    wide = Image.new("RGB", (64, 32), (255, 0, 0))
    wide.paste((0, 0, 255), (0, 0, 32, 32))  # left half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    buffer = io.BytesIO()
    wide.save(buffer, format="PNG", exif=exif)
    shown = as_rgb(Image.open(io.BytesIO(buffer.getvalue())))
    assert shown.size == (32, 64) and shown.getpixel((16, 8)) == (0, 0, 255)  # blue on top after the rotation


def test_decode_resizes_shorter_side_and_centre_crops():
    out = decode_images([_jpeg(64, 48, (250, 10, 10))], 32)
    assert out.shape == (1, 3, 32, 32)
    assert out[0, 0].mean() > 0.9 and out[0, 1].mean() < 0.1


def test_encoded_preferences_and_kto_labels(pickapic_parquet, tiny_backbone):
    pairs = preference_pairs(load_pickapic(pickapic_parquet))
    data = encode_preferences(tiny_backbone, pairs)
    assert data.num_pairs == 3 and data.num_images == 4  # A, B, C, D stored once each
    assert data.latents.shape == (4, *tiny_backbone.latent_shape)
    assert sorted(data.image_ids) == ["A", "B", "C", "D"]
    # Diffusion-KTO: an image ever preferred is desirable (A won once and lost once).
    assert dict(zip(data.image_ids, data.desirable.tolist())) == {"A": True, "B": False, "C": True, "D": True}
    assert data.prompts[data.image_prompt[data.image_ids.index("D")]] == pairs.captions[2]
    assert [data.image_ids[i] for i in data.pair_winner] == pairs.winner_ids
    expected = tiny_backbone.encode_images(decode_images(pairs.image_bytes([(0, 0)]), 32))
    assert torch.allclose(data.latents[data.image_ids.index("A")], expected[0], atol=1e-5)
    again = encode_preferences(tiny_backbone, pairs)  # second call reads the cache
    assert torch.equal(again.latents, data.latents) and torch.equal(again.prompt_cond.embeds, data.prompt_cond.embeds)
