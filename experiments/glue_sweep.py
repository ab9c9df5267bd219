"""Reproduce GLUE with MixKD at scale, or run a small sweep on a laptop.

    python experiments/glue_sweep.py --address auto                     # smoke preset, local if no cluster
    python experiments/glue_sweep.py --address auto --preset paper      # the paper's grid on a GPU cluster
    python experiments/glue_sweep.py --address auto --preset smoke --resume

See `--help`, `--list-presets` and mixkd/platform/presets/*.yaml (copy one and pass its path as --preset).
"""
import sys

from mixkd.cli.sweep import cli

if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
