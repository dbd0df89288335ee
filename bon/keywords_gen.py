"""Writes `bon/keywords.py`: the API's flat keywords as `TypedDict`s, from the option declarations.

`python -m bon.keywords_gen` regenerates the file after an option changes; a test renders it in
memory and compares, so the checked-in file never drifts from the declarations. The runtime
signatures (`bon.api._mirrors`) and these static types come from the same `api.option_groups`.
Each key's type is its field's annotation as written, with `tuple[X, ...]` as `Sequence[X]`
(the API takes lists too). Scorers from plugins are left out: their keywords stay valid at run
time, but only the built-ins are known when this file is written.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

from bon import api
from bon.export import ExportOptions
from bon.fitting import FitOptions
from bon.generator import GenerateOptions
from bon.scorers import ScoreOptions

COMMAND = "python -m bon.keywords_gen"
TARGET = Path(__file__).with_name("keywords.py")

IMPORTS = {"Any": "typing", "Mapping": "collections.abc", "Sequence": "collections.abc"}
"""Where the names an annotation may use come from (builtins need no import)."""
BUILTINS = {"str", "int", "float", "bool", "None"}


@dataclass(frozen=True)
class Named:
    """A `TypedDict` of one option group."""

    name: str
    group: api.Group
    doc: str


GROUPS = [
    Named("GenerateKeywords", api.Group(GenerateOptions), "`GenerateOptions` (bon.generator)."),
    Named(
        "ScoreKeywords",
        api.Group(ScoreOptions),
        "`ScoreOptions` (bon.scorers), with the built-in scorers' own options.",
    ),
    Named(
        "RerankerKeywords",
        api.COMMANDS["run"][1],
        "`ScoreOptions` as `run` takes them: `reranker_` before the generator's names; `device`"
        "\n    and `dtype` come from `GenerateKeywords`.",
    ),
    Named(
        "SelectKeywords",
        api.SELECT_GROUP,
        "`SelectOptions` (bon.select), less those only `run` reads.",
    ),
    Named("FileKeywords", api.Group(api.FileOptions), "`FileOptions` (bon.api)."),
    Named("ExportKeywords", api.Group(ExportOptions), "`ExportOptions` (bon.export)."),
    Named("FitKeywords", api.Group(FitOptions), "`FitOptions` (bon.fitting)."),
]

FUNCTIONS = [
    *(
        (name, command, files)
        for command in api.COMMANDS
        for name, files in ((command, True), (f"{command}_records", False))
    ),
    ("export", "export", False),
    ("export_records", "export", False),
    ("fit", "fit", False),
]
"""(API function, its command, whether it takes file options), in `bon.api`'s order."""


def annotation(source: str) -> str:
    """A field's annotation source with `tuple[X, ...]` written `Sequence[X]`."""
    tree = ast.parse(source, mode="eval")
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == "tuple"
            and isinstance(node.slice, ast.Tuple)
            and len(node.slice.elts) == 2
            and isinstance(node.slice.elts[1], ast.Constant)
            and node.slice.elts[1].value is Ellipsis
        ):
            node.value.id = "Sequence"
            node.slice = node.slice.elts[0]
    return ast.unparse(tree)


def names_in(source: str) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(source, mode="eval")) if isinstance(n, ast.Name)}


def keys(group: api.Group) -> list[tuple[str, str]]:
    """(keyword, type) of each option of `group` declared in bon (plugins' left out)."""
    out = []
    for entry in group.entries():
        if not entry.owner.__module__.startswith("bon."):
            continue
        if not isinstance(entry.field.type, str):
            raise TypeError(
                f"{entry.owner.__name__}.{entry.name}: its module needs "
                "`from __future__ import annotations` (the annotation is read as written)"
            )
        out.append((entry.keyword, annotation(entry.field.type)))
    return out


def typed_dict(name: str, bases: list[str], doc: str, body: list[tuple[str, str]]) -> str:
    head = ", ".join([*bases, "total=False"])
    lines = [f"class {name}({head}):", f'    """{doc}"""']
    if body:
        lines.append("")
        lines.extend(f"    {key}: {hint}" for key, hint in body)
    return "\n".join(lines)


def function_dict(function: str, command: str, files: bool) -> tuple[str, list[tuple[str, str]]]:
    """The `TypedDict` of one API function, and its own keys (those of no whole group)."""
    bases, body = [], []
    for group in api.option_groups(command, files=files):
        whole = next((g.name for g in GROUPS if g.group == group), None)
        if whole is not None:
            bases.append(whole)
        else:
            body.extend(keys(group))
    name = "".join(part.title() for part in function.split("_")) + "Args"
    doc = f"The keywords of `bon.{function}`."
    return typed_dict(name, bases or ["TypedDict"], doc, body), body


def render() -> str:
    """The text of `bon/keywords.py`."""
    blocks: list[str] = []
    hints: list[str] = []
    for g in GROUPS:
        body = keys(g.group)
        hints.extend(h for _, h in body)
        blocks.append(typed_dict(g.name, ["TypedDict"], g.doc, body))
    for function, command, files in FUNCTIONS:
        block, body = function_dict(function, command, files)
        hints.extend(h for _, h in body)
        blocks.append(block)
    used = set().union(*(names_in(h) for h in hints)) - BUILTINS
    unknown = sorted(used - set(IMPORTS))
    if unknown:
        raise TypeError(f"annotations use {', '.join(unknown)}: add them to IMPORTS")
    return "\n\n\n".join([_header(used), *blocks]) + "\n"


def _header(used: set[str]) -> str:
    by_module: dict[str, list[str]] = {}
    for name in sorted(used | {"TypedDict"}):
        by_module.setdefault(IMPORTS.get(name, "typing"), []).append(name)
    imports = "\n".join(
        f"from {module} import {', '.join(names)}" for module, names in sorted(by_module.items())
    )
    return (
        f"# Generated by `{COMMAND}` from the option declarations: do not edit.\n"
        '"""The flat keywords of bon\'s API functions, as `TypedDict`s for type checkers.\n\n'
        "One per option group (`GenerateKeywords`, ...) and one per API function (`RunArgs`\n"
        "for `bon.run`, ...), whose `**options` `bon.api` annotates with it. Tuple options are\n"
        "`Sequence`s: the API takes lists too.\n"
        '"""\n\n'
        "from __future__ import annotations\n\n"
        f"{imports}"
    )


def main() -> None:
    """Write `bon/keywords.py`."""
    TARGET.write_text(render(), encoding="utf-8")
    print(f"wrote {TARGET}", file=sys.stderr)


if __name__ == "__main__":
    main()
