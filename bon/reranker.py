"""The reranker stage: every configured scorer scores every candidate of a record.

Each scorer sits behind the score cache (`bon.cache`) unless `no_cache` is set, so candidates
scored before, by any run with the same scorer configuration, cost no model call.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from bon import records
from bon.cache import CachedScorer, ScoreCache
from bon.engines import Engine, load_engine
from bon.scorers import Query, ScoreOptions, Scorer, scorers

log = logging.getLogger(__name__)

# Options that change where scores are stored, never their values: left out of the stage's
# config, so turning the cache off or moving it does not block a resume.
_STORAGE_FIELDS = ("cache_path", "no_cache")


class Reranker:
    """Adds per-candidate `scores` and evidence, and a per-record `scoring` description.

    All scorers share one engine, loaded when a scorer first needs it (never, when every
    score comes from the cache).
    """

    def __init__(self, options: ScoreOptions) -> None:
        self.options = options
        self._engine: Engine | None = None
        self.scorers: list[Scorer] = [
            scorers.get(name)(options, self._get_engine) for name in options.scorers
        ]
        self.cache: ScoreCache | None = None
        self._scoring: list[Scorer | CachedScorer] = list(self.scorers)
        if not options.no_cache:
            self.cache = ScoreCache(options.cache_path)
            self._scoring = [
                CachedScorer(s, self.cache) if s.uses_model else s for s in self.scorers
            ]

    def _get_engine(self) -> Engine:
        if self._engine is None:
            self._engine = load_engine(self.options.engine_options())
        return self._engine

    def config(self) -> dict[str, Any]:
        options = dataclasses.asdict(self.options)
        for name in _STORAGE_FIELDS:
            options.pop(name)
        return {"stage": "score", **options}

    def process(self, batch: list[dict]) -> list[dict]:
        queries = [
            Query(records.conversation(r), [c["text"] for c in records.candidates(r)])
            for r in batch
        ]
        out = [{**r, "candidates": [dict(c) for c in records.candidates(r)]} for r in batch]
        for scorer in self._scoring:
            results = scorer.score(queries)
            description = scorer.describe()
            for record, scored in zip(out, results, strict=True):
                record["scoring"] = {**record.get("scoring", {}), scorer.name: description}
                for candidate, item in zip(record["candidates"], scored, strict=True):
                    candidate["scores"] = {**candidate.get("scores", {}), scorer.name: item.value}
                    if item.evidence:
                        candidate[scorer.name] = item.evidence
        return out

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
        if self._engine is not None:
            self._engine.close()
            self._engine = None
