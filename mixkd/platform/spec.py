"""The sweep spec: what to sweep (:class:`SweepSpec`, loaded from a preset YAML), the configs of its
teacher and student runs, and the checks that run before Ray starts (:func:`preflight`)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..core.config import MixKDConfig, check_writable_dir, load_yaml, validate
from ..core.errors import UsageError
from .search_space import build_space, grid_cells
from ..core.tasks import get_task, is_glue

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
    grid: dict | list = field(default_factory=dict)   # grid mode: {config field: [values]}, or a list of cells
    searcher: str = "auto"                    # auto (TPE; NSGA-II with a latency budget), tpe, nsga2, random
    measure_latency: bool = True              # measure each student depth (and the teacher) once, before trials
    latency_batch_sizes: list = field(default_factory=lambda: [1, 32])
    latency_seq_len: int = 128
    latency_threads: int | None = None        # default: every CPU of the node that measures
    latency_budget_ms: float | str | None = None   # makes latency a second objective and picks the best student;
    #                                           "auto": half the teacher's latency (latency_percentile, batch 1)
    student_seeds: list = field(default_factory=list)   # grid: each cell once per seed (init, order, mixup draws),
    #                                           all on the group's teacher and data subset; empty: the group seed
    report: bool = False                      # write the report (with the claims scorecard) after the sweep
    select_allow_chance: bool = False         # with a budget: let the choice consider students at chance level
    select_formats: str | list = "all"        # with a budget: deployment formats the final choice is made over
    #                                           (torch, torch-int8, onnx, onnx-int8; all: what the device runs)
    latency_percentile: str = "p90"           # of the budget and the objective
    latency_batch_size: int = 1               # of the budget and the objective
    latency_protocol: dict = field(default_factory=dict)   # warmup, min_iters, min_seconds (mixkd.deploy.latency)
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
    custom_tasks: dict = field(default_factory=dict)   # your own data: {task name: its data keys}; filled from the
    #                                           mappings in tasks (a task is a GLUE name or a mapping of the flags)

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
                             f"filesystem shared by all nodes; mount the bucket (e.g. NFS, EFS, s3fs) and pass its "
                             f"path")
        return Path(self.storage_path).expanduser().resolve() / self.name

    def to_dict(self) -> dict:
        return asdict(self)

    def validate(self) -> "SweepSpec":
        """Every check of the spec that reads no Ray, in this order: its shape (mode, tasks, seeds, fractions, trial
        counts and resources, searcher), the latency settings, then the configs it makes (a probe student, the grid's
        cells or the search space). One UsageError; custom tasks are read and recorded in custom_tasks."""
        self._check_shape()
        self._check_latency()
        self._check_configs()
        self.validated = True   # not a field: check_sweep does not validate (and read custom data) twice
        return self

    def _check_shape(self) -> None:
        def bad(msg):
            raise UsageError(msg)
        if self.mode not in ("search", "grid"):
            bad(f"mode {self.mode!r} is invalid; use search or grid")
        if not self.tasks:
            bad("tasks is empty; name at least one GLUE task or give your own data as a mapping "
                "(train_file, validation_file, text_columns, label_column, ...)")
        self.tasks = [self._task_entry(t) for t in self.tasks]
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
        if not isinstance(self.student_seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool)
                                                                for s in self.student_seeds):
            bad(f"student_seeds must be a list of integers, got {self.student_seeds!r}")
        if self.student_seeds and self.mode != "grid":
            bad("student_seeds works in grid mode only (a search samples its own configurations); use seeds")
        if self.searcher not in ("auto", "tpe", "nsga2", "random"):
            bad(f"searcher {self.searcher!r} is invalid; use auto, tpe, nsga2 or random")

    def _check_latency(self) -> None:
        def bad(msg):
            raise UsageError(msg)
        from ..deploy.formats import parse_formats
        parse_formats(self.select_formats, "cuda" if self.gpus_per_trial > 0 else "cpu")   # names checked early
        if self.latency_budget_ms is not None:
            if self.latency_budget_ms != "auto" and (isinstance(self.latency_budget_ms, (bool, str)) or not
                                                     (isinstance(self.latency_budget_ms, (int, float)) and
                                                      self.latency_budget_ms > 0)):
                bad(f"--latency-budget-ms {self.latency_budget_ms} is invalid; use a positive number of milliseconds "
                    f"or auto (half the teacher's latency)")
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

    def _check_configs(self) -> None:
        def bad(msg):
            raise UsageError(msg)
        for section in ("base", "teacher"):
            for k in getattr(self, section):
                if k not in CONFIG_FIELDS:
                    import difflib
                    hint = difflib.get_close_matches(k, CONFIG_FIELDS, n=1)
                    bad(f"{section}: '{k}' is not a config field" + (f"; did you mean '{hint[0]}'?" if hint else ""))
        probe = self.student_config(self.tasks[0], self.data_fractions[0], self.seeds[0], "teacher", "out")
        validate(probe, "distill")
        if self.mode == "search":
            self.space()
        else:
            if not self.grid:
                bad("grid mode needs a grid: section, e.g. {variant: [ft, sm+tmkd], student_layers: [2, 3]}")
            for cell in grid_cells(self.grid):
                if "student_seed" in cell and (self.student_seeds or not isinstance(cell["student_seed"], int)):
                    bad(f"grid cell {cell}: student_seed must be an integer, and not given with student_seeds")
                validate(probe.replace(**{k: v for k, v in cell.items() if k != "student_seed"}), "distill")

    def space(self) -> dict[str, dict]:
        """The search space (search_space over DEFAULT_SPACE, each range checked against base), built once per
        search_space and base: validation, preflight, the preparations and the driver all read it."""
        key = json.dumps([self.search_space, self.base], sort_keys=True, default=str)
        cached = getattr(self, "_space", None)   # not a field: no part of the spec's dict or of sweep.yaml
        if cached is None or cached[0] != key:
            self._space = (key, build_space(self.search_space, self.base))
        return self._space[1]

    def _task_entry(self, t) -> str:
        """A task of the preset: a GLUE name, a custom task already listed in custom_tasks, or a mapping with the
        keys of the data flags (recorded in custom_tasks under its name, paths made absolute)."""
        from ..core.custom_data import DATA_KEYS, task_for
        if isinstance(t, str) and (is_glue(t) or t not in self.custom_tasks):
            return get_task(t).name
        if isinstance(t, str):
            return t
        if not isinstance(t, dict):
            raise UsageError(f"tasks: {t!r} is invalid; use a GLUE task name or a mapping of your data "
                             f"(train_file, validation_file, text_columns, label_column, ...)")
        unknown = sorted(set(t) - {"task", *DATA_KEYS})
        if unknown:
            raise UsageError(f"tasks: '{unknown[0]}' is not a data key; use task, {', '.join(DATA_KEYS)}")
        keys = {k: v for k, v in t.items() if k != "task"}
        for k in ("train_file", "validation_file"):
            if keys.get(k):
                keys[k] = str(Path(keys[k]).expanduser().absolute())
        probe = MixKDConfig.from_dict({**keys, "task": t.get("task")}, source="tasks")
        if not (probe.train_file or probe.dataset):
            raise UsageError("tasks: a custom task needs train_file and validation_file, or dataset")
        # read and check the training data now (before Ray starts); the resolved columns, label set and metric are
        # what every run of the task and its MLflow params record
        resolved = task_for(probe, "finetune")[0]
        keys.update(text_columns=resolved.text_columns, labels=resolved.labels, metric=resolved.metric)
        self.custom_tasks[resolved.task] = keys
        return resolved.task

    def data_keys(self, task: str) -> dict:
        """The data flags of a custom task ({} for a GLUE task)."""
        return dict(self.custom_tasks.get(task, {}))

    def task_spec(self, task: str):
        """The TaskSpec of a task of this sweep (a custom one is read and checked from its training data)."""
        if task not in self.custom_tasks:
            return get_task(task)
        from ..core.custom_data import task_for
        return task_for(self.teacher_config(task, 1.0, self.seeds[0], "out"), "finetune")[1]

    # --- configs of the runs -----------------------------------------------------------------
    def teacher_key(self, task: str, fraction: float, seed: int) -> str:
        return f"{task}-f{fraction:g}-s{seed}"

    def teacher_config(self, task: str, fraction: float, seed: int, output_dir: str) -> MixKDConfig:
        base = {k: v for k, v in self.base.items() if k not in STUDENT_ONLY}
        return MixKDConfig.from_dict({**base, **self.teacher, **self.data_keys(task), "task": task,
                                      "model": self.teacher_model, "data_fraction": fraction, "data_seed": seed,
                                      "seed": seed, "data_dir": None if task in self.custom_tasks else self.data_dir,
                                      "output_dir": output_dir, "progress": False})

    def student_config(self, task: str, fraction: float, seed: int, teacher_dir: str, output_dir: str,
                       **knobs) -> MixKDConfig:
        student_seed = knobs.pop("student_seed", None)   # grid cells of student_seeds: the group keeps the data
        return MixKDConfig.from_dict({**self.base, **knobs, **self.data_keys(task), "task": task,
                                      "data_fraction": fraction, "data_seed": seed,
                                      "seed": seed if student_seed is None else student_seed, "teacher": teacher_dir,
                                      "data_dir": None if task in self.custom_tasks else self.data_dir,
                                      "output_dir": output_dir, "progress": False})

    def groups(self) -> list[tuple[str, float, int]]:
        return [(t, f, s) for t in self.tasks for f in self.data_fractions for s in self.seeds]


def student_knobs(spec: SweepSpec) -> list[dict]:
    """Every architecture-deciding knob set a student of this sweep can have."""
    if spec.mode == "grid":
        cells = grid_cells(spec.grid) if spec.grid else [{}]
        return [{k: c[k] for k in ("student_layers", "student_model") if k in c} for c in cells]
    d = spec.space().get("student_layers")
    if d is None:
        return [{}]
    values = d["values"] if d["type"] == "choice" else range(int(d["low"]), int(d["high"]) + 1)
    return [{"student_layers": int(v)} for v in values]


def _max_student_layers(spec: SweepSpec) -> int | None:
    """The deepest truncated student the sweep can train (None: every student is a --student-model)."""
    depths = []
    for c in student_knobs(spec):
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


def preflight(spec: SweepSpec) -> list:
    """What a sweep would otherwise find out only after Ray has started and a teacher has trained: the
    storage folder cannot be created, a task has no data source or its GLUE files are missing, a student is
    deeper than its teacher. One UsageError (one line, exit 2), nothing written. Returns the (data source,
    task) pairs, for :func:`mixkd.core.data.announce_data_source` once every other check has passed."""
    check_writable_dir(spec.experiment_dir, "--storage-path")
    from ..core.data import resolve_data_source
    sources = []
    for t in spec.tasks:
        task = spec.task_spec(t)     # a custom task: its files read and every row checked here
        source = resolve_data_source(spec.data_dir, task)   # the flag, $GLUE_DIR, the hub, the embedded sample
        if source.path is not None:
            for name in ("train.tsv", *(d.tsv_file for d in task.dev_splits)):
                f = source.path / task.folder / name
                if not f.is_file():
                    raise UsageError(f"--data-dir {source.path}: missing {task.folder}/{name} for task {task.name}; "
                                     f"put the task's GLUE TSV files there or drop the task")
        sources.append((source, task))
    deepest, depth = _max_student_layers(spec), _teacher_depth(spec.teacher_model)
    if deepest is not None and depth is not None and deepest > depth:
        raise UsageError(f"student_layers {deepest} is invalid: the teacher {spec.teacher_model} has {depth} layers; "
                         f"keep student depths within 1..{depth}")
    return sources


def group_name(spec: SweepSpec, task: str, fraction: float, seed: int) -> str:
    """The Tune experiment (folder ``tune/<group>``) that runs the trials of this (task, fraction, seed)."""
    return "grid" if spec.mode == "grid" else f"search-{spec.teacher_key(task, fraction, seed)}"


def saved_spec(spec: SweepSpec) -> dict[str, Any]:
    """The spec as written to sweep.yaml and handed to the trials: a password or token in the tracking
    URI is masked (the driver alone talks to MLflow, with the real URI)."""
    from ..tracking.store import redact_uri
    return {**spec.to_dict(), "tracking_uri": redact_uri(spec.tracking_uri)}


def sweep_params(spec: SweepSpec) -> dict[str, Any]:
    """The parent run's MLflow params: the spec without the tracking URI; no secret is ever a param (the
    config holds none, and tokens live in the environment: MLFLOW_TRACKING_TOKEN, ...)."""
    return {k: v for k, v in spec.to_dict().items() if k != "tracking_uri"}


# --- the plan of a sweep's trials ------------------------------------------------------------------

@dataclass(frozen=True)
class TrialGroup:
    """One (task, data fraction, seed) of a sweep: its teacher, its data subset and its Tune experiment."""
    task: str
    fraction: float
    seed: int
    key: str            # the teacher's key (SweepSpec.teacher_key): teachers/<key>
    name: str           # the Tune experiment that runs its trials: tune/<name> (group_name)
    teacher_dir: str

    @property
    def cell(self) -> dict[str, Any]:
        """The group's part of a trial's Tune config (``config["cell"]``)."""
        return {"task": self.task, "data_fraction": self.fraction, "seed": self.seed}


@dataclass
class SweepPlan:
    """A sweep's trials, planned once (:func:`mixkd.platform.driver.plan_trials`) from the checked spec and what was
    prepared before them (teachers, latencies), and shared by the driver, the MLflow callback and every trial (a
    pickled copy): the groups, the grid's cells or the search space, the latency budget, what Tune reserves per trial,
    and the one function from a trial's Tune config to its MixKDConfig (:meth:`trial_config`).

    A trial's Tune config stays JSON: ``{"cell": {task, data_fraction, seed[, grid knobs][, student_seed]}, **the
    searched knobs}``; a resumed sweep plans again from the same spec, so its trials get the same configs."""
    spec: SweepSpec                     # as the trials see it: the tracking URI masked (saved_spec)
    exp_dir: Path
    groups: list[TrialGroup]
    latency: dict[str, dict] = field(default_factory=dict)   # measured before the trials (measure_latencies)
    budget: float | None = None         # the latency budget in ms (None: no budget)
    infeasible: dict[str, dict] = field(default_factory=dict)   # architectures over it (budget.over_budget)
    cells: list[dict] = field(default_factory=list)   # grid: every trial's cell within the budget, in Tune's order
    skipped: int = 0                    # grid: cells over the budget, never trained
    space: dict[str, dict] | None = None   # search: the search space

    @property
    def trials_dir(self) -> Path:
        return self.exp_dir / "trials"

    @property
    def tune_dir(self) -> Path:
        return self.exp_dir / "tune"

    @property
    def train_storage(self) -> Path:
        """Where a multi-worker trial's TorchTrainer keeps its Ray Train state."""
        return self.exp_dir / "train"

    @property
    def resources(self) -> dict[str, float]:
        """What Tune reserves per trial: its CPUs and GPUs; for a multi-worker trial only a sliver of CPU, since the
        trial just drives a TorchTrainer whose workers hold the CPUs/GPUs (env_probe §4.4)."""
        if self.spec.workers_per_trial == 1:
            return {"CPU": self.spec.cpus_per_trial, "GPU": self.spec.gpus_per_trial}
        return {"CPU": 0.01}

    def group_of(self, config: dict[str, Any]) -> TrialGroup:
        """The group of a trial, from its Tune config."""
        cell = config["cell"]
        where = (cell["task"], cell["data_fraction"], cell["seed"])
        for g in self.groups:
            if (g.task, g.fraction, g.seed) == where:
                return g
        raise KeyError(f"no group {where} in the sweep {self.spec.name}")

    def trial_config(self, config: dict[str, Any], trial_id: str) -> MixKDConfig:
        """A trial's student config from its Tune config: the group's data and teacher, the cell's knobs (a grid
        cell's ``student_seed`` seeds the student), the searched knobs, output in ``trials/<trial_id>``."""
        knobs = dict(config["cell"])
        task, fraction, seed = knobs.pop("task"), knobs.pop("data_fraction"), knobs.pop("seed")
        knobs.update({k: v for k, v in config.items() if k in CONFIG_FIELDS})
        return self.spec.student_config(task, fraction, seed, self.group_of(config).teacher_dir,
                                        str(self.trials_dir / trial_id), **knobs)
