"""The package's shape: no import cycle, no oversized file, and the
registries that the schema's choice lists come from."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parents[1] / "ssl_runner"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: Set[str]) -> Set[str]:
    """The ssl_runner modules `path` imports, anywhere in the file (a function-level
    import still ties the two modules together), `if TYPE_CHECKING:` blocks aside."""
    tree = ast.parse(path.read_text())
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    type_only: Set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            type_only |= {id(n) for child in node.body for n in ast.walk(child)}
    found: Set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from pkg import module` imports the module; `from module import name` the module.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def _graph() -> Dict[str, Set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: Dict[str, Set[str]] = {}
    for name, path in files.items():
        edges = set()
        for imported in _imports(path, set(files)):
            edges.add(imported)
            # Importing a.b.c first runs a/b/__init__.py (unless the importer is inside a.b).
            parts = imported.split(".")
            for depth in range(2, len(parts)):
                package = ".".join(parts[:depth])
                if package in files and not name.startswith(package + "."):
                    edges.add(package)
        graph[name] = edges - {name}
    return graph


def _find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_the_package_has_no_import_cycle():
    cycle = _find_cycle(_graph())
    assert not cycle, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) == []


def test_the_import_walker_sees_function_level_and_relative_imports(tmp_path):
    modules = {"ssl_runner.a", "ssl_runner.b", "ssl_runner.c"}
    src = tmp_path / "ssl_runner" / "a.py"
    src.parent.mkdir()
    src.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ssl_runner import c\n"
                   "def f():\n    from ssl_runner import b\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "ssl_runner"
    try:
        assert _imports(src, modules) == {"ssl_runner.b"}
    finally:
        PACKAGE = saved


def test_no_file_is_over_its_line_limit():
    too_long = []
    for path in PACKAGE.rglob("*.py"):
        lines = len(path.read_text().splitlines())
        limit = 150 if path.parent.name == "methods" else 300
        if lines > limit:
            too_long.append(f"{path.relative_to(PACKAGE.parent)}: {lines} lines (limit {limit})")
    assert not too_long, "\n".join(too_long)


def test_no_method_file_imports_another_method_file():
    methods = PACKAGE / "methods"
    shared = {"ssl_runner.methods.base", "ssl_runner.methods.registry"}
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    for path in methods.glob("*.py"):
        if path.name == "__init__.py":
            continue
        others = {m for m in _imports(path, modules) if m.startswith("ssl_runner.methods.")} - shared
        assert not others, f"{path.name} imports {sorted(others)}"


def test_every_package_is_installed():
    """pyproject lists the packages one by one (conf/ is mapped in as ssl_runner.conf):
    a package left out imports from a checkout but not from an installed wheel."""
    listed = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    packages = {_module_name(init) for init in PACKAGE.rglob("__init__.py")}
    assert packages - listed == set()
