"""The glue-cpu grid (mixkd/platform/presets/glue-cpu.yaml), one task at a time, resumable from what is committed.

Per task, two sweeps of the platform itself (``experiments/glue_sweep.py``, local Ray, MLflow):

1. **lr**: every (variant, depth) of the preset with each lr of ``LR_GRID``, student seed ``SELECT_SEED`` only; the
   teacher is fine-tuned here. Each (variant, depth) keeps the lr with the better dev score (a tie: the lower lr);
   +BT cells take their variant's choice. Written to ``experiments/results/glue-cpu/<task>/lr_choice.json`` with the
   teacher's dev score and a SHA-256 of its weights; the sweep's MLflow store goes to ``stores-lr/<task>/``.
2. **reported**: the preset's cells with their chosen lr, student seeds 1-3, on the same teacher (copied from the
   lr sweep when it is still on disk; else fine-tuned again, and its weights compared with the recorded hash: CPU
   training is deterministic on one CPU model). Its store goes to ``stores/<task>/``, its runs to ``runs.csv``,
   and ``done.json`` marks the task finished.

``--commit`` commits each task's folder as soon as a phase finishes, so a grid longer than a session continues on a
fresh clone from what is committed: a finished task is skipped, a task with ``lr_choice.json`` starts at phase 2.
The report over every finished task: ``mixkd report --tracking-uri experiments/results/glue-cpu/stores --out ...``
(this script writes it to ``experiments/results/glue-cpu/report`` after the last task).

    python experiments/glue_cpu.py --storage-path runs/glue-cpu [--tasks rte mrpc] [--commit]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from mixkd.deploy.latency import cpu_model

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "mixkd" / "platform" / "presets" / "glue-cpu.yaml"
RESULTS = REPO / "experiments" / "results" / "glue-cpu"
LR_GRID = (1e-4, 3e-4)
SELECT_SEED = 0


def sweep(spec: dict, name: str, storage: Path, log: Path) -> Path:
    """Run (or continue) the sweep ``spec`` as experiment ``name``; returns its experiment folder."""
    presets = storage / "presets"
    presets.mkdir(parents=True, exist_ok=True)
    path = presets / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**spec, "name": name}, sort_keys=False))
    exp = storage / name
    cmd = [sys.executable, str(REPO / "experiments" / "glue_sweep.py"), "--address", "local", "--preset", str(path),
           "--storage-path", str(storage)] + (["--resume"] if (exp / "sweep.yaml").is_file() else [])
    print("$", " ".join(cmd[1:]), flush=True)
    with open(log, "a") as fh:
        subprocess.run(cmd, check=True, stdout=fh, stderr=subprocess.STDOUT)
    return exp


def trial_rows(exp: Path, name: str) -> list[dict]:
    """Finished student runs of a sweep: its cell settings, seed and final dev scores (from MLflow)."""
    from mixkd.tracking.runstore import load_runs
    df = load_runs(str(exp), name)
    rows = []
    for _, r in df[(df["role"] == "trial") & (df["status"] == "FINISHED")].iterrows():
        p = r["params"]
        rows.append({"variant": r["variant"], "student_layers": int(r["student_layers"]),
                     "augment": p.get("augment", "none"), "lr": float(p["lr"]), "seed": int(r["seed"]),
                     "primary": float(r["final/primary"]), "run_id": r["run_id"]})
    return rows


def weights_sha(teacher_dir: Path) -> str:
    return hashlib.sha256((teacher_dir / "model" / "model.safetensors").read_bytes()).hexdigest()


def commit(paths: list[Path], message: str) -> None:
    """Commit these paths only (never whatever else is staged), retrying while another git holds the index."""
    repo = str(paths[0] if paths[0].is_dir() else paths[0].parent)   # the results' repository (a worktree may run)
    for attempt in range(30):
        add = subprocess.run(["git", "-C", repo, "add", *map(str, paths)], capture_output=True, text=True)
        done = add.returncode == 0 and subprocess.run(
            ["git", "-C", repo, "commit", "-q", "-m", message, "--", *map(str, paths)],
            capture_output=True, text=True).returncode == 0
        if done:
            return
        time.sleep(10)
    print(f"could not commit {', '.join(map(str, paths))}: commit them by hand", flush=True)


def keep_store(exp: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(exp / "mlflow.db", dest / "mlflow.db")


def run_task(task: str, base: dict, storage: Path, do_commit: bool, results: Path = RESULTS) -> None:
    out = results / task
    if (out / "done.json").is_file():
        print(f"{task}: done (committed); skipped", flush=True)
        return
    out.mkdir(parents=True, exist_ok=True)
    log = storage / f"{task}.log"
    cells = base["grid"]
    spec = {**base, "tasks": [task]}
    t0 = time.time()
    choice_file = out / "lr_choice.json"
    lr_exp = storage / f"glue-cpu-{task}-lr"
    if not choice_file.is_file():
        plain = [c for c in cells if c.get("augment", "none") == "none"]
        grid = [{**c, "lr": lr} for c in plain for lr in LR_GRID]
        exp = sweep({**spec, "grid": grid, "student_seeds": [SELECT_SEED]}, lr_exp.name, storage, log)
        rows = trial_rows(exp, lr_exp.name)
        chosen = {}
        for c in plain:
            key = f"{c['variant']}/{c['student_layers']}"
            arm = (c["variant"], c["student_layers"])
            cand = sorted((r for r in rows if (r["variant"], r["student_layers"]) == arm),
                          key=lambda r: (-r["primary"], r["lr"]))
            if len(cand) != len(LR_GRID):
                raise SystemExit(f"{task}: the lr sweep has {len(cand)} finished runs for {key}, not {len(LR_GRID)}")
            chosen[key] = {"lr": cand[0]["lr"], "scores": {str(r["lr"]): r["primary"] for r in cand}}
        teacher = next((lr_exp / "teachers").iterdir())
        tm = json.loads((teacher / "metrics.json").read_text())
        choice_file.write_text(json.dumps({
            "task": task, "select_seed": SELECT_SEED, "lr_grid": list(LR_GRID), "chosen": chosen,
            "teacher": {"primary_metric": tm["primary_metric"], "primary_value": tm["primary_value"],
                        "weights_sha256": weights_sha(teacher), "precision": tm.get("precision_resolved"),
                        "train_time_s": tm["train_time_s"]},
            "cpu": cpu_model(), "wall_time_s": round(time.time() - t0, 1)}, indent=2) + "\n")
        keep_store(exp, results / "stores-lr" / task)
        if do_commit:
            picks = ", ".join(f"{k} {v['lr']:g}" for k, v in chosen.items())
            commit([out, results / "stores-lr" / task], f"glue-cpu {task}: lr chosen on seed {SELECT_SEED} ({picks})")
    choice = json.loads(choice_file.read_text())
    t1 = time.time()
    name = f"glue-cpu-{task}"
    exp_dir = storage / name
    grid = [{**c, "lr": choice["chosen"][f"{c['variant']}/{c['student_layers']}"]["lr"]} for c in cells]
    if lr_exp.is_dir() and not (exp_dir / "teachers").exists():   # the same teacher, not fine-tuned again
        src = next((lr_exp / "teachers").iterdir())
        shutil.copytree(src, exp_dir / "teachers" / src.name)
    exp = sweep({**spec, "grid": grid}, name, storage, log)
    teacher = next((exp / "teachers").iterdir())
    same = weights_sha(teacher) == choice["teacher"]["weights_sha256"]
    rows = trial_rows(exp, name)
    import csv
    with open(out / "runs.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(sorted(rows, key=lambda r: (r["student_layers"], r["variant"], r["augment"], r["seed"])))
    keep_store(exp, results / "stores" / task)
    (out / "done.json").write_text(json.dumps({
        "task": task, "runs": len(rows), "teacher_weights_identical_to_lr_sweep": same, "cpu": cpu_model(),
        "wall_time_s": round(time.time() - t1, 1)}, indent=2) + "\n")
    if do_commit:
        commit([out, results / "stores" / task], f"glue-cpu {task}: {len(rows)} reported runs (seeds 1-3)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default=str(PRESET), help="the grid (default: mixkd/platform/presets/glue-cpu.yaml)")
    ap.add_argument("--results", default=str(RESULTS), help="where each task's results go (committed)")
    ap.add_argument("--tasks", nargs="+", help="tasks to run, in order (default: the preset's)")
    ap.add_argument("--storage-path", default="runs/glue-cpu")
    ap.add_argument("--commit", action="store_true", help="git commit each task's results as each phase finishes")
    a = ap.parse_args(argv)
    base = yaml.safe_load(Path(a.preset).read_text())
    results = Path(a.results).resolve()
    os.environ.setdefault("GLUE_DIR", str(REPO.parent / "shared" / "glue_data"))
    storage = Path(a.storage_path).resolve()
    storage.mkdir(parents=True, exist_ok=True)
    for task in a.tasks or base["tasks"]:
        run_task(task, base, storage, a.commit, results)
    if all((results / t / "done.json").is_file() for t in base["tasks"]):
        subprocess.run([sys.executable, "-m", "mixkd", "report", "--tracking-uri", str(results / "stores"), "--out",
                        str(results / "report"), "--overwrite"], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
