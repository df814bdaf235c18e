"""`bench tune`: the same tuning effort for every method, chosen on validation prompts, reported on test prompts.

For each method, K trials (Optuna, seeded TPE; Akiba et al. 2019) each train the method under the same
budget with the values a trial asks for, from the method Config's declared search space
(`bench.core.search_space`) plus the learning rate (`TrainConfig.lr`'s space, the same for every method), and
evaluate it on the suite's **validation** prompts with the objective scorer (default: the suite's primary
metric, the oracle on the toy). Every trial is an ordinary run directory (record, config, budget used).
The best trial's configuration of each method is then retrained on several seeds and evaluated on the
**test** prompts, which no trial ever saw; those records carry the tuning's provenance and cost.

Resuming. The study lives in SQLite under the run directory (`tune.db`) or in `--storage URL` (any
database Optuna supports, shared by several machines). A killed sweep resumes where it stopped: a trial
that was running when the process died is marked failed and asked again. The sampler is re-seeded before
each trial with (seed, number of completed trials), and TPE conditions only on completed trials, so a
resumed sweep asks the same values, and reaches the same best trials, as an uninterrupted one; the trial
asked again runs in the killed one's directory, so its checkpoint (or its finished record) is reused. With a
shared `--storage`, workers seed and name directories by trial number instead (two workers must not ask
the same values).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from bench.core.budget import Budget
from bench.core.config import TrainConfig
from bench.core.records import TUNING, new_record, read_record, write_json_atomic
from bench.core.search_space import Space, search_space
from bench.harness.run import RunPlan, RunSetupError, execute, plan_run
from bench.harness.suites import Suite
from methods.alignment import METHODS
from metrics import SCORERS
from metrics.build import ScorerOptions

log = logging.getLogger(__name__)


def trial_space(suite: Suite, method: str) -> dict[str, Space]:
    """A method's search space as trial parameter names: `method.FIELD` (its Config's declared ranges) and
    `train.FIELD` (TrainConfig's: the learning rate), with the suite's ranges replacing declared ones."""
    space = {f"method.{name}": s for name, s in search_space(METHODS.get(method).Config).items()}
    space.update({f"train.{name}": s for name, s in search_space(TrainConfig).items()})
    for key, s in suite.search.items():
        scope, _, name = key.partition(".")
        if scope == "train":
            space[key] = s
        elif scope == method:
            space[f"method.{name}"] = s
    return space


def split_params(params: dict) -> tuple[dict, dict]:
    """Trial parameters -> (method config overrides, train config overrides)."""
    method = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("method.")}
    train = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("train.")}
    return method, train


@dataclass
class TunePlan:
    suite: Suite
    methods: list[str]
    trials: int
    budget: Budget
    objective: str
    run_dir: Path
    seed: int = 0
    storage: str | None = None
    resume: bool = False
    progress: bool = True
    final_seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    final_budgets: list[Budget] = field(default_factory=list)
    scorer_options: ScorerOptions = field(default_factory=ScorerOptions)

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.run_dir / 'tune.db').resolve()}"

    def study_name(self, method: str) -> str:
        return f"{self.suite.name}/{method}/{self.budget}/{self.objective}/seed{self.seed}"

    def trial_plan(self, method: str, params: dict, trial_dir: Path) -> RunPlan:
        method_args, train_args = split_params(params)
        return plan_run(self.suite, [method], budgets=[self.budget], seeds=[self.seed],
                        method_args={method: method_args}, train_args={method: train_args}, run_dir=trial_dir,
                        resume=(trial_dir / "run.json").exists(), progress=self.progress, split="validation",
                        scorer_options=self.scorer_options)


def plan_tune(suite: Suite, methods: list[str], *, trials: int, budget: Budget | None, objective: str | None,
              run_dir: Path, seed: int = 0, storage: str | None = None, resume: bool = False, progress: bool = True,
              final_seeds: list[int] | None = None, final_budgets: list[Budget] | None = None,
              scorer_options: ScorerOptions | None = None) -> TunePlan:
    """Validate a tuning request completely (methods, spaces, objective, run directory) before any work."""
    if trials < 1:
        raise RunSetupError(f"--trials must be >= 1, got {trials}")
    objective = objective or suite.primary_metric
    SCORERS.check([objective])
    if objective not in suite.metrics:
        suite = dataclasses.replace(suite, metrics=(*suite.metrics, objective))
    budget = budget or suite.budget
    plan = TunePlan(suite, methods, trials, budget, objective, Path(run_dir), seed, storage, resume, progress,
                    final_seeds if final_seeds is not None else [0, 1, 2], final_budgets or [budget],
                    scorer_options or ScorerOptions())
    for method in methods:
        if not trial_space(suite, method):
            raise RunSetupError(f"{method} declares no search space")
        # Every trial's configuration must be valid: check the defaults here (the spaces are checked per trial).
        plan_run(suite, [method], budgets=[budget], run_dir=plan.run_dir / "_check", split="validation",
                 scorer_options=plan.scorer_options)
    plan_run(suite, methods, budgets=plan.final_budgets, seeds=plan.final_seeds, run_dir=plan.run_dir / "_check",
             scorer_options=plan.scorer_options)
    db = plan.run_dir / "tune.db"
    if not resume and storage is None and plan.run_dir.exists() and any(plan.run_dir.iterdir()):
        raise RunSetupError(f"run directory {plan.run_dir} is not empty; pass --resume to continue its sweep or "
                            "choose another")
    if resume and storage is None and not db.exists():
        raise RunSetupError(f"--resume: {plan.run_dir} holds no sweep (no tune.db)")
    return plan


def _study(plan: TunePlan, method: str):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    plan.run_dir.mkdir(parents=True, exist_ok=True)
    direction = "maximize" if SCORERS.get(plan.objective).higher_is_better else "minimize"
    study = optuna.create_study(study_name=plan.study_name(method), storage=plan.storage_url, direction=direction,
                                load_if_exists=True)
    if plan.storage is None:  # a local sweep: a trial still "running" belongs to a killed process
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    return study


def _completed(study) -> list:
    import optuna

    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def tune_method(plan: TunePlan, method: str) -> dict:
    """Run the method's trials until `plan.trials` have completed; returns its summary (best and every trial)."""
    import optuna

    study = _study(plan, method)
    space = trial_space(plan.suite, method)
    while len(done := _completed(study)) < plan.trials:
        offset = len(done) if plan.storage is None else len(study.get_trials(deepcopy=False))
        study.sampler = optuna.samplers.TPESampler(seed=plan.seed * 100_003 + offset,
                                                   n_startup_trials=max(1, plan.trials // 2))
        trial = study.ask()
        params = {name: s.suggest(trial, name) for name, s in space.items()}
        log.info("%s trial %d: %s", method, trial.number, params)
        try:
            value, attrs = run_trial(plan, method, params, offset)
        except BaseException:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        for key, attr in attrs.items():
            trial.set_user_attr(key, attr)
        study.tell(trial, value)
    return summarize(study, plan)


def run_trial(plan: TunePlan, method: str, params: dict, number: int) -> tuple[float, dict]:
    """Train and evaluate one trial (an ordinary run directory `trials/METHOD/trial-NNN`); returns the objective's
    mean on the validation prompts and what the study keeps of it (record path relative to the run directory,
    NFE, training seconds).

    `number` is the count of completed trials (the trial number with a shared `--storage`): a trial asked again
    after a kill gets the same values and the same directory, so its checkpoint or finished record is reused."""
    trial_dir = plan.run_dir / "trials" / method / f"trial-{number:03d}"
    path = execute(plan.trial_plan(method, params, trial_dir))[-1]
    record = read_record(path)
    attrs = {"record": os.path.relpath(path, plan.run_dir), "nfe": record["budget"]["usage"]["nfe"],
             "seconds": record["budget"]["seconds"]}
    return record["metrics"][plan.objective]["mean"], attrs


def summarize(study, plan: TunePlan) -> dict:
    """Best trial, every completed trial and the tuning cost (trials x budget, NFE and seconds used)."""
    trials = sorted(_completed(study), key=lambda t: t.number)[: plan.trials]
    best = (max if study.direction.name == "MAXIMIZE" else min)(trials, key=lambda t: (t.value, -t.number))
    method_args, train_args = split_params(best.params)
    return {
        "study": plan.study_name(study.study_name.split("/")[1]),
        "best": {"trial": best.number, "value": best.value, "params": best.params, "method_args": method_args,
                 "train_args": train_args, "record": best.user_attrs.get("record")},
        "trials": [{"trial": t.number, "value": t.value, "params": t.params, "nfe": t.user_attrs.get("nfe"),
                    "seconds": t.user_attrs.get("seconds"), "record": t.user_attrs.get("record")} for t in trials],
        "cost": {"trials": len(trials), "budget_per_trial": str(plan.budget),
                 "nfe": sum(t.user_attrs.get("nfe", 0) for t in trials),
                 "seconds": sum(t.user_attrs.get("seconds", 0.0) for t in trials)},
    }


def tuning_provenance(objective: str, summary: dict) -> dict:
    """What a final record (and a suite's tuned.json) says about how a method's settings were chosen."""
    return {"objective": objective, "split": "validation", "trials": summary["cost"]["trials"],
            "budget_per_trial": summary["cost"]["budget_per_trial"], "nfe": summary["cost"]["nfe"],
            "seconds": summary["cost"]["seconds"], "best_trial": summary["best"]["trial"],
            "validation_score": summary["best"]["value"], "params": summary["best"]["params"],
            "study": summary["study"]}


def tune(plan: TunePlan, *, final: bool = True) -> dict:
    """Tune every method, write `tune.json` (after each method, atomically), then retrain the best settings on
    the final seeds and budgets and evaluate them on the test prompts (`final/`)."""
    out = {"suite": plan.suite.name, "budget": str(plan.budget), "trials": plan.trials, "objective": plan.objective,
           "seed": plan.seed, "split": "validation", "storage": plan.storage or "tune.db", "methods": {}}
    for method in plan.methods:
        out["methods"][method] = tune_method(plan, method)
        write_json_atomic(plan.run_dir / "tune.json", new_record(TUNING, **out))
    if final:
        final_plan = plan_run(
            plan.suite, plan.methods, budgets=plan.final_budgets, seeds=plan.final_seeds,
            method_args={m: s["best"]["method_args"] for m, s in out["methods"].items()},
            train_args={m: s["best"]["train_args"] for m, s in out["methods"].items()},
            run_dir=plan.run_dir / "final", resume=(plan.run_dir / "final" / "run.json").exists(),
            progress=plan.progress, scorer_options=plan.scorer_options)
        final_plan.tuning = {m: tuning_provenance(plan.objective, s) for m, s in out["methods"].items()}
        out["final_records"] = [str(p) for p in execute(final_plan)]
        write_json_atomic(plan.run_dir / "tune.json", new_record(TUNING, **out))
    return new_record(TUNING, **out)


def suite_defaults(tune_json: dict) -> dict:
    """The settings a suite ships from a tuning run: method -> {method_args, train_args, tuning}."""
    return {m: {"method_args": s["best"]["method_args"], "train_args": s["best"]["train_args"],
                "tuning": tuning_provenance(tune_json["objective"], s)}
            for m, s in tune_json["methods"].items()}
