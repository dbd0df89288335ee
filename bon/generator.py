"""The generator stage: N sampled candidates per prompt record."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bon import records
from bon.engines import Engine, EngineOptions, SamplingOptions, load_engine
from bon.engines.base import engine_options_of
from bon.models import DEFAULT_MODEL


@dataclass(frozen=True)
class GenerateOptions:
    """Options of the generator stage.

    Attributes:
        model: the generating LM (alias, Hub id or local path).
        engine: the engine that runs it.
        n: candidates per prompt.
        temperature, top_p, max_new_tokens: sampling parameters (temperature 0 is greedy).
        seed: base seed; each record's request seed is derived from it and the record's id.
        batch_size: most sequences decoded at once (a prompt counts n times).
        device, dtype: where and in which precision the model runs.
        engine_args: options of the chosen engine only (`EngineOptions.engine_args`), e.g.
            {"gpu_memory_utilization": 0.5} for vllm or {"base_url": ...} for openai.
    """

    model: str = DEFAULT_MODEL
    engine: str = "hf"
    n: int = 8
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 256
    seed: int = 0
    batch_size: int = 32
    device: str = "auto"
    dtype: str = "auto"
    engine_args: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        self.sampling()
        # Keep the validated, typed copy: the caller's mapping is never shared or mutated.
        object.__setattr__(self, "engine_args", dict(self.engine_options().engine_args))

    def sampling(self) -> SamplingOptions:
        return SamplingOptions(
            n=self.n,
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed,
        )

    def engine_options(self) -> EngineOptions:
        return engine_options_of(self)


def request_seed(seed: int, record_id: str) -> int:
    """The seed of one record's request: a hash of the base seed and the record id."""
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


class Generator:
    """Adds `candidates` and `generator` to prompt records; loads its engine on first use."""

    def __init__(self, options: GenerateOptions) -> None:
        self.options = options
        self._sampling = options.sampling()
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = load_engine(self.options.engine_options())
        return self._engine

    def config(self) -> dict[str, Any]:
        return {"stage": "generate", **dataclasses.asdict(self.options)}

    def process(self, batch: list[dict]) -> list[dict]:
        seeds = [request_seed(self.options.seed, str(r["id"])) for r in batch]
        conversations = [records.conversation(r) for r in batch]
        outputs = self.engine.generate(conversations, self._sampling, seeds)
        meta = {**self.engine.describe(), **self._sampling.to_dict()}
        meta["batch_size"] = self.options.batch_size
        return [
            {
                **record,
                "candidates": [c.to_record() for c in completions],
                "generator": {**meta, "request_seed": seed},
            }
            for record, completions, seed in zip(batch, outputs, seeds, strict=True)
        ]

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
