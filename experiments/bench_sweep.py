"""Overhead of running trials through the sweep (Ray Tune) vs in-process one after another.

N identical small trials (a 2-layer sm+tmkd student of the packaged MiniLM on an SST-2 slice) run
(1) in this process, one after another, with mixkd.run.distill, and (2) as a grid sweep of N
identical cells through mixkd.sweep.run_sweep on a local Ray instance, one trial at a time with the
same CPUs. The teacher is prepared once beforehand and reused by both. Prints both wall times, their
ratio (target <= 1.15 for single-worker trials) and the fixed overhead per trial.

    python experiments/bench_sweep.py [--trials 4] [--fraction 0.01] [--cpus 2]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--fraction", type=float, default=0.01, help="SST-2 training fraction per trial")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--cpus", type=float, default=2.0, help="CPUs per trial (and for the in-process runs)")
    ap.add_argument("--data-dir", default=os.environ.get("GLUE_DIR") or str(Path(__file__).resolve().parents[1].parent / "shared" / "glue_data"))
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir, removed at the end)")
    args = ap.parse_args(argv)

    import ray
    import torch

    from mixkd.config import MixKDConfig
    from mixkd.run import distill, finetune
    from mixkd.sweep import SweepSpec, run_sweep

    work = Path(args.workdir or tempfile.mkdtemp(prefix="mixkd-bench-sweep-"))
    seed, key = 42, f"sst2-f{args.fraction:g}-s42"
    base = {"epochs": args.epochs, "max_seq_length": 64, "student_layers": 2, "variant": "sm+tmkd",
            "max_eval_samples": 200, "lr": 1e-4}
    spec = SweepSpec(name="bench", mode="grid", tasks=["sst2"], teacher_model="minilm-l6", seeds=[seed],
                     data_fractions=[args.fraction], base=base, teacher={"max_steps": 1, "max_eval_samples": 50},
                     grid={"w_mle": [1.0] * args.trials}, cpus_per_trial=args.cpus, storage_path=str(work),
                     data_dir=args.data_dir)
    teacher_dir = spec.experiment_dir / "teachers" / key
    print(f"preparing the teacher once ({teacher_dir}) ...", flush=True)
    finetune(spec.teacher_config("sst2", args.fraction, seed, str(teacher_dir)))

    torch.set_num_threads(max(1, int(args.cpus)))
    t0 = time.perf_counter()
    for i in range(args.trials):
        cfg = spec.student_config("sst2", args.fraction, seed, str(teacher_dir), str(work / "inproc" / str(i)))
        distill(cfg)
    inproc = time.perf_counter() - t0
    print(f"in-process: {args.trials} trials in {inproc:.1f} s ({inproc / args.trials:.1f} s per trial)", flush=True)

    t0 = time.perf_counter()
    ray.init(num_cpus=int(args.cpus), include_dashboard=True, dashboard_host="127.0.0.1",
             runtime_env={"env_vars": {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if k in os.environ}})
    init = time.perf_counter() - t0
    t0 = time.perf_counter()
    summary = run_sweep(spec)
    swept = time.perf_counter() - t0
    ray.shutdown()
    n = summary["finished_trials"]
    ratio = swept / inproc
    print(f"sweep:      {n} trials in {swept:.1f} s ({swept / max(n, 1):.1f} s per trial), plus ray.init {init:.1f} s")
    print(f"ratio sweep / in-process: {ratio:.3f} (target <= 1.15: {'met' if ratio <= 1.15 else 'NOT met'}); "
          f"fixed overhead per trial: {(swept - inproc) / args.trials:.1f} s")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if n == args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
