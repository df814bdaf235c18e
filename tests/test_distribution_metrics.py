"""Set metrics (`metrics.sets`) against values known by construction: the Fréchet distance against its closed form on
2-D Gaussians, precision/recall/density/coverage on point sets whose k-NN balls are counted by hand, Vendi = k for k
orthogonal features and 1 for identical ones; the DINOv2 feature path on a tiny random `Dinov2Model` against the model's
own output; the missing-weight error of the DINOv2 metrics; offline toy-clip runs of each through `bench eval`."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from bench.cli import app
from bench.toy.world import held_out_combos, render_dataset
from metrics.sets.build import build_set_metrics
from metrics.sets.features import IMAGENET_MEAN, IMAGENET_STD, Dinov2Features, load_dinov2
from metrics.sets.frechet import FrechetToyClip, frechet_distance
from metrics.sets.prdc import PRDCToyClip
from metrics.sets.vendi import VendiToyClip, vendi_score
from metrics.weights import WEIGHTS_ENV

runner = CliRunner()


@pytest.fixture(autouse=True)
def _no_weights_anywhere(tmp_path_factory, monkeypatch):
    """No $BENCH_WEIGHTS_DIR, an empty hub cache read offline, and no toy build override."""
    import huggingface_hub.constants

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.delenv("BENCH_TOY_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path_factory.mktemp("empty-hub-cache")))


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ----------------------------------------------------------------------------------------------- Fréchet distance


def _with_moments(mean: list[float], cov: list[list[float]], n: int, seed: int) -> torch.Tensor:
    """n points (n, 2) whose sample mean is `mean` and unbiased sample covariance `cov`, exactly (to rounding)."""
    z = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    z = z @ torch.linalg.inv(torch.linalg.cholesky(z.T @ z / (n - 1))).T  # covariance I
    return z @ torch.linalg.cholesky(torch.tensor(cov, dtype=torch.float64)).T + torch.tensor(mean, dtype=torch.float64)


def _fd_2d(mean1, cov1, mean2, cov2) -> float:
    """FD of two 2-D Gaussians by hand: Σ1 Σ2 has eigenvalues λ1, λ2 >= 0 with λ1 + λ2 = tr(Σ1 Σ2) and λ1 λ2 =
    det Σ1 det Σ2, so tr (Σ1 Σ2)^{1/2} = √λ1 + √λ2 = √(tr(Σ1 Σ2) + 2 √(det Σ1 det Σ2))."""
    (a, b), (c, d) = cov1
    (e, f), (g, h) = cov2
    trace_product = a * e + b * g + c * f + d * h
    root_trace = math.sqrt(trace_product + 2 * math.sqrt((a * d - b * c) * (e * h - f * g)))
    mean_gap = (mean1[0] - mean2[0]) ** 2 + (mean1[1] - mean2[1]) ** 2
    return mean_gap + a + d + e + h - 2 * root_trace


@pytest.mark.parametrize("mean1, cov1, mean2, cov2, expected", [
    ([0.0, 0.0], [[4.0, 0.0], [0.0, 1.0]], [3.0, 4.0], [[1.0, 0.0], [0.0, 9.0]], 30.0),  # 25 + (4+1+1+9) − 2·(2+3)
    ([1.0, 2.0], [[2.0, 0.5], [0.5, 1.0]], [0.0, -1.0], [[1.0, -0.3], [-0.3, 0.5]], None),  # Σ1 Σ2 ≠ Σ2 Σ1
    ([1.0, 1.0], [[1.0, 0.2], [0.2, 2.0]], [1.0, 1.0], [[1.0, 0.2], [0.2, 2.0]], 0.0),
])
def test_frechet_distance_equals_the_closed_form_on_2d_gaussians(mean1, cov1, mean2, cov2, expected):
    by_hand = _fd_2d(mean1, cov1, mean2, cov2)
    if expected is not None:
        assert by_hand == pytest.approx(expected, abs=1e-12)
    features, reference = _with_moments(mean1, cov1, 300, 0), _with_moments(mean2, cov2, 200, 1)
    assert frechet_distance(features, reference) == pytest.approx(by_hand, rel=1e-9, abs=1e-9)
    assert FrechetToyClip().compute(features, reference)["fd"] == pytest.approx(by_hand, rel=1e-9, abs=1e-9)


def test_frechet_weights_count_rows():
    """`measure`'s weights: 0 leaves an image out, 2 counts it twice (a replicate of the prompt bootstrap)."""
    features = _with_moments([0.0, 0.0], [[1.0, 0.3], [0.3, 1.0]], 40, 2)
    reference = _with_moments([1.0, 0.0], [[2.0, 0.0], [0.0, 1.0]], 30, 3)
    metric = FrechetToyClip()
    weights = torch.tensor([0, 2, 1] * 13 + [1])
    measured = metric.measure(metric.prepare(features, reference), weights)["fd"]
    assert measured == pytest.approx(frechet_distance(features.repeat_interleave(weights, dim=0), reference), rel=1e-12)


# ----------------------------------------------------------------------------------------------- precision, recall, ...


def _line(positions) -> torch.Tensor:
    """Points on the x axis of the plane: (n, 2)."""
    return torch.tensor([[float(x), 0.0] for x in positions])


def test_prdc_with_k_1_on_a_line():
    """Reference points 0..9 (every 1-NN radius is 1); generated points 0.5 and 100. 0.5 lies in the balls of 0 and
    1, 100 in none; each generated point's 1-NN radius is 99.5, which holds every reference point."""
    values = PRDCToyClip(nearest_k=1).compute(_line([0.5, 100]), _line(range(10)))
    assert values == pytest.approx({"precision": 0.5, "recall": 1.0, "density": (2 + 0) / (1 * 2), "coverage": 2 / 10})


def test_prdc_of_a_collapsed_model_and_of_the_reference_itself():
    """Reference points 0, 10, ..., 190 with k = 5: the 5-NN radius is 50 at 0, 40 at 10, 30 from 20 on (strict
    balls). Ten copies of the point 0 lie in the balls of 0, 10 and 20 only (30 is not < 30), and their own 5-NN radius
    is 0, which holds nothing: precision 1, recall 0, density 3/5, coverage 3/20. The reference against itself: every
    ball holds its centre and the 4 strictly nearer points, so density is exactly 1 and the rest 1."""
    reference = _line(range(0, 200, 10))
    collapsed = PRDCToyClip().compute(_line([0] * 10), reference)
    assert collapsed == pytest.approx({"precision": 1.0, "recall": 0.0, "density": 3 / 5, "coverage": 3 / 20})
    assert PRDCToyClip().compute(reference.clone(), reference) == pytest.approx(
        {"precision": 1.0, "recall": 1.0, "density": 1.0, "coverage": 1.0})


def test_prdc_weights_leave_out_and_repeat_images():
    gen = torch.Generator().manual_seed(0)
    features, reference = torch.randn(30, 4, generator=gen), torch.randn(25, 4, generator=gen)
    metric = PRDCToyClip()
    state = metric.prepare(features, reference)
    weights = torch.tensor([0, 1, 3] * 10)
    measured = metric.measure(state, weights)
    kept = weights > 0
    alone = metric.compute(features[kept], reference)  # the images of weight 0 left out
    assert measured["recall"] == pytest.approx(alone["recall"]) and measured["coverage"] == pytest.approx(alone["coverage"])
    repeated = metric.compute(features.repeat_interleave(weights, dim=0), reference)  # precision, density: weighted means
    assert measured["precision"] == pytest.approx(repeated["precision"])
    assert measured["density"] == pytest.approx(repeated["density"])


# ----------------------------------------------------------------------------------------------- Vendi


def test_vendi_is_k_for_k_orthogonal_features_and_1_for_identical_ones():
    orthogonal = torch.eye(6)[:4] * torch.tensor([[1.0], [2.0], [0.5], [7.0]])  # lengths do not matter (cosine)
    assert vendi_score(orthogonal) == pytest.approx(4.0, rel=1e-12)
    assert vendi_score(torch.tensor([[0.3, -1.0, 2.0]]).repeat(5, 1)) == pytest.approx(1.0, rel=1e-12)
    two_alike = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])  # eigenvalues of K/3: 2/3, 1/3
    assert vendi_score(two_alike) == pytest.approx(math.exp(-(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))))


def test_vendi_is_the_mean_over_prompts_with_several_images():
    features = torch.cat([torch.eye(4), torch.ones(3, 4), torch.rand(1, 4)])  # prompt a: 4 orthogonal, b: 3 alike
    prompts = ["a"] * 4 + ["b"] * 3 + ["c"]  # c has one image: left out
    result = VendiToyClip().evaluate(features, None, prompts)
    assert result["values"]["vendi"]["value"] == pytest.approx((4 + 1) / 2)
    assert (result["prompts_scored"], result["prompts_left_out"], result["clusters"]) == (2, 1, 3)
    assert 1 <= result["values"]["vendi"]["ci_low"] <= 2.5 <= result["values"]["vendi"]["ci_high"] <= 4
    with pytest.raises(ValueError, match="every prompt has one image"):
        VendiToyClip().check_sets(3, None, ["a", "b", "c"])


# ----------------------------------------------------------------------------------------------- DINOv2 features


@pytest.fixture(scope="module")
def tiny_dinov2_dir(tmp_path_factory):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, patch_size=14,
                          image_size=56)  # 4 x 4 positions, interpolated to 16 x 16 at 224 px as the real model's are
    path = tmp_path_factory.mktemp("tiny-dinov2")
    Dinov2Model(config).eval().save_pretrained(path)
    return path


def test_dinov2_features_are_the_models_cls_token_after_its_final_layernorm(tiny_dinov2_dir):
    from torchvision.transforms.v2 import functional as TF

    images = torch.rand(3, 3, 40, 50, generator=torch.Generator().manual_seed(1))
    features = Dinov2Features(metric="fd-dinov2", weights=tiny_dinov2_dir, device="cpu", batch_size=2).features(images)
    assert features.shape == (3, 32) and features.dtype == torch.float32

    model = load_dinov2(tiny_dinov2_dir)
    # dgm-eval: PIL Resize((224, 224), BICUBIC) on 8-bit images (which saturate: the clamp), ImageNet mean/std
    resized = TF.resize(images, [224, 224], interpolation=TF.InterpolationMode.BICUBIC, antialias=True).clamp(0, 1)
    pixels = TF.normalize(resized, list(IMAGENET_MEAN), list(IMAGENET_STD))
    with torch.no_grad():
        output = model(pixel_values=pixels)
        cls = model.layernorm(model.encoder(model.embeddings(pixels)).last_hidden_state)[:, 0]
    torch.testing.assert_close(features, output.pooler_output, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(features, cls, rtol=1e-4, atol=1e-5)


def test_dinov2_loader_refuses_another_model(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(ValueError, match="names a 'clip' model, not 'dinov2'"):
        load_dinov2(tmp_path)


def test_dinov2_metrics_share_one_backbone_and_run_end_to_end(in_tmp, tiny_dinov2_dir):
    result = runner.invoke(app, ["eval", "-m", "fd-dinov2,prdc-dinov2,vendi-dinov2", "--toy-renders", "72",
                                 "--reference-toy-renders", "16", "--weights", f"prdc-dinov2={tiny_dinov2_dir}",
                                 "--json", "d.json", "-q"])
    assert result.exit_code == 0, result.output
    record = json.loads((in_tmp / "d.json").read_text())
    assert set(record["set_metrics"]) == {"fd-dinov2", "prdc-dinov2", "vendi-dinov2"} and record["scores"] == {}
    backbone = record["set_metric_descriptions"]["fd-dinov2"]["backbone"]
    assert backbone["features"] == "dinov2-vitl14" and backbone["dim"] == 32
    assert backbone["weights"][0]["path"] == str(tiny_dinov2_dir) and len(backbone["weights"][0]["sha256"]) == 64
    assert record["set_metrics"]["fd-dinov2"]["values"]["fd"]["value"] >= 0
    assert record["reference"] == {"description": "16 toy renders (held-out captions, seed 1)", "n": 16,
                                   "toy_renders": 16, "seed": 1}


def test_metrics_on_one_backbone_build_it_once(tiny_dinov2_dir):
    from metrics.sets.build import SetMetricOptions

    options = SetMetricOptions(weights={"fd-dinov2": tiny_dinov2_dir})
    metrics, backbones = build_set_metrics(["fd-dinov2", "prdc-dinov2", "fd-toyclip"], options)
    assert set(metrics) == {"fd-dinov2", "prdc-dinov2", "fd-toyclip"}
    assert set(backbones) == {"dinov2-vitl14", "toy-clip-image"}
    with pytest.raises(ValueError, match="fd-dinov2, prdc-dinov2 share the dinov2-vitl14 features; give one path"):
        build_set_metrics(["fd-dinov2", "prdc-dinov2"], SetMetricOptions(
            weights={"fd-dinov2": tiny_dinov2_dir, "prdc-dinov2": tiny_dinov2_dir / "other"}))


@pytest.mark.parametrize("names", ["fd-dinov2", "prdc-dinov2,fd-dinov2"])
def test_dinov2_metric_without_weights_exits_2_and_writes_nothing(in_tmp, names):
    (in_tmp / "imgs").mkdir()
    (in_tmp / "ref").mkdir()
    images, _ = render_dataset(held_out_combos(8), 1, 0)
    from bench.harness.data import png_bytes

    for i, image in enumerate(images):
        (in_tmp / "imgs" / f"{i}.png").write_bytes(png_bytes(image))
        (in_tmp / "ref" / f"{i}.png").write_bytes(png_bytes(image))
    before = sorted(p.relative_to(in_tmp) for p in in_tmp.rglob("*"))
    result = runner.invoke(app, ["eval", "--metrics", names, "--images", "imgs", "--reference", "ref", "--json", "o.json"])
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    first = names.split(",")[0]
    assert "facebook/dinov2-large" in message and f"--weights {first}=DIR" in message, message
    assert sorted(p.relative_to(in_tmp) for p in in_tmp.rglob("*")) == before


# ----------------------------------------------------------------------------------------------- toy-clip, offline


def test_toy_clip_set_metrics_of_renders_against_renders(in_tmp):
    """128 renders (2 per held-out caption) against 64 others: the same distribution, so FD is small, precision,
    recall and coverage high, density about 1; Vendi between 1 and 2 per caption. Then the same numbers from the
    saved PNGs (8-bit rounding apart), and a folder needs no prompts for FD and PRDC."""
    result = runner.invoke(app, ["eval", "-m", "fd-toyclip,prdc-toyclip,vendi-toyclip,oracle", "--toy-renders", "128",
                                 "--reference-toy-renders", "64", "--save-images", "imgs", "--json", "toy.json", "-q"])
    assert result.exit_code == 0, result.output
    record = json.loads((in_tmp / "toy.json").read_text())
    sets = record["set_metrics"]
    values = {name: {v: stat["value"] for v, stat in outcome["values"].items()} for name, outcome in sets.items()}
    assert 0 <= values["fd-toyclip"]["fd"] < 5
    assert all(0.8 <= values["prdc-toyclip"][v] <= 1 for v in ("precision", "recall", "coverage"))
    assert 0.7 < values["prdc-toyclip"]["density"] < 1.5
    assert 1 < values["vendi-toyclip"]["vendi"] < 2 and sets["vendi-toyclip"]["prompts_scored"] == 64
    for outcome in sets.values():
        for stat in outcome["values"].values():
            assert stat["ci_low"] <= stat["value"] <= stat["ci_high"], stat
    assert sets["fd-toyclip"]["interval"].startswith("grouped jackknife") and sets["fd-toyclip"]["replicates"] == 50
    assert sets["vendi-toyclip"]["replicates"] == 2000 and record["aggregates"]["oracle"]["mean"] > 4
    assert record["set_metric_configs"]["prdc-toyclip"] == {"nearest_k": 5, "jackknife_groups": 50}
    toy = record["set_metric_descriptions"]["fd-toyclip"]["backbone"]["weights"][0]
    assert toy["file"] == "toy-clip.safetensors" and len(toy["sha256"]) == 64
    assert "set metrics of 128 images from 128 toy renders" in " ".join(result.output.split())

    runner.invoke(app, ["eval", "-m", "oracle", "--toy-renders", "64", "--seed", "1", "--save-images", "ref", "-q"])
    result = runner.invoke(app, ["eval", "-m", "fd-toyclip,prdc-toyclip", "--images", "imgs", "--reference", "ref",
                                 "--json", "folder.json", "--batch-size", "50", "-q"])
    assert result.exit_code == 0, result.output
    folder = json.loads((in_tmp / "folder.json").read_text())
    assert folder["prompts"] is None and folder["reference"]["files"][:2] == ["00000.png", "00001.png"]
    assert folder["set_metrics"]["fd-toyclip"]["values"]["fd"]["value"] == pytest.approx(values["fd-toyclip"]["fd"],
                                                                                       abs=0.2)


def test_toy_clip_set_metrics_see_mode_collapse():
    """One render repeated for every caption against the renders: FD grows, recall and coverage fall, Vendi is 1."""
    images, captions = render_dataset(held_out_combos(128), 1, 0)
    reference, _ = render_dataset(held_out_combos(64), 1, 1)
    metrics, backbones = build_set_metrics(["fd-toyclip", "prdc-toyclip", "vendi-toyclip"])
    backbone = backbones["toy-clip-image"]
    healthy, collapsed, ref = backbone.features(images), backbone.features(images[:1].repeat(128, 1, 1, 1)), \
        backbone.features(reference)
    fd, prdc, vendi = metrics["fd-toyclip"], metrics["prdc-toyclip"], metrics["vendi-toyclip"]
    assert fd.compute(collapsed, ref)["fd"] > 10 * fd.compute(healthy, ref)["fd"]
    assert prdc.compute(collapsed, ref)["recall"] == 0 and prdc.compute(collapsed, ref)["coverage"] < 0.1
    assert vendi.compute(collapsed, None, captions)["vendi"] == pytest.approx(1.0)
    assert vendi.compute(healthy, None, captions)["vendi"] > 1.05


@pytest.mark.parametrize("args, message", [
    (["-m", "fd-toyclip", "--toy-renders", "8"], "fd-toyclip compares with a reference set: give --reference DIR"),
    (["-m", "vendi-toyclip", "--toy-renders", "64"], "every prompt has one image"),
    (["-m", "vendi-toyclip", "--toy-renders", "128", "--reference-toy-renders", "8"],
     "--reference-toy-renders applies to set metrics that compare with a reference set"),
    (["-m", "fd-toyclip", "--toy-renders", "8", "--reference-toy-renders", "8", "--reference", "r"],
     "give either --reference DIR or --reference-toy-renders N, not both"),
    (["-m", "prdc-toyclip", "--toy-renders", "5", "--reference-toy-renders", "8"],
     "prdc-toyclip with nearest_k=5 needs more than 5 images in each set, got 5"),
    (["-m", "fd-toyclp", "--toy-renders", "8"], "unknown metric 'fd-toyclp'; did you mean 'fd-toyclip'?"),
    (["-m", "fd-toyclip", "--toy-renders", "8", "--reference", "nope"], "--reference: "),
    (["-m", "prdc-toyclip", "--toy-renders", "8", "--reference-toy-renders", "8", "--metric-arg", "prdc-toyclip.k=3"],
     "PRDCConfig has no field 'k'"),
    (["-m", "oracle", "--toy-renders", "8", "--weights", "fd-toyclip=/x"], "'fd-toyclip' is not in --metrics"),
])
def test_set_metric_bad_input_exits_2_and_writes_nothing(in_tmp, args, message):
    result = runner.invoke(app, ["eval", *args, "--json", "o.json"])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())
    assert list(in_tmp.iterdir()) == []


def test_a_toy_run_records_the_set_metrics_of_its_samples_against_renders_of_its_prompts(tiny_toy_dir, tmp_path):
    """`bench run` on a suite with set metrics: every record (base and method) holds each metric's values with CIs,
    computed on its own evaluation images against one reference set (ground-truth renders of the evaluated prompts)."""
    import dataclasses

    from bench.core.budget import Budget
    from bench.core.records import read_record
    from bench.harness.run import execute, plan_run
    from bench.harness.suites import get_suite

    toy = get_suite("toy")
    prompts = toy.eval_prompts[:8]
    suite = dataclasses.replace(toy, pipeline=str(tiny_toy_dir / "pipeline"), eval_prompts=prompts,
                                preference_data=str(tiny_toy_dir / "prefs.parquet"),
                                eval=dataclasses.replace(toy.eval, images_per_prompt=2, steps=2))
    plan = plan_run(suite, ["sft"], budgets=[Budget.parse("1steps")], run_dir=tmp_path / "run", progress=False)
    paths = execute(plan)
    base, sft = (read_record(path) for path in paths)
    for record in (base, sft):
        assert set(record["set_metrics"]) == {"fd-toyclip", "prdc-toyclip", "vendi-toyclip"}
        assert record["reference_set"] == {"reference": "toy-renders", "n": 2 * len(prompts), "seed": 1}
        fd = record["set_metrics"]["fd-toyclip"]["values"]["fd"]
        assert fd["ci_low"] <= fd["value"] <= fd["ci_high"] and fd["value"] > 0
    assert base["set_metrics"] != sft["set_metrics"]  # each record measures its own images
    assert plan.config()["set_metrics"] == ["fd-toyclip", "prdc-toyclip", "vendi-toyclip"]
