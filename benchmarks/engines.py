"""Generation throughput: hf vs vllm, and vllm `n=N` in one request vs N duplicated requests.

Same model, same prompts, same sampling for every row. Load time is reported apart from
generation time; each engine first runs a short warm-up batch. Tokens/s counts generated tokens
(the stop token included) over the generation wall time.

Run in an environment with vLLM (on CPUs: the one .ci/vllm-env makes):

    VLLM_CPU_KVCACHE_SPACE=2 python benchmarks/engines.py --n 8 --max-new-tokens 64 \
        --out benchmarks/results/engines.md

vLLM spawns its engine core, hence the `__main__` guard.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from bon import records
from bon.engines import EngineOptions, SamplingOptions, load_engine

ROOT = Path(__file__).resolve().parents[1]


def prompts(path: Path, copies: int) -> list[list[dict]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [records.conversation(row) for row in rows] * copies


def timed(engine, conversations, sampling, seeds) -> tuple[float, int, int]:
    start = time.perf_counter()
    out = engine.generate(conversations, sampling, seeds)
    wall = time.perf_counter() - start
    return wall, sum(c.tokens for row in out for c in row), sum(len(row) for row in out)


def row(label: str, load: float, wall: float, tokens: int, samples: int) -> str:
    return f"| {label} | {samples} | {tokens} | {load:.1f} | {wall:.1f} | {tokens / wall:.0f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", default=str(ROOT / "data" / "sample_prompts.jsonl"))
    parser.add_argument("--copies", type=int, default=2, help="times the prompt file is repeated")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32, help="hf engine batch size")
    parser.add_argument("--enforce-eager", action="store_true", help="vllm without compilation")
    parser.add_argument("--out", help="also write the markdown table here")
    args = parser.parse_args()

    conversations = prompts(Path(args.prompts), args.copies)
    seeds = list(range(len(conversations)))
    sampling = SamplingOptions(
        n=args.n, temperature=0.8, top_p=0.95, max_new_tokens=args.max_new_tokens
    )
    one = SamplingOptions(n=1, temperature=0.8, top_p=0.95, max_new_tokens=args.max_new_tokens)
    warm = SamplingOptions(n=2, temperature=0.8, max_new_tokens=8)
    lines = [
        "| engine, requests | samples | tokens | load s | generate s | tokens/s |",
        "|---|---|---|---|---|---|",
    ]

    start = time.perf_counter()
    hf = load_engine(EngineOptions(model=args.model, batch_size=args.batch_size))
    load = time.perf_counter() - start
    hf.generate(conversations[:2], warm)
    lines.append(
        row(
            f"hf, batch {args.batch_size}, n={args.n}",
            load,
            *timed(hf, conversations, sampling, seeds),
        )
    )
    hf.close()

    engine_args = {"enforce_eager": args.enforce_eager}
    start = time.perf_counter()
    vllm = load_engine(EngineOptions(model=args.model, engine="vllm", engine_args=engine_args))
    load = time.perf_counter() - start
    vllm.generate(conversations[:2], warm)
    lines.append(
        row(
            f"vllm, one request per prompt with n={args.n}",
            load,
            *timed(vllm, conversations, sampling, seeds),
        )
    )
    duplicated = [c for c in conversations for _ in range(args.n)]
    dup_seeds = [seed * args.n + k for seed in seeds for k in range(args.n)]
    lines.append(
        row(
            f"vllm, {args.n} duplicated requests per prompt with n=1",
            0.0,
            *timed(vllm, duplicated, one, dup_seeds),
        )
    )
    vllm.close()

    command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])
    header = (
        f"{len(conversations)} prompts x {args.n} samples, {args.model}, temperature 0.8, "
        f"top_p 0.95, max_new_tokens {args.max_new_tokens}, vllm enforce_eager="
        f"{args.enforce_eager}; {platform.machine()}, {platform.python_version()}\n\n`{command}`\n"
    )
    table = header + "\n" + "\n".join(lines) + "\n"
    print(table)
    if args.out:
        Path(args.out).write_text(table)


if __name__ == "__main__":
    main()
