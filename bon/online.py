"""Best-of-N for one prompt at a time, with the models held between calls.

The file stages load a model, stream a file and free the model. A server, an lm-eval model and
an RL reward answer prompts as they come, so `BestOfN` loads the generator's and the reranker's
engines once and runs the same stage objects (`Generator`, `Reranker`, `select_record`) on each
call. A call takes several `Job`s: jobs with equal sampling options share one generator call,
and each job's candidates are then scored as one batch of their own, so the reranker tokens a
job reports are exactly those spent on it.

A job may override some options for itself (N, sampling, scorers, stop strings). `OVERRIDES`
is the one list of them, naming each option's declaration; a job's options are the
instance's rebuilt with `dataclasses.replace`, so a bad value gets the declaration's own
message, the one `bon run` gives.

With `prune_at`, candidates are pruned as they decode (`bon.prune`) by `prune_by`, else the
instance's first scorer (whatever scorers a job names), on the reranker's engine. Once a
single candidate of a job is left decoding, its text is the answer so far: `answer` passes it
on as it grows (`follow`), so that a server can stream it before selection ends.

Not thread-safe: use one `BestOfN` from one thread (the score cache is a SQLite connection).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

from bon import cost, prune, records
from bon.chat import Message
from bon.cost import Meter
from bon.engines import (
    Engine,
    load_engine,
    same_engine,
)
from bon.errors import BonError, ConfigError, RecordError
from bon.generator import GenerateOptions, Generator
from bon.options import fields, option, refuse_unknown, types_of, validate
from bon.records import COST, RecordProblem
from bon.reranker import Reranker
from bon.scorers import ScoreOptions, scorers
from bon.select import SelectOptions, select_record

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # typing_extensions comes with torch; setup.cfg names it for Python 3.10
    from typing_extensions import Unpack

log = logging.getLogger(__name__)

MAX_STOPS = 16


def _stops(value: Any) -> bool:
    return (
        isinstance(value, tuple)
        and len(value) <= MAX_STOPS
        and all(isinstance(s, str) and s for s in value)
    )


@dataclass(frozen=True)
class JobOptions:
    """What a job sets beside the generator's and the reranker's options."""

    stop: tuple[str, ...] = option(
        (),
        "Strings that end each candidate early: its text is cut before the first one it "
        "contains (finish reason stop), before it is scored.",
        check=_stops,
        constraint=f"a list of at most {MAX_STOPS} non-empty strings",
    )

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class Override:
    """An option that a job may set for itself: the options class that declares it, its name
    there, and the names a request body gives it under (OpenAI's first)."""

    owner: type
    name: str
    request: tuple[str, ...]

    @property
    def field(self) -> dataclasses.Field:
        """The option's declaration."""
        return next(f for f in fields(self.owner) if f.name == self.name)

    @property
    def hint(self) -> Any:
        """The option's type."""
        return types_of(self.owner)[self.name]

    def value(self, given: Any) -> Any:
        """`given` as the option holds it: a list or a lone string becomes a tuple for a tuple
        option (a request sends `stop: "."` or `scorer: ["a", "b"]`)."""
        if typing.get_origin(self.hint) is tuple:
            if isinstance(given, str):
                return (given,)
            if isinstance(given, list):
                return tuple(given)
        return given


OVERRIDES: tuple[Override, ...] = (
    Override(GenerateOptions, "n", ("best_of", "bon_n")),
    Override(GenerateOptions, "temperature", ("temperature",)),
    Override(GenerateOptions, "top_p", ("top_p",)),
    Override(GenerateOptions, "max_new_tokens", ("max_tokens", "max_completion_tokens")),
    Override(GenerateOptions, "seed", ("seed",)),
    Override(ScoreOptions, "scorers", ("scorer",)),
    Override(JobOptions, "stop", ("stop",)),
)
"""The options a job may override, the one list of them: `BestOfN.job` takes their names,
`bon serve`'s request model their request names (see `bon.entrypoints.request`)."""


class Overrides(TypedDict, total=False):
    """`BestOfN.job`'s keywords, one per `OVERRIDES` entry (None: the instance's value)."""

    n: int | None
    temperature: float | None
    top_p: float | None
    max_new_tokens: int | None
    seed: int | None
    scorers: Sequence[str] | None
    stop: Sequence[str] | None


@dataclass
class Usage:
    """Tokens one job cost: the generator's prompt (once) and its N completions, what the
    reranker read (its prompts and teacher-forced continuations) and wrote, and what pruning
    spent beyond decoding (`cost.prune`, 0 without pruning): its scorer's tokens read and
    written, and the prompt and partial tokens read again to continue the survivors."""

    generator_prompt: int = 0
    generator_completion: int = 0
    reranker_prompt: int = 0
    reranker_completion: int = 0
    pruner_prompt: int = 0
    pruner_completion: int = 0

    @property
    def prompt_tokens(self) -> int:
        return self.generator_prompt + self.reranker_prompt + self.pruner_prompt

    @property
    def completion_tokens(self) -> int:
        return self.generator_completion + self.reranker_completion + self.pruner_completion

    def to_dict(self) -> dict[str, dict[str, int]]:
        """The breakdown by stage."""
        return {
            "generator": {
                "prompt_tokens": self.generator_prompt,
                "completion_tokens": self.generator_completion,
            },
            "reranker": {
                "prompt_tokens": self.reranker_prompt,
                "completion_tokens": self.reranker_completion,
            },
            "pruner": {
                "prompt_tokens": self.pruner_prompt,
                "completion_tokens": self.pruner_completion,
            },
        }


@dataclass(frozen=True)
class Job:
    """One prompt to answer: its chat turns, the generator's options (N and sampling), the
    scorers, the score to select by, and stop strings that end each candidate early."""

    messages: list[Message]
    generate: GenerateOptions
    scorers: tuple[str, ...]
    by: str
    stop: tuple[str, ...] = ()

    def record(self) -> dict:
        """The prompt record the generator reads; its id comes from its content, so a repeated
        request with the same seed gets the same candidates."""
        record: dict[str, Any] = {"messages": self.messages}
        return {"id": records.content_id(record), **record}


@dataclass
class Answer:
    """A job's selected candidate, the selection's evidence and the tokens spent.

    `index` and `score` are None when no candidate got a finite score; `text` is then the
    first candidate's. `candidates` holds every candidate with its scores.
    """

    text: str
    finish_reason: str
    index: int | None
    score: float | None
    by: str
    candidates: list[dict]
    usage: Usage = field(default_factory=Usage)


Outcome = dict | Exception


class BestOfN:
    """Generator and reranker held in memory; `answer` runs generate, score and select.

    `generate`, `score` and `select` are the stages' option objects (as `bon run` takes
    them); a job may override the sampling options and the scorers (`job`). One engine serves
    both stages when they name the same model and engine settings (`same_engine`). With
    `generate.prune_at`, candidates are pruned as they decode by `prune_by`, else the first
    of `score.scorers`, on the reranker's engine (module docstring).
    """

    def __init__(
        self,
        generate: GenerateOptions | None = None,
        score: ScoreOptions | None = None,
        select: SelectOptions | None = None,
    ) -> None:
        self.generate = generate or GenerateOptions()
        self.score = score or ScoreOptions()
        self.select = select or SelectOptions()
        if self.select.adaptive:
            raise ConfigError(
                "`adaptive` is for `bon run` (and bon.run), not for requests answered one "
                "at a time (bon serve, lm-eval, rewards): drop it"
            )
        if self.select.by is not None and self.select.by not in self.score.scorers:
            raise ConfigError(
                f"`by` must name one of the scorers ({', '.join(self.score.scorers)}), "
                f"got {self.select.by!r}"
            )
        self._pruning = prune.score_options(self.generate, self.score)
        self._generator_engine: Engine | None = None
        self._scoring_engine: Meter | None = None
        self._one_engine = same_engine(self.generate, self.score)
        self._rerankers: dict[tuple[str, ...], Reranker] = {}
        self._pruning_scorer: prune.Pruner | None = None

    def load(self) -> None:
        """Load the generator and, when a default scorer or the pruning one runs a model, the
        reranker."""
        self._generator()
        pruning = self._pruning.scorers if self._pruning is not None else ()
        if _uses_model((*self.score.scorers, *pruning)):
            self._meter()

    def job(self, messages: list[Message], **overrides: Unpack[Overrides]) -> Job:
        """A validated job; each keyword (an `OVERRIDES` name) left out or None takes this
        instance's value. The options objects are rebuilt with `dataclasses.replace`, so a bad
        value raises the declaration's own `ConfigError` (the message `bon run` gives); bad
        messages raise `RecordError`."""
        try:
            records.check_prompt({"messages": messages})
        except RecordProblem as problem:
            raise RecordError(str(problem)) from None
        given = {k: v for k, v in overrides.items() if v is not None}
        refuse_unknown(given, (o.name for o in OVERRIDES))
        changes: dict[type, dict[str, Any]] = {
            GenerateOptions: {},
            ScoreOptions: {},
            JobOptions: {},
        }
        for override in OVERRIDES:
            if override.name in given:
                changes[override.owner][override.name] = override.value(given[override.name])
        generate = self.generate
        if changes[GenerateOptions]:
            generate = dataclasses.replace(generate, **changes[GenerateOptions])
        names = self.score.scorers
        if changes[ScoreOptions]:
            names = dataclasses.replace(self.score, **changes[ScoreOptions]).scorers
        job = JobOptions(**changes[JobOptions])
        by = self.select.by if self.select.by in names else names[0]
        return Job([dict(m) for m in messages], generate, names, by, job.stop)

    def answer(
        self, jobs: Sequence[Job], follow: Callable[[int, str], None] | None = None
    ) -> list[Answer | BonError | Exception]:
        """An `Answer` per job, in order, or the error of a job that failed alone:
        `RecordError` for a prompt the models cannot take, another exception for a failure.
        An engine or configuration failure of the whole call raises.

        When pruning, `follow(k, text)` is called from this thread with job k's answer so far
        each time it grows (maybe unchanged), once a single candidate of it is left decoding
        (`bon.prune.decode`); `text` stops short of the job's stop strings, so the selected
        answer starts with it unless selection picks another candidate (none got a finite
        score)."""
        out: list[Answer | BonError | Exception] = [RecordError("not run")] * len(jobs)
        groups: dict[str, list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(_sampling_key(job.generate), []).append(i)
        for members in groups.values():
            generator = Generator(jobs[members[0]].generate, self._generator(), self._pruner())
            generated = _sampled(
                generator,
                [jobs[i].record() for i in members],
                [jobs[i].generate.seed for i in members],
                _following(follow, jobs, members),
            )
            for i, outcome in zip(members, generated, strict=True):
                if isinstance(outcome, Exception):
                    out[i] = outcome
                else:
                    out[i] = self._finish(jobs[i], outcome)
        return out

    def close(self) -> None:
        """Close the score cache and free both models."""
        for reranker in self._rerankers.values():
            reranker.close()
        self._rerankers.clear()
        if self._pruning_scorer is not None:
            self._pruning_scorer.close()
            self._pruning_scorer = None
        if self._scoring_engine is not None and not self._one_engine:
            self._scoring_engine.inner.close()  # a Meter leaves its engine open
        if self._generator_engine is not None:
            self._generator_engine.close()
        self._generator_engine = self._scoring_engine = None

    def _generator(self) -> Engine:
        if self._generator_engine is None:
            self._generator_engine = load_engine(self.generate)
        return self._generator_engine

    def _meter(self) -> Meter:
        if self._scoring_engine is None:
            if self._one_engine:
                engine = self._generator().with_batch_size(self.score.batch_size)
            else:
                engine = load_engine(self.score)
            self._scoring_engine = Meter(lambda: engine, engine.options)
        return self._scoring_engine

    def _reranker(self, names: tuple[str, ...]) -> Reranker:
        if names not in self._rerankers:
            options = dataclasses.replace(self.score, scorers=names)
            engine = self._meter() if _uses_model(names) else None
            self._rerankers[names] = Reranker(options, engine=engine)
        return self._rerankers[names]

    def _pruner(self) -> prune.Pruner | None:
        """The pruning scorer, made on first use (in the thread that uses it: the score cache
        is a SQLite connection), on the reranker's engine; None without pruning."""
        if self._pruning is None:
            return None
        if self._pruning_scorer is None:
            engine = self._meter() if _uses_model(self._pruning.scorers) else None
            self._pruning_scorer = prune.Pruner(self._pruning, engine)
        return self._pruning_scorer

    def _finish(self, job: Job, record: dict) -> Answer | Exception:
        record["candidates"] = [_cut(c, job.stop) for c in record["candidates"]]
        pruning = record.get(COST, {}).get(cost.PRUNE, {})
        usage = Usage(
            generator_prompt=self._generator().prompt_tokens(job.messages),
            generator_completion=sum(c["tokens"] for c in record["candidates"]),
            pruner_prompt=pruning.get("read_tokens", 0) + pruning.get("prefill_tokens", 0),
            pruner_completion=pruning.get("generated_tokens", 0),
        )
        reranker = self._reranker(job.scorers)
        try:
            reranker.check(record)
        except RecordProblem as problem:
            return RecordError(str(problem))
        meter = self._scoring_engine
        if meter is not None:
            meter.take()
        (scored,) = settle(reranker.process, [record])
        if meter is not None:
            reading = meter.take()
            usage.reranker_prompt, usage.reranker_completion = reading.read, reading.generated
        if isinstance(scored, Exception):
            return scored
        chosen = select_record(scored, SelectOptions(by=job.by, keep_all=True))["selected"]
        index = chosen["index"]
        if index is None:
            log.warning("no candidate got a finite %s score; answering with the first", job.by)
        candidate = scored["candidates"][index or 0]
        return Answer(
            text=candidate["text"],
            finish_reason=candidate["finish_reason"],
            index=index,
            score=chosen["score"],
            by=job.by,
            candidates=scored["candidates"],
            usage=usage,
        )


def _uses_model(names: Sequence[str]) -> bool:
    return any(scorers.get(name).uses_model for name in names)


def _sampled(
    generator: Generator,
    batch: list[dict],
    seeds: list[int],
    follow: Callable[[int, str], None] | None = None,
) -> list[Outcome]:
    """`batch` through the generator in one call (`settle`), each record sampled from its own
    job's seed: jobs that differ in seed alone share the call. `follow(k, text)` follows
    record k of `batch`, whichever part of it a call holds (`Generator.process`)."""
    place = {id(record): k for k, record in enumerate(batch)}

    def process(part: list[dict]) -> list:
        places = [place[id(record)] for record in part]
        watch = None if follow is None else lambda i, text: follow(places[i], text)
        return generator.process(part, [seeds[k] for k in places], watch)

    return settle(process, batch)


def _following(
    follow: Callable[[int, str], None] | None, jobs: Sequence[Job], members: list[int]
) -> Callable[[int, str], None] | None:
    """`follow` (by job) as a group's generator calls it (by the job's place in `members`),
    the text stopped short of the job's stop strings (`_shown`)."""
    if follow is None:
        return None

    def watch(k: int, text: str) -> None:
        job = members[k]
        follow(job, _shown(text, jobs[job].stop))

    return watch


def _sampling_key(options: GenerateOptions) -> str:
    """What jobs sampled in one call must share: every sampling option but the seed."""
    return repr(sorted(dataclasses.replace(options.sampling(), seed=0).to_dict().items()))


def _stop_at(text: str, stop: tuple[str, ...]) -> int | None:
    """Where the first stop string in `text` begins, None when it holds none."""
    return min((i for i in (text.find(s) for s in stop) if i >= 0), default=None)


def _cut(candidate: dict, stop: tuple[str, ...]) -> dict:
    """The candidate ended before the first stop string it contains (finish reason "stop")."""
    end = _stop_at(candidate["text"], stop)
    if end is None:
        return candidate
    return {**candidate, "text": candidate["text"][:end], "finish_reason": "stop"}


def _shown(text: str, stop: tuple[str, ...]) -> str:
    """The part of a growing `text` that `_cut` keeps whatever follows it: the text before its
    first stop string, else short of an end that may begin one."""
    end = _stop_at(text, stop)
    if end is not None:
        return text[:end]
    held = max((k for s in stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
    return text[: len(text) - held]


def settle(process: Callable[[list[dict]], list], batch: list[dict]) -> list[Outcome]:
    """`process(batch)`, each record's problem as a `RecordError` in its place; when the batch
    fails as a whole for a record-level reason, the records are retried one at a time.
    Failures of the whole job (engine, configuration) propagate."""
    try:
        results = process(batch)
    except Exception as exc:
        if isinstance(exc, BonError) and not isinstance(exc, RecordError):
            raise
        if len(batch) == 1:
            return [exc]
        return [outcome for record in batch for outcome in settle(process, [record])]
    return [RecordError(str(r)) if isinstance(r, RecordProblem) else r for r in results]


def finite(value: float | None) -> float | None:
    """`value`, or None when it is missing or not finite (JSON has no NaN)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)
