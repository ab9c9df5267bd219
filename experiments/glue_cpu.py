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
import csv
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
# Tasks whose 1-3 layer students the defaults study saw at chance: before the lr sweep, ft students on seed 0 try
# each setting below (at depth PROBE_DEPTH, both lrs), cheapest first; the first whose better run LEARNS is fixed for
# every variant and depth of the task alike. LEARNS: dev score >= chance + max(2 points, half the teacher's gain
# over chance). None learns: the default stays and the failure is reported with the probe's numbers. (Fixed before
# any probe ran, 2026-12-04.)
PROBE_TASKS = ("rte", "mrpc")
PROBE_DEPTH = 3
SETTINGS = (("default", 0, 1), ("deeper", 1, 1), ("longer", 0, 3))   # (name, layers added, x the rule's epochs)
SESSION = ""   # this start of the driver (teachers.json): set by main


def sweep(spec: dict, name: str, storage: Path, log: Path, snapshot=None) -> Path:
    """Run (or continue) the sweep ``spec`` as experiment ``name``; returns its experiment folder. ``snapshot(exp)``
    is called every minute while it runs (each finished trial is kept as it finishes) and once at the end."""
    presets = storage / "presets"
    presets.mkdir(parents=True, exist_ok=True)
    path = presets / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**spec, "name": name}, sort_keys=False))
    exp = storage / name
    cmd = [sys.executable, str(REPO / "experiments" / "glue_sweep.py"), "--address", "local", "--preset", str(path),
           "--storage-path", str(storage)] + (["--resume"] if (exp / "sweep.yaml").is_file() else [])
    print("$", " ".join(cmd[1:]), flush=True)
    with open(log, "a") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        while proc.poll() is None:
            time.sleep(1 if snapshot is None else 60)
            if snapshot is not None and proc.poll() is None:
                snapshot(exp)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd)
    if snapshot is not None:
        snapshot(exp)
    return exp


def trial_rows(stores: list[Path], name: str) -> list[dict]:
    """Finished student runs of experiment ``name`` in these stores (counted once): cell settings, seed, dev score."""
    from mixkd.core.errors import UsageError
    from mixkd.tracking.runstore import load_runs
    if not stores:
        return []
    try:
        df = load_runs([str(p) for p in stores], name)
    except UsageError:   # no run of the experiment recorded yet
        return []
    rows = []
    for _, r in df[(df["role"] == "trial") & (df["status"] == "FINISHED")].iterrows():
        p = r["params"]
        if pd_missing(r.get("final/primary")):
            continue
        rows.append({"variant": r["variant"], "student_layers": int(r["student_layers"]),
                     "augment": p.get("augment", "none"), "lr": float(p["lr"]), "seed": int(r["seed"]),
                     "epochs": float(p["epochs"]) if p.get("epochs") not in (None, "None") else None,
                     "primary": float(r["final/primary"]), "chance": float(r.get("chance_primary", "nan")),
                     "run_id": r["run_id"]})
    return rows


def pd_missing(v) -> bool:
    return v is None or (isinstance(v, float) and v != v)


def weights_sha(teacher_dir: Path) -> str:
    return hashlib.sha256((teacher_dir / "model" / "model.safetensors").read_bytes()).hexdigest()


def commit(paths: list[Path], message: str) -> None:
    """Commit these paths only (never whatever else is staged), retrying while another git holds the index."""
    repo = str(paths[0] if paths[0].is_dir() else paths[0].parent)   # the results' repository (a worktree may run)
    err = ""
    for attempt in range(30):
        add = subprocess.run(["git", "-C", repo, "add", *map(str, paths)], capture_output=True, text=True)
        # a folder with nothing in it yet is no pathspec git knows: commit the paths that hold something
        known = [str(p) for p in paths if subprocess.run(["git", "-C", repo, "ls-files", "--", str(p)],
                                                         capture_output=True, text=True).stdout.strip()]
        done = add.returncode == 0 and known and subprocess.run(
            ["git", "-C", repo, "commit", "-q", "-m", message, "--", *known], capture_output=True, text=True)
        if done and done.returncode == 0:
            return
        err = (add.stderr or (done.stderr if done else "nothing to commit")).strip().splitlines()[-1:] or [""]
        if "index.lock" not in err[0]:   # only another git at work is worth waiting for
            break
        time.sleep(10)
    print(f"could not commit {', '.join(map(str, paths))} ({err[0] if err else ''}): commit them by hand", flush=True)


def copy_store(exp: Path, dest: Path) -> None:
    """A consistent copy of the sweep's live MLflow store (SQLite's online backup), renamed into place."""
    import sqlite3
    dest.mkdir(parents=True, exist_ok=True)
    tmp = dest / "mlflow.db.tmp"
    src = sqlite3.connect(f"file:{exp / 'mlflow.db'}?mode=ro", uri=True)
    dst = sqlite3.connect(str(tmp))
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()
    os.replace(tmp, dest / "mlflow.db")


def store_parts(root: Path, task: str) -> list[Path]:
    """The committed stores of a task, one per session that ran part of it: ``<task>`` and ``<task>-p<N>``."""
    return sorted(p for p in root.glob(f"{task}*") if (p / "mlflow.db").is_file()
                  and (p.name == task or p.name.startswith(f"{task}-p")))


def new_part(root: Path, task: str) -> Path:
    n = len(store_parts(root, task)) + 1
    return root / (task if n == 1 else f"{task}-p{n}")


class Snapshots:
    """Keeps a running sweep's store under ``dest`` each time more of its trials have finished, and commits it."""

    def __init__(self, dest: Path, out: Path, do_commit: bool, what: str):
        self.dest, self.out, self.do_commit, self.what, self.kept = dest, out, do_commit, what, -1

    def __call__(self, exp: Path) -> None:
        n = len(list((exp / "trials").glob("*/metrics.json")))
        if n == self.kept or n == 0 or not (exp / "mlflow.db").is_file():
            return
        copy_store(exp, self.dest)
        self.kept = n
        if self.do_commit:
            commit([self.dest, self.out], f"glue-cpu {self.what}: {n} finished run(s) kept ({self.dest.name})")


def note_teacher(out: Path, exp: Path, phase: str) -> dict:
    """This session's teacher (its weights' SHA-256 and dev score) in ``<task>/teachers.json``, beside every earlier
    session's: a grid continued on a fresh clone retrains it, and CPU training should repeat it bit for bit."""
    f = out / "teachers.json"
    seen = json.loads(f.read_text()) if f.is_file() else []
    teacher = next((exp / "teachers").iterdir())
    tm = json.loads((teacher / "metrics.json").read_text())
    me = {"sha256": weights_sha(teacher), "primary_metric": tm["primary_metric"], "primary_value": tm["primary_value"],
          "train_time_s": tm["train_time_s"], "precision": tm.get("precision_resolved"), "cpu": cpu_model(),
          "phase": phase}
    me["session"] = SESSION
    if not any(t.get("session") == SESSION and t["phase"] == phase for t in seen):
        seen.append(me)
        f.write_text(json.dumps(seen, indent=2) + "\n")
    if len({t["sha256"] for t in seen}) > 1:
        print(f"{out.name}: the teacher retrained in this session differs from an earlier session's "
              f"(teachers.json); runs of different sessions then have different teachers", flush=True)
    return me


def train_rows(task: str, data_dir: str | None = None) -> int:
    """Rows of the task's training set (one per line after the header, as GLUE's TSVs are)."""
    from mixkd.core.tasks import get_task
    with open(Path(data_dir or os.environ["GLUE_DIR"]) / get_task(task).folder / "train.tsv", encoding="utf-8") as fh:
        return sum(1 for line in fh if line.strip()) - 1


def learns(score: float, chance: float, teacher: float) -> bool:
    return score >= chance + max(0.02, 0.5 * (teacher - chance))


def teacher_score(stores: list[Path], name: str) -> float | None:
    from mixkd.core.errors import UsageError
    from mixkd.tracking.runstore import load_runs
    try:
        df = load_runs([str(p) for p in stores], name)
    except UsageError:
        return None
    t = df[(df["role"] == "teacher") & (df["status"] == "FINISHED")]
    return float(t["final/primary"].iloc[0]) if len(t) else None


def choose_setting(task: str, base: dict, storage: Path, do_commit: bool, results: Path) -> dict:
    """The setting every cell of ``task`` runs with (``<task>/setting.json``): the default, or for PROBE_TASKS the
    first of SETTINGS whose ft student learns on seed 0 (see PROBE_TASKS)."""
    out, f = results / task, results / task / "setting.json"
    if f.is_file():
        return json.loads(f.read_text())
    if task not in PROBE_TASKS:
        return {"name": "default", "layers_added": 0, "epochs": None}
    from mixkd.core.defaults import epochs_for
    rule = epochs_for(train_rows(task, base.get("data_dir")), base["base"]["batch_size"])
    probe = [{"name": n, "layers": PROBE_DEPTH + add, "epochs": rule * k} for n, add, k in SETTINGS]
    name, root = f"glue-cpu-{task}-probe", results / "stores-probe"

    def key(layers, epochs, lr):
        return layers, float(epochs), f"{lr:g}"
    done = {key(r["student_layers"], r["epochs"], r["lr"]) for r in trial_rows(store_parts(root, task), name)}
    todo = [{"variant": "ft", "student_layers": p["layers"], "lr": lr, "student_seed": SELECT_SEED,
             "epochs": p["epochs"]} for p in probe for lr in LR_GRID
            if key(p["layers"], p["epochs"], lr) not in done]
    if todo:
        print(f"{task}: probe for a setting that learns, {len(todo)} run(s) to go", flush=True)
        spec = {**base, "tasks": [task], "student_seeds": [], "grid": todo}
        exp = sweep(spec, name, storage, storage / f"{task}.log",
                    Snapshots(new_part(root, task), out, do_commit, f"{task} probe"))
        note_teacher(out, exp, "probe")
    rows = trial_rows(store_parts(root, task), name)
    teacher = teacher_score(store_parts(root, task), name)
    tried, chosen = [], None
    for p, (n, add, k) in zip(probe, SETTINGS):
        runs = sorted((r for r in rows if key(r["student_layers"], r["epochs"], r["lr"])[:2] == key(
            p["layers"], p["epochs"], 0)[:2]), key=lambda r: (-r["primary"], r["lr"]))
        best = runs[0]
        ok = learns(best["primary"], best["chance"], teacher)
        tried.append({"name": n, "layers": p["layers"], "epochs": p["epochs"], "best_lr": best["lr"],
                      "scores": {f"{r['lr']:g}": r["primary"] for r in runs}, "learns": ok})
        if ok and chosen is None:
            chosen = {"name": n, "layers_added": add, "epochs": None if k == 1 else p["epochs"]}
    setting = {**(chosen or {"name": "default", "layers_added": 0, "epochs": None}), "task": task,
               "none_learns": chosen is None, "teacher": teacher, "chance": rows[0]["chance"],
               "bar": rows[0]["chance"] + max(0.02, 0.5 * (teacher - rows[0]["chance"])), "rule_epochs": rule,
               "probe_depth": PROBE_DEPTH, "select_seed": SELECT_SEED, "tried": tried, "cpu": cpu_model()}
    f.write_text(json.dumps(setting, indent=2) + "\n")
    if do_commit:
        commit([out, root], f"glue-cpu {task}: setting '{setting['name']}' chosen on seed {SELECT_SEED} "
                            f"({'none of the settings learns' if chosen is None else 'it learns'})")
    return setting


def reuse_teacher(src_exp: Path, dst_exp: Path) -> None:
    """This session's teacher of an earlier phase, copied into the next phase's sweep (not fine-tuned again)."""
    if (src_exp / "teachers").is_dir() and not (dst_exp / "teachers").exists():
        src = next((src_exp / "teachers").iterdir())
        shutil.copytree(src, dst_exp / "teachers" / src.name)


def other_cpu(out: Path) -> str | None:
    """The CPU an earlier session ran this task's reported seeds on, when it is not this one (None otherwise): the
    reported seeds are paired on one teacher, which a session retrains, and only the same CPU model repeats it bit
    for bit (and picks the same precision: auto is bf16 only where the CPU computes bf16 natively)."""
    f = out / "teachers.json"
    seen = {t["cpu"] for t in (json.loads(f.read_text()) if f.is_file() else []) if t["phase"] == "reported"}
    return next(iter(seen - {cpu_model()}), None)


def run_task(task: str, base: dict, storage: Path, do_commit: bool, results: Path = RESULTS,
             allow_cpu_change: bool = False) -> None:
    out = results / task
    if (out / "done.json").is_file():
        print(f"{task}: done (committed); skipped", flush=True)
        return
    out.mkdir(parents=True, exist_ok=True)
    log = storage / f"{task}.log"
    setting = choose_setting(task, base, storage, do_commit, results)
    cells = [{**c, "student_layers": c["student_layers"] + setting["layers_added"],
              **({"epochs": setting["epochs"]} if setting["epochs"] else {})} for c in base["grid"]]
    spec = {**base, "tasks": [task], "student_seeds": []}
    t0 = time.time()
    choice_file = out / "lr_choice.json"
    tag = "" if setting["name"] == "default" else f"-{setting['name']}"
    lr_name, name = f"glue-cpu-{task}-lr{tag}", f"glue-cpu-{task}{tag}"
    lr_exp, exp_dir = storage / lr_name, storage / name
    plain = [c for c in cells if c.get("augment", "none") == "none"]
    if not choice_file.is_file():
        lr_root = results / "stores-lr"
        done = {(r["variant"], r["student_layers"], f"{r['lr']:g}") for r in trial_rows(store_parts(lr_root, task),
                                                                                         lr_name)
                if r["seed"] == SELECT_SEED}
        todo = [{**c, "lr": lr, "student_seed": SELECT_SEED} for c in plain for lr in LR_GRID
                if (c["variant"], c["student_layers"], f"{lr:g}") not in done]
        if todo:
            print(f"{task}: lr sweep, {len(todo)} run(s) to go ({len(done)} kept from earlier sessions)", flush=True)
            part = new_part(lr_root, task)
            reuse_teacher(storage / f"glue-cpu-{task}-probe", lr_exp)
            sweep({**spec, "grid": todo}, lr_name, storage, log, Snapshots(part, out, do_commit, f"{task} lr"))
            note_teacher(out, lr_exp, "lr")
        rows = [r for r in trial_rows(store_parts(lr_root, task), lr_name) if r["seed"] == SELECT_SEED]
        chosen = {}
        for c in plain:
            key = f"{c['variant']}/{c['student_layers']}"
            arm = (c["variant"], c["student_layers"])
            cand = sorted((r for r in rows if (r["variant"], r["student_layers"]) == arm),
                          key=lambda r: (-r["primary"], r["lr"]))
            if len(cand) != len(LR_GRID):
                raise SystemExit(f"{task}: the lr sweep has {len(cand)} finished runs for {key}, not {len(LR_GRID)}")
            chosen[key] = {"lr": cand[0]["lr"], "scores": {f"{r['lr']:g}": r["primary"] for r in cand}}
        choice_file.write_text(json.dumps({
            "task": task, "select_seed": SELECT_SEED, "lr_grid": list(LR_GRID), "chosen": chosen,
            "stores": [p.name for p in store_parts(lr_root, task)], "cpu": cpu_model(),
            "wall_time_s_this_session": round(time.time() - t0, 1)}, indent=2) + "\n")
        if do_commit:
            picks = ", ".join(f"{k} {v['lr']:g}" for k, v in chosen.items())
            commit([out, lr_root], f"glue-cpu {task}: lr chosen on seed {SELECT_SEED} ({picks})")
    choice = json.loads(choice_file.read_text())
    started_on = other_cpu(out)
    if started_on and not allow_cpu_change:
        print(f"{task}: skipped: its reported seeds so far ran on {started_on}, this machine is {cpu_model()}, "
              f"so its teacher would differ; continue on such a CPU, or pass --allow-cpu-change (teachers.json then "
              f"records two teachers)", flush=True)
        return
    t1 = time.time()
    root = results / "stores"
    seeds = base["student_seeds"]
    grid = [{**c, "lr": choice["chosen"][f"{c['variant']}/{c['student_layers']}"]["lr"]} for c in cells]
    done = {(r["variant"], r["student_layers"], r["augment"], r["seed"]) for r in trial_rows(store_parts(root, task),
                                                                                               name)}
    todo = [{**c, "student_seed": s} for c in grid for s in seeds
            if (c["variant"], c["student_layers"], c.get("augment", "none"), s) not in done]
    if todo:
        print(f"{task}: {len(todo)} reported run(s) to go ({len(done)} kept from earlier sessions)", flush=True)
        reuse_teacher(lr_exp, exp_dir)
        part = new_part(root, task)
        sweep({**spec, "grid": todo}, name, storage, log, Snapshots(part, out, do_commit, task))
        note_teacher(out, exp_dir, "reported")
    rows = trial_rows(store_parts(root, task), name)
    missing = len(grid) * len(seeds) - len(rows)
    if missing:
        raise SystemExit(f"{task}: {missing} reported run(s) did not finish; run the driver again to continue")
    with open(out / "runs.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(sorted(rows, key=lambda r: (r["student_layers"], r["variant"], r["augment"], r["seed"])))
    teachers = json.loads((out / "teachers.json").read_text()) if (out / "teachers.json").is_file() else []
    (out / "done.json").write_text(json.dumps({
        "task": task, "runs": len(rows), "stores": [p.name for p in store_parts(root, task)],
        "teacher_weights_identical_in_every_session": len({t["sha256"] for t in teachers}) <= 1,
        "sessions_teachers": len(teachers), "cpu": cpu_model(),
        "wall_time_s_this_session": round(time.time() - t1, 1)}, indent=2) + "\n")
    if do_commit:
        commit([out, root], f"glue-cpu {task}: all {len(rows)} reported runs (seeds {seeds})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default=str(PRESET), help="the grid (default: mixkd/platform/presets/glue-cpu.yaml)")
    ap.add_argument("--results", default=str(RESULTS), help="where each task's results go (committed)")
    ap.add_argument("--tasks", nargs="+", help="tasks to run, in order (default: the preset's)")
    ap.add_argument("--storage-path", default="runs/glue-cpu")
    ap.add_argument("--commit", action="store_true", help="git commit each task's results as each phase finishes")
    ap.add_argument("--allow-cpu-change", action="store_true",
                    help="continue a task's reported seeds on another CPU model than the one that started them")
    a = ap.parse_args(argv)
    global SESSION
    SESSION = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {Path(a.storage_path).resolve()}"
    base = yaml.safe_load(Path(a.preset).read_text())
    results = Path(a.results).resolve()
    os.environ.setdefault("GLUE_DIR", str(REPO.parent / "shared" / "glue_data"))
    storage = Path(a.storage_path).resolve()
    storage.mkdir(parents=True, exist_ok=True)
    for task in a.tasks or base["tasks"]:
        run_task(task, base, storage, a.commit, results, a.allow_cpu_change)
    if all((results / t / "done.json").is_file() for t in base["tasks"]):
        subprocess.run([sys.executable, "-m", "mixkd", "report", "--tracking-uri", str(results / "stores"), "--out",
                        str(results / "report"), "--overwrite"], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
