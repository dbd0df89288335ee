"""The scorer interface: (conversation, candidate texts) in, one score per candidate out.

Scorers know nothing of files or record layout. Each declares its direction, which the selector
reads instead of assuming an argmax.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from bon.chat import Message
from bon.engines import Engine, EngineOptions
from bon.errors import require
from bon.models import DEFAULT_MODEL


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
        similarity: how FLIP compares inferred and original instructions (`bon.similarity`).
    """

    scorers: tuple[str, ...] = ("flip",)
    model: str = DEFAULT_MODEL
    engine: str = "hf"
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 16
    max_new_tokens: int = 128
    similarity: str = "f1"
    engine_args: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        from bon.similarity import SIMILARITIES

        object.__setattr__(self, "scorers", tuple(self.scorers))
        require(len(self.scorers) > 0, "scorers", "at least one scorer name", self.scorers)
        require(self.max_new_tokens >= 1, "max_new_tokens", "an integer >= 1", self.max_new_tokens)
        require(
            self.similarity in SIMILARITIES,
            "similarity",
            f"one of {', '.join(sorted(SIMILARITIES))}",
            self.similarity,
        )
        # Validates the engine fields and keeps a typed copy of the engine args.
        object.__setattr__(self, "engine_args", dict(self.engine_options().engine_args))

    def engine_options(self) -> EngineOptions:
        return EngineOptions(
            model=self.model,
            engine=self.engine,
            device=self.device,
            dtype=self.dtype,
            batch_size=self.batch_size,
            engine_args=self.engine_args,
        )


class Scorer(ABC):
    """Scores candidates. Subclasses register with `bon.scorers.register`.

    A scorer gets the reranker's options and a function returning the shared engine, called only
    when the scorer first needs a model.
    """

    name: ClassVar[str]
    higher_is_better: ClassVar[bool] = True

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
