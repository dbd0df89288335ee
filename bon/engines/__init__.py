"""Text-generation engines behind one interface; `load_engine` picks one by name."""

from __future__ import annotations

from bon.engines.base import Completion, Engine, EngineArg, EngineOptions, SamplingOptions
from bon.registry import Registry

engines: Registry[type[Engine]] = Registry("engine", "bon.engines")
register = engines.register


def load_engine(options: EngineOptions) -> Engine:
    """Instantiate the engine `options.engine` for `options.model`."""
    return engines.get(options.engine)(options)


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
    "EngineArg",
    "EngineOptions",
    "SamplingOptions",
    "engines",
    "load_engine",
]
