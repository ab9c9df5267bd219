"""Layer 6, platform: Ray. The Ray Train function, the Tune + Optuna search space, and sweeps (spec,
preparation of teachers, +BT files and latencies, the trial function, the Tune driver, the summary).
Imports every layer below it; nothing below imports Ray.

Sweeps: Ray Tune (+ OptunaSearch and ASHA, or a grid) over MixKD students, recorded in MLflow. The modules:

    spec.py     SweepSpec (what to sweep, the configs of its runs), preflight, saved_spec, sweep_params
    prepare.py  before any trial, as Ray tasks: +BT files, teachers, latencies
    trial.py    run_trial (the Tune function of every trial), trial_failure_reason
    driver.py   run_sweep: the Tune driver, its MLflow callback, the selection under a latency budget
    summary.py  summarize (summary.json), format_summary
    presets/    the named sweep presets (``mixkd sweep --preset NAME``), package data

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
"""
