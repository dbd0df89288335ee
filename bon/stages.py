"""The stages: what the generator, the reranker and the selector have in common.

A `Stage` is a record check, a batching cost, a batch function and a configuration; the
runner (`bon.runner`) streams a file or a list of records through one. The factories here wrap
the generator, the reranker and the selector; `chain` joins two stages into one pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bon import prune, records
from bon.cost import GENERATE, PRUNE, SCORE, TOTAL
from bon.generator import GenerateOptions, Generator
from bon.records import RecordProblem
from bon.reranker import Reranker
from bon.scorers import ScoreOptions
from bon.select import SelectOptions, select_record

if TYPE_CHECKING:
    from bon.engines import Engine
    from bon.progress import Progress


@dataclass
class Stage:
    """One step of the pipeline.

    `check` raises `RecordProblem` for a record the stage cannot take; `process` returns one
    element per record of its batch, in order: the output record, or a `RecordProblem` when
    that record failed (it may also raise `RecordError` for a batch it cannot finish); `cost`
    is a record's share of `budget`, the work per batch (sequences decoded at once).

    The progress bar counts `unit`s, `units(record)` per record; `watch` hands the stage the
    bar to report to while a batch runs (None: nothing to report to). `cost_parts` names the
    parts of a record's `cost` the stage adds (`bon.cost`).
    `older_configs` are configurations earlier versions recorded for what `config` makes (an
    output recorded with one resumes as this stage); `config_advice` pairs configurations of
    outputs made some other way with how to resume them (`bon.outputs.open_output`).
    """

    name: str
    check: Callable[[Any], None]
    process: Callable[[list[dict]], Sequence[dict | RecordProblem]]
    config: dict[str, Any]
    cost: Callable[[dict], int] = lambda record: 1
    budget: int = 1
    close: Callable[[], None] = lambda: None
    summary: Callable[[], dict[str, Any]] = dict
    unit: str = "rec"
    units: Callable[[dict], int] = lambda record: 1
    watch: Callable[[Progress | None], None] = lambda progress: None
    cost_parts: tuple[str, ...] = ()
    older_configs: Sequence[dict[str, Any]] = ()
    config_advice: Sequence[tuple[dict[str, Any], str]] = ()


def generate_stage(
    options: GenerateOptions,
    engine: Engine | None = None,
    scoring: ScoreOptions | None = None,
    scoring_engine: Engine | None = None,
) -> Stage:
    """The generate stage; `engine`, when given, is shared instead of loaded (and left open).
    With `options.prune_at`, candidates are pruned as they decode (`bon.prune`) by `prune_by`,
    else by the first scorer of `scoring` (the score stage's options, whose model and options
    the prune scorer takes), on `scoring_engine` when given."""
    pruning = prune.score_options(options, scoring)
    pruner = None if pruning is None else prune.Pruner(pruning, scoring_engine)
    generator = Generator(options, engine, pruner)

    def watch(progress: Progress | None) -> None:
        generator.progress = progress

    return Stage(
        "generate",
        records.check_prompt,
        generator.process,
        generator.config(),
        cost=lambda record: options.n,
        budget=options.n if options.samples_alone() else options.batch_size,
        close=generator.close,
        watch=watch,
        cost_parts=(GENERATE, PRUNE) if pruner is not None else (GENERATE,),
        older_configs=generator.older_configs(),
        config_advice=generator.config_advice(),
    )


SCORE_POOL = 4
"""Engine batches of candidates per score-stage batch: the engine sorts the pool by length into
its own batches of `batch_size`, and cached rescoring pays each batch's fixed costs less often."""


def score_stage(options: ScoreOptions, engine: Engine | None = None) -> Stage:
    """The score stage; `engine`, when given, is shared instead of loaded (and left open)."""
    reranker = Reranker(options, engine)

    def check(record: Any) -> None:
        """The record's candidates, then what its scorers need."""
        records.check_candidates(record)
        reranker.check(record)

    def watch(progress: Progress | None) -> None:
        reranker.progress = progress

    return Stage(
        "score",
        check,
        reranker.process,
        reranker.config(),
        cost=lambda record: len(records.candidates(record)),
        budget=SCORE_POOL * options.batch_size,
        close=reranker.close,
        summary=reranker.summary,
        unit="score",
        units=lambda record: len(records.candidates(record)) * len(options.scorers),
        watch=watch,
        cost_parts=(SCORE,),
    )


def select_stage(options: SelectOptions) -> Stage:
    def process(batch: list[dict]) -> list[dict]:
        return [select_record(r, options) for r in batch]

    return Stage(
        "select",
        lambda record: records.check_scored(record, options.score_for(record)),
        process,
        {"stage": "select", "by": options.by, "keep_all": options.keep_all},
        budget=64,
        cost_parts=(TOTAL,),
    )


def chain(first: Stage, second: Stage) -> Stage:
    """`second` applied to what `first` returns, as one stage (input checked by `first`)."""

    def process(batch: list[dict]) -> list[dict | RecordProblem]:
        firsts = first.process(batch)
        done = [r for r in firsts if not isinstance(r, RecordProblem)]
        seconds = iter(second.process(done) if done else [])
        return [r if isinstance(r, RecordProblem) else next(seconds) for r in firsts]

    def close() -> None:
        first.close()
        second.close()

    def watch(progress: Progress | None) -> None:
        first.watch(progress)
        second.watch(None)  # the bar counts the first stage's units

    return Stage(
        f"{first.name}+{second.name}",
        first.check,
        process,
        {"stages": [first.config, second.config]},
        cost=first.cost,
        budget=first.budget,
        close=close,
        summary=lambda: {**first.summary(), **second.summary()},
        unit=first.unit,
        units=first.units,
        watch=watch,
        cost_parts=first.cost_parts + second.cost_parts,
        older_configs=[{"stages": [older, second.config]} for older in first.older_configs]
        + [{"stages": [first.config, older]} for older in second.older_configs],
        config_advice=[({"stages": [c, second.config]}, a) for c, a in first.config_advice]
        + [({"stages": [first.config, c]}, a) for c, a in second.config_advice],
    )
