"""LLM-as-a-judge baselines, run with the same small model as FLIP (as in the paper).

- `judge-pointwise`: a 1-10 rating per candidate, JSON {"REASONING", "SCORE"}; an unparsable
  judgement scores 0 (below every valid rating).
- `judge-pairwise`: A/B verdicts, JSON {"REASONING", "BETTER_RESPONSE"}. "round-robin" judges
  every pair in both orders (position bias cancels) and scores a candidate by its share of
  wins; "knockout" plays a single-elimination bracket (lower index as A, a bye for an odd one
  out) and scores a candidate by the share of rounds it survived (the champion gets 1).
  An unparsable verdict counts half a win for each side (round-robin) or sends the A side on
  (knockout).
- `judge-listwise`: the 0-based index of the best of a numbered list, JSON {"REASONING",
  "BEST_RESPONSE_INDEX"}; the chosen candidate scores 1, the others 0 (all 0 when unparsable).

Each judgement's parse status ("json", "regex", "failed", "out-of-range") is recorded in the
evidence, so parse-failure rates can be reported.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bon.chat import Message
from bon.cost import rows_of
from bon.engines import Engine, SamplingOptions
from bon.options import option
from bon.scorers.base import Query, Scored, ScoreOptions, Scorer, ScorerOptions, json_object
from bon.scorers.flip import clean_output

PROMPT_VERSION = "judge-v1"

_CRITERIA = (
    "Judge helpfulness, relevance, accuracy, depth, creativity and level of detail. Do not let "
    "the length of an answer or its position sway you."
)

POINTWISE_SYSTEM = f"""\
You are a fair judge of answers written by AI assistants. Read the user's question and one \
answer, then rate the answer from 1 (useless) to 10 (excellent). {_CRITERIA}

Give short reasoning first, then the rating. Answer with a JSON object with exactly two keys: \
"REASONING" (a string) and "SCORE" (an integer from 1 to 10)."""

POINTWISE_USER = """\
{history}[Question]
{question}

[Answer]
{answer}

[Your Judgement]
Answer with the JSON object {{"REASONING": "...", "SCORE": ...}}."""

PAIRWISE_SYSTEM = f"""\
You are a fair judge of answers written by AI assistants. Read the user's question and two \
answers, A and B, then decide which answer is better. {_CRITERIA}

Give short reasoning first, then your verdict. Answer with a JSON object with exactly two keys: \
"REASONING" (a string) and "BETTER_RESPONSE" ("A" or "B")."""

PAIRWISE_USER = """\
{history}[Question]
{question}

[Answer A]
{a}

[Answer B]
{b}

[Your Judgement]
Answer with the JSON object {{"REASONING": "...", "BETTER_RESPONSE": "A" or "B"}}."""

LISTWISE_SYSTEM = f"""\
You are a fair judge of answers written by AI assistants. Read the user's question and a \
numbered list of answers, then pick the best one. {_CRITERIA}

Give short reasoning first, then your choice. Answer with a JSON object with exactly two keys: \
"REASONING" (a string) and "BEST_RESPONSE_INDEX" (the number of the best answer, counting from \
0)."""

LISTWISE_USER = """\
{history}[Question]
{question}

{answers}
[Your Judgement]
Answer with the JSON object {{"REASONING": "...", "BEST_RESPONSE_INDEX": ...}}."""


def _history(history: Sequence[Message]) -> str:
    if not history:
        return ""
    turns = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in history)
    return f"[Conversation so far]\n{turns}\n\n"


def pointwise_messages(query: Query, answer: str) -> list[Message]:
    user = POINTWISE_USER.format(
        history=_history(query.history), question=query.instruction, answer=answer.strip()
    )
    return [{"role": "system", "content": POINTWISE_SYSTEM}, {"role": "user", "content": user}]


def pairwise_messages(query: Query, a: str, b: str) -> list[Message]:
    user = PAIRWISE_USER.format(
        history=_history(query.history), question=query.instruction, a=a.strip(), b=b.strip()
    )
    return [{"role": "system", "content": PAIRWISE_SYSTEM}, {"role": "user", "content": user}]


def listwise_messages(query: Query) -> list[Message]:
    answers = "".join(
        f"[Answer {i}]\n{text.strip()}\n\n" for i, text in enumerate(query.candidates)
    )
    user = LISTWISE_USER.format(
        history=_history(query.history), question=query.instruction, answers=answers
    )
    return [{"role": "system", "content": LISTWISE_SYSTEM}, {"role": "user", "content": user}]


# ----------------------------------------------------------------------------- parsing

_NUMBER = r"(-?\d+(?:\.\d+)?)"
_SCORE_FIELD = re.compile(r"[\"']?score[\"']?\s*[:=]\s*[\"']?" + _NUMBER, re.IGNORECASE)
_SCORE_OUT_OF = re.compile(_NUMBER + r"\s*(?:/|out\s+of)\s*10\b", re.IGNORECASE)
_CHOICE_FIELD = re.compile(
    r"better[\s_-]*response[\"']?\s*[:=]\s*[\"']?\s*(?:response|answer)?\s*([AB])\b",
    re.IGNORECASE,
)
_CHOICE_SENTENCE = re.compile(
    r"\b(?:response|answer)\s+\(?([AB])\)?\s+is\s+(?:the\s+)?better\b", re.IGNORECASE
)
_INDEX_FIELD = re.compile(
    r"best[\s_-]*response[\s_-]*index[\"']?\s*[:=]\s*[\"']?\s*(?:answer|response)?\s*#?(-?\d+)",
    re.IGNORECASE,
)
_INDEX_SENTENCE = re.compile(
    r"\b(?:answer|response)\s*#?\s*(\d+)\s+is\s+(?:the\s+)?best\b", re.IGNORECASE
)
_CHOICE_VALUE = re.compile(r"^\W*(?:response|answer)?\s*([AB])\W*$", re.IGNORECASE)


def _json_value(data: dict[str, Any] | None, pattern: str) -> Any:
    if data is None:
        return None
    for key, value in data.items():
        if re.fullmatch(pattern, str(key).strip(), re.IGNORECASE):
            return value
    return None


def _as_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        match = re.search(_NUMBER, value)
        return float(match.group(1)) if match else None
    return None


def parse_score(output: str) -> tuple[float | None, str]:
    """A pointwise rating in [1, 10] and its parse status ("json", "regex", "out-of-range",
    "failed")."""
    text = clean_output(output)
    value = _as_number(_json_value(json_object(text), r"score"))
    status = "json"
    if value is None:
        match = _SCORE_FIELD.search(text) or _SCORE_OUT_OF.search(text)
        value, status = (float(match.group(1)), "regex") if match else (None, "failed")
    if value is None:
        return None, "failed"
    if not 1 <= value <= 10:
        return None, "out-of-range"
    return value, status


def parse_choice(output: str) -> tuple[str | None, str]:
    """A pairwise verdict "A" or "B" and its parse status ("json", "regex", "failed")."""
    text = clean_output(output)
    value = _json_value(json_object(text), r"better[\s_-]*response")
    if isinstance(value, str):
        match = _CHOICE_VALUE.match(value)
        if match:
            return match.group(1).upper(), "json"
    match = _CHOICE_FIELD.search(text) or _CHOICE_SENTENCE.search(text)
    if match:
        return match.group(1).upper(), "regex"
    return None, "failed"


def parse_index(output: str, n: int) -> tuple[int | None, str]:
    """A listwise 0-based index in [0, n) and its parse status ("json", "regex",
    "out-of-range", "failed")."""
    text = clean_output(output)
    value = _as_number(_json_value(json_object(text), r"best[\s_-]*response[\s_-]*index"))
    status = "json"
    if value is None or value != int(value):
        match = _INDEX_FIELD.search(text) or _INDEX_SENTENCE.search(text)
        value, status = (float(match.group(1)), "regex") if match else (None, "failed")
    if value is None:
        return None, "failed"
    if not 0 <= value < n:
        return None, "out-of-range"
    return int(value), status


# ----------------------------------------------------------------------------- scorers


PAIRWISE_MODES = ("round-robin", "knockout")


@dataclass(frozen=True)
class PairwiseOptions(ScorerOptions):
    """judge-pairwise's own options."""

    pairwise: str = option(
        "round-robin",
        "How judge-pairwise aggregates: both orders of every pair, or a knockout bracket.",
        choices=PAIRWISE_MODES,
    )


class _Judge(Scorer):
    def __init__(self, options: ScoreOptions, engine: Callable[[], Engine]) -> None:
        super().__init__(options, engine)
        self._sampling = SamplingOptions(n=1, temperature=0, max_new_tokens=options.max_new_tokens)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "prompt": PROMPT_VERSION, "decoding": "greedy"}

    def _judge(self, prompts: list[list[Message]], owners: Sequence[object]) -> list[str]:
        """The verdict on each prompt; `owners[i]` is the `messages` of the query prompt i
        judges (`rows_of`)."""
        if not prompts:
            return []
        with rows_of(self.engine, owners):
            return [out[0].text for out in self.engine.generate(prompts, self._sampling)]


class PointwiseJudge(_Judge):
    """Rates each candidate alone from 1 to 10 (0 when the rating cannot be parsed)."""

    name = "judge-pointwise"

    def score(self, queries: Sequence[Query]) -> list[list[Scored]]:
        queries = self.clipped(queries)
        prompts = [pointwise_messages(q, text) for q in queries for text in q.candidates]
        outputs = iter(self._judge(prompts, [q.messages for q in queries for _ in q.candidates]))
        out = []
        for query in queries:
            row = []
            for _ in query.candidates:
                value, status = parse_score(next(outputs))
                row.append(Scored(value or 0.0, {"parse": status}))
            out.append(row)
        return out


class PairwiseJudge(_Judge):
    """Compares candidates two at a time (round-robin or knockout)."""

    name = "judge-pairwise"
    Options = PairwiseOptions
    independent = False

    def score(self, queries: Sequence[Query]) -> list[list[Scored]]:
        queries = self.clipped(queries)
        if self.own.pairwise == "knockout":
            return self._knockout(queries)
        return self._round_robin(queries)

    def _round_robin(self, queries: Sequence[Query]) -> list[list[Scored]]:
        games = [
            (qi, a, b)
            for qi, q in enumerate(queries)
            for a in range(len(q.candidates))
            for b in range(len(q.candidates))
            if a != b
        ]
        verdicts = self._judge(
            [
                pairwise_messages(queries[qi], queries[qi].candidates[a], queries[qi].candidates[b])
                for qi, a, b in games
            ],
            [queries[qi].messages for qi, _, _ in games],
        )
        wins = [[0.0] * len(q.candidates) for q in queries]
        failed = [[0] * len(q.candidates) for q in queries]
        for (qi, a, b), output in zip(games, verdicts, strict=True):
            choice, _ = parse_choice(output)
            if choice is None:
                wins[qi][a] += 0.5
                wins[qi][b] += 0.5
                failed[qi][a] += 1
                failed[qi][b] += 1
            else:
                wins[qi][a if choice == "A" else b] += 1
        out = []
        for qi, query in enumerate(queries):
            games_each = 2 * (len(query.candidates) - 1)
            out.append(
                [
                    Scored(
                        wins[qi][i] / games_each if games_each else 1.0,
                        {"wins": wins[qi][i], "games": games_each, "failed": failed[qi][i]},
                    )
                    for i in range(len(query.candidates))
                ]
            )
        return out

    def _knockout(self, queries: Sequence[Query]) -> list[list[Scored]]:
        alive = [list(range(len(q.candidates))) for q in queries]
        survived = [[0] * len(q.candidates) for q in queries]
        failed = [[0] * len(q.candidates) for q in queries]
        rounds = [math.ceil(math.log2(len(q.candidates))) if q.candidates else 0 for q in queries]
        while any(len(a) > 1 for a in alive):
            matches = [
                (qi, a[i], a[i + 1])
                for qi, a in enumerate(alive)
                if len(a) > 1
                for i in range(0, len(a) - 1, 2)
            ]
            verdicts = self._judge(
                [
                    pairwise_messages(
                        queries[qi], queries[qi].candidates[a], queries[qi].candidates[b]
                    )
                    for qi, a, b in matches
                ],
                [queries[qi].messages for qi, _, _ in matches],
            )
            winners: dict[int, list[int]] = {}
            for (qi, a, b), output in zip(matches, verdicts, strict=True):
                choice, _ = parse_choice(output)
                if choice is None:
                    failed[qi][a] += 1
                    failed[qi][b] += 1
                winners.setdefault(qi, []).append(b if choice == "B" else a)
            for qi, group in winners.items():
                if len(alive[qi]) % 2:
                    group.append(alive[qi][-1])  # the bye
                for i in group:
                    survived[qi][i] += 1
                alive[qi] = group
        return [
            [
                Scored(
                    survived[qi][i] / rounds[qi] if rounds[qi] else 1.0,
                    {"rounds_won": survived[qi][i], "rounds": rounds[qi], "failed": failed[qi][i]},
                )
                for i in range(len(q.candidates))
            ]
            for qi, q in enumerate(queries)
        ]


class ListwiseJudge(_Judge):
    """Picks the best of the numbered candidates: it scores 1, the others 0."""

    name = "judge-listwise"
    independent = False

    def score(self, queries: Sequence[Query]) -> list[list[Scored]]:
        queries = self.clipped(queries)
        multi = [qi for qi, q in enumerate(queries) if len(q.candidates) > 1]
        outputs = self._judge(
            [listwise_messages(queries[qi]) for qi in multi], [queries[qi].messages for qi in multi]
        )
        out = [[Scored(1.0, {"parse": "single"}) for _ in q.candidates] for q in queries]
        for qi, output in zip(multi, outputs, strict=True):
            index, status = parse_index(output, len(queries[qi].candidates))
            out[qi] = [
                Scored(1.0 if i == index else 0.0, {"parse": status})
                for i in range(len(queries[qi].candidates))
            ]
        return out
