"""Typed records passed between the deploy modules: a configuration's latency (:class:`LatencyRecord`), a
configuration group of finished runs (:class:`ConfigGroup`), one (configuration, format) point of ``mixkd select
--formats`` (:class:`FormatPoint`), and the latency a selection compares (:class:`LatencyQuery`).

They never reach disk as such: a group takes a latency's fields (:meth:`ConfigGroup.set_latency`), and
``selection.json`` takes what :func:`mixkd.deploy.select_export.group_summary` keeps of a group or a point (or a
group's dict form, :meth:`ConfigGroup.as_dict`), so the files are what they were.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from ..core.errors import UsageError
from . import latency as L

# the statistics of a latency, as :func:`mixkd.deploy.latency.measure` names them
LATENCY_STATS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "throughput")
# a configuration's fields, as a group takes them from its best run
CONFIG_FIELDS = ("task", "variant", "student_layers", "layer_strategy", "data_fraction", "augmentation", "experiment")


@dataclass(frozen=True)
class LatencyRecord:
    """A configuration's latency at one (batch size, sequence length, device): the statistics (``p50_ms`` ...
    ``throughput``; a statistic the sweep did not log is None), where they came from (``sweep``: logged by the
    sweep; ``measured`` or ``cache``: here) and the hardware/software fingerprint they belong to (None when the
    sweep did not record it)."""
    stats: dict[str, float | None]
    source: str
    fingerprint: dict[str, Any] | None = None

    @classmethod
    def of_measurement(cls, result: Mapping[str, Any]) -> LatencyRecord:
        """From one :func:`mixkd.deploy.latency.cached_latencies` result (measured here or read from the cache)."""
        return cls({k: result[k] for k in LATENCY_STATS}, "cache" if result["cached"] else "measured",
                   result["fingerprint"])

    def ms(self, percentile: str) -> float | None:
        """The latency at ``percentile`` (p50, p90, p99) in milliseconds."""
        return self.stats[f"{percentile}_ms"]

    def group_fields(self, percentile: str) -> dict[str, Any]:
        """The latency fields of a group or a point: ``latency`` (the statistics), ``latency_ms`` (at
        ``percentile``), ``latency_source`` and ``latency_fingerprint``."""
        return {"latency": self.stats, "latency_ms": self.ms(percentile), "latency_source": self.source,
                "latency_fingerprint": self.fingerprint}


@dataclass
class ConfigGroup:
    """A configuration group: the finished runs of one ``config_group`` (its seeds) with the configuration, the dev
    score over seeds and a latency (:func:`mixkd.deploy.groups.group_runs`), or a teacher measured from its run dir
    when the store has no teacher run (then ``path`` is that dir, and there is no ``config_group`` nor best run).

    The fields are in the order the group's dict form (:meth:`as_dict`) has them."""
    config_group: str | None           # the tag config_group (the config hash without seeds)
    role: str                          # trial | teacher
    # the configuration (:data:`CONFIG_FIELDS`), from the best run
    task: str | None = None
    variant: str | None = None
    student_layers: int | None = None
    layer_strategy: str | None = None
    data_fraction: float | None = None
    augmentation: str | None = None
    experiment: str | None = None
    label: str = ""                    # a short human name (:func:`mixkd.deploy.groups.group_label`)
    n: int = 0                         # seeds
    seeds: list = field(default_factory=list)
    run_ids: list = field(default_factory=list)
    scores: list[float] = field(default_factory=list)   # each seed's final/primary, best first
    score: float | None = None         # mean of final/primary over seeds
    score_std: float = math.nan        # sample std (NaN for one seed)
    score_ci95: list[float] | None = None   # [lo, hi]; None for one seed
    metrics: dict[str, list] = field(default_factory=dict)   # {final/x: [mean, std, runs]}
    at_chance: bool = False            # the mean score does not beat the chance level the runs logged
    best_run: dict[str, Any] | None = None   # the run row of the seed with the highest score
    params_count: int | None = None
    latency: dict[str, float | None] | None = None   # the statistics (:data:`LATENCY_STATS`); None when unknown
    latency_ms: float | None = None    # at the selection's percentile
    latency_source: str | None = None  # sweep | measured | cache
    latency_fingerprint: dict[str, Any] | None = None
    path: str | None = None            # a teacher measured from its run dir: that dir

    def set_latency(self, latency: LatencyRecord | None, percentile: str) -> None:
        """Take the latency fields of ``latency`` at ``percentile`` (:meth:`LatencyRecord.group_fields`); None when
        it is None."""
        self.latency = latency.stats if latency is not None else None
        self.latency_ms = latency.ms(percentile) if latency is not None else None
        self.latency_source = latency.source if latency is not None else None
        self.latency_fingerprint = latency.fingerprint if latency is not None else None

    def as_dict(self) -> dict[str, Any]:
        """Every field, in order (``path`` only when set); values are not copied."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name != "path" or self.path is not None}


@dataclass(frozen=True)
class LatencyQuery:
    """The latency a selection compares: ``percentile`` at (``batch_size``, ``seq_len``) on ``device`` in ``dtype``,
    and how it is measured here when the sweep did not log it (``threads``, ``cache_dir``, ``protocol``)."""
    percentile: str = "p90"
    batch_size: int = 1
    seq_len: int = L.DEFAULT_SEQ_LEN
    device: str = "cpu"
    dtype: str = "fp32"
    threads: int | None = None
    cache_dir: str | None = None
    protocol: dict | None = None

    def describe(self) -> str:
        return f"{self.percentile}, batch {self.batch_size}, seq {self.seq_len}, {self.device}"

    def check_statistic(self) -> None:
        """UsageError for a bad percentile, batch size or sequence length."""
        if self.percentile not in L.PERCENTILES:
            raise UsageError(f"--percentile {self.percentile!r} is invalid; use one of {', '.join(L.PERCENTILES)}")
        for flag, v in (("--batch-size", self.batch_size), ("--seq-len", self.seq_len)):
            if not isinstance(v, int) or v < 1:
                raise UsageError(f"{flag} {v} is invalid; use a positive integer")

    def check_device(self) -> None:
        """UsageError for a device, dtype or thread count this machine does not have."""
        L.device_info(self.device, self.dtype, self.threads)

    def group_args(self) -> dict[str, Any]:
        """The keyword arguments of :func:`group_runs` that say which latency to read or measure."""
        return dict(percentile=self.percentile, batch_size=self.batch_size, seq_len=self.seq_len,
                    device=self.device, dtype=self.dtype, threads=self.threads, cache_dir=self.cache_dir,
                    protocol=self.protocol)

    def measure(self, model_config: Any) -> LatencyRecord:
        """The latency of a model config measured here (or read from the cache)."""
        return LatencyRecord.of_measurement(L.cached_latency(
            model_config, self.batch_size, self.seq_len, self.device, self.dtype, self.cache_dir, threads=self.threads,
            **(self.protocol or {})))


@dataclass
class FormatPoint:
    """One (configuration, deployment format) of ``mixkd select --formats``: the configuration (a group of
    :func:`mixkd.deploy.groups.group_runs`) converted to ``format``, scored on the dev set after conversion and
    measured in that format. The Pareto front and the choice (:mod:`.pareto`) read ``score``, ``latency_ms`` and
    ``label``; ``selection.json`` holds its summary (:func:`mixkd.deploy.select_export.group_summary` and the
    format's fields)."""
    config_group: str                  # the configuration's group, then /format
    base_config_group: str             # the configuration's group
    label: str                         # the configuration's label, then [format]
    format: str
    weight_type: str | None            # onnx-int8: the ONNX Runtime weight type kept; else None
    best_run: dict[str, Any]           # the run whose model was converted (the configuration's best seed)
    n: int
    seeds: list
    score: float                       # seed mean + conversion_delta (converted_score when there is no seed mean)
    score_std: float
    scores: list[float]                # each seed's score + conversion_delta
    latency_ms: float                  # at the selection's percentile
    latency: dict[str, Any]            # the statistics (:data:`LATENCY_STATS`)
    latency_source: str
    source_dir: str                    # the PyTorch model folder converted (and exported when chosen)
    latency_fingerprint: dict[str, Any] | None = None
    seed_mean: float | None = None     # the configuration's mean dev score over seeds, as logged (PyTorch fp32)
    torch_score: float | None = None   # the best seed's dev score in PyTorch, measured here
    converted_score: float | None = None   # the same after conversion to the format
    conversion_delta: float | None = None  # converted_score - torch_score
    agreement: dict[str, Any] | None = None   # labels agreeing with PyTorch (:func:`mixkd.deploy.export.agreement`)
    # the configuration's fields, as its group has them
    task: str | None = None
    variant: str | None = None
    student_layers: int | None = None
    layer_strategy: str | None = None
    data_fraction: float | None = None
    augmentation: str | None = None
    experiment: str | None = None
    run_ids: list | None = None
    params_count: int | None = None
    metrics: dict | None = None

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any]) -> FormatPoint:
        """A point from its dict form (:meth:`as_dict`); fields it lacks take their defaults."""
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
