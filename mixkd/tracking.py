"""MLflow records of a sweep: one parent run per sweep, a nested child run per teacher and per trial.

The sweep driver is the only writer (trial results reach it through Ray Tune), so a SQLite store in
the experiment folder never sees concurrent writers; point ``--tracking-uri`` at a server to share it.
Runs are found again by tags (``mixkd.sweep_id``, ``mixkd.trial_id``, ``mixkd.teacher_key``), so a
resumed sweep reuses its parent run and trial runs instead of creating second copies.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from .config import MixKDConfig

PARENT_TAG = "mixkd.sweep_id"
ROLE_TAG = "mixkd.role"


def default_tracking_uri(experiment_dir: Path) -> str:
    return f"sqlite:///{Path(experiment_dir).resolve() / 'mlflow.db'}"


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


def flat_params(cfg: MixKDConfig) -> dict[str, str]:
    """Every config field as an MLflow param (None as 'None'); no secrets live in the config."""
    return {k: str(v) for k, v in cfg.to_dict().items()}


class SweepTracker:
    """Writes the sweep's MLflow runs. Create it in the driver process only."""

    def __init__(self, tracking_uri: str, experiment_name: str, sweep_id: str, artifact_dir: Path | None = None,
                 sweep_params: dict[str, Any] | None = None):
        import mlflow
        from mlflow.tracking import MlflowClient
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri)
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
            for k, v in (sweep_params or {}).items():
                self.client.log_param(self.parent_id, k, str(v)[:6000])

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
            for k, v in flat_params(cfg).items():
                self.client.log_param(run_id, k, v)
        else:
            self.client.update_run(run_id, status="RUNNING")
        self._runs[key] = run_id
        return run_id

    def log_eval(self, run_id: str, row: dict[str, Any]) -> None:
        """One eval row of log.jsonl / a Tune result: every loss term and dev metric at its step."""
        step = int(row.get("step", 0))
        if run_id not in self._last_step:
            history = self.client.get_metric_history(run_id, "primary")
            self._last_step[run_id] = max((m.step for m in history), default=-1)
        if step <= self._last_step[run_id]:
            return
        self._last_step[run_id] = step
        metrics = {k: float(v) for k, v in row.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and (k.startswith(("loss/", "eval/")) or k in ("primary", "lr", "epoch", "train_examples_per_s"))}
        if metrics:
            from mlflow.entities import Metric
            import time
            ts = int(time.time() * 1000)
            self.client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v in metrics.items()])

    def finish(self, run_id: str, run_dir: Path | None, status: str = "FINISHED", reason: str | None = None,
               log_model: bool = True) -> None:
        """Artifacts of a finished run (config, metrics.json, log.jsonl, model/) and its final status."""
        if run_dir is not None and Path(run_dir).is_dir():
            run_dir = Path(run_dir)
            for name in ("config.yaml", "metrics.json", "log.jsonl"):
                if (run_dir / name).is_file():
                    self.client.log_artifact(run_id, str(run_dir / name))
            if (run_dir / "metrics.json").is_file():
                m = json.loads((run_dir / "metrics.json").read_text())
                final = {f"final/{k}": float(v) for k, v in m.get("metrics", {}).items()}
                final["final/primary"] = float(m["primary_value"])
                final["params_count"] = float(m.get("params", 0))
                for k, v in final.items():
                    self.client.log_metric(run_id, k, v)
                self.client.set_tag(run_id, "run_dir", str(run_dir))
            if log_model and (run_dir / "model").is_dir():
                self.client.log_artifacts(run_id, str(run_dir / "model"), artifact_path="model")
        if reason:
            self.client.set_tag(run_id, "mixkd.end_reason", reason[:5000])
        self.client.set_terminated(run_id, status=status)

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.parent_id, status=status)
