"""`bench speed --methods`: an alignment method's seconds per optimizer step against its UNet compute floor.

Each method trains `warmup + steps` optimizer steps on the suite as `bench run` trains it (its data, settings and,
for an online method, its rollouts and reward), and the last `steps` are timed (`Trainer` history: each step's
seconds, its collection included). The Backbone's counter records every UNet call by batch (`NFECounter.
calls_by_batch`); a step's floor is the UNet compute of exactly those calls,

    floor = Σ_calls t_fwd(b) · (1 + 2·graded)

with t_fwd(b) the median seconds of one no-gradient UNet forward of b latents on this machine and a call with
gradients charged 3 forwards (itself and its backward: the NFE convention, `NFECounter.total`). The overhead,
step seconds / floor, is what the step spends beyond the UNet: the VAE, the reward model, the optimizer, Python.
Reported per method as medians over the timed steps; ratios measured in one run, as the machine's load varies.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

import torch

from bench.core.backbone import Backbone
from bench.core.budget import Budget
from bench.core.config import PIPELINE_DTYPES, TrainConfig
from bench.core.processes import processes
from bench.harness.data import EncodedPreferences, encode_preferences, load_pickapic, preference_pairs
from bench.harness.invert import median_seconds
from bench.harness.reward import ScorerReward, parse_reward
from bench.harness.run import RunSetupError, plan_run
from bench.harness.suites import Suite
from bench.harness.trainer import Trainer
from methods.alignment.base import AlignmentMethod, OnlineMethod, Reward
from methods.inference import InferenceTimeMethod


def forward_seconds(backbone: Backbone, batch: int, repeats: int = 3) -> float:
    """Median seconds of one no-gradient UNet forward of `batch` latents (after one untimed warm-up)."""
    x = torch.randn(batch, *backbone.latent_shape, generator=torch.Generator().manual_seed(0)).to(
        backbone.device, backbone.latent_dtype)
    cond = backbone.encode_prompts([""] * batch)
    t = backbone.num_train_timesteps // 2
    with torch.no_grad():
        return median_seconds(lambda: backbone.model_output(x, t, cond), repeats)


def floor_seconds(calls: dict[tuple[int, bool], int], t_fwd: dict[int, float]) -> float:
    """Σ over UNet calls (batch, graded) -> count of t_fwd(batch) · (3 if graded else 1)."""
    return sum(count * t_fwd[batch] * (3 if graded else 1) for (batch, graded), count in calls.items())


def time_methods(suite: Suite, methods: list[str], *, steps: int = 3, warmup: int = 1, repeats: int = 3,
                 method_args: dict | None = None, train_args: dict | None = None) -> list[dict]:
    """Per method: the median step seconds, NFE per step, floor seconds and overhead over the timed steps, with each
    timed step's numbers (see the module docstring)."""
    if steps < 1 or warmup < 0:
        raise RunSetupError(f"--train-steps must be >= 1 and --warmup >= 0, got {steps} and {warmup}")
    with tempfile.TemporaryDirectory() as tmp:
        plan = plan_run(suite, methods, budgets=[Budget("steps", warmup + steps)], run_dir=Path(tmp) / "speed",
                        progress=False, method_args=method_args, train_args=train_args, set_metrics=[])
    for name, method in plan.methods.items():
        if isinstance(method, InferenceTimeMethod):
            raise RunSetupError(f"{name} is an inference-time method: it has no optimizer step to time")
    # the device `bench run` trains on (accelerate's process state): the toy on a GPU when one is there
    backbone = Backbone.from_pretrained(plan.pipeline, device=processes().device, dtype=PIPELINE_DTYPES[plan.dtype])
    data = encode_preferences(backbone, preference_pairs(load_pickapic(plan.preference_data, suite.preference_split),
                                                         suite.max_pairs))
    reward = None
    if any(isinstance(m, OnlineMethod) for m in plan.methods.values()):
        reward = ScorerReward(plan.reward, plan.scorer_options.subset(list(parse_reward(plan.reward))))
    t_fwd: dict[int, float] = {}
    return [summarise(name, step_timings(method, backbone, data, plan.train_configs[name], steps=steps, warmup=warmup,
                                         reward=reward if isinstance(method, OnlineMethod) else None),
                      backbone, t_fwd, repeats)
            for name, method in plan.methods.items()]


def step_timings(method: AlignmentMethod, backbone: Backbone, data: EncodedPreferences, config: TrainConfig, *,
                 steps: int, warmup: int = 1, reward: Reward | None = None) -> list[dict]:
    """Train `warmup + steps` optimizer steps as `bench run` does and return the last `steps`: each step's seconds
    (its collection included; the Trainer's clock), NFE, UNet calls by (batch, graded) and the number of steps so far,
    warm-up included, whose optimizer step the fp16 loss scaler skipped (`skipped_so_far`)."""
    per_step: list[dict] = []

    def record(step: int, logs: dict) -> None:  # the step's UNet calls, then a fresh count
        skipped = (per_step[-1]["skipped_so_far"] if per_step else 0) + int(logs.get("optimizer_step_skipped", 0))
        per_step.append({"step": step, "calls": dict(backbone.nfe.calls_by_batch), "nfe": backbone.nfe.total,
                         "skipped_so_far": skipped})
        backbone.nfe.reset()

    backbone.nfe.reset()
    result = Trainer(method, backbone, data, config, Budget("steps", warmup + steps), seed=0, progress=False,
                     callbacks=[record], reward=reward).fit()
    seconds = [b["seconds"] - a["seconds"] for a, b in zip([{"seconds": 0.0}, *result.history], result.history)]
    return [{**entry, "seconds": step_seconds} for entry, step_seconds in list(zip(per_step, seconds))[warmup:]]


def summarise(name: str, timed: list[dict], backbone: Backbone, t_fwd: dict[int, float], repeats: int = 3) -> dict:
    """Medians over the timed steps of seconds, NFE, floor seconds and overhead (module docstring), with each step's
    numbers; `t_fwd` caches the forward time per batch size across methods."""
    rows = []
    for entry in timed:
        for batch, _ in entry["calls"]:
            if batch not in t_fwd:
                t_fwd[batch] = forward_seconds(backbone, batch, repeats)
        floor = floor_seconds(entry["calls"], t_fwd)
        rows.append({"step": entry["step"], "seconds": entry["seconds"], "nfe": entry["nfe"], "floor_seconds": floor,
                     "overhead": entry["seconds"] / floor if floor else None,
                     "calls": {f"{b}{'+grad' if g else ''}": n for (b, g), n in sorted(entry["calls"].items())}})
    return {"method": name, "steps": len(rows),
            "seconds_per_step": statistics.median(t["seconds"] for t in rows),
            "nfe_per_step": statistics.median(t["nfe"] for t in rows),
            "floor_seconds_per_step": statistics.median(t["floor_seconds"] for t in rows),
            "overhead": statistics.median(t["overhead"] for t in rows if t["overhead"] is not None),
            "timed_steps": rows}
