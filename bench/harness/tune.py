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

Several worker processes (`tune(plan, jobs=N)`, as `bench run --jobs`: spawned, each with 1/N of the threads).
Trial i of a method is seeded with i and, as TPE's first K/2 trials draw from its seeded random sampler, the
values of those start-up trials do not depend on any result: they run concurrently. A later trial is asked, as in a
serial sweep, once every earlier trial of its method has completed (TPE conditions on them; Optuna's own
`n_jobs` would ask it earlier, against running trials, and so ask values that depend on timing), so one method's
second half runs one trial at a time, next to other methods' trials. Every trial thus gets the values, the
directory, the record and the objective of the serial sweep, the best trials and final records are the same (at
equal threads per run, as `bench run --jobs`); only the study's trial numbers can differ after a resumed sweep
(they count asks). The final runs are `execute(..., jobs=N)`. With a shared `--storage`, N processes behave as
N machines sharing the study: trials are asked as workers free up.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import os
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bench.core.budget import Budget
from bench.core.config import TrainConfig
from bench.core.progress import progress_bar
from bench.core.records import TUNING, new_record, read_record, write_json_atomic
from bench.core.search_space import Space, search_space
from bench.harness.run import RunPlan, RunSetupError, check_launch, execute, parse_method_specs, plan_run
from bench.harness.suites import Suite
from methods.alignment import METHODS
from metrics import SCORERS
from metrics.build import ScorerOptions

log = logging.getLogger(__name__)


def trial_space(suite: Suite, method: str, *, label: str | None = None, fixed: dict | None = None) -> dict[str, Space]:
    """A method's search space as trial parameter names: `method.FIELD` (its Config's declared ranges) and
    `train.FIELD` (TrainConfig's: the learning rate; not for an inference-time method, which trains nothing), with
    the suite's ranges (by method, then by `label`) replacing declared ones. `fixed` holds the parameters the user
    set (`--method-arg`, `--train-arg`, as trial parameter names): they are not searched."""
    trains = METHODS.get(method).kind != "inference-time"
    space = {f"method.{name}": s for name, s in search_space(METHODS.get(method).Config).items()}
    if trains:
        space.update({f"train.{name}": s for name, s in search_space(TrainConfig).items()})
    for key, s in suite.search.items():
        scope, _, name = key.partition(".")
        if scope == "train" and trains:
            space[key] = s
        elif scope in (method, label):
            space[f"method.{name}"] = s
    return {name: s for name, s in space.items() if name not in (fixed or {})}


def split_params(params: dict) -> tuple[dict, dict]:
    """Trial parameters -> (method config overrides, train config overrides)."""
    method = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("method.")}
    train = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("train.")}
    return method, train


@dataclass
class TunePlan:
    """A checked sweep. `methods` are labels (`bench run`'s LABEL=METHOD: a method tuned under settings of its own,
    e.g. `sdpo=dpo` with `safeguard=true`); `algorithms` maps a label to its registered method where they differ;
    `fixed` holds each label's settings given by the user (trial parameter names, `method.FIELD`/`train.FIELD`),
    applied to every trial and never searched."""

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
    algorithms: dict[str, str] = field(default_factory=dict)
    fixed: dict[str, dict] = field(default_factory=dict)

    def algorithm(self, label: str) -> str:
        return self.algorithms.get(label, label)

    def spec(self, label: str) -> str:
        """The label as `--methods` spells it: "dpo", or "sdpo=dpo"."""
        return label if self.algorithm(label) == label else f"{label}={self.algorithm(label)}"

    def space(self, label: str) -> dict[str, Space]:
        return trial_space(self.suite, self.algorithm(label), label=label, fixed=self.fixed.get(label))

    def settings(self, label: str, params: dict) -> tuple[dict, dict]:
        """A trial's parameters with the label's fixed settings -> (method config overrides, train config overrides)."""
        return split_params({**self.fixed.get(label, {}), **params})

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{(self.run_dir / 'tune.db').resolve()}"

    def study_name(self, method: str) -> str:
        return f"{self.suite.name}/{method}/{self.budget}/{self.objective}/seed{self.seed}"

    def trial_plan(self, method: str, params: dict, trial_dir: Path) -> RunPlan:
        method_args, train_args = self.settings(method, params)
        return plan_run(self.suite, [self.spec(method)], budgets=[self.budget], seeds=[self.seed],
                        method_args={method: method_args}, train_args={method: train_args}, run_dir=trial_dir,
                        resume=(trial_dir / "run.json").exists(), progress=self.progress, split="validation",
                        scorer_options=self.scorer_options)


def plan_tune(suite: Suite, methods: list[str], *, trials: int, budget: Budget | None, objective: str | None,
              run_dir: Path, seed: int = 0, storage: str | None = None, resume: bool = False, progress: bool = True,
              final_seeds: list[int] | None = None, final_budgets: list[Budget] | None = None,
              scorer_options: ScorerOptions | None = None, method_args: dict[str, dict] | None = None,
              train_args: dict[str, dict] | None = None) -> TunePlan:
    """Validate a tuning request completely (methods, spaces, objective, run directory) before any work. `methods`
    are names or LABEL=METHOD; `method_args`/`train_args` (label -> {FIELD: value}) fix settings of every trial and
    final run, which are then not searched."""
    if trials < 1:
        raise RunSetupError(f"--trials must be >= 1, got {trials}")
    objective = objective or suite.primary_metric
    SCORERS.check([objective])
    if objective not in suite.metrics:
        suite = dataclasses.replace(suite, metrics=(*suite.metrics, objective))
    budget = budget or suite.budget
    algorithms = parse_method_specs(methods)
    for option, given in (("--method-arg", method_args or {}), ("--train-arg", train_args or {})):
        for label in given:
            if label not in algorithms:
                raise RunSetupError(f"{option} for {label!r}, which is not in --methods")
    fixed = {label: {**{f"method.{k}": v for k, v in (method_args or {}).get(label, {}).items()},
                     **{f"train.{k}": v for k, v in (train_args or {}).get(label, {}).items()}} for label in algorithms}
    plan = TunePlan(suite, list(algorithms), trials, budget, objective, Path(run_dir), seed, storage, resume, progress,
                    final_seeds if final_seeds is not None else [0, 1, 2], final_budgets or [budget],
                    scorer_options or ScorerOptions(),
                    algorithms={label: a for label, a in algorithms.items() if label != a},
                    fixed={label: f for label, f in fixed.items() if f})
    for method in plan.methods:
        if not plan.space(method):
            raise RunSetupError(f"{method} declares no search space" + (" left by the settings given" if
                                                                          plan.fixed.get(method) else ""))
        # Every trial's configuration must be valid: check the defaults here (the spaces are checked per trial).
        method_args, train_args = plan.settings(method, {})
        plan_run(suite, [plan.spec(method)], budgets=[budget], method_args={method: method_args},
                 train_args={method: train_args}, run_dir=plan.run_dir / "_check", split="validation",
                 scorer_options=plan.scorer_options)
    fixed_args = {m: plan.settings(m, {}) for m in plan.methods}
    plan_run(suite, [plan.spec(m) for m in plan.methods], budgets=plan.final_budgets, seeds=plan.final_seeds,
             method_args={m: args[0] for m, args in fixed_args.items()},
             train_args={m: args[1] for m, args in fixed_args.items()}, run_dir=plan.run_dir / "_check",
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


def startup_trials(plan: TunePlan) -> int:
    """How many of a method's first trials TPE draws from its random sampler (seeded, blind to results)."""
    return max(1, plan.trials // 2)


def trial_index(trial, rank: int) -> int:
    """A completed trial's index: the user attribute `index` it records, or, for a trial of an earlier version (which
    ran trials one at a time and recorded none), `rank`, its place among the study's completed trials."""
    return trial.user_attrs.get("index", rank)


class _Sweep:
    """One method's study while its trials run: which trial indices have completed, which are running, and which may
    be asked now. Trial i is seeded with i and runs in `trials/METHOD/trial-i` (local storage; with a shared
    `--storage`, i is the trial's number)."""

    def __init__(self, plan: TunePlan, method: str):
        self.plan, self.method = plan, method
        self.study = _study(plan, method)
        self.space = plan.space(method)
        self.running: dict[int, object] = {}  # trial index -> the asked Optuna trial

    def completed(self) -> set[int]:
        """The indices of the completed trials (`trial_index`)."""
        return {trial_index(t, rank) for rank, t in enumerate(sorted(_completed(self.study), key=lambda t: t.number))}

    def remaining(self) -> int:
        return max(0, self.plan.trials - len(_completed(self.study)))

    def next_index(self) -> int | None:
        """The trial that may be asked now, or None: any start-up trial not yet completed or running; a later one when
        every trial before it has completed, as in a serial sweep."""
        if self.plan.storage is not None:  # a shared study: other machines ask too; count every trial asked
            if len(self.running) < self.remaining():
                return len(self.study.get_trials(deepcopy=False))
            return None
        done = self.completed()
        waiting = [i for i in range(self.plan.trials) if i not in done and i not in self.running]
        if not waiting:
            return None
        first = waiting[0]
        return first if first < startup_trials(self.plan) or not self.running else None

    def finished(self) -> bool:
        return not self.running and not self.remaining()

    def ask(self, index: int) -> tuple[object, dict]:
        import optuna

        self.study.sampler = optuna.samplers.TPESampler(seed=self.plan.seed * 100_003 + index,
                                                        n_startup_trials=startup_trials(self.plan))
        trial = self.study.ask()
        params = {name: s.suggest(trial, name) for name, s in self.space.items()}
        trial.set_user_attr("index", index)
        self.running[index] = trial
        log.info("%s trial %d: %s", self.method, trial.number, params)
        return trial, params

    def tell(self, index: int, result: tuple[float, dict] | None) -> None:
        """The trial's (objective, attributes), or None: it failed."""
        import optuna

        trial = self.running.pop(index)
        if result is None:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return
        value, attrs = result
        for key, attr in attrs.items():
            trial.set_user_attr(key, attr)
        self.study.tell(trial, value)


class _Inline:
    """Runs each submitted call at once, in this process: the executor of `jobs=1` (a sweep as it always ran)."""

    def submit(self, fn, *args) -> Future:
        future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as err:  # a KeyboardInterrupt too: the trial is told failed, then it is raised
            future.set_exception(err)
        return future

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def _trial_pool(jobs: int):
    """`jobs` spawned worker processes, each with 1/jobs of this process's threads (as `bench run --jobs`)."""
    threads = max(1, torch.get_num_threads() // jobs)
    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=torch.set_num_threads,
                               initargs=(threads,))


def _run_trial(plan: TunePlan, method: str, params: dict, number: int) -> tuple[float, dict]:
    return run_trial(plan, method, params, number)  # looked up when called: a worker runs this module's


def tune_methods(plan: TunePlan, methods: list[str], *, jobs: int = 1, on_method=None) -> dict[str, dict]:
    """Run every method's trials until `plan.trials` have completed for each; returns method -> summary (best and
    every trial), calling `on_method(method, summary)` as each method's sweep completes. `jobs` > 1 runs trials in
    that many worker processes (see the module docstring: the same trials and values as `jobs=1`). A failed trial is
    told failed and raised once the trials running next to it have finished (and been told)."""
    check_launch(jobs)
    sweeps = [_Sweep(plan, method) for method in methods]
    summaries: dict[str, dict] = {}
    worker_plan = dataclasses.replace(plan, progress=False) if jobs > 1 else plan  # workers' bars would interleave
    bar = progress_bar(total=sum(sweep.remaining() for sweep in sweeps), enabled=plan.progress and jobs > 1,
                       desc="tune trials", unit="trial")
    running: dict[Future, tuple[_Sweep, int]] = {}
    error: BaseException | None = None
    with _trial_pool(jobs) if jobs > 1 else _Inline() as pool:
        try:
            while True:
                for sweep in sweeps:  # in plan order: with one job, a method's trials, then the next method's
                    if sweep.method not in summaries and sweep.finished():
                        summaries[sweep.method] = summarize(sweep.study, plan)
                        if on_method:
                            on_method(sweep.method, summaries[sweep.method])
                    while error is None and len(running) < jobs and (index := sweep.next_index()) is not None:
                        _, params = sweep.ask(index)
                        running[pool.submit(_run_trial, worker_plan, sweep.method, params, index)] = (sweep, index)
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    sweep, index = running.pop(future)
                    try:
                        sweep.tell(index, future.result())
                    except BaseException as err:
                        sweep.tell(index, None)
                        error = error or err
                    bar.update()
        except BaseException:
            for sweep, index in running.values():  # interrupted here: the trials still running are lost
                sweep.tell(index, None)
            raise
        finally:
            bar.close()
    if error is not None:
        raise error
    return summaries


def tune_method(plan: TunePlan, method: str, *, jobs: int = 1) -> dict:
    """Run the method's trials until `plan.trials` have completed; returns its summary (best and every trial)."""
    return tune_methods(plan, [method], jobs=jobs)[method]


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
    """Best trial, every completed trial (in the order of their indices) and the tuning cost (trials x budget, NFE and
    seconds used)."""
    done = sorted(_completed(study), key=lambda t: t.number)
    trials = [t for _, t in sorted(((trial_index(t, rank), t.number), t) for rank, t in enumerate(done))][: plan.trials]
    best = (max if study.direction.name == "MAXIMIZE" else min)(trials, key=lambda t: (t.value, -t.number))
    label = study.study_name.split("/")[1]
    method_args, train_args = plan.settings(label, best.params)
    return {
        "study": plan.study_name(label),
        "method": plan.algorithm(label),
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


def tune(plan: TunePlan, *, final: bool = True, jobs: int = 1) -> dict:
    """Tune every method, write `tune.json` (atomically, as each method's sweep completes), then retrain the best
    settings on the final seeds and budgets and evaluate them on the test prompts (`final/`). `jobs` > 1: trials and
    final runs in that many worker processes, with the same trials, values and records (module docstring)."""
    check_launch(jobs)
    out = {"suite": plan.suite.name, "budget": str(plan.budget), "trials": plan.trials, "objective": plan.objective,
           "seed": plan.seed, "split": "validation", "storage": plan.storage or "tune.db", "methods": {}}
    tuned: dict[str, dict] = {}

    def write(method: str, summary: dict) -> None:
        tuned[method] = summary
        out["methods"] = {m: tuned[m] for m in plan.methods if m in tuned}  # in plan order, whichever finished first
        write_json_atomic(plan.run_dir / "tune.json", new_record(TUNING, **out))

    tune_methods(plan, plan.methods, jobs=jobs, on_method=write)
    if final:
        final_plan = plan_run(
            plan.suite, [plan.spec(m) for m in plan.methods], budgets=plan.final_budgets, seeds=plan.final_seeds,
            method_args={m: s["best"]["method_args"] for m, s in out["methods"].items()},
            train_args={m: s["best"]["train_args"] for m, s in out["methods"].items()},
            run_dir=plan.run_dir / "final", resume=(plan.run_dir / "final" / "run.json").exists(),
            progress=plan.progress, scorer_options=plan.scorer_options)
        final_plan.tuning = {m: tuning_provenance(plan.objective, s) for m, s in out["methods"].items()}
        out["final_records"] = [str(p) for p in execute(final_plan, jobs=jobs)]
        write_json_atomic(plan.run_dir / "tune.json", new_record(TUNING, **out))
    return new_record(TUNING, **out)


def suite_defaults(tune_json: dict) -> dict:
    """The settings a suite ships from a tuning run: label -> {method (the registered one), method_args, train_args,
    tuning}; a label's settings apply where a run names the same label for the same method (`Suite.variants`)."""
    return {m: {"method": s.get("method", m), "method_args": s["best"]["method_args"], "train_args": s["best"]["train_args"],
                "tuning": tuning_provenance(tune_json["objective"], s)}
            for m, s in tune_json["methods"].items()}
