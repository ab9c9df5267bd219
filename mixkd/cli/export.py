"""``mixkd export``: a fine-tuned classifier in a deployment format (torch, onnx; ``--quantize int8``), with its
tokenizer and a model card, reloaded and checked on the task's dev set before it is declared done (see
:mod:`mixkd.deploy.export`)."""
from __future__ import annotations

import argparse
import json
import sys

from ..core.errors import UsageError
from ..deploy.formats import BASE_FORMATS


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the PyTorch classifier: a mixkd run dir, its model/ or an HF folder")
    p.add_argument("--format", required=True, help=f"deployment format: {', '.join(BASE_FORMATS)}")
    p.add_argument("--quantize", default="none", help="int8: dynamic int8 quantization (CPU); default none (fp32)")
    p.add_argument("--out", required=True, help="new folder for the export (must not exist)")
    p.add_argument("--task", help="GLUE task (default: the run's task, from config.yaml beside the model)")
    p.add_argument("--data-dir", help="GLUE folder for the dev-set check (default: $GLUE_DIR, hub, embedded SST-2)")
    p.add_argument("--max-eval-samples", type=int, help="check on the first N dev rows only (default: all)")
    p.add_argument("--weight-type", default="auto",
                   help="onnx int8 weight type: qint8, quint8 or auto (default: measure both, keep the better)")
    p.add_argument("--min-agreement", type=float, default=0.995,
                   help="fp32 formats: the export must give PyTorch's label on this fraction of dev rows (0.995)")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads for the check (default: torch's)")
    p.add_argument("--output", help="also write the export's metadata JSON to this file")


def main(args: argparse.Namespace) -> int:
    from ..deploy.export import ExportCheckFailed, export_model
    if args.max_eval_samples is not None and args.max_eval_samples < 1:
        raise UsageError(f"--max-eval-samples {args.max_eval_samples} is invalid; use a positive number of rows")
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads {args.threads} is invalid; use a positive integer")
    try:
        meta = export_model(args.model, args.format, args.out, quantize=args.quantize, task=args.task,
                            data_dir=args.data_dir, max_eval_samples=args.max_eval_samples,
                            weight_type=args.weight_type, threads=args.threads, min_agreement=args.min_agreement)
    except ExportCheckFailed as e:
        print(f"mixkd export: check failed: {e}", file=sys.stderr)
        return 1
    keep = ("format", "task", "out", "runtime", "runtime_version", "quantization", "primary_metric",
            "metrics_before", "metrics_after", "agreement")
    text = json.dumps({k: meta.get(k) for k in keep}, indent=2, default=str)
    print(text)
    if args.output:
        with open(args.output, "w") as fh:
            fh.write(json.dumps(meta, indent=2, default=str) + "\n")
    return 0
