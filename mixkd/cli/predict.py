"""``mixkd predict``: label names and probabilities (or the score of a regression model) of any classifier mixkd
saved or exported, for ``--text`` arguments or an ``--input-file``; JSON lines, one per input, in input order
(:mod:`mixkd.deploy.predict`)."""
from __future__ import annotations

import argparse
import json
import sys

from ..core.errors import UsageError
from ..deploy.predict import DEFAULT_BATCH_SIZE, DEFAULT_MAX_LENGTH


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True,
                   help="a mixkd run dir, its model/, a `mixkd export` / `mixkd select` folder (any format) "
                        "or a local HF sequence-classification folder")
    p.add_argument("--text", action="append", help="a text to classify (repeat for more)")
    p.add_argument("--text-pair", action="append",
                   help="the second text of a pair task (MRPC, RTE, ...): one per --text, in the same order")
    p.add_argument("--input-file", help="a text file (one example per line), or a CSV, TSV or JSON lines file "
                                        "with a header / keys (see --text-column)")
    p.add_argument("--text-column", help="the input file's text column (default: text, sentence, or its only column)")
    p.add_argument("--text-pair-column", help="the input file's column of second texts (pair tasks)")
    p.add_argument("--output-file", help="write the JSON lines here (default: stdout)")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                   help=f"texts per forward pass (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--max-length", type=int, help=f"tokens per input, truncated beyond (default: the run's "
                                                  f"max_seq_length, else {DEFAULT_MAX_LENGTH})")
    p.add_argument("--device", default="auto", help="cpu, cuda (or cuda:N) or auto (default; exports in onnx or "
                                                    "int8 run on CPU)")
    p.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads for onnx exports (default: torch's)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow a model folder's own Python code (off by default: it runs arbitrary code)")


def main(args: argparse.Namespace) -> int:
    from ..deploy import predict as prediction
    if not args.text and not args.input_file:
        raise UsageError("nothing to predict; give --text \"...\" (repeatable) or --input-file FILE")
    if args.text and args.input_file:
        raise UsageError("give --text or --input-file, not both")
    if args.input_file is None:
        for flag in ("text_column", "text_pair_column"):
            if getattr(args, flag) is not None:
                raise UsageError(f"--{flag.replace('_', '-')} applies to --input-file only; give --input-file FILE")
    elif args.text_pair:
        raise UsageError("--text-pair goes with --text; for an --input-file name the column with --text-pair-column")
    for flag in ("batch_size", "max_length", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UsageError(f"--{flag.replace('_', '-')} {value} is invalid; use a positive integer")
    if args.input_file:
        texts, pairs = prediction.read_inputs(args.input_file, args.text_column, args.text_pair_column)
    else:
        texts, pairs = prediction.check_texts(args.text, args.text_pair)
    out = prediction.check_output_file(args.output_file) if args.output_file else None
    predictor = prediction.Predictor(args.model, args.device, args.trust_remote_code, args.threads)
    preds = predictor(texts, pairs, args.batch_size, args.max_length)
    rows = [{"text": t, **({"text_pair": pairs[i]} if pairs is not None else {}), **pred}
            for i, (t, pred) in enumerate(zip(texts, preds))]
    if out is None:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return 0
    prediction.write_jsonl(rows, out)
    print(f"{len(rows)} predictions of {args.model} ({predictor.format}, max length "
          f"{args.max_length or predictor.max_length}) in {out}", file=sys.stderr)
    return 0
