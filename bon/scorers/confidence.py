"""`confidence`: how sure the generator was of each candidate, from its own log-probabilities.

The score is the candidate's mean token log-probability (nats; higher is better). A record
whose every non-empty candidate carries `logprob_mean` (written by `bon generate
--record-logprobs`, see `bon.engines.base.Completion`) is scored from those values, with no
model. Any other record (outputs made elsewhere, `responses` only) falls back, for all its
candidates alike so that one scale is compared within a record, to a teacher-forced pass of
the scoring model (`Engine.continuation_logprobs`): give the generator's model as the scoring
model for the same numbers. An empty candidate scores NaN (it is never selected while another
candidate has a score). Evidence: where the value came from ("generator" or
"teacher-forced"), and for the latter the token count.

Caching: recorded values depend on the generator, not on the conversation and text that key
the score cache, so the reranker must not cache this scorer: `uses_model` is False (the
reranker neither caches it nor, online, loads the scoring model for it before it is needed).
The fallback, which depends on the conversation, the text and the scoring model alone, goes
through the score cache itself (`cache_path`, unless `no_cache`), keyed by the scoring model's
identity. The self-certainty that hf records beside `logprob_mean` stays on the candidate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import closing
from typing import Any, TypeGuard

from bon.cost import rows_of
from bon.scorers.base import Query, Scored, Scorer, regroup

RECORDED = "logprob_mean"


class ConfidenceScorer(Scorer):
    """Mean token log-probability: recorded by the generator, else teacher-forced."""

    name = "confidence"
    uses_model = False

    def describe(self) -> dict[str, Any]:
        """As `Scorer.describe`, with the scoring model that the fallback reads."""
        return {**super().describe(), **self.options.identity()}

    def score(self, queries: Sequence[Query]) -> list[list[Scored]]:
        out: list[list[Scored]] = []
        fallback: list[tuple[int, Query]] = []
        for i, query in enumerate(queries):
            recorded = recorded_means(query)
            if recorded is None:
                fallback.append((i, query))
            out.append(recorded or [])
        if fallback:
            scored = self._teacher_forced([query for _, query in fallback])
            for (i, _), row in zip(fallback, scored, strict=True):
                out[i] = row
        return out

    def _teacher_forced(self, queries: list[Query]) -> list[list[Scored]]:
        """The fallback's scores: empty candidates NaN, the others through the cache."""
        texts = [Query(q.messages, [t for t in q.candidates if t]) for q in queries]
        scorer = TeacherForced(self.options, self._engine)
        if self.options.no_cache:
            scored = scorer.score(texts)
        else:
            from bon.cache import CachedScorer, ScoreCache

            with closing(ScoreCache(self.options.cache_path)) as cache:
                scored = CachedScorer(scorer, cache).score(texts)
        out = []
        for query, row in zip(queries, scored, strict=True):
            values = iter(row)
            out.append([next(values) if t else _empty() for t in query.candidates])
        return out


class TeacherForced(Scorer):
    """The fallback of `confidence`: the scoring model's mean log-probability of each text's
    tokens as the reply to its conversation (one forward pass). Not registered: it runs only
    through `ConfidenceScorer`, whose name keys its cached scores."""

    name = "confidence"

    def score(self, queries: Sequence[Query]) -> list[list[Scored]]:
        pairs = [(q.messages, t) for q in queries for t in q.candidates]
        with rows_of(self.engine, [m for m, _ in pairs]):
            rows = self.engine.continuation_logprobs([m for m, _ in pairs], [t for _, t in pairs])
        flat = [
            Scored(_mean(row), {"source": "teacher-forced", "tokens": len(row)}) for row in rows
        ]
        return regroup(flat, [len(q.candidates) for q in queries])


def recorded_means(query: Query) -> list[Scored] | None:
    """The candidates' recorded mean log-probabilities, or None unless every non-empty
    candidate has a finite one."""
    if len(query.recorded) != len(query.candidates):
        return None
    out = []
    for text, fields in zip(query.candidates, query.recorded, strict=True):
        value = fields.get(RECORDED)
        if not text:
            out.append(_empty())
        elif _finite(value):
            out.append(Scored(float(value), {"source": "generator"}))
        else:
            return None
    return out


def _finite(value: Any) -> TypeGuard[float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _mean(values: Sequence[float]) -> float:
    """The mean; -inf for no tokens (a non-empty text always has some; NaN cannot be cached)."""
    return sum(values) / len(values) if values else -math.inf


def _empty() -> Scored:
    return Scored(math.nan, {"tokens": 0})
