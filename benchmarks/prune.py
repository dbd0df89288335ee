"""Pruned best-of-N (`--prune-at`, `--keep`) against the full run on the same IFEval prompts.

Both runs sample `--n` candidates per prompt with the same model, seed and sampling (hf engine,
`sample_batching=seeded`), score them with `--scorer` (flip-tokens) and select by it; the pruned
run also scores the partial candidates at each checkpoint and decodes only the best `--keep`
share on. Reported: the share of prompts whose pruned pick is the full run's pick (same text),
the share whose full-run pick survived pruning, the generator's decoded tokens of each run
(`cost.generate.completion_tokens`), what pruning spent beside them (`cost.prune`: the prune
scorer's tokens and the prompt and partial tokens re-read by continuations), and each run's
wall seconds (generate, score and select, the models' loading included; one run each, in the
order full then pruned, the score cache off), at float32 by default: at bfloat16 a
survivor's re-read prefix rounds differently from step-by-step decoding and some survivors
drift from the full run's candidates (6 of 8 equal in a 4-prompt smoke on the 2-core CPU).
Slow on a CPU at full size (hours):

    OMP_NUM_THREADS=1 python benchmarks/prune.py --limit 100 --n 8 --prune-at 32,64 --keep 0.5

Writes benchmarks/results/prune.md and .json (`--out` for another stem, e.g. a smoke run's).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from revisions import command_line, load_average, machine, revision, versions  # noqa: E402


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=100, help="IFEval prompts (default 100)")
    parser.add_argument("--n", type=int, default=8, help="candidates per prompt (default 8)")
    parser.add_argument("--prune-at", default="32,64", help="checkpoints (default 32,64)")
    parser.add_argument("--keep", type=float, default=0.5, help="share kept (default 0.5)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--model", default="smollm2-135m", help="generator and scorer model")
    parser.add_argument("--scorer", default="flip-tokens")
    parser.add_argument(
        "--dtype",
        default="float32",
        help="float32 (default): survivors then equal the full run's candidates; at bfloat16 "
        "the re-read prefix rounds differently from step-by-step decoding",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/prune"), help="stem")
    return parser.parse_args()


def main() -> None:
    args = parse()
    import bon
    from bon.evals.ifeval import load_prompts

    prompts = load_prompts(args.limit)
    settings = {
        "model": args.model,
        "reranker_model": args.model,
        "dtype": args.dtype,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "scorers": (args.scorer,),
        "keep_all": True,
        "no_cache": True,
    }
    checkpoints = tuple(int(t) for t in args.prune_at.split(",") if t.strip())
    runs = {}
    for name, extra in (
        ("full", {}),
        ("pruned", {"prune_at": checkpoints, "keep": args.keep}),
    ):
        started = time.perf_counter()
        records = bon.run_records(prompts, **settings, **extra)
        runs[name] = {"records": records, "seconds": round(time.perf_counter() - started, 2)}
    facts = summarise(args, runs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(facts, indent=2) + "\n")
    out.with_suffix(".md").write_text(report(facts))
    print(report(facts))


def summarise(args: argparse.Namespace, runs: dict) -> dict:
    full, pruned = runs["full"]["records"], runs["pruned"]["records"]
    same = survived = survivors = exact = 0
    for whole, cut in zip(full, pruned, strict=True):
        pick = whole["selected"]["index"]
        same += whole["selected"]["text"] == cut["selected"]["text"]
        survived += pick is not None and "pruned_at" not in cut["candidates"][pick]
        for one, other in zip(whole["candidates"], cut["candidates"], strict=True):
            if "pruned_at" not in other:
                survivors += 1
                exact += one["text"] == other["text"]

    def tokens(records: list[dict], part: str, key: str) -> int:
        return sum(int(r["cost"].get(part, {}).get(key, 0)) for r in records)

    def decoding(records: list[dict]) -> float:
        return round(sum(float(r["cost"]["generate"]["seconds"]) for r in records), 2)

    count = len(full)
    return {
        "command": command_line(),
        "revision": revision(),
        "machine": machine(),
        "load": load_average(),
        "versions": versions(("torch", "transformers")),
        "settings": {
            "prompts": count,
            "n": args.n,
            "prune_at": args.prune_at,
            "keep": args.keep,
            "max_new_tokens": args.max_new_tokens,
            "model": args.model,
            "scorer": args.scorer,
            "dtype": args.dtype,
            "seed": args.seed,
        },
        "same_pick": round(same / count, 4),
        "full_pick_survived": round(survived / count, 4),
        "survivors_as_full": f"{exact}/{survivors}",
        "full": {
            "generated_tokens": tokens(full, "generate", "completion_tokens"),
            "score_read_tokens": sum(
                int(r["cost"]["score"][args.scorer]["read_tokens"]) for r in full
            ),
            "generate_seconds": decoding(full),
            "seconds": runs["full"]["seconds"],
        },
        "pruned": {
            "generated_tokens": tokens(pruned, "generate", "completion_tokens"),
            "prune_read_tokens": tokens(pruned, "prune", "read_tokens"),
            "prefill_tokens": tokens(pruned, "prune", "prefill_tokens"),
            "score_read_tokens": sum(
                int(r["cost"]["score"][args.scorer]["read_tokens"]) for r in pruned
            ),
            "generate_seconds": decoding(pruned),
            "prune_seconds": round(sum(float(r["cost"]["prune"]["seconds"]) for r in pruned), 2),
            "seconds": runs["pruned"]["seconds"],
        },
    }


def report(facts: dict) -> str:
    s, full, cut = facts["settings"], facts["full"], facts["pruned"]
    return "\n".join(
        [
            "# Pruned best-of-N against the full run",
            "",
            f"`{facts['command']}`",
            "",
            f"{s['prompts']} IFEval prompts, N = {s['n']}, {s['max_new_tokens']} new tokens at "
            f"most, model {s['model']} ({s['dtype']}), selected by {s['scorer']}; pruned at "
            f"{s['prune_at']} keeping {s['keep']}. Revision {facts['revision']}; "
            f"{facts['machine']}; load {facts['load']}; {facts['versions']}.",
            "",
            "| | full | pruned |",
            "|---|---|---|",
            f"| generator tokens decoded | {full['generated_tokens']} | "
            f"{cut['generated_tokens']} |",
            f"| prune scorer tokens read | - | {cut['prune_read_tokens']} |",
            f"| tokens re-read by continuations | - | {cut['prefill_tokens']} |",
            f"| score stage tokens read | {full['score_read_tokens']} | "
            f"{cut['score_read_tokens']} |",
            f"| decoding seconds (`cost.generate`) | {full['generate_seconds']} | "
            f"{cut['generate_seconds']} |",
            f"| prune scorer seconds (`cost.prune`) | - | {cut['prune_seconds']} |",
            f"| wall seconds, whole run (one each) | {full['seconds']} | {cut['seconds']} |",
            "",
            f"Pruned pick = full pick (same text): {facts['same_pick']:.1%} of prompts; the "
            f"full run's pick survived pruning in {facts['full_pick_survived']:.1%} (a "
            "survivor can still lose the pick when the scorer compares a record's candidates, "
            "as flip-tokens mixes its score with the record's other candidates). Survivors "
            f"whose text is the full run's candidate's: {facts['survivors_as_full']}.",
            "",
        ]
    )


if __name__ == "__main__":
    main()
