"""Guards against FLIP's known blind spot: a response that restates the instruction.

Such a response makes the reconstruction trivial (the model copies the instruction back), so it
scores high without answering. The echo guard measures how much of the target (instruction or
system prompt) reappears in the response, as the share of the target's word n-grams (normalised
as for token F1) that the response contains. At or above a threshold the score is lowered by a
fixed penalty, chosen per scorer so that an echo ranks below every non-echo by default: 1.0 for
similarity scores (which lie in [0, 1], so an echo lands in [-1, 0)) and 10 nats per token
for mean log-probabilities. Targets shorter than n words are never flagged: a
two-word greeting is restated by any polite answer. The default threshold (0.8) leaves answers
that open by restating part of the question ("Three colours of the rainbow are ...") alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bon.similarity import normalize


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    """The set of word n-grams of `text` after SQuAD-style normalisation."""
    words = normalize(text).split()
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def echo_overlap(response: str, target: str, n: int = 3) -> float | None:
    """Share of the target's n-grams that occur in the response; None when the target is
    shorter than n words (too short to judge)."""
    wanted = ngrams(target, n)
    if not wanted:
        return None
    return len(wanted & ngrams(response, n)) / len(wanted)


@dataclass(frozen=True)
class EchoGuard:
    """Configured echo guard; `apply` returns the guarded value and the evidence to record."""

    enabled: bool = True
    n: int = 3
    threshold: float = 0.8
    penalty: float = 1.0

    def apply(self, value: float, response: str, target: str) -> tuple[float, dict[str, Any]]:
        """The guarded value (lowered by `penalty` for an echo) and the evidence: the overlap,
        and `echo_penalised` when the penalty applied."""
        if not self.enabled:
            return value, {}
        overlap = echo_overlap(response, target, self.n)
        if overlap is None:
            return value, {"echo": None}
        evidence: dict[str, Any] = {"echo": round(overlap, 4)}
        if overlap >= self.threshold:
            evidence["echo_penalised"] = True
            value -= self.penalty
        return value, evidence

    def describe(self) -> dict[str, Any]:
        if not self.enabled:
            return {"echo_guard": False}
        return {
            "echo_guard": True,
            "echo_ngram": self.n,
            "echo_threshold": self.threshold,
            "echo_penalty": self.penalty,
        }
