"""``mixkd latency``: inference latency of a model (or of its k-layer student) under the fixed protocol.

Measures a random-weight model built from the config (latency depends on the architecture, not the
weights) and caches the result per (architecture, device, dtype, batch, seq len) in
``$MIXKD_CACHE/latency``. ``--repeats R`` measures R times afresh (no cache) and reports the
coefficient of variation of p50 and p90 across the repeats.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from ..core.errors import UsageError
from ..deploy import latency as L


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="HF model dir, mixkd run dir, config.json, or the alias minilm-l6")
    p.add_argument("--student-layers", type=int, help="measure the k-layer student of --model instead")
    p.add_argument("--format", help="torch (default) or onnx (ONNX Runtime); an exported folder: its own format")
    p.add_argument("--quantize", help="int8: dynamic int8 quantization (CPU; torch and onnx)")
    p.add_argument("--num-labels", type=int, help="classifier outputs (default: the model config's)")
    p.add_argument("--batch-size", type=int, nargs="+", default=list(L.DEFAULT_BATCH_SIZES), dest="batch_sizes",
                   help=f"batch sizes (default: {' '.join(map(str, L.DEFAULT_BATCH_SIZES))})")
    p.add_argument("--seq-len", type=int, default=L.DEFAULT_SEQ_LEN,
                   help=f"tokens per input (default {L.DEFAULT_SEQ_LEN})")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--dtype", default="fp32", choices=L.DTYPES, help="weights and activations (default fp32)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's current count)")
    p.add_argument("--warmup", type=int, default=L.DEFAULT_WARMUP,
                   help=f"untimed runs first (default {L.DEFAULT_WARMUP})")
    p.add_argument("--min-iters", type=int, default=L.DEFAULT_MIN_ITERS,
                   help=f"at least this many timed runs (default {L.DEFAULT_MIN_ITERS})")
    p.add_argument("--min-seconds", type=float, default=L.DEFAULT_MIN_SECONDS,
                   help=f"and at least this many seconds of timed runs (default {L.DEFAULT_MIN_SECONDS})")
    p.add_argument("--repeats", type=int, default=1,
                   help="measure R times afresh (no cache) and report the CV of p50/p90 across repeats")
    p.add_argument("--no-cache", action="store_true", help="measure afresh; neither read nor write the cache")
    p.add_argument("--cache-dir", help="latency cache (default $MIXKD_CACHE/latency)")
    p.add_argument("--output", help="also write the results as JSON to this file")


def _check(args: argparse.Namespace) -> None:
    for flag, v in (("--batch-size", min(args.batch_sizes)), ("--seq-len", args.seq_len),
                    ("--min-iters", args.min_iters), ("--repeats", args.repeats)):
        if v < 1:
            raise UsageError(f"{flag} {v} is invalid; use a positive integer")
    if args.warmup < 0:
        raise UsageError(f"--warmup {args.warmup} is invalid; use 0 or more")
    if not args.min_seconds >= 0:
        raise UsageError(f"--min-seconds {args.min_seconds} is invalid; use 0 or more seconds")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads {args.threads} is invalid; use a positive integer (e.g. {os.cpu_count()})")
    if args.num_labels is not None and args.num_labels < 1:
        raise UsageError(f"--num-labels {args.num_labels} is invalid; use a positive integer")
    L.device_info(args.device, args.dtype, args.threads)     # bad device fails before any model is read
    if args.output and not Path(args.output).expanduser().resolve().parent.is_dir():
        raise UsageError(f"--output {args.output}: folder {Path(args.output).parent} does not exist; create it first")


def _format(args: argparse.Namespace) -> tuple[str, str]:
    """(format, onnx weight type) of the flags, or of an exported folder's mixkd_export.json."""
    from ..deploy.formats import format_name, read_export_meta
    meta = read_export_meta(args.model) if Path(args.model).expanduser().is_dir() else None
    fmt = getattr(args, "format", None)
    if meta is not None and fmt is None and getattr(args, "quantize", None) is None:
        weight_type = (meta.get("quantization") or {}).get("weight_type", "qint8")
        return format_name(meta["format"], device=args.device), weight_type
    return format_name(fmt or "torch", getattr(args, "quantize", None), device=args.device), "qint8"


def run(args: argparse.Namespace) -> dict:
    """Measure as the flags say; returns the JSON-able result (also used by experiments/bench_latency.py)."""
    fmt, weight_type = _format(args)
    _check(args)
    cfg = L.load_config(args.model, num_labels=args.num_labels)
    if args.student_layers is not None:
        cfg = L.student_config(cfg, args.student_layers)
    max_pos = getattr(cfg, "max_position_embeddings", None)
    if max_pos is not None and args.seq_len > max_pos:
        raise UsageError(f"--seq-len {args.seq_len} is longer than the model's {max_pos} positions; "
                         f"use at most {max_pos}")
    proto = dict(device=args.device, dtype=args.dtype, warmup=args.warmup, min_iters=args.min_iters,
                 min_seconds=args.min_seconds, threads=args.threads)
    label = args.model + (f" k={args.student_layers}" if args.student_layers is not None else "")
    label += "" if fmt == "torch" else f" {fmt}"
    rows = []
    if fmt != "torch":       # ONNX Runtime / int8: the same protocol and cache, keyed by format and runtime
        from ..deploy.formats import format_latencies
        reps = {b: [] for b in args.batch_sizes}
        for r in range(args.repeats):
            res = format_latencies(cfg, fmt, args.batch_sizes, args.seq_len, cache_dir=args.cache_dir,
                                   use_cache=not args.no_cache and args.repeats == 1, weight_type=weight_type, **proto)
            for b in args.batch_sizes:
                reps[b].append(res[b])
        rows = [_row(label, args, b, rs) for b, rs in reps.items()]
    elif args.repeats == 1:
        res = L.cached_latencies(cfg, args.batch_sizes, args.seq_len, cache_dir=args.cache_dir,
                                 use_cache=not args.no_cache, **proto)
        for b in args.batch_sizes:
            rows.append({"model": label, **res[b], "repeats": [res[b]]})
    else:
        model = L.build_random_model(cfg)
        reps: dict[int, list[dict]] = {b: [] for b in args.batch_sizes}
        for r in range(args.repeats):          # repeats interleaved over batch sizes: slow drift hits all alike
            for b in args.batch_sizes:
                print(f"repeat {r + 1}/{args.repeats}, batch {b} ...", file=sys.stderr, flush=True)
                reps[b].append(L.measure(model, b, args.seq_len, **proto))
        rows = [_row(label, args, b, rs) for b, rs in reps.items()]
    return {"model": args.model, "student_layers": args.student_layers, "format": fmt,
            "architecture_fingerprint": L.architecture_fingerprint(cfg), "architecture": L.architecture_fields(cfg),
            "protocol": {k: v for k, v in proto.items() if k not in ("device", "dtype", "threads")}
            | {"repeats": args.repeats}, "fingerprint": rows[0]["fingerprint"], "results": rows}


def _row(label: str, args: argparse.Namespace, b: int, rs: list[dict]) -> dict:
    """One batch size's row: the result itself (one measurement) or the medians over repeats with the CV."""
    if len(rs) == 1:
        return {"model": label, **rs[0], "repeats": rs}
    med = {k: statistics.median(x[k] for x in rs)
           for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "throughput")}
    return {"model": label, "batch_size": b, "seq_len": args.seq_len, **med, "iters": sum(x["iters"] for x in rs),
            "cached": False, "cv_p50": L.coefficient_of_variation([x["p50_ms"] for x in rs]),
            "cv_p90": L.coefficient_of_variation([x["p90_ms"] for x in rs]),
            "fingerprint": rs[0]["fingerprint"], "device_fingerprint": rs[0]["device_fingerprint"], "repeats": rs}


def main(args: argparse.Namespace) -> int:
    out = run(args)
    rows = out["results"]
    extra = ("cv_p50", "cv_p90") if args.repeats > 1 else ("cached",)
    print(L.format_table(rows, extra_cols=extra))
    if args.repeats > 1:
        print(f"(medians over {args.repeats} repeats; cv = std/mean of p50 and p90 across repeats)")
    fp = out["fingerprint"]
    print(f"device: {fp['device']} | cpu: {fp['cpu']} x{fp['cpu_count']} | gpu: {fp['gpu'] or '-'} | "
          f"threads: {fp['threads']} | dtype: {fp['dtype']} | torch {fp['torch']} | transformers {fp['transformers']}"
          + (f" | format {out['format']}" + (f" | {fp['runtime']} {fp['runtime_version']} (intra-op threads "
                                             f"{fp['intra_op_threads']}, inter-op {fp['inter_op_threads']})"
                                             if fp.get("runtime") else "") if out["format"] != "torch" else ""))
    print(f"architecture: {out['architecture_fingerprint']} ({out['architecture'].get('model_type')}, "
          f"{out['architecture'].get('num_hidden_layers')} layers, hidden {out['architecture'].get('hidden_size')})")
    if args.output:
        path = Path(args.output).expanduser()
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(out, indent=2, default=str) + "\n")
        os.replace(tmp, path)
    return 0
