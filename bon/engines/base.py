"""The engine interface: chat conversations in, N sampled completions each out.

Engines know nothing of scoring or files. Every engine takes the same two option objects, so the
generator and the reranker can each pick any engine.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from bon.chat import Message
from bon.errors import EngineError, require
from bon.models import DEFAULT_MODEL

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass(frozen=True)
class SamplingOptions:
    """Per-request sampling parameters, the same for every engine.

    Attributes:
        n: completions to sample per conversation.
        temperature: 0 means greedy decoding.
        top_p: nucleus sampling mass, in (0, 1].
        max_new_tokens: cap on generated tokens per completion.
        seed: base random seed; engines derive per-request seeds from it.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.n >= 1, "n", "an integer >= 1", self.n)
        require(self.temperature >= 0, "temperature", ">= 0", self.temperature)
        require(0 < self.top_p <= 1, "top_p", "in (0, 1]", self.top_p)
        require(self.max_new_tokens >= 1, "max_new_tokens", "an integer >= 1", self.max_new_tokens)
        require(self.seed >= 0, "seed", "an integer >= 0", self.seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EngineOptions:
    """Which model an engine loads and how.

    Attributes:
        model: an alias (see `bon.models.aliases()`), a Hugging Face Hub id or a local path.
        engine: the engine's registered name.
        device: "auto" picks CUDA when present, else the CPU.
        dtype: "auto" is bfloat16 (about twice as fast as float32 on CPUs with bf16 support).
        batch_size: most sequences decoded at once.
    """

    model: str = DEFAULT_MODEL
    engine: str = "hf"
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 32

    def __post_init__(self) -> None:
        require(bool(self.model), "model", "a non-empty name or path", self.model)
        require(
            self.device in DEVICES or self.device.startswith("cuda:"),
            "device",
            f"one of {', '.join(DEVICES)} or cuda:N",
            self.device,
        )
        require(self.dtype in DTYPES, "dtype", f"one of {', '.join(DTYPES)}", self.dtype)
        require(self.batch_size >= 1, "batch_size", "an integer >= 1", self.batch_size)


@dataclass(frozen=True)
class Completion:
    """One sampled completion: its text, why it ended ("stop" or "length"), its token count."""

    text: str
    finish_reason: str
    tokens: int


class Engine(ABC):
    """A text-generation backend. Subclasses register with `bon.engines.register`."""

    name: ClassVar[str]

    def __init__(self, options: EngineOptions) -> None:
        self.options = options

    @abstractmethod
    def generate(
        self,
        conversations: Sequence[list[Message]],
        sampling: SamplingOptions,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """Sample `sampling.n` completions for each conversation, in input order.

        `seeds`, one per conversation, make each request reproducible on engines that accept a
        per-request seed; engines that seed a whole batch use the batch's first seed.
        """

    def continuation_logprobs(
        self, conversations: Sequence[list[Message]], continuations: Sequence[str]
    ) -> list[list[float]]:
        """Log-probability of each token of `continuations[i]` as the assistant's reply to
        `conversations[i]`, teacher-forced (one forward pass, no decoding).

        Engines that cannot return prompt log-probabilities raise `EngineError`.
        """
        raise EngineError(f"the {self.name} engine cannot return log-probabilities")

    def describe(self) -> dict[str, Any]:
        """What identifies this engine's outputs, for records and manifests."""
        return {"engine": self.name, "model": self.options.model}

    def close(self) -> None:
        """Release the model's memory; the engine is unusable afterwards."""
