"""MLflow records of a sweep: one parent run per sweep, a nested child run per teacher and per trial.

Within a sweep the driver is the only writer (trial results reach it through Ray Tune, and one background
thread writes them). Several sweeps may share one SQLite store (``--tracking-uri sqlite:///...``): MLflow
waits on its lock (busy_timeout) and :func:`sqlite_init_lock` serialises opening a fresh file; a server
(``mlflow server --host 127.0.0.1``) is the better way to share runs between machines.
Runs are found again by tags (``mixkd.sweep_id``, ``mixkd.trial_id``, ``mixkd.teacher_key``), so a
resumed sweep reuses its parent run and trial runs instead of creating second copies.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from ..core.config import MixKDConfig
from .store import open_client, redact_uri, sqlite_init_lock

PARENT_TAG = "mixkd.sweep_id"
ROLE_TAG = "mixkd.role"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def run_tags(cfg: MixKDConfig, role: str) -> dict[str, str]:
    """The tags the report and selection find runs by."""
    student = {} if role == "teacher" else {"student_layers": str(cfg.student_layers),
                                            "layer_strategy": cfg.layer_strategy}
    return {
        ROLE_TAG: role, "task": str(cfg.task), "variant": cfg.variant, **student,
        "data_fraction": str(cfg.data_fraction), "seed": str(cfg.seed),
        "augmentation": cfg.augmentation,   # 'bt-de' for --augment bt, an --augment-file's name, or 'none'
        "config_hash": cfg.config_hash(), "config_group": cfg.group_hash(), "git_commit": git_commit(),
    }


RESOLVED_IN_RUN = ("lr", "epochs")   # unset: chosen by the step-aware rule once the run knows its data


def flat_params(cfg: MixKDConfig) -> dict[str, str]:
    """Every config field as an MLflow param (None as 'None'; no secrets live in the config). ``lr`` and ``epochs``
    left to the step-aware rule are logged when the run ends, as the numbers it used (see :meth:`finish`)."""
    return {k: str(v) for k, v in cfg.to_dict().items() if not (k in RESOLVED_IN_RUN and v is None)}


class SweepTracker:
    """Writes the sweep's MLflow runs. Create it in the driver process only."""

    def __init__(self, tracking_uri: str, experiment_name: str, sweep_id: str, artifact_dir: Path | None = None,
                 sweep_params: dict[str, Any] | None = None):
        import mlflow
        self.uri = tracking_uri
        with sqlite_init_lock(tracking_uri):   # several sweeps may open a fresh shared SQLite store at once
            self.client = open_client(tracking_uri)   # opens (creates, migrates) the store
            exp = self.client.get_experiment_by_name(experiment_name)
            if exp is None:
                loc = Path(artifact_dir).resolve().as_uri() if artifact_dir else None
                self.experiment_id = self.client.create_experiment(experiment_name, artifact_location=loc,
                                                                   tags={"mixkd": "1"})
            else:
                self.experiment_id = exp.experiment_id
        self.sweep_id = sweep_id
        self._mlflow = mlflow
        self._runs: dict[str, str] = {}
        self._last_step: dict[str, int] = {}   # per run: evals already logged (a resumed trial re-reports them)
        found = self._find(f"tags.`{PARENT_TAG}` = '{sweep_id}' and tags.`{ROLE_TAG}` = 'sweep'")
        if found:
            self.parent_id = found
            self.client.update_run(found, status="RUNNING")
        else:
            run = self.client.create_run(self.experiment_id, run_name=sweep_id,
                                         tags={PARENT_TAG: sweep_id, ROLE_TAG: "sweep", "git_commit": git_commit()})
            self.parent_id = run.info.run_id
            self._log_params(self.parent_id, {k: str(v)[:6000] for k, v in (sweep_params or {}).items()})

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param
        batch = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(batch), 100):   # one write per 100 params (MLflow's batch limit)
            self.client.log_batch(run_id, params=batch[i:i + 100])

    def _find(self, filter_string: str) -> str | None:
        runs = self.client.search_runs([self.experiment_id], filter_string=filter_string, max_results=1)
        return runs[0].info.run_id if runs else None

    def child(self, key: str, cfg: MixKDConfig, role: str, name: str | None = None) -> str:
        """The child run for ``key`` (a trial id or teacher key); created once, found again on resume."""
        if key in self._runs:
            return self._runs[key]
        run_id = self._find(f"tags.`{PARENT_TAG}` = '{self.sweep_id}' and tags.`mixkd.key` = '{key}'")
        if run_id is None:
            tags = {**run_tags(cfg, role), PARENT_TAG: self.sweep_id, "mixkd.key": key,
                    "mlflow.parentRunId": self.parent_id}
            run = self.client.create_run(self.experiment_id, run_name=name or key, tags=tags)
            run_id = run.info.run_id
            self._log_params(run_id, flat_params(cfg))
        else:
            self.client.update_run(run_id, status="RUNNING")
        self._runs[key] = run_id
        return run_id

    def log_eval(self, key: str, row: dict[str, Any]) -> None:
        """One eval row of log.jsonl / a Tune result: every loss term and dev metric at its step."""
        run_id = self._runs[key]
        step = int(row.get("step", 0))
        if run_id not in self._last_step:
            history = self.client.get_metric_history(run_id, "primary")
            self._last_step[run_id] = max((m.step for m in history), default=-1)
        if step <= self._last_step[run_id]:
            return
        self._last_step[run_id] = step
        metrics = {k: float(v) for k, v in row.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and (k.startswith(("loss/", "eval/", "chance/"))
                        or k in ("primary", "lr", "epoch", "train_examples_per_s", "chance_primary"))}
        if metrics:
            from mlflow.entities import Metric
            import time
            ts = int(time.time() * 1000)
            self.client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v in metrics.items()])

    def finish(self, key: str, run_dir: Path | None, status: str = "FINISHED", reason: str | None = None,
               log_model: bool = True) -> None:
        """Artifacts of a finished run (config, metrics.json, log.jsonl, model/) and its final status."""
        run_id = self._runs[key]
        if run_dir is not None and Path(run_dir).is_dir():
            run_dir = Path(run_dir)
            for name in ("config.yaml", "metrics.json", "log.jsonl"):
                if (run_dir / name).is_file():
                    self.client.log_artifact(run_id, str(run_dir / name))
            self._log_resolved(run_id, run_dir)
            if (run_dir / "metrics.json").is_file():
                m = json.loads((run_dir / "metrics.json").read_text())
                final = {f"final/{k}": float(v) for k, v in m.get("metrics", {}).items()}
                final["final/primary"] = float(m["primary_value"])
                final["params_count"] = float(m.get("params", 0))
                final.update({f"final/chance_{k}": float(v) for k, v in (m.get("chance") or {}).items()})
                if "above_chance" in m:   # 1/0 as a metric (sortable in the UI) and a tag (filterable)
                    final["final/above_chance"] = float(bool(m["above_chance"]))
                    self.client.set_tag(run_id, "above_chance", str(bool(m["above_chance"])).lower())
                from mlflow.entities import Metric
                import time
                ts = int(time.time() * 1000)
                self.client.log_batch(run_id, metrics=[Metric(k, v, ts, 0) for k, v in final.items()])
                self.client.set_tag(run_id, "run_dir", str(run_dir))
            if log_model and (run_dir / "model").is_dir():
                self.client.log_artifacts(run_id, str(run_dir / "model"), artifact_path="model")
        if reason:
            self.client.set_tag(run_id, "mixkd.end_reason", reason[:5000])
        self.client.set_terminated(run_id, status=status)

    def _log_resolved(self, run_id: str, run_dir: Path) -> None:
        """The numbers the step-aware rule chose (config.yaml), as params the run did not log at its start."""
        if not (run_dir / "config.yaml").is_file():
            return
        saved = MixKDConfig.from_yaml(run_dir / "config.yaml").to_dict()
        have = self.client.get_run(run_id).data.params
        todo = {k: str(saved[k]) for k in RESOLVED_IN_RUN if k not in have and saved.get(k) is not None}
        if todo:
            self._log_params(run_id, todo)

    def record_finished(self, key: str, cfg: MixKDConfig, role: str, run_dir: Path, log_model: bool = False,
                        name: str | None = None) -> bool:
        """Make sure a run folder that finished (metrics.json) has a FINISHED child run with its evals;
        repairs what a driver crash between a trial's end and its record left out. True if it wrote."""
        found = self._runs.get(key) or self._find(
            f"tags.`{PARENT_TAG}` = '{self.sweep_id}' and tags.`mixkd.key` = '{key}'")
        if found and self.client.get_run(found).info.status == "FINISHED":
            self._runs[key] = found
            return False
        self.child(key, cfg, role, name)
        log = Path(run_dir) / "log.jsonl"
        for line in (log.read_text().splitlines() if log.is_file() else []):
            if line.strip():
                self.log_eval(key, json.loads(line))
        self.finish(key, Path(run_dir), log_model=log_model)
        return True

    def close_stale_trials(self, trials_dir: Path) -> int:
        """At the end of a sweep every trial has ended, so a trial run still RUNNING is left over from a
        driver crash: KILLED if its folder holds an unfinished run, deleted (soft, with a reason tag) if
        it has no folder at all (the trial was forgotten by Tune before it wrote anything, and the
        resumed sweep ran another in its place). Returns how many runs it closed."""
        runs = self.client.search_runs(
            [self.experiment_id], max_results=5000,
            filter_string=f"tags.`{PARENT_TAG}` = '{self.sweep_id}' and tags.`{ROLE_TAG}` = 'trial' "
                          f"and attributes.status = 'RUNNING'")
        for r in runs:
            key = r.data.tags.get("mixkd.key", "")
            out = Path(trials_dir) / key
            if (out / "metrics.json").is_file():
                continue   # record_finished handles it
            if out.is_dir():
                self.client.set_tag(r.info.run_id, "mixkd.end_reason", "left unfinished by an interrupted sweep")
                self.client.set_terminated(r.info.run_id, status="KILLED")
            else:
                self.client.set_tag(r.info.run_id, "mixkd.end_reason",
                                    "orphan: the trial was started just before a driver crash and never ran")
                self.client.set_terminated(r.info.run_id, status="KILLED")
                self.client.delete_run(r.info.run_id)
            self._runs.pop(key, None)
        return len(runs)

    def log_latency(self, key: str, metrics: dict[str, float], tags: dict[str, str]) -> None:
        """The latency of the run's architecture (measured once per architecture by the sweep)."""
        from mlflow.entities import Metric, RunTag
        import time
        ts = int(time.time() * 1000)
        self.client.log_batch(self._runs[key], metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()],
                              tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_parent_artifact(self, path: str, artifact_path: str | None = None) -> None:
        if Path(path).is_dir():
            self.client.log_artifacts(self.parent_id, path, artifact_path=artifact_path)
        else:
            self.client.log_artifact(self.parent_id, path, artifact_path=artifact_path)

    def set_parent_tag(self, key: str, value: str) -> None:
        self.client.set_tag(self.parent_id, key, value)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.parent_id, status=status)


_ACTIVE: dict[str, "BackgroundTracker"] = {}


def _active_tracker(sweep_id: str) -> "BackgroundTracker | None":
    return _ACTIVE.get(sweep_id)


class BackgroundTracker:
    """A :class:`SweepTracker` driven by one writer thread, so Tune's event loop never waits on MLflow.

    Every write is queued in order and done on that thread (still one writer for a SQLite store);
    the tracker itself is created there too, so importing MLflow and opening the store overlap
    with the sweep's start. :meth:`call` runs a function on the writer and returns its result;
    :meth:`close` drains the queue. A write that fails is reported on stderr once per kind and
    counted in :attr:`errors`; the run folders keep everything, and the sweep's end (or a
    ``--resume``) records finished trials that are missing (:meth:`SweepTracker.record_finished`).
    """

    def __init__(self, *args, **kwargs):
        import queue
        import threading
        self.sweep_id = kwargs["sweep_id"]
        self.uri = args[0] if args else kwargs["tracking_uri"]
        _ACTIVE[self.sweep_id] = self
        self._queue: queue.Queue = queue.Queue()
        self._ready = threading.Event()
        self._tracker: SweepTracker | None = None
        self._init_error: BaseException | None = None
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._work, args=(args, kwargs), name="mixkd-mlflow", daemon=True)
        self._thread.start()

    def _work(self, args, kwargs) -> None:
        try:   # everything MLflow happens on this thread, the store's one writer
            self._tracker = SweepTracker(*args, **kwargs)
        except BaseException as e:   # surfaced by .tracker in the caller's thread
            self._init_error = e
        finally:
            self._ready.set()
        while True:
            item = self._queue.get()
            if item is None:
                self._queue.task_done()
                return
            fn, a, kw, future = item
            try:
                if self._tracker is None:
                    raise RuntimeError(f"the tracker did not start: {self._init_error}")
                result = fn(self._tracker, *a, **kw)
                if future is not None:
                    future.set_result(result)
            except BaseException as e:
                if future is not None:
                    future.set_exception(e)
                else:
                    first = str(e).splitlines()[0][:200] if str(e) else ""
                    msg = f"{getattr(fn, '__name__', fn)}: {type(e).__name__}: {first}"
                    if not any(m.split(':')[0] == msg.split(':')[0] for m in self.errors):
                        import sys
                        print(f"mixkd: MLflow write failed ({msg}); the run folders keep the results", file=sys.stderr)
                    self.errors.append(msg)
            finally:
                self._queue.task_done()

    def __reduce__(self):   # Tune pickles callbacks: a pickle names the live tracker of its sweep
        return (_active_tracker, (self.sweep_id,))

    @property
    def tracker(self) -> SweepTracker:
        self._ready.wait()
        if self._tracker is None:
            raise self._init_error   # type: ignore[misc]
        return self._tracker

    @property
    def parent_id(self) -> str | None:
        """The sweep's parent run id (None when the store could not be opened)."""
        self._ready.wait()
        return self._tracker.parent_id if self._tracker is not None else None

    def failed(self) -> str | None:
        """Without waiting: why the store could not be opened, or None."""
        return f"{type(self._init_error).__name__}: {self._init_error}" if self._init_error else None

    def submit(self, fn, *args, **kwargs) -> None:
        """Queue ``fn(tracker, *args, **kwargs)``; returns at once."""
        self._queue.put((fn, args, kwargs, None))

    def call(self, fn, *args, **kwargs):
        """Run ``fn(tracker, *args, **kwargs)`` on the writer after everything queued; its result."""
        from concurrent.futures import Future
        future: Future = Future()
        self._queue.put((fn, args, kwargs, future))
        return future.result()

    def child(self, key: str, cfg: MixKDConfig, role: str, name: str | None = None) -> None:
        self.submit(SweepTracker.child, key, cfg, role, name)

    def log_eval(self, key: str, row: dict[str, Any]) -> None:
        self.submit(SweepTracker.log_eval, key, dict(row))

    def finish(self, key: str, run_dir: Path | None, **kwargs) -> None:
        self.submit(SweepTracker.finish, key, run_dir, **kwargs)

    def flush(self) -> None:
        self._queue.join()

    def close(self, status: str = "FINISHED", quiet: bool = False) -> None:
        """Drain the queue, end the parent run and stop the writer."""
        if self._thread.is_alive():
            self.submit(SweepTracker.close, status)
            self._queue.put(None)
            self._thread.join()
        if _ACTIVE.get(self.sweep_id) is self:
            del _ACTIVE[self.sweep_id]
        import sys
        if quiet:
            return
        if self._init_error is not None:
            print(f"mixkd: MLflow store {redact_uri(self.uri)} could not be opened ({self.failed()[:300]}); "
                  f"nothing was recorded there. The run folders hold every result: fix the store and rerun with "
                  f"--resume to record them", file=sys.stderr)
        elif self.errors:
            print(f"mixkd: {len(self.errors)} MLflow writes failed (first: {self.errors[0]}); the run folders "
                  f"hold every result: rerun with --resume to record finished runs", file=sys.stderr)
