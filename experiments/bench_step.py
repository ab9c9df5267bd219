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

``--compare-hf`` runs the race instead: training examples/s of mixkd's trainer against a Hugging Face
``Trainer`` with a custom ``compute_loss`` (experiments/hf_baseline.py, the way a user writes it today), in
one process, both training on the same 10% of SST-2 (real rows) with the packaged MiniLM as the teacher and
a 2-layer student (the first ``--layers``), ``ft`` and ``sm+tmkd``, each with and without length grouping
(mixkd's ``--group-by-length``, HF's ``group_by_length`` sampler). Each run is the trainer's own ``train()``
loop; the clock runs from the end of the ``--warmup``-th optimizer step to the end of ``--steps`` more, so
start-up and the final evaluation are outside it. It prints every combination, the like-for-like ratios
and, last, ``mixkd/hf sm+tmkd examples/s ratio: X.XX``: mixkd's defaults against ``TrainingArguments``'
defaults (their sampler and precision), batch 32 for both. Needs ``accelerate`` (for the HF Trainer).

    python experiments/bench_step.py [--layers 2 3] [--batch-size 32] [--steps 10]
    python experiments/bench_step.py --compare-hf [--steps 100] [--repeats 3] [--threads 2]
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
    ap.add_argument("--data-dir", default=os.environ.get("GLUE_DIR")
                    or str(Path(__file__).resolve().parents[1].parent / "shared" / "glue_data"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--compare-hf", action="store_true", help="race mixkd's trainer against a Hugging Face Trainer")
    ap.add_argument("--repeats", type=int, default=1, help="--compare-hf: runs per combination (median)")
    ap.add_argument("--data-fraction", type=float, default=0.1, help="--compare-hf: SST-2 training fraction")
    ap.add_argument("--tasks", nargs="+", default=["sst2", "rte"], help="--compare-hf: tasks raced (RTE: all rows)")
    ap.add_argument("--grouping", action="store_true", help="--compare-hf: also race length-grouped batches")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare_hf:
        return race(args)

    task = get_task("sst2")
    cfg = MixKDConfig(task="sst2", data_dir=args.data_dir, data_fraction=0.05, data_seed=0, batch_size=args.batch_size,
                      max_seq_length=128, progress=False, output_dir="/tmp/mixkd-bench-unused", device=args.device,
                      warmup_ratio=0.0, max_steps=10_000, packing="off")   # the passes below are padded
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
    where = torch.cuda.get_device_name(0) if dev.type == "cuda" else f"{torch.get_num_threads()} CPU threads"
    print(f"device {dev} ({where}), "
          f"torch {torch.__version__}; teacher {args.teacher} ({count_parameters(teacher):,} params); "
          f"batch {args.batch_size} real SST-2 rows, padded length {mean_len:.1f} on average; "
          f"median of {args.steps} steps")

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
        predicted = {"ft": s_fb1 + opt, "kd": s_fb1 + t_f + opt, "tmkd": s_fb2 + t_f + opt,
                     "sm+tmkd": s_fb2 + t_f + opt,
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


# --- the race against the Hugging Face Trainer (--compare-hf) -----------------------------------------

class StepClock:
    """Input shapes of every optimizer step, and the clock between the end of step ``start`` and ``end``
    (synchronised there on CUDA, nowhere else)."""

    def __init__(self, start: int, end: int, sync):
        self.start, self.end, self.sync = start, end, sync
        self.shapes: list[tuple[int, int]] = []
        self.t0 = self.t1 = None

    def step_done(self, step: int) -> None:
        if step in (self.start, self.end):
            self.sync()
            if step == self.start:
                self.t0 = time.perf_counter()
            else:
                self.t1 = time.perf_counter()

    def result(self) -> dict:
        timed = self.shapes[self.start:self.end]
        examples = sum(b for b, _ in timed)
        return {"ex_s": examples / (self.t1 - self.t0), "padded": statistics.mean(t for _, t in timed)}


def run_mixkd(cfg, task, tok, data, student, teacher, clock: StepClock) -> dict:
    import tempfile
    with tempfile.TemporaryDirectory() as out:
        tr = Trainer(cfg, task, student, tok, data, Path(out), teacher=teacher)
        real_step = tr.train_step

        def step(micro):
            totals = real_step(micro)
            clock.shapes.append(tuple(micro[0]["input_ids"].shape))
            clock.step_done(tr.step)
            return totals
        tr.train_step = step
        tr.train()
    return clock.result()


def run_hf(variant: str, grouped: bool, bf16: bool, cfg, tok, train, student, teacher, clock: StepClock) -> dict:
    import tempfile
    import warnings

    from hf_baseline import DistillTrainer
    from transformers import PrinterCallback, TrainerCallback, TrainingArguments

    class Clocked(DistillTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            clock.shapes.append(tuple(inputs["input_ids"].shape))
            return super().training_step(model, inputs, num_items_in_batch)

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            clock.step_done(state.global_step)

    warnings.filterwarnings("ignore", message=".*pin_memory.*")   # HF's default on a CPU machine
    with tempfile.TemporaryDirectory() as out:
        # only what the race needs; every other TrainingArguments field keeps its default
        kw = {"train_sampling_strategy": "group_by_length"} if grouped else {}
        args = TrainingArguments(output_dir=out, per_device_train_batch_size=cfg.batch_size, max_steps=cfg.max_steps,
                                 learning_rate=cfg.lr, bf16=bf16, use_cpu=cfg.device == "cpu", report_to="none",
                                 disable_tqdm=True, save_strategy="no", **kw)
        trainer = Clocked(model=student, teacher=teacher, variant=variant, alpha=cfg.alpha, args=args,
                          train_dataset=train, processing_class=tok, callbacks=[Stamp()])
        trainer.remove_callback(PrinterCallback)   # its summary line, printed after the clock stops
        trainer.train()
    return clock.result()


def token_ratio(batches: list[dict], seed: int = 0) -> float:
    """Padded / real tokens of sm+tmkd's passes over ``batches`` (student: originals and mixed rows; teacher: mixed
    rows), a mixed row being as long as the longer of its pair (partners drawn as the plan draws them)."""
    from mixkd.core.mixup import derangement
    g = torch.Generator().manual_seed(seed)
    padded = real = 0
    for b in batches:
        lengths = b["attention_mask"].sum(1)
        mixed = torch.maximum(lengths, lengths[derangement(len(lengths), generator=g)])
        padded += 3 * b["attention_mask"].numel()
        real += int(lengths.sum()) + 2 * int(mixed.sum())
    return padded / real


def gemm_peak(bf16: bool, n: int = 2048, reps: int = 5) -> float:
    """FLOP/s of a large square matmul on this CPU (fp32, or bf16 inputs): the practical peak MFU is read against."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def step_flops(cfg, task, tok, data, student, teacher) -> float:
    """FLOPs of one packed sm+tmkd step (real tokens only), counted by torch's FlopCounterMode on a random batch."""
    import tempfile
    from torch.utils.flop_counter import FlopCounterMode
    with tempfile.TemporaryDirectory() as out:
        tr = Trainer(cfg, task, student, tok, data, Path(out), teacher=teacher)
        batch = tr.collator(data.train.__getitems__(list(range(cfg.batch_size))))
        counter = FlopCounterMode(display=False)
        with counter:
            tr.train_step([batch])
    return float(counter.get_total_flops()), batch


def race_task(args, task_name: str, fraction: float) -> dict:
    from mixkd.core.device import resolve_device, resolve_precision, seed_everything
    from transformers import TrainingArguments

    task = get_task(task_name)
    k, warmup = args.layers[0], max(1, args.warmup)
    steps = args.steps if task_name == "sst2" else max(10, args.steps // 3)   # RTE steps are ~4x longer
    # one evaluation (on 32 dev rows), after the last step: none inside the timed window
    cfg = MixKDConfig(task=task_name, data_dir=args.data_dir, data_fraction=fraction, data_seed=0,
                      batch_size=args.batch_size, progress=False, output_dir="unused", device=args.device,
                      max_steps=warmup + steps, eval_steps=warmup + steps, max_eval_samples=32)
    tok = load_tokenizer(args.teacher)
    data = load_glue(cfg, task, tok)
    from mixkd.core.defaults import resolve_schedule
    cfg = resolve_schedule(cfg, len(data.train), k)   # mixkd's default lr for a k-layer student, for both arms
    teacher = load_classifier(args.teacher, task, new_head=True)
    dev = resolve_device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    auto_bf16, auto_why = resolve_precision(dev, "auto")
    hf_defaults = TrainingArguments(output_dir="unused-hf-defaults", use_cpu=dev.type == "cpu")
    hf_default_grouped = hf_defaults.train_sampling_strategy == "group_by_length"
    from mixkd.core.evaluation import make_collator
    collate = make_collator(tok)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(data.train), generator=g).tolist()
    sample = [collate(data.train.__getitems__(perm[i:i + args.batch_size]))
              for i in range(0, min(len(perm), 50 * args.batch_size), args.batch_size)]
    ratio = token_ratio(sample)
    print(f"\n== {task_name} {fraction:g} ({len(data.train):,} rows), batch {args.batch_size}, teacher {args.teacher} "
          f"({count_parameters(teacher):,} params), {k}-layer student; per run {warmup} warm-up + {steps} timed steps; "
          f"median of {args.repeats} run(s)")
    print(f"sm+tmkd passes on random batches compute {ratio:.2f}x the real tokens when padded")

    # (trainer, variant, packing, grouped, bf16)
    runs = [("mixkd", v, p, False, False) for v in ("ft", "sm+tmkd") for p in ("off", "on")]
    if auto_bf16:
        runs += [("mixkd", v, "on", False, True) for v in ("ft", "sm+tmkd")]
    runs += [("hf", v, "off", False, False) for v in ("ft", "sm+tmkd")]
    if args.grouping:
        runs += [("mixkd", v, "off", True, False) for v in ("ft", "sm+tmkd")]
        runs += [("hf", v, "off", True, False) for v in ("ft", "sm+tmkd")]
    hf_default = ("hf", "sm+tmkd", "off", hf_default_grouped, hf_defaults.bf16)
    if hf_default not in runs:
        runs.append(hf_default)
    ours_default = ("mixkd", "sm+tmkd", "on", MixKDConfig().group_by_length, auto_bf16)
    results: dict[tuple, list[dict]] = {r: [] for r in runs}
    for _ in range(args.repeats):   # interleaved, so drift in machine speed hits every combination alike
        for key in runs:
            who, variant, packing, grouped, bf16 = key
            seed_everything(0)
            student = build_student(teacher, k, "first")
            clock = StepClock(warmup, warmup + steps, sync)
            run_cfg = cfg.replace(variant=variant, group_by_length=grouped, packing=packing,
                                  precision="bf16" if bf16 else "fp32")
            if who == "mixkd":
                res = run_mixkd(run_cfg, task, tok, data, student, copy.deepcopy(teacher), clock)
            else:
                res = run_hf(variant, grouped, bf16, run_cfg, tok, data.train, student, copy.deepcopy(teacher), clock)
            results[key].append(res)

    def ex_s(key):
        return statistics.median(r["ex_s"] for r in results[key])

    print(f"{'trainer':<8}{'variant':<9}{'batches':<9}{'grouping':<10}{'precision':<11}{'examples/s':>11}"
          f"{'padded len':>12}")
    for key in runs:
        who, variant, packing, grouped, bf16 = key
        pad = statistics.mean(r["padded"] for r in results[key])
        print(f"{who:<8}{variant:<9}{'packed' if packing == 'on' else 'padded':<9}{'on' if grouped else 'off':<10}"
              f"{'bf16' if bf16 else 'fp32':<11}{ex_s(key):>11.1f}{pad:>12.1f}")
    out = {"task": task_name, "token_ratio": ratio}
    print("like for like in fp32 (random batches), mixkd/hf examples/s:")
    for variant in ("ft", "sm+tmkd"):
        hf = ex_s(("hf", variant, "off", False, False))
        padded, packed = ex_s(("mixkd", variant, "off", False, False)), ex_s(("mixkd", variant, "on", False, False))
        out[f"{variant}_packed_fp32"] = packed / hf
        print(f"  {variant:<8} padded {padded / hf:.2f}   packed {packed / hf:.2f}   "
              f"(packed/padded {packed / padded:.2f})")
        if auto_bf16:
            print(f"  {variant:<8} packed bf16 {ex_s(('mixkd', variant, 'on', False, True)) / hf:.2f}")
    # MFU of mixkd's default step: counted FLOPs of real tokens / time / this CPU's measured GEMM peak
    seed_everything(0)
    flops, batch = step_flops(cfg.replace(variant="sm+tmkd", precision="bf16" if auto_bf16 else "fp32"), task, tok,
                              data, build_student(teacher, k, "first"), copy.deepcopy(teacher))
    step_s = args.batch_size / ex_s(ours_default)
    peak = gemm_peak(auto_bf16) if dev.type == "cpu" else float("nan")
    print(f"MFU of mixkd's default sm+tmkd step ({'bf16' if auto_bf16 else 'fp32'}): {flops / 1e9:.2f} GFLOP a step "
          f"(real tokens), {flops / step_s / 1e9:.1f} GFLOP/s, {100 * flops / step_s / peak:.0f}% of this CPU's "
          f"measured {'bf16' if auto_bf16 else 'fp32'} GEMM peak ({peak / 1e9:.0f} GFLOP/s, 2048^2 matmul)")
    ours, theirs = ex_s(ours_default), ex_s(hf_default)
    print(f"out of the box: mixkd defaults (packing auto, {auto_why}) vs TrainingArguments defaults "
          f"(train_sampling_strategy={hf_defaults.train_sampling_strategy!r}, "
          f"{'bf16' if hf_defaults.bf16 else 'fp32'})")
    out["out_of_the_box"] = ours / theirs
    print(f"{task_name}: mixkd/hf sm+tmkd examples/s ratio: {ours / theirs:.2f}")
    return out


def race(args) -> int:
    from mixkd.core.models import quiet_transformers
    quiet_transformers()
    dev = args.device
    from mixkd.deploy.latency import cpu_model
    print(f"race on {dev} ({cpu_model()}, {torch.get_num_threads()} CPU threads), torch {torch.__version__}")
    results = [race_task(args, t, args.data_fraction if t == "sst2" else 1.0) for t in args.tasks]
    last = next((r for r in results if r["task"] == "sst2"), results[0])
    print(f"\nmixkd/hf sm+tmkd examples/s ratio: {last['out_of_the_box']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
