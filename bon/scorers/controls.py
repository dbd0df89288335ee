"""Controls: scorers that read no model, the floor every reward model must beat.

- `random`: a seeded uniform draw in [0, 1) per candidate, derived from the seed, the
  conversation and the candidate's text (so it is reproducible and independent of batching).
- `longest` / `shortest`: the candidate's length in characters (stripped); `shortest` declares
  lower-is-better, so the selector picks the shortest.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

from bon.scorers.base import Query, Scored, Scorer, text_seed


class RandomScorer(Scorer):
    """A seeded random score per candidate."""

    name = "random"
    uses_model = False

    def describe(self) -> dict[str, Any]:
        return {"scorer": self.name, "seed": self.options.seed}

    def score(self, queries: Sequence[Query]) -> list[list[Scored]]:
        out = []
        for query in queries:
            conversation = json.dumps(query.messages, sort_keys=True, ensure_ascii=False)
            out.append(
                [
                    Scored(random.Random(text_seed(self.options.seed, conversation, text)).random())
                    for text in query.candidates
                ]
            )
        return out


class LongestScorer(Scorer):
    """Length in characters; the longest candidate wins."""

    name = "longest"
    uses_model = False

    def score(self, queries: Sequence[Query]) -> list[list[Scored]]:
        return [[Scored(float(len(t.strip()))) for t in q.candidates] for q in queries]


class ShortestScorer(LongestScorer):
    """Length in characters, lower is better; the shortest candidate wins."""

    name = "shortest"
    higher_is_better = False
