"""Security defaults (issue 5, item 8), checked on the sources and on real run folders and MLflow stores:

- services mixkd or cluster/ start (Ray dashboard, MLflow server/UI) bind 127.0.0.1 unless the user asks
  otherwise (one documented exception: the KubeRay head, see ALLOWED_WIDE);
- weights are saved as safetensors, and torch.load is only ever called with weights_only=True;
- no trust_remote_code unless a flag asks for it;
- secrets (tracking tokens, passwords in a tracking URI) are never logged as params or tags, nor written
  to sweep.yaml / summary.json or error messages.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(REPO / "mixkd").rglob("*.py"), *(REPO / "experiments").rglob("*.py"),
                  *(REPO / "cluster").rglob("*.py")])
SCRIPTS = sorted([*(REPO / "cluster").rglob("*"), REPO / "Makefile", REPO / "README.md", *(REPO / "docs").rglob("*.md"),
                  *(REPO / "experiments").rglob("*.sh"), *(REPO / "mixkd").rglob("*.py")])
# Where a wider bind is deliberate and documented next to it: the KubeRay head's dashboard listens on the
# pod network (the operator and RayJob submitter reach it through a ClusterIP Service; token auth is on).
ALLOWED_WIDE = {("cluster/kuberay/raycluster.yaml", "dashboard-host")}
SECRET = "s3cr3t-T0KEN-do-not-log"


def _text_files():
    for p in SCRIPTS:
        if p.is_file() and p.suffix not in (".pyc",) and "__pycache__" not in p.parts:
            try:
                yield p, p.read_text()
            except UnicodeDecodeError:
                continue


def _calls(tree: ast.AST, name: str):
    """Calls whose function is ``name`` or ``<anything>.name``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Attribute) and f.attr == name) or (isinstance(f, ast.Name) and f.id == name):
                yield node


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_services_bind_localhost():
    found, wide = [], []
    for path, text in _text_files():
        rel = str(path.relative_to(REPO))
        flat = re.sub(r"\n\s*-\s*", " ", text)   # YAML argument lists (`- --host` / `- 127.0.0.1`) as one line
        for m in re.finditer(r"dashboard[-_]host[\"']?\s*[=:]\s*[\"']?([\w.:]+)", flat):
            found.append((rel, "dashboard-host", m.group(1)))
        for m in re.finditer(r"mlflow (?:server|ui)\b[^\n`]*", flat):
            host = re.search(r"--host[= ]+([\w.:]+)", m.group(0))
            # no --host: MLflow's own default is 127.0.0.1
            found.append((rel, "mlflow --host", host.group(1) if host else "127.0.0.1 (default)"))
        for m in re.finditer(r"0\.0\.0\.0(?!/0)", text):   # (an AWS security-group CIDR is not a bind)
            line = text[:m.start()].count("\n") + 1
            if not any(rel == f and k in text.splitlines()[line - 1] for f, k in ALLOWED_WIDE):
                wide.append(f"{rel}:{line}: {text.splitlines()[line - 1].strip()}")
    assert found, "no dashboard / MLflow host settings found: the scan is broken"
    bad = [f for f in found if not f[2].startswith("127.0.0.1") and (f[0], f[1]) not in ALLOWED_WIDE]
    assert not bad, f"services that do not bind 127.0.0.1: {bad}"
    assert not wide, "binds to all interfaces:\n" + "\n".join(wide)
    # every ray.init that starts a dashboard pins it to 127.0.0.1
    for path in SOURCES:
        for call in _calls(ast.parse(path.read_text()), "init"):
            dash = _kw(call, "include_dashboard")
            if isinstance(call.func, ast.Attribute) and getattr(call.func.value, "id", "") == "ray" and \
                    isinstance(dash, ast.Constant) and dash.value:
                host = _kw(call, "dashboard_host")
                assert isinstance(host, ast.Constant) and host.value == "127.0.0.1", \
                    f"{path.relative_to(REPO)}:{call.lineno}: ray.init with a dashboard not bound to 127.0.0.1"


def test_torch_load_only_with_weights_only():
    n = 0
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for call in _calls(tree, "load"):
            f = call.func
            if isinstance(f, ast.Attribute) and getattr(f.value, "id", "") == "torch":
                n += 1
                w = _kw(call, "weights_only")
                assert isinstance(w, ast.Constant) and w.value is True, \
                    f"{path.relative_to(REPO)}:{call.lineno}: torch.load without weights_only=True"
            if isinstance(f, ast.Attribute) and getattr(f.value, "id", "") in ("pickle", "cloudpickle", "joblib"):
                raise AssertionError(f"{path.relative_to(REPO)}:{call.lineno}: {f.value.id}.load of a file")
    assert n >= 1   # the trainer's checkpoint loader is found


def test_no_trust_remote_code_unless_asked():
    from mixkd.core.config import MixKDConfig
    assert MixKDConfig().trust_remote_code is False
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                assert not (isinstance(node.value, ast.Constant) and node.value.value is True), \
                    f"{path.relative_to(REPO)}: trust_remote_code=True hard-coded"
        for call in _calls(tree, "from_pretrained"):
            # an explicit argument (the config's flag) or none (transformers' default: False)
            kw = _kw(call, "trust_remote_code")
            assert kw is None or not isinstance(kw, ast.Constant) or kw.value is False, \
                f"{path.relative_to(REPO)}:{call.lineno}"
    from mixkd.cli.app import build_parser
    for cmd in ("finetune", "distill", "evaluate"):
        args = build_parser().parse_args([cmd, "--task", "sst2"])
        assert getattr(args, "trust_remote_code", False) is False   # only --trust-remote-code turns it on


def test_weights_are_safetensors(tiny_teacher_run):
    import torch
    for path in SOURCES:
        for call in _calls(ast.parse(path.read_text()), "save_pretrained"):
            safe = _kw(call, "safe_serialization")
            assert not (isinstance(safe, ast.Constant) and safe.value is False), f"{path}:{call.lineno}"
    files = [p.relative_to(tiny_teacher_run) for p in tiny_teacher_run.rglob("*") if p.is_file()]
    weights = [str(p) for p in files if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".safetensors")]
    assert "model/model.safetensors" in weights and "checkpoints/last/model.safetensors" in weights, weights
    pickled = [w for w in weights if not w.endswith(".safetensors")]
    assert pickled == ["checkpoints/last/trainer_state.pt"], pickled   # optimizer/RNG state, no weights
    state = torch.load(tiny_teacher_run / pickled[0], weights_only=True)   # plain tensors and numbers only
    assert "model" not in state and {"optimizer", "rng", "step"} <= set(state)


def test_secrets_are_never_logged_or_saved(tmp_path, monkeypatch, tiny_bert_dir, small_glue_dir):
    """A token in the environment and a password in the tracking URI: neither shows up in any MLflow
    param, tag or metric of the parent or a child run, in sweep.yaml, in summary.json, or in a message."""
    from mlflow.tracking import MlflowClient
    from mixkd.core.config import MixKDConfig
    from mixkd.core.errors import UsageError
    from mixkd.platform.spec import SweepSpec, saved_spec, sweep_params
    from mixkd.platform.summary import summarize
    from mixkd.tracking.store import check_tracking_uri, redact_uri
    from mixkd.tracking.writer import SweepTracker
    from test_sweep import spec_dict
    for var in ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_PASSWORD", "DATABRICKS_TOKEN"):
        monkeypatch.setenv(var, SECRET)
    uri_with_password = f"https://bob:{SECRET}@mlflow.example.com/?token={SECRET}"
    assert SECRET not in redact_uri(uri_with_password)
    with pytest.raises(UsageError) as e:
        check_tracking_uri(f"http://bob:{SECRET}@127.0.0.1:1")
    assert SECRET not in str(e.value) and "bob:***@127.0.0.1:1" in str(e.value)

    spec = SweepSpec.from_dict(spec_dict("secrets", tmp_path, tiny_bert_dir, small_glue_dir,
                                         tracking_uri=uri_with_password)).validate()
    assert SECRET not in yaml.safe_dump(saved_spec(spec)) and SECRET not in str(sweep_params(spec))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"   # the store the records go to
    t = SweepTracker(uri, "secrets", sweep_id="s", sweep_params=sweep_params(spec))
    cfg = MixKDConfig(task="sst2", teacher=str(tiny_bert_dir), output_dir=str(tmp_path / "t1"))
    t.child("t1", cfg, "trial")
    t.log_eval("t1", {"step": 1, "primary": 0.5, "loss/total": 1.0})
    t.finish("t1", None)
    t.close()
    client = MlflowClient(uri)
    for r in client.search_runs([client.get_experiment_by_name("secrets").experiment_id]):
        blob = repr((r.data.params, r.data.tags, r.data.metrics, r.info.run_name))
        assert SECRET not in blob, f"run {r.info.run_id} holds the secret"

    exp = tmp_path / "exp"
    (exp / "trials").mkdir(parents=True)

    class FakeTracker:   # summarize only reads .uri and .parent_id of the tracker it is given
        uri, parent_id = uri_with_password, "p"

        def submit(self, *a, **k):
            pass
    summary = summarize(exp, FakeTracker())
    assert SECRET not in (exp / "summary.json").read_text() and SECRET not in str(summary)
