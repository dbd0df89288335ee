"""Recipes: YAML files holding a command's keyword arguments.

A recipe is a mapping of the same names the Python API takes (`n`, `scorers`,
`reranker_model`, `engine_args`, ...) plus, for `bon run`, `prompts` and `out_dir` (or
`output`). An optional `command` key names the command it is for: `run` (the default) or
`eval ifeval` (which takes `out_dir`, `limit` and `prompt_seed` instead of `prompts`). Loading
validates every value with the same options classes the API uses, before any model loads; an
unknown key is a `ConfigError` naming the key and the file. Paths in a recipe are relative to
the working directory, as on the command line.

    bon run --recipe recipes/cpu-demo.yaml --n 2       # flags given override the recipe
    bon.run(**bon.load_recipe("recipes/cpu-demo.yaml"))  # the same from Python
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from bon import api
from bon.errors import ConfigError
from bon.evals.ifeval import IfevalOptions
from bon.options import fields, own

COMMANDS = ("run", "eval ifeval")
OWN_KEYS = {"run": ("prompts", "out_dir"), "eval ifeval": ("out_dir",)}
"""Each command's paths, its keys beside its declared options."""
OWN_OPTIONS: dict[str, type | None] = {"run": None, "eval ifeval": IfevalOptions}
"""Each command's options class beside `bon run`'s."""
ALIASES = {"output": "out_dir"}


def load_recipe(path: str | Path, command: str | None = None) -> dict[str, Any]:
    """The validated keyword arguments of the recipe at `path` (without `command`).

    `command` checks the recipe is for that command (`run` or `eval ifeval`); None accepts
    the command the recipe names. Raises `ConfigError` naming the file for an unreadable file,
    invalid YAML, an unknown key or an invalid value.
    """
    path = str(path)
    values = dict(_read(path))
    named = values.pop("command", "run")
    if named not in COMMANDS:
        raise ConfigError(f"{path}: `command` must be one of {', '.join(COMMANDS)}, got {named!r}")
    if command is not None and named != command:
        raise ConfigError(
            f"{path} is a recipe for `bon {named}`: run it with `bon {named} --recipe {path}`"
        )
    values = _unaliased(path, values)
    extra = OWN_OPTIONS[named]
    known = {*OWN_KEYS[named], *(p.name for p in api.keywords(named, files=True))}
    if extra is not None:
        known |= {f.name for f in fields(extra)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(
            f"{path}: unknown key {', '.join(f'`{k}`' for k in unknown)}; the keys of a "
            f"`bon {named}` recipe are: {', '.join(sorted(known))}"
        )
    values = {key: _coerced(key, value) for key, value in values.items()}
    try:
        _check_paths(values)
        rest = {k: v for k, v in values.items() if k not in OWN_KEYS[named]}
        if extra is not None:
            mine, rest = own(extra, rest)
            extra(**mine)
        api.validate_options(named, rest)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return values


def _read(path: str) -> Mapping[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the recipe: {exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) for k in data):
        raise ConfigError(
            f"{path}: a recipe must be a mapping of option names to values, got "
            f"{type(data).__name__}"
        )
    return data


def _unaliased(path: str, values: dict[str, Any]) -> dict[str, Any]:
    for alias, name in ALIASES.items():
        if alias in values:
            if name in values:
                raise ConfigError(f"{path}: give `{name}` or `{alias}`, not both")
            values[name] = values.pop(alias)
    return values


def _coerced(key: str, value: Any) -> Any:
    """YAML lists (or a single string) for tuple options, as the API takes them."""
    hint = _run_types().get(key)
    if typing.get_origin(hint) is tuple:
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list):
            return tuple(value)
    return value


def _run_types() -> dict[str, Any]:
    return {p.name: p.annotation for p in api.keywords("run", files=True)}


def _check_paths(values: dict[str, Any]) -> None:
    for key in ("prompts", "out_dir"):
        if key in values and not (isinstance(values[key], str) and values[key].strip()):
            raise ConfigError(f"`{key}` must be a file path, got {values[key]!r}")
