"""Token-level FLIP: which response makes each token of the instruction most likely.

`flip-likelihood` averages the instruction's token log-probabilities given a response. Within a
record every candidate answers the same instruction, so any linear normalisation (sum, mean,
per-token length) ranks candidates the same way; only a non-linear aggregation can change the
ranking. `flip-tokens` reads the same teacher-forced log-probabilities, plus once per record
the instruction's prior (its log-probabilities after an empty response), and aggregates per
token *across the record's candidates* (`token_reduce`):

- `sentences` (default): the instruction cut into sentences and lines (`sentence_spans`); each
  sentence's mean gain over the prior; a candidate's aggregate is the standard score (across the
  record) of its mean over sentences plus half that of its least-gained sentence. Each sentence
  weighs the same however many tokens it has, so a one-line constraint ("Answer in all
  lowercase.") counts as much as a long topic sentence, and a response that leaves one
  sentence unexplained is marked down;
- `weakest`: the least-gained sentence alone;
- `gain`: the mean per-token gain over the prior, clipped at 0 (a response earns credit only for
  the tokens it makes more likely than no response does);
- `z`: each token's log-probability standardised across the record's candidates, then averaged:
  a token every candidate predicts equally well (a shared topic word) carries no weight;
- `rank`: each token's rank among the record's candidates, averaged;
- `mean`: the mean log-probability (as `flip-likelihood`).

The aggregate is then mixed with how much each response says: its standard score within the
record plus `length_weight` (0.5) standard scores of log(1 + words read); `--length-weight 0`
reads the aggregate alone. The reduction and both weights were chosen on the dev halves of the
preference sets (`benchmarks/token_reductions.py` compares every reduction on the same rows;
`benchmarks/reward_quality.py` reports the default against the other scorers on dev and test).
`z`, `rank` and the mixed score compare candidates, so a candidate's score depends on the others
in its record (the scorer is not `independent`; the cache keys the whole record).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from bon.cost import rows_of
from bon.options import non_negative, option
from bon.scorers.base import Scored, ScorerOptions
from bon.scorers.flip import FlipItem, FlipLikelihoodScorer

_EPS = 1e-6
Spans = Sequence[Sequence[int]]
READS_SENTENCES = ("sentences", "weakest")
WEAKEST_WEIGHT = 0.5


TOKEN_REDUCTIONS = ("sentences", "gain", "weakest", "z", "rank", "mean")


@dataclass(frozen=True)
class FlipTokensOptions(ScorerOptions):
    """flip-tokens' own options."""

    token_reduce: str = option(
        "sentences",
        "How flip-tokens aggregates the instruction's token log-probabilities. sentences: each "
        "instruction sentence's mean gain over the instruction's prior, averaged, plus half the "
        "least-gained sentence (each in standard scores across the record's candidates); "
        "weakest: the least-gained sentence alone; gain: the mean gain over the prior, clipped "
        "at 0; z or rank: each token compared across the record's candidates; mean: as "
        "flip-likelihood.",
        choices=TOKEN_REDUCTIONS,
    )
    length_weight: float = option(
        0.5,
        "flip-tokens adds this many within-record standard scores of log(1 + words read) to "
        "the standard score of its token aggregate (0: the aggregate alone). Fitted on dev.",
        check=non_negative,
        constraint=">= 0",
    )


"""How much `sentences` weighs the least-gained sentence against the mean (fitted on dev)."""


def _z(logprobs: np.ndarray, prior: np.ndarray, spans: Spans) -> np.ndarray:
    spread = logprobs.std(axis=0) + _EPS
    return ((logprobs - logprobs.mean(axis=0)) / spread).mean(axis=1)


def _rank(logprobs: np.ndarray, prior: np.ndarray, spans: Spans) -> np.ndarray:
    # Average ranks, so candidates that predict a token equally share its rank.
    ranks = np.empty_like(logprobs)
    for t in range(logprobs.shape[1]):
        column = logprobs[:, t]
        ordered = np.sort(column)
        below = np.searchsorted(ordered, column, side="left")
        equal = np.searchsorted(ordered, column, side="right") - below - 1
        ranks[:, t] = below + equal / 2
    return ranks.mean(axis=1) / max(1, len(logprobs) - 1)


def _sentence_gains(logprobs: np.ndarray, prior: np.ndarray, spans: Spans) -> np.ndarray:
    """Candidates x sentences: each sentence's mean gain over the prior."""
    gain = logprobs - prior
    return np.stack([gain[:, span].mean(axis=1) for span in spans], axis=1)


def _weakest(logprobs: np.ndarray, prior: np.ndarray, spans: Spans) -> np.ndarray:
    return _sentence_gains(logprobs, prior, spans).min(axis=1)


def _sentences(logprobs: np.ndarray, prior: np.ndarray, spans: Spans) -> np.ndarray:
    gains = _sentence_gains(logprobs, prior, spans)
    return standardise(gains.mean(axis=1)) + WEAKEST_WEIGHT * standardise(gains.min(axis=1))


_REDUCE = {
    "mean": lambda logprobs, prior, spans: logprobs.mean(axis=1),
    "gain": lambda logprobs, prior, spans: np.maximum(logprobs - prior, 0.0).mean(axis=1),
    "z": _z,
    "rank": _rank,
    "weakest": _weakest,
    "sentences": _sentences,
}
_SENTENCE_END = re.compile(r"(?:[.?!:]\s*|\n\s*)$")


def sentence_spans(pieces: Sequence[str]) -> list[list[int]]:
    """The token positions of each sentence or line of a text given as its decoded tokens: a
    span ends at a token that ends a line or ends with `.`, `?`, `!` or `:`."""
    spans: list[list[int]] = [[]]
    for position, piece in enumerate(pieces):
        if not piece.strip() and not spans[-1] and len(spans) > 1:
            spans[-2].append(position)  # whitespace after an end belongs to that sentence
            continue
        spans[-1].append(position)
        if _SENTENCE_END.search(piece) or "\n" in piece:
            spans.append([])
    return [span for span in spans if span]


def reduce_tokens(
    rows: Sequence[Sequence[float]],
    prior: Sequence[float],
    how: str,
    spans: Spans | None = None,
) -> list[float]:
    """One score per candidate from its per-token log-probabilities `rows` (all of one length,
    the instruction's) and the instruction's `prior` log-probabilities; `how` is one of
    `TOKEN_REDUCTIONS`. `spans` (default: one span of every token) are the instruction's
    sentences, which `sentences` and `weakest` read."""
    if not rows:
        return []
    logprobs = np.asarray(rows, dtype=float)
    if logprobs.shape[1] == 0:
        return [0.0] * len(rows)
    spans = spans or [list(range(logprobs.shape[1]))]
    values = _REDUCE[how](logprobs, np.asarray(prior, dtype=float), spans)
    return [float(v) for v in values]


def standardise(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """`values` minus their mean, over their standard deviation (all 0 when they are equal)."""
    array = np.asarray(values, dtype=float)
    spread = array.std()
    return (array - array.mean()) / spread if spread > _EPS else np.zeros_like(array)


def combine(aggregate: Sequence[float], words: Sequence[int], length_weight: float) -> list[float]:
    """A record's scores: the token aggregate alone when `length_weight` is 0, else its
    standard score plus `length_weight` standard scores of log(1 + words)."""
    if not length_weight:
        return list(aggregate)
    mixed = standardise(aggregate) + length_weight * standardise(np.log1p(words))
    return [float(v) for v in mixed]


class FlipTokensScorer(FlipLikelihoodScorer):
    """Teacher-forced FLIP aggregated per instruction token across a record's candidates."""

    name = "flip-tokens"
    reads_prefix = True
    Options = FlipTokensOptions
    version = "1"
    independent = False
    default_echo_penalty: ClassVar[float] = 10.0

    def decoding(self) -> dict[str, Any]:
        return {
            "decoding": "teacher-forced",
            "reduce": self.own.token_reduce,
            "length_weight": self.own.length_weight,
        }

    def score_items(self, items: list[FlipItem], sizes: Sequence[int]) -> list[Scored]:
        starts = [int(s) for s in np.cumsum([0, *sizes])[:-1]]
        # One prior per record: the instruction after an empty response, in the record's context.
        priors = [
            FlipItem("", items[s].target, items[s].context, items[s].owner)
            for s, n in zip(starts, sizes, strict=True)
            if n
        ]
        conversations = [self.messages(item) for item in [*items, *priors]]
        targets = [item.target for item in [*items, *priors]]
        with rows_of(self.engine, [item.owner for item in [*items, *priors]]):
            rows = self.engine.continuation_logprobs(conversations, targets)
        spans = iter(self.spans([prior.target for prior in priors]))
        flat: list[Scored] = []
        prior_rows = iter(rows[len(items) :])
        for start, size in zip(starts, sizes, strict=True):
            if not size:
                continue
            group = rows[start : start + size]
            how = self.own.token_reduce
            aggregate = reduce_tokens(group, next(prior_rows), how, next(spans))
            words = [len(item.response.split()) for item in items[start : start + size]]
            values = combine(aggregate, words, self.own.length_weight)
            for row, value, raw, count in zip(group, values, aggregate, words, strict=True):
                evidence = {"tokens": len(row), "logprob_mean": round(_mean(row), 4)}
                evidence.update({self.own.token_reduce: round(raw, 4), "words": count})
                flat.append(Scored(value, evidence))
        return flat

    def spans(self, targets: list[str]) -> list[Spans | None]:
        """Each target's sentence spans when the reduction reads them, else None."""
        if self.own.token_reduce not in READS_SENTENCES:
            return [None] * len(targets)
        return [sentence_spans(pieces) for pieces in self.engine.token_pieces(targets)]


def _mean(row: Sequence[float]) -> float:
    return float(sum(row) / len(row)) if row else 0.0
