"""Throughput of the transformers engine for generation and FLIP scoring.

Uses a random-initialised model of a real shape (weights do not change the cost), so it runs on
machines without model downloads, e.g. a GPU box:

    python benchmarks/hf_throughput.py --device cuda --shape qwen2.5-0.5b --prompts 64 --n 8

Prints one JSON line per measurement; all ratios come from one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.tiny_llama import build_tiny_llama

SHAPES = {
    # hidden, intermediate, layers, heads, kv heads
    "smollm2-135m": (576, 1536, 30, 9, 3),
    "qwen2.5-0.5b": (896, 4864, 24, 14, 2),
    "llama-3.2-1b": (2048, 8192, 16, 32, 8),
}


def build_model(shape: str, tokenizer_dir: str, out: Path) -> str:
    """A random Llama of `shape` (bf16, seeded) with the tokenizer in `tokenizer_dir`."""
    hidden, inter, layers, heads, kv = SHAPES[shape]
    return build_tiny_llama(
        out,
        tokenizer_dir,
        hidden_size=hidden,
        intermediate_size=inter,
        layers=layers,
        heads=heads,
        kv_heads=kv,
        max_positions=4096,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--shape", default="smollm2-135m", choices=sorted(SHAPES))
    parser.add_argument("--tokenizer", default=None, help="folder with tokenizer + chat template")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-sizes", default="8,32,128")
    parser.add_argument("--scorers", default="flip", help="comma-separated scorers to time")
    args = parser.parse_args()

    import bon
    from bon.models import resolve_model

    tokenizer = args.tokenizer or resolve_model("smollm2-135m")
    model = build_model(args.shape, tokenizer, Path(tempfile.mkdtemp()))
    prompts = [
        {"prompt": f"Write a short paragraph about topic number {i}."} for i in range(args.prompts)
    ]
    common = {"model": model, "device": args.device, "max_new_tokens": args.max_new_tokens}
    bon.generate_records(prompts[:1], n=1, **common)  # warm-up
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        start = time.perf_counter()
        out = bon.generate_records(prompts, n=args.n, batch_size=batch_size, **common)
        seconds = time.perf_counter() - start
        tokens = sum(c["tokens"] for r in out for c in r["candidates"])
        report("generate", args, batch_size, seconds, tokens, out[0]["generator"]["device"])
        for scorer in args.scorers.split(","):
            start = time.perf_counter()
            scored = bon.score_records(
                out, scorers=(scorer,), batch_size=batch_size, no_cache=True, **common
            )
            seconds = time.perf_counter() - start
            report(scorer, args, batch_size, seconds, len(scored) * args.n, "")


def report(
    stage: str, args: argparse.Namespace, batch_size: int, seconds: float, count: int, device: str
) -> None:
    unit = "tokens" if stage == "generate" else "candidates"
    print(
        json.dumps(
            {
                "stage": stage,
                "shape": args.shape,
                "device": device or args.device,
                "batch_size": batch_size,
                "prompts": args.prompts,
                "n": args.n,
                "max_new_tokens": args.max_new_tokens,
                "seconds": round(seconds, 2),
                unit: count,
                f"{unit}_per_s": round(count / seconds, 1),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
