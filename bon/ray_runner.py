"""Ray Data pipelines: a `Runner` that runs a stage's batches on a pool of Ray actors.

With Ray (`--ray [ADDRESS]`), the driver still reads, checks and resumes the files itself and
writes every output record through the same writer as a local run; only the batches travel:
they are written to a spool file, read back with `ray.data.read_json`, and run by
`map_batches` on a pool of actors that each hold the stage's model. Each batch is the one a
local run would form, so outputs equal the local run's for the same seeds, and results are
keyed by batch, so an actor that dies and is restarted neither loses nor duplicates records.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from bon.codec import dumps
from bon.errors import ConfigError, EngineError
from bon.records import RecordProblem
from bon.runner import Pair, run_batch
from bon.stages import Stage

LOCAL = "local"  # `--ray` alone: a new Ray cluster inside this process


class RayRunner:
    """A `bon.runner.Runner` that runs batches as a Ray Data pipeline.

    `build` makes the stage (it must pickle: each actor calls it once and keeps the model);
    `address` is `local` (a new cluster in this process, sized to this machine) or anything
    `ray.init(address=...)` takes ("auto", "ray://head:10001"); `actors` actors reserve `cpus`
    CPUs and `gpus` GPUs each. These have no defaults here: `bon.api.FileOptions` declares
    them (`ray`, `ray_actors`, `ray_cpus`, `ray_gpus`). The batch spool goes to `spool_dir`
    (the output's folder, which a multi-machine cluster must share, like the input), or a
    temporary folder. Ray Data restarts a dead actor and reruns its batch (its default for
    actor pools); results are keyed by batch, so a batch that comes back twice is written once.
    """

    def __init__(
        self,
        build: Callable[[], Stage],
        *,
        address: str,
        actors: int,
        cpus: float,
        gpus: float,
        quiet: bool,
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
