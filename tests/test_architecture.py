"""The layout rules of mixkd/, checked on the real import graph (every import statement, including the
lazy ones inside functions), not by grepping for names:

- the layers, in order: core < augment < jobs < tracking < deploy < platform < report < cli; a module
  imports only modules of its own layer or of layers before it;
- the core (and every layer below platform) imports neither ray nor optuna; the core imports no mlflow;
- no import cycles between modules through top-level imports;
- no module imports another module's private name (one leading underscore; ``__dunder__`` names are public), nor
  reaches it as ``module._name``: a name two modules share is public, or lives in the module that uses it;
- no function over MAX_FUNCTION_LINES lines (nested ones counted on their own too), outside LONG_FUNCTIONS.

Each allow-list below names what is left and why; an entry that no longer applies fails the test, so the lists
only shrink. tests/ and experiments/ are not checked.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "mixkd"
LAYERS = ("core", "augment", "jobs", "tracking", "deploy", "platform", "report", "cli")
MAX_FUNCTION_LINES = 60
# third-party frameworks and the first layer allowed to import them
FRAMEWORKS = {"ray": "platform", "optuna": "platform", "mlflow": "tracking"}

# functions over MAX_FUNCTION_LINES lines that stay for now, each with why (path::qualified name: reason); none today
LONG_FUNCTIONS: dict[str, str] = {}

# imports of another module's private name that wait for their owners (importing module: {module.name, ...}); the
# fix is to drop the underscore at the definition and in every user, or to move the helper to its one user
PRIVATE_IMPORTS_PENDING: dict[str, set[str]] = {}   # none today


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in sorted(PKG.rglob("*.py"))}


def _from_target(name: str, path: Path, node: ast.ImportFrom) -> str:
    """The module ``from X import ...`` reads, relative imports resolved against module ``name`` at ``path``."""
    if not node.level:
        return node.module or ""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    base = package.split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(name: str, path: Path, top_level_only: bool = False) -> list[tuple[str, int]]:
    """(imported module, line) of every import in the file; relative imports resolved; ``from X import
    y`` counts as X, or as X.y when that is a module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    mods = _modules()
    nodes = tree.body if top_level_only else ast.walk(tree)
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _from_target(name, path, node)
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
            out += [(s, node.lineno) for s in subs] or [(target, node.lineno)]
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_imports(name: str, path: Path) -> list[tuple[str, int]]:
    """(module.name, line) of every private name of another mixkd module that the file imports (``from X import
    _y``) or reaches through an imported module (``X._y`` after ``from . import X`` or ``import mixkd.X as X``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    mods = _modules()
    aliases: dict[str, str] = {}          # local name -> the mixkd module it is bound to
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update({a.asname: a.name for a in node.names if a.asname and a.name in mods})
        elif isinstance(node, ast.ImportFrom):
            target = _from_target(name, path, node)
            if target.split(".")[0] != "mixkd":
                continue
            for a in node.names:
                if f"{target}.{a.name}" in mods:
                    aliases[a.asname or a.name] = f"{target}.{a.name}"
                if _private(a.name) and target != name:
                    out.append((f"{target}.{a.name}", node.lineno))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and _private(node.attr) and aliases[node.value.id] != name):
            out.append((f"{aliases[node.value.id]}.{node.attr}", node.lineno))
    return out


def _functions(path: Path) -> list[tuple[str, int, int]]:
    """(qualified name, first line, lines) of every function and method in the file, nested ones included."""
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((prefix + child.name, child.lineno, child.end_lineno - child.lineno + 1))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(encoding="utf-8")), "")
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


def _rel(path: Path) -> str:
    return str(path.relative_to(PKG.parent))


def test_no_module_imports_another_modules_private_name():
    found = {_rel(p): {(t, line) for t, line in _private_imports(n, p)} for n, p in _modules().items()}
    bad = [f"{f}:{line} imports {t}" for f, hits in sorted(found.items()) for t, line in sorted(hits, key=str)
           if t not in PRIVATE_IMPORTS_PENDING.get(f, set())]
    assert bad == [], ("private names used outside their module (make the name public where it is shared, or move "
                       "the helper to its user):\n" + "\n".join(bad))
    stale = [f"{f}: {t}" for f, names in PRIVATE_IMPORTS_PENDING.items() for t in sorted(names)
             if t not in {t_ for t_, _ in found.get(f, set())}]
    assert stale == [], "PRIVATE_IMPORTS_PENDING entries that no longer occur (remove them):\n" + "\n".join(stale)


def test_no_function_over_the_length_limit():
    lengths = {f"{_rel(p)}::{q}": n for p in PKG.rglob("*.py") for q, _, n in _functions(p)}
    long = {k: n for k, n in sorted(lengths.items(), key=lambda kv: -kv[1]) if n > MAX_FUNCTION_LINES}
    bad = [f"{k}: {n} lines" for k, n in long.items() if k not in LONG_FUNCTIONS]
    assert bad == [], (f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps):\n"
                       + "\n".join(bad))
    stale = [k for k in LONG_FUNCTIONS if k not in long]
    assert stale == [], f"LONG_FUNCTIONS entries now within {MAX_FUNCTION_LINES} lines or gone (remove them): {stale}"


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The rule checker itself: a lazy relative import from core into platform is found."""
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from ..platform import driver\n    import ray\n")
    found = _imports("mixkd.core.x", f)
    assert ("mixkd.platform.driver", 2) in found and ("ray", 3) in found


def test_the_checker_sees_private_imports_and_long_functions(tmp_path):
    """The rule checkers themselves: a private name imported from another module (directly or reached through an
    imported module) is found, a dunder or the module's own name is not; a function one line over the limit (also
    a nested one) is found, one at the limit is not."""
    f = tmp_path / "x.py"
    f.write_text("from .cells import _select, __doc__, table_cells\n"
                 "from . import tables as T\n"
                 "import mixkd.deploy.latency as L\n"
                 "from .x import _own\n"
                 "def g():\n"
                 "    from ..core.mixup import _token_type_table\n"
                 "    return T._latency_cols, L._hash, T.__name__\n")
    found = sorted(_private_imports("mixkd.report.x", f))
    assert found == [("mixkd.core.mixup._token_type_table", 6), ("mixkd.deploy.latency._hash", 7),
                     ("mixkd.report.cells._select", 1), ("mixkd.report.tables._latency_cols", 7)]

    def lines(indent: int, n: int) -> str:
        return "".join(f"{' ' * indent}x{i} = {i}\n" for i in range(n))
    f.write_text("def at_limit():\n" + lines(4, MAX_FUNCTION_LINES - 1)
                 + "class C:\n    def over(self):\n" + lines(8, 1)
                 + "        def inner():\n" + lines(12, MAX_FUNCTION_LINES) + "        return inner\n")
    lengths = {q: n for q, _, n in _functions(f)}
    assert lengths["at_limit"] == MAX_FUNCTION_LINES
    assert lengths["C.over.inner"] == MAX_FUNCTION_LINES + 1
    assert lengths["C.over"] > MAX_FUNCTION_LINES


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
