"""The MixKD paper's tables (Table 1-3, Fig. 1, Fig. 3) rebuilt from the MLflow runs of mixkd sweeps.

    python experiments/make_report.py --tracking-uri sqlite:///runs/sweeps/smoke/mlflow.db --out runs/report
    mixkd report ...                                                       # the same command

Writes report.md, report.html (self-contained), report.json and PNGs into --out; see --help.
"""
import sys

from mixkd.cli.report import cli

if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
