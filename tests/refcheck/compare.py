"""Our `hps` and `imagereward` scorers against the reference packages' scores from make_reference.py: the
same weights, the same image files, the project's own environment (transformers 5, open_clip 3).

    python tests/refcheck/compare.py OUT      (tox -e refcheck runs it through in_main_env.py)

HPS loads HPS_v2.1_compressed.pt from the Hugging Face cache in $HF_HOME (our resolver's third place) with
`torch.load(weights_only=True)`; ImageReward gets `--weights imagereward=OUT/imagereward` (the checkpoint and
vocab.txt). Each score must equal the reference to 1e-4 of the largest reference score of that scorer (HPS
cosines of random towers are near 0, so a per-score relative error would divide by ~0); the per-score
relative error is printed too, over the scores at least a tenth of the largest. Also printed: throughput of
the batched scorer against the reference's per-image calls on the eight 512x512 images.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metrics.hps import HPSScorer
from metrics.imagereward import ImageRewardScorer

TOLERANCE = 1e-4


def load_image(path: Path) -> torch.Tensor:
    """(3, H, W) float in [0, 1]: exactly the reference's ToTensor() of the same file."""
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)


def score_by_shape(scorer, prompts: list[str], images: list[torch.Tensor]) -> tuple[np.ndarray, dict[tuple, float]]:
    """Scores, one batched call per image size; and the seconds each call took."""
    scores, seconds = np.zeros(len(prompts)), {}
    for shape in dict.fromkeys(tuple(image.shape) for image in images):
        rows = [i for i, image in enumerate(images) if tuple(image.shape) == shape]
        start = time.perf_counter()
        scores[rows] = scorer.score([prompts[i] for i in rows], torch.stack([images[i] for i in rows])).numpy()
        seconds[shape] = time.perf_counter() - start
    return scores, seconds


def differences(ours: np.ndarray, reference: np.ndarray) -> dict:
    error = np.abs(ours - reference)
    scale = np.abs(reference).max()
    large = np.abs(reference) >= 0.1 * scale
    return {"max_abs": float(error.max()), "max_rel_to_largest": float(error.max() / scale),
            "max_rel_each": float((error[large] / np.abs(reference[large])).max()), "reference_largest": float(scale)}


def main() -> int:
    out = Path(sys.argv[1])
    manifest = json.loads((out / "manifest.json").read_text())
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))
    items = manifest["items"]
    prompts = [item["prompt"] for item in items]
    images = [load_image(out / item["file"]) for item in items]
    timing_rows = [i for i, item in enumerate(items) if item["set"] == "timing"]
    results = {}

    start = time.perf_counter()
    hps = HPSScorer(version="v2.1", batch_size=8, device="cpu")  # from the HF cache, weights_only=True
    hps_build_s = time.perf_counter() - start
    (_, hps_path), = hps.weight_files
    assert str(hps_path).startswith(os.environ["HF_HOME"]), hps_path
    hps_scores, hps_seconds = score_by_shape(hps, prompts, images)
    del hps
    results["hps"] = differences(hps_scores / 100, np.array(manifest["reference"]["hps_cosine"]))

    start = time.perf_counter()
    imagereward = ImageRewardScorer(weights=manifest["imagereward_dir"], batch_size=8, device="cpu")
    ir_build_s = time.perf_counter() - start
    ir_scores, ir_seconds = score_by_shape(imagereward, prompts, images)
    del imagereward
    results["imagereward"] = differences(ir_scores, np.array(manifest["reference"]["imagereward"]))

    reference_calls = [manifest["timing"]["hps"]["per_call_s"][i] for i in timing_rows]
    batched = hps_seconds[(3, 512, 512)]
    throughput = {
        "images": len(timing_rows), "threads": torch.get_num_threads(),
        "reference_per_image_calls_s": sum(reference_calls),
        "ours_batched_s": batched, "ours_build_and_load_s": hps_build_s,
        "speedup": sum(reference_calls) / batched,
        "speedup_including_our_build_and_load": sum(reference_calls) / (batched + hps_build_s),
        "imagereward_reference_s": manifest["timing"]["imagereward"]["score_all_s"],
        "imagereward_ours_s": sum(ir_seconds.values()), "imagereward_build_and_load_s": ir_build_s,
    }
    print(f"reference stack: {manifest['versions']}")
    for name, diff in results.items():
        verdict = "ok" if diff["max_rel_to_largest"] <= TOLERANCE else "FAIL"
        print(f"{name:12s} max |ours - ref| {diff['max_abs']:.3g}, / largest |ref| ({diff['reference_largest']:.3g}): "
              f"{diff['max_rel_to_largest']:.3g}, per score: {diff['max_rel_each']:.3g}  [{verdict}]")
    print(f"HPS on {throughput['images']} images of 512x512, {throughput['threads']} thread(s): reference "
          f"per-image hpsv2.score calls {throughput['reference_per_image_calls_s']:.1f} s, ours batched "
          f"{batched:.1f} s ({throughput['speedup']:.1f}x; {throughput['speedup_including_our_build_and_load']:.1f}x "
          f"with our one-time build and load, {hps_build_s:.1f} s)")
    (out / "result.json").write_text(json.dumps({"differences": results, "throughput": throughput,
                                                 "ours": {"hps": hps_scores.tolist(), "imagereward": ir_scores.tolist()}},
                                                indent=2))
    return 0 if all(diff["max_rel_to_largest"] <= TOLERANCE for diff in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
