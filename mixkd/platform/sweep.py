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
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ..core.config import MixKDConfig, check_writable_dir, load_yaml, validate
from ..core.atomic import write_json_atomic
from ..core.errors import SweepFailed, UsageError
from .search_space import DefineByRun, build_space, grid_cells
from ..core.tasks import get_task

CONFIG_FIELDS = {f.name for f in fields(MixKDConfig)}
# Teacher runs take the training knobs from the spec's `teacher:` section, never student knobs.
STUDENT_ONLY = {"teacher", "student_model", "student_layers", "layer_strategy", "variant", "alpha", "mixup_ratio",
                "w_mle", "a_sm", "a_tmkd", "a_kd", "distance", "temperature", "mixup_padding", "mixup_token_types",
                "allow_subset_mismatch", "pkd_beta", "pkd_layer_map",
                # +BT is a student setting (teachers are shared by +BT and plain cells): see prepare_augmentations
                "augment", "bt_pivot", "bt_forward_model", "bt_backward_model", "bt_num_beams", "bt_do_sample",
                "bt_top_p", "bt_temperature", "augment_dir"}


@dataclass
class SweepSpec:
    """What to sweep: loaded from a preset YAML, overridden by glue_sweep.py flags."""
    name: str = "mixkd-sweep"
    mode: str = "search"                      # search (Optuna + ASHA) or grid (every cell once)
    tasks: list = field(default_factory=lambda: ["sst2"])
    teacher_model: str = "minilm-l6"
    seeds: list = field(default_factory=lambda: [42])
    data_fractions: list = field(default_factory=lambda: [1.0])
    num_samples: int = 8                      # search: trials per (task, data fraction, seed) group
    base: dict = field(default_factory=dict)      # config fields fixed for every student trial
    teacher: dict = field(default_factory=dict)   # config fields of the teacher fine-tune
    search_space: dict = field(default_factory=dict)  # overrides of mixkd.platform.search_space.DEFAULT_SPACE
    grid: dict = field(default_factory=dict)      # grid mode: {config field: [values]}
    searcher: str = "auto"                    # auto (TPE; NSGA-II with a latency budget), tpe, nsga2, random
    measure_latency: bool = True              # measure each student depth (and the teacher) once, before trials
    latency_batch_sizes: list = field(default_factory=lambda: [1, 32])
    latency_seq_len: int = 128
    latency_threads: int | None = None        # default: every CPU of the node that measures
    latency_budget_ms: float | None = None    # makes latency a second objective and picks the best student
    latency_percentile: str = "p90"           # of the budget and the objective
    latency_batch_size: int = 1               # of the budget and the objective
    latency_protocol: dict = field(default_factory=dict)   # warmup, min_iters, min_seconds (mixkd.latency)
    grace_period: int = 1                     # ASHA: evals before a trial can be stopped
    reduction_factor: int = 2
    workers_per_trial: int = 1
    cpus_per_trial: float = 2.0
    gpus_per_trial: float = 0.0
    max_failures: int = 1                     # retries of a crashed trial (from its checkpoint)
    max_concurrent_trials: int | None = None  # default: what the cluster's current resources fit
    storage_path: str = "runs/sweeps"
    tracking_uri: str | None = None
    experiment_name: str | None = None
    data_dir: str | None = None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "SweepSpec":
        return cls.from_dict(load_yaml(path), source=str(path))

    @classmethod
    def from_dict(cls, d: dict, source: str = "sweep") -> "SweepSpec":
        known = {f.name for f in fields(cls)}
        for k in d:
            if k not in known:
                import difflib
                hint = difflib.get_close_matches(k, known, n=1)
                raise UsageError(f"{source}: unknown key '{k}'" + (f"; did you mean '{hint[0]}'?" if hint else ""))
        return cls(**d)

    @property
    def experiment_dir(self) -> Path:
        if "://" in self.storage_path:
            raise UsageError(f"--storage-path {self.storage_path}: mixkd keeps teachers and trial folders on a "
                             f"filesystem shared by all nodes; mount the bucket (e.g. NFS, EFS, s3fs) and pass its path")
        return Path(self.storage_path).expanduser().resolve() / self.name

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> "SweepSpec":
        def bad(msg):
            raise UsageError(msg)
        if self.mode not in ("search", "grid"):
            bad(f"mode {self.mode!r} is invalid; use search or grid")
        if not self.tasks:
            bad("tasks is empty; name at least one GLUE task")
        self.tasks = [get_task(t).name for t in self.tasks]
        if not self.seeds or not all(isinstance(s, int) for s in self.seeds):
            bad(f"seeds must be a non-empty list of integers, got {self.seeds!r}")
        for f in self.data_fractions:
            if not isinstance(f, (int, float)) or not 0 < f <= 1:
                bad(f"data fraction {f!r} is invalid; use values in (0, 1]")
        if self.num_samples < 1:
            bad(f"num_samples {self.num_samples} is invalid; run at least 1 trial")
        if self.workers_per_trial < 1 or self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            bad("workers_per_trial must be >= 1, cpus_per_trial > 0 and gpus_per_trial >= 0")
        if self.max_concurrent_trials is not None and self.max_concurrent_trials < 1:
            bad(f"max_concurrent_trials {self.max_concurrent_trials} is invalid; use >= 1 or leave it unset")
        if self.searcher not in ("auto", "tpe", "nsga2", "random"):
            bad(f"searcher {self.searcher!r} is invalid; use auto, tpe, nsga2 or random")
        if self.latency_budget_ms is not None:
            if not isinstance(self.latency_budget_ms, (int, float)) or not self.latency_budget_ms > 0:
                bad(f"--latency-budget-ms {self.latency_budget_ms} is invalid; use a positive number of milliseconds")
            if not self.measure_latency:
                bad("latency_budget_ms needs measure_latency: true")
        if self.latency_percentile not in ("p50", "p90", "p99"):
            bad(f"latency_percentile {self.latency_percentile!r} is invalid; use p50, p90 or p99")
        if (not self.latency_batch_sizes or not all(isinstance(b, int) and b > 0 for b in self.latency_batch_sizes)
                or not isinstance(self.latency_seq_len, int) or self.latency_seq_len < 1):
            bad("latency_batch_sizes must be positive integers and latency_seq_len a positive integer")
        unknown = set(self.latency_protocol) - {"warmup", "min_iters", "min_seconds"}
        if unknown:
            bad(f"latency_protocol: unknown key(s) {', '.join(sorted(unknown))}; use warmup, min_iters, min_seconds")
        if self.latency_batch_size not in self.latency_batch_sizes:
            bad(f"latency_batch_size {self.latency_batch_size} is not among latency_batch_sizes "
                f"{self.latency_batch_sizes}; add it there")
        for section in ("base", "teacher"):
            for k in getattr(self, section):
                if k not in CONFIG_FIELDS:
                    import difflib
                    hint = difflib.get_close_matches(k, CONFIG_FIELDS, n=1)
                    bad(f"{section}: '{k}' is not a config field" + (f"; did you mean '{hint[0]}'?" if hint else ""))
        probe = self.student_config(self.tasks[0], self.data_fractions[0], self.seeds[0], "teacher", "out")
        validate(probe, "distill")
        if self.mode == "search":
            build_space(self.search_space, self.base)
        else:
            if not self.grid:
                bad("grid mode needs a grid: section, e.g. {variant: [ft, sm+tmkd], student_layers: [2, 3]}")
            for cell in grid_cells(self.grid):
                validate(probe.replace(**cell), "distill")
        return self

    # --- configs of the runs -----------------------------------------------------------------
    def teacher_key(self, task: str, fraction: float, seed: int) -> str:
        return f"{task}-f{fraction:g}-s{seed}"

    def teacher_config(self, task: str, fraction: float, seed: int, output_dir: str) -> MixKDConfig:
        base = {k: v for k, v in self.base.items() if k not in STUDENT_ONLY}
        return MixKDConfig.from_dict({**base, **self.teacher, "task": task, "model": self.teacher_model,
                                      "data_fraction": fraction, "data_seed": seed, "seed": seed,
                                      "data_dir": self.data_dir, "output_dir": output_dir, "progress": False})

    def student_config(self, task: str, fraction: float, seed: int, teacher_dir: str, output_dir: str,
                       **knobs) -> MixKDConfig:
        return MixKDConfig.from_dict({**self.base, **knobs, "task": task, "data_fraction": fraction,
                                      "data_seed": seed, "seed": seed, "teacher": teacher_dir,
                                      "data_dir": self.data_dir, "output_dir": output_dir, "progress": False})

    def groups(self) -> list[tuple[str, float, int]]:
        return [(t, f, s) for t in self.tasks for f in self.data_fractions for s in self.seeds]


def _max_student_layers(spec: SweepSpec) -> int | None:
    """The deepest truncated student the sweep can train (None: every student is a --student-model)."""
    depths = []
    for c in _student_knobs(spec):
        knobs = {**spec.base, **c}
        if not knobs.get("student_model"):
            depths.append(int(knobs.get("student_layers", MixKDConfig.student_layers)))
    return max(depths) if depths else None


def _teacher_depth(name: str) -> int | None:
    """Encoder layers of a local (or packaged) teacher backbone from its config.json; None for a hub id."""
    from ..core.models import resolve_model
    path = Path(resolve_model(name))
    cfg = path / "config.json"
    if not cfg.is_file():
        return None
    c = json.loads(cfg.read_text())
    return c.get("num_hidden_layers") or c.get("n_layers") or c.get("num_layers")


def preflight(spec: SweepSpec) -> None:
    """What a sweep would otherwise find out only after Ray has started and a teacher has trained: the
    storage folder cannot be created, a task's GLUE files are missing, a student is deeper than its
    teacher. One UsageError (one line, exit 2), nothing written."""
    check_writable_dir(spec.experiment_dir, "--storage-path")
    from ..core.data import resolve_data_dir
    data_dir = resolve_data_dir(spec.data_dir)
    if data_dir is None and os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("", "0"):
        raise UsageError("no GLUE folder (--data-dir or $GLUE_DIR) and HF_DATASETS_OFFLINE is set, so the hub "
                         "cannot be used either; pass --data-dir PATH/glue_data")
    for t in spec.tasks:
        task = get_task(t)
        if data_dir is not None:
            for name in ("train.tsv", *(d.tsv_file for d in task.dev_splits)):
                f = data_dir / task.folder / name
                if not f.is_file():
                    raise UsageError(f"--data-dir {data_dir}: missing {task.folder}/{name} for task {task.name}; put "
                                     f"the task's GLUE TSV files there or drop the task")
    deepest, depth = _max_student_layers(spec), _teacher_depth(spec.teacher_model)
    if deepest is not None and depth is not None and deepest > depth:
        raise UsageError(f"student_layers {deepest} is invalid: the teacher {spec.teacher_model} has {depth} layers; "
                         f"keep student depths within 1..{depth}")


# --- trials -------------------------------------------------------------------------------------

def tune_metrics(row: dict[str, Any]) -> dict[str, Any]:
    """A log.jsonl eval row as a Tune result (flat, numeric)."""
    return {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


FAILED_MARKER = "failed.json"   # a trial that stopped on a deterministic error (NaN loss): never retried


def group_name(spec: SweepSpec, task: str, fraction: float, seed: int) -> str:
    """The Tune experiment (folder ``tune/<group>``) that runs the trials of this (task, fraction, seed)."""
    return "grid" if spec.mode == "grid" else f"search-{spec.teacher_key(task, fraction, seed)}"


def wait_until_persisted(tune_dir: Path, trial_id: str, timeout: float = 120.0) -> bool:
    """Wait until Tune's saved experiment state (``tune/<group>/experiment_state-*.json``) lists the trial.

    A trial writes nothing before its driver has persisted it: if the driver dies, ``--resume``
    (Tuner.restore) then continues this very trial instead of leaving its folder behind and running
    another in its place (Tune saves its state every TUNE_GLOBAL_CHECKPOINT_S seconds; run_sweep
    sets 1). After ``timeout`` the trial goes on anyway (False)."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        for state in tune_dir.glob("experiment_state-*.json"):
            try:
                if trial_id in state.read_text():
                    return True
            except OSError:   # replaced while being read
                pass
        if time.monotonic() > deadline:
            print(f"trial {trial_id}: not in Tune's saved state after {timeout:.0f} s; starting anyway", flush=True)
            return False
        time.sleep(0.25)


def run_trial(config: dict[str, Any], fixed: dict[str, Any]) -> None:
    """One Tune trial: a student run in ``trials/<trial_id>``, resumed from its checkpoint if it has one.

    Nothing is written to the trial folder before Tune has saved the trial in its experiment state
    (wait_until_persisted); the wait runs in a thread while the trial imports torch and loads its
    models and data, so it costs the trial no time of its own."""
    import threading

    from ray import tune

    from ..core.errors import NonFiniteLossError

    trial_id = tune.get_context().get_trial_id()
    cell = dict(config.get("cell", {}))
    task, fraction, seed = cell.pop("task"), cell.pop("data_fraction"), cell.pop("seed")
    knobs = {**cell, **{k: v for k, v in config.items() if k in CONFIG_FIELDS}}
    spec = SweepSpec.from_dict(fixed["spec"])
    out = Path(fixed["trials_dir"]) / trial_id
    persisted = threading.Event()

    def wait() -> None:
        try:
            wait_until_persisted(Path(fixed["tune_dir"]) / group_name(spec, task, fraction, seed), trial_id)
        finally:
            persisted.set()
    if fixed.get("tune_dir"):
        threading.Thread(target=wait, name="mixkd-wait-persisted", daemon=True).start()
    else:
        persisted.set()

    from ..core import faults
    from ..core.trainer import append_event, read_jsonl
    teacher_dir = fixed["teachers"][spec.teacher_key(task, fraction, seed)]
    cfg = spec.student_config(task, fraction, seed, teacher_dir, str(out), **knobs)
    lat = fixed.get("latency", {}).get(latency_key(cfg))
    extra = {"latency_ms": lat["objective_ms"]} if lat else {}   # NSGA-II's second objective

    def report(row: dict[str, Any]) -> None:
        tune.report({**tune_metrics(row), **extra})

    # reading is allowed before the trial is persisted; the first write waits (see gate below)
    if (out / FAILED_MARKER).is_file():   # a retry (or --resume) of a deterministic failure: fail again at once
        raise NonFiniteLossError.from_record(json.loads((out / FAILED_MARKER).read_text()))
    if (out / "metrics.json").is_file():   # finished before a driver crash: report its record again
        for row in read_jsonl(out / "log.jsonl"):
            report(row)
        return
    ckpts = out / "checkpoints"   # a checkpoint moved aside by a crash mid-save counts (the run repairs it)
    resume = any((ckpts / d / "trainer_state.pt").is_file() for d in ("last", "last.old"))
    cfg = cfg.replace(resume=resume, overwrite=not resume)

    def gate() -> None:
        """Called before the run's first write: wait until the trial is persisted, then record the attempt."""
        persisted.wait()
        import ray
        ctx = ray.get_runtime_context()
        append_event(out, "attempt", trial_id=trial_id, node_id=ctx.get_node_id(),
                     node_ip=ray.util.get_node_ip_address())
        if resume:   # rows already logged were reported before the interruption; report them again for ASHA
            for row in read_jsonl(out / "log.jsonl"):
                report(row)

    try:
        if spec.workers_per_trial == 1:
            from .ray_train import FinalReportLast
            from ..jobs.run import distill
            reporter = FinalReportLast(lambda row, ckpt: report(row))
            distill(cfg, callbacks=[reporter], before_write=gate)
            faults.before_final_report()
            reporter.flush()
        else:
            from .ray_train import fit_distributed
            gate()
            fit_distributed(cfg, spec, name=f"train-{trial_id}", storage_path=fixed["train_storage"],
                            extra_metrics=extra)
    except NonFiniteLossError as e:   # deterministic: a retry from the checkpoint would hit it again
        write_json_atomic(out / FAILED_MARKER, e.record())
        raise


# --- latency: each architecture once, on a whole node, before the trials --------------------------

def latency_key(cfg: MixKDConfig, role: str = "trial") -> str:
    """Runs with the same key have the same architecture (so the same latency)."""
    if role == "teacher":
        return f"{cfg.task}/teacher"
    return f"{cfg.task}/" + (f"model:{cfg.student_model}" if cfg.student_model else f"k{cfg.student_layers}")


def _student_knobs(spec: SweepSpec) -> list[dict]:
    """Every architecture-deciding knob set a student of this sweep can have."""
    if spec.mode == "grid":
        cells = grid_cells(spec.grid) if spec.grid else [{}]
        return [{k: c[k] for k in ("student_layers", "student_model") if k in c} for c in cells]
    d = build_space(spec.search_space, spec.base).get("student_layers")
    if d is None:
        return [{}]
    values = d["values"] if d["type"] == "choice" else range(int(d["low"]), int(d["high"]) + 1)
    return [{"student_layers": int(v)} for v in values]


def _latency_task(jobs: list[dict], batch_sizes: list[int], seq_len: int, device: str, threads: int,
                  protocol: dict) -> dict:
    from ..deploy.latency import cached_latencies
    out = {}
    for job in jobs:
        res = cached_latencies(job["source"], batch_sizes, seq_len, device, threads=threads,
                               student_layers=job["layers"], num_labels=job["num_labels"], **protocol)
        out[job["key"]] = {str(b): r for b, r in res.items()}
    return out


def measure_latencies(spec: SweepSpec, exp_dir: Path, teachers: dict[str, str]) -> dict[str, dict]:
    """Latency of the teacher and of every student architecture per task, measured as one Ray task that
    reserves a whole node (every CPU, and its GPUs for a GPU sweep), so nothing runs beside it. The
    results are cached by architecture and device (mixkd.latency), so a resumed or later sweep on the
    same hardware measures nothing again. Returns {latency key: {"metrics", "tags", "objective_ms"}}."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from ..deploy.latency import mlflow_metrics, mlflow_tags
    from ..core.tasks import get_task
    jobs = {}
    for task, fraction, seed in spec.groups():
        tdir = teachers[spec.teacher_key(task, fraction, seed)]
        n = get_task(task).num_labels
        tcfg = spec.teacher_config(task, fraction, seed, tdir)
        jobs.setdefault(latency_key(tcfg, "teacher"), {"source": tdir, "layers": None, "num_labels": n})
        for knobs in _student_knobs(spec):
            cfg = spec.student_config(task, fraction, seed, tdir, "out", **knobs)
            src, layers = (cfg.student_model, None) if cfg.student_model else (tdir, cfg.student_layers)
            jobs.setdefault(latency_key(cfg), {"source": src, "layers": layers, "num_labels": n})
    gpu = spec.gpus_per_trial > 0
    nodes = [nd for nd in ray.nodes() if nd.get("Alive") and (not gpu or nd["Resources"].get("GPU", 0) >= 1)]
    if not nodes:
        raise UsageError("measure_latency: no GPU node is up to measure on; start one or set measure_latency: false")
    node = max(nodes, key=lambda nd: nd["Resources"].get("CPU", 0))
    cpus = node["Resources"].get("CPU", 1)
    threads = spec.latency_threads or max(1, int(cpus))
    device = "cuda" if gpu else "cpu"
    print(f"latency: {len(jobs)} architectures on node {node['NodeManagerAddress']} ({device}, {threads} threads, "
          f"the whole node reserved)", flush=True)
    remote = ray.remote(num_cpus=cpus, num_gpus=node["Resources"].get("GPU", 0) if gpu else 0, max_retries=0,
                        scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))(_latency_task)
    raw = ray.get(remote.remote([{"key": k, **j} for k, j in jobs.items()], list(spec.latency_batch_sizes),
                                spec.latency_seq_len, device, threads, dict(spec.latency_protocol)))
    out = {}
    for key, per_batch in raw.items():
        metrics = {}
        for r in per_batch.values():
            metrics.update(mlflow_metrics(r))
        objective = per_batch[str(spec.latency_batch_size)][f"{spec.latency_percentile}_ms"]
        out[key] = {"metrics": metrics, "tags": mlflow_tags(next(iter(per_batch.values()))), "objective_ms": objective}
    write_json_atomic(exp_dir / "latency.json", raw)
    return out


# --- teachers -----------------------------------------------------------------------------------

def _finetune_task(cfg_dict: dict) -> dict:
    """A teacher fine-tune (a Ray task): continues from its checkpoint after a crash, a retry or --resume.
    Until metrics.json is written (last, atomically) the folder is an unfinished run no sweep uses."""
    import ray

    from ..jobs.run import finetune
    from ..core.trainer import append_event, repair_checkpoints
    cfg = MixKDConfig.from_dict(cfg_dict)
    out = Path(cfg.output_dir)
    append_event(out, "attempt", node_id=ray.get_runtime_context().get_node_id(),
                 node_ip=ray.util.get_node_ip_address())
    repair_checkpoints(out / "checkpoints")
    if (out / "checkpoints" / "last" / "trainer_state.pt").is_file():
        cfg = cfg.replace(resume=True)
    else:
        cfg = cfg.replace(overwrite=True)
    return finetune(cfg)


def prepare_teachers(spec: SweepSpec, exp_dir: Path, tracker=None) -> dict[str, str]:
    """Fine-tune (or reuse) one teacher per (task, fraction, seed), as Ray tasks, before any trial."""
    import ray
    teachers, pending = {}, {}
    # a teacher whose worker or node dies is retried (from its checkpoint) like a trial: max_failures times
    remote = ray.remote(num_cpus=spec.cpus_per_trial, num_gpus=spec.gpus_per_trial,
                        max_retries=spec.max_failures)(_finetune_task)
    for task, fraction, seed in spec.groups():
        key = spec.teacher_key(task, fraction, seed)
        out = exp_dir / "teachers" / key
        teachers[key] = str(out)
        cfg = spec.teacher_config(task, fraction, seed, str(out))
        if (out / "metrics.json").is_file():
            print(f"teacher {key}: reusing {out}")
        else:
            print(f"teacher {key}: fine-tuning {spec.teacher_model} -> {out}")
            pending[key] = (remote.remote(cfg.to_dict()), cfg)
    for key, (ref, cfg) in pending.items():
        try:
            ray.get(ref)
        except ray.exceptions.RayTaskError as e:   # the fine-tune raised: its one-line reason
            cause = getattr(e, "cause", None)
            if isinstance(cause, UsageError):
                raise UsageError(f"teacher {key}: {cause}") from None
            raise SweepFailed(f"teacher {key} failed ({type(cause).__name__ if cause else 'error'}: "
                              f"{str(cause or e).splitlines()[0][:300]}); its folder {teachers[key]} is "
                              f"unfinished and no trial uses it: fix the cause and rerun with --resume") from None
        except ray.exceptions.RayError as e:   # its worker or node died more often than max_failures allows
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise SweepFailed(f"teacher {key}: its worker died {spec.max_failures + 1} time(s) ({type(e).__name__}: "
                              f"{first}); the folder {teachers[key]} is unfinished and no trial uses it: rerun "
                              f"with --resume to continue it from its last checkpoint") from None
    if tracker is not None:   # record each teacher once (also one a crash left unrecorded)
        from ..tracking.writer import SweepTracker
        for task, fraction, seed in spec.groups():
            key = spec.teacher_key(task, fraction, seed)
            cfg = MixKDConfig.from_yaml(Path(teachers[key]) / "config.yaml")
            tracker.submit(SweepTracker.record_finished, f"teacher-{key}", cfg, "teacher", Path(teachers[key]),
                           name=f"teacher {key}")
    return teachers


# --- back-translation (+BT) data (issue 6) ------------------------------------------------------------

def _bt_task(cfg_dict: dict) -> str:
    from ..augment.backtranslate import bt_file_for_config
    return str(bt_file_for_config(MixKDConfig.from_dict(cfg_dict), progress=False).path)


def _bt_cells(spec: SweepSpec) -> list[dict]:
    """Knob sets of the sweep's student runs that can decide ``augment``: the grid cells, or, in search
    mode, ``augment: bt`` when the search space offers it."""
    if spec.mode == "grid":
        return grid_cells(spec.grid) if spec.grid else [{}]
    aug = build_space(spec.search_space, spec.base).get("augment")
    return [{}, {"augment": "bt"}] if aug and "bt" in (aug.get("values") or []) else [{}]


def prepare_augmentations(spec: SweepSpec, exp_dir: Path, tracker=None) -> dict[str, str]:
    """Back-translate once per (task, fraction, seed, BT settings) that a +BT student uses, as Ray tasks
    (with a trial's CPUs/GPUs) before any trial; a no-op for sweeps without ``augment: bt``.

    The files go to ``<experiment>/augment/`` (the experiment folder is on storage every node sees) unless
    ``base.augment_dir`` names another folder; ``spec.base['augment_dir']`` is set to it, so trials built
    from the spec find the files there (a cache hit) instead of generating them again. Returns
    {"<teacher key>/bt-<pivot>": path}."""
    import ray

    from ..augment.backtranslate import bt_cache_path
    aug_dir = spec.base.get("augment_dir") or str(exp_dir / "augment")
    wanted: dict[str, tuple[str, MixKDConfig]] = {}
    for task, fraction, seed in spec.groups():
        for cell in _bt_cells(spec):
            cfg = spec.student_config(task, fraction, seed, "teacher", "out", **cell).replace(augment_dir=aug_dir)
            if cfg.augment == "bt":
                path = str(bt_cache_path(cfg))
                wanted.setdefault(path, (f"{spec.teacher_key(task, fraction, seed)}/{cfg.augmentation}", cfg))
    if not wanted:
        return {}
    spec.base.setdefault("augment_dir", aug_dir)
    remote = ray.remote(num_cpus=spec.cpus_per_trial, num_gpus=spec.gpus_per_trial, max_retries=0)(_bt_task)
    pending, files = {}, {}
    for path, (key, cfg) in wanted.items():
        files[key] = path
        if Path(path).is_file():
            print(f"augment {key}: reusing {path}")
        else:
            print(f"augment {key}: back-translating -> {path}")
            pending[key] = remote.remote(cfg.to_dict())
    for key, ref in pending.items():
        try:
            ray.get(ref)
        except Exception as e:   # a RayTaskError wrapping the task's one-line UsageError
            cause = getattr(e, "cause", None)
            if isinstance(cause, UsageError):
                raise UsageError(f"augment {key}: {cause}") from None
            raise
    if tracker is not None:
        for key, path in files.items():
            meta = Path(path + ".json")
            if meta.is_file():
                from ..tracking.writer import SweepTracker
                tracker.submit(SweepTracker.log_parent_artifact, str(meta), "augment")
    return files


# --- the Tune callback that records trials in MLflow ----------------------------------------------

def trial_failure_reason(error_file: str | None, out: Path, failures: int, max_failures: int) -> str:
    """One line for ``mixkd.end_reason`` of a failed trial: the recorded NaN/inf (step and term) when
    there is one, else the last failure in Tune's error file, with how often the trial was tried."""
    if (out / FAILED_MARKER).is_file():
        try:
            return json.loads((out / FAILED_MARKER).read_text())["reason"]
        except (OSError, ValueError, KeyError):
            pass
    text = ""
    if error_file and os.path.exists(error_file):
        text = Path(error_file).read_text()
    last = text.rsplit("Failure # ", 1)[-1]
    lines = [l.strip() for l in last.splitlines()[1:] if l.strip()]
    low = last.lower()
    if "actor died" in low or "worker process has died" in low or "node" in low and "died" in low:
        import re
        kind = next((m for m in re.findall(r"ray\.exceptions\.(\w+)", last)), "ActorDiedError")
        ip = re.search(r"\bip: (\S+)", last)
        exit_detail = re.search(r"Worker exit detail: ([^.]*\.)", last)
        node = "its node died" if "node" in low and "died" in low and "worker process has died" not in low else \
            "its worker process died"
        detail = (f"the trial's process was lost: {node} ({kind}" + (f" on {ip.group(1)}" if ip else "")
                  + (f": {exit_detail.group(1)}" if exit_detail else "") + ")")
    else:
        detail = lines[-1] if lines else "error"
    return f"{detail[:1500]} (failed {failures} time(s); max_failures={max_failures})"


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


def saved_spec(spec: SweepSpec) -> dict[str, Any]:
    """The spec as written to sweep.yaml and handed to the trials: a password or token in the tracking
    URI is masked (the driver alone talks to MLflow, with the real URI)."""
    from ..tracking.writer import redact_uri
    return {**spec.to_dict(), "tracking_uri": redact_uri(spec.tracking_uri)}


def sweep_params(spec: SweepSpec) -> dict[str, Any]:
    """The parent run's MLflow params: the spec without the tracking URI; no secret is ever a param (the
    config holds none, and tokens live in the environment: MLFLOW_TRACKING_TOKEN, ...)."""
    return {k: v for k, v in spec.to_dict().items() if k != "tracking_uri"}


def run_sweep(spec: SweepSpec, resume: bool = False) -> dict[str, Any]:
    """Teachers first, then the trials of every group; returns the summary (also summary.json)."""
    from ..tracking.writer import BackgroundTracker, check_tracking_uri, default_tracking_uri

    spec.validate()
    preflight(spec)
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
    exp_dir.mkdir(parents=True, exist_ok=True)
    if not spec_file.is_file():
        spec_file.write_text(yaml.safe_dump(saved_spec(spec), sort_keys=False))
    uri = spec.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(exp_dir)
    check_tracking_uri(uri)
    tracker = BackgroundTracker(uri, spec.experiment_name or spec.name, sweep_id=str(exp_dir),
                                artifact_dir=exp_dir / "mlartifacts", sweep_params=sweep_params(spec))
    prepare_augmentations(spec, exp_dir, tracker)   # +BT files first (sets base.augment_dir); no-op without BT
    teachers = prepare_teachers(spec, exp_dir, tracker)
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
        from ..tracking.writer import redact_uri
        raise UsageError(f"MLflow store {redact_uri(uri)}: {tracker.failed()[:300]}")
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
            cells = [{**c, "task": t, "data_fraction": f, "seed": s}
                     for (t, f, s) in spec.groups() for c in grid_cells(spec.grid)]
            from ray import tune
            tuner = _tuner(spec, exp_dir, "grid", fixed, callbacks, resume, {"cell": tune.grid_search(cells)})
            _fit_all(tuner, len(cells))
        else:
            import optuna
            from ray.tune.schedulers import ASHAScheduler
            from ray.tune.search.optuna import OptunaSearch
            space = build_space(spec.search_space, spec.base)
            storage = optuna.storages.RDBStorage(f"sqlite:///{exp_dir / 'optuna.db'}")
            epochs = spec.base.get("epochs", MixKDConfig.epochs)
            max_t = max(1, math.ceil(epochs)) if not spec.base.get("eval_steps") else 1000
            for task, fraction, seed in spec.groups():
                group = f"search-{spec.teacher_key(task, fraction, seed)}"
                two = spec.latency_budget_ms is not None   # latency becomes the second objective
                kind = spec.searcher if spec.searcher != "auto" else ("nsga2" if two else "tpe")
                sampler = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler,
                           "nsga2": optuna.samplers.NSGAIISampler}[kind](seed=seed)
                searcher = OptunaSearch(space=DefineByRun(space, spec.base),
                                        metric=["primary", "latency_ms"] if two else "primary",
                                        mode=["max", "min"] if two else "max",
                                        sampler=sampler, study_name=f"{spec.name}-{group}", storage=storage)
                scheduler = ASHAScheduler(metric="primary", mode="max", max_t=max_t,
                                          grace_period=min(spec.grace_period, max_t),
                                          reduction_factor=spec.reduction_factor)
                cell = {"task": task, "data_fraction": fraction, "seed": seed}
                tuner = _tuner(spec, exp_dir, group, fixed, callbacks, resume, {"cell": cell},
                               search_alg=searcher, scheduler=scheduler, num_samples=spec.num_samples)
                _fit_all(tuner, spec.num_samples)
                close_orphan_optuna_trials(storage, f"{spec.name}-{group}")
        summary = summarize(exp_dir, tracker)
        if spec.latency_budget_ms is not None:
            tracker.flush()
            summary["selection"] = select_under_budget(spec, exp_dir, tracker.uri)
            write_json_atomic(exp_dir / "summary.json", summary)
        status = "FINISHED"
        return summary
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.close(status)


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


def select_under_budget(spec: SweepSpec, exp_dir: Path, uri: str) -> list[dict]:
    """Per task: the most accurate student configuration (mean over seeds) within the latency budget,
    exported to ``<experiment>/selected-<task>-<budget>ms`` (mixkd.deploy.selection.select). A task where no
    configuration meets the budget gets the one-line reason instead."""
    import shutil

    from ..deploy.selection import select
    out = []
    for task in spec.tasks:
        dest = exp_dir / f"selected-{task}-{spec.latency_budget_ms:g}ms"
        if dest.exists():   # a resumed sweep selects again from all its trials
            shutil.rmtree(dest)
        try:
            sel = select(uri, spec.latency_budget_ms, dest, experiment=spec.experiment_name or spec.name, task=task,
                         percentile=spec.latency_percentile, batch_size=spec.latency_batch_size,
                         seq_len=spec.latency_seq_len, device="cuda" if spec.gpus_per_trial > 0 else "cpu")
            ch = sel["chosen"]
            out.append({"task": task, "out": str(dest), "label": ch.get("label"), "score": ch.get("score"),
                        "score_std": ch.get("score_std"), "latency_ms": ch.get("latency_ms"),
                        "speedup_vs_teacher": sel.get("speedup_vs_teacher"), "best_run_id": ch.get("best_run_id")})
        except UsageError as e:
            out.append({"task": task, "error": str(e)})
    return out


def _fit_all(tuner, expected: int):
    """Tuner.fit(), raising KeyboardInterrupt when Ctrl+C ended it early.

    Tune catches SIGINT itself and returns normally, which must not look like a finished sweep.
    In the main thread tune.run swaps in its own SIGINT handler and puts the original back only
    when interrupted (ray/tune/tune.py, _setup_signal_catching); elsewhere count the ended trials.
    """
    import signal
    import threading
    main = threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGINT)
    grid = tuner.fit()
    interrupted = main and signal.getsignal(signal.SIGINT) is before
    if main:
        signal.signal(signal.SIGINT, before)   # tune.run leaves its handler installed otherwise
    if interrupted or grid.num_terminated + grid.num_errors < expected:
        raise KeyboardInterrupt("the sweep was interrupted before every trial ended")
    return grid


def summarize(exp_dir: Path, tracker=None) -> dict[str, Any]:
    """Best finished trial per (task, variant, student depth), from the trial folders' metrics.json."""
    from ..tracking.writer import redact_uri
    best: dict[tuple, dict] = {}
    n_finished = 0
    for m in sorted((exp_dir / "trials").glob("*/metrics.json")):
        d = json.loads(m.read_text())
        cfg = MixKDConfig.from_yaml(m.parent / "config.yaml")
        n_finished += 1
        key = (d["task"], d["variant"], d["layers"], cfg.data_fraction, cfg.augmentation)
        row = {"task": d["task"], "variant": d["variant"], "augmentation": cfg.augmentation, "student_layers": d["layers"],
               "data_fraction": cfg.data_fraction, "trial": m.parent.name, "primary_metric": d["primary_metric"],
               "primary_value": d["primary_value"], "metrics": d["metrics"], "params": d["params"],
               "run_dir": str(m.parent)}
        if key not in best or row["primary_value"] > best[key]["primary_value"]:
            best[key] = row
    rows = sorted(best.values(), key=lambda r: (r["task"], r["data_fraction"], r["student_layers"], r["variant"]))
    summary = {"experiment_dir": str(exp_dir), "finished_trials": n_finished, "best": rows,
               "tracking_uri": redact_uri(tracker.uri) if tracker else None,
               "parent_run_id": tracker.parent_id if tracker else None}
    write_json_atomic(exp_dir / "summary.json", summary)
    if tracker is not None:
        from ..tracking.writer import SweepTracker
        for m in sorted((exp_dir / "trials").glob("*/metrics.json")):   # finished trials a crash left unrecorded
            cfg = MixKDConfig.from_yaml(m.parent / "config.yaml")
            tracker.submit(SweepTracker.record_finished, m.parent.name, cfg, "trial", m.parent)
        tracker.submit(SweepTracker.close_stale_trials, exp_dir / "trials")
        if rows:
            top = max(rows, key=lambda r: r["primary_value"])
            tracker.submit(SweepTracker.log_parent_artifact, top["run_dir"] + "/model", "best_student")
            tracker.submit(SweepTracker.set_parent_tag, "best_trial", top["trial"])
            tracker.submit(SweepTracker.log_parent_artifact, str(exp_dir / "summary.json"))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"{'task':<6}{'frac':>6}{'layers':>7}  {'variant':<9}{'metric':<22}{'dev':>8}  {'params':>11}  trial"]
    for r in summary["best"]:
        variant = r["variant"] + ("+bt" if str(r.get("augmentation", "none")).startswith("bt") else "")
        lines.append(f"{r['task']:<6}{r['data_fraction']:>6g}{r['student_layers']:>7}  {variant:<9}"
                     f"{r['primary_metric']:<22}{100 * r['primary_value']:>8.2f}  {r['params']:>11,}  {r['trial']}")
    lines.append(f"{summary['finished_trials']} finished trials; folders under {summary['experiment_dir']}/trials")
    for sel in summary.get("selection") or []:
        if "error" in sel:
            lines.append(f"{sel['task']}: no student within the latency budget: {sel['error']}")
        else:
            sp = f", {sel['speedup_vs_teacher']:.1f}x faster than the teacher" if sel.get("speedup_vs_teacher") else ""
            lines.append(f"{sel['task']}: best within the budget: {sel['label']} dev {100 * sel['score']:.2f} at "
                         f"{sel['latency_ms']:.2f} ms{sp}; exported to {sel['out']}")
    return "\n".join(lines)
