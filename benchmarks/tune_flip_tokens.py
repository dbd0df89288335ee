"""Tune `flip-tokens`' mixing weights on the dev halves, then report them on the test halves.

`flip-tokens` records, per candidate, the raw token aggregate (under the name of its
`--token-reduce`, the default's unless given), the mean token
log-probability (`logprob_mean`), the words it read and whether the echo guard penalised it. From
one scoring pass (through bon's score cache, so after `benchmarks/reward_quality.py` nothing is
recomputed) this script rebuilds the score of every weighting on a grid,

    z(aggregate) + mean_weight * z(logprob_mean) + length_weight * z(log(1 + words)) - echo penalty,

(z: standard scores within a record) and measures preference accuracy on every file. The weights
are chosen by the mean dev accuracy over the three sets (each set counts once, whatever its
size); the test halves are read only to report the chosen and the default weights.

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python benchmarks/tune_flip_tokens.py \\
        --pref-dir data/pref --out benchmarks/results/tune_flip_tokens.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import bon
from bon.evals.pref import accuracy
from bon.scorers import ScoreOptions
from bon.scorers.tokens import FlipTokensScorer, standardise

SETS = ("focus", "vs_small", "ifeval_pref")
HALVES = ("dev", "test")
MEAN_WEIGHTS = (0.0, 0.5, 1.0)
LENGTH_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)
SCORER = "flip-tokens"
PENALTY = ScoreOptions().echo_penalty or FlipTokensScorer.default_echo_penalty


def read_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    return records[:limit] if limit else records


def features(record: dict, reduce: str) -> dict[str, np.ndarray]:
    """The per-candidate quantities a weighting mixes, from the scorer's evidence."""
    evidence = [c[SCORER] for c in record["candidates"]]
    return {
        "aggregate": np.array([e[reduce] for e in evidence], dtype=float),
        "mean": np.array([e["logprob_mean"] for e in evidence], dtype=float),
        "words": np.log1p([e["words"] for e in evidence]),
        "echo": np.array([bool(e.get("echo_penalised")) for e in evidence], dtype=float),
    }


def mixed(feature: dict[str, np.ndarray], mean_weight: float, length_weight: float) -> np.ndarray:
    score = standardise(feature["aggregate"]) + mean_weight * standardise(feature["mean"])
    score = score + length_weight * standardise(feature["words"])
    return score - PENALTY * feature["echo"]


def accuracies(
    records: list[dict], weights: list[tuple[float, float]], reduce: str
) -> dict[str, float]:
    """Accuracy of every weighting on one file's scored records."""
    labels = {w: f"m{w[0]}-l{w[1]}" for w in weights}
    rows = []
    for record in records:
        feature = features(record, reduce)
        candidates = [dict(c, scores={}) for c in record["candidates"]]
        for w, label in labels.items():
            for candidate, value in zip(candidates, mixed(feature, *w), strict=True):
                candidate["scores"][label] = float(value)
        rows.append({**record, "candidates": candidates})
    overall = accuracy(rows, list(labels.values()), bootstrap=0).overall
    return {label: overall.scorers[label].accuracy for label in labels.values()}


def scored_files(
    pref_dir: Path, batch_size: int, limit: int | None, reduce: str
) -> dict[tuple[str, str], list[dict]]:
    files = {}
    for name, half in itertools.product(SETS, HALVES):
        path = pref_dir / f"{name}.{half}.jsonl"
        if path.exists() and path.stat().st_size:
            records = read_jsonl(path, limit)
            files[name, half] = bon.score_records(
                records, scorers=(SCORER,), token_reduce=reduce, batch_size=batch_size
            )
            print(f"scored {path} ({len(records)} records)", file=sys.stderr)
    return files


def markdown(grid: dict, weights: list, chosen: tuple, default: tuple, argv: Sequence[str]) -> str:
    def row(w: tuple[float, float], halves: Sequence[str]) -> str:
        label = f"m{w[0]}-l{w[1]}"
        cells = [
            f"{100 * grid[name, half][label]:.1f}" if (name, half) in grid else "-"
            for name in SETS
            for half in halves
        ]
        return f"| {w[0]} | {w[1]} | " + " | ".join(cells) + " |"

    dev_header = "| mean weight | length weight | " + " | ".join(f"{s} dev" for s in SETS) + " |"
    both = [f"{s} {h}" for s in SETS for h in HALVES]
    return "\n".join(
        [
            "# flip-tokens weights: chosen on dev, reported on test",
            "",
            f"Command: `python benchmarks/tune_flip_tokens.py {' '.join(argv)}`",
            f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. bon {bon.__version__}; "
            "default models (SmolLM2-135M-Instruct reranker).",
            "",
            "Score = z(token aggregate) + mean weight * z(mean token log-prob) + length weight * "
            "z(log(1 + words)) within a record, minus the echo penalty. Accuracy %, ties wrong.",
            "",
            "## Every weighting on the dev halves",
            "",
            dev_header,
            "|---|---|" + "---|" * len(SETS),
            *(row(w, ("dev",)) for w in weights),
            "",
            "## Chosen (best mean dev accuracy) and default, on both halves",
            "",
            "| mean weight | length weight | " + " | ".join(both) + " |",
            "|---|---|" + "---|" * len(both),
            row(chosen, HALVES) + " chosen",
            row(default, HALVES) + " default",
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pref-dir", type=Path, default=Path("data/pref"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tune_flip_tokens.md"))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--limit", type=int, default=None, help="records per file (all: unset)")
    parser.add_argument("--token-reduce", default=ScoreOptions().of("flip-tokens").token_reduce)
    args = parser.parse_args(argv)
    weights = list(itertools.product(MEAN_WEIGHTS, LENGTH_WEIGHTS))
    files = scored_files(args.pref_dir, args.batch_size, args.limit, args.token_reduce)
    grid = {key: accuracies(records, weights, args.token_reduce) for key, records in files.items()}
    dev = [key for key in grid if key[1] == "dev"]
    chosen = max(weights, key=lambda w: np.mean([grid[k][f"m{w[0]}-l{w[1]}"] for k in dev]))
    default = (0.0, ScoreOptions().of("flip-tokens").length_weight)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    argv_text = sys.argv[1:] if argv is None else argv
    args.out.write_text(markdown(grid, weights, chosen, default, argv_text), encoding="utf-8")
    print(args.out.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
