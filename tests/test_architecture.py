"""The shape of the package: data flows one way, so no module reaches back up.

These read xpnet's source with ``ast`` (every import, at module level or inside a
function) and check what README's "Architecture" section promises: no import cycle,
xpnet's own modules imported at module level, functions that fit on a screen, and a
core that loads no data I/O or networking when ``import xpnet`` runs.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "xpnet"
MAX_FUNCTION_LINES = 60

#: In-function imports of xpnet's own modules, each deferring something heavy on purpose.
DEFERRED = {
    # module importing -> modules it may import inside a function
    "xpnet.cli": {"xpnet.bench.cli"},  # the benchmark harness loads only for `xpnet bench`
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(dotted: str) -> str | None:
    """The xpnet module a dotted import name lands in (``xpnet.data.Scaling`` -> ``xpnet.data``)."""
    while dotted and dotted not in MODULES:
        dotted = dotted.rpartition(".")[0]
    return dotted or None


def _imports(module: str) -> list[tuple[str, bool]]:
    """``(imported xpnet module, inside a function?)`` for every import statement of ``module``."""
    tree = ast.parse(MODULES[module].read_text())
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            names = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    up = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(up + ([base] if base else []))
                names = [f"{base}.{alias.name}" for alias in child.names]
            for name in names:
                target = _resolve(name) if name.split(".")[0] == "xpnet" else None
                if target and target != module:
                    found.append((target, in_function))
            visit(child, inside)

    visit(tree, False)
    return found


def _graph() -> dict[str, set[str]]:
    graph = {}
    for module in MODULES:
        edges = {target for target, _ in _imports(module)}
        if MODULES[module].name == "__init__.py":  # a package importing its own submodules is no cycle
            edges = {target for target in edges if not target.startswith(module + ".")}
        graph[module] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    cycles = []

    def walk(start, node, trail):
        for nxt in graph.get(node, ()):
            if nxt == start:
                cycles.append(" -> ".join([*trail, start]))
            elif nxt not in trail and nxt > start:
                walk(start, nxt, [*trail, nxt])

    for module in sorted(graph):
        walk(module, module, [module])
    return cycles


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_the_walk_finds_a_cycle_when_there_is_one():
    """The check above can fail: an import of ``xpnet.train`` from ``xpnet.scaling`` would close a loop."""
    graph = _graph()
    assert "xpnet.scaling" in graph["xpnet.train"]
    graph["xpnet.scaling"] = graph["xpnet.scaling"] | {"xpnet.train"}
    assert _cycles(graph) == ["xpnet.scaling -> xpnet.train -> xpnet.scaling"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_xpnet_modules_are_imported_at_module_level(module):
    late = {target for target, in_function in _imports(module) if in_function}
    assert late <= DEFERRED.get(module, set()), f"{module} imports {sorted(late)} inside functions"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_functions_fit_on_a_screen(module):
    tree = ast.parse(MODULES[module].read_text())
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert long == []


def test_the_core_loads_no_data_io_networking_or_harness():
    """``import xpnet`` (network, training, model files) stays clear of the downloader and the bench."""
    code = (
        "import sys, xpnet; "
        "print(' '.join(m for m in ('ssl', 'urllib.request', 'http.client', 'xpnet.data', 'xpnet.bench', "
        "'xpnet.cli') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_one_version():
    import xpnet
    from xpnet._version import __version__

    assert xpnet.__version__ == __version__
    pyproject = (PACKAGE.parent / "pyproject.toml").read_text()
    assert 'version = {attr = "xpnet._version.__version__"}' in pyproject
    assert "\nversion =" not in pyproject.split("[project]")[1].split("[")[0]
