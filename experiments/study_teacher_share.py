"""Is sharing the teacher's logits on mixed rows between trials worth it? (issue 27, item 3)

tmkd and sm+tmkd run the frozen teacher on every step's mixed rows. Two trials could share those logits only if
they draw the same mixup plan on the same batches: the same training rows, student seed, batch size, alpha and
mixup ratio, and a plan drawn from a generator of its own (today dropout and the plan share torch's RNG). In a grid
that is the tmkd/sm+tmkd cells that differ only in student depth or in which of the two variants they are.

This measures, on the real MiniLM teacher and SST-2 rows, the median time of an sm+tmkd step with the teacher's
mixed-row forward (live) and without it (its logits handed back from the first step, the best a shared cache could
do), per student depth; then applies the saving to each grid's cells (sharing groups of n cells save n - 1 teacher
passes each) and prints the fraction of the grid's training time it would save.

    python experiments/study_teacher_share.py --threads 1 --steps 12
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def step_times(depths, threads: int, steps: int, data_dir: str | None, batch_size: int = 32, seq: int = 64):
    import torch

    from mixkd.core.config import MixKDConfig
    from mixkd.core.data import load_glue
    from mixkd.core.models import build_student, load_classifier, load_tokenizer
    from mixkd.core.tasks import get_task
    from mixkd.core.trainer import Trainer
    torch.set_num_threads(threads)
    task = get_task("sst2")
    tok = load_tokenizer("minilm-l6")
    cfg = MixKDConfig(task="sst2", teacher="minilm-l6", output_dir="unused", data_dir=data_dir, data_fraction=0.1,
                      batch_size=batch_size, max_seq_length=seq, lr=3e-4, epochs=1, progress=False, seed=1,
                      variant="sm+tmkd")
    data = load_glue(cfg, task, tok)
    teacher = load_classifier("minilm-l6", task, new_head=True)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in depths:
            row = {}
            for mode in ("live", "no teacher"):
                torch.manual_seed(0)
                student = build_student(teacher, k).requires_grad_(True)
                tr = Trainer(cfg.replace(output_dir=tmp), task, student, tok, data, Path(tmp), teacher=teacher)
                if mode == "no teacher":
                    real, kept = tr._forward, {}

                    def forward(model, inputs, lengths, call=None, hidden=False, _real=real, _tr=tr, _kept=kept):
                        if model is _tr.teacher:   # the mixed rows' logits as a shared cache would hand them back
                            if "out" not in _kept:
                                _kept["out"] = _real(model, inputs, lengths, call, hidden)
                            return _kept["out"]
                        return _real(model, inputs, lengths, call, hidden)
                    tr._forward = forward
                plan = tr._epoch_steps(0)[:steps + 2]
                batches = [[tr.collator(data.train.__getitems__(m)) for m in st] for st in plan]
                times = []
                for i, (mb, st) in enumerate(zip(batches, plan)):
                    t0 = time.perf_counter()
                    tr.train_step(mb, st)
                    if i >= 2:
                        times.append(time.perf_counter() - t0)
                row[mode] = statistics.median(times)
                teacher.float()
            out[k] = row
    return out


GRIDS = {   # (variant, depth, rows factor, share group) per cell of one (task, fraction, seed) group
    "glue-cpu": [("ft", 2, 1, None), ("tmkd", 2, 1, "a"), ("sm+tmkd", 2, 1, "a"), ("ft", 3, 1, None),
                 ("tmkd", 3, 1, "a"), ("sm+tmkd", 3, 1, "a"), ("ft", 3, 2, None), ("sm+tmkd", 3, 2, "bt")],
    "repro-cpu": [(v, 2, f, g) for f, g in ((1, "a"), (2, "bt")) for v in ("ft", "kd", "pkd", "tmkd", "sm+tmkd")],
    "demo": [(v, k, 1, "a" if v != "ft" else None) for v in ("ft", "sm+tmkd") for k in (1, 2, 3)],
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--data-dir", default=None)
    a = ap.parse_args(argv)
    from mixkd.deploy.latency import cpu_model
    t = step_times((1, 2, 3), a.threads, a.steps, a.data_dir)
    print(f"CPU: {cpu_model()}, {a.threads} thread(s); sm+tmkd step, batch 32, SST-2 10% rows, median of {a.steps}")
    print("| student layers | step, teacher live | step, teacher logits shared | teacher share of the step |")
    print("|---|---|---|---|")
    for k, r in t.items():
        print(f"| {k} | {1000 * r['live']:.0f} ms | {1000 * r['no teacher']:.0f} ms | "
              f"{1 - r['no teacher'] / r['live']:.0%} |")
    # ft costs ~ a step without the mixed rows: approximated by the no-teacher MixKD step / 2 (half the student
    # rows); kd/pkd with cached teacher outputs likewise. Seconds per group, per unit of data.
    print("\n| grid | share of trial time saved if mixed-row logits were shared |")
    print("|---|---|")
    for name, cells in GRIDS.items():
        total = saved = 0.0
        groups: dict[str, list] = {}
        for v, k, f, g in cells:
            r = t[min(k, 3)]
            cost = f * (r["live"] if v in ("tmkd", "sm+tmkd") else r["no teacher"] / 2)
            total += cost
            if v in ("tmkd", "sm+tmkd") and g:
                groups.setdefault(g, []).append(f * (r["live"] - r["no teacher"]))
        for g, teacher_costs in groups.items():
            saved += sum(teacher_costs) - max(teacher_costs)   # one pass kept per sharing group
        print(f"| {name} | {saved / total:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
