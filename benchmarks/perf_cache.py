"""Rescoring fully cached candidates: the whole `bon score` process, no model loaded.

Builds synthetic records (`--n` candidates each), fills a score cache with the keys a real
scorer's configuration gives them (`CachedScorer.keys`, so the keys are the ones `bon score`
looks up), then times `python -m bon score` on them in a subprocess, best of `--repeats`.
A run that computed any score (so loaded a model) is an error, not a number.

    python benchmarks/perf_cache.py --sizes 10240,100000 --scorers flip-likelihood,flip-tokens

Writes benchmarks/results/perf_cache.md (command, machine, versions, numbers).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from revisions import checkout, load_average, machine, revision, run_bon, versions  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

import bon  # noqa: E402

_VOCABULARY = (
    "the model writes a short answer about rivers mountains cities history science music art "
    "food travel code python data tables lists steps reasons examples colours numbers people"
)
WORDS = _VOCABULARY.split()
PACKAGES = ("orjson", "click", "tqdm")


def make_records(count: int, n: int, seed: int = 0) -> list[dict]:
    """`count` records of `n` distinct candidates of 40-80 words each."""
    rng = random.Random(seed)
    out = []
    for r in range(count):
        prompt = f"Question {r}: " + " ".join(rng.choices(WORDS, k=20))
        texts = [
            f"Answer {r}.{i}: " + " ".join(rng.choices(WORDS, k=rng.randint(40, 80)))
            for i in range(n)
        ]
        out.append({"id": f"r{r}", "prompt": prompt, "responses": texts})
    return out


def fill_cache(records: list[dict], scorer_name: str, cache_path: Path) -> int:
    """Store a score for every candidate under `scorer_name`'s real configuration."""
    from bon import records as rec
    from bon.cache import CachedScorer, ScoreCache
    from bon.scorers import Query, Scored, ScoreOptions, scorers

    options = ScoreOptions(scorers=(scorer_name,), cache_path=str(cache_path))

    def no_engine():
        raise RuntimeError("filling the cache must not load a model")

    cache = ScoreCache(cache_path)
    cached = CachedScorer(scorers.get(scorer_name)(options, no_engine), cache)
    queries = [Query(rec.conversation(r), [c["text"] for c in rec.candidates(r)]) for r in records]
    stored = 0
    for start in range(0, len(queries), 1000):
        chunk = queries[start : start + 1000]
        items = {
            key: Scored(-1.0 - (j % 7) / 10, {"tokens": 12, "logprob_sum": -12.5})
            for row in cached.keys(chunk)
            for j, key in enumerate(row)
        }
        cache.put_many(items)
        stored += len(items)
    cache.close()
    return stored


def time_score(
    input: Path, output: Path, scorer: str, cache_path: Path, candidates: int, code: Path = ROOT
) -> tuple[float, float, str]:
    """Wall and CPU seconds of one `python -m bon score` run (the output removed first)."""
    output.unlink(missing_ok=True)
    arguments = [
        "score", str(input), "-o", str(output), "--scorer", scorer, "--cache-path", str(cache_path),
    ]  # fmt: skip
    stderr, usage, seconds = run_bon(arguments, code)
    match = re.search(r"(\d+) scores from the cache, (\d+) computed", stderr)
    if not match or int(match.group(2)) != 0 or int(match.group(1)) != candidates:
        raise SystemExit(f"not every score came from the cache:\n{stderr[-2000:]}")
    return seconds, usage.ru_utime + usage.ru_stime, " ".join(["-m", "bon", *arguments])


def breakdown(input: Path, scorer_name: str, cache_path: Path, budget: int) -> dict[str, float]:
    """CPU seconds of the parts of a cached rescoring, each measured alone in this process."""
    from bon import records as rec
    from bon.cache import CachedScorer, ScoreCache
    from bon.codec import dumps, loads
    from bon.scorers import Query, ScoreOptions, scorers

    clock = time.process_time
    out: dict[str, float] = {}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import bon.entrypoints.cli"], check=True, cwd=ROOT)
    out["start python and import bon.entrypoints.cli (wall)"] = time.perf_counter() - start
    start = clock()
    with open(input, encoding="utf-8") as handle:
        records = [loads(line) for line in handle]
    out["parse the input once (bon reads it twice)"] = clock() - start
    queries = [Query(rec.conversation(r), [c["text"] for c in rec.candidates(r)]) for r in records]
    options = ScoreOptions(scorers=(scorer_name,), cache_path=str(cache_path))
    cache = ScoreCache(cache_path)
    cached = CachedScorer(scorers.get(scorer_name)(options, lambda: None), cache)
    start = clock()
    keys = cached.keys(queries)
    out["cache keys"] = clock() - start
    flat = [k for row in keys for k in row]
    start = clock()
    for at in range(0, len(flat), budget):
        cache.get_many(flat[at : at + budget])
    out[f"cache lookups, {budget} keys per query"] = clock() - start
    cache.close()
    start = clock()
    for r in records:
        dumps(r)
    out["encode the records once (output)"] = clock() - start
    return {k: round(v, 3) for k, v in out.items()}


def pipeline_budget() -> int:
    """Candidates per score-stage batch at the default batch size."""
    from bon.scorers import ScoreOptions
    from bon.stages import SCORE_POOL

    return SCORE_POOL * ScoreOptions().batch_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10240,100000", help="candidates per run")
    parser.add_argument("--n", type=int, default=8, help="candidates per record")
    parser.add_argument("--scorers", default="flip-likelihood,flip-tokens")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/perf_cache.md"))
    parser.add_argument("--note", default="", help="a line added under the table")
    parser.add_argument("--before", help="also time this git revision's bon (same cache keys)")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        codes = [("after", ROOT)]
        if args.before:
            codes.insert(0, ("before", checkout(args.before, Path(tmp) / "before")))
        for size in [int(s) for s in args.sizes.split(",")]:
            records = make_records(size // args.n, args.n)
            candidates = len(records) * args.n
            input = Path(tmp) / f"cands-{size}.jsonl"
            input.write_text("".join(json.dumps(r) + "\n" for r in records))
            for scorer in args.scorers.split(","):
                cache_path = Path(tmp) / f"cache-{size}-{scorer}.sqlite"
                fill_cache(records, scorer, cache_path)
                for label, code in codes:
                    runs, cpu = [], []
                    for _ in range(args.repeats):
                        seconds, cpu_s, command = time_score(
                            input, Path(tmp) / "out.jsonl", scorer, cache_path, candidates, code
                        )
                        runs.append(seconds)
                        cpu.append(cpu_s)
                    row = {
                        "code": label,
                        "candidates": candidates,
                        "records": len(records),
                        "scorer": scorer,
                        "best_s": round(min(runs), 3),
                        "runs_s": [round(s, 3) for s in runs],
                        "best_cpu_s": round(min(cpu), 3),
                        "candidates_per_s": round(candidates / min(runs)),
                    }
                    print(json.dumps(row), flush=True)
                    rows.append(row)
        parts = breakdown(input, args.scorers.split(",")[0], cache_path, pipeline_budget())
        print(json.dumps(parts), flush=True)
    write_results(Path(args.out), rows, args, command, parts, candidates)


def write_results(
    path: Path,
    rows: list[dict],
    args: argparse.Namespace,
    command: str,
    parts: dict[str, float],
    candidates: int,
) -> None:
    lines = [
        "# Rescoring fully cached candidates (issue 11, item 6)",
        "",
        "Written by `benchmarks/perf_cache.py`; every score comes from the cache (checked from "
        "the run's log), so no model loads. Wall time of the whole `bon score` process, best "
        f"of {args.repeats}, and its CPU time (less sensitive to other jobs on the machine); "
        f"{args.n} candidates per record of 40-80 words.",
        "",
        f"- Benchmark: `python benchmarks/perf_cache.py --sizes {args.sizes} --n {args.n} "
        f"--scorers {args.scorers} --repeats {args.repeats}"
        f"{' --before ' + args.before if args.before else ''}`; 'before' is that revision's "
        f"`bon/` (`git archive`), 'after' the working tree at {revision()}",
        f"- Each run: `python {re.sub(r'/tmp/[^ ]*/', 'TMP/', command)}`",
        f"- Machine: {machine()}; load average at the end {load_average()}",
        f"- Versions: {versions(PACKAGES)}, bon {bon.__version__}, sqlite {sqlite3.sqlite_version}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| code | candidates | records | scorer | best wall s | all runs wall s | best CPU s "
        "(user+sys) | candidates/s (wall) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        runs = ", ".join(f"{s:.2f}" for s in r["runs_s"])
        lines.append(
            f"| {r['code']} | {r['candidates']:,} | {r['records']:,} | {r['scorer']} | "
            f"{r['best_s']:.2f} | {runs} | {r['best_cpu_s']:.2f} | {r['candidates_per_s']:,} |"
        )
    lines += [
        "",
        f"Where the time goes ({candidates:,} candidates, {args.scorers.split(',')[0]}; CPU "
        "seconds of each part alone, in the benchmark's process, with bon's own JSON functions; "
        f"the lookups in batches of {pipeline_budget()} candidates, as the pipeline hands them "
        "at the default batch size):",
        "",
        "| part | s |",
        "|---|---|",
        *[f"| {name} | {seconds:.2f} |" for name, seconds in parts.items()],
    ]
    if args.note:
        lines += ["", args.note]
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
