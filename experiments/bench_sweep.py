"""Overhead of running trials through the sweep (Ray Tune) vs in-process one after another.

N identical small trials (a 2-layer sm+tmkd student of the packaged MiniLM on an SST-2 slice) run
(1) in a fresh Python process, one after another, with mixkd.jobs.run.distill, and (2) as a grid sweep
of N identical cells through mixkd.platform.driver.run_sweep in a fresh Python process on a local Ray
instance, one trial at a time with the same CPUs. Both are timed from process start to exit, so
both pay their imports once; ray.init and ray.shutdown are timed apart and printed beside (on a
cluster Ray is already running). The teacher is prepared once beforehand and reused by both. The two
alternate for --repeats rounds, so a slow spell of a shared machine hits both alike.

Prints both wall times per round, the ratio over all rounds (target <= 1.15 for single-worker
trials), the fixed overhead per trial, and where the time went: each trial's wall time (Tune's
time_total_s inside the trial process), the training alone (train_time_s of each run's
metrics.json), and the rest (imports, actor start-up, loading, Tune and MLflow bookkeeping).

    python experiments/bench_sweep.py [--trials 5] [--repeats 2] [--fraction 0.01] [--cpus 2]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]


def make_spec(args):
    from mixkd.platform.spec import SweepSpec
    base = {"epochs": args.epochs, "max_seq_length": 64, "student_layers": 2, "variant": "sm+tmkd",
            "max_eval_samples": 200, "lr": 1e-4}
    return SweepSpec(name="bench", mode="grid", tasks=["sst2"], teacher_model="minilm-l6", seeds=[42],
                     data_fractions=[args.fraction], base=base, teacher={"max_steps": 1, "max_eval_samples": 50},
                     grid={"w_mle": [1.0] * args.trials}, cpus_per_trial=args.cpus,
                     measure_latency=False,   # the in-process side measures no latency either
                     storage_path=str(Path(args.workdir)), data_dir=args.data_dir)


def run_inproc(args) -> dict:
    """Child process: the N trials one after another in this process."""
    import torch
    from mixkd.jobs.run import distill
    spec = make_spec(args)
    torch.set_num_threads(max(1, int(args.cpus)))
    teacher = spec.experiment_dir / "teachers" / spec.teacher_key("sst2", args.fraction, 42)
    per_trial, train = [], []
    for i in range(args.trials):
        t0 = time.perf_counter()
        m = distill(spec.student_config("sst2", args.fraction, 42, str(teacher),
                                        str(Path(args.workdir) / "inproc" / str(i))).replace(overwrite=True))
        per_trial.append(time.perf_counter() - t0)
        train.append(m["train_time_s"])
    return {"per_trial": per_trial, "train_s": train}


def run_swept(args) -> dict:
    """Child process: ray.init (timed apart), then the N trials as a grid sweep."""
    t0 = time.perf_counter()
    from mixkd.cli.sweep import connect
    connect("local")
    init = time.perf_counter() - t0
    from mixkd.platform.driver import run_sweep
    import ray
    spec = make_spec(args)
    summary = run_sweep(spec)
    trial_s = []
    for f in sorted((spec.experiment_dir / "tune" / "grid").glob("*/result.json")):
        rows = [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        trial_s.append(rows[-1]["time_total_s"])
    train = [json.loads(m.read_text())["train_time_s"]
             for m in sorted((spec.experiment_dir / "trials").glob("*/metrics.json"))]
    t0 = time.perf_counter()
    ray.shutdown()
    return {"init": init, "shutdown": time.perf_counter() - t0, "finished": summary["finished_trials"],
            "trial_s": trial_s, "train_s": train}


def child(mode: str, args) -> tuple[float, dict]:
    argv = [sys.executable, __file__, "--child", mode, "--trials", str(args.trials), "--fraction", str(args.fraction),
            "--epochs", str(args.epochs), "--cpus", str(args.cpus), "--data-dir", args.data_dir,
            "--workdir", args.workdir]
    t0 = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    lines = [line for line in proc.stdout.splitlines() if line.startswith("BENCH ")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-5000:])
        raise SystemExit(f"bench_sweep: the {mode} run failed (exit {proc.returncode})")
    return wall, json.loads(lines[-1][6:])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--fraction", type=float, default=0.01, help="SST-2 training fraction per trial")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--cpus", type=float, default=2.0, help="CPUs per trial (and for the in-process runs)")
    ap.add_argument("--data-dir", default=os.environ.get("GLUE_DIR") or str(ROOT.parent / "shared" / "glue_data"))
    ap.add_argument("--repeats", type=int, default=2, help="rounds of (in-process, sweep), alternated")
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temp dir, removed at the end)")
    ap.add_argument("--child", choices=("inproc", "sweep"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        out = run_inproc(args) if args.child == "inproc" else run_swept(args)
        print("BENCH " + json.dumps(out), flush=True)
        return 0

    keep = args.workdir is not None
    args.workdir = str(Path(args.workdir or tempfile.mkdtemp(prefix="mixkd-bench-sweep-")).resolve())
    from mixkd.jobs.run import finetune
    spec = make_spec(args)
    teacher = spec.experiment_dir / "teachers" / spec.teacher_key("sst2", args.fraction, 42)
    print(f"preparing the teacher once ({teacher}) ...", flush=True)
    finetune(spec.teacher_config("sst2", args.fraction, 42, str(teacher)).replace(overwrite=True))

    n, walls = args.trials, {"inproc": [], "sweep": []}
    for r in range(args.repeats):   # alternate the two, so a slow spell of the machine hits both alike
        inproc_wall, inproc = child("inproc", args)
        print(f"[{r + 1}/{args.repeats}] in-process: {n} trials in {inproc_wall:.1f} s "
              f"({inproc_wall / n:.1f} s per trial; "
              f"trials {sum(inproc['per_trial']):.1f} s of which training {sum(inproc['train_s']):.1f} s; imports and "
              f"start-up {inproc_wall - sum(inproc['per_trial']):.1f} s)", flush=True)
        for p in spec.experiment_dir.iterdir():   # the sweep refuses an existing experiment: keep the teacher only
            if p.name != "teachers":
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        swept_wall, swept = child("sweep", args)
        swept_wall -= swept["init"] + swept["shutdown"]
        if swept["finished"] != n:
            raise SystemExit(f"bench_sweep: the sweep finished {swept['finished']} of {n} trials")
        in_trials = sum(swept["trial_s"])
        print(f"[{r + 1}/{args.repeats}] sweep:      {n} trials in {swept_wall:.1f} s "
              f"({swept_wall / n:.1f} s per trial; "
              f"trials {in_trials:.1f} s of which training {sum(swept['train_s']):.1f} s; the rest "
              f"{swept_wall - in_trials:.1f} s), plus ray.init {swept['init']:.1f} s and ray.shutdown "
              f"{swept['shutdown']:.1f} s", flush=True)
        print(f"    per trial, sweep (Tune time_total_s): {', '.join(f'{t:.1f}' for t in swept['trial_s'])}; "
              f"in-process: {', '.join(f'{t:.1f}' for t in inproc['per_trial'])}")
        print(f"    overhead besides training: sweep {swept_wall - sum(swept['train_s']):.1f} s, in-process "
              f"{inproc_wall - sum(inproc['train_s']):.1f} s; ratio this round {swept_wall / inproc_wall:.3f}",
              flush=True)
        walls["inproc"].append(inproc_wall)
        walls["sweep"].append(swept_wall)
    ratio = sum(walls["sweep"]) / sum(walls["inproc"])
    print(f"ratio sweep / in-process over {args.repeats} round(s): {ratio:.3f} "
          f"(rounds: {', '.join(f'{s / i:.3f}' for s, i in zip(walls['sweep'], walls['inproc']))}; "
          f"target <= 1.15: {'met' if ratio <= 1.15 else 'NOT met'}); fixed overhead per trial: "
          f"{(sum(walls['sweep']) - sum(walls['inproc'])) / (n * args.repeats):.1f} s")
    if not keep:
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
