"""The scorer interface: (conversation, candidate texts) in, one score per candidate out.

Scorers know nothing of files or record layout. Each declares its direction, which the selector
reads instead of assuming an argmax.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from bon.chat import Message
from bon.engines import Engine, EngineOptions
from bon.engines.base import engine_options_of
from bon.errors import require
from bon.models import DEFAULT_MODEL
from bon.similarity import DEFAULT_EMBEDDER, SIMILARITIES

PROMPTS = ("paper", "short")
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


@dataclass(frozen=True)
class ScoreOptions:
    """Options of the reranker stage, shared by every scorer it runs.

    Attributes:
        scorers: names of the scorers to run; each writes its own key in `scores`.
        model: the scoring LM (alias, Hub id or local path); independent of the generator's.
        engine: the engine that runs it.
        device, dtype, batch_size, engine_args: as for `EngineOptions`.
        max_new_tokens: cap on each generated reconstruction or judgement.
        similarity: how FLIP compares inferred and original instructions (`bon.similarity`):
            f1, rougeL, bleu, bleu-rougeL, cosine or f1-cosine.
        embedder: sentence-transformers model (name or path) of the embedding similarities;
            the default is the packaged all-MiniLM-L6-v2.
        prompt: FLIP's reconstruction prompt: "paper" (reasoning, then a JSON object, as in
            the paper) or "short" (reply with only the instruction). flip-likelihood always
            uses "short", since it teacher-forces the bare instruction as the reply.
        target: what FLIP reconstructs: "instruction" (the last user turn, earlier turns shown
            as context) or "system" (the system prompt, the user turns shown as context).
        k: reconstructions sampled per candidate by flip-k.
        temperature: sampling temperature of flip-k (flip and the judges decode greedily).
        seed: base seed of flip-k and of the random control; per-candidate seeds derive from
            it and the candidate's text (an engine that seeds a whole batch, such as `hf`, uses
            the batch's first seed, so flip-k samples can change with the batch size).
        echo_guard: penalise FLIP scores of responses that restate the target.
        echo_ngram: n of the word n-grams the echo guard compares.
        echo_threshold: share of the target's n-grams found in the response at or above which
            the response counts as an echo, in (0, 1].
        echo_penalty: subtracted from an echo's FLIP score. None picks a default per scorer
            that ranks an echo below every non-echo: 1.0 for the similarity variants (their
            scores lie in [0, 1]) and 10.0 nats per token for flip-likelihood.
        pairwise: how judge-pairwise aggregates: "round-robin" (every ordered pair, both
            orders, cancels position bias; N(N-1) calls) or "knockout" (N-1 calls).
        cache_path: the SQLite score cache; default `bon.models.cache_dir()/scores.sqlite`.
        no_cache: neither read nor write the score cache.
    """

    scorers: tuple[str, ...] = ("flip",)
    model: str = DEFAULT_MODEL
    engine: str = "hf"
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 16
    max_new_tokens: int = 128
    similarity: str = "f1"
    embedder: str = DEFAULT_EMBEDDER
    prompt: str = "paper"
    target: str = "instruction"
    k: int = 4
    temperature: float = 0.7
    seed: int = 0
    echo_guard: bool = True
    echo_ngram: int = 3
    echo_threshold: float = 0.8
    echo_penalty: float | None = None
    pairwise: str = "round-robin"
    cache_path: str | None = None
    no_cache: bool = False
    engine_args: Mapping[str, Any] | None = None

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        "similarity": tuple(sorted(SIMILARITIES)),
        "prompt": PROMPTS,
        "target": TARGETS,
        "pairwise": PAIRWISE,
    }
    """The allowed values of the options that take one of a fixed set."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "scorers", tuple(self.scorers))
        require(len(self.scorers) > 0, "scorers", "at least one scorer name", self.scorers)
        require(self.max_new_tokens >= 1, "max_new_tokens", "an integer >= 1", self.max_new_tokens)
        require(
            self.similarity in SIMILARITIES,
            "similarity",
            f"one of {', '.join(sorted(SIMILARITIES))}",
            self.similarity,
        )
        require(bool(self.embedder), "embedder", "a model name or path", self.embedder)
        require(self.prompt in PROMPTS, "prompt", f"one of {', '.join(PROMPTS)}", self.prompt)
        require(self.target in TARGETS, "target", f"one of {', '.join(TARGETS)}", self.target)
        require(self.k >= 1, "k", "an integer >= 1", self.k)
        require(self.temperature > 0, "temperature", "> 0 (flip-k samples)", self.temperature)
        require(self.seed >= 0, "seed", "an integer >= 0", self.seed)
        require(self.echo_ngram >= 1, "echo_ngram", "an integer >= 1", self.echo_ngram)
        require(0 < self.echo_threshold <= 1, "echo_threshold", "in (0, 1]", self.echo_threshold)
        require(
            self.echo_penalty is None or self.echo_penalty >= 0,
            "echo_penalty",
            ">= 0 (or None for the per-scorer default)",
            self.echo_penalty,
        )
        require(
            self.pairwise in PAIRWISE, "pairwise", f"one of {', '.join(PAIRWISE)}", self.pairwise
        )
        # Validates the engine fields and keeps a typed copy of the engine args.
        object.__setattr__(self, "engine_args", dict(self.engine_options().engine_args))

    def engine_options(self) -> EngineOptions:
        return engine_options_of(self)


class Scorer(ABC):
    """Scores candidates. Subclasses register with `bon.scorers.register`.

    A scorer gets the reranker's options and a function returning the shared engine, called only
    when the scorer first needs a model.
    """

    name: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    uses_model: ClassVar[bool] = True
    """False for scorers that run no model (the controls): the reranker does not cache them."""
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
        """The configuration that determines this scorer's values (recorded per record)."""
        return {"scorer": self.name}

    def model_config(self) -> dict[str, Any]:
        """The part of `describe()` that names the scoring model."""
        return {
            "model": self.options.model,
            "engine": self.options.engine,
            "dtype": self.options.dtype,
            "max_new_tokens": self.options.max_new_tokens,
        }


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
