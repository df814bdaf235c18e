"""`bench gpu-check`: the CPU smoke run of the same code (`--device cpu --tiny`), its numbers' meaning, the real shapes it
builds and its one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from bench.cli import app
from bench.core.records import GPU_CHECK, read_record
from bench.harness.dryrun import parameter_count
from bench.harness.gpu_check import FAMILIES, family_configs, random_backbone, random_preferences, trained_methods
from bench.harness.suites import get_suite
from methods.alignment import METHODS, OnlineMethod

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_check(tmp_path_factory):
    """The acceptance command as written, once: every trained method on both families, sampling and scoring."""
    out = tmp_path_factory.mktemp("gpu-check") / "gpu-check.json"
    result = runner.invoke(app, ["gpu-check", "--device", "cpu", "--tiny", "--json", str(out)])
    assert result.exit_code == 0, result.output
    return read_record(out, GPU_CHECK), result.output


def test_tiny_cpu_check_times_every_method_beside_its_dry_run_estimate(tiny_check):
    record, output = tiny_check
    trained = trained_methods(None)
    assert "doodl" not in trained and {"dpo", "grpo", "draft", "kto"} <= set(trained)
    assert "flow-grpo" not in trained and "diffusionnft" not in trained  # flow-only: not on SD 1.5 / SDXL
    for family, suite in FAMILIES.items():
        rows = {r["method"]: r for r in record["families"][family]}
        assert list(rows) == trained
        recipe = get_suite(suite)
        for name, row in rows.items():
            assert row["seconds_per_step"] > 0 and row["nfe_per_step"] > 0
            assert row["grad_accum"] == 1 and row["recipe_grad_accum"] == recipe.train.grad_accum
            assert row["batch_size"] == row["recipe_batch_size"]  # nothing runs out of memory on tiny shapes
            assert row["estimated_bytes"] > 0  # the dry run of the same plan
            assert row["peak_bytes"] is None and row["measured_over_estimated"] is None  # no CUDA allocator here
            assert (row["reward_model_bytes"] > 0) == issubclass(METHODS.get(name), OnlineMethod)
        assert rows["kto"]["batch_size"] == 2 and rows["dpo"]["batch_size"] == 1  # the recipes' micro-batches
        assert rows["dpo"]["nfe_per_step"] == 8  # 1 pair: 2 policy forwards + backward (6) and 2 reference
    assert record["config"]["tiny"] and record["device"]["type"] == "cpu"
    for name in ("cal-dpo", "grpo", "sampling", "scoring", "where the time went"):
        assert name in output


def test_tiny_cpu_check_samples_as_diffusers_and_scores_batched_as_one_by_one(tiny_check):
    record, _ = tiny_check
    for sample in record["sampling"]:  # the suite's DDIM + CFG chain is diffusers' pipeline's, to fp32 rounding
        assert sample["reference"] in ("StableDiffusionPipeline", "StableDiffusionXLPipeline")
        assert sample["max_abs_latent_difference"] < 1e-4  # fp32 rounding: our DDIM coefficients are float64
        assert sample["batch"] == 8 and sample["steps"] == 50 and sample["guidance"] == 7.5
        assert sample["ours_over_reference"] == pytest.approx(sample["ours_seconds"] / sample["reference_seconds"])
    assert [s["family"] for s in record["sampling"]] == ["sd15", "sdxl"]
    for score in record["scoring"]:
        assert score["images"] == 32 and score["max_abs_score_difference"] < 1e-3
        assert score["loop_over_batched"] == pytest.approx(score["loop_seconds"] / score["batched_seconds"])
    assert [s["scorer"] for s in record["scoring"]] == ["hps", "pickscore"]
    assert record["toy"]["method"] == "dpo" and record["toy"]["seconds_per_step"] > 0
    assert set(record["phases"]) >= {"sd15: methods", "sdxl: sampling", "scoring", "toy dpo"}
    assert record["environment"]["git"] and record["environment"]["packages"]  # provenance, as every record


def test_real_shapes_are_the_official_architectures():
    """What the check builds on a GPU, built here on the meta device: the parameter counts of the official SD 1.5 and
    SDXL components (bench.core.real_configs' docstring) with fp16 denoiser and encoders and an fp32 VAE."""
    counts = {"sd15": (859_520_964, [123_060_480]), "sdxl": (2_567_463_684, [123_060_480, 694_659_840])}
    for family, (unet, encoders) in counts.items():
        backbone = random_backbone(family_configs(family, tiny=False), "meta", torch.float16)
        assert parameter_count(backbone.unet) == unet and backbone.unet.dtype == torch.float16
        assert [parameter_count(e) for e in (backbone.text_encoder, backbone.text_encoder_2) if e is not None] == encoders
        assert parameter_count(backbone.vae) == 83_653_863 and backbone.vae.dtype == torch.float32
        assert backbone.family == ("sdxl" if family == "sdxl" else "sd") and backbone.latent_shape == (
            (4, 128, 128) if family == "sdxl" else (4, 64, 64))


def test_random_preferences_pair_images_of_one_prompt():
    backbone = random_backbone(family_configs("sd15", tiny=True), "cpu", torch.float32)
    data = random_preferences(backbone, 3)
    assert data.latents.shape == (6, *backbone.latent_shape) and data.num_pairs == 3
    assert torch.equal(data.image_prompt[data.pair_winner], data.image_prompt[data.pair_loser])
    assert data.desirable.tolist() == [True] * 3 + [False] * 3


@pytest.mark.parametrize("args, message", [
    (["--device", "cpu"], "--device cpu builds SDXL-sized random models on the CPU (hours): add --tiny"),
    (["--device", "cpu", "--tiny", "--families", "sd2"], "--families: expected some of sd15, sdxl, got sd2"),
    (["--device", "cpu", "--tiny", "--methods", "doodl"], "doodl is an inference-time method"),
    (["--device", "cpu", "--tiny", "--methods", "nope"], "nope"),
    (["--device", "cpu", "--tiny", "--methods", "dpo,flow-grpo"],
     "flow-grpo trains flow-matching backbones (x_σ = (1 − σ) x0 + σ ε, e.g. SD3); this pipeline predicts eps on a vp "
     "schedule (SD 1.5 / SDXL)"),
    (["--device", "cpu", "--tiny", "--steps", "0"], "steps and repeats must be >= 1"),
])
def test_bad_requests_fail_in_one_line_with_exit_code_2(args, message, tmp_path):
    result = runner.invoke(app, ["gpu-check", *args, "--json", str(tmp_path / "out.json")])
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "out.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is for machines without CUDA")
def test_cuda_requested_without_cuda_says_what_to_run_instead(tmp_path):
    result = runner.invoke(app, ["gpu-check", "--json", str(tmp_path / "out.json")])
    assert result.exit_code == 2 and "no CUDA device here; pass --device cpu --tiny" in result.output


def test_record_round_trips_as_json(tiny_check):
    record, _ = tiny_check
    assert json.loads(json.dumps(record)) == record and record["kind"] == "gpu-check"
