"""The vllm engine's argument handling that needs no vLLM installed."""

from __future__ import annotations

from bon.engines.vllm import CPU_KV_CACHE_GIB, kv_cache_bytes


def test_kv_cache_space_defaults_to_a_fixed_size_on_cpu_builds_only():
    assert kv_cache_bytes(0.0, cpu=True) == int(CPU_KV_CACHE_GIB * 2**30)
    assert kv_cache_bytes(0.0, cpu=False) is None  # vLLM sizes it from the GPU's memory
    assert kv_cache_bytes(1.5, cpu=True) == 3 * 2**29  # a fraction of a GiB is kept
    assert kv_cache_bytes(1.5, cpu=False) == 3 * 2**29
