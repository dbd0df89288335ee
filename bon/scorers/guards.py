"""Guards against FLIP's known blind spot: a response that restates the instruction.

Such a response makes the reconstruction trivial (the model copies the instruction back), so it
would score high without answering. The echo guard measures how much of the target (instruction
or system prompt) reappears in the response, as the share of the target's word n-grams
(normalised as for token F1) that the response contains. At or above a threshold the restated
passages (runs of at least n matching words) are cut out, the scorer reads what is left, and
the score is lowered by a fixed penalty, chosen per scorer so that an echo ranks below every
non-echo by default. The exception is an instruction that asks to be repeated ("First repeat
the request word for word without change, then give your answer", as IFEval has): there an
answer that repeats it is scored on the rest, like any other answer, with no penalty unless
fewer than n words remain. A rewrite ("Rewrite this sentence: ...")
shares the quoted text, not the request around it, so it stays below the threshold. Targets
shorter than n words are never flagged: a two-word greeting is restated by any polite answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from difflib import SequenceMatcher
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


def remove_echo(response: str, target: str, n: int = 3) -> str:
    """`response` without its passages that repeat `target` (runs of at least `n` normalised
    words in the same order), the rest of its layout kept."""
    spans = []  # (normalised word, start, end) of each response word that survives normalising
    for match in re.finditer(r"\S+", response):
        for word in normalize(match.group()).split():
            spans.append((word, match.start(), match.end()))
    words = [w for w, _, _ in spans]
    matcher = SequenceMatcher(None, words, normalize(target).split(), autojunk=False)
    cuts = [
        (spans[b.a][1], spans[b.a + b.size - 1][2])
        for b in matcher.get_matching_blocks()
        if b.size >= n
    ]
    out, last = [], 0
    for start, end in cuts:
        out.append(response[last:start])
        last = end
    out.append(response[last:])
    return re.sub(r"[ \t]{2,}", " ", "".join(out)).strip()


_REPEAT = re.compile(
    r"\b(?:repeat|restate|copy|rewrite)\b[^.?!]{0,40}?\b(?:request|question|prompt|instruction|"
    r"query|task)s?\b",
    re.IGNORECASE,
)


def asks_for_repetition(target: str) -> bool:
    """Whether the instruction asks for itself to be repeated ("First repeat the request word
    for word without change, then give your answer")."""
    return bool(_REPEAT.search(target))


@dataclass(frozen=True)
class Guarded:
    """What the scorer reads of one response, and what the guard found."""

    text: str
    penalise: bool
    evidence: dict[str, Any]


@dataclass(frozen=True)
class EchoGuard:
    """Configured echo guard: `inspect` before scoring, `apply` to the score."""

    enabled: bool = True
    n: int = 3
    threshold: float = 0.8
    penalty: float = 1.0

    def inspect(self, response: str, target: str) -> Guarded:
        """The text to score (the response, or what is left of an echo once the restated
        passages are cut), whether the score is to be penalised, and the evidence to record."""
        if not self.enabled:
            return Guarded(response, False, {})
        overlap = echo_overlap(response, target, self.n)
        if overlap is None:
            return Guarded(response, False, {"echo": None})
        evidence: dict[str, Any] = {"echo": round(overlap, 4)}
        if overlap < self.threshold:
            return Guarded(response, False, evidence)
        rest = remove_echo(response, target, self.n)
        if asks_for_repetition(target) and len(normalize(rest).split()) >= self.n:
            return Guarded(rest, False, {**evidence, "echo_removed": True})
        return Guarded(rest, True, {**evidence, "echo_penalised": True})

    def apply(self, value: float, guarded: Guarded) -> float:
        """The score lowered by `penalty` when the guard found a bare restatement."""
        return value - self.penalty if guarded.penalise else value

    def describe(self) -> dict[str, Any]:
        if not self.enabled:
            return {"echo_guard": False}
        return {
            "echo_guard": True,
            "echo_guard_mode": "cut-restatement-v2",
            "echo_ngram": self.n,
            "echo_threshold": self.threshold,
            "echo_penalty": self.penalty,
        }
