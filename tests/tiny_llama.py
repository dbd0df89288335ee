"""The random Llama of the fast tests and of the benchmarks that need no real weights.

A module of its own, not conftest, so that benchmarks import it without conftest's side effects
(offline mode for the whole process).
"""

from __future__ import annotations

from pathlib import Path


def build_tiny_llama(
    path: Path,
    tokenizer_path: str,
    *,
    labels: int | None = None,
    tag: str | None = None,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    max_positions: int = 2048,
) -> str:
    """Save a random Llama (bf16, seeded; by default 2 layers of width 64) with the tokenizer of
    `tokenizer_path` at `path`: a causal LM, or with `labels` a sequence-classification model
    (seeded by `labels`) whose tokenizer also knows the special token `tag`. The benchmarks give
    other shapes (`hidden_size` ... `max_positions`) to cost what a real model costs."""
    import torch
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        LlamaForSequenceClassification,
    )

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    if tag is not None:
        tokenizer.add_special_tokens({"additional_special_tokens": [tag]})
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=labels is None,
        **({} if labels is None else {"num_labels": labels}),
    )
    torch.manual_seed(0 if labels is None else labels)
    cls = LlamaForCausalLM if labels is None else LlamaForSequenceClassification
    cls(config).to(torch.bfloat16).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
