"""Text-generation engines behind one interface; `load_engine` picks one by name."""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from bon.chat import Message
from bon.engines.base import Completion, Engine, EngineArgs, EngineOptions, SamplingOptions
from bon.registry import Registry

engines: Registry[type[Engine]] = Registry("engine", "bon.engines")
register = engines.register


def load_engine(options: EngineOptions) -> Engine:
    """Instantiate the engine `options.engine` for `options.model`."""
    return engines.get(options.engine)(options)


def same_engine(first: EngineOptions, second: EngineOptions) -> bool:
    """Whether one engine can serve both `first` and `second`: the same model and engine
    settings (batch sizes aside: see `Engine.with_batch_size`)."""
    return all(
        getattr(first, f.name) == getattr(second, f.name)
        for f in dataclasses.fields(EngineOptions)
        if f.name != "batch_size"
    )


class EngineProxy(Engine):
    """An engine that hands every call to `inner`; subclasses say where `inner` comes from."""

    @property
    @abstractmethod
    def inner(self) -> Engine:
        """The engine calls go to."""

    def __getattr__(self, name: str) -> Any:  # what one engine alone has (tokenizer, render)
        if name.startswith("_") or name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def generate(
        self,
        conversations: Sequence[list[Message]],
        sampling: SamplingOptions,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        return self.inner.generate(conversations, sampling, seeds)

    def continuation_logprobs(
        self, conversations: Sequence[list[Message]], continuations: Sequence[str]
    ) -> list[list[float]]:
        return self.inner.continuation_logprobs(conversations, continuations)

    def start(
        self,
        conversations: Sequence[list[Message]],
        sampling: SamplingOptions,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        return self.inner.start(conversations, sampling, seeds)

    def resume(
        self,
        conversations: Sequence[list[Message]],
        sampling: SamplingOptions,
        seeds: Sequence[int] | None,
        partials: Sequence[Sequence[tuple[int, Completion]]],
        follow: Mapping[tuple[int, int], Callable[[str], None]] | None = None,
    ) -> list[list[Completion]]:
        return self.inner.resume(conversations, sampling, seeds, partials, follow)

    def token_pieces(self, texts: Sequence[str]) -> list[list[str]]:
        return self.inner.token_pieces(texts)

    def prompt_tokens(self, conversation: list[Message]) -> int:
        return self.inner.prompt_tokens(conversation)

    def sequence_scores(self, conversations: Sequence[list[Message]]) -> list[list[float]]:
        return self.inner.sequence_scores(conversations)

    def tag_logits(
        self, conversations: Sequence[list[Message]], tag: str
    ) -> list[list[list[float]]]:
        return self.inner.tag_logits(conversations, tag)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    @contextmanager
    def decoding(self, on_tokens: Callable[[int], None]) -> Iterator[None]:
        with self.inner.decoding(on_tokens):
            yield

    def with_batch_size(self, batch_size: int) -> Engine:
        """A view that reaches `inner` only when called (a shared engine loads no sooner),
        then calls its model in batches of `batch_size`; closing it leaves the model open."""
        if batch_size == self.options.batch_size:
            return self
        return _Resized(self, batch_size)

    def close(self) -> None:
        self.inner.close()


class SharedEngine(EngineProxy):
    """One engine for several stages, loaded when one of them first calls it. Stages given an
    engine leave it open; its owner closes it once they are done."""

    name = "shared"

    def __init__(self, options: EngineOptions) -> None:
        super().__init__(options)
        self._inner: Engine | None = None

    @property
    def inner(self) -> Engine:
        if self._inner is None:
            self._inner = load_engine(self.options)
        return self._inner

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
            self._inner = None


class _Resized(EngineProxy):
    name = "resized"

    def __init__(self, source: EngineProxy, batch_size: int) -> None:
        super().__init__(dataclasses.replace(source.options, batch_size=batch_size))
        self._source = source

    @property
    def inner(self) -> Engine:
        return self._source.inner.with_batch_size(self.options.batch_size)

    def close(self) -> None:
        pass


def _register_builtins() -> None:
    # These modules import their heavy packages (torch, vllm, openai) only when an engine loads.
    from bon.engines.hf import HFEngine
    from bon.engines.openai import OpenAIEngine
    from bon.engines.vllm import VLLMEngine

    register("hf")(HFEngine)
    register("vllm")(VLLMEngine)
    register("openai")(OpenAIEngine)


_register_builtins()

__all__ = [
    "Completion",
    "Engine",
    "EngineArgs",
    "EngineOptions",
    "EngineProxy",
    "SamplingOptions",
    "SharedEngine",
    "engines",
    "load_engine",
]
