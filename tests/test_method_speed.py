"""`bench speed --methods`: an optimizer step's seconds against the UNet compute of exactly the calls it made."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from bench.cli import app
from bench.harness.method_speed import floor_seconds

runner = CliRunner()


def test_the_floor_prices_each_call_by_its_batch_and_a_graded_call_as_three_forwards():
    calls = {(32, False): 10, (8, True): 2}  # 10 rollout calls of 32 latents, 2 training calls of 8 with a backward
    assert floor_seconds(calls, {32: 0.5, 8: 0.2}) == pytest.approx(10 * 0.5 + 2 * 3 * 0.2)


def test_speed_of_an_online_and_an_offline_method_on_the_tiny_toy(tmp_path, monkeypatch, tiny_toy_dir):
    monkeypatch.setenv("BENCH_TOY_DIR", str(tiny_toy_dir))
    out = tmp_path / "speed.json"
    result = runner.invoke(app, ["speed", "--methods", "grpo,dpo", "--train-steps", "2", "--repeats", "1",
                                 "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "overhead" in result.output and "grpo" in result.output
    timings = {t["method"]: t for t in json.loads(out.read_text())["methods"]}
    for name, timing in timings.items():
        assert timing["steps"] == 2 and timing["floor_seconds_per_step"] > 0 and timing["overhead"] > 0
        for step in timing["timed_steps"]:  # the calls recorded are the step's NFE: a graded latent counts 3
            counted = sum(int(key.split("+")[0]) * n * (3 if key.endswith("+grad") else 1)
                          for key, n in step["calls"].items())
            assert counted == step["nfe"] > 0, name
    grpo_calls = timings["grpo"]["timed_steps"][0]["calls"]
    assert any(not key.endswith("+grad") for key in grpo_calls)  # its rollouts, without gradients
    refused = runner.invoke(app, ["speed", "--methods", "doodl"])
    assert refused.exit_code == 2 and "no optimizer step to time" in refused.output
