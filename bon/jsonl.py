"""Streaming JSONL input and resumable, append-only JSONL output.

Resume works per record: an output file is only ever appended to, one whole line per finished
record, flushed at once. Beside it, `<output>.manifest.json` holds the configuration that produced
it. Reopening the same output with the same configuration repairs a half-written last line (a kill
mid-write), reads back the ids already written and lets the caller skip them; a different
configuration is refused unless the caller asks to start over.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from bon.errors import ConfigError, InputError


def dumps(record: Any) -> str:
    """One JSON line, UTF-8 kept readable."""
    return json.dumps(record, ensure_ascii=False)


def read_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed value) for each non-blank line of `path`.

    A line that is not valid JSON yields an `InputError` naming the file and line as its value,
    so the caller decides whether to stop or go on; an unreadable file raises it.
    """
    path = str(path)
    try:
        handle = open(path, encoding="utf-8")  # noqa: SIM115 (closed below; errors named first)
    except OSError as exc:
        raise InputError(path, None, f"cannot read the file: {exc.strerror}") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                value = InputError(path, number, f"not valid JSON ({exc.msg}, column {exc.colno})")
            yield number, value


def config_hash(config: dict) -> str:
    """A short hash of a JSON-serialisable configuration."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


class ResumableOutput:
    """An append-only JSONL file that remembers which record ids it already holds.

    Use `open_output` to create one. `done` holds the ids already written; `write` appends a
    record and flushes it.
    """

    def __init__(self, path: Path, handle: IO[str], done: set[str]) -> None:
        self.path = path
        self.done = done
        self._handle = handle

    def write(self, record: dict) -> None:
        self._handle.write(dumps(record) + "\n")
        self._handle.flush()
        self.done.add(str(record["id"]))

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> ResumableOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def manifest_path(path: str | Path) -> Path:
    return Path(f"{path}.manifest.json")


def open_output(path: str | Path, config: dict, *, overwrite: bool = False) -> ResumableOutput:
    """Open `path` for a run with `config`, resuming what an earlier identical run left.

    Raises `ConfigError` when the file was written under a different configuration (or by
    something else) and `overwrite` is false.
    """
    path = Path(path)
    manifest = manifest_path(path)
    wanted = {"config_hash": config_hash(config), "config": config}
    if overwrite:
        path.unlink(missing_ok=True)
    if path.exists():
        _check_manifest(path, manifest, wanted["config_hash"])
        done = _repair_and_read_ids(path)
    else:
        done = set()
    path.parent.mkdir(parents=True, exist_ok=True)
    manifest.write_text(json.dumps(wanted, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return ResumableOutput(path, open(path, "a", encoding="utf-8"), done)


def _check_manifest(path: Path, manifest: Path, expected_hash: str) -> None:
    if not manifest.exists():
        raise ConfigError(
            f"{path} exists but was not written by this command (no {manifest.name}); "
            "pass --overwrite to replace it, or choose another output"
        )
    found = json.loads(manifest.read_text(encoding="utf-8")).get("config_hash")
    if found != expected_hash:
        raise ConfigError(
            f"{path} was written with a different configuration (see {manifest.name}); "
            "rerun with the same options to resume, or pass --overwrite to start over"
        )


def _repair_and_read_ids(path: Path) -> set[str]:
    """Cut a half-written last line, then return the ids of the complete records."""
    with open(path, "rb+") as handle:
        data = handle.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):
            handle.truncate(end)
            handle.flush()
            os.fsync(handle.fileno())
    done = set()
    for _, record in read_lines(path):
        if isinstance(record, InputError) or not isinstance(record, dict) or "id" not in record:
            raise ConfigError(
                f"{path} has a line bon did not write; pass --overwrite to start over"
            )
        done.add(str(record["id"]))
    return done
