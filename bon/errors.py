"""One exception family for everything bon reports to a user.

The CLI turns any `BonError` into a one-line message and a non-zero exit code; anything else
keeps its traceback, because it is a bug rather than a mistake in the input.
"""

from __future__ import annotations


class BonError(Exception):
    """Base class of every error bon raises on purpose."""


class ConfigError(BonError):
    """An option or recipe value is invalid, or a resume would mix two configurations."""


class EngineError(BonError):
    """A text-generation engine failed to load or to answer."""


class RecordError(BonError):
    """One record cannot be processed (e.g. its prompt is longer than the model's context);
    the others can. The pipeline retries a failed batch one record at a time, and a record that
    fails alone is reported with its file and line (or skipped under `on_error="skip"`)."""


class InputError(BonError):
    """A record in an input file is malformed.

    `path` and `line` (1-based) say where; the message says what is wrong and how to fix it.
    """

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        self.path = path
        self.line = line
        self.problem = problem
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {problem}")


def require(ok: bool, name: str, constraint: str, value: object) -> None:
    """Raise `ConfigError("`name` must be <constraint>, got <value>")` unless `ok`."""
    if not ok:
        raise ConfigError(f"`{name}` must be {constraint}, got {value!r}")
