"""Nested budgets: a method and seed train once to the largest budget of a counted unit and land every smaller
budget's record as training passes it; the records are those of separate runs, and a killed chain resumes to them."""

from __future__ import annotations

import dataclasses
import json

import pytest

from bench.core.budget import Budget
from bench.core.config import EvalConfig
from bench.harness import run as run_module
from bench.harness.run import execute, plan_run
from bench.harness.suites import get_suite

# On the toy suite a DPO or KTO step costs 128 NFE (16 pairs x 8F, 32 images x 4F): 200nfe stops after 1 step (a
# second would overshoot), 400nfe and 500nfe both after 3, so two budgets of a chain can stop at the same step.
NFE = ["200nfe", "400nfe", "500nfe"]


@pytest.fixture()
def suite(tiny_toy_dir, monkeypatch):
    monkeypatch.setenv("BENCH_TOY_DIR", str(tiny_toy_dir))
    toy = get_suite("toy")  # a small evaluation: 4 test prompts, one image each, 4 sampling steps
    return dataclasses.replace(toy, eval=EvalConfig(images_per_prompt=1, steps=4, batch_size=8, bootstrap=50), set_metrics=(),
                               eval_prompts=toy.eval_prompts[:4])


def _plan(suite, run_dir, budgets, methods=("dpo", "kto"), resume=False, checkpoint_every=None):
    train_args = {"*": {"checkpoint_every": str(checkpoint_every)}} if checkpoint_every else None
    return plan_run(suite, list(methods), budgets=[Budget.parse(b) for b in budgets], seeds=[0], run_dir=run_dir,
                    resume=resume, progress=False, train_args=train_args)


def _records(run_dir) -> dict[str, dict]:
    """The trained runs' records (not run.json, nor base.json, whose budget unit is the plan's first budget's)."""
    return {p.name: json.loads(p.read_text()) for p in sorted(run_dir.glob("*.json"))
            if p.name not in ("run.json", "base.json")}


def _comparable(record: dict) -> dict:
    """A record without what differs between any two runs (creation time, seconds) or names the plan's other budgets."""
    def strip(part):
        if isinstance(part, dict):
            return {k: strip(v) for k, v in part.items() if "seconds" not in k and k not in ("created", "environment")}
        if isinstance(part, list):
            return [strip(v) for v in part]
        return part

    out = strip(record)
    out["config"].pop("budgets")
    return out


def test_a_chain_writes_the_records_of_separate_runs_and_trains_once(suite, tmp_path):
    steps = []
    nested = execute(_plan(suite, tmp_path / "nested", [*NFE, "2steps"]),
                     trainer_callbacks=[lambda step, logs: steps.append(step)])
    assert [p.name for p in nested] == ["base.json", "dpo-200nfe-s0.json", "kto-200nfe-s0.json", "dpo-400nfe-s0.json",
                                        "kto-400nfe-s0.json", "dpo-500nfe-s0.json", "kto-500nfe-s0.json",
                                        "dpo-2steps-s0.json", "kto-2steps-s0.json"]
    assert len(steps) == 2 * (3 + 2)  # per method: one NFE chain to 3 steps, one to 2steps (separately: 1+3+3+2)
    assert not list((tmp_path / "nested").glob("*.ckpt"))
    together = _records(tmp_path / "nested")
    for budget in [*NFE, "2steps"]:
        execute(_plan(suite, tmp_path / budget, [budget]))
        for name, record in _records(tmp_path / budget).items():
            assert _comparable(record) == _comparable(together[name]), name
    assert [together[f"dpo-{b}-s0.json"]["training"]["steps"] for b in NFE] == [1, 3, 3]
    assert together["kto-200nfe-s0.json"]["budget"]["used"] == 128
    # the milestone's policy is evaluated, not the one trained on: a later record differs
    assert together["dpo-200nfe-s0.json"]["evaluation"]["scores"] != together["dpo-400nfe-s0.json"]["evaluation"]["scores"]


@pytest.mark.parametrize("kill", ["training", "evaluation"])
def test_a_killed_chain_resumes_to_the_same_records(suite, tmp_path, monkeypatch, kill):
    """Killed after the 200nfe record landed, in the middle of training to 400nfe (checkpoint at step 2); or while
    evaluating the 200nfe milestone (its record not yet written; the checkpoint written there is the only one)."""
    budgets = ["200nfe", "400nfe"]
    execute(_plan(suite, tmp_path / "whole", budgets, methods=["dpo"], checkpoint_every=2))
    whole = _records(tmp_path / "whole")

    killed = tmp_path / "killed"
    evaluate = run_module.evaluate

    def crash_at_step_3(step, logs):
        if step == 3:
            raise KeyboardInterrupt

    def crash_in_milestone_evaluation(policy, prompts, cfg, scorers, **kwargs):
        if kwargs.get("desc") == "eval dpo 200nfe":
            raise KeyboardInterrupt
        return evaluate(policy, prompts, cfg, scorers, **kwargs)

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        if kill == "evaluation":
            patch.setattr(run_module, "evaluate", crash_in_milestone_evaluation)
        execute(_plan(suite, killed, budgets, methods=["dpo"], checkpoint_every=2),
                trainer_callbacks=[crash_at_step_3] if kill == "training" else None)
    ckpt = killed / "dpo-400nfe-s0.ckpt"
    assert ckpt.exists() and not (killed / "dpo-400nfe-s0.json").exists()
    assert (killed / "dpo-200nfe-s0.json").exists() == (kill == "training")
    before = _records(killed)

    steps = []
    execute(_plan(suite, killed, budgets, methods=["dpo"], resume=True, checkpoint_every=2),
            trainer_callbacks=[lambda step, logs: steps.append(step)])
    assert steps == ([3] if kill == "training" else [2, 3])  # from the checkpoint at step 2, or at the milestone (1)
    after = _records(killed)
    for name in whole:
        assert _comparable(after[name]) == _comparable(whole[name]), name
    if kill == "training":
        assert after["dpo-200nfe-s0.json"]["created"] == before["dpo-200nfe-s0.json"]["created"]  # not redone
    assert not ckpt.exists()


def test_time_budgets_train_on_their_own(suite, tmp_path):
    """Seconds are measured, not counted: a run stopped at 1 s need not stop where a longer run is at 1 s."""
    plan = _plan(suite, tmp_path / "run", ["200nfe", "400nfe", "30s", "60s"], methods=["dpo"])
    chains = run_module._chains([(b, 0, "dpo", tmp_path / f"{b}.json") for b in plan.budgets])
    assert [[str(run[0]) for run in chain] for chain in chains] == [["200nfe", "400nfe"], ["30s"], ["60s"]]
    assert run_module._chain_label(chains[0]) == "dpo 200nfe → 400nfe s0"
