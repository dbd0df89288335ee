"""Reward models as scorers: `rm` scores a whole response, `prm` each of its steps.

Both read the reranker's model through the engine's classification calls, so the scoring
`--model` names the reward model: a checkpoint with a classification head (one that
`AutoModelForSequenceClassification` or, for prm, `AutoModelForTokenClassification` loads). The
conversation, prompt turns and the response as the assistant's turn, is rendered whole with the
reward model's own chat template.

- `rm`: the head's raw output `rm_label` (a logit; 0 for the usual one-output head) at the
  conversation's last token. Higher is better; the scale is the model's own.
- `prm`: the response is cut into steps at `step_sep` (\\n and \\t read as a newline and a
  tab; steps that are only spaces dropped, each step stripped), `step_tag` is written after
  each step (the separators kept between them), and each step scores the softmax probability
  of label `prm_label` over the head's logits at its tag; `step_reduce` makes one score of
  them: last, min (the weakest step), prod or mean. Evidence: the step scores. A response
  without a step scores 0. A tag the response already holds is removed first, so that only
  bon's tags are read.

Responses are not cut to `max_response_words` (a reward model judges the whole response); a
conversation longer than the model's context is its record's problem (`RecordError`). Whether
the model has a classification head, and for prm whether `step_tag` is one token of its
tokenizer, is checked when the scorer is made, before any record is read or weights load (with
the hf and vllm engines; the openai engine's server answers only when asked).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bon.chat import Message
from bon.cost import rows_of
from bon.engines import Engine, engines
from bon.engines.base import CAUSAL_LM
from bon.errors import ConfigError, RecordError
from bon.options import non_negative, option
from bon.scorers.base import Query, Scored, ScoreOptions, Scorer, ScorerOptions, regroup

MODEL_FLAGS = "--model of bon score, --reranker-model of bon run"


@dataclass(frozen=True)
class RewardModelOptions(ScorerOptions):
    """rm's own options."""

    rm_label: int = option(
        0,
        "Which output of the reward model's head is the rm score (its raw logit); 0 for the "
        "usual one-output head.",
        check=lambda v: non_negative(v) and isinstance(v, int),
        constraint="an integer >= 0",
    )


class RewardModelScorer(Scorer):
    """`rm`: the reward model's raw score of each whole conversation."""

    name = "rm"
    reads_prefix = True
    Options = RewardModelOptions

    def __init__(self, options: ScoreOptions, engine: Callable[[], Engine]) -> None:
        super().__init__(options, engine)
        check_classifier(options, self.name)

    def score(self, queries: Sequence[Query]) -> list[list[Scored]]:
        conversations = [with_response(q.messages, t) for q in queries for t in q.candidates]
        with rows_of(self.engine, [q.messages for q in queries for _ in q.candidates]):
            rows = self.engine.sequence_scores(conversations) if conversations else []
        flat = [self._scored(row) for row in rows]
        return regroup(flat, [len(q.candidates) for q in queries])

    def _scored(self, logits: list[float]) -> Scored:
        label = self.own.rm_label
        if label >= len(logits):
            raise ConfigError(
                f"`rm_label` must be below the {len(logits)} output(s) of model "
                f"{self.options.model!r}'s head, got {label}"
            )
        evidence = {"logits": [round(v, 6) for v in logits]} if len(logits) > 1 else {}
        return Scored(float(logits[label]), evidence)


STEP_REDUCTIONS = ("last", "min", "prod", "mean")


@dataclass(frozen=True)
class ProcessRewardOptions(ScorerOptions):
    """prm's own options."""

    step_sep: str = option(
        "\\n\\n",
        "What separates a response's steps for prm; \\n and \\t are read as a newline and a "
        "tab, so the default is a blank line.",
        check=lambda v: isinstance(v, str) and bool(v),
        constraint="a non-empty string",
    )
    step_tag: str = option(
        "<step>",
        "The token prm writes after each step, where the process reward model reads the "
        "step's score: one token of its tokenizer, the one it was trained with (e.g. "
        "<extra_0> for Qwen2.5-Math-PRM).",
        check=lambda v: isinstance(v, str) and bool(v.strip()),
        constraint="a non-empty token",
    )
    prm_label: int = option(
        1,
        "Which label of the process reward model's head means a good step; a step's score is "
        "that label's softmax probability.",
        check=lambda v: non_negative(v) and isinstance(v, int),
        constraint="an integer >= 0",
    )
    step_reduce: str = option(
        "min",
        "How prm turns its step scores into one: last (the final step's), min (the weakest "
        "step's), prod (all steps good) or mean.",
        choices=STEP_REDUCTIONS,
    )


class ProcessRewardScorer(Scorer):
    """`prm`: per-step probabilities of a process reward model, reduced to one score."""

    name = "prm"
    Options = ProcessRewardOptions

    def __init__(self, options: ScoreOptions, engine: Callable[[], Engine]) -> None:
        super().__init__(options, engine)
        check_classifier(options, self.name)
        tag = self.own.step_tag
        count = engines.get(options.engine).token_count(options.model, tag)
        if count is not None and count != 1:
            raise ConfigError(
                f"`step_tag` {tag!r} is {count} tokens in model "
                f"{options.model!r}'s tokenizer, not one: give the tag the process reward "
                "model was trained with (one token of its tokenizer, e.g. <extra_0> for "
                "Qwen2.5-Math-PRM)"
            )

    def score(self, queries: Sequence[Query]) -> list[list[Scored]]:
        sep, tag = separator(self.own.step_sep), self.own.step_tag
        items = [(q.messages, split_steps(t, sep, tag)) for q in queries for t in q.candidates]
        todo = [i for i, (_, steps) in enumerate(items) if steps]
        conversations = [with_response(items[i][0], tag_steps(items[i][1], sep, tag)) for i in todo]
        with rows_of(self.engine, [items[i][0] for i in todo]):
            rows = self.engine.tag_logits(conversations, tag) if todo else []
        flat = [Scored(0.0, {"steps": []}) for _ in items]
        for i, row in zip(todo, rows, strict=True):
            flat[i] = self._scored(items[i][1], row)
        return regroup(flat, [len(q.candidates) for q in queries])

    def _scored(self, steps: list[str], logits: list[list[float]]) -> Scored:
        if len(logits) != len(steps):
            raise RecordError(
                f"the response has {len(steps)} step(s) but the model read {len(logits)} "
                f"`step_tag` token(s): the tag {self.own.step_tag!r} merges with the text "
                "around it; give a special token as the tag"
            )
        probs = [self._probability(row) for row in logits]
        value = reduce_steps(probs, self.own.step_reduce)
        return Scored(value, {"steps": [round(p, 6) for p in probs]})

    def _probability(self, logits: list[float]) -> float:
        label = self.own.prm_label
        if len(logits) < 2 or label >= len(logits):
            raise ConfigError(
                f"`prm_label` must name one of the labels of model {self.options.model!r}'s "
                f"head, which has {len(logits)} output(s), got {label}; prm needs a head of two "
                "or more labels (good and bad step): for a one-output reward model use rm"
            )
        return softmax(logits)[label]


def check_classifier(options: ScoreOptions, scorer: str) -> None:
    """Raise `ConfigError` when the scoring model is known, before it loads, to be a causal LM."""
    head = engines.get(options.engine).model_head(options.model)
    if head == CAUSAL_LM:
        raise ConfigError(
            f"the {scorer} scorer needs a reward model, and model {options.model!r} has no "
            "classification head (its config names a causal LM): give a checkpoint that "
            f"AutoModelForSequenceClassification loads as the scoring model ({MODEL_FLAGS})"
        )


def separator(step_sep: str) -> str:
    """`step_sep` with the backslash sequences \\n and \\t read as a newline and a tab (as a
    shell gives them)."""
    return step_sep.replace("\\n", "\n").replace("\\t", "\t")


def with_response(messages: list[Message], response: str) -> list[Message]:
    """The conversation with `response` as the assistant's reply."""
    return [*messages, {"role": "assistant", "content": response}]


def split_steps(text: str, sep: str, tag: str) -> list[str]:
    """The response's steps: its parts between `sep`, stripped, empty ones dropped, with any
    `tag` already in the text removed."""
    return [step.strip() for step in text.replace(tag, "").split(sep) if step.strip()]


def tag_steps(steps: list[str], sep: str, tag: str) -> str:
    """The steps joined by `sep`, each followed by `tag`."""
    return sep.join(step + tag for step in steps)


def softmax(logits: Sequence[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(v - top) for v in logits]
    total = sum(exps)
    return [e / total for e in exps]


def reduce_steps(probs: Sequence[float], how: str) -> float:
    """One score from the step scores: the last, the least, the product or the mean."""
    reductions: dict[str, Callable[[Sequence[float]], Any]] = {
        "last": lambda p: p[-1],
        "min": min,
        "prod": math.prod,
        "mean": lambda p: sum(p) / len(p),
    }
    return float(reductions[how](probs))
