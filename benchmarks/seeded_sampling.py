"""The hf engine's default `sample_batching=seeded` against `prompt` and `grouped`: tokens/s on
the CPU, and how often batching (padding, batch shape) changes a seeded sample.

1. Throughput: the same prompts (`--prompts` of mixed lengths, picked from data/ by length
   quantiles), `--n` samples of `--max-new-tokens` tokens, temperature 0.8, top_p 0.95, each
   record's request seed derived from its id as `bon generate` does; one engine per mode, all
   loaded at once at bfloat16 and warmed up with one small call (not timed), then timed one
   `generate` call over all prompts per mode and repeat, the modes' order rotating from repeat
   to repeat so that they share the machine's noise. Tokens/s: generated tokens (stop token
   included) over that call's wall time; the table gives each mode's best and mean.
2. Reproducibility: at bfloat16 and at float32, each record's samples from the seeded engine's
   batched call (all prompts, `--batch-size` sequences per micro-batch, left-padded) against
   the same record generated alone (one call of its own, no padding): the share of samples
   whose text differs, and of records with any differing sample. Seeded sampling draws each
   sample from its own stream, so a difference comes from the logits alone.

    OMP_NUM_THREADS=1 python benchmarks/seeded_sampling.py

Writes benchmarks/results/seeded_sampling.md and .json (`--out` for another stem).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from revisions import command_line, load_average, machine, revision, versions  # noqa: E402

MODES = ("prompt", "grouped", "seeded")
SOURCES = (
    "data/sample_prompts.jsonl",
    *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "data/pref").glob("*.dev.jsonl")),
)
"""Prompt files the prompts are picked from (paths from the repository root)."""


def pick_prompts(count: int) -> list[dict]:
    """`count` single-turn records (`id`, `prompt`) of the `SOURCES`, at evenly spaced
    quantiles of prompt length, in file order."""
    rows: list[dict] = []
    seen = set()
    for source in SOURCES:
        for line in (ROOT / source).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                if "prompt" in row and row["id"] not in seen:
                    seen.add(row["id"])
                    rows.append({"id": row["id"], "prompt": row["prompt"]})
    by_length = sorted(range(len(rows)), key=lambda i: (len(rows[i]["prompt"]), i))
    if count > len(rows):
        raise SystemExit(f"--prompts must be at most {len(rows)}, got {count}")
    step = (len(rows) - 1) / max(1, count - 1)
    chosen = sorted({by_length[round(k * step)] for k in range(count)})
    return [rows[i] for i in chosen]


def load(model: str, dtype: str, mode: str, batch_size: int):
    from bon.engines import EngineOptions, load_engine

    options = EngineOptions(
        model=model,
        device="cpu",
        dtype=dtype,
        batch_size=batch_size,
        engine_args={"sample_batching": mode},
    )
    return load_engine(options)


def timed(engine, conversations, sampling, seeds) -> tuple[float, list]:
    start = time.perf_counter()
    out = engine.generate(conversations, sampling, seeds)
    return time.perf_counter() - start, out


def tokens(out) -> int:
    return sum(c.tokens for row in out for c in row)


def compare(batched, alone) -> dict:
    """Shares of samples (and of records) whose texts differ between the two runs."""
    pairs = list(zip(alone, batched, strict=True))
    flags = [[a.text != b.text for a, b in zip(ra, rb, strict=True)] for ra, rb in pairs]
    samples = sum(len(row) for row in flags)
    differ = sum(sum(row) for row in flags)
    records = sum(any(row) for row in flags)
    return {
        "samples": samples,
        "samples_differing": differ,
        "share_samples_differing": differ / samples,
        "records": len(batched),
        "records_differing": records,
        "share_records_differing": records / len(batched),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="base seed (bon generate's --seed)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/seeded_sampling"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    import torch

    from bon import records
    from bon.engines import SamplingOptions
    from bon.engines.hf import cpu_has_bf16
    from bon.generator import request_seed
    from bon.models import resolve_model

    path = resolve_model(args.model)
    rows = pick_prompts(args.prompts)
    conversations = [records.conversation(r) for r in rows]
    seeds = [request_seed(args.seed, r["id"]) for r in rows]
    sampling = SamplingOptions(
        n=args.n, temperature=0.8, top_p=0.95, max_new_tokens=args.max_new_tokens, seed=args.seed
    )
    warm = SamplingOptions(n=2, temperature=0.8, top_p=0.95, max_new_tokens=4)

    # 1. Throughput at bfloat16, modes interleaved.
    engines = {mode: load(args.model, "bfloat16", mode, args.batch_size) for mode in MODES}
    threads = torch.get_num_threads()
    for engine in engines.values():
        engine.generate(conversations[:2], warm, seeds[:2])
    runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
    outputs: dict[str, list] = {}
    for repeat in range(args.repeats):
        order = MODES[repeat % len(MODES) :] + MODES[: repeat % len(MODES)]
        for mode in order:
            seconds, out = timed(engines[mode], conversations, sampling, seeds)
            runs[mode].append({"seconds": seconds, "tokens": tokens(out)})
            print(f"repeat {repeat} {mode}: {tokens(out) / seconds:.1f} tok/s", file=sys.stderr)
            if mode == "seeded" and "seeded" in outputs:
                assert outputs["seeded"] == out, "seeded sampling gave other samples on a repeat"
            outputs.setdefault(mode, out)
    throughput = {}
    for mode, found in runs.items():
        rates = [r["tokens"] / r["seconds"] for r in found]
        throughput[mode] = {
            "tokens": found[0]["tokens"],
            "best_tok_s": max(rates),
            "mean_tok_s": statistics.fmean(rates),
            "seconds": [r["seconds"] for r in found],
        }
    prompt_engine = engines.pop("prompt")
    engines.pop("grouped").close()
    prompt_engine.close()

    # 2. Alone against batched, seeded, at bfloat16 and float32.
    same: dict[str, dict] = {}
    for dtype in ("bfloat16", "float32"):
        if dtype == "bfloat16":  # the batched call is the timed one
            engine, batched = engines.pop("seeded"), outputs["seeded"]
        else:
            engine = load(args.model, dtype, "seeded", args.batch_size)
            batched = engine.generate(conversations, sampling, seeds)
        alone = [
            engine.generate([c], sampling, [s])[0]
            for c, s in zip(conversations, seeds, strict=True)
        ]
        same[dtype] = compare(batched, alone)
        print(f"{dtype}: {json.dumps(same[dtype])}", file=sys.stderr)
        engine.close()

    lengths = prompt_tokens(path, conversations)
    facts = {
        "command": command_line(),
        "revision": revision(),
        "machine": machine(),
        "cpu_bf16": cpu_has_bf16(),
        "load_average_end": load_average(),
        "versions": versions(("torch", "transformers")),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": args.model,
        "model_path": path,
        "torch_threads": threads,
        "prompts": [r["id"] for r in rows],
        "prompt_tokens": lengths,
        "seeds": {"base": args.seed, "request_seeds": seeds},
        "sampling": sampling.to_dict(),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "throughput_bfloat16": throughput,
        "seeded_vs_grouped": throughput["seeded"]["best_tok_s"]
        / throughput["grouped"]["best_tok_s"],
        "alone_vs_batched": same,
    }
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(facts, indent=2) + "\n")
    out.with_suffix(".md").write_text(report(facts))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}", file=sys.stderr)


def prompt_tokens(path: str, conversations: list) -> list[int]:
    """Each conversation's prompt length in tokens, rendered by the model's chat template."""
    from bon.engines.hf import local_tokenizer

    tokenizer = local_tokenizer(path)
    texts = [
        tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
        for c in conversations
    ]
    return [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]


def report(facts: dict) -> str:
    sampling = facts["sampling"]
    lengths = facts["prompt_tokens"]
    lines = [
        "# Seeded sampling: throughput and reproducibility of the hf engine's default mode",
        "",
        f"Written by `benchmarks/seeded_sampling.py` (see its docstring for the method): "
        f"{len(facts['prompts'])} prompts of {min(lengths)} to {max(lengths)} tokens (median "
        f"{statistics.median(lengths):.0f}) from data/, n={sampling['n']}, temperature "
        f"{sampling['temperature']}, top_p {sampling['top_p']}, max_new_tokens "
        f"{sampling['max_new_tokens']}, batch size {facts['batch_size']}, model "
        f"`{facts['model']}` on the CPU, torch threads {facts['torch_threads']}.",
        "",
        f"- Command: `{facts['command']}`",
        f"- Revision: {facts['revision']} (the results were written from its working tree)",
        f"- Machine: {facts['machine']}, native bf16: {facts['cpu_bf16']}; load average at the "
        f"end {facts['load_average_end']}",
        f"- Versions: {facts['versions']}",
        f"- Date: {facts['date']}",
        f"- Seeds: base seed {facts['seeds']['base']}; each record's request seed derives from "
        "it and the record id (`bon.generator.request_seed`), as in `bon generate`; the "
        "request seeds are in the .json file",
        "",
        f"## Throughput at bfloat16 ({facts['repeats']} repeats, modes interleaved)",
        "",
        "| sample_batching | tokens | best tokens/s | mean tokens/s | seconds per run |",
        "|---|---|---|---|---|",
    ]
    for mode, row in facts["throughput_bfloat16"].items():
        seconds = ", ".join(f"{s:.1f}" for s in row["seconds"])
        lines.append(
            f"| {mode} | {row['tokens']:,} | {row['best_tok_s']:.1f} | {row['mean_tok_s']:.1f} "
            f"| {seconds} |"
        )
    ratio = facts["seeded_vs_grouped"]
    lines += [
        "",
        f"seeded / grouped, best tokens/s: **{ratio:.2f}** (target: at least 1/1.1 = 0.91).",
        "",
        "## Alone against batched (seeded)",
        "",
        "Each record's samples from the batched call against the record generated alone.",
        "",
        "| dtype | samples differing | share | records with a differing sample | share |",
        "|---|---|---|---|---|",
    ]
    for dtype, row in facts["alone_vs_batched"].items():
        lines.append(
            f"| {dtype} | {row['samples_differing']} of {row['samples']} | "
            f"{row['share_samples_differing']:.1%} | {row['records_differing']} of "
            f"{row['records']} | {row['share_records_differing']:.1%} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
