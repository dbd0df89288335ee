"""Fit the selectors shipped in recipes/selectors/ on the dev halves of data/pref/ and judge
them on the test halves.

    python benchmarks/fit_selectors.py [--batch-size 16]

One `bon fit` per kind of set (dev half in, its test half held out) and one general fit on every
dev half (every test half held out). Each writes recipes/selectors/<name>.yaml, whose comments
carry its dev (cross-validated) and test accuracy, and the results file compares, on the same
test records in the same run, each selector with the scorers it combines, the default scorer and
the length controls. The default-scorer decision is computed here: the general selector becomes
the default only if it beats the default on every test half.

Writes benchmarks/results/fit_selectors.md and .json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import bon
from bon.evals.pref import cell_text
from bon.fitting import FitReport
from bon.scorers import ScoreOptions

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "pref"
SELECTORS = ROOT / "recipes" / "selectors"
RESULTS = ROOT / "benchmarks" / "results"
KINDS = {"focus": "focus", "vs_small": "vs-small", "ifeval_pref": "ifeval-pref"}
"""File stem -> the `subset` its records carry."""
SCORERS = ("flip-tokens", "relevance", "mbr", "confidence")
DEFAULT = ScoreOptions().scorers[0]


def _fit(name: str, dev: list[Path], test: list[Path], batch_size: int) -> FitReport:
    out = SELECTORS / f"{name}.yaml"
    start = time.perf_counter()
    report = bon.fit(
        [str(p.relative_to(ROOT)) for p in dev],
        str(out.relative_to(ROOT)),
        scorers=SCORERS,
        test=tuple(str(p.relative_to(ROOT)) for p in test),
        batch_size=batch_size,
    )
    print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    return report


def _section(name: str, report: FitReport) -> list[str]:
    weights = ", ".join(f"{k} {v:g}" for k, v in report.weights.items())
    return [
        f"## {name} (`recipes/selectors/{name}.yaml`)",
        "",
        f"Fitted on {report.records} dev records ({report.pairs} pairs): cross-validated "
        f"accuracy {report.cv_accuracy:.3f} ({report.options.folds} folds), training "
        f"{report.train_accuracy:.3f}. Weights: {weights}.",
        "",
        "Test half (held out; `mix` is this selector):",
        "",
        report.test.to_markdown(),
        "",
    ]


def _decision(general: FitReport) -> tuple[bool, list[str]]:
    """Whether the general selector beats the default on every test half, and the table."""
    rows = [
        "| test half | general selector | default (" + DEFAULT + ") | beats it |",
        "|---|---|---|---|",
    ]
    every = True
    for subset in KINDS.values():
        cells = general.test.subsets[subset].scorers
        mix, default = cells["mix"], cells[DEFAULT]
        beats = mix.accuracy > default.accuracy
        every &= beats
        rows.append(
            f"| {subset} | {cell_text(mix)} | {cell_text(default)} | {'yes' if beats else 'no'} |"
        )
    return every, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    SELECTORS.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    reports = {
        stem: _fit(
            stem, [DATA / f"{stem}.dev.jsonl"], [DATA / f"{stem}.test.jsonl"], args.batch_size
        )
        for stem in KINDS
    }
    reports["general"] = _fit(
        "general",
        [DATA / f"{stem}.dev.jsonl" for stem in KINDS],
        [DATA / f"{stem}.test.jsonl" for stem in KINDS],
        args.batch_size,
    )
    seconds = time.perf_counter() - start
    every, table = _decision(reports["general"])
    verdict = (
        "The general selector beats the default on every test half: it can be the default."
        if every
        else f"The general selector does not beat {DEFAULT} on every test half: {DEFAULT} stays "
        "the default."
    )
    import torch
    import transformers

    lines = [
        "# Fitted selectors: dev-half fits judged on the test halves",
        "",
        f"Command: `python benchmarks/fit_selectors.py --batch-size {args.batch_size}` "
        f"({seconds:.0f} s with an empty score cache).",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Machine: "
        f"{platform.machine()}, Python {platform.python_version()}, bon {bon.__version__}, "
        f"torch {torch.__version__}, transformers {transformers.__version__}.",
        f"Scorers combined (with the length feature): {', '.join(SCORERS)}; their options and "
        "models are the defaults (SmolLM2-135M-Instruct scoring model, all-MiniLM-L6-v2 "
        "embedder), recorded in each selector file. Fit: Bradley-Terry, l2 1, 5-fold CV, fold "
        "seed 0. Data: data/pref/ (see its README).",
        "",
        "## The default scorer",
        "",
        *table,
        "",
        verdict,
        "",
    ]
    for name, report in reports.items():
        lines += _section(name, report)
    (RESULTS / "fit_selectors.md").write_text("\n".join(lines))
    data = {name: report.to_dict() for name, report in reports.items()}
    data["default_beaten_everywhere"] = every
    (RESULTS / "fit_selectors.json").write_text(json.dumps(data, indent=1) + "\n")
    print(verdict)


if __name__ == "__main__":
    main()
