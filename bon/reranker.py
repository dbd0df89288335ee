"""The reranker stage: every configured scorer scores every candidate of a record."""

from __future__ import annotations

import dataclasses
from typing import Any

from bon import records
from bon.engines import Engine, load_engine
from bon.scorers import Query, ScoreOptions, Scorer, scorers


class Reranker:
    """Adds per-candidate `scores` and evidence, and a per-record `scoring` description.

    All scorers share one engine, loaded when a scorer first needs it.
    """

    def __init__(self, options: ScoreOptions) -> None:
        self.options = options
        self._engine: Engine | None = None
        self.scorers: list[Scorer] = [
            scorers.get(name)(options, self._get_engine) for name in options.scorers
        ]

    def _get_engine(self) -> Engine:
        if self._engine is None:
            self._engine = load_engine(self.options.engine_options())
        return self._engine

    def config(self) -> dict[str, Any]:
        return {"stage": "score", **dataclasses.asdict(self.options)}

    def process(self, batch: list[dict]) -> list[dict]:
        queries = [
            Query(records.conversation(r), [c["text"] for c in records.candidates(r)])
            for r in batch
        ]
        out = [{**r, "candidates": [dict(c) for c in records.candidates(r)]} for r in batch]
        for scorer in self.scorers:
            results = scorer.score(queries)
            for record, scored in zip(out, results, strict=True):
                record["scoring"] = {**record.get("scoring", {}), scorer.name: scorer.describe()}
                for candidate, item in zip(record["candidates"], scored, strict=True):
                    candidate["scores"] = {**candidate.get("scores", {}), scorer.name: item.value}
                    if item.evidence:
                        candidate[scorer.name] = item.evidence
        return out

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
