"""The layering of docs/architecture.md, checked: no upward import, no import cycle.

Every `import` in `src/multiactive` counts, including those under `TYPE_CHECKING` and those
inside functions: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "multiactive"

# Lower layers never import higher ones. Same-rank packages may use each other (no cycles).
RANKS: dict[str, int] = {
    "errors": 0, "logs": 0, "checksum": 0, "aio": 0, "failpoints": 0, "model": 0, "clock": 0,
    "control": 0, "procs": 0,
    "security": 1,
    "wire": 1, "journal": 1, "state": 1, "audit": 1, "redisdb": 1, "sqlitedb": 1, "wan": 1,
    "replication": 2, "records": 2, "client": 2, "routing": 2, "db": 2, "reads": 2,
    "site": 3,
    "admin": 4,
    "local": 5, "chaos": 5, "demo": 5, "demo_traffic": 5,
    "cli": 6,
    "__init__": 6, "__main__": 7,
    "testing": 8,  # helpers for the project's tests: nothing in the product imports them
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports (a `from pkg import name` of a submodule counts as
    importing the submodule)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(path, known) for name, path in mods.items()}


def rank(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    if top not in RANKS:
        raise AssertionError(f"{module}: add its package {top!r} to RANKS in {__file__}")
    return RANKS[top]


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_a_higher_layer() -> None:
    upward = [
        f"{importer} (layer {rank(importer)}) imports {imported} (layer {rank(imported)})"
        for importer, targets in graph().items()
        for imported in sorted(targets)
        if rank(imported) > rank(importer)
    ]
    assert upward == []


def test_the_import_graph_has_no_cycle() -> None:
    assert cycles(graph()) == []


def test_the_checker_sees_an_upward_import_and_a_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert cycles(edges) == [["a", "b", "c"]]
    assert rank("multiactive.model.batch") < rank("multiactive.site.node")


@pytest.mark.parametrize("module", ["multiactive.model", "multiactive.wire.frames"])
def test_pure_layers_do_no_io(module: str) -> None:
    """The model and the wire parser import no I/O library (sans-I/O)."""
    io_libraries = {"socket", "asyncio", "sqlite3", "redis", "aiohttp", "subprocess"}
    mods = modules()
    paths = [p for name, p in mods.items() if name == module or name.startswith(module + ".")]
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            )  # fmt: skip
            assert not {n.split(".")[0] for n in names} & io_libraries, path
