"""``mixkd sweep`` / ``python experiments/glue_sweep.py``: connect to Ray, run a preset sweep, print a summary."""
from __future__ import annotations

import argparse
import os
import socket
import sys
from importlib import resources
from pathlib import Path

from ..core.errors import UsageError

# the named presets: package data (mixkd/platform/presets/), so an installed mixkd has them as a source tree does
PRESETS_DIR = resources.files("mixkd.platform") / "presets"
PRESETS = ("demo", "smoke", "ablation", "limited", "search", "paper", "repro-cpu")
# environment the Ray workers need (offline mode, data and cache locations)
# (not MLflow's: the driver is the only MLflow writer, so tracking URIs and tokens stay in its process and
# never reach the Ray job's runtime_env, which the dashboard shows)
WORKER_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "GLUE_DIR", "MIXKD_CACHE", "HF_HOME",
              "TRANSFORMERS_OFFLINE", "MIXKD_FAULTS")   # MIXKD_FAULTS: tests/test_faults.py


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default="auto",
                   help="Ray cluster: 'auto' (a running cluster, else a local instance), 'local', or HOST:PORT / ray://...")
    p.add_argument("--preset", default="demo", help=f"one of {', '.join(PRESETS)} (see --list-presets) or a YAML file")
    p.add_argument("--tasks", nargs="+", help="GLUE tasks (overrides the preset)")
    p.add_argument("--teacher-model", help="teacher backbone: hub id, local dir or minilm-l6")
    p.add_argument("--num-samples", type=int, help="search: trials per (task, data fraction, seed)")
    p.add_argument("--seeds", type=int, nargs="+")
    p.add_argument("--data-fraction", type=float, nargs="+", dest="data_fractions")
    p.add_argument("--workers-per-trial", type=int)
    p.add_argument("--gpus-per-trial", type=float)
    p.add_argument("--cpus-per-trial", type=float)
    p.add_argument("--max-concurrent-trials", type=int,
                   help="cap on trials at once (default: what the cluster's current CPUs/GPUs fit; set it on "
                        "autoscaling clusters that start with fewer nodes)")
    p.add_argument("--storage-path", help="experiment storage (local path or a mount shared by all nodes)")
    p.add_argument("--tracking-uri",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite in the experiment folder)")
    p.add_argument("--experiment-name", help="experiment (folder and MLflow experiment) name; default: the preset's")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted sweep of the same name (starts it if there is none yet)")
    p.add_argument("--data-dir", help="GLUE folder (default: $GLUE_DIR, else the hub)")
    p.add_argument("--latency-budget-ms", type=_budget,
                   help="latency budget in ms (p90, batch 1, seq 128 unless the preset says otherwise), or auto: "
                        "half the teacher's; search then optimises dev score and latency together (NSGA-II) and "
                        "the sweep exports the best student within the budget")
    p.add_argument("--select-formats",
                   help="with a latency budget: the deployment formats the final choice is made over, comma-separated "
                        "(torch, torch-int8, onnx, onnx-int8) or all (the default: what the device runs)")
    p.add_argument("--student-seeds", type=int, nargs="+",
                   help="grid: train each cell once per seed, on the same teacher and data subset")
    p.add_argument("--report", action=argparse.BooleanOptionalAction, default=None,
                   help="after the sweep, write the report (paper tables and the claims scorecard) to "
                        "<storage>/<name>/report and print the scorecard (default: the preset's)")
    p.add_argument("--measure-latency", action=argparse.BooleanOptionalAction, default=None,
                   help="measure the teacher and each student depth once before the trials (default: on)")
    p.add_argument("--searcher", choices=("auto", "tpe", "nsga2", "random"),
                   help="Optuna sampler (auto: TPE, NSGA-II with --latency-budget-ms)")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the preset, print the plan (teachers, +BT jobs, latency measurements, trials, the "
                        "concurrency the resources allow) with its estimated wall time and device-hours, and exit "
                        "without starting Ray (a calibration of a few seconds on this machine; cached)")
    p.add_argument("--plan-resources", metavar="cpu=N,gpu=M",
                   help="with --dry-run: plan for this cluster instead of this machine (e.g. cpu=64,gpu=8)")
    p.add_argument("--list-presets", action="store_true",
                   help="print each named preset and the file it is read from, then exit")
    p.add_argument("--print-spec", action="store_true",
                   help="print the sweep spec the preset and these flags resolve to (YAML) and exit: no Ray, no run")


def load_spec(args: argparse.Namespace):
    from ..platform.spec import SweepSpec
    preset = args.preset
    path = PRESETS_DIR / f"{preset}.yaml" if preset in PRESETS else Path(preset)
    if not path.is_file():
        raise UsageError(f"--preset {preset!r} is neither one of {', '.join(PRESETS)} nor a YAML file")
    with resources.as_file(path) as file:   # a real file even if the package is not on a filesystem
        spec = SweepSpec.from_yaml(file)
    overrides = {k: getattr(args, k) for k in ("tasks", "teacher_model", "num_samples", "seeds", "data_fractions",
                                               "workers_per_trial", "gpus_per_trial", "cpus_per_trial",
                                               "max_concurrent_trials", "storage_path", "tracking_uri", "data_dir",
                                               "latency_budget_ms", "measure_latency", "searcher", "student_seeds",
                                               "select_formats", "report")
                 if getattr(args, k, None) is not None}
    if args.experiment_name:
        overrides["name"] = args.experiment_name
        overrides["experiment_name"] = args.experiment_name
    for k, v in overrides.items():
        setattr(spec, k, v)
    if spec.data_dir is None and os.environ.get("GLUE_DIR"):
        spec.data_dir = os.environ["GLUE_DIR"]
    return spec.validate()


def _budget(value: str):
    if value == "auto":
        return value
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is neither a number of milliseconds nor auto") from None


def _reachable(address: str, timeout: float = 3.0) -> bool:
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address {address!r} is invalid; use auto, local, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def connect(address: str) -> str:
    """Connect to Ray; returns a one-line description of where the sweep runs."""
    import ray
    env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ}
    env.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")   # ray.train.report blocks ~2 s otherwise
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    runtime_env = {"env_vars": env}
    if address == "auto":
        try:
            ray.init(address="auto", runtime_env=runtime_env, log_to_driver=True)
            return f"connected to the running Ray cluster ({ray.cluster_resources()})"
        except ConnectionError:
            print("mixkd sweep: no running Ray cluster found; starting a local Ray instance on this machine",
                  file=sys.stderr)
            address = "local"
    if address == "local":
        # the local instance's workers inherit this process's environment: no runtime_env, so Ray can hand
        # its prestarted workers to the trials (a runtime_env makes it start a new process for each, ~1 s)
        os.environ.update(env)
        ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1")
        return f"local Ray instance ({ray.cluster_resources()})"
    if not address.startswith("ray://") and not _reachable(address):
        raise UsageError(f"--address {address}: no Ray cluster answers there; check HOST:PORT, start one with "
                         f"`ray start --head`, or use --address auto")
    try:
        ray.init(address=address, runtime_env=runtime_env)
    except (ConnectionError, RuntimeError) as e:
        raise UsageError(f"--address {address}: cannot connect to Ray ({str(e).splitlines()[0][:120]})") from None
    return f"connected to {address} ({ray.cluster_resources()})"


def main(args: argparse.Namespace) -> int:
    if getattr(args, "list_presets", False):
        for name in PRESETS:
            print(f"{name}\t{PRESETS_DIR / f'{name}.yaml'}")
        return 0
    spec = load_spec(args)
    if getattr(args, "print_spec", False):
        import yaml
        print(yaml.safe_dump(spec.to_dict(), sort_keys=False), end="")
        return 0
    if getattr(args, "plan_resources", None) and not getattr(args, "dry_run", False):
        raise UsageError("--plan-resources plans a cluster for --dry-run; add --dry-run or drop it")
    if getattr(args, "dry_run", False):
        from ..platform.estimate import format_plan, parse_resources, plan
        resources = parse_resources(args.plan_resources)
        print(format_plan(spec, plan(spec, resources)))
        return 0
    from ..platform.driver import check_sweep, run_sweep
    from ..platform.summary import format_summary
    checked = check_sweep(spec, resume=args.resume)   # storage, data, depth, the experiment, MLflow: before Ray
    where = connect(args.address)
    print(f"mixkd sweep '{spec.name}' ({spec.mode}) on {where}", file=sys.stderr)
    try:
        summary = run_sweep(checked)
    finally:
        import ray
        ray.shutdown()
    print("\nBest trial per task / data fraction / student depth / variant:")
    print(format_summary(summary))
    if spec.report:
        show_results(spec, summary)
    uri = summary["tracking_uri"]
    print(f"\nMLflow runs: {uri} (parent run {summary['parent_run_id']})")
    if uri and uri.startswith("sqlite:"):
        print(f"Open them with: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000")
    return 0


def show_results(spec, summary: dict) -> None:
    """What a sweep bought, in this order: the claims scorecard of its runs, the Pareto front with the chosen
    student and where it went, then the report (written to ``<experiment>/report``)."""
    import json

    from ..report.build import write_report
    from ..report.scorecard import build_scorecard, format_text
    from ..tracking.runstore import load_runs
    uri = spec.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or summary["tracking_uri"]
    experiment = spec.experiment_name or spec.name
    print("\nClaims scorecard (the paper's claims, measured on this sweep's runs):")
    print(format_text(build_scorecard(load_runs(uri, experiment)), measured_only=True))
    from ..deploy.selection import format_selection
    for sel in summary.get("selection") or []:
        print(f"\nPareto front of {sel['task']}, latency budget {summary.get('latency_budget_ms', 0):g} ms:")
        if "error" in sel:
            print(f"  no student within the budget: {sel['error']}")
        else:
            print(format_selection(json.loads((Path(sel["out"]) / "selection.json").read_text())))
    out = write_report(uri, spec.experiment_dir / "report", experiment=experiment, overwrite=True)
    print(f"\nReport: {out / 'report.html'} (self-contained; also report.md, report.json and the PNGs)")


def cli(argv=None, prog: str = "glue_sweep.py") -> int:
    from .app import standalone
    return standalone(argv, prog, "Run a MixKD sweep (Ray Tune + Optuna/ASHA or a grid) recorded in MLflow.",
                      add_arguments, main)
