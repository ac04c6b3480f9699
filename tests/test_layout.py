"""The layout's rules (docs/architecture.md): layers import downwards only.

- ``protocol/`` imports nothing from ``server/`` or ``clients/``;
- ``server/`` has no import circle, counting imports made for types only
  (``if TYPE_CHECKING:``) and imports inside functions;
- no module is over ``MAX_LINES`` lines (data files are not modules);
- ``redis`` is imported only by the Redis store's modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 450
FOLDERS = {"protocol": "tokenwire.protocol", "server": "tokenwire.server"}


def _modules(folder: str) -> dict[str, Path]:
    package = FOLDERS[folder]
    out = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join([package, *parts])] = path
    return out


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that module ``name`` imports, anywhere in it."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            modules = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            # `from . import x` imports module x; `from .m import f` imports m.
            candidates = modules if len(modules) == len(node.names) else [target, *modules]
        else:
            continue
        found.update(c for c in candidates if c in known and c != name)
    return found


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def test_the_server_has_no_import_circle():
    modules = _modules("server")
    assert len(modules) > 30  # the walk found the package
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert graph["tokenwire.server.app"]  # and the imports
    assert _circles(graph) == []


def test_the_circle_check_sees_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _circles(graph) == [["a", "b", "c"]]


def test_protocol_imports_neither_server_nor_clients():
    for path in (ROOT / "protocol").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith(("tokenwire.server", "tokenwire.client")), path
                assert node.level <= 1, path  # nothing above protocol/
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith(("tokenwire.server", "tokenwire.client"))


def test_no_module_is_over_the_line_bound():
    long = {
        str(path.relative_to(ROOT)): lines
        for folder in ("protocol", "server", "clients/python")
        for path in (ROOT / folder).rglob("*.py")
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_only_the_redis_store_imports_redis():
    for path in (ROOT / "server").rglob("*.py"):
        if path.name.startswith("redis_"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            assert not any(n == "redis" or n.startswith("redis.") for n in names), path
