"""``mixkd select``: the most accurate student of a sweep within a latency budget, exported with a model
card, ``selection.json`` and a Pareto plot (see :mod:`mixkd.deploy.selection`)."""
from __future__ import annotations

import argparse
import math

from ..deploy import latency as L
from ..core.errors import UsageError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", required=True, action="append",
                   help="MLflow store of the sweep: sqlite:///PATH/mlflow.db, a sweep folder (or a folder of them) or "
                        "an http(s) server; repeat it to choose over several stores (a run in two counted once)")
    p.add_argument("--experiment", help="MLflow experiment (default: every mixkd experiment in the store)")
    p.add_argument("--latency-budget-ms", type=float, required=True, help="latency budget in milliseconds")
    p.add_argument("--out", required=True, help="new folder for the exported student (must not exist)")
    p.add_argument("--percentile", default="p90", choices=L.PERCENTILES, help="latency statistic (default p90)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size of the latency (default 1)")
    p.add_argument("--seq-len", type=int, default=L.DEFAULT_SEQ_LEN,
                   help=f"sequence length (default {L.DEFAULT_SEQ_LEN})")
    p.add_argument("--task", help="GLUE task (needed when the store holds runs of several tasks)")
    p.add_argument("--device", default="cpu", help="device of the latency: cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--dtype", default="fp32", choices=L.DTYPES, help="dtype of the latency (default fp32)")
    p.add_argument("--threads", type=int, help="torch threads when measuring here (default: torch's current)")
    p.add_argument("--remeasure", action="store_true",
                   help="ignore latencies logged by the sweep and measure on this machine (cached per architecture)")
    p.add_argument("--warmup", type=int, default=L.DEFAULT_WARMUP, help="latency protocol: untimed runs")
    p.add_argument("--min-iters", type=int, default=L.DEFAULT_MIN_ITERS, help="latency protocol: minimum timed runs")
    p.add_argument("--min-seconds", type=float, default=L.DEFAULT_MIN_SECONDS,
                   help="latency protocol: minimum timed seconds")
    p.add_argument("--cache-dir", help="latency cache (default $MIXKD_CACHE/latency)")
    p.add_argument("--formats", default="all",
                   help="deployment formats to choose over, comma-separated: torch, torch-int8, onnx, onnx-int8, or "
                        "all (every one this device has; the default); each is scored on the dev set after conversion")
    p.add_argument("--data-dir",
                   help="GLUE folder for the after-conversion dev scores (default: $GLUE_DIR, hub, sample)")
    p.add_argument("--allow-chance", action="store_true",
                   help="also consider configurations at chance level (no better than a constant predictor on dev; "
                        "left out by default)")
    p.add_argument("--max-eval-samples", type=int, help="score formats on the first N dev rows only (default: all)")


def main(args: argparse.Namespace) -> int:
    from ..deploy.selection import format_selection, select
    if not (math.isfinite(args.latency_budget_ms) and args.latency_budget_ms > 0):
        raise UsageError(f"--latency-budget-ms {args.latency_budget_ms:g} is invalid; "
                         f"use a positive number of milliseconds")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads {args.threads} is invalid; use a positive integer")
    if args.warmup < 0 or args.min_iters < 1 or not args.min_seconds >= 0:
        raise UsageError(f"the latency protocol --warmup {args.warmup} --min-iters {args.min_iters} "
                         f"--min-seconds {args.min_seconds:g} is invalid; "
                         f"use warmup >= 0, min-iters >= 1, min-seconds >= 0")
    from ..deploy.formats import parse_formats
    formats = parse_formats(args.formats, args.device)
    if args.max_eval_samples is not None and args.max_eval_samples < 1:
        raise UsageError(f"--max-eval-samples {args.max_eval_samples} is invalid; use a positive number of rows")
    sel = select(args.tracking_uri, args.latency_budget_ms, args.out, experiment=args.experiment,
                 percentile=args.percentile, batch_size=args.batch_size, seq_len=args.seq_len, task=args.task,
                 device=args.device, dtype=args.dtype, threads=args.threads, remeasure=args.remeasure,
                 cache_dir=args.cache_dir,
                 protocol=dict(warmup=args.warmup, min_iters=args.min_iters, min_seconds=args.min_seconds),
                 formats=formats, data_dir=args.data_dir, max_eval_samples=args.max_eval_samples,
                 allow_chance=args.allow_chance)
    print(format_selection(sel))
    return 0
