"""Groups of finished runs (one per ``config_group``): the dev score over seeds and a latency per group,
logged by the sweep or measured here (:func:`group_runs`, step 1 of :mod:`mixkd.deploy.selection`)."""
from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from ..core.errors import UsageError
from ..core.metrics import above_chance
from ..core.tasks import primary_metric_of
from . import latency as L
from .pareto import is_finite
from .records import CONFIG_FIELDS, ConfigGroup, LatencyRecord

PERCENTILES = L.PERCENTILES
PRIMARY = "final/primary"


# --------------------------------------------------------------------------------------------------
# groups of runs
# --------------------------------------------------------------------------------------------------
def _ci95(values: list[float]) -> list[float] | None:
    n = len(values)
    if n < 2:
        return None
    from scipy import stats
    mean = sum(values) / n
    sd = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5
    h = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return [mean - h, mean + h]


def _none(v: Any) -> Any:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def group_label(g: ConfigGroup) -> str:
    """A short human name: ``sm+tmkd k=2 first`` (+ fraction / augmentation when not the default)."""
    if g.role == "teacher":
        parts = ["teacher", f"{g.task}"]
    else:
        parts = [str(g.variant), f"k={g.student_layers}", str(g.layer_strategy or "")]
    frac = g.data_fraction
    if is_finite(frac) and float(frac) != 1.0:
        parts.append(f"frac={float(frac):g}")
    if g.augmentation not in (None, "none"):
        parts.append(f"aug={g.augmentation}")
    parts.append(f"[{str(g.config_group)[:6]}]")
    return " ".join(p for p in parts if p)


class _Latencies:
    """Latency of a run at one (percentile, batch, seq len): logged by the sweep or measured here."""

    def __init__(self, tracking_uri: str | None, percentile: str, batch_size: int, seq_len: int, device: str,
                 dtype: str, threads: int | None, remeasure: bool, cache_dir: str | None, protocol: dict,
                 log: Callable[[str], None]):
        self.uri, self.pct, self.b, self.s = tracking_uri, percentile, batch_size, seq_len
        self.device, self.dtype, self.threads, self.remeasure = device, dtype, threads, remeasure
        self.cache_dir, self.protocol, self.log = cache_dir, protocol, log
        self._client = None
        self._tmp = None

    def close(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def _tags(self, run_id: str) -> dict:
        if not self.uri:
            return {}
        try:
            if self._client is None:
                from mlflow.tracking import MlflowClient
                self._client = MlflowClient(self.uri)
            return dict(self._client.get_run(run_id).data.tags)
        except Exception:
            return {}

    def logged(self, run: Mapping[str, Any]) -> LatencyRecord | None:
        """The sweep's latency metrics of this run, when present and measured on the requested device kind."""
        stats = {st: _none(run.get(L.metric_name(self.b, self.s, st))) for st in (*PERCENTILES, "mean", "std",
                                                                                   "throughput")}
        if not is_finite(stats[self.pct]):
            return None
        tags = self._tags(run["run_id"])
        dev = tags.get(L.LATENCY_DEVICE_TAG)
        if dev is not None and dev != self.device.split(":")[0]:
            return None
        fp = tags.get(L.LATENCY_FINGERPRINT_TAG)
        try:
            fp = json.loads(fp) if fp else None
        except ValueError:
            fp = None
        return LatencyRecord({f"{k}_ms" if k != "throughput" else k: v for k, v in stats.items()}, "sweep", fp)

    def model_config(self, run: Mapping[str, Any]) -> Any:
        """The run's model config: ``<run_dir>/model/config.json``, else the MLflow ``model/config.json``
        artifact, else the teacher's config with ``student_layers`` layers."""
        rd = run.get("run_dir")
        if rd and (Path(rd) / "model" / "config.json").is_file():
            return str(Path(rd) / "model" / "config.json")
        store = run.get("store") or self.uri   # several stores: each run's own
        if run.get("artifact_uri") and store:
            try:
                import mlflow.artifacts
                if self._tmp is None:
                    self._tmp = tempfile.mkdtemp(prefix="mixkd-select-")
                dst = Path(self._tmp) / run["run_id"]
                dst.mkdir(exist_ok=True)
                return mlflow.artifacts.download_artifacts(run_id=run["run_id"], artifact_path="model/config.json",
                                                           dst_path=str(dst), tracking_uri=store)
            except Exception:
                pass
        params = run.get("params") or {}
        teacher, k = params.get("teacher"), _none(run.get("student_layers"))
        if run.get("role") == "trial" and teacher not in (None, "None") \
                and params.get("student_model") in (None, "None") and k is not None:
            try:
                return L.student_config(teacher, int(k))
            except UsageError:
                pass
        return None

    def measured(self, run: Mapping[str, Any]) -> LatencyRecord | None:
        cfg = self.model_config(run)
        if cfg is None:
            return None
        res = L.cached_latency(cfg, self.b, self.s, self.device, self.dtype, self.cache_dir, threads=self.threads,
                               **self.protocol)
        if not res["cached"]:
            self.log(f"measured {run.get('_label', run['run_id'])}: {self.pct} {res[self.pct + '_ms']:.2f} ms "
                     f"(batch {self.b}, seq {self.s}, {res['iters']} iterations)")
        return LatencyRecord.of_measurement(res)

    def __call__(self, runs: Sequence[Mapping[str, Any]]) -> LatencyRecord | None:
        """The latency of the first run (best seed first) the sweep logged one for, else of the first whose model
        config is found (measured here); None when neither."""
        if not self.remeasure:
            for r in runs:
                got = self.logged(r)
                if got:
                    return got
        for r in runs:
            got = self.measured(r)
            if got:
                return got
        return None


def run_records(df) -> list[dict]:
    """The rows of a run store DataFrame as dicts, missing values (NaN) as None."""
    return [{k: _none(v) if not isinstance(v, (dict, list)) else v for k, v in row.items()}
            for row in df.to_dict("records")]


def _best_first(r: Mapping[str, Any]) -> tuple:
    """Sort key of a group's runs: the highest score first; ties: the lowest seed, then the run id."""
    return -float(r[PRIMARY]), r.get("seed") if r.get("seed") is not None else 1 << 62, r["run_id"]


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (NaN for one value)."""
    n = len(values)
    mean = sum(values) / n
    return mean, (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else math.nan


def _metric_summaries(rs: list[dict]) -> dict[str, list]:
    """{final/x: [mean, sample std, runs]} over the runs that logged a finite final/x."""
    metrics = {}
    for k in sorted({k for r in rs for k in r if k.startswith("final/")}):
        vals = [float(r[k]) for r in rs if is_finite(r.get(k))]
        if vals:
            metrics[k] = [*_mean_std(vals), len(vals)]
    return metrics


def _new_group(key: str, rs: list[dict], role: str) -> ConfigGroup:
    """A group's configuration (from its best run ``rs[0]``), label and scores over seeds; no latency yet."""
    config = {col: rs[0].get(col) for col in CONFIG_FIELDS}
    if is_finite(config["student_layers"]):            # 3, not 3.0 (a float column next to missing values)
        config["student_layers"] = int(config["student_layers"])
    scores = [float(r[PRIMARY]) for r in rs]
    mean, std = _mean_std(scores)
    g = ConfigGroup(key, role, **config, n=len(scores), seeds=[r.get("seed") for r in rs],
                    run_ids=[r["run_id"] for r in rs], scores=scores, score=mean, score_std=std,
                    score_ci95=_ci95(scores), metrics=_metric_summaries(rs))
    g.label = group_label(g)
    return g


def _chance_level(g: ConfigGroup, params: Mapping[str, Any] | None) -> float | None:
    """The mean chance level of the group's primary metric (``final/chance_<metric>``), when the runs logged it."""
    primary = primary_metric_of(g.task, params) if g.task else None
    chance = g.metrics.get(f"final/chance_{primary}") if primary else None
    return None if chance is None else chance[0]


def group_runs(runs, *, percentile: str = "p90", batch_size: int = 1, seq_len: int = L.DEFAULT_SEQ_LEN,
               device: str = "cpu", dtype: str = "fp32", threads: int | None = None, tracking_uri: str | None = None,
               remeasure: bool = False, cache_dir: str | None = None, protocol: dict | None = None,
               role: str = "trial", log: Callable[[str], None] | None = None,
               keep_at_chance: bool = False) -> list[ConfigGroup]:
    """One :class:`ConfigGroup` per ``config_group`` of the finished ``role`` runs in ``runs`` (a
    :func:`runstore.load_runs` DataFrame or a list of its row dicts) that have ``final/primary``.

    Each group: ``config_group, role, task, variant, student_layers, layer_strategy, data_fraction,
    augmentation, label, n, seeds, run_ids, scores, score`` (mean of final/primary), ``score_std``
    (sample std, NaN for one seed), ``score_ci95`` ([lo, hi] or None), ``metrics`` ({final/x: [mean, std]}),
    ``best_run`` (the row of the seed with the highest score; ties: lowest seed, then run id),
    ``params_count``, ``latency_ms`` (at ``percentile``; None when unknown), ``latency`` (p50/p90/p99/mean/
    std ms and throughput), ``latency_source`` (sweep | measured | cache), ``latency_fingerprint``.
    ``at_chance`` is True when the mean score does not beat the mean chance level the runs logged
    (``final/chance_<primary metric>``, see :func:`mixkd.core.metrics.above_chance`); such trial groups are left
    out (with a log line) unless ``keep_at_chance``: a model that learned nothing is never chosen.
    Ordered by score descending, then label.
    """
    if percentile not in PERCENTILES:
        raise UsageError(f"--percentile {percentile!r} is invalid; use one of {', '.join(PERCENTILES)}")
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    rows = runs if isinstance(runs, list) else run_records(runs)
    rows = [r for r in rows if r.get("role") == role and r.get("status", "FINISHED") == "FINISHED"
            and is_finite(r.get(PRIMARY))]
    by: dict[str, list[dict]] = {}
    for r in rows:
        by.setdefault(r.get("config_group") or r.get("config_hash") or r["run_id"], []).append(r)
    lat = _Latencies(tracking_uri, percentile, batch_size, seq_len, device, dtype, threads, remeasure, cache_dir,
                     protocol or {}, log)
    groups = []
    try:
        for key, rs in by.items():
            rs.sort(key=_best_first)
            g = _new_group(key, rs, role)
            chance = _chance_level(g, rs[0].get("params"))
            g.at_chance = chance is not None and not above_chance(g.score, chance)
            if g.at_chance and role == "trial" and not keep_at_chance:
                log(f"skipped {g.label}: at chance level (mean {g.score:.4f}, a constant predictor scores "
                    f"{chance:.4f}); it learned nothing")
                continue
            g.best_run = rs[0]
            g.params_count = int(rs[0]["params_count"]) if is_finite(rs[0].get("params_count")) else None
            for r in rs:
                r["_label"] = g.label
            latency = lat(rs)
            if latency is None:
                log(f"no latency for {g.label}: no logged latency/b{batch_size}_s{seq_len}_{percentile}_ms and "
                    f"no model config found (run_dir or MLflow model/ artifact); left out")
            g.set_latency(latency, percentile)
            groups.append(g)
    finally:
        lat.close()
    groups.sort(key=lambda g: (-g.score, g.label))
    return groups
