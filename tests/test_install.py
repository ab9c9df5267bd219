"""mixkd installed from its wheel (not editable), run away from the source tree: the sweep presets are package
data, found with importlib.resources, so `mixkd sweep --preset NAME` works on a plain `pip install .` (issue 26).

The wheel is built from a copy of what the package declares (pyproject.toml, README.md, mixkd/) and installed,
without its dependencies, into a throwaway venv of the base interpreter; a .pth file there adds this venv's
site-packages for the dependencies. Lines of that directory's own .pth files are not run, so the editable
install of mixkd in this venv stays out of the way: the test checks that mixkd is imported from the throwaway
install. Offline, a few seconds.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PRESETS = ("demo", "smoke", "ablation", "limited", "search", "paper", "repro-cpu", "glue-cpu")


def _run(cmd: list, cwd: Path, env: dict | None = None, timeout: int = 180) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    shutil.copytree(REPO / "mixkd", src / "mixkd", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run(pip + ["wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", tmp / "dist", src], cwd=tmp)
    (wheel,) = (tmp / "dist").glob("mixkd-*.whl")

    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
    python = env_dir / "bin" / "python"
    where = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp)
    site = Path(where.stdout.strip())
    deps = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))   # this venv's: the dependencies
    (site / "_mixkd_test_deps.pth").write_text("".join(f"{d}\n" for d in deps))
    _run(pip + ["--python", python, "install", "--no-deps", "--no-index", "-q", wheel], cwd=tmp)

    away = tmp / "elsewhere"   # cwd outside the repository: nothing of the source tree is importable from it
    away.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH")}
    return {"wheel": wheel, "env_dir": env_dir, "python": python, "site": site, "cwd": away, "env": env}


def test_the_wheel_carries_the_presets(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    missing = [p for p in PRESETS if f"mixkd/platform/presets/{p}.yaml" not in names]
    assert missing == [], f"presets missing from the wheel (package data in pyproject.toml): {missing}"


def test_mixkd_and_its_presets_come_from_the_install(installed):
    code = "import mixkd, mixkd.cli.sweep as s; print(mixkd.__file__); print(s.PRESETS_DIR)"
    out = _run([installed["python"], "-c", code], cwd=installed["cwd"], env=installed["env"]).stdout.split("\n")
    site = installed["site"].resolve()
    assert Path(out[0]).resolve().is_relative_to(site), f"mixkd imported from {out[0]}, not the wheel's install"
    assert Path(out[1]).resolve() == site / "mixkd" / "platform" / "presets"


def test_sweep_finds_its_presets_installed(installed):
    mixkd = installed["env_dir"] / "bin" / "mixkd"
    listed = _run([mixkd, "sweep", "--list-presets"], cwd=installed["cwd"], env=installed["env"]).stdout
    rows = dict(line.split("\t") for line in listed.splitlines())
    assert set(rows) >= {"demo", "smoke", "paper"}
    for name, path in rows.items():
        assert Path(path).is_file() and Path(path).resolve().is_relative_to(installed["site"].resolve()), (name, path)
    out = _run([mixkd, "sweep", "--preset", "demo", "--print-spec"], cwd=installed["cwd"], env=installed["env"]).stdout
    spec = yaml.safe_load(out)
    assert (spec["name"], spec["mode"], spec["tasks"]) == ("demo", "grid", ["sst2"])


def test_other_commands_start_installed(installed):
    mixkd = installed["env_dir"] / "bin" / "mixkd"
    assert "--student-layers" in _run([mixkd, "distill", "--help"], cwd=installed["cwd"], env=installed["env"]).stdout
    version = _run([installed["python"], "-m", "mixkd", "--version"], cwd=installed["cwd"], env=installed["env"]).stdout
    assert version.strip() == "mixkd 0.1.0"
