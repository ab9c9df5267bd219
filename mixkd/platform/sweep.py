"""Sweeps: Ray Tune (+ OptunaSearch and ASHA, or a grid) over MixKD students, recorded in MLflow.

Layout of an experiment folder (``<storage_path>/<name>/``)::

    sweep.yaml          the resolved sweep spec (a resumed sweep must match it)
    teachers/<key>/     one fine-tuned teacher per (task, data fraction, seed), a normal mixkd run dir
    trials/<trial_id>/  one mixkd run dir per trial (a resumed trial continues from its checkpoint)
    tune/<group>/       Ray Tune's experiment state (Tuner.restore reads it on --resume)
    optuna.db           Optuna's study storage (one study per search group)
    mlflow.db           the default MLflow tracking store; mlartifacts/ its artifacts
    summary.json        best trial per (task, variant, student depth), written at the end

Single-worker trials run the core trainer in-process inside the Tune function (no Ray Train
start-up cost); multi-worker trials launch a TorchTrainer (see :mod:`mixkd.platform.ray_train`) whose
results reach Tune through TuneReportCallback.

The code lives in these modules; this one re-exports their public names, so ``from
mixkd.platform.sweep import run_sweep`` keeps working:

    spec.py     SweepSpec (what to sweep, the configs of its runs), preflight, saved_spec, sweep_params
    prepare.py  before any trial, as Ray tasks: +BT files, teachers, latencies
    trial.py    run_trial (the Tune function of every trial), trial_failure_reason
    driver.py   run_sweep: the Tune driver, its MLflow callback, the selection under a latency budget
    summary.py  summarize (summary.json), format_summary

Private helpers (``_finetune_task``, ``_tuner``, ...) are not re-exported: patch them where they are
defined (e.g. ``mixkd.platform.prepare._finetune_task``), since that is where they are looked up.
"""
from .driver import close_orphan_optuna_trials, max_concurrent, run_sweep, select_under_budget
from .prepare import latency_key, measure_latencies, prepare_augmentations, prepare_teachers
from .spec import CONFIG_FIELDS, STUDENT_ONLY, SweepSpec, group_name, preflight, saved_spec, sweep_params
from .summary import format_summary, summarize
from .trial import FAILED_MARKER, run_trial, trial_failure_reason, tune_metrics, wait_until_persisted

__all__ = [
    "CONFIG_FIELDS", "FAILED_MARKER", "STUDENT_ONLY", "SweepSpec", "close_orphan_optuna_trials", "format_summary",
    "group_name", "latency_key", "max_concurrent", "measure_latencies", "preflight", "prepare_augmentations",
    "prepare_teachers", "run_sweep", "run_trial", "saved_spec", "select_under_budget", "summarize", "sweep_params",
    "trial_failure_reason", "tune_metrics", "wait_until_persisted",
]
