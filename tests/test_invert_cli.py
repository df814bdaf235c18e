"""`bench invert` end to end on the tiny toy pipeline: records, figures and the diffusers reference."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from bench.cli import app

runner = CliRunner()
FIELDS = {"sampler", "steps", "guidance", "dtype", "latent_mse", "pixel_mse", "psnr", "nfe_invert", "nfe_reconstruct",
          "seconds_invert", "seconds_reconstruct", "overhead_ratio"}


def test_invert_writes_records_table_and_figures(tmp_path, tiny_toy_dir):
    out = tmp_path / "inv"
    result = runner.invoke(app, ["invert", "--samplers", "ddim", "--steps", "4", "--images", "3", "--dtype", "float64",
                                 "--pipeline", str(tiny_toy_dir / "pipeline"), "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "invert.json").read_text())
    (record,) = data["records"]
    assert FIELDS <= set(record) and record["dtype"] == "float64" and record["images"] == 3
    assert record["nfe_invert"] == record["nfe_reconstruct"] == 4 and record["latent_mse"] > 0
    assert data["diffusers_reference"]["max_abs_latent_diff"] < 1e-6
    for name in ("error_vs_nfe.png", "time_per_image.png", "table.md"):
        assert (out / name).stat().st_size > 0


def test_invert_rejects_bad_arguments(tmp_path):
    (tmp_path / "file.png").write_bytes(b"")
    for args, message in ((["--samplers", "ddmi"], "did you mean 'ddim'"), (["--steps", "1"], "steps must be >= 2"),
                          (["--dtype", "float16"], "dtype must be one of"),
                          (["--samplers", "ddim,null-text", "--steps", "120"], "null-text is defined for at most 100 steps"),
                          (["--images", "0"], "--images 0: the toy world has 64 held-out captions; choose 1 to 64"),
                          (["--images", "65"], "--images 65"),
                          (["--images-dir", str(tmp_path / "file.png")], "is not a directory"),
                          (["--samplers", "ddim,euler"], "euler inverts flow-matching backbones"),
                          (["--suite", "toy-flow", "--samplers", "belm"], "belm cannot invert to level 1000"),
                          (["--suite", "nope"], "nope")):
        result = runner.invoke(app, ["invert", *args, "--out", str(tmp_path / "x")])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
        assert not (tmp_path / "x").exists()
    for args, message in ((["--images", "0"], "--images 0"), (["--suite", "nope"], "unknown suite 'nope'"),
                          (["--samplers", "eulr"], "did you mean 'euler'"),
                          (["--samplers", "euler"], "euler inverts flow-matching backbones"),
                          (["--suite", "toy-flow", "--samplers", "belm"], "belm cannot invert to level 1000")):
        result = runner.invoke(app, ["speed", *args, "--json", str(tmp_path / "speed.json")])
        assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output
        assert not (tmp_path / "speed.json").exists()


def test_speed_times_the_suites_pipeline_with_its_schedules_default_samplers(tmp_path):
    """`bench speed --suite toy-flow`: DDIM (the reference) and the flow defaults, each with the NFE its docstring
    states at 3 steps (Euler 1 call a step, RF-Solver 2, FireFlow N + 1, Rex 2 a step to invert and 2N − 1 to
    reconstruct, BDIA N to invert and N − 1 to reconstruct from its pair), times relative to DDIM's."""
    from bench.cli import SPEED_SAMPLERS

    out = tmp_path / "speed.json"
    result = runner.invoke(app, ["speed", "--suite", "toy-flow", "--steps", "3", "--images", "1", "--repeats", "1",
                                 "--json", str(out)])
    assert result.exit_code == 0, result.output
    records = {r["sampler"]: r for r in json.loads(out.read_text())["records"]}
    assert list(records) == ["ddim", *SPEED_SAMPLERS["flow"].split(",")]
    nfe = {name: (r["nfe_invert"], r["nfe_reconstruct"]) for name, r in records.items()}
    assert nfe == {"ddim": (3, 3), "euler": (3, 3), "rf-solver": (6, 6), "fireflow": (4, 4), "bdia": (3, 2),
                   "rex": (6, 5)}
    assert records["ddim"]["time_vs_ddim"] == 1 and all(r["time_vs_ddim"] > 0 for r in records.values())


def test_invert_on_the_flow_toy_exact_and_approximate_samplers():
    """Acceptance: `bench invert --suite toy-flow` in float64, Rex exact (latent MSE <= 1e-20), Euler not (> 0), each
    with the NFE its docstring states (one model call a step each way; Rex two a step to invert, 2N - 1 to
    reconstruct)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "inv"
        result = runner.invoke(app, ["invert", "--suite", "toy-flow", "--samplers", "euler,rex", "--steps", "4",
                                     "--images", "2", "--dtype", "float64", "--out", str(out), "-q"])
        assert result.exit_code == 0, result.output
        records = {r["sampler"]: r for r in json.loads((out / "invert.json").read_text())["records"]}
    assert records["rex"]["latent_mse"] <= 1e-20 and records["euler"]["latent_mse"] > 1e-8
    assert records["euler"]["nfe_invert"] == records["euler"]["nfe_reconstruct"] == 4
    assert records["rex"]["nfe_invert"] == 2 * 4 and records["rex"]["nfe_reconstruct"] == 2 * 4 - 1
