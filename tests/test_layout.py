"""The package layout, read from the source with `ast` (nothing is imported).

Imports are counted wherever they stand: at module level, inside functions, or under
`TYPE_CHECKING`. Importing `bon.x.y` also runs the `__init__` of `bon` and `bon.x`; those
implicit imports are not counted, or every module would reach `bon/__init__.py`, which imports
the API and so nearly everything. A name imported from a package that only re-exports it counts
as an import of the module that defines it.

The cycle check is over the modules that are not a package's `__init__`. The cycles through an
`__init__` are the registry pattern: `bon/engines/__init__.py` and `bon/scorers/__init__.py`
import their members to register them, and the members look the registry up from inside a
function (to list their siblings, or to build one). The one other is `__version__`, which
`bon/__init__.py` holds and the cache and `bon fit` read when called.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bon"
FRONT_ENDS = ("cli", "serve", "lmeval", "rewards")
ENTRYPOINTS = "bon.entrypoints"


def module_name(path: Path) -> str:
    """`bon/x/y.py` -> `bon.x.y`; a package's `__init__.py` -> the package's name."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    """Every module of bon by name."""
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


@cache
def tree(name: str) -> ast.Module:
    return ast.parse(modules()[name].read_text(encoding="utf-8"), filename=str(modules()[name]))


def is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


def absolute(name: str, node: ast.ImportFrom) -> str:
    """The module an `ImportFrom` in module `name` reads, relative imports resolved."""
    if not node.level:
        return node.module or ""
    base = name.split(".")
    base = base if is_package(name) else base[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join([*base, *([node.module] if node.module else [])])


def imported(name: str) -> Iterator[tuple[str, str | None, ast.AST]]:
    """(module, name taken from it or None, node) for each import of a bon module in `name`."""
    for node in ast.walk(tree(name)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "bon":
                    yield alias.name, None, node
        elif isinstance(node, ast.ImportFrom):
            source = absolute(name, node)
            if source.split(".")[0] != "bon":
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules():
                    yield submodule, None, node
                else:
                    yield source, alias.name, node


@cache
def defined_in(package: str, attribute: str) -> str:
    """The module that defines `package.attribute`: the one it is re-exported from, if any."""
    for node in tree(package).body:
        if isinstance(node, ast.ImportFrom):
            source = absolute(package, node)
            for alias in node.names:
                if (alias.asname or alias.name) == attribute and source in modules():
                    return defined_in(source, alias.name) if is_package(source) else source
    return package


def edges(name: str) -> set[str]:
    """The bon modules `name` imports (re-exported names followed to their home)."""
    out = set()
    for source, attribute, _ in imported(name):
        if source not in modules():
            continue
        target = defined_in(source, attribute) if attribute and is_package(source) else source
        if target != name:
            out.add(target)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a list of nodes (the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycle_between_modules():
    graph = {
        name: {t for t in edges(name) if not is_package(t)}
        for name in modules()
        if not is_package(name)
    }
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def private(attribute: str) -> bool:
    return attribute.startswith("_") and not attribute.startswith("__")


def bound_modules(name: str) -> dict[str, str]:
    """Local names that stand for a bon module in `name` (`from bon import api`, `import
    bon.x as y`; a plain `import bon.x` binds `bon`, followed through attributes)."""
    out = {"bon": "bon"}
    for node in ast.walk(tree(name)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in modules():
                    out[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            source = absolute(name, node)
            for alias in node.names:
                if f"{source}.{alias.name}" in modules():
                    out[alias.asname or alias.name] = f"{source}.{alias.name}"
    return out


def dotted(node: ast.AST, names: dict[str, str]) -> str | None:
    """The bon module an expression such as `api` or `bon.engines.hf` stands for, if any."""
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute):
        base = dotted(node.value, names)
        if base is not None and f"{base}.{node.attr}" in modules():
            return f"{base}.{node.attr}"
    return None


def private_uses(name: str) -> Iterator[str]:
    """`where: what` for each private name of another bon module that `name` uses."""
    where = modules()[name].relative_to(ROOT)
    for source, attribute, node in imported(name):
        if attribute and private(attribute) and source != name:
            yield f"{where}:{node.lineno}: from {source} import {attribute}"
    names = bound_modules(name)
    for node in ast.walk(tree(name)):
        if isinstance(node, ast.Attribute) and private(node.attr):
            owner = dotted(node.value, names)
            if owner is not None and owner != name:
                yield f"{where}:{node.lineno}: {owner}.{node.attr}"


def test_no_private_name_crosses_modules():
    found = [use for name in modules() for use in private_uses(name)]
    assert found == []


def test_front_ends_live_in_entrypoints():
    for front in FRONT_ENDS:
        assert f"{ENTRYPOINTS}.{front}" in modules()
        assert f"bon.{front}" not in modules()


def front_end(name: str) -> bool:
    """Whether `name` is a front end: in `bon.entrypoints`, or `bon.__main__` (`python -m bon`,
    which must sit beside `bon/__init__.py`)."""
    return name in (ENTRYPOINTS, "bon.__main__") or name.startswith(f"{ENTRYPOINTS}.")


def test_the_core_never_imports_a_front_end():
    found = [
        f"{name} imports {source}"
        for name in modules()
        if not front_end(name)
        for source, _, _ in imported(name)
        if front_end(source)
    ]
    assert found == []
