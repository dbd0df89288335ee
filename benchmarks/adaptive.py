"""Adaptive best-of-N (`bon run --adaptive`) against full best-of-N on the same prompts.

Both runs sample the same IFEval prompts (`bon.evals.ifeval.load_prompts`, `--limit` of them)
with the same model, seed and scorer; full best-of-N draws `--n` candidates per prompt, the
adaptive run draws waves of 2, 4, 8, ... up to `--n` and stops a prompt once its pick is settled
(`--settle`, see bon/adaptive.py). The adaptive run's first k candidates of a prompt are the
full run's first k (seeded sampling), so the two picks compare directly. Each run scores with a
score cache of its own, so neither is served the other's scores. Reported:

- mean selected score, adaptive and full (the selection scorer's value of the pick);
- share of prompts where adaptive picks the same candidate as full best-of-N;
- generator tokens of each run (prompt + completion, from each record's `cost.generate`; the
  adaptive run reads a prompt once per wave), the completion tokens among them, and all
  tokens (`cost.total`, scoring included);
- mean N used by the adaptive run, and how many prompts the rule settled before `--n`.

    OMP_NUM_THREADS=1 python benchmarks/adaptive.py                 # hours on a CPU
    python benchmarks/adaptive.py --limit 4 --n 4 --max-new-tokens 32 --out adaptive_smoke

Writes benchmarks/results/adaptive.md and .json (`--out` for another stem).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from revisions import command_line, load_average, machine, revision, versions  # noqa: E402

import bon  # noqa: E402
from bon.evals.ifeval import load_prompts  # noqa: E402
from bon.scorers import ScoreOptions  # noqa: E402

SMALL = 50
"""Fewer prompts than this make a smoke check, and the report says so."""


def run_both(args: argparse.Namespace, folder: Path) -> dict:
    """Full and adaptive best-of-N over the same prompts; their selected records by id."""
    prompts = folder / "prompts.jsonl"
    rows = load_prompts(limit=args.limit, seed=args.seed)
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    common = {
        "model": args.model,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "dtype": args.dtype,
        "scorers": [args.scorer],
        "record_logprobs": args.scorer == "confidence",
        "quiet": True,
    }
    out: dict = {}
    for name, more in (("full", {}), ("adaptive", {"adaptive": True, "settle": args.settle})):
        started = time.perf_counter()
        cache = str(folder / f"{name}-scores.sqlite")
        bon.run(prompts, folder / name, cache_path=cache, **common, **more)
        lines = (folder / name / "selected.jsonl").read_text(encoding="utf-8").splitlines()
        out[name] = {r["id"]: r for r in map(json.loads, lines) if r}
        lines = (folder / name / "candidates.jsonl").read_text(encoding="utf-8").splitlines()
        texts = {r["id"]: [c["text"] for c in r["candidates"]] for r in map(json.loads, lines)}
        out[f"{name}_texts"] = texts
        out[f"{name}_seconds"] = time.perf_counter() - started
    return out


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if isinstance(v, (int, float))]
    return statistics.fmean(finite) if finite else None


def summarise(runs: dict, n: int) -> dict:
    """The comparison of the two runs' selected records."""
    full, adaptive = runs["full"], runs["adaptive"]
    ids = sorted(set(full) & set(adaptive))

    def tokens(rows: dict, part: str) -> int:
        total = 0
        for key in ids:
            spent = rows[key]["cost"]
            if part == "completion":
                total += spent["generate"]["completion_tokens"]
            elif part == "generate":
                total += spent["generate"]["prompt_tokens"] + spent["generate"]["completion_tokens"]
            else:
                total += spent["total"]["tokens"]
        return total

    used = [adaptive[k]["adaptive"]["n_used"] for k in ids]
    drawn = [(runs["adaptive_texts"][k], runs["full_texts"][k]) for k in ids]
    reproduced = sum(a == f[: len(a)] for a, f in drawn)
    return {
        "prompts": len(ids),
        "mean_selected_score": {
            "full": _mean([full[k]["selected"]["score"] for k in ids]),
            "adaptive": _mean([adaptive[k]["selected"]["score"] for k in ids]),
        },
        "same_pick": sum(
            full[k]["selected"]["text"] == adaptive[k]["selected"]["text"] for k in ids
        )
        / max(1, len(ids)),
        "generator_tokens": {
            "full": tokens(full, "generate"),
            "adaptive": tokens(adaptive, "generate"),
        },
        "completion_tokens": {
            "full": tokens(full, "completion"),
            "adaptive": tokens(adaptive, "completion"),
        },
        "all_tokens": {"full": tokens(full, "total"), "adaptive": tokens(adaptive, "total")},
        "mean_n_used": _mean(used),
        "candidates_reproduced": reproduced / max(1, len(ids)),
        "settled_early": sum(used_k < n for used_k in used),
        "seconds": {"full": runs["full_seconds"], "adaptive": runs["adaptive_seconds"]},
    }


def markdown(facts: dict, result: dict) -> str:
    score = result["mean_selected_score"]
    gen, every = result["generator_tokens"], result["all_tokens"]

    def fmt(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    saved = 1 - gen["adaptive"] / gen["full"] if gen["full"] else 0.0
    lines = [
        "# Adaptive best-of-N against full best-of-N",
        "",
        f"`{facts['command']}`",
        "",
        f"Model {facts['model']}, {result['prompts']} IFEval prompts, N = {facts['n']}, "
        f"max_new_tokens {facts['max_new_tokens']}, scorer {facts['scorer']}, settle "
        f"{facts['settle']}, seed {facts['seed']}, dtype {facts['dtype']}.",
        "",
        "| | full | adaptive |",
        "|---|---|---|",
        f"| mean selected score | {fmt(score['full'])} | {fmt(score['adaptive'])} |",
        f"| generator tokens | {gen['full']} | {gen['adaptive']} |",
        f"| of them completion tokens | {result['completion_tokens']['full']} | "
        f"{result['completion_tokens']['adaptive']} |",
        f"| all tokens (scoring included) | {every['full']} | {every['adaptive']} |",
        f"| mean N used | {facts['n']} | {fmt(result['mean_n_used'])} |",
        f"| prompts stopped before N | 0 | {result['settled_early']} |",
        f"| seconds | {result['seconds']['full']:.1f} | {result['seconds']['adaptive']:.1f} |",
        "",
        *(
            [
                f"Only {result['prompts']} prompts: a check that the script runs, not a "
                "measurement.",
                "",
            ]
            if result["prompts"] < SMALL
            else []
        ),
        f"Same pick as full best-of-N: {100 * result['same_pick']:.1f}% of prompts; the adaptive "
        f"run's candidates are the full run's first k in "
        f"{100 * result['candidates_reproduced']:.1f}% of prompts (float32 keeps them so; at "
        "bfloat16 the waves' other batch shapes change the rounding, and so the samples). "
        f"Generator tokens saved: {100 * saved:.1f}%. The adaptive run reads each prompt once "
        "per wave, so its prompt tokens grow with the waves.",
        "",
        f"Revision {facts['revision']}; {facts['machine']}; {facts['versions']}; "
        f"load average at the end {facts['load_average_end']}.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--limit", type=int, default=None, help="IFEval prompts (all: 541)")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--scorer", default=ScoreOptions().scorers[0])
    parser.add_argument("--settle", type=float, default=bon.SelectOptions().settle)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float32", help="float32: waves reproduce samples")
    parser.add_argument("--out", default="adaptive", help="stem of the files in results/")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        runs = run_both(args, Path(folder))
    result = summarise(runs, args.n)
    facts = {
        "command": command_line(),
        "revision": revision(),
        "machine": machine(),
        "versions": versions(("torch", "transformers")),
        "load_average_end": load_average(),
        "model": args.model,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "scorer": args.scorer,
        "settle": args.settle,
        "seed": args.seed,
        "dtype": args.dtype,
    }
    results = ROOT / "benchmarks" / "results"
    (results / f"{args.out}.json").write_text(
        json.dumps({**facts, **result}, indent=2) + "\n", encoding="utf-8"
    )
    (results / f"{args.out}.md").write_text(markdown(facts, result), encoding="utf-8")
    print(markdown(facts, result))


if __name__ == "__main__":
    main()
