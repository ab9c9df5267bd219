"""Latency of the packaged MiniLM teacher and its 1-, 2- and 3-layer students, with repeatability.

    python experiments/bench_latency.py                 # batch 1 and 32, seq 128, 3 repeats (a few minutes)
    python experiments/bench_latency.py --quick         # tiny settings: checks that it runs

Each model is a random-weight sequence classifier of the architecture (latency does not depend on the
weights), measured with mixkd.deploy.latency.measure (warm-up, then at least --min-iters iterations and
--min-seconds seconds). Repeats are interleaved over models and batch sizes, so slow drift of a shared
machine hits all of them alike. Prints p50/p90 (median over repeats) and their coefficient of variation
across repeats, then the student that a budget of half the teacher's p90 at batch 1 allows.
Run it on a quiet machine: other processes inflate and scatter the numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixkd.deploy import latency as L  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="minilm-l6", help="teacher: HF dir, run dir or minilm-l6 (default)")
    p.add_argument("--students", type=int, nargs="+", default=[1, 2, 3], help="student depths (default 1 2 3)")
    p.add_argument("--batch-size", type=int, nargs="+", default=list(L.DEFAULT_BATCH_SIZES), dest="batch_sizes")
    p.add_argument("--seq-len", type=int, default=L.DEFAULT_SEQ_LEN)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's current count)")
    p.add_argument("--warmup", type=int, default=L.DEFAULT_WARMUP)
    p.add_argument("--min-iters", type=int, default=L.DEFAULT_MIN_ITERS)
    p.add_argument("--min-seconds", type=float, default=L.DEFAULT_MIN_SECONDS)
    p.add_argument("--num-labels", type=int, default=2, help="classifier outputs (default 2, SST-2)")
    p.add_argument("--quick", action="store_true", help="tiny settings to check the script runs")
    p.add_argument("--output", help="also write every measurement as JSON")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.seq_len, args.repeats = [1, 2], 16, 2
        args.warmup, args.min_iters, args.min_seconds = 1, 3, 0.0

    teacher_cfg = L.load_config(args.model, num_labels=args.num_labels)
    n_teacher = teacher_cfg.num_hidden_layers
    depths = [n_teacher] + sorted(set(args.students))
    models = {k: L.build_random_model(L.student_config(teacher_cfg, k)) for k in depths}
    proto = dict(warmup=args.warmup, min_iters=args.min_iters, min_seconds=args.min_seconds, threads=args.threads)
    runs: dict[tuple[int, int], list[dict]] = {(k, b): [] for k in depths for b in args.batch_sizes}
    for r in range(args.repeats):
        for k in depths:
            for b in args.batch_sizes:
                print(f"repeat {r + 1}/{args.repeats}: {k} layers, batch {b}", file=sys.stderr, flush=True)
                runs[(k, b)].append(L.measure(models[k], b, args.seq_len, **proto))

    rows = []
    for (k, b), rs in runs.items():
        rows.append({"model": f"teacher ({k} layers)" if k == n_teacher else f"student k={k}", "layers": k,
                     "batch_size": b, "seq_len": args.seq_len,
                     "p50_ms": statistics.median(x["p50_ms"] for x in rs),
                     "p90_ms": statistics.median(x["p90_ms"] for x in rs),
                     "cv_p50": L.coefficient_of_variation([x["p50_ms"] for x in rs]),
                     "cv_p90": L.coefficient_of_variation([x["p90_ms"] for x in rs]),
                     "throughput": statistics.median(x["throughput"] for x in rs),
                     "iters": [x["iters"] for x in rs], "repeats": rs})
    fp = rows[0]["repeats"][0]["fingerprint"]
    print(f"\n{args.model}: {n_teacher} layers, hidden {teacher_cfg.hidden_size}; seq {args.seq_len}; "
          f"medians over {args.repeats} repeats; cv = std/mean across repeats\n")
    print("| model | batch | p50 ms | p90 ms | cv p50 | cv p90 | samples/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['batch_size']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['cv_p50']:.1%} | "
              f"{r['cv_p90']:.1%} | {r['throughput']:.1f} |")
    print(f"\nfingerprint: cpu {fp['cpu']} x{fp['cpu_count']}, gpu {fp['gpu'] or '-'}, threads {fp['threads']}, "
          f"{fp['dtype']}, torch {fp['torch']}, transformers {fp['transformers']}")

    b1 = min(args.batch_sizes)
    teacher_p90 = next(r["p90_ms"] for r in rows if r["layers"] == n_teacher and r["batch_size"] == b1)
    budget = teacher_p90 / 2
    fits = [r for r in rows if r["batch_size"] == b1 and r["layers"] != n_teacher and r["p90_ms"] <= budget]
    print(f"\nbudget = half the teacher's p90 at batch {b1}: {budget:.2f} ms")
    if fits:
        best = max(fits, key=lambda r: r["layers"])
        print(f"deepest student within it: k={best['layers']} (p90 {best['p90_ms']:.2f} ms, "
              f"{teacher_p90 / best['p90_ms']:.2f}x faster than the teacher); "
              "fits: " + ", ".join(f"k={r['layers']}" for r in sorted(fits, key=lambda r: r["layers"])))
    else:
        fastest = min((r for r in rows if r["batch_size"] == b1), key=lambda r: r["p90_ms"])
        print(f"no student fits; the fastest is {fastest['model']} at {fastest['p90_ms']:.2f} ms")
    print(f"with a sweep's runs: mixkd select --tracking-uri sqlite:///runs/sweeps/smoke/mlflow.db "
          f"--latency-budget-ms {budget:.2f} --batch-size {b1} --seq-len {args.seq_len} --out runs/selected")
    if args.output:
        out = Path(args.output)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(json.dumps({"args": vars(args), "budget_ms": budget, "rows": rows}, indent=2, default=str))
        os.replace(tmp, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
