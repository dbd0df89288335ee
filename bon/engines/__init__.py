"""Text-generation engines behind one interface; `load_engine` picks one by name."""

from __future__ import annotations

from bon.engines.base import Completion, Engine, EngineOptions, SamplingOptions
from bon.registry import Registry

engines: Registry[type[Engine]] = Registry("engine", "bon.engines")
register = engines.register


def load_engine(options: EngineOptions) -> Engine:
    """Instantiate the engine `options.engine` for `options.model`."""
    return engines.get(options.engine)(options)


def _register_builtins() -> None:
    from bon.engines.hf import HFEngine

    register("hf")(HFEngine)


_register_builtins()

__all__ = ["Completion", "Engine", "EngineOptions", "SamplingOptions", "engines", "load_engine"]
