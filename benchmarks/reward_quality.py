"""Reward quality: every scorer on the dev and test halves of the three preference sets, in one run.

Each row is a scorer with its options (the default scorer with default options first, the
paper's recipe as `flip --prompt paper --similarity f1`). Every row scores the same items: the
first `--limit` records of each file (all of them by default). The rows that decode text
(generative FLIP and the judges) cost ~100x more per candidate than the teacher-forced ones on
a CPU, so they read only the first `--slow-limit` records of each file; the table says how many
items each cell holds. Accuracy: a preferred candidate scores strictly above every other (ties
wrong), with a 95% paired bootstrap interval over items (`bon.evals.pref.accuracy`).

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python benchmarks/reward_quality.py \\
        --pref-dir data/pref --out benchmarks/results/reward_quality.md

Scores go through bon's score cache, so a rerun (or a larger `--limit`) recomputes only what is
missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import bon
from bon import runner, stages
from bon.api import split_options
from bon.engines import Engine, SharedEngine
from bon.evals.pref import accuracy
from bon.scorers import ScoreOptions

SETS = (("focus", "focus"), ("vs_small", "vs-small"), ("ifeval_pref", "ifeval-pref"))
ROOT = Path(__file__).resolve().parent.parent
SELECTORS = ROOT / "recipes" / "selectors"
HALVES = ("dev", "test")


@dataclass(frozen=True)
class Row:
    """One table row: a label, the scorer it runs and the options that differ from defaults."""

    label: str
    scorer: str
    options: dict[str, Any] = field(default_factory=dict)
    slow: bool = False


def default_rows() -> list[Row]:
    """The default scorer first, then the FLIP variants, the judges and the controls."""
    default = ScoreOptions().scorers[0]
    rows = [Row(f"{default} (default)", default)]
    rows += [Row("flip-tokens gain (previous default)", "flip-tokens", {"token_reduce": "gain"})]
    rows += [Row(name, name) for name in ("flip-likelihood",) if name != default]
    rows += [
        Row("flip paper+f1 (paper recipe)", "flip", {"prompt": "paper", "similarity": "f1"}, True),
        Row("flip short+cosine", "flip", {"prompt": "short", "similarity": "cosine"}, True),
        Row("judge-pointwise", "judge-pointwise", {}, True),
        Row("judge-pairwise knockout", "judge-pairwise", {"pairwise": "knockout"}, True),
        Row("judge-listwise", "judge-listwise", {}, True),
        Row("relevance", "relevance"),
        Row("mbr", "mbr"),
        Row("mbr cosine", "mbr", {"similarity": "cosine"}),
        Row("vote", "vote"),
        Row("confidence", "confidence"),
        *selector_rows(),
        Row("random", "random"),
        Row("longest", "longest"),
        Row("shortest", "shortest"),
    ]
    return rows


def selector_rows() -> list[Row]:
    """One row per selector shipped in recipes/selectors/ (fitted on the dev halves by
    benchmarks/fit_selectors.py: their dev cells are training accuracy)."""
    return [
        Row(f"mix {path.stem} selector", "mix", {"mix": str(path.relative_to(ROOT))})
        for path in sorted(SELECTORS.glob("*.yaml"))
    ]


def read_jsonl(path: Path, limit: int | None) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    return records[:limit] if limit else records


def score_row(
    row: Row, records: list[dict], common: dict[str, Any], engine: Engine | None = None
) -> list[dict]:
    """`records` scored by `row`, the score stored under the row's label (accuracy reads a
    label that is no scorer's name as higher-is-better, so `shortest` keeps its own name)."""
    (options,) = split_options(
        "score", {"scorers": (row.scorer,), **common, **row.options}, files=False
    )
    scored = runner.run_records(stages.score_stage(options, engine), records)
    for record in scored:
        for candidate in record["candidates"]:
            candidate["scores"] = {row.label: candidate["scores"][row.scorer]}
    return scored


def files(pref_dir: Path) -> list[tuple[str, str, Path]]:
    """(subset, half, path) of every non-empty preference file present."""
    out = []
    for name, subset in SETS:
        for half in HALVES:
            path = pref_dir / f"{name}.{half}.jsonl"
            if path.exists() and path.stat().st_size:
                out.append((subset, half, path))
    return out


def run(args: argparse.Namespace, rows: list[Row] | None = None) -> dict[str, Any]:
    """Every row (default: `default_rows()`) on every file present: the rows, their results
    {label: {subset: {half: cell}}} and the seconds each took."""
    wanted = (r for r in default_rows() if r.slow or not args.only_slow)
    rows = rows or [r for r in wanted if not (args.skip_slow and r.slow)]
    common: dict[str, Any] = {"batch_size": args.batch_size}
    if args.no_cache:
        common["no_cache"] = True
    slow_common = {**common, "engine": args.slow_engine}
    # One reranker engine for every slow row and file (a vLLM start-up costs minutes on a CPU).
    shared = SharedEngine(split_options("score", dict(slow_common), files=False)[0])
    results: dict[str, dict[str, dict[str, Any]]] = {row.label: {} for row in rows}
    seconds: dict[str, float] = {row.label: 0.0 for row in rows}
    try:
        for row in rows:
            for subset, half, path in files(args.pref_dir):
                limits = (args.limit, slow_limit(row, args)) if row.slow else (args.limit,)
                limit = min(filter(None, limits), default=None)
                records = read_jsonl(path, limit)
                started = time.perf_counter()
                if row.slow:
                    scored = score_row(row, records, slow_common, shared)
                else:
                    scored = score_row(row, records, common)
                seconds[row.label] += time.perf_counter() - started
                cell = accuracy(scored, [row.label], bootstrap=args.bootstrap).overall
                results[row.label].setdefault(subset, {})[half] = {
                    "items": cell.items,
                    "random": cell.random,
                    **cell.scorers[row.label].to_dict(),
                }
                print(
                    f"{subset}.{half} {row.label}: {cell.scorers[row.label].accuracy:.3f}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        shared.close()
    return {"rows": [r.__dict__ for r in rows], "results": results, "seconds": seconds}


def slow_limit(row: Row, args: argparse.Namespace) -> int:
    """Records per file for a slow row: `--judge-limit` for the judges when given."""
    judge = row.scorer.startswith("judge-") and args.judge_limit is not None
    return args.judge_limit if judge else args.slow_limit


def slow_text(args: argparse.Namespace) -> str:
    """Which items the slow rows read, for the table's header."""

    def items(limit: int) -> str:
        return f"the first {limit} items" if limit else "every item"

    text = f"Rows marked slow decode text and read {items(args.slow_limit)}"
    if args.judge_limit is not None and args.judge_limit != args.slow_limit:
        text += f"; the judges read {items(args.judge_limit)}"
    return text + "."


def cell_text(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "-"
    text = f"{100 * cell['accuracy']:.1f}"
    if cell.get("low") is not None:
        text += f" [{100 * cell['low']:.0f}, {100 * cell['high']:.0f}]"
    return f"{text} (n={cell['items']})"


def markdown(report: dict[str, Any], args: argparse.Namespace) -> str:
    header = ["scorer"] + [f"{subset} {half}" for _, subset in SETS for half in HALVES]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report["rows"]:
        cells = report["results"][row["label"]]
        values = [
            cell_text(cells.get(subset, {}).get(half)) for _, subset in SETS for half in HALVES
        ]
        lines.append(f"| {row['label']} | " + " | ".join(values) + " |")
    versions = {p: metadata.version(p) for p in ("torch", "transformers", "sentence-transformers")}
    return "\n".join(
        [
            "# Reward quality: preference accuracy of every scorer (dev and test halves)",
            "",
            f"Command: `python benchmarks/reward_quality.py {' '.join(sys.argv[1:])}`",
            f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. "
            f"Machine: {platform.machine()} {platform.processor() or 'cpu'} "
            f"({os.cpu_count()} cores), Python {platform.python_version()}, "
            f"bon {bon.__version__}, " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".",
            "Models: the defaults (SmolLM2-135M-Instruct reranker, all-MiniLM-L6-v2 embedder).",
            "The `mix ... selector` rows are the selectors of recipes/selectors/, fitted on dev "
            "halves by benchmarks/fit_selectors.py: a dev cell of a half they were fitted on is "
            "training accuracy, and only the test cells are held out.",
            "",
            "Accuracy % (a preferred candidate strictly above every other; ties wrong), "
            "[95% bootstrap interval], (n = items). "
            + (
                "Generative FLIP and the judges were left out (--skip-slow)."
                if args.skip_slow
                else slow_text(args)
            ),
            "",
            *lines,
            "",
            "Rows: "
            + "; ".join(
                f"`{r['label']}` = `--scorer {r['scorer']}"
                + "".join(f" --{k.replace('_', '-')} {v}" for k, v in r["options"].items())
                + "`"
                + (" (slow)" if r["slow"] else "")
                for r in report["rows"]
            ),
            "",
            "Seconds per row (all files): "
            + ", ".join(f"{k} {v:.0f}" for k, v in report["seconds"].items()),
            "",
        ]
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pref-dir", type=Path, default=Path("data/pref"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/reward_quality.md"))
    parser.add_argument("--limit", type=int, default=None, help="records per file (all: unset)")
    parser.add_argument(
        "--slow-limit", type=int, default=10, help="records per file, slow rows (0: all)"
    )
    parser.add_argument(
        "--judge-limit", type=int, default=None, help="records per file, judges (0: all)"
    )
    parser.add_argument("--skip-slow", action="store_true", help="leave out the slow rows")
    parser.add_argument("--only-slow", action="store_true", help="run the slow rows alone")
    parser.add_argument(
        "--slow-engine", default="hf", help="reranker engine of the slow rows (vllm decodes faster)"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--no-cache", action="store_true")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(report, args), encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    print(args.out.read_text(encoding="utf-8"))
    return report


if __name__ == "__main__":
    main()
