"""Reading a JSONL file that another bon run is still writing (`--follow`).

A bon writer appends whole lines, holds `<file>.lock` (with its pid) while it runs, and keeps
`complete: false` in the file's manifest until every record is in place (`bon.outputs`). A
follower reads each full line as it lands (a partial last line waits for its newline) and stops
once the manifest says complete and the file is read to its end. It polls instead of using
inotify, so it also works on network file systems. A writer that rewrites the file (a resume
that drops records, or the final reordering) replaces it atomically: the follower then reopens
it and skips the ids it has already given. A file whose writer stopped before finishing (no
live lock holder, manifest incomplete) raises rather than waiting forever.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bon.codec import parse_lines
from bon.errors import BonError
from bon.outputs import lock_path, read_manifest

log = logging.getLogger(__name__)

POLL_S = 0.1
GRACE_S = 2.0  # how long a file may look abandoned before the follower gives up on it


def follow_lines(path: str | Path, *, poll: float = POLL_S) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed value) for each line of `path` as its writer appends it, like
    `bon.codec.read_lines`, until the writer marks the file complete.

    Raises `BonError` when the file has no manifest (no bon command writes it) or its writer
    stopped without finishing.
    """
    path = Path(path)
    given: set[str] = set()
    number = 0
    _wait_for(path, poll)
    while True:
        with open(path, "rb") as handle:
            inode = os.fstat(handle.fileno()).st_ino
            for number, value in parse_lines(str(path), _tail(path, handle, inode, poll)):
                key = value.get("id") if isinstance(value, dict) else None
                if key is not None:
                    if str(key) in given:
                        continue  # already given before the writer replaced the file
                    given.add(str(key))
                yield number, value
        if _replaced(path, inode) is None:  # ended because the writer finished
            return


def _wait_for(path: Path, poll: float) -> None:
    """Wait until `path` and its manifest exist, or fail if no bon command can be writing it."""
    logged = False
    while not (path.exists() and read_manifest(path) is not None):
        if path.exists() and not writer_alive(path):
            time.sleep(GRACE_S)  # a writer may be between creating the file and its manifest
            if read_manifest(path) is None and not writer_alive(path):
                raise BonError(
                    f"{path} has no manifest, so no bon command is writing it: there is nothing "
                    "to follow; drop --follow"
                )
        if not logged:
            log.info("waiting for %s to be written", path)
            logged = True
        time.sleep(poll)


def _tail(path: Path, handle: Any, inode: int, poll: float) -> Iterator[bytes]:
    """Whole lines of `handle` as they are appended; ends when the writer has finished (and the
    file is read to its end) or has replaced the file."""
    partial = b""
    abandoned_since: float | None = None
    while True:
        chunk = handle.readline()
        if chunk:
            partial += chunk
            if partial.endswith(b"\n"):
                yield partial
                partial = b""
            continue
        # At the end for now: check the writer first, then the manifest (it marks the file
        # complete before it lets the lock go), then whether anything arrived meanwhile.
        alive = writer_alive(path)
        complete = (read_manifest(path) or {}).get("complete") is True
        if _replaced(path, inode):
            return
        if complete or not alive:
            rest = handle.read()
            if rest:
                partial += rest
                *whole, partial = partial.split(b"\n")
                yield from (line + b"\n" for line in whole)
                continue
        if complete:
            if partial:
                yield partial  # a last line without its newline: the writer is done with it
            return
        if alive:
            abandoned_since = None
        elif abandoned_since is None:
            abandoned_since = time.monotonic()
        elif time.monotonic() - abandoned_since > GRACE_S:
            raise BonError(
                f"{path} is incomplete and no bon command is writing it any more; rerun the "
                "command that writes it (it resumes where it stopped), then this one"
            )
        time.sleep(poll)


def _replaced(path: Path, inode: int) -> bool | None:
    """Whether `path` now names another file than `inode` (None when it is the same)."""
    try:
        return True if os.stat(path).st_ino != inode else None
    except FileNotFoundError:
        return True


def writer_alive(path: str | Path) -> bool:
    """Whether a live process holds the lock of `path` (its pid is in `<path>.lock`)."""
    try:
        text = lock_path(path).read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return False
    if not text.isdigit():
        return True  # the lock file is being written: its holder is starting
    try:
        os.kill(int(text), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
