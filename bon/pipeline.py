"""Runs a stage over a stream of records, in batches, with resume and per-record errors.

A stage is what the generator, the reranker and the selector have in common: a record check,
a batching cost, a batch function and a configuration. `run_file` validates the whole input
before any model loads (so a typo on line 90,000 fails in a second, not after hours), then
streams it, appending each finished batch to the output at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bon import records
from bon.errors import ConfigError, InputError, require
from bon.generator import GenerateOptions, Generator
from bon.jsonl import dumps, open_output, read_lines
from bon.records import RecordProblem
from bon.reranker import Reranker
from bon.scorers import ScoreOptions, higher_is_better
from bon.select import SelectOptions, select_record

log = logging.getLogger(__name__)

ON_ERROR = ("fail", "skip")


@dataclass
class Stage:
    """One step of the pipeline.

    `check` raises `RecordProblem` for a record the stage cannot take; `cost` is a record's
    share of `budget`, the work per batch (sequences decoded at once).
    """

    name: str
    check: Callable[[Any], None]
    process: Callable[[list[dict]], list[dict]]
    config: dict[str, Any]
    cost: Callable[[dict], int] = lambda record: 1
    budget: int = 1
    close: Callable[[], None] = lambda: None


def generate_stage(options: GenerateOptions) -> Stage:
    generator = Generator(options)
    return Stage(
        "generate",
        records.check_prompt,
        generator.process,
        generator.config(),
        cost=lambda record: options.n,
        budget=options.batch_size,
        close=generator.close,
    )


def score_stage(options: ScoreOptions) -> Stage:
    reranker = Reranker(options)
    return Stage(
        "score",
        lambda record: (records.check_candidates(record), reranker.check(record)),
        reranker.process,
        reranker.config(),
        cost=lambda record: len(records.candidates(record)),
        budget=options.batch_size,
        close=reranker.close,
    )


def select_stage(options: SelectOptions) -> Stage:
    direction = higher_is_better(options.score)

    def process(batch: list[dict]) -> list[dict]:
        return [select_record(r, options, direction) for r in batch]

    return Stage(
        "select",
        lambda record: records.check_scored(record, options.score),
        process,
        {"stage": "select", "by": options.score, "keep_all": options.keep_all},
        budget=64,
    )


def chain(first: Stage, second: Stage) -> Stage:
    """`second` applied to what `first` returns, as one stage (input checked by `first`)."""

    def close() -> None:
        first.close()
        second.close()

    return Stage(
        f"{first.name}+{second.name}",
        first.check,
        lambda batch: second.process(first.process(batch)),
        {"stages": [first.config, second.config]},
        cost=first.cost,
        budget=first.budget,
        close=close,
    )


@dataclass
class Report:
    """What a file run did: records written now, records found done, records skipped as bad."""

    output: str
    written: int = 0
    resumed: int = 0
    errors: int = 0
    error_file: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def run_records(stage: Stage, items: Iterable[dict], *, quiet: bool = True) -> list[dict]:
    """Run `stage` over in-memory records; a bad record raises `InputError` (line = position)."""
    valid = []
    for _line, item in _validated("<records>", enumerate(items, start=1), stage.check):
        if isinstance(item, InputError):
            raise item
        valid.append(item)
    try:
        return [r for batch in _batches(valid, stage, quiet) for r in stage.process(batch)]
    finally:
        stage.close()


def run_file(
    stage: Stage,
    input: str | Path,
    output: str | Path,
    *,
    on_error: str = "fail",
    overwrite: bool = False,
    quiet: bool = False,
) -> Report:
    """Run `stage` from the JSONL file `input` to `output`, resuming an earlier identical run.

    With `on_error="skip"`, bad records go to `<output>.errors.jsonl` (rewritten each run) and
    the run goes on; with "fail", the first bad record raises `InputError` before any work.
    """
    require(on_error in ON_ERROR, "on_error", f"one of {', '.join(ON_ERROR)}", on_error)
    input, output = str(input), str(output)
    if Path(input).resolve() == Path(output).resolve():
        raise ConfigError(f"the output {output} is the input file; choose another output path")
    total, bad = _precheck(stage, input, on_error)
    report = Report(output=output, errors=len(bad))
    _write_errors(output, bad, report)
    with open_output(output, stage.config, overwrite=overwrite) as out:
        pending = (
            r
            for _, r in _validated(input, read_lines(input), stage.check)
            if not isinstance(r, InputError) and str(r["id"]) not in out.done
        )
        report.resumed = len(out.done)
        if report.resumed:
            log.info("%s: %d records already done, resuming", output, report.resumed)
        try:
            for batch in _batches(
                pending, stage, quiet, total=total - report.resumed, desc=stage.name
            ):
                for record in stage.process(batch):
                    out.write(record)
                    report.written += 1
        finally:
            stage.close()
    return report


def _precheck(stage: Stage, input: str, on_error: str) -> tuple[int, list[InputError]]:
    total, bad = 0, []
    for _, item in _validated(input, read_lines(input), stage.check):
        if isinstance(item, InputError):
            if on_error == "fail":
                raise item
            bad.append(item)
        else:
            total += 1
    return total, bad


def _write_errors(output: str, bad: list[InputError], report: Report) -> None:
    path = Path(f"{output}.errors.jsonl")
    if not bad:
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for error in bad:
            handle.write(
                dumps({"file": error.path, "line": error.line, "error": error.problem}) + "\n"
            )
    report.error_file = str(path)
    log.warning("%d bad records skipped; see %s", len(bad), path)


def _validated(
    source: str, lines: Iterable[tuple[int, Any]], check: Callable[[Any], None]
) -> Iterator[tuple[int, dict | InputError]]:
    """Check each record and give it an id; yield problems as `InputError` values.

    Records without an id get one from their content; the k-th repeat of identical content gets
    the suffix "-k", so equal prompts stay distinct records.
    """
    seen: dict[str, int] = {}
    repeats: dict[str, int] = {}
    for line, record in lines:
        if isinstance(record, InputError):
            yield line, record
            continue
        try:
            check(record)
        except RecordProblem as problem:
            yield line, InputError(source, line, str(problem))
            continue
        if "id" not in record:
            base = records.content_id(record)
            repeats[base] = repeats.get(base, 0) + 1
            record = {"id": base if repeats[base] == 1 else f"{base}-{repeats[base]}", **record}
        key = str(record["id"])
        if key in seen:
            yield (
                line,
                InputError(source, line, f"duplicate id {key!r} (first on line {seen[key]})"),
            )
            continue
        seen[key] = line
        yield line, record


def _batches(
    items: Iterable[dict], stage: Stage, quiet: bool, total: int | None = None, desc: str = ""
) -> Iterator[list[dict]]:
    bar = tqdm(total=total, desc=desc, unit="rec", disable=quiet, dynamic_ncols=True)
    batch: list[dict] = []
    used = 0
    for item in items:
        batch.append(item)
        used += stage.cost(item)
        if used >= stage.budget:
            yield batch
            bar.update(len(batch))
            batch, used = [], 0
    if batch:
        yield batch
        bar.update(len(batch))
    bar.close()
