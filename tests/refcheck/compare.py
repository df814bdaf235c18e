"""Our `hps` and `imagereward` scorers against the reference packages' scores from make_reference.py: the
same weights, the same image files, the project's own environment (transformers 5, open_clip 3).

    python tests/refcheck/compare.py OUT      (tox -e refcheck runs it through in_main_env.py)

HPS v2.1 and v2.0 load HPS_v2.1_compressed.pt / HPS_v2_compressed.pt from the Hugging Face cache in $HF_HOME
(our resolver's third place) with `torch.load(weights_only=True)`; ImageReward gets OUT/imagereward (as
`--weights imagereward=DIR`: the checkpoint, med_config.json and vocab.txt). Each scorer passes when both
(a) max |ours - ref| / max |ref| <= 1e-4, and (b) max |ours - ref| / |ref| <= 1e-4 over the scores at least a
tenth of the largest (HPS cosines of random towers are near 0; a relative error of a score at ~0 measures
nothing). Results go to OUT/result.json.
Throughput against `hpsv2.score` is tests/benchmarks/test_scorer_speed.py's job (the next step of the tox env).
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


def score_by_shape(scorer, prompts: list[str], images: list[torch.Tensor]) -> np.ndarray:
    """Scores, one batched call per image size."""
    scores = np.zeros(len(prompts))
    for shape in dict.fromkeys(tuple(image.shape) for image in images):
        rows = [i for i, image in enumerate(images) if tuple(image.shape) == shape]
        scores[rows] = scorer.score([prompts[i] for i in rows], torch.stack([images[i] for i in rows])).numpy()
    return scores


def differences(ours: np.ndarray, reference: np.ndarray) -> dict:
    error = np.abs(ours - reference)
    scale = np.abs(reference).max()
    large = np.abs(reference) >= 0.1 * scale
    return {"max_abs": float(error.max()), "max_rel_to_largest": float(error.max() / scale),
            "max_rel_each": float((error[large] / np.abs(reference[large])).max()), "reference_largest": float(scale)}


def passed(diff: dict) -> bool:
    return diff["max_rel_to_largest"] <= TOLERANCE and diff["max_rel_each"] <= TOLERANCE


def main() -> int:
    out = Path(sys.argv[1])
    manifest = json.loads((out / "manifest.json").read_text())
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 1))
    items = manifest["items"]
    prompts = [item["prompt"] for item in items]
    images = [load_image(out / item["file"]) for item in items]
    results = {}

    start = time.perf_counter()
    hps = HPSScorer(version="v2.1", batch_size=8, device="cpu")  # from the HF cache, weights_only=True
    hps_build_s = time.perf_counter() - start
    (_, hps_path), = hps.weight_files
    assert str(hps_path).startswith(os.environ["HF_HOME"]), hps_path
    hps_scores = score_by_shape(hps, prompts, images)
    del hps
    results["hps v2.1"] = differences(hps_scores / 100, np.array(manifest["reference"]["hps_cosine"]))

    v20 = {int(i): score for i, score in manifest["reference"]["hps_v2.0_cosine"].items()}  # the shape set
    hps = HPSScorer(version="v2.0", batch_size=8, device="cpu")
    assert hps.weight_files[0][1].name == "HPS_v2_compressed.pt", hps.weight_files
    hps_v20_scores = score_by_shape(hps, [prompts[i] for i in v20], [images[i] for i in v20])
    del hps
    results["hps v2.0"] = differences(hps_v20_scores / 100, np.array(list(v20.values())))

    start = time.perf_counter()
    imagereward = ImageRewardScorer(weights=manifest["imagereward_dir"], batch_size=8, device="cpu")
    ir_build_s = time.perf_counter() - start
    ir_scores = score_by_shape(imagereward, prompts, images)
    del imagereward
    results["imagereward"] = differences(ir_scores, np.array(manifest["reference"]["imagereward"]))

    print(f"reference stack: {manifest['versions']}")
    for name, diff in results.items():
        verdict = "ok" if passed(diff) else "FAIL"
        print(f"{name:12s} max |ours - ref| {diff['max_abs']:.3g}, / largest |ref| ({diff['reference_largest']:.3g}): "
              f"{diff['max_rel_to_largest']:.3g}, per score: {diff['max_rel_each']:.3g}  [{verdict}]")
    (out / "result.json").write_text(json.dumps({"differences": results, "seconds": {"hps_build_and_load": hps_build_s,
                                                                                "imagereward_build_and_load": ir_build_s},
                                                 "ours": {"hps v2.1": hps_scores.tolist(), "hps v2.0": hps_v20_scores.tolist(),
                                                          "imagereward": ir_scores.tolist()}},
                                                indent=2))
    return 0 if all(passed(diff) for diff in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
