"""The scorer interface: (conversation, candidate texts) in, one score per candidate out.

Scorers know nothing of files or record layout. Each declares its direction, which the selector
reads instead of assuming an argmax.
"""

from __future__ import annotations

import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from bon.chat import Message
from bon.engines import Engine, EngineOptions
from bon.errors import ConfigError
from bon.options import non_negative, option, positive, used_by
from bon.similarity import DEFAULT_EMBEDDER, SIMILARITIES

PROMPTS = ("paper", "short")
FLIP_FAMILY = ("flip", "flip-k", "flip-likelihood", "flip-tokens")
TOKEN_REDUCTIONS = ("sentences", "gain", "weakest", "z", "rank", "mean")
GENERATIVE_FLIP = ("flip", "flip-k")
JUDGES = ("judge-pointwise", "judge-pairwise", "judge-listwise")
TARGETS = ("instruction", "system")
PAIRWISE = ("round-robin", "knockout")
ANSWERS = ("boxed", "number", "regex", "text")
EMBEDDING_SCORERS = ("relevance", "mbr")
STEP_REDUCTIONS = ("last", "min", "prod", "mean")


@dataclass(frozen=True)
class Query:
    """What a scorer sees of one record: the chat turns whose last user turn is the instruction
    the candidates answer, and the candidate texts."""

    messages: list[Message]
    candidates: list[str]
    scores: tuple[dict[str, Any], ...] = ()
    """Each candidate's scores so far (from the input records or from a scorer run before this
    one), in candidate order; empty when the caller has none."""
    recorded: tuple[dict[str, Any], ...] = ()
    """Each candidate's other fields as its record holds them (e.g. the generator's
    `logprob_mean`), in candidate order; empty when the caller has none."""

    @property
    def instruction(self) -> str:
        return self.messages[-1]["content"]

    @property
    def history(self) -> list[Message]:
        """The turns before the instruction."""
        return self.messages[:-1]


@dataclass(frozen=True)
class Scored:
    """A candidate's score and the evidence behind it (stored beside the score)."""

    value: float
    evidence: dict[str, Any] = field(default_factory=dict)


def _scorer_names() -> list[str]:
    from bon.scorers import scorers  # here, not at import time: the registry imports us

    return scorers.names()


def _compiles(pattern: Any) -> bool:
    """True for a string that `re.compile` accepts."""
    try:
        re.compile(pattern)
    except (re.error, TypeError):
        return False
    return isinstance(pattern, str)


@dataclass(frozen=True)
class ScoreOptions(EngineOptions):
    """Options of the reranker stage: the scoring model (`EngineOptions`, independent of the
    generator's) and the options of each scorer. Each option names the scorers whose values it
    changes; only those enter a scorer's recorded configuration and its cache keys, so changing
    `k` does not touch a run of `flip` alone. `device` and `batch_size` are left out of both
    (they change scores by rounding at most); so are the cache's own settings.
    """

    scorers: tuple[str, ...] = option(
        ("flip-tokens",),
        "Scorer to run; repeat for several (each writes its own score).",
        check=lambda v: isinstance(v, tuple) and len(v) > 0,
        constraint="at least one scorer name",
        choices=_scorer_names,
        flag="--scorer",
    )
    batch_size: int = option(
        16,
        "Reconstructions or judgements computed at once.",
        check=positive,
        constraint="an integer >= 1",
    )
    max_new_tokens: int = option(
        128,
        "Cap on each generated reconstruction or judgement.",
        check=positive,
        constraint="an integer >= 1",
        used_by=(*GENERATIVE_FLIP, *JUDGES),
    )
    max_response_words: int = option(
        256,
        "Responses are cut to this many words before a model or a similarity reads them (long "
        "answers are told apart by their start; a 10 MB response must not overflow the "
        "context).",
        check=positive,
        constraint="an integer >= 1",
        used_by=(*FLIP_FAMILY, *JUDGES, *EMBEDDING_SCORERS),
    )
    similarity: str = option(
        "f1",
        "How inferred and original instructions are compared (mbr: how each candidate is "
        "compared with the others).",
        choices=tuple(sorted(SIMILARITIES)),
        used_by=(*GENERATIVE_FLIP, "mbr"),
    )
    embedder: str = option(
        DEFAULT_EMBEDDER,
        "sentence-transformers model (name or path) of the embedding similarities and of "
        "relevance; the default is the packaged all-MiniLM-L6-v2.",
        check=lambda v: isinstance(v, str) and bool(v),
        constraint="a model name or path",
        used_by=(*GENERATIVE_FLIP, *EMBEDDING_SCORERS),
    )
    prompt: str = option(
        "paper",
        "Reconstruction prompt of flip and flip-k: paper (reasoning, then JSON) or short (the "
        "instruction only). The paper's recipe: --scorer flip --prompt paper --similarity f1.",
        choices=PROMPTS,
        used_by=GENERATIVE_FLIP,
    )
    target: str = option(
        "instruction",
        "What FLIP reconstructs: the last user turn (earlier turns shown as context) or the "
        "system prompt (records must start with one).",
        choices=TARGETS,
        used_by=FLIP_FAMILY,
    )
    token_reduce: str = option(
        "sentences",
        "How flip-tokens aggregates the instruction's token log-probabilities. sentences: each "
        "instruction sentence's mean gain over the instruction's prior, averaged, plus half the "
        "least-gained sentence (each in standard scores across the record's candidates); "
        "weakest: the least-gained sentence alone; gain: the mean gain over the prior, clipped "
        "at 0; z or rank: each token compared across the record's candidates; mean: as "
        "flip-likelihood.",
        choices=TOKEN_REDUCTIONS,
        used_by=("flip-tokens",),
    )
    length_weight: float = option(
        0.5,
        "flip-tokens adds this many within-record standard scores of log(1 + words read) to "
        "the standard score of its token aggregate (0: the aggregate alone). Fitted on dev.",
        check=non_negative,
        constraint=">= 0",
        used_by=("flip-tokens",),
    )
    k: int = option(
        4,
        "Reconstructions sampled per candidate.",
        check=positive,
        constraint="an integer >= 1",
        used_by=("flip-k",),
    )
    temperature: float = option(
        0.7,
        "Sampling temperature of the reconstructions.",
        check=lambda v: non_negative(v) and v > 0,
        constraint="> 0 (flip-k samples)",
        used_by=("flip-k",),
    )
    seed: int = option(
        0,
        "Base seed; per-candidate seeds derive from it and the candidate's text.",
        check=lambda v: non_negative(v) and isinstance(v, int),
        constraint="an integer >= 0",
        used_by=("flip-k", "random"),
    )
    echo_guard: bool = option(
        True,
        "Penalise scores of responses that restate the instruction.",
        used_by=FLIP_FAMILY,
    )
    echo_ngram: int = option(
        3,
        "Word n-gram size of the echo guard.",
        check=positive,
        constraint="an integer >= 1",
        used_by=FLIP_FAMILY,
    )
    echo_threshold: float = option(
        0.8,
        "Share of the instruction's n-grams found in a response that marks it as an echo.",
        check=lambda v: non_negative(v) and 0 < v <= 1,
        constraint="in (0, 1]",
        used_by=FLIP_FAMILY,
    )
    echo_penalty: float | None = option(
        None,
        "Subtracted from an echo's score; unset: 1.0 for similarity scores, 10.0 nats per "
        "token for flip-likelihood (an echo then ranks below every non-echo).",
        check=lambda v: v is None or non_negative(v),
        constraint=">= 0 (or None for the per-scorer default)",
        used_by=FLIP_FAMILY,
    )
    pairwise: str = option(
        "round-robin",
        "How judge-pairwise aggregates: both orders of every pair, or a knockout bracket.",
        choices=PAIRWISE,
        used_by=("judge-pairwise",),
    )
    answer: str = option(
        "number",
        "How vote reads each candidate's final answer: boxed (the last \\boxed{...}), number "
        "(the last number; 1,000 = 1000 = 1000.0), regex (answer_pattern's last match: its "
        "first group, or all of it) or text (the whole text, lowercased, spaces collapsed, "
        "trailing .,;:!? dropped). Default number: self-consistency is for questions with a "
        "short final answer, mostly maths, which ends a response as its last number; text "
        "suits short answers only (long ones rarely agree word for word).",
        choices=ANSWERS,
        used_by=("vote",),
    )
    answer_pattern: str | None = option(
        None,
        "Python regular expression of --answer regex, e.g. 'answer is (\\S+)'.",
        check=lambda v: v is None or _compiles(v),
        constraint="a regular expression that Python's re module compiles",
        used_by=("vote",),
    )
    weight_by: str | None = option(
        None,
        "Reward-weighted vote: each candidate's vote weighs its score of this name (already in "
        "the records, or from a scorer listed before vote), min-max normalised within the "
        "record in that score's direction (best 1, worst 0; all equal: 1 each). Unset: one "
        "vote each.",
        check=lambda v: v is None or (isinstance(v, str) and bool(v)),
        constraint="a score name",
        used_by=("vote",),
    )
    mix: str | None = option(
        None,
        "Selector file of the mix scorer (YAML written by `bon fit`): the scorers it runs, "
        "their options and the weights of their within-record standard scores.",
        check=lambda v: v is None or (isinstance(v, str) and bool(v)),
        constraint="a file path",
        used_by=("mix",),
    )
    rm_label: int = option(
        0,
        "Which output of the reward model's head is the rm score (its raw logit); 0 for the "
        "usual one-output head.",
        check=lambda v: non_negative(v) and isinstance(v, int),
        constraint="an integer >= 0",
        used_by=("rm",),
    )
    step_sep: str = option(
        "\\n\\n",
        "What separates a response's steps for prm; \\n and \\t are read as a newline and a "
        "tab, so the default is a blank line.",
        check=lambda v: isinstance(v, str) and bool(v),
        constraint="a non-empty string",
        used_by=("prm",),
    )
    step_tag: str = option(
        "<step>",
        "The token prm writes after each step, where the process reward model reads the "
        "step's score: one token of its tokenizer, the one it was trained with (e.g. "
        "<extra_0> for Qwen2.5-Math-PRM).",
        check=lambda v: isinstance(v, str) and bool(v.strip()),
        constraint="a non-empty token",
        used_by=("prm",),
    )
    prm_label: int = option(
        1,
        "Which label of the process reward model's head means a good step; a step's score is "
        "that label's softmax probability.",
        check=lambda v: non_negative(v) and isinstance(v, int),
        constraint="an integer >= 0",
        used_by=("prm",),
    )
    step_reduce: str = option(
        "min",
        "How prm turns its step scores into one: last (the final step's), min (the weakest "
        "step's), prod (all steps good) or mean.",
        choices=STEP_REDUCTIONS,
        used_by=("prm",),
    )
    cache_path: str | None = option(
        None,
        "Score cache file; unset: scores.sqlite in bon's cache folder.",
        check=lambda v: v is None or (isinstance(v, str) and bool(v)),
        constraint="a file path",
    )
    no_cache: bool = option(False, "Neither read nor write the score cache.")

    def __post_init__(self) -> None:
        object.__setattr__(self, "scorers", tuple(self.scorers))
        super().__post_init__()
        self._check_vote()
        self._check_mix()

    def _check_mix(self) -> None:
        """The mix scorer's selector file, read and checked here, before any model loads."""
        if self.mix is None:
            if "mix" in self.scorers:
                raise ConfigError(
                    "`mix` must name a selector file when the scorers include mix: add "
                    "--mix SELECTOR.yaml (written by `bon fit`)"
                )
            return
        from bon.scorers.mix import load_selector  # here: the mix module imports this one

        load_selector(self.mix).score_options(self)

    def _check_vote(self) -> None:
        """The rules between vote's options (each option alone is checked by `validate`)."""
        if self.answer == "regex" and self.answer_pattern is None:
            raise ConfigError(
                "`answer_pattern` must be set when `answer` is regex, e.g. 'answer is (\\S+)'"
            )
        if self.answer_pattern is not None and self.answer != "regex":
            raise ConfigError(
                f"`answer_pattern` is read only when `answer` is regex, got {self.answer!r}: "
                "set `answer` to regex, or drop the pattern"
            )
        order, name = self.scorers, self.weight_by
        if name == "vote":
            raise ConfigError("`weight_by` must name a score other than vote's own, got 'vote'")
        if "vote" in order and name in order and order.index(name) > order.index("vote"):
            raise ConfigError(
                f"`weight_by` score {name!r} is computed after vote: list {name} before vote "
                "in `scorers`"
            )


class Scorer(ABC):
    """Scores candidates. Subclasses register with `bon.scorers.register`.

    A scorer gets the reranker's options and a function returning the shared engine, called only
    when the scorer first needs a model.
    """

    name: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    uses_model: ClassVar[bool] = True
    """False for scorers that run no model (the controls): the reranker does not cache them."""
    version: ClassVar[str] = "1"
    """Bumped whenever the scorer's computation changes (prompt, parsing, aggregation), so
    cached scores of an older version are never reused."""
    independent: ClassVar[bool] = True
    """True when a candidate's score depends only on the conversation and its own text (so the
    cache can key it alone); False for scorers that compare candidates (pairwise, listwise)."""

    def __init__(self, options: ScoreOptions, engine: Callable[[], Engine]) -> None:
        self.options = options
        self._engine = engine

    @abstractmethod
    def score(self, queries: Sequence[Query]) -> list[list[Scored]]:
        """One `Scored` per candidate of each query, in input order."""

    @property
    def engine(self) -> Engine:
        return self._engine()

    def describe(self) -> dict[str, Any]:
        """What determines this scorer's values (recorded per record, part of its cache keys):
        its name, direction and version, the scoring model's identity when it uses one, and
        the options declared as used by it."""
        out: dict[str, Any] = {
            "scorer": self.name,
            "higher_is_better": self.higher_is_better,
            "version": self.version,
        }
        if self.uses_model:
            out.update(self.options.identity())
        out.update({name: getattr(self.options, name) for name in self.options_used()})
        return out

    @classmethod
    def options_used(cls) -> list[str]:
        """The `ScoreOptions` fields that change this scorer's values."""
        return used_by(ScoreOptions, cls.name)

    def clipped(self, queries: Sequence[Query]) -> list[Query]:
        """`queries` with each candidate cut to `max_response_words` words."""
        limit = self.options.max_response_words
        return [Query(q.messages, [clip_words(t, limit) for t in q.candidates]) for q in queries]

    def check(self, query: Query) -> None:
        """Raise `RecordProblem` for a record this scorer cannot score (checked before any
        model loads)."""


CHARS_PER_WORD = 16


def refused(evidence: Any) -> bool:
    """True when a score's evidence says the engine refused to answer (parse status "error...")."""
    status = evidence.get("parse") if isinstance(evidence, dict) else None
    return isinstance(status, str) and status.startswith("error")


def clip_words(text: str, limit: int) -> str:
    """`text` cut after its `limit`-th whitespace-separated word, its layout kept, and to at
    most `CHARS_PER_WORD * limit` characters (a response without spaces is no exception)."""
    text = text[: CHARS_PER_WORD * limit]
    for count, match in enumerate(re.finditer(r"\S+", text), start=1):
        if count == limit:
            return text[: match.end()]
    return text


def text_seed(seed: int, *parts: str) -> int:
    """A 31-bit seed from a base seed and some text (stable across runs and machines)."""
    digest = hashlib.sha256("\x1f".join([str(seed), *parts]).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def regroup(flat: Sequence[Scored], sizes: Sequence[int]) -> list[list[Scored]]:
    """Split a flat list of scores back into one list per query."""
    out, start = [], 0
    for size in sizes:
        out.append(list(flat[start : start + size]))
        start += size
    return out


def json_object(text: str) -> dict[str, Any] | None:
    """The JSON object spanning the first "{" to the last "}" of a model's output, if it parses."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        data = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None
