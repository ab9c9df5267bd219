"""Read the MLflow runs that mixkd sweeps wrote, as one pandas DataFrame (read-only).

``load_runs`` returns one row per mixkd child run (role ``trial`` or ``teacher``, see
:mod:`mixkd.tracking.writer`) with its tags as typed columns, its params as a dict and every metric as its
own column (the latest logged value: ``final/accuracy``, ``final/primary``, ``primary``,
``eval/f1``, ``params_count``, ``latency/b1_s128_p90_ms`` ...). ``aggregate`` averages a metric
over the seeds of each group (mean, sample std, n and the run ids behind them).

    from mixkd.tracking.runstore import load_runs, aggregate
    df = load_runs("sqlite:///runs/sweeps/smoke/mlflow.db")
    trials = df[(df.role == "trial") & (df.status == "FINISHED")]
    aggregate(trials, by=["task", "variant", "student_layers"], metric="final/primary")

The store is never created or modified: a missing SQLite file, an unreachable server, a store
without mixkd experiments or an unknown experiment name raise :class:`mixkd.core.errors.UsageError`
with a one-line message.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable

from ..core.errors import UsageError
from .writer import PARENT_TAG, ROLE_TAG

# typed tag columns, in output order (after the run's identity columns)
TAG_COLUMNS = ("task", "variant", "student_layers", "layer_strategy", "data_fraction", "augmentation", "seed",
               "config_group", "config_hash", "run_dir")
BASE_COLUMNS = ("run_id", "experiment", "experiment_id", "parent_run_id", "sweep_id", "role", "status",
                "start_time", *TAG_COLUMNS, "teacher_model", "teacher_run_id", "artifact_uri", "params", "store")
CHILD_ROLES = ("trial", "teacher")


def resolve_tracking_uri(tracking_uri: str) -> str:
    """Normalise ``tracking_uri`` and check that it exists, without creating anything.

    Accepts an MLflow URI (``sqlite:///...``, ``http(s)://...``, ``databricks``...), a path to an
    SQLite file, or a sweep folder holding ``mlflow.db``.
    """
    if not tracking_uri or not str(tracking_uri).strip():
        raise UsageError("--tracking-uri is empty; pass e.g. sqlite:///runs/sweeps/smoke/mlflow.db")
    uri = str(tracking_uri).strip()
    if "://" not in uri and uri != "databricks":
        p = Path(uri).expanduser()
        if p.is_dir() and (p / "mlflow.db").is_file():
            p = p / "mlflow.db"
        if not p.is_file():
            raise UsageError(f"tracking store {uri!r} not found; pass sqlite:///PATH/mlflow.db, a sweep folder "
                             f"holding mlflow.db, or an http(s):// tracking server")
        return f"sqlite:///{p.resolve()}"
    if uri.startswith("sqlite:"):
        path = uri.split(":///", 1)[1] if ":///" in uri else ""
        if not path or not Path(path).is_file():
            raise UsageError(f"tracking store {uri!r} not found (no SQLite file at {path or '?'!r}); "
                             f"check the path, e.g. sqlite:///runs/sweeps/smoke/mlflow.db")
        _check_mlflow_sqlite(path, uri)
    if uri.startswith("file:"):
        path = uri[len("file://"):] if uri.startswith("file://") else uri[len("file:"):]
        if not Path(path).is_dir():
            raise UsageError(f"tracking store {uri!r} not found")
    return uri


def _check_mlflow_sqlite(path: str, uri: str) -> None:
    """Refuse an SQLite file that is not an MLflow store (e.g. optuna.db) before MLflow would add its
    tables to it; opened read-only."""
    import sqlite3
    try:
        con = sqlite3.connect(f"file:{Path(path).resolve()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        finally:
            con.close()
    except sqlite3.Error as e:
        raise UsageError(f"tracking store {uri!r} is not a readable SQLite database ({e})") from None
    if not {"experiments", "runs"} <= tables:
        raise UsageError(f"{uri!r} is an SQLite file but not an MLflow tracking store (no experiments/runs "
                         f"tables); pass the sweep's mlflow.db")


def _client(uri: str):
    from mlflow.tracking import MlflowClient
    return MlflowClient(uri)


def _paged(fn, **kw) -> list:
    out, token = [], None
    while True:
        page = fn(page_token=token, **kw)
        out.extend(page)
        token = getattr(page, "token", None)
        if not token:
            return out


@contextlib.contextmanager
def _quick_http(uri: str):
    """Probe an http(s) server with few retries (MLflow's defaults wait minutes for a dead server);
    variables the user set are kept."""
    if not uri.startswith(("http://", "https://")):
        yield
        return
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
             "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
    added = [k for k in quick if k not in os.environ]
    os.environ.update({k: quick[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def mixkd_experiments(tracking_uri: str) -> list:
    """The active experiments of the store that mixkd created (experiment tag ``mixkd`` = '1')."""
    uri = resolve_tracking_uri(tracking_uri)
    client = _client(uri)
    try:
        with _quick_http(uri):
            exps = _paged(client.search_experiments, filter_string="tags.mixkd = '1'", max_results=1000)
    except UsageError:
        raise
    except Exception as e:  # unreachable server, not an MLflow database, ...
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if uri.startswith(("http://", "https://")) and re.search(r"Max retries|Connection|timed out", msg):
            raise UsageError(f"cannot reach tracking server {tracking_uri!r}; start it (mlflow server ...) "
                             f"or check --tracking-uri") from None
        raise UsageError(f"cannot read tracking store {tracking_uri!r}: {msg[:300]}") from None
    return sorted(exps, key=lambda e: e.name)


def _int(v: Any) -> int | None:
    try:
        return int(float(v))
    except (TypeError, ValueError):
        return None


def _float(v: Any, default: float | None = None) -> float | None:
    if v in (None, "", "None"):
        return default
    try:
        return float(v)
    except (TypeError, ValueError):
        return default


def _row(run, exp) -> dict[str, Any]:
    tags, info = run.data.tags, run.info
    row = {
        "run_id": info.run_id, "experiment": exp.name, "experiment_id": exp.experiment_id,
        "parent_run_id": tags.get("mlflow.parentRunId"), "sweep_id": tags.get(PARENT_TAG),
        "role": tags.get(ROLE_TAG), "status": info.status, "start_time": info.start_time,
        "task": tags.get("task"), "variant": tags.get("variant"),
        "student_layers": _int(tags.get("student_layers")),
        "layer_strategy": tags.get("layer_strategy"),
        # an unset --data-fraction means the whole training set
        "data_fraction": _float(tags.get("data_fraction"), 1.0),
        "augmentation": tags.get("augmentation", "none"),
        "seed": _int(tags.get("seed")),
        "config_group": tags.get("config_group"), "config_hash": tags.get("config_hash"),
        "run_dir": tags.get("run_dir"), "teacher_model": None, "teacher_run_id": None,
        "artifact_uri": info.artifact_uri,
        "params": dict(run.data.params),
    }
    row.update({k: float(v) for k, v in run.data.metrics.items()})
    return row


def expand_stores(uris: str | Iterable[str]) -> list[str]:
    """Tracking URIs as a list: a local folder that holds no mlflow.db itself but sweep folders that do (a folder of
    stores, e.g. experiments/results/glue-cpu/stores) stands for each of them, in name order."""
    out = []
    for uri in [uris] if isinstance(uris, str) else list(uris):
        p = Path(str(uri)).expanduser()
        nested = sorted(p.glob("*/mlflow.db")) if "://" not in str(uri) and p.is_dir() and \
            not (p / "mlflow.db").is_file() else []
        out += [str(f.parent) for f in nested] or [str(uri)]
    return out


def load_runs(tracking_uri: str | Iterable[str], experiment: str | None = None, roles: Iterable[str] = CHILD_ROLES):
    """:func:`load_store`'s rows of one store or of several (``tracking_uri`` a list, or a folder of stores), merged:
    a run found in two stores (the same run id, or the same computation: experiment, role, task, config hash and
    seed) is counted once, its FINISHED copy when it has one. A store that does not exist is a one-line UsageError;
    ``experiment`` must be in one."""
    import pandas as pd
    uris = expand_stores(tracking_uri)
    if len(uris) == 1:
        return load_store(uris[0], experiment, roles)
    frames, found = [], False
    for uri in uris:
        resolve_tracking_uri(uri)     # every store exists, or one line before anything is read
    for uri in uris:
        try:
            frames.append(load_store(uri, experiment, roles))
            found = True
        except UsageError as e:
            if experiment is None or "no mixkd experiment named" not in str(e):
                raise
    if not found:
        raise UsageError(f"no mixkd experiment named {experiment!r} in any of {len(uris)} stores")
    df = pd.concat(frames, ignore_index=True)
    # a computation interrupted in one store (a session that ended mid-run) and finished in another: the finished
    # copy is the one kept
    df = df.sort_values("status", key=lambda s: s != "FINISHED", kind="stable")
    df = df.drop_duplicates("run_id", keep="first")
    same = ["experiment", "role", "task", "config_hash", "seed"]
    df = df[~(df[same].notna().all(axis=1) & df.astype({c: str for c in same}).duplicated(same, keep="first"))]
    df = df.sort_values(["experiment", "start_time"], kind="stable").reset_index(drop=True)
    df["teacher_model"], df["teacher_run_id"] = _teachers(df)   # a trial's teacher may sit in another store
    return df


def load_store(tracking_uri: str, experiment: str | None = None, roles: Iterable[str] = CHILD_ROLES):
    """One row per mixkd child run of ``experiment`` (default: every mixkd experiment in the store).

    Columns: run_id, experiment, experiment_id, parent_run_id, sweep_id, role, status, start_time,
    task, variant, student_layers (int, None for teachers), layer_strategy, data_fraction (float;
    1.0 when unset), augmentation ('none' or the augment file name), seed (int), config_group (the
    tag; derived from the params for runs logged before it existed), config_hash, run_dir,
    teacher_model (the teacher's backbone, e.g. 'minilm-l6'), teacher_run_id (None when the
    teacher is not in the store), artifact_uri, params (dict of str), then one column per metric
    key with its latest value (NaN where a run did not log it), sorted by experiment and start.
    """
    import pandas as pd
    uri = resolve_tracking_uri(tracking_uri)
    exps = mixkd_experiments(uri)
    if not exps:
        raise UsageError(f"tracking store {tracking_uri!r} holds no mixkd experiments (none tagged mixkd=1); "
                         f"run a sweep first (mixkd sweep) or check --tracking-uri")
    if experiment is not None:
        chosen = [e for e in exps if e.name == experiment or e.experiment_id == str(experiment)]
        if not chosen:
            raise UsageError(f"no mixkd experiment named {experiment!r} in {tracking_uri}; "
                             f"available: {', '.join(e.name for e in exps)}")
        exps = chosen
    client = _client(uri)
    rows = []
    roles = tuple(roles)
    for exp in exps:
        runs = _paged(client.search_runs, experiment_ids=[exp.experiment_id], max_results=1000)
        rows += [{**_row(r, exp), "store": uri} for r in runs if r.data.tags.get(ROLE_TAG) in roles]
    df = pd.DataFrame(rows, columns=None if rows else list(BASE_COLUMNS))
    metric_cols = sorted(c for c in df.columns if c not in BASE_COLUMNS)
    df = df[list(BASE_COLUMNS) + metric_cols]
    df = df.sort_values(["experiment", "start_time"], kind="stable").reset_index(drop=True)
    df["config_group"] = [g if isinstance(g, str) and g else _params_group(p)
                          for g, p in zip(df["config_group"], df["params"])]
    df["teacher_model"], df["teacher_run_id"] = _teachers(df)
    # tag columns hold Python ints / str / None (never float NaN), so 3 stays 3 and a missing tag is None
    for col in ("student_layers", "seed"):
        df[col] = pd.Series([None if _missing(v) else int(v) for v in df[col]], index=df.index, dtype=object)
    for col in ("parent_run_id", "sweep_id", "role", "task", "variant", "layer_strategy", "augmentation",
                "config_group", "config_hash", "run_dir", "teacher_model", "teacher_run_id"):
        df[col] = pd.Series([None if _missing(v) else v for v in df[col]], index=df.index, dtype=object)
    return df


def _params_group(params: dict) -> str | None:
    """For runs logged before the ``config_group`` tag: a hash of the params without seeds, teacher
    path and runtime fields (prefixed ``p-``; consistent among such runs, not equal to the tag)."""
    if not params:
        return None
    import hashlib
    import json
    from ..core.config import RUNTIME_FIELDS
    skip = RUNTIME_FIELDS | {"seed", "data_seed", "teacher"}
    d = {k: v for k, v in params.items() if k not in skip}
    return "p-" + hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def _teachers(df) -> tuple[list, list]:
    """Per row: the teacher backbone (a teacher run's ``model`` param; a trial's teacher found by its
    run_dir, else the ``teacher`` param as written) and the teacher's run id when it is in the store."""
    by_dir = {d: (r, p.get("model")) for d, r, p, role in zip(df["run_dir"], df["run_id"], df["params"], df["role"])
              if role == "teacher" and isinstance(d, str)}
    models, ids = [], []
    for role, p in zip(df["role"], df["params"]):
        if role == "teacher":
            models.append(p.get("model")), ids.append(None)
            continue
        t = p.get("teacher")
        t = None if t in (None, "", "None") else t
        run, model = by_dir.get(t, (None, t))
        models.append(model), ids.append(run)
    return models, ids


def aggregate(df, by: list[str], metric: str):
    """Mean, sample std (ddof=1; NaN when n == 1), n and run ids of ``metric`` over the runs of each
    ``by`` group (runs where the metric is missing are left out). Groups keep None keys.

    Returns a DataFrame with the ``by`` columns, ``mean``, ``std``, ``n``, ``run_ids`` (list) and
    ``seeds`` (list), sorted by ``by``.
    """
    import pandas as pd
    cols = list(by) + ["mean", "std", "n", "run_ids", "seeds"]
    if metric not in df.columns or df.empty:
        return pd.DataFrame(columns=cols)
    sub = df[df[metric].notna()]
    out = []
    for _, g in sub.groupby(list(by), dropna=False, sort=True):
        vals = g[metric].astype(float)
        n = len(vals)
        out.append({**{b: (None if _missing(g[b].iloc[0]) else g[b].iloc[0]) for b in by},
                    "mean": float(vals.mean()), "std": float(vals.std(ddof=1)) if n > 1 else math.nan,
                    "n": n, "run_ids": list(g["run_id"]),
                    "seeds": list(g["seed"]) if "seed" in g.columns else []})
    res = pd.DataFrame(out, columns=cols)
    for b in by:  # keep the group keys as they were (3 stays 3 next to None, not 3.0 next to NaN)
        res[b] = pd.Series([r[b] for r in out], index=res.index, dtype=object)
    return res


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def _missing(v: Any) -> bool:
    return v is None or _isnan(v)


__all__ = ["load_runs", "aggregate", "mixkd_experiments", "resolve_tracking_uri"]
