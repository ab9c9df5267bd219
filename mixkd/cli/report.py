"""``mixkd report`` / ``python experiments/make_report.py``: the paper's tables rebuilt from MLflow runs.

    mixkd report --tracking-uri sqlite:///runs/sweeps/smoke/mlflow.db --out runs/report
"""
from __future__ import annotations

import argparse
import os
import sys

from ..core.errors import UsageError
from ..report.cells import DEFAULT_UI


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tracking-uri", action="append", default=None,
                   help="MLflow store: sqlite:///PATH/mlflow.db, a sweep folder holding mlflow.db, a folder of such "
                        "folders, or an http(s) server (default: $MLFLOW_TRACKING_URI); repeat it to report over "
                        "several stores (sweeps run on other days or machines), a run in two of them counted once")
    p.add_argument("--experiment", default=None,
                   help="one mixkd experiment (name or id); default: every mixkd experiment in the store")
    p.add_argument("--out", required=True, help="folder to write report.md, report.html, report.json and the PNGs")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--mlflow-ui-url", default=DEFAULT_UI,
                   help=f"base URL of the MLflow UI the run links point to (default {DEFAULT_UI}; start it with "
                        "`mlflow ui --backend-store-uri URI`)")


def main(args: argparse.Namespace) -> int:
    uri = args.tracking_uri or ([os.environ["MLFLOW_TRACKING_URI"]] if os.environ.get("MLFLOW_TRACKING_URI") else None)
    if not uri:
        raise UsageError("no tracking store: pass --tracking-uri (e.g. sqlite:///runs/sweeps/smoke/mlflow.db) "
                         "or set MLFLOW_TRACKING_URI")
    from ..report.build import write_report
    out = write_report(uri, args.out, experiment=args.experiment, overwrite=args.overwrite,
                       mlflow_ui_url=args.mlflow_ui_url)
    import json
    from ..report.scorecard import VERDICTS
    card = json.loads((out / "report.json").read_text()).get("scorecard", [])
    counts = ", ".join(f"{sum(r['verdict'] == v for r in card)} {v}" for v in VERDICTS)
    print(f"report: {out / 'report.md'}\n        {out / 'report.html'} (self-contained)\n"
          f"claims scorecard: {counts} (the first section of the report)")
    return 0


def cli(argv=None, prog: str = "make_report.py") -> int:
    from .app import standalone
    return standalone(argv, prog, "Rebuild the MixKD paper's tables from the MLflow runs of mixkd sweeps.",
                      add_arguments, main)


if __name__ == "__main__":
    sys.exit(cli(sys.argv[1:]))
