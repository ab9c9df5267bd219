"""The latency protocol shared by every runtime (PyTorch in :mod:`.latency`, ONNX Runtime in
:mod:`.onnx_export`): argument checks, the timed loop, percentiles and the result dict."""
from __future__ import annotations

import gc
import hashlib
import json
import time
from typing import Any, Mapping

from ..core.errors import UsageError


def short_hash(obj: Any, n: int = 16) -> str:
    """The first ``n`` hex digits of the SHA-256 of ``obj`` as sorted-key JSON (fingerprints, cache keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def _percentile(sorted_vals: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default) of an ascending list."""
    if len(sorted_vals) == 1:
        return sorted_vals[0]
    pos = (len(sorted_vals) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def summarize(times_s: list[float], batch_size: int) -> dict[str, float]:
    """p50/p90/p99/mean/std/min/max in ms and throughput (samples/s) of per-iteration times in seconds."""
    ms = sorted(t * 1000.0 for t in times_s)
    n = len(ms)
    mean = sum(ms) / n
    std = (sum((x - mean) ** 2 for x in ms) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return {"p50_ms": _percentile(ms, 50), "p90_ms": _percentile(ms, 90), "p99_ms": _percentile(ms, 99),
            "mean_ms": mean, "std_ms": std, "min_ms": ms[0], "max_ms": ms[-1],
            "throughput": batch_size * n / (sum(ms) / 1000.0)}


def check_positive(name: str, value, kind=int, allow_zero: bool = False) -> None:
    """UsageError naming the flag ``name`` unless ``value`` is a positive (or, with ``allow_zero``, non-negative)
    integer, or any such number for ``kind=float``."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (
        value >= 0 if allow_zero else value > 0) and (kind is float or float(value).is_integer())
    if not ok:
        raise UsageError(f"{name} {value!r} is invalid; use a {'non-negative' if allow_zero else 'positive'} "
                         f"{'number' if kind is float else 'integer'}")


def check_protocol(batch_size: int, seq_len: int, warmup: int, min_iters: int, min_seconds: float) -> None:
    """UsageError for a non-positive batch size / seq len / min iters or a negative warm-up / min seconds."""
    check_positive("--batch-size", batch_size)
    check_positive("--seq-len", seq_len)
    check_positive("--warmup", warmup, allow_zero=True)
    check_positive("--min-iters", min_iters)
    check_positive("--min-seconds", min_seconds, kind=float, allow_zero=True)


def timed_loop(call, warmup: int, min_iters: int, min_seconds: float, timed=None, after_warmup=None) -> dict:
    """The protocol's loop, for any runtime: ``warmup`` untimed ``call()``s, then timed ones (``timed()``
    returns one iteration's seconds; default: ``perf_counter`` around ``call()``) until both ``min_iters``
    iterations and ``min_seconds`` of wall time are reached, with the garbage collector paused.
    Returns ``times`` (seconds per iteration) and ``elapsed_s`` (wall time of the timed loop), the
    input of :func:`protocol_result`."""
    def _perf():
        t0 = time.perf_counter()
        call()
        return time.perf_counter() - t0
    timed = timed or _perf
    for _ in range(int(warmup)):
        call()
    if after_warmup is not None:
        after_warmup()
    gc_was_enabled = gc.isenabled()
    times: list[float] = []
    try:
        gc.collect()
        gc.disable()     # no collector pauses inside the timed loop
        t_start = time.perf_counter()
        while len(times) < min_iters or time.perf_counter() - t_start < min_seconds:
            times.append(timed())
        elapsed = time.perf_counter() - t_start
    finally:
        if gc_was_enabled:
            gc.enable()
    return {"times": times, "elapsed_s": elapsed}


def protocol_result(loop: Mapping[str, Any], batch_size: int, seq_len: int, warmup: int, min_iters: int,
                    min_seconds: float, fingerprint: Mapping[str, Any], **extra) -> dict[str, Any]:
    """The result dict of one measurement (shared by every runtime): stats, protocol, fingerprint."""
    return {"batch_size": int(batch_size), "seq_len": int(seq_len), **summarize(loop["times"], batch_size),
            "iters": len(loop["times"]), "warmup": int(warmup), "min_iters": int(min_iters),
            "min_seconds": float(min_seconds), "elapsed_s": loop["elapsed_s"], **extra,
            "fingerprint": dict(fingerprint), "device_fingerprint": short_hash(fingerprint)}


def coefficient_of_variation(values: list[float]) -> float:
    """Sample std / mean (0.0 for a single value)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5
    return std / mean if mean else float("nan")
