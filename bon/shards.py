"""Work across processes and machines: shards of a file, their merge, and Ray Data pipelines.

Shards need no cluster: `--shard I/K` makes a run take only the records whose id hashes to
shard I of K (SHA-256 of the id, so every machine and Python agrees), and `merge` joins the
shards' outputs back into one file in input order, refusing duplicate or missing ids.

With Ray (`--ray [ADDRESS]`), the driver still reads, checks and resumes the files itself and
writes every output record through the same writer as a local run; only the batches travel:
they are written to a spool file, read back with `ray.data.read_json`, and run by
`map_batches` on a pool of actors that each hold the stage's model. Each batch is the one a
local run would form, so outputs equal the local run's for the same seeds, and results are
keyed by batch, so an actor that dies and is restarted neither loses nor duplicates records.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bon import records
from bon.errors import ConfigError, EngineError, InputError
from bon.outputs import (
    STDIO,
    dumps,
    read_lines,
    read_manifest,
    replace_atomically,
    write_manifest,
)
from bon.records import RecordProblem
from bon.runner import Pair, Report, Stage, run_batch, validated

log = logging.getLogger(__name__)


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
        import sys

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


LOCAL = "local"  # `--ray` alone: a new Ray cluster inside this process


class RayRunner:
    """A `bon.runner.Runner` that runs batches as a Ray Data pipeline.

    `build` makes the stage (it must pickle: each actor calls it once and keeps the model);
    `address` is `local` (a new cluster in this process, sized to this machine) or anything
    `ray.init(address=...)` takes ("auto", "ray://head:10001"); `actors` actors reserve `cpus`
    CPUs and `gpus` GPUs each. The batch spool goes to `spool_dir` (the output's folder, which
    a multi-machine cluster must share, like the input), or a temporary folder. Ray Data
    restarts a dead actor and reruns its batch (its default for actor pools); results are
    keyed by batch, so a batch that comes back twice is written once.
    """

    def __init__(
        self,
        build: Callable[[], Stage],
        *,
        address: str = LOCAL,
        actors: int = 2,
        cpus: float = 0.5,
        gpus: float = 0.0,
        quiet: bool = False,
        spool_dir: str | Path | None = None,
    ) -> None:
        self.build = build
        self.address = address
        self.actors = actors
        self.cpus = cpus
        self.gpus = gpus
        self.quiet = quiet
        self.spool_dir = spool_dir

    def __call__(
        self, stage: Stage, batches: Iterable[list[Pair]]
    ) -> Iterator[tuple[list[Pair], list]]:
        batches = list(batches)
        if not batches:
            return
        ray = _connect(self.address, self.quiet)
        with tempfile.TemporaryDirectory(prefix=".bon-ray-", dir=self.spool_dir) as folder:
            spool = _spool(Path(folder) / "batches.jsonl", batches)
            dataset = ray.data.read_json(str(spool), lines=True).map_batches(
                _StageActor,
                fn_constructor_args=(self.build,),
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=self.actors),
                num_cpus=self.cpus,
                num_gpus=self.gpus or None,
            )
            done: set[int] = set()
            for row in dataset.iter_rows():
                number = int(row["batch"])
                if number in done:
                    continue
                done.add(number)
                yield batches[number], [_decode(o) for o in json.loads(row["outcomes"])]
        if len(done) < len(batches):
            missing = len(batches) - len(done)
            raise EngineError(
                f"the Ray pipeline returned {missing} of {len(batches)} batches short; "
                "rerun the same command to resume"
            )


def _connect(address: str, quiet: bool) -> Any:
    """Ray, connected to `address` (starting a local cluster for `local`)."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--ray needs Ray Data: pip install 'ray[data]' (bon is tested with 2.60.0)"
        ) from None
    if not ray.is_initialized():
        common: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": not quiet,
            "logging_level": logging.WARNING if quiet else logging.INFO,
        }
        if address == LOCAL:
            # A small object store: records are small, and /dev/shm often is too.
            ray.init(num_cpus=os.cpu_count(), object_store_memory=256 * 2**20, **common)
        else:
            ray.init(address=address, **common)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = not quiet
    return ray


def _spool(path: Path, batches: list[list[Pair]]) -> Path:
    """Write one line per batch: {"batch": k, "records": the batch's records as JSON text}."""
    with open(path, "w", encoding="utf-8") as handle:
        for number, batch in enumerate(batches):
            handle.write(dumps({"batch": number, "records": dumps([r for _, r in batch])}) + "\n")
    return path


class _StageActor:
    """One Ray actor: builds the stage (loading its model) once, then runs batches."""

    def __init__(self, build: Callable[[], Stage]) -> None:
        self.stage = build()
        self.first = True

    def __call__(self, rows: dict[str, Any]) -> dict[str, list]:
        numbers, outcomes = [], []
        for number, text in zip(rows["batch"], rows["records"], strict=True):
            results = run_batch(self.stage, json.loads(text), first=self.first)
            self.first = False
            numbers.append(int(number))
            outcomes.append(dumps([_encode(r) for r in results]))
        return {"batch": numbers, "outcomes": outcomes}


def _encode(outcome: dict | RecordProblem) -> dict:
    if isinstance(outcome, RecordProblem):
        return {"problem": str(outcome)}
    return {"record": outcome}


def _decode(encoded: dict) -> dict | RecordProblem:
    if "problem" in encoded:
        return RecordProblem(encoded["problem"])
    return encoded["record"]
