"""What a sweep prepares before any trial, as Ray tasks: the +BT files, one fine-tuned teacher per
(task, data fraction, seed), and the latency of every architecture."""
from __future__ import annotations

from pathlib import Path

from ..core.config import MixKDConfig
from ..core.terms import teacher_on_originals, uses_hidden
from ..core.atomic import write_json_atomic
from ..core.errors import SweepFailed, UsageError
from .search_space import grid_cells
from .spec import SweepSpec, student_knobs


# --- back-translation (+BT) data (issue 6) ------------------------------------------------------------

def _bt_task(cfg_dict: dict) -> str:
    from ..augment.backtranslate import bt_file_for_config
    return str(bt_file_for_config(MixKDConfig.from_dict(cfg_dict), progress=False).path)


def bt_cells(spec: SweepSpec) -> list[dict]:
    """Knob sets of the sweep's student runs that can decide ``augment``: the grid cells, or, in search
    mode, ``augment: bt`` when the search space offers it."""
    if spec.mode == "grid":
        return grid_cells(spec.grid) if spec.grid else [{}]
    aug = spec.space().get("augment")
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
        for cell in bt_cells(spec):
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


# --- teachers -----------------------------------------------------------------------------------

def _finetune_task(cfg_dict: dict) -> dict:
    """A teacher fine-tune (a Ray task): continues from its checkpoint after a crash, a retry or --resume.
    Until metrics.json is written (last, atomically) the folder is an unfinished run no sweep uses."""
    import ray

    from ..jobs.run import finetune
    from ..core.checkpoints import append_event, repair_checkpoints
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


# --- teacher outputs (kd/pkd): once per (teacher, training set), before the trials ------------------------

def _teacher_outputs_task(cfg_dict: dict) -> dict:
    from ..jobs.run import teacher_outputs
    return teacher_outputs(MixKDConfig.from_dict(cfg_dict))


def kd_cells(spec: SweepSpec) -> list[dict]:
    """Knob sets of the sweep's students that query the teacher on the training rows (kd, pkd): the grid's cells
    of those variants, or in search mode each such variant the space offers (with and without +BT if offered)."""
    if spec.mode == "grid":
        cells = grid_cells(spec.grid) if spec.grid else [{}]
    else:
        variants = (spec.space().get("variant") or {}).get("values") or [spec.base.get("variant", MixKDConfig.variant)]
        cells = [{"variant": v, **bt} for v in variants for bt in bt_cells(spec)]
    plain = [{k: v for k, v in c.items() if k != "student_seed"} for c in cells]   # a cell's seed is no config field
    return [c for c, p in zip(cells, plain) if teacher_on_originals(MixKDConfig.from_dict({**spec.base, **p}).terms)]


def prepare_teacher_outputs(spec: SweepSpec, teachers: dict[str, str]) -> dict[str, dict]:
    """The kd/pkd trials' teacher outputs (mixkd.core.teacher_cache), computed once per (teacher, training set,
    hidden states) as Ray tasks before any trial, so no two trials compute them; entries already there are
    checked and reused. A no-op for sweeps without kd or pkd. Returns {what: the entry's info}."""
    import ray
    wanted: dict[tuple, tuple[str, MixKDConfig]] = {}
    for task, fraction, seed in spec.groups():
        tdir = teachers[spec.teacher_key(task, fraction, seed)]
        for cell in kd_cells(spec):
            cfg = spec.student_config(task, fraction, seed, tdir, "out", **cell)
            what = (tdir, cfg.augmentation, cfg.max_seq_length, uses_hidden(cfg.terms), cfg.precision, cfg.packing)
            label = f"{spec.teacher_key(task, fraction, seed)}/{cfg.augmentation}" + ("/hidden" if what[3] else "")
            wanted.setdefault(what, (label, cfg))
    if not wanted:
        return {}
    remote = ray.remote(num_cpus=spec.cpus_per_trial, num_gpus=spec.gpus_per_trial,
                        max_retries=spec.max_failures)(_teacher_outputs_task)
    refs = {label: remote.remote(cfg.to_dict()) for label, cfg in wanted.values()}
    out = {}
    for label, ref in refs.items():
        try:
            out[label] = ray.get(ref)
        except ray.exceptions.RayError as e:   # the trials compute them themselves then; say so, go on
            first = (str(getattr(e, "cause", None) or e).strip().splitlines() or [type(e).__name__])[0][:200]
            print(f"teacher outputs {label}: not prepared ({first}); each trial computes them", flush=True)
            continue
        info = out[label]
        print(f"teacher outputs {label}: {'reusing' if info.get('reused') else 'computed'} {info.get('path')}",
              flush=True)
    return out


# --- latency: each architecture once, on a whole node, before the trials --------------------------

def latency_key(cfg: MixKDConfig, role: str = "trial") -> str:
    """Runs with the same key have the same architecture (so the same latency)."""
    if role == "teacher":
        return teacher_latency_key(cfg.task)
    return f"{cfg.task}/" + (f"model:{cfg.student_model}" if cfg.student_model else f"k{cfg.student_layers}")


def teacher_latency_key(task: str) -> str:
    """The latency key of a task's teacher (every teacher of a sweep has the teacher model's architecture)."""
    return f"{task}/teacher"


def _latency_task(jobs: list[dict], batch_sizes: list[int], seq_len: int, device: str, threads: int,
                  protocol: dict, formats: tuple[list[str], int] | None = None) -> dict:
    """{key: {batch size: torch result}}; with ``formats`` ([format, ...], batch size), each student's other
    deployment formats too, at that batch size, under ``"formats"``: {format: result}."""
    from ..deploy.latency import cached_latencies
    out = {}
    for job in jobs:
        res = cached_latencies(job["source"], batch_sizes, seq_len, device, threads=threads,
                               student_layers=job["layers"], num_labels=job["num_labels"], **protocol)
        out[job["key"]] = {str(b): r for b, r in res.items()}
        if formats and not job["key"].endswith("/teacher"):
            from ..deploy.formats import format_latencies
            fmts, b = formats
            out[job["key"]]["formats"] = {
                fmt: format_latencies(job["source"], fmt, [b], seq_len, device, threads=threads,
                                      student_layers=job["layers"], num_labels=job["num_labels"], **protocol)[b]
                for fmt in fmts if fmt != "torch"}
    return out


def measure_latencies(spec: SweepSpec, exp_dir: Path, teachers: dict[str, str]) -> dict[str, dict]:
    """Latency of the teacher and of every student architecture per task, measured as one Ray task that
    reserves a whole node (every CPU, and its GPUs for a GPU sweep), so nothing runs beside it. The
    results are cached by architecture and device (mixkd.deploy.latency), so a resumed or later sweep on the
    same hardware measures nothing again. Returns {latency key: {"metrics", "tags", "objective_ms"}}."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from ..deploy.latency import mlflow_metrics, mlflow_tags
    jobs = {}
    for task, fraction, seed in spec.groups():
        tdir = teachers[spec.teacher_key(task, fraction, seed)]
        n = spec.task_spec(task).num_labels
        jobs.setdefault(teacher_latency_key(task), {"source": tdir, "layers": None, "num_labels": n})
        for knobs in student_knobs(spec):
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
    # with a budget: every format the final choice considers, so a configuration no format brings within the budget
    # is known before any trial (mixkd.platform.budget)
    formats = None
    if spec.latency_budget_ms is not None:
        from ..deploy.formats import parse_formats
        formats = (parse_formats(spec.select_formats, device), spec.latency_batch_size)
    raw = ray.get(remote.remote([{"key": k, **j} for k, j in jobs.items()], list(spec.latency_batch_sizes),
                                spec.latency_seq_len, device, threads, dict(spec.latency_protocol), formats))
    out = {}
    stat = f"{spec.latency_percentile}_ms"
    for key, per_batch in raw.items():
        by_format = per_batch.pop("formats", {})
        metrics = {}
        for r in per_batch.values():
            metrics.update(mlflow_metrics(r))
        objective = per_batch[str(spec.latency_batch_size)][stat]
        out[key] = {"metrics": metrics, "tags": mlflow_tags(next(iter(per_batch.values()))), "objective_ms": objective}
        if formats and not key.endswith("/teacher"):   # the fastest format the choice considers, at the objective
            candidates = {fmt: r[stat] for fmt, r in by_format.items()}
            if "torch" in formats[0]:
                candidates["torch"] = objective
            fmt = min(candidates, key=candidates.get)
            out[key].update(fastest_ms=candidates[fmt], fastest_format=fmt, formats_ms=candidates)
        if by_format:
            per_batch["formats"] = by_format
    write_json_atomic(exp_dir / "latency.json", raw)
    return out
