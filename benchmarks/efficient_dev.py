"""Choose the pruning schedule and the adaptive `settle` on dev prompts, by simulation.

One full best-of-N run (`--n` candidates per prompt, hf engine, seeded sampling, float32, so a
record's first k candidates are those of a run with N = k and a survivor of pruning is the
full run's candidate token for token) on `--dev` IFEval prompts that `benchmarks/efficient.py`
does not report on. From it, without sampling again:

- **pruning**: each candidate's text cut to T tokens (the generator's tokenizer) is scored by
  the prune scorer; a schedule (checkpoints, keep) keeps the best ceil(keep x standing) at each
  checkpoint, as `bon.prune` does. Reported per schedule and N: the share of prompts whose full
  pick survives (then a scorer that scores each candidate alone picks it again) and the
  generator tokens decoded, as a share of the full run's.
- **adaptive**: waves of 2, 4, 8, ... candidates (the record's first k), stopped by
  `bon.adaptive`'s expected-gain rule ("gain") at each `settle`, and by the best-over-second
  margin it replaced ("margin": stop once the margin exceeds `settle` standard deviations);
  reported: the mean selected score against full best-of-N's, the share of the same pick, the
  mean N used and the generator tokens (each wave reads the prompt again) as a share of the
  full run's. Exact for a scorer that scores each candidate alone (relevance); flip-tokens
  mixes each score with the record's other candidates, so its rows use the full run's scores
  and only approximate an adaptive run.

`benchmarks/efficient.py` runs the settings chosen here on test prompts. Writes
benchmarks/results/efficient_dev.md and .json.

    python benchmarks/efficient_dev.py --dev 24 --n 16 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from revisions import provenance  # noqa: E402

CHECKPOINTS = (16, 32, 48, 64)
KEEPS = (0.125, 0.25, 0.375, 0.5)
SETTLES = {"margin": (1.0, 1.5, 2.0, 2.5, 3.0), "gain": (0.02, 0.05, 0.1, 0.2, 0.3, 0.5)}
DEV_SEED = 1
"""IFEval prompts for dev are drawn with this seed; `benchmarks/efficient.py` leaves them out."""


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dev", type=int, default=24, help="dev prompts (default 24)")
    parser.add_argument("--n", type=int, default=16, help="candidates per prompt (default 16)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument(
        "--scorer", action="append", help="scorers (default relevance, flip-tokens)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/efficient_dev"))
    parser.add_argument(
        "--records", help="keep the full run's records in this JSONL file and reuse them"
    )
    return parser.parse_args()


def dev_prompts(count: int) -> list[dict]:
    """The dev prompts: `count` IFEval prompts drawn with DEV_SEED."""
    from bon.evals.ifeval import load_prompts

    return load_prompts(count, seed=DEV_SEED)


def main() -> None:
    args = parse()
    names = tuple(args.scorer or ("relevance", "flip-tokens"))
    kept = Path(args.records) if args.records else None
    if kept and kept.exists():
        stored = [json.loads(line) for line in kept.read_text().splitlines()]
        seconds, records = stored[0]["seconds"], stored[1:]
    else:
        seconds, records = full_run(args, names)
        if kept:
            rows = [{"seconds": seconds}, *records]
            kept.write_text("".join(json.dumps(r) + "\n" for r in rows))
    partial_path = kept.with_suffix(".partial.json") if kept else None
    if partial_path and partial_path.exists():
        partial = {
            name: {int(t): rows for t, rows in by_t.items()}
            for name, by_t in json.loads(partial_path.read_text()).items()
        }
    else:
        partial = partial_scores(records, names, args)
        if partial_path:
            partial_path.write_text(json.dumps(partial))
    facts = {
        **provenance(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)} | {"scorers": names},
        "full_run_seconds": seconds,
        "pruning": {},
        "adaptive": {},
    }
    for name in names:
        for n in sorted({args.n // 2, args.n}):
            facts["pruning"][f"{name}@{n}"] = prune_rows(records, partial[name], name, n)
            facts["adaptive"][f"{name}@{n}"] = adaptive_rows(records, name, n)
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(facts, indent=2) + "\n")
    out.with_suffix(".md").write_text(report(facts))
    print(report(facts))


def full_run(args: argparse.Namespace, names: tuple[str, ...]) -> tuple[float, list[dict]]:
    """The full best-of-N run on the dev prompts, and its wall seconds."""
    import bon

    started = time.perf_counter()
    records = bon.run_records(
        dev_prompts(args.dev),
        model=args.model,
        reranker_model=args.model,
        dtype="float32",
        n=args.n,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        scorers=names,
        keep_all=True,
        no_cache=True,
    )
    return round(time.perf_counter() - started, 1), records


def partial_scores(records: list[dict], names: tuple[str, ...], args) -> dict:
    """{scorer: {T: [[score per candidate] per record]}} of the candidates cut to T tokens."""
    from transformers import AutoTokenizer

    import bon
    from bon.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(args.model))
    ids = [
        [tokenizer.encode(c["text"], add_special_tokens=False) for c in r["candidates"]]
        for r in records
    ]
    out: dict = {name: {} for name in names}
    for t in CHECKPOINTS:
        cut = [
            {
                "id": r["id"],
                "prompt": r["prompt"],
                "candidates": [{"text": tokenizer.decode(one[:t])} for one in rows],
            }
            for r, rows in zip(records, ids, strict=True)
        ]
        scored = bon.score_records(
            cut, model=args.model, dtype="float32", scorers=names, no_cache=True
        )
        for name in names:
            out[name][t] = [[c["scores"][name] for c in r["candidates"]] for r in scored]
    return out


def lengths(record: dict, n: int) -> list[int]:
    return [int(c["cost"]["completion_tokens"]) for c in record["candidates"][:n]]


def best(scores: list[float], sign: float) -> int:
    return max(range(len(scores)), key=lambda i: (sign * scores[i], -i))


def prune_rows(records: list[dict], partial: dict, name: str, n: int) -> list[dict]:
    """Every schedule's surviving full picks and token share at N = n."""
    from bon.prune import kept_count
    from bon.scorers import higher_is_better

    sign = 1.0 if higher_is_better(name) else -1.0
    schedules = [(t,) for t in CHECKPOINTS] + list(itertools.combinations(CHECKPOINTS, 2))
    rows = []
    for schedule, keep in itertools.product(schedules, KEEPS):
        survived = spent = whole = 0
        for i, record in enumerate(records):
            full = [c["scores"][name] for c in record["candidates"][:n]]
            pick = best(full, sign)
            standing = list(range(n))
            reach = dict.fromkeys(standing, 0)
            for t in schedule:
                for j in standing:
                    reach[j] = t
                scores = partial[t][i]
                live = [j for j in standing if lengths(record, n)[j] > t]
                done = [j for j in standing if j not in live]
                order = sorted(live, key=lambda j: (-sign * scores[j], j))
                standing = done + order[: kept_count(len(live), keep)] if live else done
            for j in standing:
                reach[j] = 10**9
            sizes = lengths(record, n)
            spent += sum(min(sizes[j], reach[j]) for j in range(n))
            whole += sum(sizes)
            survived += pick in standing
        rows.append(
            {
                "prune_at": ",".join(map(str, schedule)),
                "keep": keep,
                "same_pick": round(survived / len(records), 4),
                "token_share": round(spent / whole, 4),
            }
        )
    return rows


def adaptive_rows(records: list[dict], name: str, n: int) -> list[dict]:
    """Every settle's mean selected score, same pick and token share at N = n."""
    from bon.adaptive import expected_gain, wave_ends
    from bon.scorers import higher_is_better

    sign = 1.0 if higher_is_better(name) else -1.0
    rows = []
    full_mean = sum(
        sign * max(sign * c["scores"][name] for c in r["candidates"][:n]) for r in records
    ) / len(records)
    for rule, settle in ((r, v) for r, values in SETTLES.items() for v in values):
        picked = same = used = spent = whole = 0.0
        for record in records:
            scores = [c["scores"][name] for c in record["candidates"][:n]]
            sizes = lengths(record, n)
            prompt = int(record["cost"]["generate"]["prompt_tokens"])
            k, reads = n, 0
            for size in wave_ends(n):
                reads += 1
                if size == n:
                    k = size
                    break
                if rule == "margin":
                    seen = margin(scores[:size], sign > 0)
                    stop = seen is not None and seen > settle
                else:
                    seen = expected_gain(scores[:size], n - size, sign > 0)
                    stop = seen is not None and seen < settle
                if stop:
                    k = size
                    break
            choice = best(scores[:k], sign)
            picked += scores[choice]
            same += choice == best(scores, sign)
            used += k
            spent += reads * prompt + sum(sizes[:k])
            whole += prompt + sum(sizes)
        mean = picked / len(records)
        rows.append(
            {
                "rule": rule,
                "settle": settle,
                "mean_score": round(mean, 5),
                "full_mean_score": round(full_mean, 5),
                "relative_gap": round(abs(full_mean - mean) / abs(full_mean), 5),
                "same_pick": round(same / len(records), 4),
                "mean_n": round(used / len(records), 3),
                "token_share": round(spent / whole, 4),
            }
        )
    return rows


def margin(values: list[float], higher: bool) -> float | None:
    """The rule `bon.adaptive` had before the expected gain: the best value's margin over the
    second, in sample standard deviations of `values`; None without spread."""
    ranked = sorted((v if higher else -v for v in values), reverse=True)
    mean = sum(ranked) / len(ranked)
    spread = math.sqrt(sum((v - mean) ** 2 for v in ranked) / (len(ranked) - 1))
    return (ranked[0] - ranked[1]) / spread if spread else None


def report(facts: dict) -> str:
    s = facts["settings"]
    lines = [
        "# Pruning schedules and adaptive settle on dev prompts (simulated from one full run)",
        "",
        f"`{facts['command']}`",
        "",
        f"{s['dev']} IFEval dev prompts (drawn with seed {DEV_SEED}), N = {s['n']}, "
        f"{s['max_new_tokens']} new tokens at most, model {s['model']} (float32), seed "
        f"{s['seed']}; full run {facts['full_run_seconds']} s. Revision {facts['revision']}; "
        f"{facts['machine']}; load {facts['load']}; {facts['versions']}.",
        "",
        "Same pick: the full run's pick survives every checkpoint (a candidate that ended "
        "before a checkpoint is kept, as `bon.prune` does). Token share: generator tokens "
        "decoded, as a share of the full run's (adaptive: prompt tokens included, once per "
        "wave). Adaptive rules: `gain`, bon's (stop once the expected gain of the samples to "
        "come is below settle standard deviations); `margin`, the one it replaced (stop once "
        "the best is settle standard deviations above the second). The adaptive rows are "
        "exact for relevance, which scores each candidate alone; flip-tokens mixes each score "
        "with the record's other candidates, so its rows reuse the full run's scores and only "
        "approximate an adaptive run.",
    ]
    for key, rows in facts["pruning"].items():
        good = sorted((r for r in rows if r["same_pick"] >= 0.9), key=lambda r: r["token_share"])
        cheap = sorted((r for r in rows if r["token_share"] <= 0.5), key=lambda r: -r["same_pick"])
        for title, shown in (
            ("same pick >= 0.9, cheapest first", good[:8]),
            ("<= 0.5 of the tokens, best same pick first", cheap[:8]),
        ):
            lines += ["", f"## Pruning, {key}: {title}", ""]
            lines += ["| prune_at | keep | same pick | token share |", "|---|---|---|---|"]
            lines += [
                f"| {r['prune_at']} | {r['keep']} | {r['same_pick']} | {r['token_share']} |"
                for r in shown
            ]
    for key, rows in facts["adaptive"].items():
        lines += ["", f"## Adaptive, {key}", ""]
        lines += [
            "| rule | settle | mean score | full | gap | same pick | mean N | token share |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['rule']} | {r['settle']} | {r['mean_score']} | {r['full_mean_score']} | "
                f"{r['relative_gap']:.2%} | {r['same_pick']} | {r['mean_n']} | "
                f"{r['token_share']} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
