"""The import graph of pyro_vi/, models/ (installed as pyro_vi.models) and benchmarks/.

Every module is parsed with :mod:`ast`; both top-level imports and those inside functions
count (a lazy import is still an edge: it only moves the cycle to call time). Imports under
``if TYPE_CHECKING:`` do not count, since they never run. ``from a.b import c`` is an edge to
``a.b.c`` when that is a module, and always to ``a.b``, whose attribute it reads. Importing
``a.b.c`` is not counted as an edge to the packages ``a`` and ``a.b`` whose ``__init__`` runs
first (that would make every module depend on the flat API in ``pyro_vi/__init__.py``).

Checked: (a) no import cycle; (b) under pyro_vi/, only ``pyro_vi/__init__.py``, the
``pyro_vi.cli`` apps and the ``pyro_vi.sklearn`` re-export (a public path, not a dependency: nothing
in the library imports it) import ``pyro_vi.models`` (the library never depends on its models);
(c) ``matplotlib.use(...)`` is called only inside a ``main()`` (of a ``pyro_vi.cli`` module or a
benchmark script), never in a library module or at import time; (d) nothing under pyro_vi/,
models/ or benchmarks/ touches ``sys.path``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: source folder -> the dotted name it is imported as
TREES = {"pyro_vi": "pyro_vi", "models": "pyro_vi.models", "benchmarks": "benchmarks"}


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    tree: ast.Module
    imports: set[str] = field(default_factory=set)


def _module_name(path: Path) -> tuple[str, bool]:
    top = path.relative_to(ROOT).parts[0]
    rel = path.relative_to(ROOT / top).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([TREES[top], *parts]), path.name == "__init__.py"


def _collect() -> dict[str, Module]:
    out = {}
    for top in TREES:
        for path in sorted((ROOT / top).rglob("*.py")):
            if "results" in path.relative_to(ROOT).parts[1:-1]:
                continue
            name, is_package = _module_name(path)
            out[name] = Module(name, path, is_package, ast.parse(path.read_text(), str(path)))
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement below ``node``, skipping ``if TYPE_CHECKING:`` bodies."""
    found: list[ast.Import | ast.ImportFrom] = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            found.append(child)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for sub in child.orelse:
                found.extend(_import_nodes(ast.Module(body=[sub], type_ignores=[])))
        else:
            found.extend(_import_nodes(child))
    return found


def _resolve(module: Module, node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The known modules an import statement loads."""
    if isinstance(node, ast.Import):
        targets = {alias.name for alias in node.names}
    else:
        base = node.module or ""
        if node.level:
            package = module.name if module.is_package else module.name.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        # `from a import b` reads the attribute b of a (so a's __init__ runs), and loads a.b if
        # that is a module; `from pyro_vi import cavi` is both (the function shadows the package).
        targets = {base} | {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
    out = set()
    for target in targets:
        # `import a.b.c` for an unknown a.b.c (a function re-export, say): its nearest known module
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target:
            out.add(target)
    return out


MODULES = _collect()
for _m in MODULES.values():
    _m.imports = set().union(*(_resolve(_m, n, set(MODULES)) for n in _import_nodes(_m.tree)))
    _m.imports.discard(_m.name)


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a closed path ``[a, b, ..., a]``, or None (iterative DFS)."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = 2
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif child not in state:
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return None


def test_the_parser_sees_the_tree():
    # Guards against a check that passes because it parsed nothing.
    assert {"pyro_vi", "pyro_vi.results", "pyro_vi.diagnostics.report", "pyro_vi.models.gmm.model",
            "pyro_vi.cli.bench", "benchmarks._common"} <= set(MODULES)
    assert "pyro_vi.diagnostics" in MODULES["pyro_vi"].imports
    assert "pyro_vi.diagnostics.report" in MODULES["pyro_vi.diagnostics"].imports
    assert "pyro_vi.diagnostics.inference_data" in MODULES["pyro_vi.results"].imports  # a lazy one


def test_find_cycle_reports_a_closed_path():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    graph = {name: m.imports for name, m in MODULES.items()}
    cycles = []
    while (cycle := _find_cycle(graph)) is not None:
        cycles.append(" -> ".join(cycle))
        graph = {k: v - {cycle[1]} if k == cycle[0] else v for k, v in graph.items()}
    assert cycles == [], "import cycles (lazy imports included):\n  " + "\n  ".join(cycles)


def test_the_library_does_not_import_its_models():
    offenders = sorted(
        f"{name} imports {sorted(i for i in m.imports if i.startswith('pyro_vi.models'))}"
        for name, m in MODULES.items()
        if m.path.is_relative_to(ROOT / "pyro_vi") and name not in ("pyro_vi", "pyro_vi.sklearn")
        and not name.startswith("pyro_vi.cli")
        and any(i == "pyro_vi.models" or i.startswith("pyro_vi.models.") for i in m.imports))
    assert offenders == []


def _matplotlib_names(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.asname or a.name for a in node.names if a.name == "matplotlib"}
    return names


def _backend_calls(m: Module) -> list[tuple[int, tuple[str, ...]]]:
    """``(line, enclosing function names)`` of every ``matplotlib.use(...)`` call."""
    aliases = _matplotlib_names(m.tree)
    found = []

    def visit(node: ast.AST, scope: tuple[str, ...]) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            scope = (*scope, node.name)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "use" and isinstance(node.func.value, ast.Name)
                and node.func.value.id in aliases):
            found.append((node.lineno, scope))
        for child in ast.iter_child_nodes(node):
            visit(child, scope)

    visit(m.tree, ())
    return found


@pytest.mark.parametrize("name", sorted(MODULES))
def test_matplotlib_backend_is_set_only_in_a_main(name):
    m = MODULES[name]
    app = name.startswith(("pyro_vi.cli.", "benchmarks."))
    bad = [f"{m.path.relative_to(ROOT)}:{line} in {'.'.join(scope) or 'module scope'}"
           for line, scope in _backend_calls(m) if not (app and scope == ("main",))]
    assert bad == [], "matplotlib.use() belongs in a CLI main() only"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_sys_path_edits(name):
    m = MODULES[name]
    hits = [node.lineno for node in ast.walk(m.tree)
            if isinstance(node, ast.Attribute) and node.attr == "path"
            and isinstance(node.value, ast.Name) and node.value.id == "sys"]
    assert hits == [], f"{m.path.relative_to(ROOT)} uses sys.path on lines {hits}"
