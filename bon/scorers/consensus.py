"""Consensus scorers: a candidate is as good as the record's other candidates agree with it.

Neither runs the scoring engine (`uses_model` is False), so the reranker neither loads one for
them nor caches their scores; mbr with an embedding similarity loads the sentence embedder, once
per process.

- `mbr`: minimum Bayes risk. A candidate's score is its mean `similarity` to each of the other
  candidates of its record (itself excluded; the candidate is the prediction, the other one the
  reference), so the one closest to what the others say wins. Responses are cut to
  `max_response_words` first. A record with one candidate scores 0.0, and so does an empty
  (blank) response whatever the similarity says of it, so it never wins while others agree.
- `vote`: self-consistency. An answer is read from each candidate (`answer`: boxed, number,
  regex or text; see `extract_answer`), and a candidate scores the share of the record's
  candidates giving its answer, itself included: answers 42, 42, 7 and none score 0.5, 0.5,
  0.25 and 0.0. Equal counts score equal (the selector's tie rule, the lowest index, decides).
  With `weight_by`, each candidate's vote weighs that score of it, min-max normalised within the
  record in the score's direction (best 1, worst 0, all equal 1; a score that is not a finite
  number 0), and a candidate scores its answer's share of the record's total weight. Min-max
  rather than a softmax: scores of different scorers live on different scales (characters,
  log-probabilities), and min-max needs no temperature to fit them; with equal scores the
  weighted vote is the plain one. The whole text is read: the answer is usually at its end.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from bon.engines import Engine
from bon.errors import ConfigError
from bon.options import option
from bon.records import RecordProblem
from bon.scorers.base import Query, Scored, ScoreOptions, Scorer, ScorerOptions
from bon.similarity import USES_EMBEDDER, load_similarity

_BOXED = re.compile(r"\\boxed\{")
_BRACES = re.compile(r"[{}]")
_NUMBER = re.compile(r"(?<![\d.])-?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")
# Sentence-final punctuation: ASCII, its CJK full-width forms, and the ellipsis.
_TRAILING = re.compile("[\\s.,;:!?\u3002\uff0c\uff1b\uff1a\uff01\uff1f\u2026]+$")


class MbrScorer(Scorer):
    """Mean similarity to the record's other candidates."""

    name = "mbr"
    uses_model = False
    independent = False

    def __init__(self, options: ScoreOptions, engine: Callable[[], Engine]) -> None:
        super().__init__(options, engine)
        device = None if options.device == "auto" else options.device
        self._similarity = load_similarity(
            options.similarity, embedder=options.embedder, device=device
        )

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self.options.similarity not in USES_EMBEDDER:
            out.pop("embedder")
        return out

    def score(self, queries: Sequence[Query]) -> list[list[Scored]]:
        clipped = self.clipped(queries)
        predictions, references = [], []
        for query in clipped:
            for i, text in enumerate(query.candidates):
                others = query.candidates[:i] + query.candidates[i + 1 :]
                predictions.extend([text] * len(others))
                references.extend(others)
        values = iter(self._similarity(predictions, references) if predictions else [])
        out = []
        for query in clipped:
            count = len(query.candidates) - 1
            row = []
            for text in query.candidates:
                agreement = [next(values) for _ in range(count)]
                mean = sum(agreement) / count if count and text.strip() else 0.0
                row.append(Scored(mean))
            out.append(row)
        return out


ANSWERS = ("boxed", "number", "regex", "text")


def _compiles(pattern: Any) -> bool:
    """True for a string that `re.compile` accepts."""
    try:
        re.compile(pattern)
    except (re.error, TypeError):
        return False
    return isinstance(pattern, str)


@dataclass(frozen=True)
class VoteOptions(ScorerOptions):
    """vote's own options."""

    answer: str = option(
        "number",
        "How vote reads each candidate's final answer: boxed (the last \\boxed{...}), number "
        "(the last number; 1,000 = 1000 = 1000.0), regex (answer_pattern's last match: its "
        "first group, or all of it) or text (the whole text, lowercased, spaces collapsed, "
        "trailing .,;:!? dropped). Default number: self-consistency is for questions with a "
        "short final answer, mostly maths, which ends a response as its last number; text "
        "suits short answers only (long ones rarely agree word for word).",
        choices=ANSWERS,
    )
    answer_pattern: str | None = option(
        None,
        "Python regular expression of --answer regex, e.g. 'answer is (\\S+)'.",
        check=lambda v: v is None or _compiles(v),
        constraint="a regular expression that Python's re module compiles",
    )
    weight_by: str | None = option(
        None,
        "Reward-weighted vote: each candidate's vote weighs its score of this name (already in "
        "the records, or from a scorer listed before vote), min-max normalised within the "
        "record in that score's direction (best 1, worst 0; all equal: 1 each). Unset: one "
        "vote each.",
        check=lambda v: v is None or (isinstance(v, str) and bool(v)),
        constraint="a score name",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.answer == "regex" and self.answer_pattern is None:
            raise ConfigError(
                "`answer_pattern` must be set when `answer` is regex, e.g. 'answer is (\\S+)'"
            )
        if self.answer_pattern is not None and self.answer != "regex":
            raise ConfigError(
                f"`answer_pattern` is read only when `answer` is regex, got {self.answer!r}: "
                "set `answer` to regex, or drop the pattern"
            )
        if self.weight_by == "vote":
            raise ConfigError("`weight_by` must name a score other than vote's own, got 'vote'")


class VoteScorer(Scorer):
    """Share of the record's candidates giving the same answer (optionally reward-weighted)."""

    name = "vote"
    Options = VoteOptions
    uses_model = False
    independent = False

    @classmethod
    def check_options(cls, options: ScoreOptions) -> None:
        """`weight_by` names a score computed before vote (vote's options alone are checked by
        `VoteOptions`)."""
        order, name = options.scorers, options.of(cls.name).weight_by
        if cls.name in order and name in order and order.index(name) > order.index(cls.name):
            raise ConfigError(
                f"`weight_by` score {name!r} is computed after vote: list {name} before vote "
                "in `scorers`"
            )

    def __init__(self, options: ScoreOptions, engine: Callable[[], Engine]) -> None:
        super().__init__(options, engine)
        pattern = self.own.answer_pattern
        self._pattern = re.compile(pattern) if pattern is not None else None

    def check(self, query: Query) -> None:
        name = self.own.weight_by
        order = self.options.scorers
        earlier = order[: order.index(self.name)] if self.name in order else ()
        if name is not None and name not in earlier:
            self._weight_scores(query)

    def score(self, queries: Sequence[Query]) -> list[list[Scored]]:
        return [self._vote(query) for query in queries]

    def _vote(self, query: Query) -> list[Scored]:
        answers = [extract_answer(t, self.own.answer, self._pattern) for t in query.candidates]
        weights = self._weights(query)
        votes = Counter(a for a in answers if a is not None)
        tally: dict[str, float] = {}
        for answer, weight in zip(answers, weights, strict=True):
            if answer is not None:
                tally[answer] = tally.get(answer, 0.0) + weight
        total = sum(weights)
        out = []
        for answer in answers:
            if answer is None:
                out.append(Scored(0.0, {"answer": None}))
                continue
            evidence: dict[str, Any] = {"answer": answer, "votes": votes[answer]}
            if self.own.weight_by is not None:
                evidence["weight"] = tally[answer]
            out.append(Scored(tally[answer] / total if total > 0 else 0.0, evidence))
        return out

    def _weights(self, query: Query) -> list[float]:
        """Each candidate's vote: 1, or its `weight_by` score normalised within the record."""
        name = self.own.weight_by
        if name is None:
            return [1.0] * len(query.candidates)
        from bon.scorers import higher_is_better  # here: the registry imports this module

        return min_max(self._weight_scores(query), higher_is_better=higher_is_better(name))

    def _weight_scores(self, query: Query) -> list[Any]:
        """The `weight_by` score of each candidate; `RecordProblem` when one has none."""
        name = self.own.weight_by
        for i in range(len(query.candidates)):
            if i >= len(query.scores) or name not in query.scores[i]:
                raise RecordProblem(
                    f"candidate {i} has no `{name}` score to weight its vote by: score the "
                    f"records with {name} first (bon score --scorer {name}), or run it before "
                    f"vote (--scorer {name} --scorer vote --weight-by {name})"
                )
        return [scores[name] for scores in query.scores[: len(query.candidates)]]


def min_max(values: Sequence[Any], *, higher_is_better: bool = True) -> list[float]:
    """`values` mapped to [0, 1], the best 1 and the worst 0 (all equal: 1 each); a value that
    is not a finite number maps to 0."""
    finite = [v if _finite(v) else None for v in values]
    present = [v for v in finite if v is not None]
    if not present:
        return [0.0] * len(values)
    low, high = min(present), max(present)
    out = []
    for value in finite:
        if value is None:
            out.append(0.0)
        elif high == low:
            out.append(1.0)
        else:
            out.append((value - low if higher_is_better else high - value) / (high - low))
    return out


def _finite(value: Any) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and value - value == 0  # False for NaN and infinities


def extract_answer(text: str, mode: str, pattern: re.Pattern | None = None) -> str | None:
    """The answer `text` gives, normalised so equal answers compare equal, or None.

    `mode` is one of `ANSWERS`: `boxed` (the content of the last balanced
    `\\boxed{...}`), `number` (the last number), `regex` (the first group of `pattern`'s last
    match, or the whole match when it has no group) or `text` (the whole text). A boxed or
    matched answer that is a number is normalised as one; an empty answer is None.
    """
    if mode == "boxed":
        found = last_boxed(text)
    elif mode == "number":
        found = last_number(text)
    elif mode == "regex":
        if pattern is None:
            raise ValueError("answer mode regex needs a pattern")
        found = last_match(text, pattern)
    elif mode == "text":
        found = _TRAILING.sub("", " ".join(text.lower().split()))
    else:
        raise ValueError(f"unknown answer mode {mode!r}")
    if found is None or mode in ("number", "text"):
        return found or None
    found = " ".join(found.split())
    return (normalize_number(found) if _NUMBER.fullmatch(found) else found) or None


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` whose braces balance (nested ones included)."""
    closing: dict[int, int] = {}
    opened: list[int] = []
    for brace in _BRACES.finditer(text):
        if brace.group() == "{":
            opened.append(brace.start())
        elif opened:
            closing[opened.pop()] = brace.start()
    for box in reversed(list(_BOXED.finditer(text))):
        start = box.end() - 1
        if start in closing:
            return text[start + 1 : closing[start]]
    return None


def last_number(text: str) -> str | None:
    """The last number of `text` (optional minus, thousands commas, decimals), normalised."""
    found = _last(_NUMBER.finditer(text))
    return normalize_number(found.group()) if found else None


def normalize_number(number: str) -> str:
    """A number without thousands commas, leading zeros or trailing decimal zeros:
    "1,000", "1000" and "1000.0" all give "1000"; "-0.50" gives "-0.5"."""
    negative = number.startswith("-")
    whole, _, fraction = number.lstrip("-").replace(",", "").partition(".")
    whole, fraction = whole.lstrip("0") or "0", fraction.rstrip("0")
    digits = whole + ("." + fraction if fraction else "")
    return "-" + digits if negative and digits != "0" else digits


def last_match(text: str, pattern: re.Pattern) -> str | None:
    """The first group of `pattern`'s last match in `text` (the whole match without groups)."""
    found = _last(pattern.finditer(text))
    if found is None:
        return None
    return found.group(1) if pattern.groups else found.group()


def _last(matches: Iterator[re.Match]) -> re.Match | None:
    tail = deque(matches, maxlen=1)
    return tail[0] if tail else None
