"""Does bf16 autocast cost accuracy? The check behind ``--precision auto`` = bf16 on CPUs with native bf16.

SST-2 at 10% (data seed 42, repro-cpu's subset), one teacher (packaged MiniLM-L6, fine-tuned once in bf16 as
repro-cpu's), 2-layer ft and sm+tmkd students with repro-cpu's settings, seeds 1-3, each in fp32 and in bf16:
12 students on the same teacher and rows. Reported: dev accuracy per arm (mean +- sd) and the paired difference
bf16 - fp32 per variant (same seed, same everything else) with its 95% t interval. Every run is a CLI run in its
own folder under --out (resumable: a finished run is skipped, an interrupted one continued with --resume); the
table is written to experiments/results/precision/.

    python experiments/study_precision.py [--out runs/precision] [--threads 2]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from mixkd.deploy.latency import cpu_model

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "experiments" / "results" / "precision"
COMMON = ["--task", "sst2", "--batch-size", "32", "--max-seq-length", "64", "--eval-batch-size", "256",
          "--no-progress"]
STUDENT = ["--student-layers", "2", "--alpha", "0.4", "--mixup-ratio", "1", "--a-sm", "1", "--a-tmkd", "1",
           "--distance", "mse", "--temperature", "4.0"]
VARIANTS, SEEDS, PRECISIONS = ("ft", "sm+tmkd"), (1, 2, 3), ("fp32", "bf16")


def run(args: list[str], out: Path, env: dict) -> dict:
    """The CLI run in ``out``: skipped when finished, continued when interrupted."""
    if (out / "metrics.json").is_file():
        return json.loads((out / "metrics.json").read_text())
    resume = ["--resume"] if (out / "checkpoints" / "last" / "trainer_state.pt").is_file() else []
    cmd = [sys.executable, "-m", "mixkd", *args, "--output-dir", str(out), *resume]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, env=env)
    return json.loads((out / "metrics.json").read_text())


def t_interval(diffs: list[float]) -> tuple[float, float, float]:
    from scipy import stats
    m = statistics.mean(diffs)
    half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5
    return m, m - half, m + half


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/precision")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", default=os.environ.get("GLUE_DIR") or str(REPO.parent / "shared" / "glue_data"))
    a = ap.parse_args(argv)
    out = Path(a.out)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    data = ["--data-dir", a.data_dir]
    teacher = out / "teacher"
    t = run(["finetune", *COMMON, *data, "--model", "minilm-l6", "--data-fraction", "0.1", "--seed", "42",
             "--precision", "bf16"], teacher, env)
    rows = []
    for seed in SEEDS:
        for variant in VARIANTS:
            for prec in PRECISIONS:
                m = run(["distill", *COMMON, *data, *STUDENT, "--teacher", str(teacher), "--variant", variant,
                         "--seed", str(seed), "--precision", prec], out / f"{variant}-{prec}-s{seed}", env)
                rows.append({"variant": variant, "precision": prec, "seed": seed, "accuracy": m["primary_value"],
                             "steps": m["steps"], "train_time_s": m["train_time_s"],
                             "train_examples_per_s": m["train_examples_per_s"], "packed": m.get("packed")})
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "runs.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = ["| variant | fp32 | bf16 | bf16 − fp32 (paired, 95% CI) | train ex/s fp32 → bf16 |",
             "|---|---|---|---|---|"]
    for variant in VARIANTS:
        acc = {p: [100 * r["accuracy"] for r in rows if r["variant"] == variant and r["precision"] == p]
               for p in PRECISIONS}
        speed = {p: statistics.mean(r["train_examples_per_s"] for r in rows
                                    if r["variant"] == variant and r["precision"] == p) for p in PRECISIONS}
        m, lo, hi = t_interval([b - f for f, b in zip(acc["fp32"], acc["bf16"])])
        lines.append(f"| {variant} | {statistics.mean(acc['fp32']):.2f} ± {statistics.stdev(acc['fp32']):.2f} | "
                     f"{statistics.mean(acc['bf16']):.2f} ± {statistics.stdev(acc['bf16']):.2f} | "
                     f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}] | {speed['fp32']:.0f} → {speed['bf16']:.0f} |")
    table = "\n".join(lines)
    (RESULTS / "table.md").write_text(
        f"SST-2 10% (data seed 42), teacher {100 * t['primary_value']:.2f} (bf16), 2-layer students, seeds "
        f"{', '.join(map(str, SEEDS))}; {cpu_model()}, {a.threads} threads, packed batches.\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
