"""``mixkd finetune | distill | evaluate`` — flags generated from the typed config.

Precedence: the config's defaults < ``--config FILE.yaml`` < flags on the command line.
Bad input prints one line ``mixkd: error: ...`` and exits with code 2.
"""
from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from dataclasses import fields

from ..core.config import HF_ALIASES, MixKDConfig, load_yaml
from ..core.errors import NonFiniteLossError, UsageError

COMMANDS = {
    "finetune": "fine-tune a model on a GLUE task (the teacher)",
    "distill": "distil a fine-tuned teacher into a shallow student (ft, kd, tmkd, sm+tmkd, pkd)",
    "evaluate": "GLUE dev metrics of a saved model",
    "sweep": "run a sweep of students on Ray Tune (same as experiments/glue_sweep.py)",
}

# Subcommands that live in their own module: name -> (module, help). Each module defines
# ``add_arguments(parser)`` and ``main(args) -> int`` (raising UsageError for bad input).
EXTERNAL_COMMANDS: dict[str, tuple[str, str]] = {
    "sweep": ("sweep", COMMANDS["sweep"]),
    "latency": ("latency", "inference latency of a model or its k-layer student (p50/p90/p99, cached)"),
    "select": ("select", "the most accurate student of a sweep within a latency budget: export, card, plot"),
    "augment": ("augment", "back-translate a task's training rows (+BT data for --augment-file / --augment bt)"),
    "report": ("report", "the paper's tables (1-3, Fig. 1, Fig. 3) rebuilt from MLflow runs, paper numbers beside"),
    "export": ("export", "a classifier as torch or onnx (--quantize int8), reloaded and checked on the dev set, "
                         "with a card"),
    "predict": ("predict", "label names and probabilities of a saved or exported classifier for --text or an "
                           "--input-file"),
}


def _external(name: str):
    import importlib
    return importlib.import_module(f"mixkd.cli.{EXTERNAL_COMMANDS[name][0]}")


def _option_strings(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Options of ``parser`` and of the subcommand named in ``argv`` (where unknown flags belong)."""
    opts = [o for a in parser._actions for o in a.option_strings]
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                if name in argv:
                    opts += [o for b in sub._actions for o in b.option_strings]
    return opts


class _Parser(argparse.ArgumentParser):
    _argv: list[str] | None = None   # the argv being parsed (None: sys.argv), for the did-you-mean

    def error(self, message):  # one line, exit 2, with a did-you-mean for misspelled flags
        if "unrecognized arguments" in message:
            bad = message.split(":", 1)[1].split()[0]
            opts = _option_strings(self, sys.argv[1:] if self._argv is None else self._argv)
            hint = difflib.get_close_matches(bad.split("=")[0], opts, n=1)
            message += f"; did you mean {hint[0]}?" if hint else f"; see `{self.prog} --help`"
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mixkd", description="MixKD: distil BERT classifiers with mixup knowledge distillation.")
    from .. import __version__
    p.add_argument("--version", action="version", version=f"mixkd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    commands = dict(COMMANDS, **{k: v[1] for k, v in EXTERNAL_COMMANDS.items()})
    for cmd, help_ in commands.items():
        sp = sub.add_parser(cmd, help=help_, description=help_, prog=f"mixkd {cmd}")
        if cmd in EXTERNAL_COMMANDS:
            _external(cmd).add_arguments(sp)
            continue
        sp.add_argument("--config", help="YAML file with config keys (flags override it)")
        if cmd == "evaluate":
            sp.add_argument("--output", help="also write the metrics JSON to this file")
        for f in fields(MixKDConfig):
            if cmd not in f.metadata["cmds"]:
                continue
            flag = "--" + f.name.replace("_", "-")
            kw = dict(dest=f.name, default=argparse.SUPPRESS, help=f.metadata["help"])
            typ = f.type if isinstance(f.type, str) else str(f.type)
            if "bool" in typ:
                sp.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
                continue
            # Hugging Face's names for the same flag (--learning-rate for --lr, ...)
            flags = [flag, *("--" + a.replace("_", "-") for a, name in HF_ALIASES.items() if name == f.name)]
            if f.metadata.get("choices"):
                kw["choices"] = f.metadata["choices"]
            kw["metavar"] = f.name.upper() if not f.metadata.get("choices") else None
            if kw["metavar"] is None:
                kw.pop("metavar")
            sp.add_argument(*flags, **kw)
    return p


def config_from_args(args: argparse.Namespace) -> MixKDConfig:
    values = {}
    if getattr(args, "config", None):
        values.update(load_yaml(args.config))
    names = {f.name for f in fields(MixKDConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names})
    return MixKDConfig.from_dict(values, source=args.config or "command line")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    _Parser._argv = argv
    args = parser.parse_args(argv)
    if args.command in EXTERNAL_COMMANDS:
        return run_external(_external(args.command).main, args, prog=f"mixkd {args.command}")
    return run_external(_run_builtin, args, prog=f"mixkd {args.command}")


def _run_builtin(args: argparse.Namespace) -> int:
    """finetune / distill / evaluate."""
    cfg = config_from_args(args)
    from ..core.custom_data import resolve_config
    cfg = resolve_config(cfg, args.command)     # once, failing fast, before importing torch and transformers
    import warnings
    from ..core.metrics import ChanceLevelWarning
    warnings.simplefilter("ignore", ChanceLevelWarning)   # the CLI says it in its own line, below
    from ..jobs import run
    if args.command == "evaluate":
        from ..deploy.formats import read_export_meta     # a `mixkd export` folder runs in its own format
        exported = cfg.model and os.path.isdir(os.path.expanduser(cfg.model)) and read_export_meta(cfg.model)
        if exported:
            from ..deploy.formats import evaluate_exported
        result = evaluate_exported(cfg) if exported else run.evaluate(cfg)
        text = json.dumps(result, indent=2, default=str)
        print(text)
        from ..core.metrics import chance_warning
        if chance_warning(result):
            print(f"mixkd evaluate: {chance_warning(result)}", file=sys.stderr)
        if args.output:
            with open(args.output, "w") as fh:
                fh.write(text + "\n")
        return 0
    result = getattr(run, args.command)(cfg)
    print(json.dumps({k: result[k] for k in ("task", "variant", "primary_metric", "primary_value",
                                             "metrics", "params", "steps")}, indent=2))
    print(f"results in {os.path.abspath(cfg.output_dir)}", file=sys.stderr)
    from ..core.metrics import chance_warning
    if chance_warning(result):
        print(f"mixkd {args.command}: {chance_warning(result)}", file=sys.stderr)
    return 0


def run_external(main_fn, args: argparse.Namespace, prog: str) -> int:
    """Run a subcommand's ``main`` with the common error contract: UsageError -> one line, exit 2."""
    from ..core.errors import SweepFailed
    try:
        return main_fn(args)
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except SweepFailed as e:
        print(f"{prog}: failed: {e}", file=sys.stderr)
        return 1
    except NonFiniteLossError as e:
        print(f"{prog}: training stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; continue with the same command plus --resume", file=sys.stderr)
        return 130


def standalone(argv, prog: str, description: str, add_arguments, main_fn) -> int:
    """A subcommand module as its own script (experiments/glue_sweep.py, make_report.py, ...)."""
    p = _Parser(prog=prog, description=description)
    add_arguments(p)
    _Parser._argv = argv
    return run_external(main_fn, p.parse_args(argv), prog)
