"""Training-step throughput of each MixKD variant vs plain fine-tuning, and the ratio predicted by
counting passes.

For each student depth, it times the real ``Trainer.train_step`` (forward, backward, clipping,
AdamW, schedule) of ft, kd, tmkd and sm+tmkd on the same real SST-2 batches, with the packaged
MiniLM as the teacher. It also times the passes alone: student forward+backward on B and 2B rows,
teacher forward on B rows, and the optimizer step. The predicted step time of a variant is the sum
of the passes it needs:

    ft:             student fwd+bwd(B)                      + optimizer
    kd:             student fwd+bwd(B)  + teacher fwd(B)    + optimizer
    tmkd, sm+tmkd:  student fwd+bwd(2B) + teacher fwd(B)    + optimizer   (mixup ratio 1)

Target: the measured ratio to ft is within 1.15x of the predicted ratio (the mixup bookkeeping,
label mixing and extra loss terms cost little).

    python experiments/bench_step.py [--layers 2 3] [--batch-size 32] [--steps 10]
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from mixkd.core.config import VARIANTS, MixKDConfig  # noqa: E402
from mixkd.core.data import load_glue  # noqa: E402
from mixkd.core.models import build_student, count_parameters, load_classifier, load_tokenizer  # noqa: E402
from mixkd.core.tasks import get_task  # noqa: E402
from mixkd.core.trainer import Trainer, model_inputs  # noqa: E402


def timed(fn, steps: int, warmup: int, sync) -> float:
    """Median seconds of ``fn()`` over ``steps`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 3], help="student depths")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10, help="timed steps per measurement (median)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--teacher", default="minilm-l6", help="teacher model (speed does not depend on its weights)")
    ap.add_argument("--data-dir", default=os.environ.get("GLUE_DIR") or str(Path(__file__).resolve().parents[1].parent / "shared" / "glue_data"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    task = get_task("sst2")
    cfg = MixKDConfig(task="sst2", data_dir=args.data_dir, data_fraction=0.05, data_seed=0, batch_size=args.batch_size,
                      max_seq_length=128, progress=False, output_dir="/tmp/mixkd-bench-unused", device=args.device,
                      warmup_ratio=0.0, max_steps=10_000)
    tok = load_tokenizer(args.teacher)
    data = load_glue(cfg, task, tok)
    teacher = load_classifier(args.teacher, task, new_head=True)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(data.train), generator=g).tolist()
    n_batches = args.warmup + args.steps
    from mixkd.core.trainer import make_collator
    collate = make_collator(tok)
    batches = [collate(data.train.__getitems__(perm[i * args.batch_size:(i + 1) * args.batch_size]))
               for i in range(n_batches)]
    mean_len = statistics.mean(b["input_ids"].shape[1] for b in batches)

    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       (args.device if args.device != "auto" else "cpu"))
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    print(f"device {dev} ({torch.cuda.get_device_name(0) if dev.type == 'cuda' else f'{torch.get_num_threads()} CPU threads'}), "
          f"torch {torch.__version__}; teacher {args.teacher} ({count_parameters(teacher):,} params); "
          f"batch {args.batch_size} real SST-2 rows, padded length {mean_len:.1f} on average; median of {args.steps} steps")

    for k in args.layers:
        step_time = {}
        trainers = {}
        for variant in VARIANTS:
            student = build_student(teacher, k, "first")
            tr = Trainer(cfg.replace(variant=variant), task, student, tok, data, Path("/tmp/mixkd-bench-unused"),
                         teacher=copy.deepcopy(teacher))
            trainers[variant] = tr
            it = iter(range(10**9))

            def step(tr=tr, it=it):
                b = batches[next(it) % len(batches)]
                tr.train_step([b])
            step_time[variant] = timed(step, args.steps, args.warmup, sync)

        # the passes alone
        tr = trainers["ft"]
        s, t = tr.student, trainers["sm+tmkd"].teacher
        it2 = iter(range(10**9))

        def fwd_bwd(rows: int):
            def f():
                b = {key: v.to(dev) for key, v in batches[next(it2) % len(batches)].items()}
                inp = model_inputs(s, b)
                if rows == 2:
                    inp = {key: torch.cat([v, v]) for key, v in inp.items()}
                s(**inp).logits.float().pow(2).mean().backward()
                s.zero_grad(set_to_none=True)
            return f

        def teacher_fwd():
            b = {key: v.to(dev) for key, v in batches[next(it2) % len(batches)].items()}
            with torch.no_grad():
                t(**model_inputs(t, b))

        s_fb1 = timed(fwd_bwd(1), args.steps, args.warmup, sync)
        s_fb2 = timed(fwd_bwd(2), args.steps, args.warmup, sync)
        t_f = timed(teacher_fwd, args.steps, args.warmup, sync)
        opt = max(step_time["ft"] - s_fb1, 0.0)
        predicted = {"ft": s_fb1 + opt, "kd": s_fb1 + t_f + opt, "tmkd": s_fb2 + t_f + opt, "sm+tmkd": s_fb2 + t_f + opt,
                     "pkd": s_fb1 + t_f + opt}   # kd's passes; hidden states and L_PT are cheap extras

        print(f"\nstudent {k} layers ({count_parameters(s):,} params): student fwd+bwd B {s_fb1 * 1e3:.0f} ms, "
              f"2B {s_fb2 * 1e3:.0f} ms; teacher fwd B {t_f * 1e3:.0f} ms; optimizer+rest {opt * 1e3:.0f} ms")
        print(f"{'variant':<9}{'step ms':>9}{'ex/s':>8}{'ratio to ft':>13}{'predicted':>11}{'meas/pred':>11}")
        worst = 0.0
        for v in VARIANTS:
            ratio = step_time[v] / step_time["ft"]
            pred = predicted[v] / predicted["ft"]
            worst = max(worst, ratio / pred)
            print(f"{v:<9}{step_time[v] * 1e3:>9.0f}{args.batch_size / step_time[v]:>8.1f}{ratio:>13.2f}{pred:>11.2f}"
                  f"{ratio / pred:>11.3f}")
        print(f"worst measured/predicted: {worst:.3f} (target <= 1.15: {'met' if worst <= 1.15 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
