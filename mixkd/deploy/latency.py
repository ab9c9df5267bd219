"""Inference latency of sequence classifiers under a fixed protocol, cached per architecture.

Protocol (:func:`measure`): the thread count is set and recorded; the model runs in eval mode under
``torch.inference_mode()`` on random token ids of shape (batch, seq len) with a full attention mask;
``warmup`` untimed runs, then at least ``min_iters`` timed iterations **and** at least ``min_seconds``
of timed work. Each iteration is timed on its own: ``time.perf_counter`` on CPU, a pair of CUDA events
(then a synchronize) on GPU. The result holds p50/p90/p99, mean and std in milliseconds, throughput in
samples/s, the iteration count and a hardware/software fingerprint.

Latency depends on the architecture and the runtime, not on the weights. :func:`cached_latency` builds
a random-weight model from a config (``AutoModelForSequenceClassification.from_config``) and measures
it only when no result is cached for (architecture fingerprint, device fingerprint, dtype, batch size,
sequence length), so a sweep measures each student depth once, not once per trial. Cache files are
JSON under ``$MIXKD_CACHE/latency`` written atomically; a cached result is reused only when it was
measured with at least the requested warm-up, iterations and seconds.

This module imports torch and transformers only (no Ray, no MLflow).
"""
from __future__ import annotations

import copy
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..core.atomic import write_json_atomic
from ..core.errors import UsageError
from .protocol import (check_positive, check_protocol, coefficient_of_variation, protocol_result, short_hash,
                       summarize, timed_loop)

DEFAULT_BATCH_SIZES = (1, 32)
DEFAULT_SEQ_LEN = 128
DEFAULT_WARMUP = 10
DEFAULT_MIN_ITERS = 30
DEFAULT_MIN_SECONDS = 2.0
PERCENTILES = ("p50", "p90", "p99")
DTYPES = ("fp32", "bf16", "fp16")
CACHE_VERSION = 1

# config keys that do not change the compute of an eval-mode forward pass (left out of the
# architecture fingerprint): names, label names, init, dropout, token ids, output switches
_NON_COMPUTE_KEYS = {
    "_name_or_path", "name_or_path", "transformers_version", "architectures", "id2label", "label2id",
    "problem_type", "initializer_range", "initializer_factor", "finetuning_task", "tokenizer_class",
    "prefix", "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id", "decoder_start_token_id",
    "task_specific_params", "torch_dtype", "dtype", "return_dict", "output_hidden_states",
    "output_attentions", "use_cache", "gradient_checkpointing", "classifier_dropout", "_commit_hash",
    "layer_norm_eps", "_attn_implementation_autoset", "output_past", "tie_word_embeddings",
}


# --------------------------------------------------------------------------------------------------
# fingerprints
# --------------------------------------------------------------------------------------------------
def _torch_dtype(dtype: str):
    import torch
    if dtype not in DTYPES:
        raise UsageError(f"dtype {dtype!r} is invalid; use one of {', '.join(DTYPES)}")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]


def load_config(model_config_or_dir: Any, num_labels: int | None = None):
    """A transformers config from a config object, a dict, an HF model dir, a mixkd run dir, a
    ``config.json`` path or the alias ``minilm-l6`` (never loads weights, never runs remote code)."""
    from transformers import AutoConfig, PretrainedConfig
    if isinstance(model_config_or_dir, PretrainedConfig):
        cfg = copy.deepcopy(model_config_or_dir)
    elif isinstance(model_config_or_dir, Mapping):
        d = dict(model_config_or_dir)
        if "model_type" not in d:
            raise UsageError("a config dict needs 'model_type' (e.g. 'bert'); pass an HF config.json's contents")
        cfg = AutoConfig.for_model(d.pop("model_type"), **d)
    else:
        name = str(model_config_or_dir)
        p = Path(name).expanduser()
        if p.is_file() and p.name.endswith(".json"):
            path = str(p.parent) if p.name == "config.json" else str(p)
        else:
            from ..core.models import resolve_model
            path = resolve_model(name)
        try:
            cfg = AutoConfig.from_pretrained(path, trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot read the model config of {name!r} ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:160]}); give a local HF model dir, a mixkd run dir "
                             f"or the alias 'minilm-l6'") from None
    if num_labels is not None and num_labels != cfg.num_labels:
        cfg.num_labels = int(num_labels)
    return cfg


def student_config(teacher_config_or_dir: Any, k: int, num_labels: int | None = None):
    """The architecture of a k-layer student of a teacher (``mixkd distill --student-layers k``):
    the teacher's config cut to its first k layers (``num_hidden_layers``, per-layer lists). No weights are
    loaded. The layer strategy hardly matters: the layers of a BERT-like model have the same shape."""
    cfg = load_config(teacher_config_or_dir, num_labels=num_labels)
    n = int(cfg.num_hidden_layers)
    if not isinstance(k, int) or not 1 <= k <= n:
        raise UsageError(f"--student-layers {k} is invalid: the teacher has {n} layers; use 1..{n}")
    from ..core.models import cut_config
    return cut_config(cfg, list(range(k)))


def architecture_fields(model_config: Any) -> dict[str, Any]:
    """The config fields that change the compute of a forward pass (layers, hidden size, heads,
    intermediate size, vocab, max positions, num_labels, model type, activation, ...)."""
    cfg = load_config(model_config)
    d = cfg.to_dict()
    out = {k: v for k, v in d.items()
           if k not in _NON_COMPUTE_KEYS and not k.startswith("mixkd_") and "dropout" not in k
           and not k.endswith("_prob")}
    out["num_labels"] = int(cfg.num_labels)
    out["model_type"] = cfg.model_type
    return out


def architecture_fingerprint(model_config: Any) -> str:
    """16-hex hash of :func:`architecture_fields`: equal for a teacher's k-layer students of any
    weights or layer strategy, different when depth, width, heads, vocab, labels or type differ."""
    return short_hash(architecture_fields(model_config))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _resolve_device(device: str) -> str:
    import torch
    device = str(device or "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device} is not available (torch {torch.__version__} sees no CUDA GPU); "
                             f"use --device cpu")
        return device if ":" in device else f"cuda:{torch.cuda.current_device()}"
    if device != "cpu":
        raise UsageError(f"--device {device!r} is invalid; use cpu, cuda or cuda:N")
    return device


def _resolve_threads(threads: int | None) -> int:
    import torch
    if threads is None:
        return torch.get_num_threads()
    if not isinstance(threads, int) or threads < 1:
        raise UsageError(f"--threads {threads} is invalid; use a positive integer (e.g. {os.cpu_count()})")
    return threads


def device_info(device: str = "cpu", dtype: str = "fp32", threads: int | None = None) -> dict[str, Any]:
    """The hardware/software a latency belongs to: device, CPU model and count, GPU name, torch and
    transformers versions, dtype and intra-op threads (None: the current ``torch.get_num_threads()``)."""
    import torch
    import transformers
    device = _resolve_device(device)
    _torch_dtype(dtype)
    gpu = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None
    return {"device": device.split(":")[0], "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "machine": platform.machine(), "gpu": gpu, "torch": torch.__version__,
            "transformers": transformers.__version__, "dtype": dtype, "threads": _resolve_threads(threads)}


def device_fingerprint(device: str = "cpu", dtype: str = "fp32", threads: int | None = None) -> str:
    """16-hex hash of :func:`device_info`."""
    return short_hash(device_info(device, dtype, threads))


# --------------------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------------------
def measure(model, batch_size: int = 1, seq_len: int = DEFAULT_SEQ_LEN, device: str = "cpu",
            dtype: str = "fp32", warmup: int = DEFAULT_WARMUP, min_iters: int = DEFAULT_MIN_ITERS,
            min_seconds: float = DEFAULT_MIN_SECONDS, threads: int | None = None, seed: int = 0,
            fingerprint_extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Latency of one forward pass of ``model`` on a (batch_size, seq_len) batch under the fixed protocol.

    The model is moved to ``device`` and ``dtype`` (fp32, bf16, fp16) and put in eval mode (in place).
    ``threads`` sets ``torch.set_num_threads`` for the measurement (restored afterwards; None keeps
    the current count) and is recorded. The timed loop (:func:`timed_loop`) runs until both
    ``min_iters`` iterations and ``min_seconds`` of wall time are reached. ``fingerprint_extra`` is
    added to the fingerprint (e.g. the format of a quantized model).

    Returns ``batch_size, seq_len, p50_ms, p90_ms, p99_ms, mean_ms, std_ms, min_ms, max_ms,
    throughput`` (samples/s), ``iters, warmup, elapsed_s`` (wall time of the timed loop),
    ``fingerprint`` (:func:`device_info`) and ``device_fingerprint``.
    """
    import torch
    check_protocol(batch_size, seq_len, warmup, min_iters, min_seconds)
    device = _resolve_device(device)
    tdtype = _torch_dtype(dtype)
    cfg = model.config
    max_pos = getattr(cfg, "max_position_embeddings", None)
    if max_pos is not None and seq_len > max_pos:
        raise UsageError(f"--seq-len {seq_len} is longer than the model's {max_pos} positions; use at most {max_pos}")
    prev_threads = torch.get_num_threads()
    threads = _resolve_threads(threads)
    fp = {**device_info(device, dtype, threads), **(fingerprint_extra or {})}
    gen = torch.Generator().manual_seed(seed)
    inputs = {"input_ids": torch.randint(0, int(cfg.vocab_size), (batch_size, seq_len), generator=gen).to(device),
              "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long, device=device)}
    model = model.to(device=device, dtype=tdtype).eval()
    cuda = device.startswith("cuda")

    def cuda_timed():      # a pair of CUDA events around the call, then a synchronize
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        model(**inputs)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0
    try:
        torch.set_num_threads(threads)
        with torch.inference_mode():
            loop = timed_loop(lambda: model(**inputs), warmup, min_iters, min_seconds, cuda_timed if cuda else None,
                              (lambda: torch.cuda.synchronize(device)) if cuda else None)
    finally:
        torch.set_num_threads(prev_threads)
    return protocol_result(loop, batch_size, seq_len, warmup, min_iters, min_seconds, fp,
                           attn_implementation=getattr(cfg, "_attn_implementation", None))


def build_random_model(model_config: Any, num_labels: int | None = None):
    """A random-weight ``AutoModelForSequenceClassification`` of this architecture (no weights read)."""
    import torch
    from transformers import AutoModelForSequenceClassification
    from ..core.models import quiet_transformers
    quiet_transformers()
    cfg = load_config(model_config, num_labels=num_labels)
    torch.manual_seed(0)
    try:
        return AutoModelForSequenceClassification.from_config(cfg, trust_remote_code=False)
    except ValueError as e:
        raise UsageError(f"cannot build a sequence classifier for model type {cfg.model_type!r} "
                         f"({str(e).splitlines()[0][:160]})") from None


# --------------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    from ..core.data import cache_dir
    return cache_dir() / "latency"


def cache_key(arch_fp: str, dev_fp: str, dtype: str, batch_size: int, seq_len: int, fmt: str = "torch") -> str:
    key = {"v": CACHE_VERSION, "arch": arch_fp, "device": dev_fp, "dtype": dtype, "batch": int(batch_size),
           "seq": int(seq_len)}
    return short_hash(key if fmt == "torch" else {**key, "format": fmt}, n=24)


# a measurement whose p90 is this many times its p50 was taken on a busy machine (the demo's teacher once showed
# p50 88 ms, p90 616 ms): it is measured again, flagged, and never cached
NOISY_P90_OVER_P50 = 1.5
# a cached latency is reused only when a short probe (PROBE_ITERS timed runs) finds its p50 within this factor
PROBE_ITERS = 5
PROBE_TOLERANCE = 1.3
# differences below this many ms are timer jitter, not load (sub-millisecond models)
JITTER_MS = 2.0


def is_noisy(rec: Mapping[str, Any]) -> bool:
    p50, p90 = rec.get("p50_ms"), rec.get("p90_ms")
    return bool(p50 and p90 and p90 > NOISY_P90_OVER_P50 * p50 and p90 - p50 > JITTER_MS)


def still_holds(cached: Mapping[str, Any], probe: Mapping[str, Any]) -> bool:
    """Does a short probe on this machine now agree with the cached p50 (within PROBE_TOLERANCE either way)?"""
    a, b = float(cached["p50_ms"]), float(probe["p50_ms"])
    return max(a, b) <= PROBE_TOLERANCE * min(a, b) or abs(a - b) <= JITTER_MS


def _satisfies(rec: dict, warmup: int, min_iters: int, min_seconds: float) -> bool:
    return (rec.get("warmup", -1) >= warmup and rec.get("iters", 0) >= min_iters
            and rec.get("elapsed_s", 0.0) >= min_seconds)


def cached_latencies(model_config_or_dir: Any, batch_sizes: Iterable[int] = DEFAULT_BATCH_SIZES,
                     seq_len: int = DEFAULT_SEQ_LEN, device: str = "cpu", dtype: str = "fp32",
                     cache_dir: str | os.PathLike | None = None, *, student_layers: int | None = None,
                     num_labels: int | None = None, threads: int | None = None, warmup: int = DEFAULT_WARMUP,
                     min_iters: int = DEFAULT_MIN_ITERS, min_seconds: float = DEFAULT_MIN_SECONDS,
                     use_cache: bool = True, fmt: str = "torch", runtime: Mapping[str, Any] | None = None,
                     make_measure=None) -> dict[int, dict[str, Any]]:
    """:func:`cached_latency` for several batch sizes; the random model is built once, and only if
    some batch size is not cached. Returns {batch_size: result}.

    Other deployment formats (:mod:`.formats`) pass ``fmt`` (part of the cache key), ``runtime`` (added to
    the device fingerprint: runtime, version, thread settings) and ``make_measure(cfg)`` returning
    ``fn(batch_size, seq_len, warmup=, min_iters=, min_seconds=) -> result`` for that format."""
    cfg = load_config(model_config_or_dir, num_labels=num_labels)
    if student_layers is not None:
        cfg = student_config(cfg, student_layers)
    batch_sizes = list(dict.fromkeys(int(b) for b in batch_sizes))
    for b in batch_sizes:
        check_positive("--batch-size", b)
    arch = architecture_fields(cfg)
    arch_fp = short_hash(arch)
    dev = device_info(device, dtype, threads)
    dev_fp = short_hash({**dev, **(runtime or {})})
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out: dict[int, dict[str, Any]] = {}
    model = None

    def run(b: int, **proto) -> dict:
        nonlocal model
        if model is None:
            model = make_measure(cfg) if make_measure else build_random_model(cfg)
        return (model(b, seq_len, **proto) if make_measure else
                measure(model, b, seq_len, device=device, dtype=dtype, threads=dev["threads"], **proto))

    for b in batch_sizes:
        path = root / f"{cache_key(arch_fp, dev_fp, dtype, b, seq_len, fmt)}.json"
        if use_cache and path.is_file():
            try:
                rec = json.loads(path.read_text())
            except (OSError, ValueError):
                rec = None                     # a corrupt file is measured again and replaced
            if rec and _satisfies(rec, warmup, min_iters, min_seconds) and not is_noisy(rec):
                # a cache entry must not outlive the conditions it was measured in: a short probe first
                probe = run(b, warmup=max(2, min(warmup, 3)), min_iters=PROBE_ITERS, min_seconds=0.0)
                if still_holds(rec, probe):
                    out[b] = {**rec, "cached": True, "cache_file": str(path), "probe_p50_ms": probe["p50_ms"]}
                    continue
        proto = dict(warmup=warmup, min_iters=min_iters, min_seconds=min_seconds)
        rec = run(b, **proto)
        if is_noisy(rec):                      # a busy machine: measure once more before believing it
            rec = run(b, **proto)
        rec.update(architecture_fingerprint=arch_fp, architecture=arch, dtype=dtype, format=fmt,
                   measured_at=time.strftime("%Y-%m-%dT%H:%M:%S"), noisy=is_noisy(rec))
        if use_cache and not rec["noisy"]:     # a noisy measurement is never cached
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json_atomic(path, rec)
        out[b] = {**rec, "cached": False, "cache_file": str(path) if use_cache and not rec["noisy"] else None}
    del model
    return out


def cached_latency(model_config_or_dir: Any, batch_size: int = 1, seq_len: int = DEFAULT_SEQ_LEN,
                   device: str = "cpu", dtype: str = "fp32", cache_dir: str | os.PathLike | None = None, *,
                   student_layers: int | None = None, num_labels: int | None = None, threads: int | None = None,
                   warmup: int = DEFAULT_WARMUP, min_iters: int = DEFAULT_MIN_ITERS,
                   min_seconds: float = DEFAULT_MIN_SECONDS, use_cache: bool = True) -> dict[str, Any]:
    """Latency of an architecture, measured once per (architecture, device, dtype, batch, seq len).

    ``model_config_or_dir``: a transformers config, a config dict, an HF model dir, a mixkd run dir,
    a ``config.json`` path or ``minilm-l6``. ``student_layers=k`` measures the k-layer student of
    that teacher instead (:func:`student_config`). Weights are never loaded: a random-weight
    ``AutoModelForSequenceClassification`` is built from the config and measured with
    :func:`measure` only when ``cache_dir`` (default ``$MIXKD_CACHE/latency``) holds no result for
    the key, or holds one measured with less warm-up / fewer iterations / fewer seconds than asked.

    Call it where nothing else runs on the device (inside a sweep: a Ray task that reserves the
    whole node), and pass ``threads`` explicitly there: it is part of the device fingerprint.

    Returns :func:`measure`'s dict plus ``architecture_fingerprint``, ``architecture`` (the fields
    hashed), ``dtype``, ``measured_at``, ``cached`` (bool: read from the cache) and ``cache_file``.
    """
    return cached_latencies(model_config_or_dir, [batch_size], seq_len, device, dtype, cache_dir,
                            student_layers=student_layers, num_labels=num_labels, threads=threads, warmup=warmup,
                            min_iters=min_iters, min_seconds=min_seconds, use_cache=use_cache)[int(batch_size)]


# --------------------------------------------------------------------------------------------------
# names shared with the sweep (MLflow metrics) and selection
# --------------------------------------------------------------------------------------------------
def metric_name(batch_size: int, seq_len: int, stat: str) -> str:
    """MLflow metric name of one latency statistic: ``latency/b1_s128_p90_ms``; ``stat`` is p50, p90,
    p99, mean, std (milliseconds) or ``throughput`` (samples/s, no ``_ms``)."""
    suffix = "" if stat == "throughput" else "_ms"
    return f"latency/b{int(batch_size)}_s{int(seq_len)}_{stat}{suffix}"


def mlflow_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """The MLflow metrics of one :func:`measure` / :func:`cached_latency` result."""
    b, s = result["batch_size"], result["seq_len"]
    out = {metric_name(b, s, st): float(result[f"{st}_ms"]) for st in (*PERCENTILES, "mean", "std")}
    out[metric_name(b, s, "throughput")] = float(result["throughput"])
    return out


LATENCY_DEVICE_TAG = "latency.device"
LATENCY_FINGERPRINT_TAG = "latency.fingerprint"


def mlflow_tags(result: Mapping[str, Any]) -> dict[str, str]:
    """Tags that say where a run's latency metrics were measured: ``latency.device`` (cpu/cuda),
    ``latency.fingerprint`` (the JSON of :func:`device_info`)."""
    fp = result["fingerprint"]
    return {LATENCY_DEVICE_TAG: str(fp["device"]), LATENCY_FINGERPRINT_TAG: json.dumps(fp, sort_keys=True)}


def format_table(rows: list[Mapping[str, Any]], extra_cols: tuple[str, ...] = ()) -> str:
    """A markdown table of results: model, batch, seq, p50/p90/p99/mean/std (ms), throughput."""
    head = ["model", "batch", "seq", "p50 ms", "p90 ms", "p99 ms", "mean ms", "std ms", "samples/s", "iters",
            *extra_cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r.get("model", "")), str(r["batch_size"]), str(r["seq_len"]),
                 *(f"{r[k]:.2f}" for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms")),
                 f"{r['throughput']:.1f}", str(r.get("iters", ""))]
        for c in extra_cols:
            v = r.get(c)
            cells.append(f"{v:.1%}" if isinstance(v, float) else ("" if v is None else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["measure", "cached_latency", "cached_latencies", "student_config", "load_config",
           "architecture_fingerprint", "architecture_fields", "device_fingerprint", "device_info",
           "build_random_model", "metric_name", "mlflow_metrics", "mlflow_tags", "summarize", "format_table",
           "coefficient_of_variation", "DEFAULT_BATCH_SIZES", "DEFAULT_SEQ_LEN"]
