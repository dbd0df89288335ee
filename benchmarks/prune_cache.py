"""Pruned best-of-N's continuation: survivors going on from the kept KV cache against re-read.

On the same IFEval test prompts as benchmarks/efficient.py (its first `--prompts`), one
engine and one prune scorer run, batch by batch, three generate stages: full best-of-N,
pruned best-of-N with the hf engine's default continuation (survivors go on from the KV
cache `Engine.start` kept) and pruned best-of-N re-reading prompt and partial for every
continuation (the engine behind `Rereading`, whose `start` keeps no cache: what bon did
before). The kinds take turns within each batch, in a rotating order, so that the machine's
load falls on all of them alike. Reported per kind: the stage's wall seconds (decoding and
pruning's scoring), tokens decoded, prompt and partial tokens read again, and whether every
survivor is the full run's candidate token for token (float32, seeded sampling).

    python benchmarks/prune_cache.py --prompts 16 --n 8 --max-new-tokens 128

Writes benchmarks/results/prune_cache.md and .json (`--out` for another stem).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from efficient import test_prompts  # noqa: E402
from revisions import provenance  # noqa: E402

from bon.engines import Completion, Engine, EngineProxy, SamplingOptions  # noqa: E402

KINDS = ("full", "cached", "reread")


class Rereading(EngineProxy):
    """`engine` with `start` as plain `generate`: nothing is kept, so `resume` re-reads the
    prompt and the partial of every survivor."""

    name = "rereading"

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine.options)
        self._engine = engine

    @property
    def inner(self) -> Engine:
        return self._engine

    def start(
        self,
        conversations: Sequence[list],
        sampling: SamplingOptions,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        return self.inner.generate(conversations, sampling, seeds)

    def close(self) -> None:
        pass


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16, help="test prompts (default 16)")
    parser.add_argument("--n", type=int, default=8, help="candidates per prompt (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prune-by", default="relevance")
    parser.add_argument("--prune-at", default="16,48", help="checkpoints (default 16,48)")
    parser.add_argument("--keep", type=float, default=0.5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/prune_cache"), help="stem")
    return parser.parse_args()


def measure(args: argparse.Namespace) -> dict:
    """Each kind's records and its seconds, summed over the batches."""
    from bon import prune
    from bon.engines import load_engine
    from bon.generator import GenerateOptions, Generator

    options = GenerateOptions(
        model=args.model,
        dtype="float32",
        n=args.n,
        max_new_tokens=args.max_new_tokens,
        seed=0,
        prune_at=tuple(int(t) for t in args.prune_at.split(",")),
        keep=args.keep,
        prune_by=args.prune_by,
    )
    engine = load_engine(options)
    pruner = prune.Pruner(prune.score_options(options))
    generators = {
        "full": Generator(dataclasses.replace(options, prune_at=()), engine),
        "cached": Generator(options, engine, pruner),
        "reread": Generator(options, Rereading(engine), pruner),
    }
    prompts = test_prompts(args.prompts, 16, 0)
    per_batch = max(1, options.batch_size // options.n)
    batches = [prompts[i : i + per_batch] for i in range(0, len(prompts), per_batch)]
    pruner.score([batches[0][0]], [["warm up the scorer"]])  # its model loads outside the clock
    found: dict = {kind: {"records": [], "seconds": 0.0} for kind in KINDS}
    for turn, batch in enumerate(batches):
        for kind in KINDS[turn % 3 :] + KINDS[: turn % 3]:
            started = time.perf_counter()
            done = generators[kind].process(batch)
            found[kind]["seconds"] += time.perf_counter() - started
            found[kind]["records"].extend(done)
    pruner.close()
    engine.close()
    return found


def summary(found: dict) -> dict:
    """Per kind: seconds, tokens decoded and read again; and the survivors' agreement."""
    rows = {}
    for kind in KINDS:
        records = found[kind]["records"]
        rows[kind] = {
            "seconds": round(found[kind]["seconds"], 1),
            "decoded_tokens": sum(r["cost"]["generate"]["completion_tokens"] for r in records),
            "prompt_tokens": sum(r["cost"]["generate"]["prompt_tokens"] for r in records),
            "prefill_tokens": sum(
                r["cost"].get("prune", {}).get("prefill_tokens", 0) for r in records
            ),
        }
    full = found["full"]["records"]
    agreement = {}
    for kind in ("cached", "reread"):
        pairs = [
            (whole, cut)
            for a, b in zip(full, found[kind]["records"], strict=True)
            for whole, cut in zip(a["candidates"], b["candidates"], strict=True)
            if "pruned_at" not in cut
        ]
        agreement[kind] = {
            "survivors": len(pairs),
            "equal_to_full": sum(w["text"] == c["text"] for w, c in pairs),
        }
    same = sum(
        x["text"] == y["text"]
        for a, b in zip(found["cached"]["records"], found["reread"]["records"], strict=True)
        for x, y in zip(a["candidates"], b["candidates"], strict=True)
    )
    total = sum(len(r["candidates"]) for r in full)
    return {"rows": rows, "survivors": agreement, "cached_equals_reread": [same, total]}


def main() -> None:
    args = parse()
    facts = {**provenance(), "settings": vars(args)}
    found = measure(args)
    facts.update(summary(found))
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(facts, indent=2) + "\n")
    out.with_suffix(".md").write_text(report(facts))
    print(out.with_suffix(".md").read_text())


def report(facts: dict) -> str:
    s, rows = facts["settings"], facts["rows"]
    full = rows["full"]
    lines = [
        "# Pruned best-of-N: continuing from the kept KV cache against re-reading",
        "",
        f"`{facts['command']}` at {facts['revision']}; {facts['machine']}; load "
        f"{facts['load']}; {facts['versions']}.",
        "",
        f"{s['prompts']} IFEval test prompts (benchmarks/efficient.py's first), model "
        f"{s['model']} at float32, seeded sampling, seed 0, N = {s['n']}, "
        f"{s['max_new_tokens']} new tokens; pruned at {s['prune_at']} keeping {s['keep']} by "
        f"{s['prune_by']}. One engine and one prune scorer; the three kinds take turns in each "
        "batch (rotating order). Seconds: the generate stage's wall time, decoding and the "
        "prune scorer.",
        "",
        "| run | seconds | vs full | decoded tokens | vs full | prompt and partial read again |",
        "|---|---|---|---|---|---|",
    ]
    names = {
        "full": "full best-of-N",
        "cached": "pruned, survivors from the KV cache",
        "reread": "pruned, survivors re-read",
    }
    for kind in KINDS:
        row = rows[kind]
        lines.append(
            f"| {names[kind]} | {row['seconds']} | {row['seconds'] / full['seconds']:.1%} | "
            f"{row['decoded_tokens']} | {row['decoded_tokens'] / full['decoded_tokens']:.1%} | "
            f"{row['prefill_tokens']} |"
        )
    same, total = facts["cached_equals_reread"]
    lines += ["", "Survivors equal to the full run's candidate (token for token):"]
    for kind, seen in facts["survivors"].items():
        lines.append(f"- {names[kind]}: {seen['equal_to_full']} of {seen['survivors']}")
    lines += [f"- the two pruned runs' candidates equal each other: {same} of {total}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
