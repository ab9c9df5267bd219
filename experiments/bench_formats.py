"""Deployment formats of the MiniLM teacher and its 1-, 2- and 3-layer students: latency and SST-2 dev accuracy.

    python experiments/bench_formats.py --sweep runs/sweeps/demo        # the demo's teacher and best student per depth
    python experiments/bench_formats.py --teacher RUN --students RUN1 RUN2 RUN3
    python experiments/bench_formats.py --train runs/bench-formats      # trains them first (mixkd finetune / distill)
    python experiments/bench_formats.py --sweep ... --quick             # tiny protocol and 64 dev rows: checks it runs

For each model and each format (torch, torch-int8, onnx, onnx-int8): p50/p90 at batch 1 and 32, seq 128 (mixkd's
latency protocol, mixkd.deploy.formats.format_latencies: a random-weight model of the architecture converted to
the format, cached by format and runtime), and the SST-2 dev accuracy **of the real model after conversion**
(mixkd.deploy.export.convert_and_score; for onnx-int8 the better of the QInt8 and QUInt8 weight types, both shown).
Then the issue's targets: the onnx-int8 2-layer student's p90 at batch 1 against the fp32 PyTorch student's
(target <= 0.5x) and its accuracy loss (target <= 1.0 point). Run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mixkd.deploy import formats as F  # noqa: E402
from mixkd.deploy import latency as L  # noqa: E402
from mixkd.deploy.export import convert_and_score, load_reference  # noqa: E402


def _best_per_depth(sweep: Path) -> tuple[Path, dict[int, Path]]:
    """The sweep's (first) teacher and, per student depth, the finished trial with the best dev score."""
    teachers = sorted(p.parent for p in (sweep / "teachers").glob("*/metrics.json"))
    best: dict[int, tuple[float, Path]] = {}
    for m in (sweep / "trials").glob("*/metrics.json"):
        d = json.loads(m.read_text())
        k = int(d["layers"])
        if k not in best or d["primary_value"] > best[k][0]:
            best[k] = (d["primary_value"], m.parent)
    if not teachers or not best:
        raise SystemExit(f"{sweep}: no finished teacher or trials (metrics.json) under teachers/ and trials/")
    return teachers[0], {k: v[1] for k, v in sorted(best.items())}


def _train(root: Path, depths: list[int]) -> tuple[Path, dict[int, Path]]:
    """A MiniLM teacher fine-tuned on 1,000 SST-2 rows and its sm+tmkd students (mixkd finetune / distill)."""
    mixkd = [sys.executable, "-m", "mixkd"]
    common = ["--task", "sst2", "--epochs", "3", "--max-seq-length", "64", "--no-progress"]
    teacher = root / "teacher"
    if not (teacher / "metrics.json").is_file():
        subprocess.run(mixkd + ["finetune", "--model", "minilm-l6", "--max-train-samples", "1000", "--lr", "1e-4",
                                "--output-dir", str(teacher), *common], check=True)
    students = {}
    for k in depths:
        students[k] = root / f"student-k{k}"
        if not (students[k] / "metrics.json").is_file():
            subprocess.run(mixkd + ["distill", "--teacher", str(teacher), "--variant", "sm+tmkd", "--student-layers",
                                    str(k), "--lr", "1e-4", "--output-dir", str(students[k]), *common], check=True)
    return teacher, students


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--sweep", type=Path, help="a sweep's experiment folder (teachers/, trials/)")
    src.add_argument("--teacher", type=Path, help="the teacher's run dir (with --students)")
    src.add_argument("--train", type=Path, help="train the teacher and students into this folder first")
    p.add_argument("--students", type=Path, nargs="*", default=[], help="student run dirs (with --teacher)")
    p.add_argument("--depths", type=int, nargs="+", default=[1, 2, 3], help="student depths for --train")
    p.add_argument("--formats", default="all", help="comma-separated formats (default: all this CPU has)")
    p.add_argument("--data-dir", help="GLUE folder (default: $GLUE_DIR, else the embedded SST-2 sample)")
    p.add_argument("--threads", type=int, default=None, help="threads for torch and ONNX Runtime (default torch's)")
    p.add_argument("--batch-size", type=int, nargs="+", default=[1, 32], dest="batch_sizes")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--warmup", type=int, default=L.DEFAULT_WARMUP)
    p.add_argument("--min-iters", type=int, default=L.DEFAULT_MIN_ITERS)
    p.add_argument("--min-seconds", type=float, default=L.DEFAULT_MIN_SECONDS)
    p.add_argument("--no-cache", action="store_true", help="measure latencies afresh")
    p.add_argument("--quick", action="store_true", help="tiny protocol and 64 dev rows: checks that it runs")
    p.add_argument("--output", help="also write every row as JSON")
    args = p.parse_args(argv)
    if args.sweep:
        teacher, students = _best_per_depth(args.sweep)
    elif args.train:
        teacher, students = _train(args.train, args.depths)
    else:
        students = {}
        for s in args.students:
            students[int(json.loads((s / "metrics.json").read_text())["layers"])] = s
    models = [("teacher", teacher)] + [(f"{k}-layer student", d) for k, d in sorted(students.items())]
    fmts = F.parse_formats(args.formats)
    proto = dict(warmup=1, min_iters=3, min_seconds=0.0) if args.quick else \
        dict(warmup=args.warmup, min_iters=args.min_iters, min_seconds=args.min_seconds)
    rows = []
    for name, run in models:
        print(f"{name}: {run}", file=sys.stderr, flush=True)
        model, tok, data, ref = load_reference(str(run / "model"), "sst2", args.data_dir, 64 if args.quick else None)
        with tempfile.TemporaryDirectory(prefix="bench-formats-") as work:
            for fmt in fmts:
                best, cands = convert_and_score(model, fmt, Path(work) / fmt, data, tok, ref, threads=args.threads,
                                                log=lambda m: print("  " + m, file=sys.stderr, flush=True))
                lat = F.format_latencies(run / "model", fmt, args.batch_sizes, args.seq_len, threads=args.threads,
                                         weight_type=best["weight_type"] or "qint8", use_cache=not args.no_cache,
                                         **proto)
                rows.append({"model": name, "layers": int(model.config.num_hidden_layers), "format": fmt,
                             "weight_type": best["weight_type"], "accuracy": best["metrics"]["accuracy"],
                             "label_agreement": best["agreement"]["label_agreement"],
                             "candidates": {c["weight_type"]: c["metrics"]["accuracy"]
                                            for c in cands if c["weight_type"]},
                             **{f"b{b}_{s}": lat[b][f"{s}_ms"] for b in args.batch_sizes for s in ("p50", "p90")},
                             "fingerprint": lat[args.batch_sizes[0]]["fingerprint"]})
                r = rows[-1]
                print(f"  {fmt}: accuracy {r['accuracy']:.4f}, "
                      + ", ".join(f"b{b} p90 {r[f'b{b}_p90']:.2f} ms" for b in args.batch_sizes), file=sys.stderr)
    lat_cols = [f"b{b}_{s}" for b in args.batch_sizes for s in ("p50", "p90")]
    print("| model | format | " + " | ".join(c.replace("_", " ") + " ms" for c in lat_cols)
          + " | SST-2 dev acc | Δ vs torch fp32 (points) | weight type (acc qint8 / quint8) |")
    print("|---|---|" + "---|" * (len(lat_cols) + 3))
    base = {r["model"]: r for r in rows if r["format"] == "torch"}
    for r in rows:
        ref_acc = base.get(r["model"], r)["accuracy"]
        wt = (f"{r['weight_type']} ({' / '.join(f'{v:.4f}' for v in r['candidates'].values())})"
              if r["candidates"] else (r["weight_type"] or "-"))
        print(f"| {r['model']} | {r['format']} | " + " | ".join(f"{r[c]:.2f}" for c in lat_cols)
              + f" | {r['accuracy']:.4f} | {100 * (r['accuracy'] - ref_acc):+.1f} | {wt} |")
    fp = rows[0]["fingerprint"]
    ort = next((r["fingerprint"].get("runtime_version") for r in rows if r["format"] == "onnx"), "-")
    print(f"\nCPU {fp['cpu']} x{fp['cpu_count']}, threads {fp['threads']}, torch {fp['torch']}, onnxruntime {ort}")
    two = {r["format"]: r for r in rows if r["layers"] == 2 and r["model"] != "teacher"}
    if "torch" in two and "onnx-int8" in two and 1 in args.batch_sizes:
        ratio = two["onnx-int8"]["b1_p90"] / two["torch"]["b1_p90"]
        loss = 100 * (two["torch"]["accuracy"] - two["onnx-int8"]["accuracy"])
        print(f"2-layer student, onnx-int8 vs torch fp32: p90 at batch 1 {ratio:.2f}x (target <= 0.5x: "
              f"{'met' if ratio <= 0.5 else 'NOT met'}), accuracy lost {loss:.1f} points (target <= 1.0: "
              f"{'met' if loss <= 1.0 else 'NOT met'})")
    if args.output:
        Path(args.output).write_text(json.dumps(rows, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
