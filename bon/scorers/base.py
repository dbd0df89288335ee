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
from bon.options import non_negative, option, positive, used_by
from bon.similarity import DEFAULT_EMBEDDER, SIMILARITIES

PROMPTS = ("paper", "short")
FLIP_FAMILY = ("flip", "flip-k", "flip-likelihood", "flip-tokens")
TOKEN_REDUCTIONS = ("sentences", "gain", "weakest", "z", "rank", "mean")
GENERATIVE_FLIP = ("flip", "flip-k")
JUDGES = ("judge-pointwise", "judge-pairwise", "judge-listwise")
TARGETS = ("instruction", "system")
PAIRWISE = ("round-robin", "knockout")


@dataclass(frozen=True)
class Query:
    """What a scorer sees of one record: the chat turns whose last user turn is the instruction
    the candidates answer, and the candidate texts."""

    messages: list[Message]
    candidates: list[str]

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
        "Responses are cut to this many words before a model reads them (long answers are "
        "told apart by their start; a 10 MB response must not overflow the context).",
        check=positive,
        constraint="an integer >= 1",
        used_by=(*FLIP_FAMILY, *JUDGES),
    )
    similarity: str = option(
        "f1",
        "How inferred and original instructions are compared.",
        choices=tuple(sorted(SIMILARITIES)),
        used_by=GENERATIVE_FLIP,
    )
    embedder: str = option(
        DEFAULT_EMBEDDER,
        "sentence-transformers model (name or path) of the embedding similarities; the default "
        "is the packaged all-MiniLM-L6-v2.",
        check=lambda v: isinstance(v, str) and bool(v),
        constraint="a model name or path",
        used_by=GENERATIVE_FLIP,
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
