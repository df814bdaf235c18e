"""Preference data in the Pick-a-Pic v2 schema, and its encoded (cached) training tensors.

Pick-a-Pic v2 (Kirstain et al. 2023, `yuvalkirstain/pickapic_v2`) stores one comparison per row:
`caption`, `jpg_0`, `jpg_1` (encoded image bytes), `label_0`, `label_1` (1/0, or 0.5/0.5 for a tie),
`image_0_uid`, `image_1_uid`, ... The toy world writes the same schema (PNG bytes in `jpg_*`, which
PIL decodes alike). As the Diffusion-DPO training script does, ties are dropped and the winner is
put first.

KTO's binary labels are derived as in Diffusion-KTO (Li et al. 2024): an image that was ever
preferred is desirable, every other image undesirable.

Encoding (VAE latents, posterior mean, no flips; text embeddings per unique caption) runs once and
is cached under the cache directory, keyed by the dataset's and the encoders' fingerprints.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors.torch import load_file, save_file

from bench.core.backbone import Backbone, Conditioning
from bench.core.cache import cache_dir
from bench.core.records import atomic_output

log = logging.getLogger(__name__)

PICKAPIC_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")


class DataError(ValueError):
    """Preference data that cannot be found or does not have the Pick-a-Pic v2 schema."""


PICKAPIC_SPLITS = ("train", "validation", "test", "validation_unique", "test_unique")


def _split_files(root: Path, split: str) -> list[str]:
    """The parquet files of `split` under `root`, named as the hub's (`data/test_unique-00000-of-00001.parquet`,
    the split before the first '-' or '.') or in a directory named after it; a directory with no split names at
    all is one unsplit dataset."""
    files = sorted(root.rglob("*.parquet"))
    if not files:
        raise DataError(f"no parquet files under {root}")
    split_of = {f: f.name.split("-")[0].split(".")[0] if f.name.split("-")[0].split(".")[0] in PICKAPIC_SPLITS
                else f.parent.name if f.parent.name in PICKAPIC_SPLITS else None for f in files}
    chosen = [str(f) for f in files if split_of[f] == split]
    named = sorted({s for s in split_of.values() if s is not None})
    if not chosen and named:
        raise DataError(f"no {split!r} parquet files under {root} (it holds the splits {', '.join(named)})")
    return chosen or [str(f) for f in files]


def check_data_source(source: str | os.PathLike) -> None:
    """DataError (one line) when `source` names a local path (absolute, relative, "~", or a .parquet file) that does
    not exist: a run checks it before announcing itself; anything else is for `load_pickapic` to load."""
    text = str(source)
    if not Path(text).exists() and (os.path.isabs(text) or text.startswith((".", "~")) or text.endswith(".parquet")):
        raise DataError(f"cannot load preference data {text!r}: no such file or directory. Pass a local parquet file "
                        "or directory in the Pick-a-Pic v2 schema, or a hub id that is in the cache.")


def load_pickapic(source: str | os.PathLike, split: str = "train") -> datasets.Dataset:
    """Pick-a-Pic-v2-schema data from a parquet file, a directory of parquet files, a
    `save_to_disk` directory, or a hub dataset id (read from the local cache when offline)."""
    path = Path(source)
    try:
        if path.is_file():
            ds = datasets.load_dataset("parquet", data_files=str(path), split="train")
        elif path.is_dir() and (path / "dataset_info.json").exists():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        elif path.is_dir():
            ds = datasets.load_dataset("parquet", data_files=_split_files(path, split), split="train")
        else:
            ds = datasets.load_dataset(str(source), split=split)
    except DataError:
        raise
    except Exception as err:  # datasets raises many types for a missing / offline dataset
        raise DataError(
            f"cannot load preference data {str(source)!r} (split {split!r}): {str(err).splitlines()[0]}. "
            "Pass a local parquet file or directory in the Pick-a-Pic v2 schema, or a hub id that is in the cache."
        ) from err
    missing = [c for c in PICKAPIC_COLUMNS if c not in ds.column_names]
    if missing:
        raise DataError(f"{source}: missing Pick-a-Pic v2 columns {missing} (has {ds.column_names})")
    return ds


@dataclass
class PreferencePairs:
    """Comparisons, winner first, ties dropped. Image bytes stay in the (memory-mapped) dataset and
    are read in chunks when encoding, so Pick-a-Pic-sized data does not have to fit in memory."""

    dataset: datasets.Dataset
    rows: list[int]  # dataset row of each kept pair
    winner_side: list[int]  # 0 if jpg_0 won, else 1
    captions: list[str]
    winner_ids: list[str]
    loser_ids: list[str]
    fingerprint: str

    def __len__(self) -> int:
        return len(self.rows)

    def image_bytes(self, refs: list[tuple[int, int]]) -> list[bytes]:
        """Encoded bytes of images given as (dataset row, side) references."""
        out = []
        for side in (0, 1):
            wanted = [(i, row) for i, (row, s) in enumerate(refs) if s == side]
            if wanted:
                column = self.dataset.select([row for _, row in wanted])[f"jpg_{side}"]
                out.extend(zip((i for i, _ in wanted), column))
        return [blob for _, blob in sorted(out, key=lambda item: item[0])]


def preference_pairs(ds: datasets.Dataset, max_pairs: int | None = None) -> PreferencePairs:
    """Winner-first pairs from a Pick-a-Pic-schema dataset; ties (label_0 == label_1) are dropped.

    Image identity comes from `image_{0,1}_uid` when present (the KTO labels need it), else from a
    hash of the image bytes.
    """
    has_uids = {"image_0_uid", "image_1_uid"} <= set(ds.column_names)
    meta = ds.select_columns(["caption", "label_0", "label_1"] + (["image_0_uid", "image_1_uid"] if has_uids else []))
    rows, sides, captions, win_ids, lose_ids = [], [], [], [], []
    for i, row in enumerate(meta):
        if row["label_0"] == row["label_1"]:
            continue  # a tie carries no preference
        w = 0 if row["label_0"] > row["label_1"] else 1
        rows.append(i)
        sides.append(w)
        captions.append(row["caption"])
        if has_uids:
            win_ids.append(str(row[f"image_{w}_uid"]))
            lose_ids.append(str(row[f"image_{1 - w}_uid"]))
        if max_pairs is not None and len(rows) >= max_pairs:
            break
    if not rows:
        raise DataError("the preference data has no non-tied pairs")
    fingerprint = hashlib.sha256(f"{ds._fingerprint}:{max_pairs}".encode()).hexdigest()[:16]
    pairs = PreferencePairs(ds, rows, sides, captions, win_ids, lose_ids, fingerprint)
    if not has_uids:
        for start in range(0, len(rows), 1024):
            chunk = list(zip(rows[start:start + 1024], sides[start:start + 1024]))
            pairs.winner_ids += [hashlib.sha1(b).hexdigest() for b in pairs.image_bytes(chunk)]
            pairs.loser_ids += [hashlib.sha1(b).hexdigest() for b in pairs.image_bytes([(r, 1 - s) for r, s in chunk])]
    return pairs


def png_bytes(image: torch.Tensor) -> bytes:
    """(3, H, W) float in [0, 1] -> PNG bytes (8-bit RGB)."""
    array = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def natural_key(path: Path) -> list:
    """Sort key reading digit runs as numbers: 2.png before 10.png (as file browsers order them)."""
    name = Path(path).name
    parts = re.split(r"([0-9]+)", name)
    return [(0, int(part), "") if re.fullmatch(r"[0-9]+", part) else (1, 0, part.lower()) for part in parts] + [(-1, 0, name)]


def image_files(directory: str | os.PathLike) -> list[Path]:
    """The images of a directory in natural name order; one-line errors for a non-directory or none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"image directory {directory} does not exist or is not a directory")
    files = sorted((p for p in directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES), key=natural_key)
    if not files:
        raise FileNotFoundError(f"no {'/'.join(IMAGE_SUFFIXES)} images in {directory}")
    return files


def as_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB as a viewer shows the image: EXIF orientation applied; 16-bit and 32-bit greyscale (modes
    I;16*, I, F) scaled to 8 bits (PIL's `convert("RGB")` clips them to white)."""
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        array = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode != "F" else max(float(array.max()), 1.0)
        img = Image.fromarray(np.clip(array / top * 255 + 0.5, 0, 255).astype(np.uint8), mode="L")
    return img.convert("RGB")


def load_image(path: Path) -> torch.Tensor:
    """(3, H, W) float RGB in [0, 1] at the file's own size (each scorer preprocesses as its model expects)."""
    with Image.open(path) as img:
        array = np.asarray(as_rgb(img), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


def image_batches(files: tuple[Path, ...] | None, images: torch.Tensor | None, prompts: list[str],
                  batch_size: int) -> Iterator[tuple[list[int], list[str], torch.Tensor]]:
    """(image indices, prompts, images (B, 3, H, W)) for `score_batches`: slices of `images`, or `batch_size` files
    read at a time and grouped by size (a batch holds images of one size)."""
    for start in range(0, len(prompts), batch_size):
        index = list(range(start, min(start + batch_size, len(prompts))))
        if files is None:
            yield index, [prompts[i] for i in index], images[index[0]:index[-1] + 1]
            continue
        loaded = {i: load_image(files[i]) for i in index}
        sizes: dict[tuple[int, ...], list[int]] = {}
        for i, tensor in loaded.items():
            sizes.setdefault(tuple(tensor.shape), []).append(i)
        for group in sizes.values():
            yield group, [prompts[i] for i in group], torch.stack([loaded[i] for i in group])


def decode_images(blobs: list[bytes], size: int) -> torch.Tensor:
    """Encoded images -> (N, 3, size, size) float RGB in [0, 1] (shorter side resized, centre crop)."""
    out = torch.empty(len(blobs), 3, size, size)
    for i, blob in enumerate(blobs):
        img = as_rgb(Image.open(io.BytesIO(blob)))
        if img.size != (size, size):
            scale = size / min(img.size)
            img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))),
                             Image.BICUBIC)
            left, top = (img.width - size) // 2, (img.height - size) // 2
            img = img.crop((left, top, left + size, top + size))
        out[i] = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(size, size, 3).permute(2, 0, 1) / 255
    return out


@dataclass
class EncodedPreferences:
    """Training tensors. Images are stored once; pairs and binary labels index into them."""

    latents: torch.Tensor  # (M, C, h, w) unique images
    image_ids: list[str]  # (M,) their uids
    image_prompt: torch.Tensor  # (M,) index into `prompts`
    prompts: list[str]
    prompt_cond: Conditioning  # (P,) text conditioning of `prompts`
    pair_winner: torch.Tensor  # (N,) index into latents
    pair_loser: torch.Tensor  # (N,)
    desirable: torch.Tensor  # (M,) bool: the image was preferred in at least one pair (Diffusion-KTO)

    @property
    def num_pairs(self) -> int:
        return len(self.pair_winner)

    @property
    def num_images(self) -> int:
        return len(self.latents)

    def conditioning(self, prompt_index: torch.Tensor) -> Conditioning:
        return self.prompt_cond[prompt_index]


def encode_preferences(backbone: Backbone, pairs: PreferencePairs, *, use_cache: bool = True,
                       batch_size: int = 64) -> EncodedPreferences:
    """Encode images (VAE posterior mean) and captions once; cached on disk by fingerprint."""
    key = hashlib.sha256(
        f"{pairs.fingerprint}:{backbone.fingerprint('vae')}:{backbone.fingerprint('text')}:"
        f"{backbone.image_size}:{backbone.dtype}".encode()
    ).hexdigest()[:24]
    path = cache_dir() / "encoded" / f"{key}.safetensors"

    ids = list(dict.fromkeys(pairs.winner_ids + pairs.loser_ids))  # unique, first-seen order
    index = {uid: i for i, uid in enumerate(ids)}
    prompts = list(dict.fromkeys(pairs.captions))
    prompt_index = {p: i for i, p in enumerate(prompts)}
    image_prompt = torch.empty(len(ids), dtype=torch.long)
    ref_of: dict[str, tuple[int, int]] = {}  # uid -> (dataset row, side)
    for caption, row, side, wid, lid in zip(pairs.captions, pairs.rows, pairs.winner_side, pairs.winner_ids,
                                            pairs.loser_ids):
        for uid, ref in ((wid, (row, side)), (lid, (row, 1 - side))):
            ref_of.setdefault(uid, ref)
            image_prompt[index[uid]] = prompt_index[caption]
    pair_winner = torch.tensor([index[u] for u in pairs.winner_ids])
    pair_loser = torch.tensor([index[u] for u in pairs.loser_ids])
    desirable = torch.zeros(len(ids), dtype=torch.bool)
    desirable[pair_winner] = True

    if use_cache and path.exists():
        tensors = load_file(str(path))
        latents = tensors.pop("latents")
        prompt_cond = _conditioning_from_flat(tensors)
    else:
        latents = torch.cat([
            backbone.encode_images(decode_images(pairs.image_bytes([ref_of[u] for u in ids[i:i + batch_size]]),
                                                 backbone.image_size))
            for i in range(0, len(ids), batch_size)
        ]).cpu()
        prompt_cond = Conditioning.cat([backbone.encode_prompts(prompts[i:i + 256])
                                        for i in range(0, len(prompts), 256)]).to("cpu")
        if use_cache:
            with atomic_output(path) as tmp:
                save_file({"latents": latents.contiguous(), **_conditioning_to_flat(prompt_cond)}, str(tmp))
    return EncodedPreferences(latents, ids, image_prompt, prompts, prompt_cond, pair_winner, pair_loser, desirable)


def _conditioning_to_flat(cond: Conditioning) -> dict[str, torch.Tensor]:
    flat = {"embeds": cond.embeds.contiguous()}
    flat.update({f"added.{k}": v.contiguous() for k, v in (cond.added or {}).items()})
    return flat


def _conditioning_from_flat(flat: dict[str, torch.Tensor]) -> Conditioning:
    added = {k.removeprefix("added."): v for k, v in flat.items() if k.startswith("added.")}
    return Conditioning(flat["embeds"], added or None)
