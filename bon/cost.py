"""Compute accounting: the tokens and seconds each stage spends on each record.

Every stage writes what it spent under the record's `cost` field, one part per stage:

    "cost": {
      "generate": {"prompt_tokens": 31, "completion_tokens": 172, "seconds": 2.41},
      "score": {"flip-tokens": {"read_tokens": 2650, "generated_tokens": 0, "seconds": 1.9},
                "mbr": {"read_tokens": 0, "generated_tokens": 0, "seconds": 0.003}},
      "total": {"tokens": 2853, "seconds": 4.31}
    }

and every generated candidate carries its own share, `"cost": {"completion_tokens": 40,
"seconds": 0.56}`.

How a call's cost is shared out (one engine call serves a whole batch):

- **Generation.** The prompt is counted once per record (as it is read once with a shared
  prefix; engines without a tokenizer at hand, a server's, report 0). The seconds of one
  `Engine.generate` call (the model's load excluded) are split among all the candidates it
  made in proportion to their completion tokens (evenly when none has any); a record's seconds
  are its candidates' shares. With the hf engine's default one call per prompt, a record's
  seconds are exactly its call's.
- **Scoring.** Each scorer's call over a batch is measured through a `Meter` around the
  reranker's engine: tokens read (prompts and teacher-forced continuations, or whole
  conversations for reward models) and generated. The built-in scorers name the record each
  engine row belongs to (`rows_of`), so a record's tokens are exactly those of its own rows,
  whatever else shared the batch; rows no scorer named (a plugin's) are shared among the
  batch's records in proportion to the candidates scored for each, and so are the call's
  seconds. Candidates served by the score cache (or by an equal candidate scored earlier in
  the batch) cost nothing and are counted under `cached`. Scorers that run no language model
  (`mbr`, `vote`, `longest`, ...) read 0 tokens (an embedding model they use is not counted)
  and record their seconds.
- **Selection** sums both stages into `total`.

Seconds are measurements: two runs of the same job give the same tokens but not the same
seconds, so the seconds are left out of the input fingerprints that resume compares
(`bon.records.input_fingerprint`). An output written before this accounting existed is resumed
without it, so a file never mixes records with and without `cost` (`strip`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from bon.chat import Message
from bon.engines import Completion, Engine, EngineOptions, EngineProxy, SamplingOptions
from bon.errors import EngineError
from bon.records import COST

GENERATE, SCORE, TOTAL = "generate", "score", "total"
"""The parts of `cost`: the generator's, the scorers' and the selector's sum of both."""
PRUNE = "prune"
"""The part a pruned generate stage adds (`bon.prune`): its scorer's `read_tokens`,
`generated_tokens` and `seconds`, and the `prefill_tokens` its continuations re-read."""
PRUNE_TOKENS = ("read_tokens", "generated_tokens", "prefill_tokens")
"""The token counts of a `PRUNE` part, all of which `total` adds."""
DIGITS = 6
"""Seconds are rounded to microseconds."""


def seconds(value: float) -> float:
    """`value` rounded as the records store seconds."""
    return round(value, DIGITS)


def split_count(total: int, weights: Sequence[float]) -> list[int]:
    """`total` split into integers in proportion to `weights` (largest remainders, ties to the
    lower index), summing to `total`; evenly when every weight is 0."""
    if not weights:
        return []
    weights = list(weights) if any(w > 0 for w in weights) else [1.0] * len(weights)
    whole = math.fsum(weights)
    exact = [total * w / whole for w in weights]
    out = [math.floor(x) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - out[i]), i))
    for i in order[: total - sum(out)]:
        out[i] += 1
    return out


def split_seconds(value: float, weights: Sequence[float]) -> list[float]:
    """`value` split in proportion to `weights` (evenly when every weight is 0)."""
    if not weights:
        return []
    weights = list(weights) if any(w > 0 for w in weights) else [1.0] * len(weights)
    whole = math.fsum(weights)
    return [value * w / whole for w in weights]


def generation_costs(
    prompt_tokens: Sequence[int], rows: Sequence[Sequence[Completion]], elapsed: float
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The `cost.generate` part of each record of one engine call and each of its candidates'
    `cost`: the call's `elapsed` seconds split by completion tokens (see the module)."""
    flat = [c.tokens for row in rows for c in row]
    shares = iter(split_seconds(elapsed, flat))
    out = []
    for prompt, row in zip(prompt_tokens, rows, strict=True):
        mine = [next(shares) for _ in row]
        candidates = [
            {"completion_tokens": c.tokens, "seconds": seconds(s)}
            for c, s in zip(row, mine, strict=True)
        ]
        part = {
            "prompt_tokens": prompt,
            "completion_tokens": sum(c.tokens for c in row),
            "seconds": seconds(math.fsum(mine)),
        }
        out.append((part, candidates))
    return out


@dataclass(frozen=True)
class Reading:
    """What a `Meter` counted since it was last read: tokens `read` and `generated` in all,
    those of rows named by their owner (`owned`: id of the owner -> [read, generated]), and
    the seconds to leave out of a call's measured time (loading the model, counting)."""

    read: int
    generated: int
    owned: dict[int, list[int]]
    overhead: float

    def scoring_costs(
        self,
        owners: Sequence[object],
        elapsed: float,
        computed: Sequence[int],
        cached: Sequence[int],
    ) -> list[dict[str, Any]]:
        """One scorer call over a batch as each record's `cost.score` part: record i's own
        rows (`owners[i]`, the `messages` of its `Query`), plus a share of the rows no one
        named and of the call's `elapsed` seconds, in proportion to the candidates the scorer
        `computed` for each; `cached[i]` of record i's candidates cost nothing (recorded when
        there are some)."""
        own = [self.owned.get(id(owner), [0, 0]) for owner in owners]
        rest = (
            self.read - sum(o[0] for o in self.owned.values()),
            self.generated - sum(o[1] for o in self.owned.values()),
        )
        reads = split_count(max(0, rest[0]), computed)
        writes = split_count(max(0, rest[1]), computed)
        spent = split_seconds(max(0.0, elapsed - self.overhead), computed)
        out = []
        for mine, r, g, s, hits in zip(own, reads, writes, spent, cached, strict=True):
            part: dict[str, Any] = {
                "read_tokens": mine[0] + r,
                "generated_tokens": mine[1] + g,
                "seconds": seconds(s),
            }
            if hits:
                part["cached"] = hits
            out.append(part)
        return out


@contextmanager
def rows_of(engine: Engine, owners: Sequence[object]) -> Iterator[None]:
    """Name the owner of each row of the engine calls made inside: row i of a call (its i-th
    conversation) belongs to `owners[i]`, the `messages` list of the `Query` it scores, so a
    `Meter` gives each record exactly its own tokens. A call whose row count differs from
    `len(owners)` is counted as unnamed. Does nothing for an engine that is not a `Meter`."""
    if not isinstance(engine, Meter):
        yield
        return
    before = engine.owners
    engine.owners = owners
    try:
        yield
    finally:
        engine.owners = before


def with_part(record: dict, part: str, value: Any) -> dict:
    """`record` with `cost[part]` set to `value` (the other parts kept)."""
    cost = record.get(COST)
    cost = dict(cost) if isinstance(cost, dict) else {}
    return {**record, COST: {**cost, part: value}}


def total(record: dict) -> dict[str, Any] | None:
    """The sum of a record's generation and scoring costs, `{"tokens", "seconds"}`: the
    generator's prompt and completion tokens, what pruning spent (`PRUNE`: its scorer's tokens,
    the tokens re-read by continuations) and every scorer's read and generated tokens; None
    when the record carries neither part."""
    cost = record.get(COST)
    if not isinstance(cost, dict) or not (GENERATE in cost or SCORE in cost):
        return None
    tokens, spent = 0, []
    generate = cost.get(GENERATE)
    if isinstance(generate, dict):
        tokens += _int(generate.get("prompt_tokens")) + _int(generate.get("completion_tokens"))
        spent.append(_float(generate.get("seconds")))
    pruning = cost.get(PRUNE)
    if isinstance(pruning, dict):
        tokens += sum(_int(pruning.get(k)) for k in PRUNE_TOKENS)
        spent.append(_float(pruning.get("seconds")))
    scores = cost.get(SCORE)
    for part in scores.values() if isinstance(scores, dict) else ():
        if isinstance(part, dict):
            tokens += _int(part.get("read_tokens")) + _int(part.get("generated_tokens"))
            spent.append(_float(part.get("seconds")))
    return {"tokens": tokens, "seconds": seconds(math.fsum(spent))}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _float(value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    return float(value) if ok and math.isfinite(value) else 0.0


def has_parts(record: dict, parts: Iterable[str]) -> bool:
    """Whether `record` carries every one of the cost `parts`."""
    cost = record.get(COST)
    return isinstance(cost, dict) and all(p in cost for p in parts)


def strip(record: dict, parts: Iterable[str]) -> dict:
    """`record` without the cost `parts` (and, for `generate`, its candidates' costs): what a
    stage writes when it resumes an output made before cost accounting."""
    parts = list(parts)
    cost = record.get(COST)
    if not parts or not isinstance(cost, dict):
        return record
    out = dict(record)
    kept = {k: v for k, v in cost.items() if k not in parts}
    if kept:
        out[COST] = kept
    else:
        del out[COST]
    if GENERATE in parts and isinstance(out.get("candidates"), list):
        out["candidates"] = [
            {k: v for k, v in c.items() if k != COST} if isinstance(c, dict) else c
            for c in out["candidates"]
        ]
    return out


class Meter(EngineProxy):
    """An engine, loaded from `source` when first called, that counts the tokens its callers
    send through it: `read` (prompts, teacher-forced continuations, scored conversations) and
    `generated`, in all and per row owner (`rows_of`). `take` reads and resets the counts,
    with the seconds spent loading the model and counting, to be left out of what a measured
    call cost.

    `bon.online` keeps a meter of its own for `bon serve`'s usage; it may move to this one.
    """

    name = "meter"

    def __init__(self, source: Callable[[], Engine], options: EngineOptions) -> None:
        super().__init__(options)
        self._source = source
        self._inner: Engine | None = None
        self.owners: Sequence[object] | None = None
        """Whom the rows of the next calls belong to (set through `rows_of`)."""
        self.read = 0
        self.generated = 0
        self.owned: dict[int, list[int]] = {}
        self.load_seconds = 0.0
        self.own_seconds = 0.0

    @property
    def inner(self) -> Engine:
        if self._inner is None:
            started = time.perf_counter()
            self._inner = self._source()
            self.load_seconds += time.perf_counter() - started
        return self._inner

    def take(self) -> Reading:
        """What was counted since the last call (then reset)."""
        out = Reading(self.read, self.generated, self.owned, self.load_seconds + self.own_seconds)
        self.read = self.generated = 0
        self.owned = {}
        self.load_seconds = self.own_seconds = 0.0
        return out

    def _count(self, reads: Sequence[int], writes: Sequence[int]) -> None:
        """Add one call's rows (tokens read and generated per row)."""
        self.read += sum(reads)
        self.generated += sum(writes)
        owners = self.owners
        if owners is None or len(owners) != len(reads):
            return
        for owner, r, g in zip(owners, reads, writes, strict=True):
            entry = self.owned.setdefault(id(owner), [0, 0])
            entry[0] += r
            entry[1] += g

    @contextmanager
    def _counting(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.own_seconds += time.perf_counter() - started

    def generate(
        self,
        conversations: Sequence[list[Message]],
        sampling: SamplingOptions,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        out = self.inner.generate(conversations, sampling, seeds)
        with self._counting():
            self._count(
                [self.inner.prompt_tokens(c) for c in conversations],
                [sum(c.tokens for c in row) for row in out],
            )
        return out

    def continuation_logprobs(
        self, conversations: Sequence[list[Message]], continuations: Sequence[str]
    ) -> list[list[float]]:
        rows = self.inner.continuation_logprobs(conversations, continuations)
        with self._counting():
            # An empty continuation is never run through the model.
            reads = [
                self.inner.prompt_tokens(c) + len(row) if row else 0
                for c, row in zip(conversations, rows, strict=True)
            ]
            self._count(reads, [0] * len(reads))
        return rows

    def sequence_scores(self, conversations: Sequence[list[Message]]) -> list[list[float]]:
        rows = self.inner.sequence_scores(conversations)
        with self._counting():
            self._count([self._whole(c) for c in conversations], [0] * len(conversations))
        return rows

    def tag_logits(
        self, conversations: Sequence[list[Message]], tag: str
    ) -> list[list[list[float]]]:
        rows = self.inner.tag_logits(conversations, tag)
        with self._counting():
            self._count([self._whole(c) for c in conversations], [0] * len(conversations))
        return rows

    def _whole(self, conversation: list[Message]) -> int:
        """Tokens of a conversation that ends with the reply to score: the turns before the
        reply as a prompt, and the reply's own tokens (0 for what the engine cannot count)."""
        if not conversation:
            return 0
        before = conversation[:-1]
        try:
            reply = len(self.inner.token_pieces([conversation[-1]["content"]])[0])
        except EngineError:
            reply = 0
        return (self.inner.prompt_tokens(before) if before else 0) + reply

    def close(self) -> None:
        pass  # the reranker closes the engine it loaded itself
