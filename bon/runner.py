"""Runs a stage over a stream of records, in batches, with resume and per-record errors.

`run_file` validates the whole input before any model loads (so a typo on line 90,000 fails in
a second, not after hours), then streams it, appending each finished batch to the output at
once; `run_records` does the same in memory. Where the batches run is the `Runner`'s choice:
here (`run_locally`) or on Ray actors (`bon.ray_runner`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bon import records
from bon.codec import STDIO, dumps, read_lines, stdout_sink
from bon.cost import has_parts, strip
from bon.errors import BonError, ConfigError, InputError, RecordError, require
from bon.follow import follow_lines
from bon.outputs import (
    Report,
    append_line,
    locked,
    mark_complete,
    open_output,
    replace_atomically,
    write_error,
)
from bon.progress import Progress
from bon.records import RecordProblem, validated
from bon.shards import Shard
from bon.stages import Stage

log = logging.getLogger(__name__)

ON_ERROR = ("fail", "skip")

Pair = tuple[int, dict]
"""A record and its line number in the input."""


def run_records(stage: Stage, items: Iterable[dict], *, quiet: bool = True) -> list[dict]:
    """Run `stage` over in-memory records; a bad or failed record raises `InputError`
    (line = its 1-based position)."""
    valid: list[Pair] = []
    for line, item in validated("<records>", enumerate(items, start=1), stage.check):
        if isinstance(item, InputError):
            raise item
        valid.append((line, item))
    out: list[dict] = []
    try:
        total = sum(stage.units(record) for _, record in valid)
        for number, batch in enumerate(_batches(valid, stage, quiet, total=total)):
            outcomes = run_batch(stage, [r for _, r in batch], first=number == 0)
            for (line, _), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, RecordProblem):
                    raise InputError("<records>", line, str(outcome))
                out.append(outcome)
        return out
    finally:
        stage.close()


Runner = Callable[[Stage, Iterable[list[Pair]]], Iterator[tuple[list[Pair], list]]]
"""Runs a stage's batches somewhere; yields each batch with its outcomes (`Stage.process`'s
elements), every batch exactly once, in any order."""


def run_locally(stage: Stage, batches: Iterable[list[Pair]]) -> Iterator[tuple[list[Pair], list]]:
    """The default `Runner`: each batch in this process, in order."""
    for number, batch in enumerate(batches):
        yield batch, run_batch(stage, [r for _, r in batch], first=number == 0)


@dataclass
class _Job:
    """One file run: the stage, where its records come from and go, and how."""

    stage: Stage
    input: str
    output: str
    on_error: str
    overwrite: bool
    quiet: bool
    shard: Shard | None
    runner: Runner

    @property
    def source(self) -> str:
        """The input's name in messages."""
        return "<stdin>" if self.input == STDIO else self.input

    def takes(self, record: dict) -> bool:
        """Whether this run (its shard) takes the record."""
        return self.shard is None or self.shard.holds(str(record["id"]))

    def fail_or_skip(self, problem: InputError, report: Report) -> None:
        if self.on_error == "fail":
            raise problem
        report.errors += 1
        log.warning("%s (skipped)", problem)


def run_file(
    stage: Stage,
    input: str | Path,
    output: str | Path,
    *,
    on_error: str = "fail",
    overwrite: bool = False,
    quiet: bool = False,
    follow: bool = False,
    shard: Shard | None = None,
    runner: Runner = run_locally,
) -> Report:
    """Run `stage` from the JSONL file `input` to `output`, resuming an earlier identical run.

    Only one process may write `output` at a time (others get a `ConfigError`). Each output
    record keeps a fingerprint of the input record it came from, so a resume redoes records
    whose input changed and drops those that left the input; the finished file lists records
    in input order. With `on_error="skip"`, bad input records and records the stage failed on
    go to `<output>.errors.jsonl` and the run goes on (failed ones are retried by the next
    run); with "fail", a bad input record raises `InputError` before any work, and a failed
    record raises it after everything before it is written. `overwrite` starts over only when
    the configuration changed; otherwise the run resumes.

    `input` "-" is stdin (read whole before the run, which checks it all first); `output` "-"
    is stdout, written batch by batch as the input streams in, with no resume, lock or manifest
    (a bad record then fails or is skipped when it is reached). `follow` reads an input that
    another bon run is still writing, until its manifest marks it complete (`bon.follow`).
    `shard` keeps the records of one shard; `runner` runs the batches (default: here).
    """
    require(on_error in ON_ERROR, "on_error", f"one of {', '.join(ON_ERROR)}", on_error)
    job = _Job(stage, str(input), str(output), on_error, overwrite, quiet, shard, runner)
    if follow and job.input == STDIO:
        raise ConfigError("--follow reads a file another bon command writes, not stdin (-)")
    try:
        if job.output == STDIO:
            return _run_to_stdout(job, follow_lines(job.input) if follow else read_lines(job.input))
        _check_paths(job, follow)
        with locked(job.output):
            followed = _follow(job) if follow else 0
            report = _run_locked(job, _replayable(job.input))
    finally:
        stage.close()
    # What the follow pass wrote counts as written now, not as found done.
    moved = min(followed, report.resumed)
    report.written += moved
    report.resumed -= moved
    return report


def _check_paths(job: _Job, follow: bool) -> None:
    if job.input == STDIO:
        return
    if Path(job.input).resolve() == Path(job.output).resolve():
        raise ConfigError(f"the output {job.output} is the input file; choose another output path")
    if Path(job.input).exists() and not Path(job.input).is_file() and not follow:
        raise ConfigError(
            f"the input {job.input} is not a regular file (a pipe?); bon reads its input twice, "
            "to check it and then to run it: save it to a file first, or pass it as - (stdin)"
        )


def _replayable(input: str) -> Callable[[], Iterable[tuple[int, Any]]]:
    """A function giving the input's lines afresh on each call (stdin is read once, kept)."""
    if input != STDIO:
        return lambda: read_lines(input)
    lines = list(read_lines(STDIO))
    return lambda: iter(lines)


def _run_to_stdout(job: _Job, lines: Iterable[tuple[int, Any]]) -> Report:
    """Stream records to stdout, flushing after each batch: no resume, lock or manifest."""
    report = Report(output="<stdout>")
    stage = job.stage

    def good() -> Iterator[Pair]:
        for line, record in validated(job.source, lines, stage.check):
            if isinstance(record, InputError):
                job.fail_or_skip(record, report)
            elif job.takes(record):
                yield line, record

    with stdout_sink() as sink:
        batches = _batches(good(), stage, job.quiet, desc=stage.name)
        for batch, outcomes in job.runner(stage, batches):
            for (line, record), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, RecordProblem):
                    job.fail_or_skip(InputError(job.source, line, str(outcome)), report)
                    continue
                stamped = _stamped(outcome, stage.name, records.input_fingerprint(record))
                try:
                    sink.write((dumps(stamped) + "\n").encode("utf-8"))
                    sink.flush()
                except OSError as exc:
                    raise write_error("stdout", exc) from None
                report.written += 1
                report.unselected += _unselected(outcome)
    report.extra.update(stage.summary())
    return report


def _follow(job: _Job) -> int:
    """Process the records of a growing input as they arrive, appending them to the output;
    returns how many it wrote.

    Ids the output already holds are skipped and bad or failed records are left out: the full
    pass that follows once the input is complete checks fingerprints, retries and reports them.
    """
    stage = job.stage
    written = 0
    costs = _CostFormat(stage)

    def keep(key: str, record: dict) -> bool:
        costs.saw(record)
        return True

    with open_output(
        job.output, stage.config, overwrite=job.overwrite, keep=keep, **_resumes(stage)
    ) as out:
        pending = (
            (line, record)
            for line, record in validated(job.source, follow_lines(job.input), stage.check)
            if not isinstance(record, InputError)
            and job.takes(record)
            and str(record["id"]) not in out.done
        )
        batches = _batches(pending, stage, job.quiet, desc=f"{stage.name} (following)")
        for batch, outcomes in job.runner(stage, batches):
            for (line, record), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, RecordProblem):
                    if job.on_error == "fail":
                        raise InputError(job.source, line, str(outcome))
                    continue
                fingerprint = records.input_fingerprint(record)
                out.write(_stamped(costs(outcome), stage.name, fingerprint))
                written += 1
    return written


def _resumes(stage: Stage) -> dict[str, Any]:
    """`open_output`'s arguments for the earlier configurations `stage` knows of."""
    return {"older": stage.older_configs, "advice": stage.config_advice}


def _run_locked(job: _Job, lines: Callable[[], Iterable[tuple[int, Any]]]) -> Report:
    stage, output = job.stage, job.output
    wanted, units, bad = _precheck(job, lines())
    report = Report(output=output, errors=len(bad))
    errors = _ErrorFile(output, report)
    errors.start(bad)
    unselected: set[str] = set()
    costs = _CostFormat(stage)
    keep = _keeper(stage, wanted, unselected, costs)
    with open_output(
        output, stage.config, overwrite=job.overwrite, keep=keep, **_resumes(stage)
    ) as out:
        _log_resume(output, out.dropped, wanted, report)
        report.resumed = len(out.done)
        report.unselected = len(unselected & out.done)
        pending = (
            (line, r)
            for line, r in validated(job.source, lines(), stage.check)
            if not isinstance(r, InputError)
            and str(r["id"]) in wanted
            and str(r["id"]) not in out.done
        )
        total = sum(n for key, n in units.items() if key not in out.done)
        batches = _batches(pending, stage, job.quiet, total=total, desc=stage.name)
        for batch, outcomes in job.runner(stage, batches):
            for (line, record), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, RecordProblem):
                    problem = InputError(job.source, line, str(outcome))
                    if job.on_error == "fail":
                        raise problem
                    errors.add(problem, record["id"])
                    continue
                out.write(_stamped(costs(outcome), stage.name, wanted[str(record["id"])]))
                report.written += 1
                report.unselected += _unselected(outcome)
        if out.finish(list(wanted)):
            log.info("%s: records put back in input order", output)
    mark_complete(output)
    report.extra.update(stage.summary())
    return report


def _keeper(
    stage: Stage, wanted: dict[str, str], unselected: set[str], costs: _CostFormat
) -> Callable[[str, dict], bool]:
    """Whether an output record of an earlier run still stands: its input is unchanged.
    Notes the ids of those kept with a null selection in `unselected`, and shows `costs` the
    records kept."""

    def keep(key: str, record: dict) -> bool:
        stamps = record.get("fingerprints")
        ok = isinstance(stamps, dict) and key in wanted and stamps.get(stage.name) == wanted[key]
        if ok and _unselected(record):
            unselected.add(key)
        if ok:
            costs.saw(record)
        return ok

    return keep


class _CostFormat:
    """Whether a file run writes its stage's costs (`Stage.cost_parts`, `bon.cost`): always,
    unless it resumes an output whose records were written without them (by a bon that kept no
    accounting), so a file never mixes the two and an old output resumes as the old code would
    have finished it. Calling it gives the record to write."""

    def __init__(self, stage: Stage) -> None:
        self.parts = stage.cost_parts
        self.without = False

    def saw(self, record: dict) -> None:
        """An earlier run's record, kept in the output."""
        if self.parts and not has_parts(record, self.parts):
            self.without = True

    def __call__(self, record: dict) -> dict:
        return strip(record, self.parts) if self.without else record


def _log_resume(output: str, dropped: list[str], wanted: dict[str, str], report: Report) -> None:
    changed = sum(key in wanted for key in dropped)
    report.redone = changed
    if changed:
        log.info("%s: %d records changed since the last run; redoing them", output, changed)
    if len(dropped) > changed:
        log.info("%s: dropped %d records no longer in the input", output, len(dropped) - changed)


def _stamped(record: dict, stage: str, fingerprint: str) -> dict:
    """`record` with the fingerprint of the input it was computed from."""
    stamps = record.get("fingerprints")
    stamps = dict(stamps) if isinstance(stamps, dict) else {}
    return {**record, "fingerprints": {**stamps, stage: fingerprint}}


def _unselected(record: dict) -> int:
    selected = record.get("selected")
    return int(isinstance(selected, dict) and selected.get("index") is None)


def run_batch(stage: Stage, batch: list[dict], *, first: bool) -> list[dict | RecordProblem]:
    """`stage.process(batch)`; on a record-level failure, retry the records one at a time.

    `RecordError` and exceptions outside the `BonError` family are record-level; other
    `BonError`s (config, engine) concern the whole job and propagate.
    """
    try:
        results = stage.process(batch)
    except Exception as exc:
        if not _record_level(exc):
            raise
        results = _one_by_one(stage, batch, exc, first)
    return _checked(stage, batch, results)


def _one_by_one(
    stage: Stage, batch: list[dict], exc: Exception, first: bool
) -> list[dict | RecordProblem]:
    """Each record of a failed batch alone; those that fail again become problems.

    When every record of the run's first batch fails alone with the same unexpected error, that
    is a bug in the job rather than in the records, and it is raised.
    """
    if len(batch) > 1:
        log.warning("a batch of %d records failed (%s); retrying one by one", len(batch), exc)
    failures: list[Exception] = []
    outcomes: list[dict | RecordProblem] = []
    for record in batch:
        if len(batch) == 1:
            error = exc
        else:
            try:
                result = stage.process([record])
            except Exception as alone:
                if not _record_level(alone):
                    raise
                error = alone
            else:
                outcomes.extend(_checked(stage, [record], result))
                continue
        failures.append(error)
        outcomes.append(RecordProblem(_describe(error)))
    if first and len(failures) == len(batch) and _same_unexpected(failures):
        raise failures[0]
    return outcomes


def _checked(
    stage: Stage, batch: list[dict], results: Sequence[dict | RecordProblem]
) -> list[dict | RecordProblem]:
    if len(results) != len(batch):
        raise RuntimeError(
            f"stage {stage.name} returned {len(results)} results for {len(batch)} records"
        )
    return list(results)


def _record_level(exc: Exception) -> bool:
    return isinstance(exc, RecordError) or not isinstance(exc, BonError)


def _describe(exc: Exception) -> str:
    if isinstance(exc, BonError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _same_unexpected(failures: list[Exception]) -> bool:
    if any(isinstance(f, RecordError) for f in failures):
        return False
    return len({(type(f), str(f)) for f in failures}) == 1


def _precheck(
    job: _Job, lines: Iterable[tuple[int, Any]]
) -> tuple[dict[str, str], dict[str, int], list[InputError]]:
    """Validate the whole input: fingerprints of the good records of this run's shard by id (in
    input order), their progress units (`Stage.units`), and the bad ones (raised at once under
    "fail")."""
    wanted: dict[str, str] = {}
    units: dict[str, int] = {}
    bad: list[InputError] = []
    for _, item in validated(job.source, lines, job.stage.check):
        if isinstance(item, InputError):
            if job.on_error == "fail":
                raise item
            bad.append(item)
        elif job.takes(item):
            wanted[str(item["id"])] = records.input_fingerprint(item)
            units[str(item["id"])] = job.stage.units(item)
    return wanted, units, bad


class _ErrorFile:
    """`<output>.errors.jsonl`: this run's bad input records, rewritten at the start, then the
    records that fail during the run, appended as they fail (a rerun retries those)."""

    def __init__(self, output: str, report: Report) -> None:
        self.path = Path(f"{output}.errors.jsonl")
        self.report = report

    def start(self, bad: list[InputError]) -> None:
        if not bad:
            try:
                self.path.unlink(missing_ok=True)
            except OSError as exc:
                raise write_error(self.path, exc) from None
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(self.path, [(dumps(_entry(e)) + "\n").encode() for e in bad])
        self.report.error_file = str(self.path)
        log.warning("%d bad records skipped; see %s", len(bad), self.path)

    def add(self, problem: InputError, record_id: str | int) -> None:
        append_line(self.path, {**_entry(problem), "id": record_id})
        self.report.errors += 1
        self.report.error_file = str(self.path)
        log.warning("%s (written to %s)", problem, self.path)


def _entry(error: InputError) -> dict[str, Any]:
    return {"file": error.path, "line": error.line, "error": error.problem}


def _batches(
    items: Iterable[Pair], stage: Stage, quiet: bool, total: int | None = None, desc: str = ""
) -> Iterator[list[Pair]]:
    """(line, record) pairs in batches of at most `stage.budget` cost, with the stage's
    progress bar (`total` of its units), which the stage moves while a batch runs."""
    progress = Progress(total, desc, stage.unit, quiet)
    stage.watch(None if quiet else progress)

    def release(batch: list[Pair]) -> Iterator[list[Pair]]:
        progress.start_batch(sum(stage.units(record) for _, record in batch))
        yield batch
        progress.end_batch()

    try:
        batch: list[Pair] = []
        used = 0
        for item in items:
            batch.append(item)
            used += stage.cost(item[1])
            if used >= stage.budget:
                yield from release(batch)
                batch, used = [], 0
        if batch:
            yield from release(batch)
    finally:
        stage.watch(None)
        progress.close()
