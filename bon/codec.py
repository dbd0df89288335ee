"""JSON lines: reading them (a file, stdin, raw lines) and writing them (one record a line).

Every JSON text bon reads or writes goes through here. orjson does the work where it reads and
writes exactly what the standard library would; where it would differ (huge integers, NaN, lone
surrogates, floats it spells otherwise) the standard library takes over, so outputs, cache keys
and fingerprints are the same whichever one ran. A bad line is a value (`InputError` naming the
file and line), not an exception, so the caller decides whether to stop or go on.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from bon.errors import InputError

JSON_SPACE = " \t\r\n"
BOM = b"\xef\xbb\xbf"
BLANK = object()  # what `parse_line` returns for a blank line (a `null` line parses to None)
STDIO = "-"  # the path that stands for stdin (as input) or stdout (as output)


def dumps(record: Any) -> str:
    """One JSON line, UTF-8 kept readable; NaN and infinities become null.

    Strings holding lone surrogates (legal as JSON escapes, not encodable as UTF-8) are written
    with `\\u` escapes, so every line this returns can be encoded and read back.
    """
    try:
        return orjson.dumps(record).decode("utf-8")
    except TypeError:  # what orjson refuses (big ints, numpy scalars, surrogates) json writes
        pass
    try:
        text = json.dumps(record, ensure_ascii=False, allow_nan=False)
    except ValueError:
        text = json.dumps(_finite(record), ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(_finite(record), ensure_ascii=True, allow_nan=False)
    return text


_CANONICAL = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))
_INT64 = 2**63


def canonical(value: Any) -> str:
    """`value` as JSON with sorted keys, no spaces and non-ASCII kept: the text that keys and
    fingerprints hash. Exactly what the standard library writes, only faster where orjson writes
    the same bytes (it spells floats outside [1e-4, 1e16) differently and refuses some types)."""
    if _orjson_spells_alike(value):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode("utf-8")
        except TypeError:
            pass
    return _CANONICAL.encode(value)


def _orjson_spells_alike(value: Any) -> bool:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is float:
        return value == 0 or 1e-4 <= abs(value) < 1e16
    if kind is int:
        return -_INT64 <= value < _INT64
    if kind is list or kind is tuple:
        return all(_orjson_spells_alike(v) for v in value)
    if kind is dict:
        return all(type(k) is str and _orjson_spells_alike(v) for k, v in value.items())
    return False


def _finite(value: Any) -> Any:
    """`value` with every non-finite float replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def read_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed value) for each non-blank line of `path`.

    A line that is not valid UTF-8 or not valid JSON yields an `InputError` naming the file and
    line as its value, so the caller decides whether to stop or go on; an unreadable file raises
    it. A UTF-8 byte-order mark at the start of the file is ignored. The path `-` reads stdin
    (named `<stdin>` in errors), line by line as it arrives.
    """
    if str(path) == STDIO:
        yield from parse_lines("<stdin>", sys.stdin.buffer)
        return
    path = str(path)
    try:
        handle = open(path, "rb")  # noqa: SIM115 (closed below; errors named first)
    except OSError as exc:
        raise InputError(path, None, f"cannot read the file: {exc.strerror}") from None
    with handle:
        yield from parse_lines(path, handle)


def parse_lines(name: str, lines: Iterable[bytes]) -> Iterator[tuple[int, Any]]:
    """`read_lines` over raw lines already read from the file called `name`."""
    for number, raw in enumerate(lines, start=1):
        if number == 1 and raw.startswith(BOM):
            raw = raw[len(BOM) :]
        value = parse_line(name, number, raw)
        if value is not BLANK:
            yield number, value


@contextmanager
def stdout_sink() -> Iterator[BinaryIO]:
    """stdout, kept for data alone while inside.

    Whatever else writes to stdout meanwhile (a library's print, C code) is sent to stderr, so
    one stray line cannot corrupt the JSONL a pipe carries.
    """
    sys.stdout.flush()
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced stdout (a test runner): no fd
        yield sys.stdout.buffer
        sys.stdout.flush()
        return
    data_fd = os.dup(fd)
    os.dup2(sys.stderr.fileno(), fd)
    sink = open(data_fd, "wb")  # noqa: SIM115 (closed below, after fd 1 is restored)
    try:
        yield sink
    finally:
        sys.stdout.flush()
        os.dup2(data_fd, fd)
        # A reader that left (broken pipe) made the writes fail loudly already.
        with contextlib.suppress(OSError):
            sink.close()


def loads(text: str) -> Any:
    """The value of one JSON text, as `json.loads` reads it (errors included), only faster.

    orjson reads integers beyond 64 bits as floats and refuses NaN and lone surrogates, so a
    text holding a float that large, or one orjson rejects, is read again by the standard library.
    """
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
    return json.loads(text) if _holds_huge_float(value) else value


def _holds_huge_float(value: Any) -> bool:
    kind = type(value)
    if kind is float:
        return abs(value) >= _INT64
    if kind is list:
        return any(_holds_huge_float(v) for v in value)
    if kind is dict:
        return any(_holds_huge_float(v) for v in value.values())
    return False


def parse_line(path: str, number: int, raw: bytes) -> Any:
    """The value of line `number` of the file `path` (its raw bytes `raw`): an `InputError`
    for a line that is not UTF-8 JSON, or `BLANK` for a blank one."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        byte = raw[exc.start]
        return InputError(
            path, number, f"not valid UTF-8 (byte 0x{byte:02x} at column {exc.start + 1})"
        )
    if not line.strip(JSON_SPACE):
        return BLANK
    try:
        return loads(line)
    except json.JSONDecodeError as exc:
        return InputError(path, number, f"not valid JSON ({exc.msg}, column {exc.colno})")
    except RecursionError:
        return InputError(path, number, "JSON nested too deeply to read")
