"""Compute-efficient best-of-N: full, pruned and adaptive runs of the same IFEval prompts.

For each N of `--n` (8 and 16), three `bon run`s of the same test prompts with the same model,
seed, sampling and selection scorer (`--scorer`): full best-of-N; pruned best-of-N (`--prune-at`,
`--keep`); adaptive N (`--settle`). The hf engine at float32 with seeded sampling, so a
survivor of pruning and an adaptive run's first k candidates are the full run's, token for
token, and the picks compare directly. The test prompts are IFEval prompts drawn with
`--prompt-seed` from those `benchmarks/efficient_dev.py` did not tune the settings on.

Reported per N, from each run's records:

- pruned: the share of prompts whose pick is the full run's (same text), and the generator
  tokens decoded (`cost.generate.completion_tokens`) as a share of the full run's; beside them
  what pruning spent besides decoding (its scorer's reads, the re-read prompt and partial
  tokens);
- adaptive: mean selected score against full best-of-N's (relative gap), IFEval prompt-level
  strict of the picks with 95% bootstrap intervals, the mean N used and the generator tokens
  (prompt and completion; an adaptive run reads the prompt once per wave) as a share of the
  full run's;
- each run's wall seconds (one run each, models loaded once per run, score cache off).

It also draws `bon curve --x tokens` with IFEval prompt-level strict as the metric (the largest
full run as best-of-N' curves, every pruned and adaptive run as one point) into
efficient_curve.png and efficient_curve.json. Hours on a 2-core CPU at full size:

    python benchmarks/efficient.py --prompts 32 --n 8,16 --max-new-tokens 128 --work DIR

(defaults: pruned at 16,48 keeping 0.5, settle 0.3, as chosen on dev).

Writes benchmarks/results/efficient.md and .json (`--out` for another stem).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from efficient_dev import adaptive_rows, dev_prompts, partial_scores, prune_rows  # noqa: E402
from revisions import provenance  # noqa: E402

BOOTSTRAP = 2000


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32, help="test prompts (default 32)")
    parser.add_argument("--dev", type=int, default=16, help="dev prompts left out (default 16)")
    parser.add_argument("--n", default="8,16", help="candidates per prompt (default 8,16)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--model", default="smollm2-135m", help="generator and scorer model")
    parser.add_argument("--scorer", default="relevance", help="selection and prune scorer")
    parser.add_argument("--prune-at", default="16,48", help="checkpoints (default 16,48)")
    parser.add_argument("--keep", type=float, default=0.5, help="share kept (default 0.5)")
    parser.add_argument("--settle", type=float, default=0.3, help="adaptive settle (0.3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt-seed", type=int, default=0)
    parser.add_argument(
        "--work",
        default="/tmp/bon-efficient",
        help="folder for the runs; a run finished there is read back, not run again",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/efficient"), help="stem")
    parser.add_argument("--note", action="append", default=[], help="a line for the report")
    return parser.parse_args()


def test_prompts(count: int, dev: int, seed: int) -> list[dict]:
    """`count` IFEval prompts drawn with `seed` from those not among the `dev` dev prompts."""
    from bon.evals.ifeval import load_prompts

    left_out = {r["id"] for r in dev_prompts(dev)}
    rows = [r for r in load_prompts() if r["id"] not in left_out]
    keep = set(random.Random(seed).sample(range(len(rows)), min(count, len(rows))))
    return [r for i, r in enumerate(rows) if i in keep]


def run_all(args: argparse.Namespace, work: Path) -> dict:
    """Every run's labelled scored records and wall seconds, keyed like "pruned@8"."""
    import bon
    from bon.evals.ifeval import label_records

    prompts = work / "prompts.jsonl"
    rows = test_prompts(args.prompts, args.dev, args.prompt_seed)
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    common = {
        "model": args.model,
        "reranker_model": args.model,
        "dtype": "float32",
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "scorers": [args.scorer],
        "no_cache": True,
        "quiet": True,
    }
    checkpoints = tuple(int(t) for t in args.prune_at.split(","))
    kinds = {
        "full": {"keep_all": True},
        "pruned": {"prune_at": checkpoints, "keep": args.keep, "keep_all": True},
        "adaptive": {"adaptive": True, "settle": args.settle, "keep_all": True},
    }
    runs = {}
    for n in sizes(args):
        for kind, more in kinds.items():
            name = f"{kind}@{n}"
            path, timing = work / f"{name}.labelled.jsonl", work / f"{name}.seconds"
            if not timing.exists():  # a run finished earlier in `work` is read back
                folder = work / name
                started = time.perf_counter()
                bon.run(prompts, folder, n=n, **common, **more)
                seconds = round(time.perf_counter() - started, 1)
                lines = (folder / "scored.jsonl").read_text().splitlines()
                labelled = label_records([json.loads(x) for x in lines])
                path.write_text("".join(json.dumps(r) + "\n" for r in labelled))
                timing.write_text(f"{seconds}\n")
            records = [json.loads(x) for x in path.read_text().splitlines()]
            runs[name] = {
                "records": records,
                "seconds": float(timing.read_text()),
                "path": str(path),
            }
    return runs


def sizes(args: argparse.Namespace) -> list[int]:
    return [int(n) for n in args.n.split(",")]


def pick(record: dict, scorer: str) -> int:
    """The index a run selects: the best finished candidate by `scorer` (bon.select's order)."""
    from bon.evals.curve import selection_order
    from bon.records import is_pruned
    from bon.scorers import higher_is_better

    scores = [None if is_pruned(c) else c["scores"].get(scorer) for c in record["candidates"]]
    return selection_order(scores, higher_is_better(scorer))[0]


def strict(records: list[dict], scorer: str) -> list[int]:
    return [r["candidates"][pick(r, scorer)]["ifeval"]["prompt_strict"] for r in records]


def interval(values: list[int], seed: int = 0) -> list[float]:
    """95% bootstrap interval of the mean of `values` (prompts resampled)."""
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(BOOTSTRAP))
    return [round(means[int(0.025 * BOOTSTRAP)], 4), round(means[int(0.975 * BOOTSTRAP)], 4)]


def tokens(records: list[dict], *keys: str) -> int:
    return sum(int(r["cost"]["generate"][k]) for r in records for k in keys)


def prune_spent(records: list[dict]) -> int:
    from bon.cost import PRUNE, PRUNE_TOKENS

    return sum(int(r["cost"].get(PRUNE, {}).get(k, 0)) for r in records for k in PRUNE_TOKENS)


def compare(runs: dict, n: int, scorer: str) -> dict:
    """The targets' figures at N = n."""
    full, cut, adapt = (runs[f"{k}@{n}"]["records"] for k in ("full", "pruned", "adaptive"))
    picks = {
        k: [pick(r, scorer) for r in rows]
        for k, rows in (("full", full), ("pruned", cut), ("adaptive", adapt))
    }

    def text(rows: list[dict], kind: str) -> list[str]:
        return [r["candidates"][i]["text"] for r, i in zip(rows, picks[kind], strict=True)]

    def score(rows: list[dict], kind: str) -> float:
        return statistics.fmean(
            r["candidates"][i]["scores"][scorer] for r, i in zip(rows, picks[kind], strict=True)
        )

    survivors = [
        (whole["text"], kept["text"])
        for a, b in zip(full, cut, strict=True)
        for whole, kept in zip(a["candidates"], b["candidates"], strict=True)
        if "pruned_at" not in kept
    ]
    same_pruned = statistics.fmean(
        a == b for a, b in zip(text(full, "full"), text(cut, "pruned"), strict=True)
    )
    same_adaptive = statistics.fmean(
        a == b for a, b in zip(text(full, "full"), text(adapt, "adaptive"), strict=True)
    )
    full_score, adaptive_score = score(full, "full"), score(adapt, "adaptive")
    decoded = tokens(full, "completion_tokens")
    generated = tokens(full, "prompt_tokens", "completion_tokens")
    strict_full, strict_adaptive, strict_pruned = (
        strict(rows, scorer) for rows in (full, adapt, cut)
    )
    return {
        "n": n,
        "pruned": {
            "same_pick": round(same_pruned, 4),
            "mean_selected_score": round(score(cut, "pruned"), 5),
            "survivors_as_full": f"{sum(a == b for a, b in survivors)}/{len(survivors)}",
            "completion_tokens": tokens(cut, "completion_tokens"),
            "full_completion_tokens": decoded,
            "token_share": round(tokens(cut, "completion_tokens") / decoded, 4),
            "pruning_tokens": prune_spent(cut),
            "prompt_strict": round(statistics.fmean(strict_pruned), 4),
            "seconds": runs[f"pruned@{n}"]["seconds"],
        },
        "adaptive": {
            "mean_selected_score": round(adaptive_score, 5),
            "full_mean_selected_score": round(full_score, 5),
            "relative_gap": round(abs(full_score - adaptive_score) / abs(full_score), 5),
            "same_pick": round(same_adaptive, 4),
            "prompt_strict": round(statistics.fmean(strict_adaptive), 4),
            "prompt_strict_interval": interval(strict_adaptive),
            "mean_n": round(statistics.fmean(r["adaptive"]["n_used"] for r in adapt), 3),
            "generator_tokens": tokens(adapt, "prompt_tokens", "completion_tokens"),
            "full_generator_tokens": generated,
            "token_share": round(
                tokens(adapt, "prompt_tokens", "completion_tokens") / generated, 4
            ),
            "seconds": runs[f"adaptive@{n}"]["seconds"],
        },
        "full": {
            "prompt_strict": round(statistics.fmean(strict_full), 4),
            "prompt_strict_interval": interval(strict_full),
            "seconds": runs[f"full@{n}"]["seconds"],
        },
    }


def every_setting(runs: dict, args: argparse.Namespace) -> dict:
    """Every pruning schedule and settle of `benchmarks/efficient_dev.py`, simulated from the
    largest full run of the test prompts as there (shown, not chosen from)."""
    largest = max(sizes(args))
    records = runs[f"full@{largest}"]["records"]
    partial = partial_scores(records, (args.scorer,), args)[args.scorer]
    return {
        f"{kind}@{n}": rows(records, *more, args.scorer, n)
        for n in sizes(args)
        for kind, rows, more in (
            ("pruning", prune_rows, (partial,)),
            ("adaptive", adaptive_rows, ()),
        )
    }


def draw(runs: dict, args: argparse.Namespace, out: Path) -> dict:
    """`bon curve --x tokens` over every run, as PNG and JSON beside the results."""
    from bon.evals.curve import curve_files

    largest = max(sizes(args))
    names = [f"full@{largest}"] + [n for n in runs if not n.startswith("full@")]
    result = curve_files(
        [runs[name]["path"] for name in names],
        "ifeval.prompt_strict",
        by=[args.scorer],
        x="tokens",
        labels=names,
        plot=out.with_name(out.name + "_curve.png"),
    )
    data = result.to_dict()
    out.with_name(out.name + "_curve.json").write_text(json.dumps(data, indent=2) + "\n")
    return data


def main() -> None:
    args = parse()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    runs = run_all(args, work)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    draw(runs, args, out)
    facts = {
        **provenance(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "work", "note")},
        "notes": args.note,
        "results": [compare(runs, n, args.scorer) for n in sizes(args)],
        "every_setting": every_setting(runs, args),
    }
    out.with_suffix(".json").write_text(json.dumps(facts, indent=2) + "\n")
    out.with_suffix(".md").write_text(report(facts))
    print(report(facts))


def met(ok: bool) -> str:
    return "met" if ok else "not met"


def report(facts: dict) -> str:
    s = facts["settings"]
    lines = [
        "# Compute-efficient best-of-N: full, pruned and adaptive runs of the same IFEval prompts",
        "",
        f"`{facts['command']}`",
        "",
        f"{s['prompts']} IFEval test prompts (drawn with seed {s['prompt_seed']}, none of the "
        f"{s['dev']} dev prompts the settings were chosen on: "
        f"`benchmarks/results/efficient_dev.md`), model {s['model']} (float32, seeded sampling, "
        f"seed {s['seed']}), {s['max_new_tokens']} new tokens at most, selected by "
        f"{s['scorer']}; pruned at {s['prune_at']} keeping {s['keep']}; adaptive settle "
        f"{s['settle']}. Revision {facts['revision']}; {facts['machine']}; load {facts['load']}; "
        f"{facts['versions']}.",
        "",
        "| N | run | same pick as full | generator tokens (share of full) | mean selected "
        "score | IFEval prompt strict [95%] | mean N | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in facts["results"]:
        full, cut, adapt = row["full"], row["pruned"], row["adaptive"]
        lines += [
            f"| {row['n']} | full | - | {cut['full_completion_tokens']} decoded, "
            f"{adapt['full_generator_tokens']} with prompts | "
            f"{adapt['full_mean_selected_score']} | {full['prompt_strict']} "
            f"{full['prompt_strict_interval']} | {row['n']} | {full['seconds']} |",
            f"| {row['n']} | pruned | {cut['same_pick']:.1%} | {cut['completion_tokens']} decoded "
            f"({cut['token_share']:.1%}), and {cut['pruning_tokens']} read by pruning (its "
            f"scorer, re-read prefixes) | {cut['mean_selected_score']} | "
            f"{cut['prompt_strict']} | {row['n']} | {cut['seconds']} |",
            f"| {row['n']} | adaptive | {adapt['same_pick']:.1%} | {adapt['generator_tokens']} "
            f"with prompts ({adapt['token_share']:.1%}) | {adapt['mean_selected_score']} "
            f"(gap {adapt['relative_gap']:.2%}) | {adapt['prompt_strict']} "
            f"{adapt['prompt_strict_interval']} | {adapt['mean_n']} | {adapt['seconds']} |",
        ]
    lines += ["", "Targets (issue 20):", ""]
    for row in facts["results"]:
        cut, adapt, full = row["pruned"], row["adaptive"], row["full"]
        low, high = full["prompt_strict_interval"]
        within = low <= adapt["prompt_strict"] <= high
        adaptive_met = adapt["relative_gap"] <= 0.01 and within and adapt["token_share"] <= 0.6
        lines += [
            f"- N = {row['n']}, pruned: survivors whose text is the full run's candidate's: "
            f"{cut['survivors_as_full']}; same pick {cut['same_pick']:.1%} (>= 90%) at "
            f"{cut['token_share']:.1%} of the decoded tokens (<= 50%): "
            f"{met(cut['same_pick'] >= 0.9 and cut['token_share'] <= 0.5)}.",
            f"- N = {row['n']}, adaptive: mean selected score within {adapt['relative_gap']:.2%} "
            f"(<= 1%), IFEval strict {adapt['prompt_strict']} (full's interval [{low}, {high}]) "
            f"at {adapt['token_share']:.1%} of the generator tokens (<= 60%): "
            f"{met(adaptive_met)}.",
        ]
    lines += [
        "",
        "Every setting on these test prompts, simulated from the largest full run as "
        "`benchmarks/efficient_dev.py` does on dev (for reading the trade-off; the settings "
        "above were chosen on dev):",
    ]
    for key, rows in facts["every_setting"].items():
        if key.startswith("pruning"):
            cheap = sorted(
                (r for r in rows if r["token_share"] <= 0.5), key=lambda r: -r["same_pick"]
            )[:4]
            shown = [f"{r['prune_at']} keep {r['keep']}: {r['same_pick']:.1%} at "
                     f"{r['token_share']:.1%}" for r in cheap]  # fmt: skip
            lines.append(f"- {key}, best same pick within 50% of the tokens: {'; '.join(shown)}")
        else:
            shown = [f"{r['settle']}: gap {r['relative_gap']:.2%} at {r['token_share']:.1%}"
                     for r in rows if r["rule"] == "gain"]  # fmt: skip
            lines.append(f"- {key}, settle: {'; '.join(shown)}")
    lines += ["", *(f"Note: {note}" for note in facts["notes"])] if facts["notes"] else []
    lines += [
        "",
        "Curves: `efficient_curve.png` and `efficient_curve.json` (`bon curve --x tokens` of "
        "every run's scored file, IFEval prompt-level strict; the pruned and adaptive runs are "
        "one point each, at all they spent).",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
