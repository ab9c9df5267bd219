"""The sweep driver: :func:`run_sweep` prepares, then runs the trials of every group on Ray Tune
(+ OptunaSearch and ASHA, or a grid), recording them in MLflow (the experiment folder's layout is in
:mod:`mixkd.platform`)."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..core.config import MixKDConfig
from ..core.atomic import write_json_atomic
from ..core.errors import UsageError
from .prepare import (latency_key, measure_latencies, prepare_augmentations, prepare_teacher_outputs,
                      prepare_teachers, teacher_latency_key)
from .search_space import DefineByRun, grid_cells
from .spec import SweepPlan, SweepSpec, TrialGroup, group_name, preflight, saved_spec, sweep_params
from .summary import summarize
from .trial import run_trial, trial_failure_reason


# --- the Tune callback that records trials in MLflow ----------------------------------------------

def _mlflow_callback(tracker, plan: SweepPlan):
    from ray.tune import Callback

    from ..tracking.writer import SweepTracker

    class MLflowSweepCallback(Callback):
        """Driver-side: one nested MLflow run per trial, metrics per eval, artifacts at the end."""

        def __init__(self):
            super().__init__()
            self.configs: dict[str, MixKDConfig] = {}   # trial id -> its config, resolved once (plan.trial_config)

        def _cfg(self, trial) -> MixKDConfig:
            if trial.trial_id not in self.configs:
                self.configs[trial.trial_id] = plan.trial_config(trial.config, trial.trial_id)
            return self.configs[trial.trial_id]

        def on_trial_start(self, iteration, trials, trial, **info):
            cfg = self._cfg(trial)
            tracker.child(trial.trial_id, cfg, role="trial", name=f"trial {trial.trial_id}")
            lat = plan.latency.get(latency_key(cfg))
            if lat:
                tracker.submit(SweepTracker.log_latency, trial.trial_id, lat["metrics"], lat["tags"])

        def on_trial_result(self, iteration, trials, trial, result, **info):
            tracker.child(trial.trial_id, self._cfg(trial), role="trial")   # no-op once created
            tracker.log_eval(trial.trial_id, result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            tracker.child(trial.trial_id, self._cfg(trial), role="trial")
            out = plan.trials_dir / trial.trial_id
            finished = (out / "metrics.json").is_file()
            tracker.finish(trial.trial_id, out, status="FINISHED" if finished else "KILLED",
                           reason=None if finished else "stopped early by the scheduler", log_model=False)

        def on_trial_error(self, iteration, trials, trial, **info):
            tracker.child(trial.trial_id, self._cfg(trial), role="trial")
            out = plan.trials_dir / trial.trial_id
            reason = trial_failure_reason(trial.error_file, out, trial.run_metadata.num_failures,
                                          plan.spec.max_failures)
            tracker.finish(trial.trial_id, out, status="FAILED", reason=reason, log_model=False)

    return MLflowSweepCallback()


# --- the sweep ----------------------------------------------------------------------------------

def max_concurrent(spec: SweepSpec) -> int:
    """How many trials fit on the cluster at once, from its resources (never 0)."""
    import ray
    if spec.max_concurrent_trials:
        return spec.max_concurrent_trials
    res = ray.cluster_resources()
    per_trial_cpu = spec.cpus_per_trial
    n = int(res.get("CPU", 1) // per_trial_cpu) if per_trial_cpu else 10**6
    if spec.gpus_per_trial > 0:
        n = min(n, int(res.get("GPU", 0) // spec.gpus_per_trial))
    return max(1, n)


def _tuner(plan: SweepPlan, group: str, callbacks, resume: bool, param_space: dict, search_alg=None, scheduler=None,
           num_samples: int = 1):
    from ray import tune
    spec, path = plan.spec, plan.tune_dir / group
    trainable = tune.with_resources(tune.with_parameters(run_trial, plan=plan), plan.resources)
    if resume and tune.Tuner.can_restore(str(path)):
        print(f"{group}: resuming from {path}")
        return tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True,
                                  param_space=param_space)
    return tune.Tuner(
        trainable, param_space=param_space,
        # metric/mode live on the searcher and scheduler when there are any (Tune refuses both places)
        tune_config=tune.TuneConfig(metric=None if search_alg else "primary", mode=None if search_alg else "max",
                                    search_alg=search_alg, scheduler=scheduler,
                                    num_samples=num_samples, max_concurrent_trials=max_concurrent(spec),
                                    reuse_actors=True),   # a trial process imports torch/transformers once
        run_config=tune.RunConfig(name=group, storage_path=str(plan.tune_dir), callbacks=callbacks,
                                  failure_config=tune.FailureConfig(max_failures=spec.max_failures), verbose=1),
    )


@dataclass(frozen=True)
class CheckedSweep:
    """A sweep that passed every check that needs no Ray (:func:`check_sweep`): what ``run_sweep`` starts from."""
    spec: SweepSpec
    resume: bool
    sources: list            # (data source, task) pairs, announced when the sweep starts
    tracking_uri: str


def check_sweep(spec: SweepSpec, resume: bool = False) -> CheckedSweep:
    """Every check a sweep can make before Ray starts, once: the spec (validated), storage, data and student depth
    (``preflight``), an existing experiment (``--resume`` with the same spec), the MLflow store. One UsageError,
    nothing written."""
    from ..tracking.store import check_tracking_uri, default_tracking_uri
    if not getattr(spec, "validated", False):   # the CLI's load_spec has
        spec.validate()
    sources = preflight(spec)
    exp_dir = spec.experiment_dir
    spec_file = exp_dir / "sweep.yaml"
    if spec_file.is_file():
        saved = yaml.safe_load(spec_file.read_text())
        if not resume:
            raise UsageError(f"experiment '{exp_dir}' exists; pass --resume to continue it or choose another "
                             f"--experiment-name")
        now = saved_spec(spec)
        if saved != now:
            changed = sorted(k for k in saved if saved.get(k) != now.get(k))
            raise UsageError(f"--resume: the sweep differs from the saved one in {', '.join(changed)}; resume "
                             f"with the same preset and flags")
    uri = spec.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(exp_dir)
    check_tracking_uri(uri)   # one line now, not after the sweep
    return CheckedSweep(spec, resume, sources, uri)


def run_sweep(spec: SweepSpec | CheckedSweep, resume: bool = False) -> dict[str, Any]:
    """Teachers first, then the trials of every group; returns the summary (also summary.json). ``spec``: a
    :class:`CheckedSweep` (the CLI checks before it connects to Ray), or a spec, checked here.

    The stages: open the experiment (sweep.yaml, the MLflow parent run), prepare (+BT files, teachers, their kd/pkd
    outputs, latencies), plan the trials once (:func:`plan_trials`), run them on Tune, summarize (and with a latency
    budget, select the best student within it)."""
    checked = spec if isinstance(spec, CheckedSweep) else check_sweep(spec, resume)
    tracker = open_experiment(checked)
    teachers, latency = prepare(checked.spec, tracker, checked.tracking_uri)
    plan = plan_trials(checked.spec, teachers, latency)
    status = "FAILED"
    try:
        saved = run_trials(plan, tracker, checked.resume)
        summary = finish(plan, tracker, saved)
        status = "FINISHED"
        return summary
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.close(status)


def open_experiment(checked: CheckedSweep):
    """Announce each task's data source, write sweep.yaml (a new experiment; a resumed one matches it), and open the
    sweep's MLflow parent run (a BackgroundTracker: the store opens on its writer thread meanwhile)."""
    from ..core.data import announce_data_source
    from ..tracking.writer import BackgroundTracker
    spec = checked.spec
    exp_dir = spec.experiment_dir
    for source, task in checked.sources:
        announce_data_source(source, task)
    exp_dir.mkdir(parents=True, exist_ok=True)
    spec_file = exp_dir / "sweep.yaml"
    if not spec_file.is_file():
        spec_file.write_text(yaml.safe_dump(saved_spec(spec), sort_keys=False))
    return BackgroundTracker(checked.tracking_uri, spec.experiment_name or spec.name, sweep_id=str(exp_dir),
                             artifact_dir=exp_dir / "mlartifacts", sweep_params=sweep_params(spec))


def prepare(spec: SweepSpec, tracker, uri: str) -> tuple[dict[str, str], dict[str, dict]]:
    """What the trials need, as Ray tasks before any of them: the +BT files, the teachers, their outputs for kd/pkd,
    the latencies (the teachers' logged on the parent run). Returns (teachers, latency); a UsageError when the MLflow
    store failed to open meanwhile."""
    exp_dir = spec.experiment_dir
    prepare_augmentations(spec, exp_dir, tracker)   # +BT files first (sets base.augment_dir); no-op without BT
    teachers = prepare_teachers(spec, exp_dir, tracker)
    prepare_teacher_outputs(spec, teachers)   # kd/pkd: the teacher on the training rows once, not once per trial
    latency = measure_latencies(spec, exp_dir, teachers) if spec.measure_latency else {}
    if latency:
        from ..tracking.writer import SweepTracker
        for task, fraction, seed in spec.groups():
            lat = latency[teacher_latency_key(task)]
            tracker.submit(SweepTracker.log_latency, f"teacher-{spec.teacher_key(task, fraction, seed)}",
                           lat["metrics"], lat["tags"])
    if tracker.failed():   # the store opens on the writer thread meanwhile (see BackgroundTracker)
        tracker.close("FAILED", quiet=True)
        from ..tracking.store import redact_uri
        raise UsageError(f"MLflow store {redact_uri(uri)}: {tracker.failed()[:300]}")
    return teachers, latency


def plan_trials(spec: SweepSpec, teachers: dict[str, str], latency: dict[str, dict]) -> SweepPlan:
    """The sweep's trials, planned once from the checked spec and what was prepared: the groups, the latency budget
    (an architecture over it in its fastest considered format never trains: one UsageError when a task has none
    within it), and the grid's cells within the budget or the search space. The plan's spec is the trials' copy
    (saved_spec: the tracking URI masked), taken after the preparations (base.augment_dir set for +BT)."""
    budget = resolve_budget(spec, latency) if spec.latency_budget_ms is not None else None
    infeasible = {}
    if budget is not None:
        from .budget import check_some_feasible, over_budget
        infeasible = over_budget(latency, budget)
        check_some_feasible(spec, latency, infeasible, budget)
    groups = [TrialGroup(t, f, s, key, group_name(spec, t, f, s), teachers[key])
              for t, f, s in spec.groups() for key in [spec.teacher_key(t, f, s)]]
    plan = SweepPlan(SweepSpec.from_dict(saved_spec(spec)), spec.experiment_dir, groups, latency, budget, infeasible)
    if spec.mode != "grid":
        plan.space = spec.space()
        return plan
    plan.cells = [{**c, **g.cell, **({} if ss is None else {"student_seed": ss})}
                  for g in groups for c in grid_cells(spec.grid) for ss in (spec.student_seeds or [None])]
    if infeasible:
        from .budget import grid_cells_within
        plan.cells, skipped = grid_cells_within(spec, plan.cells, infeasible)
        plan.skipped = len(skipped)
    return plan


def run_trials(plan: SweepPlan, tracker, resume: bool) -> int:
    """Every group's trials on Ray Tune, recorded in MLflow; returns how many configurations over the latency budget
    never trained."""
    plan.trials_dir.mkdir(exist_ok=True)
    # Tune saves its experiment state (what --resume restores) every 10 s or more by default; a trial
    # waits until it is saved before writing anything (wait_until_persisted, overlapped with its loading),
    # so save often
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # Tune's own loggers: result.json and progress.csv per trial, but not its TensorBoard files (MLflow
    # holds every metric, and tensorboardX alone takes seconds to import); 0 brings them back
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    callbacks = [CSVLoggerCallback(), JsonLoggerCallback(), _mlflow_callback(tracker, plan)]
    if plan.spec.mode == "grid":
        return _run_grid(plan, callbacks, resume)
    return _run_search(plan, callbacks, resume)


def _run_grid(plan: SweepPlan, callbacks, resume: bool) -> int:
    """Every cell once, as one Tune experiment (``tune/grid``); returns the cells skipped for the budget."""
    from ray import tune
    if plan.skipped:
        from .budget import describe
        print(f"latency budget: {plan.skipped} grid cell(s) skipped, never trained: "
              f"{describe(plan.infeasible, plan.budget)}", flush=True)
    tuner = _tuner(plan, "grid", callbacks, resume, {"cell": tune.grid_search(plan.cells)})
    _fit_all(tuner, len(plan.cells))
    return plan.skipped


def _run_search(plan: SweepPlan, callbacks, resume: bool) -> int:
    """Per group, ``num_samples`` trials proposed by Optuna (one study each, in optuna.db) and stopped early by ASHA;
    returns the configurations told to Optuna as over the latency budget (never trained)."""
    import optuna
    storage = optuna.storages.RDBStorage(f"sqlite:///{plan.exp_dir / 'optuna.db'}")
    saved = 0
    for group in plan.groups:
        study = f"{plan.spec.name}-{group.name}"
        tuner = _tuner(plan, group.name, callbacks, resume, {"cell": group.cell},
                       search_alg=_searcher(plan, group, storage, study), scheduler=_scheduler(plan.spec),
                       num_samples=plan.spec.num_samples)
        _fit_all(tuner, plan.spec.num_samples)
        close_orphan_optuna_trials(storage, study)
        saved += count_infeasible(storage, study)
    return saved


def _searcher(plan: SweepPlan, group: TrialGroup, storage, study: str):
    """The group's OptunaSearch: TPE (NSGA-II on dev score and latency with a budget) unless the spec names one."""
    from ray.tune.search.optuna import OptunaSearch

    from .samplers import SAMPLERS
    spec = plan.spec
    two = plan.budget is not None   # latency becomes the second objective
    kind = spec.searcher if spec.searcher != "auto" else ("nsga2" if two else "tpe")
    sampler = SAMPLERS[kind](seed=group.seed)      # picklable by Tune (Optuna 5.1's NSGA-II holds a lock)
    common = dict(space=DefineByRun(plan.space, spec.base), metric=["primary", "latency_ms"] if two else "primary",
                  mode=["max", "min"] if two else "max", sampler=sampler, study_name=study, storage=storage)
    if not two:
        return OptunaSearch(**common)
    # configurations over the budget: told to Optuna as infeasible, never trained (.budget)
    from .budget import ArchitectureKey, BudgetedOptunaSearch
    return BudgetedOptunaSearch(**common, infeasible=plan.infeasible, budget=plan.budget,
                                key=ArchitectureKey(spec, group.task, group.fraction, group.seed))


def _scheduler(spec: SweepSpec):
    """ASHA over the evals of a trial: at most the epochs' evals (steps-based evals: up to 1000)."""
    from ray.tune.schedulers import ASHAScheduler

    from ..core.defaults import MAX_EPOCHS
    epochs = spec.base.get("epochs") or MAX_EPOCHS     # unset: step-aware, at most MAX_EPOCHS evals
    max_t = max(1, math.ceil(epochs)) if not spec.base.get("eval_steps") else 1000
    return ASHAScheduler(metric="primary", mode="max", max_t=max_t, grace_period=min(spec.grace_period, max_t),
                         reduction_factor=spec.reduction_factor)


def finish(plan: SweepPlan, tracker, saved: int) -> dict[str, Any]:
    """The summary (summary.json); with a latency budget also what it saved and the best student within it per
    task, exported (select_under_budget)."""
    summary = summarize(plan.exp_dir, tracker)
    if plan.budget is None:
        return summary
    summary["trials_saved_by_budget"] = saved
    summary["over_budget"] = plan.infeasible
    print(f"latency budget {plan.budget:g} ms: {saved} configuration(s) over it were never trained", flush=True)
    tracker.flush()
    summary["latency_budget_ms"] = plan.budget
    summary["selection"] = select_under_budget(plan.spec, plan.exp_dir, tracker.uri, plan.budget)
    write_json_atomic(plan.exp_dir / "summary.json", summary)
    return summary


def _drop_tune_restore_hint(record) -> bool:
    """A logging filter: False for Tune's restore hint (mixkd says how to continue: --resume)."""
    return "Resume experiment with" not in record.getMessage()


def _fit_all(tuner, expected: int):
    """Tuner.fit(), raising KeyboardInterrupt when Ctrl+C ended it early.

    Tune catches SIGINT itself and returns normally, which must not look like a finished sweep.
    In the main thread tune.run swaps in its own SIGINT handler and puts the original back only
    when interrupted (ray/tune/tune.py, _setup_signal_catching); elsewhere count the ended trials.
    """
    import logging
    import signal
    import threading
    # Tune's own "Resume experiment with: Tuner.restore(...)" would compete with mixkd's --resume hint
    logging.getLogger("ray.tune.tune").addFilter(_drop_tune_restore_hint)
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT)
    grid = tuner.fit()
    interrupted = main and signal.getsignal(signal.SIGINT) is before
    if main:
        signal.signal(signal.SIGINT, before)   # tune.run leaves its handler installed otherwise
    if interrupted or grid.num_terminated + grid.num_errors < expected:
        raise KeyboardInterrupt("the sweep was interrupted before every trial ended")
    return grid


def close_orphan_optuna_trials(storage, study_name: str) -> int:
    """After a group's trials have all ended, an Optuna trial still RUNNING belongs to no Tune trial: the
    searcher asked for it just before a driver crash, and the restored sweep never heard of it. Mark it
    FAIL (it was never trained), so the study holds every real trial once and nothing dangling."""
    import optuna
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0
    n = 0
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, "mixkd_end_reason",
                                           "asked for just before a driver crash; never ran")
        study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        n += 1
    if n:
        print(f"{study_name}: {n} Optuna trial(s) left RUNNING by a driver crash marked FAIL (they never ran)")
    return n


def count_infeasible(storage, study_name: str) -> int:
    """Configurations of a study told infeasible (over the latency budget) without training."""
    import optuna

    from .budget import INFEASIBLE_ATTR
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return 0
    return sum(INFEASIBLE_ATTR in t.user_attrs for t in study.get_trials(deepcopy=False))


def resolve_budget(spec: SweepSpec, latency: dict) -> float:
    """The latency budget in ms: the spec's number, or for ``auto`` half the fastest teacher's latency at the
    spec's percentile and batch size (as measured before the trials; a teacher's latency key is its task's)."""
    if spec.latency_budget_ms != "auto":
        return float(spec.latency_budget_ms)
    t = [latency[k]["objective_ms"] for k in {teacher_latency_key(task) for task, _, _ in spec.groups()}
         if k in latency]
    if not t:
        raise UsageError("latency_budget_ms auto needs the teacher's latency; keep measure_latency on")
    return round(min(t) / 2, 3)


def select_under_budget(spec: SweepSpec, exp_dir: Path, uri: str, budget: float) -> list[dict]:
    """Per task: the most accurate student configuration (mean over seeds) within the latency budget,
    exported to ``<experiment>/selected-<task>-<budget>ms`` (mixkd.deploy.selection.select). A task where no
    configuration meets the budget gets the one-line reason instead."""
    import shutil

    from ..deploy.selection import select
    out = []
    for task in spec.tasks:
        dest = exp_dir / f"selected-{task}-{budget:g}ms"
        if dest.exists():   # a resumed sweep selects again from all its trials
            shutil.rmtree(dest)
        try:
            from ..deploy.formats import parse_formats
            device = "cuda" if spec.gpus_per_trial > 0 else "cpu"
            sel = select(uri, budget, dest, experiment=spec.experiment_name or spec.name, task=task,
                         formats=parse_formats(spec.select_formats, device), data_dir=spec.data_dir,
                         max_eval_samples=spec.base.get("max_eval_samples"), allow_chance=spec.select_allow_chance,
                         percentile=spec.latency_percentile, batch_size=spec.latency_batch_size,
                         seq_len=spec.latency_seq_len, device="cuda" if spec.gpus_per_trial > 0 else "cpu")
            ch = sel["chosen"]
            out.append({"task": task, "out": str(dest), "label": ch.get("label"), "score": ch.get("score"),
                        "score_std": ch.get("score_std"), "latency_ms": ch.get("latency_ms"),
                        "speedup_vs_teacher": sel.get("speedup_vs_teacher"), "best_run_id": ch.get("best_run_id")})
        except UsageError as e:
            out.append({"task": task, "error": str(e)})
    return out
