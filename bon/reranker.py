"""The reranker stage: every configured scorer scores every candidate of a record.

Each scorer sits behind the score cache (`bon.cache`) unless `no_cache` is set, so candidates
scored before, by any run with the same scorer configuration, cost no model call. The scorers'
engine is a `bon.cost.Meter`, so each scorer's tokens and seconds are recorded per record
under `cost.score` (see `bon.cost` for how a batch's cost is shared among its records).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from bon import cost, records
from bon.cache import CachedScorer, ScoreCache
from bon.engines import Engine, load_engine
from bon.records import COST, RecordProblem, is_pruned
from bon.scorers import Query, ScoreOptions, Scorer, scorers
from bon.scorers.base import refused

if TYPE_CHECKING:
    from bon.progress import Progress

log = logging.getLogger(__name__)


class Reranker:
    """Adds per-candidate `scores` and evidence, and a per-record `scoring` description.

    All scorers share one engine, loaded when a scorer first needs it (never, when every
    score comes from the cache).
    """

    def __init__(self, options: ScoreOptions, engine: Engine | None = None) -> None:
        """`engine`, when given, is used instead of loading one and is left open by `close`."""
        self.options = options
        self._engine: Engine | None = engine
        self._owns_engine = engine is None
        self.meter = cost.Meter(self._get_engine, options)
        """The scorers' engine: the reranker's, loaded when first called, counting tokens."""
        self.scorers: list[Scorer] = [
            scorers.get(name)(options, lambda: self.meter) for name in options.scorers
        ]
        self.progress: Progress | None = None
        """Where to report scored candidates and tokens read (set by the runner's bar)."""
        self.parse_counts: dict[str, dict[str, int]] = {}
        self.cache: ScoreCache | None = None
        self._scoring: list[Scorer | CachedScorer] = list(self.scorers)
        if not options.no_cache:
            self.cache = ScoreCache(options.cache_path)
            self._scoring = [
                CachedScorer(s, self.cache) if s.uses_model else s for s in self.scorers
            ]

    def _get_engine(self) -> Engine:
        if self._engine is None:
            self._engine = load_engine(self.options)
        return self._engine

    def config(self) -> dict[str, Any]:
        """What determines the scores: each scorer's configuration, nothing else (the cache's
        settings, the device and the batch size never block a resume)."""
        return {"stage": "score", "scorers": {s.name: s.describe() for s in self.scorers}}

    def check(self, record: dict) -> None:
        """Raise `RecordProblem` for a record some scorer cannot score."""
        query = _query(record)
        for scorer in self.scorers:
            scorer.check(query)

    def process(self, batch: list[dict]) -> list[dict | RecordProblem]:
        """Each record with its scores, or a `RecordProblem` when the engine refused one of its
        candidates. Each scorer sees the scores of those before it (`Query.scores`)."""
        out = [{**r, "candidates": [dict(c) for c in records.candidates(r)]} for r in batch]
        # Candidates pruned while they decoded (bon.prune) get null scores, unscored.
        views = [{**r, "candidates": [c for c in r["candidates"] if not is_pruned(c)]} for r in out]
        sizes = [len(r["candidates"]) for r in views]
        for scorer in self._scoring:
            queries = [_query(r) for r in views]
            self.meter.take()
            started = time.perf_counter()
            results = scorer.score(queries)
            elapsed = time.perf_counter() - started
            reading = self.meter.take()
            computed = scorer.computed if isinstance(scorer, CachedScorer) else sizes
            spent = reading.scoring_costs(
                [q.messages for q in queries],
                elapsed,
                computed,
                [size - done for size, done in zip(sizes, computed, strict=True)],
            )
            if self.progress:
                self.progress.advance(sum(sizes))
                self.progress.spent(reading.read + reading.generated)
            description = scorer.describe()
            for record, view, scored, part in zip(out, views, results, spent, strict=True):
                record["scoring"] = {**record.get("scoring", {}), scorer.name: description}
                _add_cost(record, scorer.name, part)
                for candidate in record["candidates"]:
                    if is_pruned(candidate):
                        candidate["scores"] = {**candidate.get("scores", {}), scorer.name: None}
                for candidate, item in zip(view["candidates"], scored, strict=True):
                    candidate["scores"] = {**candidate.get("scores", {}), scorer.name: item.value}
                    if item.evidence:
                        candidate[scorer.name] = item.evidence
                    self._count(scorer.name, item.evidence)
        return [_refused(record) or record for record in out]

    def _count(self, name: str, evidence: dict[str, Any]) -> None:
        status = evidence.get("parse")
        for one in status if isinstance(status, list) else [status]:
            if isinstance(one, str):
                key = "error" if one.startswith("error") else one
                counts = self.parse_counts.setdefault(name, {})
                counts[key] = counts.get(key, 0) + 1

    def summary(self) -> dict[str, Any]:
        """How each scorer's outputs were parsed in this run (status -> count)."""
        return {"parse": self.parse_counts} if self.parse_counts else {}

    def close(self) -> None:
        for scorer in self._scoring:
            if isinstance(scorer, CachedScorer) and scorer.hits + scorer.misses:
                log.info(
                    "%s: %d scores from the cache, %d computed",
                    scorer.name,
                    scorer.hits,
                    scorer.misses,
                )
        if self.cache is not None:
            self.cache.close()
            self.cache = None
        if self._engine is not None and self._owns_engine:
            self._engine.close()
        self._engine = None


def _add_cost(record: dict, scorer: str, part: dict[str, Any]) -> None:
    """Set `cost.score[scorer]` of `record` (in place; the other scorers' costs kept)."""
    old = record.get(COST)
    scores = old.get(cost.SCORE) if isinstance(old, dict) else None
    merged = {**(scores if isinstance(scores, dict) else {}), scorer: part}
    record.update(cost.with_part(record, cost.SCORE, merged))


_NOT_RECORDED = ("text", "scores", COST)
"""Candidate fields a scorer does not see as `Query.recorded`."""


def _query(record: dict) -> Query:
    candidates = records.candidates(record)
    return Query(
        records.conversation(record),
        [c["text"] for c in candidates],
        tuple(dict(c["scores"]) if isinstance(c.get("scores"), dict) else {} for c in candidates),
        tuple({k: v for k, v in c.items() if k not in _NOT_RECORDED} for c in candidates),
    )


def _refused(record: dict) -> RecordProblem | None:
    """A problem when an engine refused to score one of the record's candidates."""
    for i, candidate in enumerate(record["candidates"]):
        for name in candidate.get("scores", {}):
            if refused(candidate.get(name)):
                status = candidate[name]["parse"]
                return RecordProblem(f"the reranker could not score candidate {i}: {status}")
    return None
