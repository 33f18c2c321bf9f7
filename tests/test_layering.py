"""Imports point one way (see STYLE.md, "Imports point one way").

Read from the source with :mod:`ast`, without importing anything:

- no cycle among the ``replicator.*`` imports a module makes when it is
  loaded (its module-level imports; an ``if TYPE_CHECKING:`` block is not
  run, so it does not count);
- the library (everything under ``replicator/`` but ``replicator/cli/``
  and ``__main__.py``, the command's entry point) never imports the CLI
  layer, not even inside a function;
- only the layers above the application import :mod:`replicator.application`
  (the engine below it never does);
- an import of a ``replicator.*`` module inside a function says why on its
  own line or the line before: a lazy import hides a cycle unless it has a
  reason of its own.
"""

from __future__ import annotations

import ast
import io
import tokenize
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "replicator"

# The CLI imports the library inside its commands so that ``replicator
# --help`` starts without SQLAlchemy, DuckDB or ChromaDB (the docstring of
# replicator/cli/common.py); that reason covers every lazy import there.
LAZY_BY_DESIGN = "replicator.cli"

# ``python -m replicator`` is the command itself: it only runs the CLI.
ENTRY_POINT = "replicator.__main__"

# The modules that sit above the application and may import it.
ABOVE_THE_APPLICATION = {
    "replicator",  # the package's public names (replicator.Replicator)
    "replicator.service",
    "replicator.status",
    "replicator.stats",
    "replicator.demo",
    "replicator.demo_relational",
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the replicator.* module it imports
    line: int
    end_line: int
    in_function: bool
    type_checking: bool


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.Import | ast.ImportFrom, module: str, known: Mapping[str, Path]) -> set[str]:
    """The ``replicator.*`` modules an import statement loads: ``from
    replicator import outbox`` loads ``replicator.outbox``; ``from
    replicator.sync import SyncPass`` loads ``replicator.sync``."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name.split(".")[0] == "replicator"}
    base = node.module or ""
    if node.level:  # relative: from the importing module's package
        is_package = known[module].name == "__init__.py"
        package = module.split(".")[: len(module.split(".")) - (node.level - is_package)]
        base = ".".join([*package, *([base] if base else [])])
    if base.split(".")[0] != "replicator":
        return set()
    found = set()
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        found.add(candidate if candidate in known else base)
    return found


def imports(module: str, known: Mapping[str, Path]) -> Iterator[Import]:
    """Every import of a ``replicator.*`` module in ``module``'s source."""
    tree = ast.parse(known[module].read_text(), filename=str(known[module]))

    def walk(node: ast.AST, in_function: bool, type_checking: bool) -> Iterator[Import]:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from walk(child, in_function, True)
            for child in node.orelse:
                yield from walk(child, in_function, type_checking)
            return
        if isinstance(node, ast.Import | ast.ImportFrom):
            for target in sorted(_targets(node, module, known)):
                end = node.end_lineno or node.lineno
                yield Import(module, target, node.lineno, end, in_function, type_checking)
            return
        inner = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            yield from walk(child, inner, type_checking)

    yield from walk(tree, False, False)


def all_imports() -> list[Import]:
    known = modules()
    return [found for module in known for found in imports(module, known)]


def graph(found: list[Import]) -> dict[str, set[str]]:
    """Module -> the ``replicator.*`` modules it imports when it is loaded."""
    edges: dict[str, set[str]] = {}
    for i in found:
        if not i.in_function and not i.type_checking and i.target != i.module:
            edges.setdefault(i.module, set()).add(i.target)
    return edges


def cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """Every cycle of ``edges``, one per strongly connected component, as
    a path that starts and ends at the same module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return [_path_through(component, edges) for component in components]


def _path_through(component: set[str], edges: Mapping[str, set[str]]) -> list[str]:
    """One cycle inside a strongly connected ``component``, for the message."""
    start = min(component)
    path, seen = [start], {start}
    while True:
        nxt = min(n for n in edges.get(path[-1], ()) if n in component)
        if nxt in seen:
            return [*path[path.index(nxt) :], nxt]
        path.append(nxt)
        seen.add(nxt)


def comment_lines(path: Path) -> dict[int, str]:
    """Line number -> the comment on it."""
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return {t.start[0]: t.string for t in tokens if t.type == tokenize.COMMENT}


def _why(comments: Mapping[int, str], i: Import, source: list[str]) -> str | None:
    """The comment giving a lazy import's reason: on one of its lines, or on
    a line of its own just before it."""
    for line in range(i.line, i.end_line + 1):
        if line in comments:
            return comments[line]
    before = i.line - 1
    if before in comments and source[before - 1].lstrip().startswith("#"):
        return comments[before]
    return None


def test_the_cycle_finder_finds_a_cycle_and_no_false_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}}) == []


def test_the_import_reader_sees_the_application_above_the_engine() -> None:
    """The reader is not blind: application imports sync, sync does not
    import application."""
    edges = graph(all_imports())
    assert "replicator.sync" in edges.get("replicator.application", set()), edges.get(
        "replicator.application"
    )
    assert "replicator.application" not in edges.get("replicator.sync", set())


def test_no_module_level_import_cycle_inside_the_package() -> None:
    found = cycles(graph(all_imports()))
    assert found == [], "module-level import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_the_library_never_imports_the_cli() -> None:
    wrong = [
        f"{i.module} line {i.line} imports {i.target}"
        for i in all_imports()
        if not _in(i.module, LAZY_BY_DESIGN)
        and i.module != ENTRY_POINT
        and _in(i.target, "replicator.cli")
    ]
    assert wrong == [], "the library imports the CLI layer: " + "; ".join(wrong)


def test_only_the_layers_above_the_application_import_it() -> None:
    wrong = [
        f"{i.module} line {i.line}"
        for i in all_imports()
        if i.target == "replicator.application"
        and i.module not in ABOVE_THE_APPLICATION
        and not _in(i.module, LAZY_BY_DESIGN)
    ]
    assert wrong == [], "replicator.application imported from below it: " + "; ".join(wrong)


@pytest.mark.parametrize("module", sorted(m for m in modules() if not _in(m, LAZY_BY_DESIGN)))
def test_a_lazy_import_inside_the_library_says_why(module: str) -> None:
    path = modules()[module]
    comments = comment_lines(path)
    source = path.read_text().splitlines()
    silent = [
        f"line {i.line} imports {i.target}"
        for i in imports(module, modules())
        if i.in_function and not i.type_checking and _why(comments, i, source) is None
    ]
    assert silent == [], (
        f"{module} imports inside a function with no comment saying why "
        f"(a cycle is no reason: move the code to the layer above): {'; '.join(silent)}"
    )


# The outer layers (STYLE.md, "Layers you can see in the tree"): each may use
# the library; the library uses none of them.
OUTER_LAYERS = ("replicator.cli", "replicator.console", "replicator.gateway")


@pytest.mark.parametrize("layer", OUTER_LAYERS[1:])
def test_the_library_never_imports_an_outer_layer(layer: str) -> None:
    wrong = [
        f"{i.module} line {i.line} imports {i.target}"
        for i in all_imports()
        if not any(_in(i.module, outer) for outer in OUTER_LAYERS)
        and i.module != ENTRY_POINT
        and _in(i.target, layer)
    ]
    assert wrong == [], f"the library imports {layer}: " + "; ".join(wrong)
