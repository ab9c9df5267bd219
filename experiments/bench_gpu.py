"""GPU throughput of the sm+tmkd training step: tokens/s, step time, peak memory and model-FLOPs utilisation.

For each model, student depth and batch size it times mixkd's real ``Trainer.train_step`` (student forward over
the original batch and its mixed copies, frozen teacher forward on the mixed copies, backward, clipping, fused
AdamW, schedule) in the precision the trainer picks: ``--precision auto`` is bf16 autocast on CUDA (the
frozen teacher is then held in bf16) and, on the CPU, bf16 where it is native (AMX, AVX512-BF16), else fp32; the
header prints the one used.

Models (``--models``):

* ``bert-base``: a random-weight ``BertForSequenceClassification`` of BERT-base size (12 layers, hidden 768, 12
  heads, intermediate 3072, vocab 30522) as the teacher, with 6- and 3-layer students cut from it by mixkd's
  ``build_student`` (its first k layers);
* ``minilm``: the packaged all-MiniLM-L6-v2 (6 layers, hidden 384; ``load_classifier("minilm-l6", new_head=True)``,
  offline) with 3- and 2-layer students (half and a third of the teacher, the depths bench_step.py uses).

Weights do not change the speed, so random weights are fine. Batches are synthetic: ``--seq-len`` (128) random
token ids in every row, attention mask all ones (no padding), token types 0, random labels of a 2-class task
(SST-2's spec); so every figure is for one fixed (batch, 128) shape. They sit on the device before the clock
starts (the trainer's loader prefetches into pinned memory, overlapping the copy). Per combination:
``--warmup`` steps, then ``--steps`` timed steps, each between two ``torch.cuda.synchronize()`` calls; the
step time is their median.

* tokens/s = batch * seq_len / step time: the *original* tokens only (the mixed copies the student also
  reads are not counted, so tokens/s compares directly with a plain fine-tuning step's);
* peak memory: ``torch.cuda.max_memory_allocated`` since ``reset_peak_memory_stats`` just before the warm-up
  (models, optimizer state and activations; GiB); "n/a" on the CPU;
* MFU (model-FLOPs utilisation) = (FLOPs of one step / step time) / the device's peak dense bf16 FLOP/s. The
  FLOPs of one step are counted once, on one extra real ``train_step`` under
  ``torch.utils.flop_counter.FlopCounterMode``: the matmuls and attention of the student's forward and backward
  on the joint (original + mixed) batch and of the teacher's forward, as they really run (elementwise ops and
  the optimizer are not counted). Peaks (NVIDIA data sheets, dense = without 2:4 sparsity) are looked up by GPU
  name; ``--peak-tflops`` overrides; elsewhere (CPU, an unknown GPU) MFU is "n/a".

    python experiments/bench_gpu.py                                   # GPU: both models, batch 32 and 128
    python experiments/bench_gpu.py --models bert-base --batch-sizes 128 --json out.json
    python experiments/bench_gpu.py --device cpu --tiny               # CPU smoke run (seconds)

``--tiny`` replaces the models with one tiny random BERT (4 layers, hidden 64; students of 2 and 1 layers),
sequence length 16 and batch 4 unless given, so the script runs anywhere in seconds (tests/test_bench_gpu.py).
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import torch  # noqa: E402

from mixkd.core.config import MixKDConfig  # noqa: E402
from mixkd.core.data import GlueData  # noqa: E402
from mixkd.core.device import autocast_for, resolve_device  # noqa: E402
from mixkd.core.errors import UsageError  # noqa: E402
from mixkd.core.models import build_student, count_parameters, load_classifier, load_tokenizer  # noqa: E402
from mixkd.core.tasks import get_task  # noqa: E402
from mixkd.core.trainer import Trainer  # noqa: E402

MODELS = {"bert-base": (6, 3), "minilm": (3, 2)}   # model -> student depths
TINY_STUDENTS = (2, 1)
# peak dense (no 2:4 sparsity) bf16 tensor-core FLOP/s, first substring of the CUDA device name that matches
# (data sheets quote "with sparsity": twice these). The order matters: "A10" is in "A100", "L4" in "L40S".
PEAK_BF16 = (
    ("H200 NVL", 835e12),     # H200 NVL: 1,671 TFLOPS sparse
    ("H200", 989e12),         # H200 SXM: 1,979 sparse (GH200 too: its GPU is an H100 SXM's)
    ("H100 NVL", 835e12),     # H100 NVL: 1,671 sparse
    ("H100 PCIe", 756e12),    # H100 PCIe: 1,513 sparse
    ("H100", 989e12),         # H100 SXM ("NVIDIA H100 80GB HBM3"): 1,979 sparse
    ("A100", 312e12),         # A100 SXM and PCIe: 624 sparse
    ("A10G", 70e12),          # AWS's A10G (no NVIDIA data sheet; the figure AWS/NVIDIA quote); the A10 has 125
    ("A10", 125e12),          # A10: 250 sparse
    ("L40S", 362e12),         # L40S: 733 sparse
    ("L40", 181e12),          # L40: 362 sparse
    ("L4", 121e12),           # L4: 242 sparse
)


class BadFlag(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message):   # one line, exit status 2 (from main), instead of usage + error
        raise BadFlag(message)


def peak_flops(dev: torch.device, override_tflops: float | None) -> tuple[float | None, str]:
    """(peak dense bf16 FLOP/s, where it comes from); None where unknown."""
    if override_tflops is not None:
        return override_tflops * 1e12, "--peak-tflops"
    if dev.type != "cuda":
        return None, "unknown for the CPU"
    name = torch.cuda.get_device_name(dev)
    for key, peak in PEAK_BF16:
        if key.lower() in name.lower():
            return peak, f"{key} dense bf16 data-sheet peak"
    return None, f"unknown for {name} (give --peak-tflops)"


def tiny_teacher():
    from transformers import BertConfig, BertForSequenceClassification
    return BertForSequenceClassification(BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=4,
                                                    num_attention_heads=4, intermediate_size=128,
                                                    max_position_embeddings=128, num_labels=2))


def bert_base_teacher():
    from transformers import BertConfig, BertForSequenceClassification
    return BertForSequenceClassification(BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                                                    num_attention_heads=12, intermediate_size=3072, num_labels=2))


def make_batches(n: int, batch: int, seq: int, vocab: int, dev: torch.device) -> list[dict[str, torch.Tensor]]:
    """``n`` synthetic batches of ``batch`` rows of exactly ``seq`` real tokens (no padding), on ``dev``."""
    g = torch.Generator().manual_seed(0)
    low = min(1000, vocab // 2)   # above BERT's special tokens ([PAD] 0, [CLS] 101, [SEP] 102, ...)
    out = []
    for _ in range(n):
        ids = torch.randint(low, vocab, (batch, seq), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
                    "labels": torch.randint(0, 2, (batch,), generator=g)})
    return [{k: v.to(dev) for k, v in b.items()} for b in out]


def bench_one(args, dev, task, tok, label: str, teacher, k: int, batch: int, seq: int, peak: float | None) -> dict:
    """Time sm+tmkd steps of a k-layer student of ``teacher`` at (batch, seq); one result row."""
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    cfg = MixKDConfig(task="sst2", variant="sm+tmkd", batch_size=batch, max_seq_length=seq, lr=1e-4, epochs=1.0,
                      max_steps=10**6, warmup_ratio=0.0, device=str(dev), precision=args.precision, progress=False,
                      group_by_length=False, output_dir=str(Path(tempfile.gettempdir()) / "mixkd-bench-gpu-unused"))
    data = GlueData(task=task, train=range(batch * 1000), dev={}, dev_splits=[])
    student = build_student(teacher, k, "first")   # from the fp32 teacher: the trainer casts its own copy to bf16
    tr = Trainer(cfg, task, student, tok, data, Path(cfg.output_dir), teacher=copy.deepcopy(teacher))
    batches = make_batches(4, batch, seq, teacher.config.vocab_size, dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for i in range(args.warmup):
        tr.train_step([batches[i % len(batches)]])
    times = []
    for i in range(args.steps):
        sync()
        t0 = time.perf_counter()
        tr.train_step([batches[i % len(batches)]])
        sync()
        times.append(time.perf_counter() - t0)
    peak_mem = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        tr.train_step([batches[0]])
    flops = counter.get_total_flops()
    step = statistics.median(times)
    achieved = flops / step
    row = {"model": label, "teacher_layers": teacher.config.num_hidden_layers, "student_layers": k,
           "student_params": count_parameters(tr.student), "batch": batch, "seq_len": seq, "step_ms": step * 1e3,
           "tokens_per_s": batch * seq / step, "peak_mem_gib": peak_mem, "flops_per_step": flops,
           "achieved_tflops": achieved / 1e12, "mfu": achieved / peak if peak else None}
    del tr, student, batches
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return row


COLUMNS = (("model", "<10", "{}"), ("teacher L", ">10", "{}"), ("student L", ">10", "{}"), ("batch", ">6", "{}"),
           ("step ms", ">9", "{:.1f}"), ("tokens/s", ">11", "{:,.0f}"), ("peak GiB", ">9", "{:.2f}"),
           ("GFLOP/step", ">12", "{:,.2f}"), ("TFLOP/s", ">9", "{:.2f}"), ("MFU", ">7", "{:.1%}"))
KEYS = ("model", "teacher_layers", "student_layers", "batch", "step_ms", "tokens_per_s", "peak_mem_gib",
        "flops_per_step", "achieved_tflops", "mfu")


def format_row(row: dict) -> str:
    cells = []
    for (_, align, fmt), key in zip(COLUMNS, KEYS):
        v = row[key]
        if key == "flops_per_step":
            v = v / 1e9
        cells.append(format("n/a" if v is None else fmt.format(v), align))
    return "".join(cells)


def parse(argv):
    ap = Parser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), help=f"any of {', '.join(MODELS)}")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 32 128 (--tiny: 4)")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per row (default: 128; --tiny: 16)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps per combination")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per combination (median)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                    help="as mixkd's --precision (auto: bf16 autocast on CUDA and native-bf16 CPUs, else fp32)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the device's peak dense TFLOP/s (for MFU)")
    ap.add_argument("--tiny", action="store_true", help="tiny random BERTs, seq 16, batch 4: a CPU smoke run")
    ap.add_argument("--json", default=None, help="also write the rows (and the header facts) to this JSON file")
    args = ap.parse_args(argv)
    bad = [m for m in args.models if m not in MODELS]
    if bad:
        raise BadFlag(f"--models {' '.join(bad)}: unknown; choose from {', '.join(MODELS)}")
    args.batch_sizes = args.batch_sizes or ([4] if args.tiny else [32, 128])
    args.seq_len = args.seq_len or (16 if args.tiny else 128)
    if min(args.batch_sizes) < 2:
        raise BadFlag("--batch-sizes must be 2 or more (mixup pairs rows of a batch)")
    if args.seq_len < 2 or args.warmup < 0 or args.steps < 1:
        raise BadFlag("--seq-len must be >= 2, --warmup >= 0 and --steps >= 1")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        raise BadFlag("--peak-tflops must be positive")
    if args.tiny and args.seq_len > 128:
        raise BadFlag("--tiny models take at most 128 tokens (--seq-len)")
    return args


def main(argv=None) -> int:
    try:
        args = parse(argv)
        dev = resolve_device(args.device)
    except (BadFlag, UsageError) as e:
        print(f"bench_gpu.py: error: {e}", file=sys.stderr)
        return 2
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)
    task = get_task("sst2")
    tok = load_tokenizer("minilm-l6")   # BERT's uncased vocabulary; the step never tokenizes (synthetic ids)
    bf16 = isinstance(autocast_for(dev, args.precision), torch.autocast)
    precision = "bf16 autocast (teacher held in bf16)" if bf16 else "fp32"
    peak, peak_src = peak_flops(dev, args.peak_tflops)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    meta = {"device": name, "torch": torch.__version__, "precision": "bf16" if bf16 else "fp32",
            "peak_flops": peak, "peak_source": peak_src, "seq_len": args.seq_len, "warmup": args.warmup,
            "steps": args.steps, "tiny": args.tiny}
    print(f"device {name}, torch {torch.__version__}, precision {precision}; sm+tmkd step, seq {args.seq_len}, "
          f"median of {args.steps} steps after {args.warmup} warm-up; peak "
          f"{'n/a' if peak is None else f'{peak / 1e12:g} TFLOP/s'} ({peak_src}); tokens/s counts original tokens")
    print("".join(format(h, align) for h, align, _ in COLUMNS))
    plan = [("tiny", tiny_teacher, TINY_STUDENTS)] if args.tiny else \
        [(m, bert_base_teacher if m == "bert-base" else (lambda: load_classifier("minilm-l6", task, new_head=True)),
          MODELS[m]) for m in args.models]
    rows = []
    for label, make_teacher, depths in plan:
        torch.manual_seed(0)
        teacher = make_teacher()
        for k in depths:
            for batch in args.batch_sizes:
                row = bench_one(args, dev, task, tok, label, teacher, k, batch, args.seq_len, peak)
                rows.append(row)
                print(format_row(row), flush=True)
        del teacher
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
