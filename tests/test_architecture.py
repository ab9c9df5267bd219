"""The layout rules of mixkd/, checked on the real import graph (every import statement, including the
lazy ones inside functions), not by grepping for names:

- the layers, in order: core < augment < jobs < tracking < deploy < platform < report < cli; a module
  imports only modules of its own layer or of layers before it;
- the core (and every layer below platform) imports neither ray nor optuna; the core imports no mlflow;
- no import cycles between modules through top-level imports;
- no module over MAX_LINES lines.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "mixkd"
LAYERS = ("core", "augment", "jobs", "tracking", "deploy", "platform", "report", "cli")
MAX_LINES = 450
# third-party frameworks and the first layer allowed to import them
FRAMEWORKS = {"ray": "platform", "optuna": "platform", "mlflow": "tracking"}


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted(PKG.rglob("*.py"))}


def _imports(name: str, path: Path, top_level_only: bool = False) -> list[tuple[str, int]]:
    """(imported module, line) of every import in the file; relative imports resolved; ``from X import
    y`` counts as X, or as X.y when that is a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    mods = _modules()
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
            out += [(s, node.lineno) for s in subs] or [(target, node.lineno)]
    return out


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "mixkd" and parts[1] in LAYERS else None


def test_every_module_sits_in_a_layer():
    loose = [m for m in _modules() if m.count(".") >= 1 and _layer(m) is None and m not in ("mixkd.__main__",)]
    assert loose == [], f"modules outside the layer packages {LAYERS}: {loose}"


def test_layers_import_only_downwards():
    bad = []
    for name, path in _modules().items():
        src = _layer(name)
        if src is None:
            continue
        for target, line in _imports(name, path):
            dst = _layer(target)
            if dst is not None and LAYERS.index(dst) > LAYERS.index(src):
                bad.append(f"{path.relative_to(PKG.parent)}:{line} ({src}) imports {target} ({dst})")
            root = target.split(".")[0]
            if root in FRAMEWORKS and LAYERS.index(src) < LAYERS.index(FRAMEWORKS[root]):
                bad.append(f"{path.relative_to(PKG.parent)}:{line} ({src}) imports {root}")
    assert bad == [], "imports against the layer order:\n" + "\n".join(bad)


def test_no_import_cycles_at_module_level():
    mods = _modules()
    graph = {n: {t for t, _ in _imports(n, p, top_level_only=True) if t in mods and t != n} for n, p in mods.items()}
    # a package's __init__ imported by its own submodules is how Python loads packages, not a cycle
    graph = {n: {t for t in ts if not n.startswith(t + ".")} for n, ts in graph.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(n, stack):
        state[n] = 1
        for t in graph[n]:
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[n] = 2

    for n in graph:
        if n not in state:
            visit(n, [n])
    assert cycles == [], f"import cycles: {cycles}"


def test_no_module_over_the_size_limit():
    big = {str(p.relative_to(PKG.parent)): n for p in PKG.rglob("*.py")
           if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert big == {}, f"modules over {MAX_LINES} lines (split them along their seams): {big}"


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The rule checker itself: a lazy relative import from core into platform is found."""
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from ..platform import driver\n    import ray\n")
    found = _imports("mixkd.core.x", f)
    assert ("mixkd.platform.driver", 2) in found and ("ray", 3) in found


def test_core_import_loads_no_framework():
    """Importing the whole core (and jobs) in a fresh interpreter pulls in no Ray, MLflow or Optuna."""
    import subprocess
    code = ("import sys, importlib, pkgutil, mixkd.core, mixkd.augment, mixkd.jobs\n"
            "for pkg in (mixkd.core, mixkd.augment, mixkd.jobs):\n"
            "    for m in pkgutil.iter_modules(pkg.__path__):\n"
            "        importlib.import_module(f'{pkg.__name__}.{m.name}')\n"
            "print(sorted(r for r in ('ray', 'mlflow', 'optuna') if r in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
