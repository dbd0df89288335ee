"""`relevance`: how close each response's meaning is to the instruction it answers.

The cosine of the sentence embeddings of the instruction (the last user turn) and of each
response cut to `max_response_words`, clipped to [0, 1]: bon.similarity's `cosine`, so a batch
is embedded in one call, each distinct text once (the instruction once per record, however many
candidates it has), and the `embedder` loads once per process whichever scorer asks first.
An on-topic check rather than a quality score: it rewards talking about what was asked, not
answering it well, and an echo of the instruction scores highest. It runs no scoring engine, so
the reranker neither loads one for it nor caches its scores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bon.engines import Engine
from bon.scorers.base import Query, Scored, ScoreOptions, Scorer, regroup
from bon.similarity import load_similarity


class RelevanceScorer(Scorer):
    """Embedding cosine of instruction and response; higher is better."""

    name = "relevance"
    reads_prefix = True
    uses_model = False

    def __init__(self, options: ScoreOptions, engine: Callable[[], Engine]) -> None:
        super().__init__(options, engine)
        device = None if options.device == "auto" else options.device
        self._cosine = load_similarity("cosine", embedder=options.embedder, device=device)

    def score(self, queries: Sequence[Query]) -> list[list[Scored]]:
        clipped = self.clipped(queries)
        responses = [text for query in clipped for text in query.candidates]
        instructions = [query.instruction for query in clipped for _ in query.candidates]
        values = self._cosine(responses, instructions)
        return regroup([Scored(v) for v in values], [len(q.candidates) for q in clipped])
