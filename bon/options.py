"""One declaration per option: its type, default, help, constraint and the scorers that read it.

Option classes are frozen dataclasses whose fields are made with `option(...)`. Everything else is
derived from that one declaration: validation (`validate`), the command-line flags
(`bon.entrypoints.cli`), the Python API's keyword signatures (`bon.api`) and, for scorers, which
options enter a scorer's recorded configuration and cache key (`used_by`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from bon.errors import ConfigError

Check = Callable[[Any], bool]


def option(
    default: Any,
    help: str,
    *,
    check: Check | None = None,
    constraint: str = "",
    choices: tuple[str, ...] | Callable[[], list[str]] | None = None,
    flag: str | None = None,
    short: str | None = None,
    used_by: tuple[str, ...] | None = None,
) -> Any:
    """A dataclass field carrying everything bon derives from an option.

    `check(value)` returning False raises "`name` must be <constraint>, got <value>"; `choices`
    (a tuple, or a function returning the names of a registry) restricts the value to a set;
    `flag` overrides the long command-line flag (default: `--name-with-dashes`), `short` adds a
    one-letter one; `used_by` names the scorers whose values the option changes (None: the
    whole stage).
    """
    metadata = {
        "help": help,
        "check": check,
        "constraint": constraint,
        "choices": choices,
        "flag": flag,
        "short": short,
        "used_by": used_by,
    }
    return dataclasses.field(default=default, metadata=metadata)


def checked_as(cls: type, name: str) -> dict[str, Any]:
    """The check, constraint and choices of the option `name` of `cls`, for an option declared
    elsewhere with another default or help that must hold to the same limits."""
    field = next(f for f in fields(cls) if f.name == name)
    return {k: field.metadata[k] for k in ("check", "constraint", "choices")}


def fields(cls: type) -> Iterator[dataclasses.Field]:
    """The declared options of an options class, in declaration order."""
    return (f for f in dataclasses.fields(cls) if "help" in f.metadata)


def choices_of(field: dataclasses.Field) -> tuple[str, ...] | None:
    """The allowed values of a field, or None when any value of its type goes."""
    choices = field.metadata.get("choices")
    if callable(choices):
        return tuple(choices())
    return choices


def types_of(cls: type) -> dict[str, Any]:
    """The resolved type hints of an options class."""
    return typing.get_type_hints(cls)


def value_type(hint: Any) -> Any:
    """The type of an option's values: `X | None` is X, `tuple[str, ...]` is tuple, a mapping
    type is `Mapping`."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (types.UnionType, typing.Union) and len(args) == 1:
        hint = args[0]
    origin = typing.get_origin(hint) or hint
    if origin in (Mapping, dict):
        return Mapping
    return origin


def validate(obj: Any) -> None:
    """Check every declared option of `obj` against its constraint and choices."""
    for field in fields(type(obj)):
        check_value(field, getattr(obj, field.name))


def check_value(field: dataclasses.Field, value: Any) -> None:
    """Check one value of a declared option (as `validate` does for each); raises `ConfigError`
    "`name` must be <constraint>, got <value>". Front ends that take one option at a time (the
    server's request fields) call it to give the same message."""
    allowed = choices_of(field)
    if allowed is not None:
        values = value if isinstance(value, tuple) else (value,)
        for item in values:
            if item not in allowed:
                raise ConfigError(
                    f"`{field.name}` must be one of {', '.join(allowed)}, got {item!r}"
                )
    check = field.metadata.get("check")
    if check is not None and not check(value):
        raise ConfigError(f"`{field.name}` must be {field.metadata['constraint']}, got {value!r}")


def refuse_unknown(given: Iterable[str], known: Iterable[str]) -> None:
    """Raise `ConfigError` naming the keywords of `given` that are not in `known`, and listing
    the known ones."""
    known = sorted(known)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(unknown)}; known: {', '.join(known)}")


def aliases(cls: type) -> dict[str, str]:
    """Alias -> name for the options whose flag names them differently (`--scorer` is the flag
    of `scorers`): front ends that take keywords (requests, model_args) accept either."""
    out = {}
    for field in fields(cls):
        flag = field.metadata.get("flag")
        alias = flag.removeprefix("--").replace("-", "_") if flag else field.name
        if alias != field.name:
            out[alias] = field.name
    return out


def unaliased(values: Mapping[str, Any], cls: type) -> dict[str, Any]:
    """`values` with each alias of `cls` (`aliases`) under its option's name; a single value
    for a tuple option becomes a one-item tuple, a list a tuple. Giving both is an error."""
    out = dict(values)
    hints = types_of(cls)
    for alias, name in aliases(cls).items():
        if alias not in out:
            continue
        if name in out:
            raise ConfigError(f"give `{alias}` or `{name}`, not both")
        value = out.pop(alias)
        if typing.get_origin(hints[name]) is tuple:
            value = tuple(value) if isinstance(value, (list, tuple)) else (value,)
        out[name] = value
    return out


def own(cls: type, values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`values` split into the options `cls` declares and the rest."""
    names = {f.name for f in fields(cls)}
    return (
        {k: v for k, v in values.items() if k in names},
        {k: v for k, v in values.items() if k not in names},
    )


def defaults(cls: type) -> dict[str, Any]:
    """Each declared option's default."""
    return {f.name: f.default for f in fields(cls)}


def used_by(cls: type, scorer: str) -> list[str]:
    """The options of `cls` that change the values of the scorer called `scorer`."""
    return [f.name for f in fields(cls) if scorer in (f.metadata.get("used_by") or ())]


def positive(value: Any) -> bool:
    """An integer >= 1 (bools excluded)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def non_negative(value: Any) -> bool:
    """A number >= 0 (bools excluded)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
