"""Token-level FLIP: which response makes each token of the instruction most likely.

`flip-likelihood` averages the instruction's token log-probabilities given a response. Within a
record every candidate answers the same instruction, so any linear normalisation (sum, mean,
per-token length) ranks candidates the same way; only a non-linear aggregation can change the
ranking. `flip-tokens` reads the same teacher-forced log-probabilities, plus once per record
the instruction's prior (its log-probabilities after an empty response), and aggregates per
token *across the record's candidates* (`token_reduce`):

- `mean`: the mean log-probability (as `flip-likelihood`);
- `gain`: the mean per-token gain over the prior, clipped at 0 (a response earns credit only for
  the tokens it makes more likely than no response does);
- `z`: each token's log-probability standardised across the record's candidates, then averaged:
  a token every candidate predicts equally well (a shared topic word) carries no weight, and a
  token only some candidates predict (a constraint such as "in all lowercase" or "exactly 3
  bullet points") weighs as much as any other.
- `rank`: each token's rank among the record's candidates, averaged.

`z` and `rank` compare candidates, so a candidate's score depends on the others in its record
(the scorer is not `independent`; the cache keys the whole record).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from bon.scorers.base import Scored
from bon.scorers.flip import FlipLikelihoodScorer, _Item

_EPS = 1e-6


def _z(logprobs: np.ndarray, prior: np.ndarray) -> np.ndarray:
    spread = logprobs.std(axis=0) + _EPS
    return ((logprobs - logprobs.mean(axis=0)) / spread).mean(axis=1)


def _rank(logprobs: np.ndarray, prior: np.ndarray) -> np.ndarray:
    # Average ranks, so candidates that predict a token equally share its rank.
    below = (logprobs[None, :, :] < logprobs[:, None, :]).sum(axis=1)
    equal = (logprobs[None, :, :] == logprobs[:, None, :]).sum(axis=1) - 1
    return (below + equal / 2).mean(axis=1) / max(1, len(logprobs) - 1)


_REDUCE = {
    "mean": lambda logprobs, prior: logprobs.mean(axis=1),
    "gain": lambda logprobs, prior: np.maximum(logprobs - prior, 0.0).mean(axis=1),
    "z": _z,
    "rank": _rank,
}


def reduce_tokens(rows: Sequence[Sequence[float]], prior: Sequence[float], how: str) -> list[float]:
    """One score per candidate from its per-token log-probabilities `rows` (all of one length,
    the instruction's) and the instruction's `prior` log-probabilities; `how` is one of
    `TOKEN_REDUCTIONS`."""
    if not rows:
        return []
    logprobs = np.asarray(rows, dtype=float)
    if logprobs.shape[1] == 0:
        return [0.0] * len(rows)
    return [float(v) for v in _REDUCE[how](logprobs, np.asarray(prior, dtype=float))]


class FlipTokensScorer(FlipLikelihoodScorer):
    """Teacher-forced FLIP aggregated per instruction token across a record's candidates."""

    name = "flip-tokens"
    version = "1"
    independent = False
    default_echo_penalty: ClassVar[float] = 10.0

    def decoding(self) -> dict[str, Any]:
        return {"decoding": "teacher-forced", "reduce": self.options.token_reduce}

    def score_items(self, items: list[_Item], sizes: Sequence[int]) -> list[Scored]:
        starts = [int(s) for s in np.cumsum([0, *sizes])[:-1]]
        # One prior per record: the instruction after an empty response, in the record's context.
        priors = [
            _Item("", items[s].target, items[s].context)
            for s, n in zip(starts, sizes, strict=True)
            if n
        ]
        conversations = [self.messages(item) for item in [*items, *priors]]
        targets = [item.target for item in [*items, *priors]]
        rows = self.engine.continuation_logprobs(conversations, targets)
        flat: list[Scored] = []
        prior_rows = iter(rows[len(items) :])
        for start, size in zip(starts, sizes, strict=True):
            if not size:
                continue
            group = rows[start : start + size]
            values = reduce_tokens(group, next(prior_rows), self.options.token_reduce)
            for row, value in zip(group, values, strict=True):
                flat.append(
                    Scored(value, {"tokens": len(row), "logprob_mean": round(_mean(row), 4)})
                )
        return flat


def _mean(row: Sequence[float]) -> float:
    return float(sum(row) / len(row)) if row else 0.0
