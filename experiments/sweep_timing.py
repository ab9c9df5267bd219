"""Wall time of a finished sweep, per cell and in total, from its run folders' metrics.json (a Markdown table).

    python experiments/sweep_timing.py runs/sweeps/repro-cpu            # prints the tables
    python experiments/sweep_timing.py runs/sweeps/repro-cpu --out experiments/results/repro-cpu/timing.md \
        --csv experiments/results/repro-cpu/runs.csv                   # and one row per run

Reads <sweep>/teachers/*/metrics.json and <sweep>/trials/*/metrics.json (each run's own record: wall_time_s from
the run's start to its final write, train_time_s inside the training loop, steps, examples/s) and each run's
config.yaml (data fraction, variant, augmentation, student seed, precision). A cell is (data fraction,
variant, augmentation); its seeds are its runs. The sweep's elapsed time is not the sum: trials run side by
side, so the total also gives the span from the first run's start to the last run's end (from the files'
times), which is what a user waits.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import yaml


def _runs(folder: Path) -> list[dict]:
    out = []
    for m in sorted(folder.glob("*/metrics.json")):
        rec = json.loads(m.read_text())
        cfg = yaml.safe_load((m.parent / "config.yaml").read_text()) or {}
        end = m.stat().st_mtime
        out.append({"dir": m.parent.name, "fraction": cfg.get("data_fraction"),
                    "variant": rec.get("variant") or "teacher",
                    "augment": rec.get("augmentation", "none"), "seed": cfg.get("seed"),
                    "precision": cfg.get("precision"), "wall": float(rec["wall_time_s"]),
                    "train": float(rec["train_time_s"]), "steps": int(rec["steps"]),
                    "ex_s": float(rec.get("train_examples_per_s") or 0.0), "score": rec.get("primary_value"),
                    "start": end - float(rec["wall_time_s"]), "end": end})
    return out


CSV_COLUMNS = ("kind", "dir", "fraction", "variant", "augment", "seed", "precision", "steps", "score", "wall",
               "train", "ex_s")


def write_csv(sweep: Path, path: Path) -> None:
    """One row per finished run (teachers first): what a reader needs to recompute any table, without the
    run folders."""
    import csv
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(("role", "run", "data_fraction", "variant", "augmentation", "seed", "precision", "steps",
                    "dev_primary", "wall_time_s", "train_time_s", "train_examples_per_s"))
        for kind in ("teachers", "trials"):
            for r in _runs(sweep / kind):
                w.writerow([kind[:-1]] + [r[c] for c in CSV_COLUMNS[1:]])


def _fmt_min(s: float) -> str:
    return f"{s / 60:.1f}"


def tables(sweep: Path) -> str:
    teachers = _runs(sweep / "teachers")
    trials = _runs(sweep / "trials")
    if not trials and not teachers:
        raise SystemExit(f"sweep_timing: no run with metrics.json under {sweep}/teachers or {sweep}/trials; "
                         f"pass a sweep folder (<storage>/<name>)")
    lines = ["| run | data fraction | steps | wall min | train min | train examples/s | dev score |",
             "|---|---|---|---|---|---|---|"]
    for r in teachers:
        lines.append(f"| teacher {r['dir']} | {r['fraction']} | {r['steps']} | {_fmt_min(r['wall'])} | "
                     f"{_fmt_min(r['train'])} | {r['ex_s']:.0f} | {100 * r['score']:.2f} |")
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for r in trials:
        cells[(r["fraction"], r["variant"], r["augment"])].append(r)
    lines += ["", "| data fraction | variant | augment | seeds | steps | wall min per seed (mean) | wall min (sum) "
              "| train examples/s (mean) |", "|---|---|---|---|---|---|---|---|"]
    for (frac, var, aug), rs in sorted(cells.items(), key=lambda kv: (-kv[0][0], kv[0][2], kv[0][1])):
        walls = [r["wall"] for r in rs]
        seeds = ",".join(str(r["seed"]) for r in sorted(rs, key=lambda r: r["seed"]))
        lines.append(f"| {frac} | {var} | {aug} | {seeds} "
                     f"| {rs[0]['steps']} | {_fmt_min(statistics.mean(walls))} | {_fmt_min(sum(walls))} "
                     f"| {statistics.mean(r['ex_s'] for r in rs):.0f} |")
    runs = teachers + trials
    busy = sum(r["wall"] for r in runs)
    span = max(r["end"] for r in runs) - min(r["start"] for r in runs)
    precisions = sorted({str(r["precision"]) for r in runs})
    lines += ["", f"Runs: {len(teachers)} teachers, {len(trials)} students; precision {', '.join(precisions)}. "
              f"Sum of run wall times {busy / 3600:.2f} h; first start to last end {span / 3600:.2f} h "
              f"(runs side by side; excludes the sweep's start-up, back-translation and report)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sweep", type=Path, help="sweep folder: <storage>/<name>, holding teachers/ and trials/")
    ap.add_argument("--out", type=Path, help="also write the tables here")
    ap.add_argument("--csv", type=Path, help="also write one row per run here (CSV)")
    a = ap.parse_args(argv)
    if not a.sweep.is_dir():
        print(f"sweep_timing: {a.sweep} is not a folder; pass <storage>/<name> of a sweep", file=sys.stderr)
        return 2
    text = tables(a.sweep)
    print(text, end="")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(text)
    if a.csv:
        write_csv(a.sweep, a.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
