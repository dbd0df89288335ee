"""Output files: atomic rewrites, one writer per file, manifests, resume, and run reports.

Resume works per record: an output file is appended to one whole line per finished record,
written at once. Beside it, `<output>.manifest.json` holds the configuration that produced it
and `<output>.lock` the pid of the one process allowed to write it. Reopening the same output
with the same configuration repairs a half-written last line (a kill mid-write), drops the
records the caller no longer wants (their input changed or left) with an atomic rewrite, and
reports the ids already done so the caller can skip them. A different configuration is refused
unless the caller asks to start over. Every rewrite goes through a temporary file, fsync and
`os.replace`, so a kill at any moment leaves either the old file or the new one. The manifest's
`complete` flag is false while a run writes the file and true once it has finished, so a reader
can follow a file that is still growing.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import itertools
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bon.codec import BLANK, dumps, parse_line
from bon.errors import BonError, ConfigError


@dataclass
class Report:
    """What a file run did.

    `written`: records written now (`redone` of them replace records whose input changed);
    `resumed`: records found done; `errors`: records skipped as bad or failed (see
    `error_file`); `unselected`: records in the output with no finite score (selected is null).
    """

    output: str
    written: int = 0
    resumed: int = 0
    redone: int = 0
    errors: int = 0
    unselected: int = 0
    error_file: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def config_hash(config: dict) -> str:
    """A short hash of a JSON-serialisable configuration."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def write_error(path: str | Path, exc: OSError) -> BonError:
    """The error for a failed write of bon's output `path` (disk full, file too large, ...)."""
    reason = exc.strerror or os.strerror(exc.errno or errno.EIO)
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        advice = "free space"
    else:
        advice = "check the path and its permissions"
    return BonError(f"cannot write {path}: {reason}; {advice} and rerun the same command to resume")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def replace_atomically(path: str | Path, lines: Iterable[bytes]) -> None:
    """Make `path` hold `lines`, through a temporary file, fsync and `os.replace`."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for line in lines:
                _write_all(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        temp.unlink(missing_ok=True)
        raise write_error(path, exc) from None


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_line(path: str | Path, record: Any) -> None:
    """Append one record to the small side file `path` (created if missing)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            _write_all(fd, (dumps(record) + "\n").encode("utf-8"))
        finally:
            os.close(fd)
    except OSError as exc:
        raise write_error(path, exc) from None


def lock_path(path: str | Path) -> Path:
    return Path(f"{path}.lock")


@contextmanager
def locked(output: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on `output` (via `<output>.lock`, holding our pid) while inside.

    A second holder is refused at once with a `ConfigError` naming the first one's pid.
    """
    path = lock_path(output)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = _acquire(output, path)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        os.ftruncate(fd, 0)
        _write_all(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        # Unlinked while still locked: `_acquire` notices a file that left under its feet.
        path.unlink(missing_ok=True)
        os.close(fd)


def _acquire(output: str | Path, path: Path) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(
                f"{output} is being written by another bon process (pid {holder}); "
                "wait for it or choose another output"
            ) from None
        try:
            mine = os.stat(path)
        except FileNotFoundError:
            mine = None
        held = os.fstat(fd)
        if mine is not None and (mine.st_dev, mine.st_ino) == (held.st_dev, held.st_ino):
            return fd
        os.close(fd)


class ResumableOutput:
    """An append-only JSONL file that remembers which record ids it already holds.

    Use `open_output` to create one. `done` holds the ids written (in `order`, the file's
    order); `dropped` the ids an earlier run wrote that the caller no longer wanted; `write`
    appends a record; `finish` puts the records in the caller's order.
    """

    def __init__(self, path: Path, order: list[str], dropped: list[str]) -> None:
        self.path = path
        self.order = order
        self.done = set(order)
        self.dropped = dropped
        self._fd: int | None = None
        self._open()

    def _open(self) -> None:
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            raise write_error(self.path, exc) from None

    def _open_fd(self) -> int:
        if self._fd is None:
            raise ValueError(f"{self.path} is closed: open it again with `open_output`")
        return self._fd

    def write(self, record: dict) -> None:
        """Append `record` as one line, written through to the file at once."""
        try:
            _write_all(self._open_fd(), (dumps(record) + "\n").encode("utf-8"))
        except OSError as exc:
            raise write_error(self.path, exc) from None
        key = str(record["id"])
        self.done.add(key)
        self.order.append(key)

    def finish(self, order: Sequence[str]) -> bool:
        """Rewrite the file (atomically) so its records follow `order`, unless they already do.

        Ids not in `order` are dropped. Returns whether the file was rewritten.
        """
        rank = {key: i for i, key in enumerate(order)}
        ranks = [rank.get(key, -1) for key in self.order]
        if -1 not in ranks and all(a < b for a, b in itertools.pairwise(ranks)):
            return False
        lines: dict[str, bytes] = {}
        for raw in _lines(self.path):
            key = _id_of(raw)
            if key in rank and key not in lines:
                lines[key] = raw
        self.close()
        ordered = [key for key in order if key in lines]
        replace_atomically(self.path, (lines[key] for key in ordered))
        self.order = ordered
        self.done = set(ordered)
        self._open()
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> ResumableOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def manifest_path(path: str | Path) -> Path:
    return Path(f"{path}.manifest.json")


def open_output(
    path: str | Path,
    config: dict,
    *,
    overwrite: bool = False,
    keep: Callable[[str, dict], bool] | None = None,
    older: Sequence[dict] = (),
    advice: Sequence[tuple[dict, str]] = (),
) -> ResumableOutput:
    """Open `path` for a run with `config`, resuming what an earlier identical run left.

    `older` configurations are other spellings of `config` that earlier versions recorded: a
    file recorded with one resumes too (its manifest keeps what it recorded). `advice` pairs
    configurations with how to resume a file recorded with them, which a refusal then says.

    `keep(id, record)` says whether a record written before is still wanted (default: all
    are); the others, and repeated ids, are dropped from the file. Raises `ConfigError` when
    the file holds records written under a different configuration (or by something else, or
    its manifest is unreadable) and `overwrite` is false; with `overwrite`, such a file is
    replaced, while one with the same configuration is still resumed. A file that holds no
    complete record (a run that failed before its first record, say at model load) is replaced
    whatever its configuration: there is nothing to lose.
    """
    path = Path(path)
    keep = keep or (lambda key, record: True)
    if path.exists():
        try:
            _check_manifest(path, manifest_path(path), config, older, advice)
            mark_complete(path, False)
            return _resume(path, keep)
        except ConfigError:
            if not overwrite and _holds_records(path):
                raise
    _start_over(path, config)
    return ResumableOutput(path, [], [])


def _start_over(path: Path, config: dict) -> None:
    # The old output goes first: a kill before the new manifest lands then starts afresh.
    try:
        path.unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path, exc) from None
    write_manifest(path, {"config_hash": config_hash(config), "config": config, "complete": False})


def write_manifest(path: str | Path, manifest: dict) -> None:
    """Replace the manifest of the output `path` (atomically)."""
    text = json.dumps(manifest, indent=2, sort_keys=True) + "\n"
    replace_atomically(manifest_path(path), [text.encode("utf-8")])


def read_manifest(path: str | Path) -> dict | None:
    """The manifest of the output `path`, or None when it has none (or an unreadable one)."""
    try:
        found = json.loads(manifest_path(path).read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return found if isinstance(found, dict) and isinstance(found.get("config_hash"), str) else None


def mark_complete(path: str | Path, complete: bool = True) -> None:
    """Record in the manifest of `path` whether the run that writes it has finished.

    A run marks its output incomplete when it opens it and complete when every record is in
    place, so a reader following the file (`bon score --follow`) knows when to stop.
    """
    manifest = read_manifest(path)
    if manifest is not None and manifest.get("complete") is not complete:
        write_manifest(path, {**manifest, "complete": complete})


def _holds_records(path: Path) -> bool:
    """Whether `path` has at least one complete non-blank line."""
    try:
        return any(raw.endswith(b"\n") and raw.strip() for raw in _lines(path))
    except OSError as exc:
        raise write_error(path, exc) from None


def config_changes(old: Any, new: Any, where: str = "") -> list[str]:
    """The settings that differ between two configurations, as `path: old -> new` lines
    (dotted paths into nested mappings)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            inner = f"{where}.{key}" if where else str(key)
            out.extend(config_changes(old.get(key, _UNSET), new.get(key, _UNSET), inner))
        return out
    if old == new:
        return []
    return [f"{where or 'configuration'}: {_shown(old)} -> {_shown(new)}"]


_UNSET = object()


def _shown(value: Any) -> str:
    return "unset" if value is _UNSET else json.dumps(value, sort_keys=True)


def _check_manifest(
    path: Path,
    manifest: Path,
    config: dict,
    older: Sequence[dict] = (),
    advice: Sequence[tuple[dict, str]] = (),
) -> None:
    if not manifest.exists():
        raise ConfigError(
            f"{path} exists but was not written by this command (no {manifest.name}); "
            "pass --overwrite to replace it, or choose another output"
        )
    try:
        found = json.loads(manifest.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ConfigError(
            f"cannot read {manifest}: {exc.strerror}; pass --overwrite to start over or fix it"
        ) from None
    except (ValueError, RecursionError):
        found = None
    if not isinstance(found, dict) or not isinstance(found.get("config_hash"), str):
        raise ConfigError(
            f"{manifest} is not valid JSON; pass --overwrite to start over or restore it"
        )
    if found["config_hash"] in {config_hash(c) for c in (config, *older)}:
        return
    changes = config_changes(found.get("config"), config)
    shown = "; ".join(changes[:MAX_CHANGES_SHOWN])
    if len(changes) > MAX_CHANGES_SHOWN:
        shown += f"; and {len(changes) - MAX_CHANGES_SHOWN} more"
    how = next((a for c, a in advice if config_hash(c) == found["config_hash"]), None)
    raise ConfigError(
        f"{path} was written with a different configuration (see {manifest.name}): "
        f"{shown or 'unknown changes'}. "
        + (how or "Rerun with the earlier options to resume, or pass --overwrite to start over")
    )


MAX_CHANGES_SHOWN = 8


def _resume(path: Path, keep: Callable[[str, dict], bool]) -> ResumableOutput:
    """Cut a half-written last line, drop unwanted records, and open for appending."""
    _cut_partial_line(path)
    order: list[str] = []
    seen: set[str] = set()
    dropped: list[str] = []
    kept_lines: list[int] = []
    for number, raw in enumerate(_lines(path), start=1):
        record = parse_line(str(path), number, raw)
        if record is BLANK:
            continue
        if not isinstance(record, dict) or "id" not in record:
            raise ConfigError(
                f"{path}:{number} is a line bon did not write; pass --overwrite to start over"
            )
        key = str(record["id"])
        if key in seen or not keep(key, record):
            dropped.append(key)
            continue
        seen.add(key)
        order.append(key)
        kept_lines.append(number)
    if dropped:
        wanted = set(kept_lines)
        replace_atomically(path, (raw for n, raw in enumerate(_lines(path), 1) if n in wanted))
    return ResumableOutput(path, order, dropped)


def _lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        yield from handle


def _id_of(raw: bytes) -> str:
    return str(json.loads(raw.decode("utf-8"))["id"])


def _cut_partial_line(path: Path) -> None:
    """Truncate `path` after its last newline (a write cut short by a kill)."""
    try:
        with open(path, "rb+") as handle:
            size = handle.seek(0, os.SEEK_END)
            end = size
            while end > 0:
                start = max(0, end - 65536)
                handle.seek(start)
                chunk = handle.read(end - start)
                newline = chunk.rfind(b"\n")
                if newline >= 0:
                    end = start + newline + 1
                    break
                end = start
            if end < size:
                handle.truncate(end)
                handle.flush()
                os.fsync(handle.fileno())
    except OSError as exc:
        raise write_error(path, exc) from None
