"""Does `--group-by-length` cost accuracy? (issue 16, part 1) Dev scores of 2-layer students trained with random
batches against length-grouped ones, over three seeds, on SST-2 at 10% and RTE.

Every flag but the seed and the grouping is mixkd's default (the step-aware lr and epochs, batch 32), with the
teacher of the defaults study (`experiments/study_defaults.py`: MiniLM-L6, lr 1e-4, seed 7001). The seed-7001
random-batch arms are that study's `ft-k2-lr3e-4` and `sm+tmkd-k2-lr3e-4` cells (the same runs: the rule gives
a 2-layer student lr 3e-4 and the same epochs), read from there and not run twice. Cells resume like the study's.

    python experiments/study_grouping.py --workers 2      # run (or continue)
    python experiments/study_grouping.py --table          # experiments/results/study_grouping/
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_defaults import RUNS, SETTINGS, Cell, _row, run_all  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "study_grouping"
SEEDS = (7001, 7002, 7003)
TASK_SETTINGS = ("sst2-10", "rte")
TEACHER = "teacher-lr1e-4"


def cells() -> list[tuple[str, str, int, bool, Cell]]:
    """(setting, variant, seed, grouped, cell); the study's own cells for the seed-7001 random arms."""
    out = []
    for v in ("sm+tmkd", "ft"):     # sm+tmkd first: the variant grouping changes most (mixup partners)
        for s in TASK_SETTINGS:
            task, frac, _, msl = SETTINGS[s]
            tdir = str(RUNS / s / TEACHER)
            for seed in SEEDS:
                for grouped in (False, True):
                    if seed == 7001 and not grouped:   # the study's cell: the same run
                        out.append((s, v, seed, grouped, Cell(f"{v}-k2-lr3e-4", s, [])))
                        continue
                    args = ["distill", "--task", task, "--data-fraction", str(frac), "--seed", str(seed),
                            "--max-seq-length", str(msl), "--eval-steps", "0", "--teacher", tdir, "--variant", v,
                            "--student-layers", "2", "--group-by-length" if grouped else "--no-group-by-length"]
                    name = f"{v}-k2-{'grouped' if grouped else 'random'}-s{seed}"
                    out.append((s, v, seed, grouped, Cell(name, f"grouping-{s}", args, after=[f"../{s}/{TEACHER}"])))
    return out


def table(rows: list[tuple]) -> str:
    lines = ["| setting | variant | batches | " + " | ".join(f"seed {s}" for s in SEEDS)
             + " | mean ± sd | train s (mean) |", "|---|---|---|" + "---|" * len(SEEDS) + "---|---|"]
    summary = []
    for s in TASK_SETTINGS:
        for v in ("sm+tmkd", "ft"):
            means = {}
            for grouped in (False, True):
                got = {seed: r for (ss, vv, seed, g, r) in rows if (ss, vv, g) == (s, v, grouped) and r}
                if not got:
                    continue
                vals = [got[x]["value"] for x in SEEDS if x in got]
                sd = f" ± {statistics.stdev(vals):.2f}" if len(vals) > 1 else ""
                means[grouped] = statistics.mean(vals)
                secs = statistics.mean(r["train_time_s"] for r in got.values())
                lines.append(f"| {s} | {v} | {'grouped' if grouped else 'random'} | "
                             + " | ".join(f"{got[x]['value']:.2f}" if x in got else "" for x in SEEDS)
                             + f" | {means[grouped]:.2f}{sd} (n={len(vals)}) | {secs:.0f} |")
            if len(means) == 2:
                summary.append(f"{s} {v}: grouped - random = {means[True] - means[False]:+.2f} points")
    return "\n".join(lines) + "\n\n" + "\n".join(summary) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--table", action="store_true", help="write the results table and stop")
    a = ap.parse_args(argv)
    todo = cells()
    if not a.table:
        run_all([c for (*_, c) in todo if c.args], a.workers, wait_for_others=True)   # the study trains the teachers
    rows = [(s, v, seed, g, _row(c)) for (s, v, seed, g, c) in todo]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "grouping.json").write_text(json.dumps(
        [dict(r, seed=seed, grouped=g) for (s, v, seed, g, r) in rows if r], indent=1) + "\n")
    text = table(rows)
    missing = [f"{c.setting}/{c.name}" for (*_, c) in todo if not c.done()]
    if missing:
        text += f"\nNot yet run ({len(missing)}): " + ", ".join(missing) + "\n"
    (RESULTS / "grouping.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
