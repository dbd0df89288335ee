"""Shards of a file and their merge: work split across processes and machines, no cluster.

`--shard I/K` makes a run take only the records whose id hashes to shard I of K (SHA-256 of the
id, so every machine and Python agrees), and `merge` joins the shards' outputs back into one
file in input order, refusing duplicate or missing ids.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bon import records
from bon.codec import STDIO, dumps, read_lines
from bon.errors import ConfigError, InputError
from bon.outputs import Report, read_manifest, replace_atomically, write_manifest
from bon.records import validated


@dataclass(frozen=True)
class Shard:
    """Shard `index` (1-based) of `count`: the records whose id hashes to it."""

    index: int
    count: int

    def holds(self, record_id: str) -> bool:
        """Whether the record with id `record_id` belongs to this shard."""
        return shard_of(record_id, self.count) == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def shard_of(record_id: str, count: int) -> int:
    """The shard (1..count) of a record id: its SHA-256 modulo `count`, plus one."""
    digest = hashlib.sha256(str(record_id).encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") % count + 1


def valid_shard(text: str) -> bool:
    """Whether `text` is a shard "I/K" with 1 <= I <= K."""
    try:
        parse_shard(text)
    except ConfigError:
        return False
    return True


def parse_shard(text: str | None) -> Shard | None:
    """`"I/K"` (1 <= I <= K) as a `Shard`; None stays None."""
    if text is None:
        return None
    index, sep, count = str(text).partition("/")
    if sep and index.strip().isdigit() and count.strip().isdigit():
        shard = Shard(int(index), int(count))
        if 1 <= shard.index <= shard.count:
            return shard
    raise ConfigError(f"`shard` must be I/K with 1 <= I <= K (e.g. 1/4), got {text!r}")


def merge(
    shards: Sequence[str | Path], output: str | Path, *, input: str | Path | None = None
) -> Report:
    """Join shard outputs into `output`, in the order of the ids in `input` (any JSONL file
    with the records' ids or content, such as the prompts), or sorted by id without one.

    Raises `InputError` for an id found twice (naming both places) or, with `input`, an id of
    `input` that no shard holds or a shard id `input` lacks; `ConfigError` when the shards were
    written with different configurations or one of them is incomplete. When the shards have
    manifests, `output` gets one too, so a later unsharded run with the same options resumes it.
    """
    if not shards:
        raise ConfigError("`shards` must name at least one shard output, got none")
    output = str(output)
    lines, places = _read_shards([str(s) for s in shards])
    order = _order(places, input)
    ordered = [lines[key] for key in order]
    manifest = _merged_manifest([str(s) for s in shards])
    if output == STDIO:
        sys.stdout.buffer.writelines(ordered)
        sys.stdout.buffer.flush()
    else:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(output, ordered)
        if manifest is not None:
            write_manifest(output, {**manifest, "complete": True, "merged_from": len(shards)})
    return Report(output="<stdout>" if output == STDIO else output, written=len(ordered))


def _read_shards(shards: list[str]) -> tuple[dict[str, bytes], dict[str, tuple[str, int]]]:
    """Each record's line by id, and where it was found (file, line)."""
    lines: dict[str, bytes] = {}
    places: dict[str, tuple[str, int]] = {}
    for shard in shards:
        for number, record in read_lines(shard):
            if isinstance(record, InputError):
                raise record
            if not isinstance(record, dict) or "id" not in record:
                raise InputError(shard, number, "not a bon output record (no `id`)")
            key = str(record["id"])
            if key in places:
                first, line = places[key]
                raise InputError(
                    shard,
                    number,
                    f"duplicate id {key!r} (also {first}:{line}); each id belongs in one shard: "
                    "merge the outputs of one sharded run (--shard I/K with the same K)",
                )
            places[key] = (shard, number)
            lines[key] = (dumps(record) + "\n").encode("utf-8")
    return lines, places


def _order(places: dict[str, tuple[str, int]], input: str | Path | None) -> list[str]:
    if input is None:
        return sorted(places, key=lambda key: (not key.isdigit(), len(key), key))
    order = [
        str(record["id"])
        for _, record in validated(str(input), read_lines(input), _any_record)
        if not isinstance(record, InputError)
    ]
    missing = [key for key in order if key not in places]
    if missing:
        raise InputError(
            str(input),
            None,
            f"{len(missing)} id(s) are in no shard (first: {missing[0]!r}); run the missing "
            f"shards (--shard I/K) or pass them all to merge",
        )
    extra = set(places) - set(order)
    if extra:
        key = min(extra)
        shard, line = places[key]
        raise InputError(shard, line, f"id {key!r} is not in {input}; merge against its input")
    return order


def _any_record(record: Any) -> None:
    if not isinstance(record, dict):
        raise records.RecordProblem(f"expected a JSON object, got {type(record).__name__}")


def _merged_manifest(shards: list[str]) -> dict | None:
    """The shards' common manifest (None when none has one)."""
    found = [(shard, read_manifest(shard)) for shard in shards]
    with_manifest = [(s, m) for s, m in found if m is not None]
    if not with_manifest:
        return None
    if len(with_manifest) < len(found):
        shard = next(s for s, m in found if m is None)
        raise ConfigError(f"{shard} has no manifest but other shards do; merge outputs of one run")
    for shard, manifest in with_manifest:
        if manifest.get("complete") is not True:
            raise ConfigError(f"{shard} is incomplete (its run has not finished); rerun it first")
    hashes = {m["config_hash"] for _, m in with_manifest}
    if len(hashes) > 1:
        raise ConfigError(
            "the shards were written with different configurations (see their manifests); "
            "rerun them with the same options"
        )
    first = with_manifest[0][1]
    return {"config_hash": first["config_hash"], "config": first.get("config")}
