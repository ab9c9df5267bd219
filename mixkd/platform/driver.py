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
                      prepare_teachers)
from .search_space import DefineByRun, build_space, grid_cells
from .spec import CONFIG_FIELDS, SweepSpec, preflight, saved_spec, sweep_params
from .summary import summarize
from .trial import run_trial, trial_failure_reason


# --- the Tune callback that records trials in MLflow ----------------------------------------------

def _mlflow_callback(tracker, trials_dir: Path, spec: SweepSpec, teachers: dict[str, str],
                     latency: dict[str, dict] | None = None):
    from ray.tune import Callback

    from ..tracking.writer import SweepTracker

    class MLflowSweepCallback(Callback):
        """Driver-side: one nested MLflow run per trial, metrics per eval, artifacts at the end."""

        def _cfg(self, trial) -> MixKDConfig:
            cell = dict(trial.config.get("cell", {}))
            task, fraction, seed = cell.pop("task"), cell.pop("data_fraction"), cell.pop("seed")
            knobs = {**cell, **{k: v for k, v in trial.config.items() if k in CONFIG_FIELDS}}
            teacher = teachers[spec.teacher_key(task, fraction, seed)]
            return spec.student_config(task, fraction, seed, teacher, str(trials_dir / trial.trial_id), **knobs)

        def on_trial_start(self, iteration, trials, trial, **info):
            cfg = self._cfg(trial)
            tracker.child(trial.trial_id, cfg, role="trial", name=f"trial {trial.trial_id}")
            lat = (latency or {}).get(latency_key(cfg))
            if lat:
                tracker.submit(SweepTracker.log_latency, trial.trial_id, lat["metrics"], lat["tags"])

        def on_trial_result(self, iteration, trials, trial, result, **info):
            tracker.child(trial.trial_id, self._cfg(trial), role="trial")   # no-op once created
            tracker.log_eval(trial.trial_id, result)

        def on_trial_complete(self, iteration, trials, trial, **info):
            tracker.child(trial.trial_id, self._cfg(trial), role="trial")
            out = trials_dir / trial.trial_id
            finished = (out / "metrics.json").is_file()
            tracker.finish(trial.trial_id, out, status="FINISHED" if finished else "KILLED",
                           reason=None if finished else "stopped early by the scheduler", log_model=False)

        def on_trial_error(self, iteration, trials, trial, **info):
            tracker.child(trial.trial_id, self._cfg(trial), role="trial")
            out = trials_dir / trial.trial_id
            reason = trial_failure_reason(trial.error_file, out, trial.run_metadata.num_failures, spec.max_failures)
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


def _trainable(spec: SweepSpec, fixed: dict):
    from ray import tune
    fn = tune.with_parameters(run_trial, fixed=fixed)
    if spec.workers_per_trial == 1:
        return tune.with_resources(fn, {"CPU": spec.cpus_per_trial, "GPU": spec.gpus_per_trial})
    # the trial only drives a TorchTrainer, whose workers hold the CPUs/GPUs (env_probe §4.4)
    return tune.with_resources(fn, {"CPU": 0.01})


def _tuner(spec: SweepSpec, exp_dir: Path, group: str, fixed: dict, callbacks, resume: bool,
           param_space: dict, search_alg=None, scheduler=None, num_samples: int = 1):
    from ray import tune
    path = exp_dir / "tune" / group
    trainable = _trainable(spec, fixed)
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
        run_config=tune.RunConfig(name=group, storage_path=str(exp_dir / "tune"), callbacks=callbacks,
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
    :class:`CheckedSweep` (the CLI checks before it connects to Ray), or a spec, checked here."""
    from ..tracking.writer import BackgroundTracker

    checked = spec if isinstance(spec, CheckedSweep) else check_sweep(spec, resume)
    spec, resume, uri = checked.spec, checked.resume, checked.tracking_uri
    exp_dir = spec.experiment_dir
    spec_file = exp_dir / "sweep.yaml"
    from ..core.data import announce_data_source
    for source, task in checked.sources:
        announce_data_source(source, task)
    exp_dir.mkdir(parents=True, exist_ok=True)
    if not spec_file.is_file():
        spec_file.write_text(yaml.safe_dump(saved_spec(spec), sort_keys=False))
    tracker = BackgroundTracker(uri, spec.experiment_name or spec.name, sweep_id=str(exp_dir),
                                artifact_dir=exp_dir / "mlartifacts", sweep_params=sweep_params(spec))
    prepare_augmentations(spec, exp_dir, tracker)   # +BT files first (sets base.augment_dir); no-op without BT
    teachers = prepare_teachers(spec, exp_dir, tracker)
    prepare_teacher_outputs(spec, teachers)   # kd/pkd: the teacher on the training rows once, not once per trial
    latency = measure_latencies(spec, exp_dir, teachers) if spec.measure_latency else {}
    if latency:
        from ..tracking.writer import SweepTracker
        for task, fraction, seed in spec.groups():
            tcfg = spec.teacher_config(task, fraction, seed, teachers[spec.teacher_key(task, fraction, seed)])
            lat = latency[latency_key(tcfg, "teacher")]
            tracker.submit(SweepTracker.log_latency, f"teacher-{spec.teacher_key(task, fraction, seed)}",
                           lat["metrics"], lat["tags"])
    if tracker.failed():   # the store opens on the writer thread meanwhile (see BackgroundTracker)
        tracker.close("FAILED", quiet=True)
        from ..tracking.store import redact_uri
        raise UsageError(f"MLflow store {redact_uri(uri)}: {tracker.failed()[:300]}")
    # the budget decides what trains: an architecture over it in its fastest considered format never does
    budget = resolve_budget(spec, latency, teachers) if spec.latency_budget_ms is not None else None
    infeasible = {}
    if budget is not None:
        from .budget import check_some_feasible, over_budget
        infeasible = over_budget(latency, budget)
        check_some_feasible(spec, latency, infeasible, budget)
    saved = 0
    trials_dir = exp_dir / "trials"
    trials_dir.mkdir(exist_ok=True)
    fixed = {"spec": saved_spec(spec), "trials_dir": str(trials_dir), "teachers": teachers,
             "train_storage": str(exp_dir / "train"), "latency": latency, "tune_dir": str(exp_dir / "tune")}
    # Tune saves its experiment state (what --resume restores) every 10 s or more by default; a trial
    # waits until it is saved before writing anything (wait_until_persisted, overlapped with its loading),
    # so save often
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # Tune's own loggers: result.json and progress.csv per trial, but not its TensorBoard files (MLflow
    # holds every metric, and tensorboardX alone takes seconds to import); 0 brings them back
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    callbacks = [CSVLoggerCallback(), JsonLoggerCallback(),
                 _mlflow_callback(tracker, trials_dir, spec, teachers, latency)]
    status = "FAILED"
    try:
        if spec.mode == "grid":
            cells = [{**c, "task": t, "data_fraction": f, "seed": s, **({} if ss is None else {"student_seed": ss})}
                     for (t, f, s) in spec.groups() for c in grid_cells(spec.grid)
                     for ss in (spec.student_seeds or [None])]
            if infeasible:
                from .budget import describe, grid_cells_within
                cells, skipped = grid_cells_within(spec, cells, infeasible)
                saved = len(skipped)
                if skipped:
                    print(f"latency budget: {len(skipped)} grid cell(s) skipped, never trained: "
                          f"{describe(infeasible, budget)}", flush=True)
            from ray import tune
            tuner = _tuner(spec, exp_dir, "grid", fixed, callbacks, resume, {"cell": tune.grid_search(cells)})
            _fit_all(tuner, len(cells))
        else:
            import optuna
            from ray.tune.schedulers import ASHAScheduler
            from ray.tune.search.optuna import OptunaSearch

            from .samplers import SAMPLERS
            space = build_space(spec.search_space, spec.base)
            storage = optuna.storages.RDBStorage(f"sqlite:///{exp_dir / 'optuna.db'}")
            from ..core.defaults import MAX_EPOCHS
            epochs = spec.base.get("epochs") or MAX_EPOCHS     # unset: step-aware, at most MAX_EPOCHS evals
            max_t = max(1, math.ceil(epochs)) if not spec.base.get("eval_steps") else 1000
            for task, fraction, seed in spec.groups():
                group = f"search-{spec.teacher_key(task, fraction, seed)}"
                two = spec.latency_budget_ms is not None   # latency becomes the second objective
                kind = spec.searcher if spec.searcher != "auto" else ("nsga2" if two else "tpe")
                sampler = SAMPLERS[kind](seed=seed)      # picklable by Tune (Optuna 5.1's NSGA-II holds a lock)
                common = dict(space=DefineByRun(space, spec.base),
                              metric=["primary", "latency_ms"] if two else "primary",
                              mode=["max", "min"] if two else "max", sampler=sampler,
                              study_name=f"{spec.name}-{group}", storage=storage)
                if two:   # configurations over the budget: told to Optuna as infeasible, never trained (.budget)
                    from .budget import ArchitectureKey, BudgetedOptunaSearch
                    searcher = BudgetedOptunaSearch(**common, infeasible=infeasible, budget=budget,
                                                    key=ArchitectureKey(spec, task, fraction, seed))
                else:
                    searcher = OptunaSearch(**common)
                scheduler = ASHAScheduler(metric="primary", mode="max", max_t=max_t,
                                          grace_period=min(spec.grace_period, max_t),
                                          reduction_factor=spec.reduction_factor)
                cell = {"task": task, "data_fraction": fraction, "seed": seed}
                tuner = _tuner(spec, exp_dir, group, fixed, callbacks, resume, {"cell": cell},
                               search_alg=searcher, scheduler=scheduler, num_samples=spec.num_samples)
                _fit_all(tuner, spec.num_samples)
                close_orphan_optuna_trials(storage, f"{spec.name}-{group}")
                saved += count_infeasible(storage, f"{spec.name}-{group}")
        summary = summarize(exp_dir, tracker)
        if budget is not None:
            summary["trials_saved_by_budget"] = saved
            summary["over_budget"] = infeasible
            print(f"latency budget {budget:g} ms: {saved} configuration(s) over it were never trained", flush=True)
            tracker.flush()
            summary["latency_budget_ms"] = budget
            summary["selection"] = select_under_budget(spec, exp_dir, tracker.uri, budget)
            write_json_atomic(exp_dir / "summary.json", summary)
        status = "FINISHED"
        return summary
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.close(status)


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


def resolve_budget(spec: SweepSpec, latency: dict, teachers: dict[str, str]) -> float:
    """The latency budget in ms: the spec's number, or for ``auto`` half the fastest teacher's latency at the
    spec's percentile and batch size (as measured before the trials)."""
    if spec.latency_budget_ms != "auto":
        return float(spec.latency_budget_ms)
    t = [latency[k]["objective_ms"] for k in {latency_key(spec.teacher_config(task, f, s, teachers[
        spec.teacher_key(task, f, s)]), "teacher") for task, f, s in spec.groups()} if k in latency]
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
