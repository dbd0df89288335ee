"""GPU: bon's generation and scoring throughput as a fraction of the card's measured bf16 ceiling.

One run on one GPU: (1) the ceiling, the best of several large bf16 matrix products (TFLOP/s);
(2) `bon generate` (hf engine) and `bon score --scorer flip-likelihood` on a random-initialised
model of a real shape (the weights do not change the cost), in generated or processed tokens/s;
(3) each as model FLOP/s (2 x non-embedding parameters x tokens, plus the vocabulary projection;
attention's own FLOPs left out, so the fraction is a lower bound) over the ceiling.

    python benchmarks/gpu_fraction.py --tokenizer TOKDIR --shape llama-3.2-1b --out results.md

TOKDIR: a folder with the SmolLM2 tokenizer and chat template (the packaged model's folder).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from hf_throughput import SHAPES, build_model

import bon


def ceiling_tflops(size: int = 8192, repeats: int = 20) -> float:
    """The best bf16 matmul rate of this GPU, in TFLOP/s."""
    import torch

    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    best = 0.0
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        torch.cuda.synchronize()
        best = max(best, 2 * size**3 / (start.elapsed_time(end) / 1000) / 1e12)
    return best


def flops_per_token(model_dir: str) -> float:
    """2 x (every parameter that multiplies a token's activations: layers and the LM head)."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_dir)
    head = c.hidden_size // c.num_attention_heads
    attention = c.hidden_size * head * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
    mlp = 3 * c.hidden_size * c.intermediate_size
    return 2 * (c.num_hidden_layers * (attention + mlp) + c.hidden_size * c.vocab_size)


def timed(call):
    import torch

    torch.cuda.synchronize()
    start = time.perf_counter()
    out = call()
    torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--shape", default="llama-3.2-1b", choices=sorted(SHAPES))
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--modes", default="grouped,prompt", help="hf sample_batching modes")
    parser.add_argument("--out", type=Path, default=Path("gpu_fraction.md"))
    args = parser.parse_args()

    import torch
    import transformers

    ceiling = ceiling_tflops()
    model = build_model(args.shape, args.tokenizer, Path(tempfile.mkdtemp()))
    per_token = flops_per_token(model)
    prompts = [
        {"id": str(i), "prompt": f"Write a short paragraph about topic number {i}."}
        for i in range(args.prompts)
    ]
    common = {"model": model, "device": "cuda", "dtype": "bfloat16"}
    rows = []
    for mode in args.modes.split(","):
        options = {**common, "engine_args": {"sample_batching": mode}}
        try:
            bon.generate_records(prompts[:2], n=2, max_new_tokens=8, **options)  # warm-up
        except Exception as exc:  # one mode failing must not lose the others' rows
            print(f"sample_batching={mode} failed: {exc!r}", file=sys.stderr)
            continue
        out, seconds = timed(
            lambda o=options: bon.generate_records(
                prompts,
                n=args.n,
                max_new_tokens=args.max_new_tokens,
                batch_size=args.batch_size,
                seed=0,
                **o,
            )
        )
        tokens = sum(c["tokens"] for r in out for c in r["candidates"])
        rows.append((f"generate, hf sample_batching={mode}", tokens, seconds))
    candidates = sum(len(r["candidates"]) for r in out)
    _, seconds = timed(
        lambda: bon.score_records(
            out, scorers=("flip-likelihood",), batch_size=64, no_cache=True, **common
        )
    )
    # Tokens the scorer's forward passes read: each candidate's rendered prompt plus target.
    read = scored_tokens(out, common)
    rows.append((f"score, flip-likelihood ({candidates} candidates)", read, seconds))
    lines = [
        "# GPU throughput as a fraction of the measured bf16 ceiling (issue 11, item 8)",
        "",
        f"Command: `python benchmarks/gpu_fraction.py {' '.join(sys.argv[1:])}`",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. GPU: "
        f"{torch.cuda.get_device_name()}; torch {torch.__version__}, transformers "
        f"{transformers.__version__}, Python {platform.python_version()}, bon {bon.__version__}.",
        f"Model: random-initialised {args.shape} shape (Llama, bf16, SmolLM2 tokenizer); "
        f"{args.prompts} prompts x n={args.n}, up to {args.max_new_tokens} new tokens, "
        f"temperature 1.0, batch size {args.batch_size}.",
        f"Ceiling: best of 20 bf16 8192^3 matmuls = {ceiling:.0f} TFLOP/s. Model FLOPs per "
        f"token (2 x parameters that multiply each token, attention scores left out): "
        f"{per_token / 1e9:.2f} GFLOP.",
        "",
        "| stage | tokens | seconds | tokens/s | model TFLOP/s | fraction of ceiling |",
        "|---|---|---|---|---|---|",
    ]
    for label, tokens, seconds in rows:
        rate = tokens / seconds
        tflops = rate * per_token / 1e12
        lines.append(
            f"| {label} | {tokens:,} | {seconds:.1f} | {rate:,.0f} | {tflops:.1f} | "
            f"{100 * tflops / ceiling:.2f}% |"
        )
    lines.append("")
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print(args.out.read_text(encoding="utf-8"))
    print(json.dumps({"ceiling_tflops": ceiling, "rows": rows}))


def scored_tokens(records: list[dict], common: dict) -> int:
    """Tokens the scorer's forward passes read (each rendered prompt plus its target), counted
    by a second scoring pass whose engine records its inputs instead of running the model."""
    from bon.engines.hf import HFEngine

    total = 0
    real = HFEngine.continuation_logprobs

    def count(self, conversations, continuations):
        nonlocal total
        for conversation, target in zip(conversations, continuations, strict=True):
            total += len(self._encode(self.render(conversation))) + len(self._encode(target))
        return [[0.0] * len(self._encode(t)) for t in continuations]

    HFEngine.continuation_logprobs = count
    try:
        bon.score_records(records, scorers=("flip-likelihood",), no_cache=True, **common)
    finally:
        HFEngine.continuation_logprobs = real
    return total


if __name__ == "__main__":
    main()
