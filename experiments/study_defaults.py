"""The study behind mixkd's step-aware defaults (issue 17): how many optimizer steps and which learning rate
a student of 1-3 layers (and the 6-layer teacher) needs, by data size.

Every cell is one `mixkd finetune` / `mixkd distill` run with explicit flags, on seed 7001 (a seed used
nowhere else in the project), the packaged MiniLM-L6 teacher, batch 32, one CPU thread per run.
Cells run in a fixed priority order, `--workers` at a time, a student only after its teacher; a cell
whose metrics.json exists is not run again, so `--resume` (the default) continues an interrupted study.

    python experiments/study_defaults.py --workers 2            # run (or continue) the study
    python experiments/study_defaults.py --table                # write experiments/results/study_defaults/
    python experiments/study_defaults.py --validate --workers 2 # the rule, all flags default, seeds 7002-7003

Grid, fixed before any cell ran:
- settings: SST-2 at 1% and 10% of the training data, MRPC and RTE full (SST-2 at 100% is listed last:
  3 epochs of 67k rows is hours per student on this CPU);
- budget: epochs raised until the run has at least MIN_STEPS optimizer steps (never below 3 epochs);
- teacher (6 layers): lr 5e-5, 1e-4, 2e-4; students (1-3 layers, cut from the lr 1e-4 teacher, chosen
  a priori): ft at lr 1e-4, 3e-4, 1e-3 and sm+tmkd at 3e-4, 1e-3 (on SST-2 1%; the larger settings, reduced
  for CPU time once SST-2 1% had shown 1e-3 the worst lr at every depth: the lr 1e-4 teacher only, ft at 1e-4 and
  3e-4, sm+tmkd at depth 2);
- the old defaults (lr 5e-5, 3 epochs) as a reference row at depth 2 (and for the teacher);
- on SST-2 1%, depth 2, lr 3e-4: the step budget itself (63, 150, 300, 600 steps), ft and sm+tmkd.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "runs" / "study_defaults"
RESULTS = ROOT / "experiments" / "results" / "study_defaults"
SEED = 7001
VALIDATION_SEEDS = (7002, 7003)
MIN_STEPS = 300
BATCH = 32
TEACHER_LRS = (5e-5, 1e-4, 2e-4)
TEACHER_LR_FOR_STUDENTS = 1e-4
FT_LRS = (1e-4, 3e-4, 1e-3)
SM_LRS = (3e-4, 1e-3)
OLD = dict(lr=5e-5, epochs=3.0)

# name -> (task, data_fraction, train rows at that fraction, max_seq_length)
SETTINGS = {
    "sst2-1": ("sst2", 0.01, 673, 64),
    "mrpc": ("mrpc", 1.0, 3668, 128),
    "sst2-10": ("sst2", 0.1, 6734, 64),
    "rte": ("rte", 1.0, 2490, 128),
    "sst2-100": ("sst2", 1.0, 67349, 64),
}


@dataclass(eq=False)
class Cell:
    name: str
    setting: str
    args: list
    after: list = field(default_factory=list)

    @property
    def out(self) -> Path:
        return RUNS / self.setting / self.name

    def done(self) -> bool:
        return (self.out / "metrics.json").is_file()


def epochs_for(rows: int, min_steps: int = MIN_STEPS) -> float:
    steps_per_epoch = math.ceil(rows / BATCH)
    return float(max(3, math.ceil(min_steps / steps_per_epoch)))


def _lr(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-")


def cells() -> list[Cell]:
    out = []
    for s, (task, frac, rows, msl) in SETTINGS.items():
        common = ["--task", task, "--data-fraction", str(frac), "--seed", str(SEED),   # random batches, as
                  "--max-seq-length", str(msl), "--batch-size", str(BATCH), "--eval-steps", "0",  # when it began
                  "--no-group-by-length"]
        ep = epochs_for(rows)
        t_main = f"teacher-lr{_lr(TEACHER_LR_FOR_STUDENTS)}"
        teach = [Cell(f"teacher-lr{_lr(lr)}", s, ["finetune", *common, "--lr", str(lr), "--epochs", str(ep)])
                 for lr in TEACHER_LRS]
        teach.sort(key=lambda c: c.name != t_main)          # the students' teacher first
        teach.append(Cell("teacher-old", s, ["finetune", *common, "--lr", str(OLD["lr"]),
                                             "--epochs", str(OLD["epochs"])]))
        tdir = str(RUNS / s / t_main)

        def student(name, variant, k, lr, epochs):
            return Cell(name, s, ["distill", *common, "--teacher", tdir, "--variant", variant,
                                  "--student-layers", str(k), "--lr", str(lr), "--epochs", str(epochs)],
                        after=[t_main])
        def contrast(v):        # the step budget itself, on the smallest setting only
            if s != "sst2-1":
                return []
            return [student(f"{v}-k2-lr3e-4-steps{n}", v, 2, 3e-4, epochs_for(rows, n) if n > 63 else 3.0)
                    for n in (63, 150, 600)]
        old = [student(f"{v}-k2-old", v, 2, OLD["lr"], OLD["epochs"]) for v in ("ft", "sm+tmkd")]
        ft = [student(f"ft-k{k}-lr{_lr(lr)}", "ft", k, lr, ep) for k in (1, 2, 3) for lr in FT_LRS]
        sm = [student(f"sm+tmkd-k{k}-lr{_lr(lr)}", "sm+tmkd", k, lr, ep) for k in (1, 2, 3) for lr in SM_LRS]
        if s == "sst2-1":
            # priority: the students' teacher, the old defaults, ft, then sm+tmkd, the other teacher lrs last
            out += [teach[0], *old, *ft, *contrast("ft"), teach[-1], *sm, *contrast("sm+tmkd"), *teach[1:-1]]
        else:   # the larger settings, reduced (CPU): the two higher lrs, sm+tmkd at depth 2 only
            ft = [c for c in ft if "lr1e-3" not in c.name]      # 1e-3 was the worst lr at every depth on SST-2 1%
            sm = [c for c in sm if "-k2-" in c.name]
            out += [teach[0], *old, *ft, *sm]
    return sorted(out, key=_priority)     # stable: within a tier, the order above


# Run order (CPU time is short): across the settings every teacher (SST-2 1% first), the
# depth-2 students under the old defaults and at the rule's lr, the rule's lr at depths 1 and 3, the rest.
_TIERS = (("teacher-lr1e-4",), ("ft-k2-old", "sm+tmkd-k2-old", "ft-k2-lr3e-4", "sm+tmkd-k2-lr3e-4"),
          ("ft-k2-lr1e-4", "ft-k1-lr3e-4", "ft-k3-lr3e-4"))


def _priority(c: Cell) -> int:
    if c.setting == "sst2-1":    # nearly complete; what is left of it (a contrast, a teacher lr) waits
        return 0 if c.name in _TIERS[0] else 1 + len(_TIERS)
    if c.setting == "sst2-100":
        return 1 + len(_TIERS) + 1
    return 1 + next((i for i, names in enumerate(_TIERS) if c.name in names), len(_TIERS))


def validation_cells() -> list[Cell]:
    """The implemented rule on fresh seeds: every training flag left at its default."""
    out = []
    task, frac, _, _ = SETTINGS["sst2-1"]
    # the issue's own check first: the two commands with every other flag at its default (seed 42)
    s = "validate-default"
    common = ["--task", task, "--data-fraction", str(frac)]
    out.append(Cell("teacher", s, ["finetune", *common, "--model", "minilm-l6"]))
    out.append(Cell("sm+tmkd-k2", s, ["distill", "--task", task, "--teacher", str(RUNS / s / "teacher"),
                                      "--variant", "sm+tmkd", "--student-layers", "2"], after=["teacher"]))
    per_seed = {}
    for seed in VALIDATION_SEEDS:
        s = f"validate-s{seed}"
        common = ["--task", task, "--data-fraction", str(frac), "--seed", str(seed)]
        out.append(Cell("teacher", s, ["finetune", *common]))
        per_seed[s] = [Cell(f"{v}-k{k}", s, ["distill", *common, "--teacher", str(RUNS / s / "teacher"), "--variant",
                                             v, "--student-layers", str(k)], after=["teacher"])
                       for k in (2, 1, 3) for v in ("ft", "sm+tmkd")]
    for i in range(6):          # depth 2 of both seeds first, then 1, then 3
        out += [cells[i] for cells in per_seed.values()]
    return out


def _alive(pid: int, out: Path | None = None) -> bool:
    """The cell's process is still running: the pid exists, is not a zombie and (with ``out``) is the run of that
    output dir (a pid file left by a stopped session may name an unrelated process by now)."""
    try:
        os.kill(pid, 0)
        if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
            return False
        return out is None or str(out) in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


class _Adopted:
    """A cell's process started by an earlier driver (same poll() interface as Popen)."""
    def __init__(self, pid: int, out: Path):
        self.pid, self.out, self.returncode = pid, out, None

    def poll(self):
        return None if _alive(self.pid, self.out) else 0


def _dep(c: Cell, after: str) -> Path:
    """The output dir of a cell ``c`` runs after (``after`` is relative to c's setting: a name, or ../setting/name;
    normalised, since c's own setting folder may not exist yet)."""
    return Path(os.path.normpath(RUNS / c.setting / after))


def run_all(todo: list[Cell], workers: int, wait_for_others: bool = False) -> None:
    """Run the cells not done yet, ``workers`` at a time, each after its ``after`` cells. With
    ``wait_for_others`` a cell whose teacher is not done waits for it (another driver trains it) instead of
    the driver stopping as blocked."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("GLUE_DIR", str(ROOT.parent / "shared" / "glue_data"))
    pending = [c for c in todo if not c.done()]
    running: dict = {}
    for c in list(pending):      # a cell still running from an earlier driver: wait for it, never start it twice
        pid_file = Path(f"{c.out}.pid")
        if pid_file.is_file() and _alive(int(pid_file.read_text()), c.out):
            pending.remove(c)
            running[c] = _Adopted(int(pid_file.read_text()), c.out)
    print(f"{len(todo) - len(pending)} of {len(todo)} cells done; {len(pending)} to run", flush=True)
    while pending or running:
        for c, p in list(running.items()):
            if p.poll() is not None:
                del running[c]
                status = "done" if c.done() else f"FAILED rc={p.returncode} (see {c.out}.log)"
                print(f"{time.strftime('%H:%M:%S')} {c.setting}/{c.name}: {status}", flush=True)
        ready = [c for c in pending if all((_dep(c, a) / "metrics.json").is_file() for a in c.after)]
        while ready and len(running) < workers:
            c = ready.pop(0)
            pending.remove(c)
            c.out.parent.mkdir(parents=True, exist_ok=True)
            resume = ["--resume"] if (c.out / "config.yaml").is_file() else []
            cmd = [sys.executable, "-m", "mixkd", *c.args, "--output-dir", str(c.out), "--no-progress", *resume]
            log = open(f"{c.out}.log", "a")
            print(f"{time.strftime('%H:%M:%S')} start {c.setting}/{c.name}", flush=True)
            running[c] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
            Path(f"{c.out}.pid").write_text(str(running[c].pid))
        if not ready and not running and pending:
            deps = {_dep(c, a) for c in pending for a in c.after}
            if not wait_for_others and not any(Path(f"{d}.pid").is_file() and
                                               _alive(int(Path(f"{d}.pid").read_text()), d) for d in deps):
                print("blocked: a teacher failed; " + ", ".join(c.name for c in pending), flush=True)
                return
            # else a teacher is still being trained by another driver: wait for it
        time.sleep(5)


def _row(c: Cell) -> dict | None:
    if not c.done():
        return None
    m = json.loads((c.out / "metrics.json").read_text())
    import yaml
    cfg = yaml.safe_load((c.out / "config.yaml").read_text())
    return dict(setting=c.setting, cell=c.name, command=m["command"], variant=m.get("variant") or "teacher",
                layers=m.get("layers"), lr=cfg.get("lr"), epochs=cfg.get("epochs"), steps=m.get("steps"),
                train_rows=m["data"]["train_rows"], metric=m["primary_metric"],
                value=round(100 * m["primary_value"], 2),
                chance=round(100 * m["chance"][m["primary_metric"]], 2),
                above_chance=m.get("above_chance"), train_time_s=m.get("train_time_s"))


def write_table(todo: list[Cell], name: str) -> None:
    rows = [r for r in (_row(c) for c in todo) if r]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")
    missing = [f"{c.setting}/{c.name}" for c in todo if not c.done()]
    lines = [f"| setting | run | layers | lr | epochs | steps | {'dev metric'} | chance | above chance | train s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['setting']} | {r['cell']} | {r['layers']} | {r['lr']:g} | {r['epochs']:g} | "
                     f"{r['steps']} | {r['metric']} {r['value']:.2f} | {r['chance']} | {r['above_chance']} | "
                     f"{r['train_time_s']:.0f} |")
    text = "\n".join(lines) + "\n"
    if missing:
        text += f"\nNot run ({len(missing)} cells): " + ", ".join(missing) + "\n"
    (RESULTS / f"{name}.md").write_text(text)
    print(text)


LR_COLUMNS = (5e-5, 1e-4, 2e-4, 3e-4, 1e-3)


def readme_table(todo: list[Cell]) -> str:
    """The README's compact view: per setting and model, the dev score under the old defaults (lr 5e-5, 3 epochs)
    and at the rule's step budget for each learning rate tried; then the step-budget contrast."""
    rows = [r for r in (_row(c) for c in todo) if r]
    head = ("| setting (train rows) | model | old defaults: lr 5e-5, 3 epochs | "
            + " | ".join(f"lr {lr:g}" for lr in LR_COLUMNS) + " |")
    lines = [head, "|" + "---|" * (3 + len(LR_COLUMNS))]
    contrast = []
    for setting in SETTINGS:
        sub = [r for r in rows if r["setting"] == setting]
        if not sub:
            continue
        n = sub[0]["train_rows"]
        models = [("teacher", "teacher (6 layers)")] + [(f"{v}-k{k}", f"{v} k={k}") for v in ("ft", "sm+tmkd")
                                                          for k in (1, 2, 3)]
        for prefix, label in models:
            def cell(pred):
                hit = [r for r in sub if r["cell"].startswith(prefix + "-") and pred(r)]
                return (f"{hit[0]['value']:.2f}{'' if hit[0]['above_chance'] else ' (chance)'}" if hit else "")
            old = cell(lambda r: r["cell"].endswith("-old"))
            by_lr = [cell(lambda r, lr=lr: "steps" not in r["cell"] and not r["cell"].endswith("-old")
                          and abs(r["lr"] - lr) < 1e-12) for lr in LR_COLUMNS]
            if old or any(by_lr):
                lines.append(f"| {setting} ({n:,}) | {label} | {old} | " + " | ".join(by_lr) + " |")
        for r in sub:
            if "steps" in r["cell"] or (r["cell"].startswith(("ft-k2-lr3e-4", "sm+tmkd-k2-lr3e-4"))
                                        and setting == "sst2-1"):
                contrast.append(r)
    text = "\n".join(lines) + "\n"
    if contrast:
        text += ("\nStep budget at lr 3e-4, 2-layer students, SST-2 1%:\n\n"
                 "| variant | optimizer steps | dev accuracy |\n|---|---|---|\n")
        for r in sorted(contrast, key=lambda r: (r["variant"], r["steps"])):
            text += f"| {r['variant']} | {r['steps']} | {r['value']:.2f} |\n"
    missing = [f"{c.setting}/{c.name}" for c in todo if not c.done()]
    if missing:
        per = {}
        for m in missing:
            per[m.split("/")[0]] = per.get(m.split("/")[0], 0) + 1
        text += (f"\nNot yet run: {len(missing)} cells (" + ", ".join(f"{k} {v}" for k, v in per.items())
                 + "; listed in grid.md; `python experiments/study_defaults.py` continues them)\n")
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", default=None, help="comma-separated settings to run (default: all, in order)")
    ap.add_argument("--table", action="store_true", help="write the results table and stop")
    ap.add_argument("--validate", action="store_true", help="the rule with default flags on fresh seeds")
    a = ap.parse_args(argv)
    todo = validation_cells() if a.validate else cells()
    if a.only:
        keep = set(a.only.split(","))
        todo = [c for c in todo if c.setting in keep]
    if not a.table:
        run_all(todo, a.workers)
    write_table(todo, "validation" if a.validate else "grid")
    if not a.validate:
        table = readme_table(todo)
        (RESULTS / "readme_table.md").write_text(table)
        readme = RESULTS / "README.md"   # the study's page; the top-level README links it
        start, end = "<!-- study-table: written by experiments/study_defaults.py --table -->\n", "<!-- /study-table -->"
        text = readme.read_text()
        if start in text and end in text and not a.only:
            head, rest = text.split(start, 1)
            readme.write_text(head + start + table + rest[rest.index(end):])
    return 0


if __name__ == "__main__":
    sys.exit(main())
