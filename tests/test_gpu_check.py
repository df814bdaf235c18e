"""`bench gpu-check`: the CPU smoke run of the same code (`--device cpu --tiny`), its numbers' meaning, the real shapes it
builds and its one-line errors."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from bench.cli import app
from bench.core.records import GPU_CHECK, read_record
from bench.harness.dryrun import parameter_count
from bench.harness.gpu_check import FAMILIES, family_configs, random_backbone, random_preferences, trained_methods
from bench.harness.suites import get_suite

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
        for row in rows.values():
            assert row["seconds_per_step"] > 0 and row["nfe_per_step"] > 0
            assert row["grad_accum"] == 1 and row["recipe_grad_accum"] == recipe.train.grad_accum
            assert row["warmup"] == 0 and row["optimizer_steps_skipped"] == 0  # fp32: no loss scaler, no skips
            assert row["batch_size"] == row["recipe_batch_size"]  # nothing runs out of memory on tiny shapes
            assert row["estimated_bytes"] > 0  # the dry run of the same plan
            assert row["peak_bytes"] is None and row["measured_over_estimated"] is None  # no CUDA allocator here
            assert row["reward_model_bytes"] > 0  # resident while every method trains, subtracted from each peak
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


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_with_fp16_weights_our_sampler_stays_nearer_the_exact_chain_than_diffusers(family):
    """Why the latents differ on a GPU in fp16 (0.36 on SD 1.5, 0.46 on SDXL at |x| ~ 40): our sampler keeps the
    latents in float32 and casts only the denoiser's input, diffusers' pipeline keeps them in fp16 (a spacing of
    2^-5 at |x| ~ 40). Against the chain of the same fp16-rounded weights computed in float32, ours is the nearer.
    Measured here: sd15 0.037 (ours) / 0.174 (diffusers), sdxl 0.051 / 0.202."""
    from bench.core.backbone import Backbone
    from bench.harness.gpu_check import reference_pipeline
    from bench.harness.sampling import initial_noise, sample_latents

    half = random_backbone(family_configs(family, tiny=True), "cpu", torch.float16)
    parts = {name: copy.deepcopy(getattr(half, name)) for name in ("unet", "text_encoder", "text_encoder_2")}
    for module in parts.values():
        if module is not None:
            torch.nn.Module.to(module, torch.float32)  # the same fp16-rounded weights, computed in float32
    exact = Backbone(parts["unet"], half.vae, parts["text_encoder"], half.tokenizer, half.scheduler,
                     text_encoder_2=parts["text_encoder_2"], tokenizer_2=half.tokenizer_2, source="float32 copy")
    seeds, size = [0, 1, 2, 3], half.image_size
    prompts = [f"a photo of object {i}" for i in seeds]

    def ours(backbone: Backbone) -> torch.Tensor:
        return sample_latents(backbone, backbone.encode_prompts(prompts), seeds, steps=50, guidance=7.5).float()

    with torch.no_grad():
        target, mine = ours(exact), ours(half)
        cond, null = half.encode_prompts(prompts), half.null_conditioning(len(seeds))
        kwargs = dict(prompt_embeds=cond.embeds, negative_prompt_embeds=null.embeds.contiguous(),
                      latents=initial_noise(seeds, half.latent_shape).half(), num_inference_steps=50,
                      guidance_scale=7.5, height=size, width=size, output_type="latent")
        if family == "sdxl":
            kwargs.update(pooled_prompt_embeds=cond.added["text_embeds"], original_size=(size, size),
                          negative_pooled_prompt_embeds=null.added["text_embeds"].contiguous(), target_size=(size, size))
        pipe = reference_pipeline(half)
        pipe.set_progress_bar_config(disable=True)
        theirs = pipe(**kwargs).images
    assert theirs.dtype == torch.float16 and mine.dtype == torch.float32
    ours_error, theirs_error = (mine - target).abs().max(), (theirs.float() - target).abs().max()
    assert ours_error < 0.1 and theirs_error > 2 * ours_error


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


def test_a_failing_method_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    """One method's step raising (a CUDA-only bug, say) costs that row only; every partial record is written as the
    check goes, so a run stopped part-way keeps what it measured; the command exits 1 naming the failure."""
    import bench.harness.gpu_check as gpu_check

    real_step_timings, saved = gpu_check.step_timings, []

    def step_timings(method, *args, **kwargs):
        if method.name == "kto":
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore lines")
        return real_step_timings(method, *args, **kwargs)

    monkeypatch.setattr(gpu_check, "step_timings", step_timings)
    import bench.cli

    real_write = bench.cli.write_json_atomic
    monkeypatch.setattr("bench.cli.write_json_atomic", lambda path, record: (saved.append(record), real_write(path, record)))
    out = tmp_path / "gpu-check.json"
    result = runner.invoke(app, ["gpu-check", "--device", "cpu", "--tiny", "--families", "sd15", "--methods", "kto,dpo",
                                 "--json", str(out)])
    assert result.exit_code == 1 and "1 method(s) failed: sd15 kto" in result.output
    rows = {r["method"]: r for r in read_record(out, GPU_CHECK)["families"]["sd15"]}
    assert rows["kto"]["error"] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert rows["dpo"]["seconds_per_step"] > 0 and "error" not in rows["dpo"]
    assert [len(r["families"].get("sd15", [])) for r in saved if not r["complete"]][:3] == [0, 1, 2]
    assert saved[-1]["complete"] and not any(r["complete"] for r in saved[:-1])


def test_warm_up_doubles_while_the_loss_scaler_skips_every_optimizer_step(tmp_path, monkeypatch):
    """A peak without one optimizer step lacks the optimizer's state: the method is rerun with a doubled warm-up
    (0 -> 1 -> 2) until a step is taken, and the warm-up used and the steps skipped are recorded and shown."""
    import bench.harness.gpu_check as gpu_check

    real_step_timings, warmups = gpu_check.step_timings, []

    def step_timings(method, *args, warmup, steps, **kwargs):
        warmups.append(warmup)
        timed = real_step_timings(method, *args, warmup=warmup, steps=steps, **kwargs)
        if warmup < 2:  # as fp16 overflow at the scaler's initial scale: every step skipped
            timed[-1]["skipped_so_far"] = warmup + steps
        return timed

    monkeypatch.setattr(gpu_check, "step_timings", step_timings)
    out = tmp_path / "gpu-check.json"
    result = runner.invoke(app, ["gpu-check", "--device", "cpu", "--tiny", "--families", "sd15", "--methods", "sft",
                                 "--json", str(out)])
    assert result.exit_code == 0, result.output
    (row,) = read_record(out, GPU_CHECK)["families"]["sd15"]
    assert warmups == [0, 1, 2] and row["warmup"] == 2 and row["optimizer_steps_skipped"] == 0
    assert "2 (0)" in result.output  # the table's warm-up (skipped) column
