"""Every `flip-tokens` token reduction on the same items, from one scoring pass per file.

`flip-tokens` reduces the instruction's per-token log-probabilities given each response (and the
instruction's prior) to one number per candidate (`--token-reduce`), then mixes it with a length
term (`--length-weight`). This script scores each file once, keeps the per-token rows and the
instruction's sentence spans the scorer computed (it wraps `bon.scorers.tokens.reduce_tokens` for
the run), and applies every reduction and length weight to those same rows, so the rows of the
table differ only in the aggregation. Tune on dev halves only; the test halves are there to report.

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python benchmarks/token_reductions.py \\
        data/pref/ifeval_pref.dev.jsonl data/pref/ifeval_pref.test.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import bon
import bon.scorers.tokens as tokens
from bon.evals.pref import accuracy
from bon.scorers import ScoreOptions
from bon.scorers.tokens import TOKEN_REDUCTIONS, FlipTokensScorer

LENGTH_WEIGHTS = (-0.5, 0.0, 0.25, 0.5)
PENALTY = ScoreOptions().echo_penalty or FlipTokensScorer.default_echo_penalty


def token_rows(records: list[dict], batch_size: int) -> tuple[list[dict], list[tuple]]:
    """`records` scored by `flip-tokens` (no cache; the reduction that reads sentence spans),
    and each record's (rows, prior, spans)."""
    captured: list[tuple] = []
    reduce = tokens.reduce_tokens

    def keep(rows: Sequence, prior: Sequence, how: str, spans: Sequence) -> list[float]:
        captured.append(([list(r) for r in rows], list(prior), spans))
        return reduce(rows, prior, how, spans)

    tokens.reduce_tokens = keep
    try:
        scored = bon.score_records(
            records,
            scorers=("flip-tokens",),
            token_reduce="weakest",
            batch_size=batch_size,
            no_cache=True,
        )
    finally:
        tokens.reduce_tokens = reduce
    return scored, captured


def accuracies(scored: list[dict], captured: list[tuple]) -> dict[str, float]:
    labels = []
    for how in TOKEN_REDUCTIONS:
        for weight in LENGTH_WEIGHTS:
            label = f"{how} / {weight}"
            labels.append(label)
            for record, (rows, prior, spans) in zip(scored, captured, strict=True):
                evidence = [c["flip-tokens"] for c in record["candidates"]]
                aggregate = tokens.reduce_tokens(rows, prior, how, spans)
                values = tokens.combine(aggregate, [e["words"] for e in evidence], weight)
                for candidate, value, e in zip(record["candidates"], values, evidence, strict=True):
                    candidate["scores"][label] = value - PENALTY * bool(e.get("echo_penalised"))
    overall = accuracy(scored, labels, bootstrap=0).overall
    return {label: overall.scorers[label].accuracy for label in labels}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--limit", type=int, default=None, help="records per file (all: unset)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/token_reductions.md"))
    args = parser.parse_args(argv)
    results = {}
    for path in args.files:
        with path.open(encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle if line.strip()][: args.limit]
        results[path.name] = accuracies(*token_rows(records, args.batch_size))
        print(f"scored {path} ({len(records)} records)", file=sys.stderr)
    labels = list(next(iter(results.values())))
    lines = [
        "# flip-tokens: every token reduction and length weight on the same rows",
        "",
        f"Command: `python benchmarks/token_reductions.py {' '.join(sys.argv[1:])}`",
        f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. bon {bon.__version__}; default "
        "models (SmolLM2-135M-Instruct reranker). Accuracy %, ties wrong; one scoring pass per "
        "file, every row from the same per-token log-probabilities.",
        "",
        "| reduction / length weight | " + " | ".join(results) + " |",
        "|---|" + "---|" * len(results),
        *(
            f"| {label} | " + " | ".join(f"{100 * r[label]:.1f}" for r in results.values()) + " |"
            for label in labels
        ),
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines), encoding="utf-8")
    print(args.out.read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
