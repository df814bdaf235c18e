"""Throughput of the batched `hps` scorer against `hpsv2.score`'s per-image loop, on the same weights and images.

`hpsv2` imports only in the refcheck tox env's old stack, and our scorer only in the project's env, so the two
halves of one `tox -e refcheck` run share the measurement: tests/refcheck/make_reference.py times one public
`hpsv2.score(image, prompt, hps_version="v2.1")` call per image (each reloads the 2 GB checkpoint, as that
function does) on eight 512x512 images with eight distinct prompts, and this benchmark times one batched
`HPSScorer.score` over the same eight images, same seeded random ViT-H-14 weights, same thread count, on the
device hpsv2 timed its loop on (CUDA when present, after one warm-up call each; else the CPU). The
ratio goes into the benchmark JSON's `extra_info` and is printed. Nothing here asserts a time. The two halves run
minutes apart on cores other jobs may share, so the 1-minute load averages after each go in `extra_info` too.

Outside refcheck (`tox -e bench`, no $BENCH_REFCHECK_DIR) these benchmarks skip: there is no reference run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image


@pytest.fixture(scope="module")
def reference():
    root = os.environ.get("BENCH_REFCHECK_DIR")
    if not root or not (Path(root) / "manifest.json").is_file():
        pytest.skip("needs the reference run of `tox -e refcheck` ($BENCH_REFCHECK_DIR/manifest.json)")
    root = Path(root)
    manifest = json.loads((root / "manifest.json").read_text())
    rows = [i for i, item in enumerate(manifest["items"]) if item["set"] == "timing"]
    prompts = [manifest["items"][i]["prompt"] for i in rows]
    images = torch.stack([torch.from_numpy(np.asarray(Image.open(root / manifest["items"][i]["file"]).convert("RGB"),
                                                      dtype=np.float32) / 255).permute(2, 0, 1) for i in rows])
    per_image_calls_s = [manifest["timing"]["hps"]["per_call_s"][i] for i in rows]
    return manifest, prompts, images, per_image_calls_s


@pytest.mark.benchmark(group="hps-vit-h-8x512")
def test_hps_batched_vs_hpsv2_score_loop(benchmark, reference):
    from metrics.hps import HPSScorer

    manifest, prompts, images, per_image_calls_s = reference
    threads = manifest["threads"]
    torch.set_num_threads(threads)  # as the reference run
    device = manifest["timing"]["hps"].get("device", "cpu")  # where hpsv2.score ran its timed loop
    scorer = HPSScorer(version="v2.1", batch_size=len(prompts), device=device)  # the refcheck weights, HF cache
    warmup = 0 if device == "cpu" else 1  # the reference's CUDA loop was timed after one warm-up call too
    scores = benchmark.pedantic(scorer.score, args=(prompts, images), rounds=1, iterations=1, warmup_rounds=warmup)
    ours_s = benchmark.stats.stats.min
    ratio = sum(per_image_calls_s) / ours_s
    benchmark.extra_info.update(
        images=len(prompts), image_size="512x512", device=device, threads=threads,
        reference=f"hpsv2.score per image (hpsv2x {manifest['versions']['hpsv2x']})",
        reference_per_image_calls_s=per_image_calls_s,
        reference_total_s=sum(per_image_calls_s), ours_batched_s=ours_s, speedup=ratio,
        load_average_after={"reference": manifest["timing"]["hps"].get("load_average_after"), "ours": os.getloadavg()})
    print(f"\nHPS v2.1, {len(prompts)} images 512x512, {device}, {threads} thread(s): hpsv2.score per-image loop "
          f"{sum(per_image_calls_s):.1f} s, batched HPSScorer.score {ours_s:.1f} s: {ratio:.2f}x")
    reference_cosine = np.array([manifest["reference"]["hps_cosine"][i] for i, item in enumerate(manifest["items"])
                                 if item["set"] == "timing"])  # float32 on the CPU
    tolerance = 1e-4 if device == "cpu" else 1e-3  # CUDA: cuDNN may run the patch-embedding conv in TF32
    np.testing.assert_allclose(scores.numpy() / 100, reference_cosine, rtol=0,
                               atol=tolerance * np.abs(reference_cosine).max())
