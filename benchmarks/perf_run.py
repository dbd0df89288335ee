"""`bon run` against its engines: wall-time overhead (item 4) and peak RSS as prompts grow (5b).

Time (default): `bon.run` in this process on the prompts, no score cache; the engine methods
(model load, `generate`, `continuation_logprobs`, `close`) and the embedder (load, `encode`) are
wrapped with `perf_counter` timers from this script. Overhead is the run's wall time minus the
time spent inside them: bon's own I/O, validation, parsing, similarity and records. torch,
transformers and bon are imported before the clock starts. With `--profile` (or when the
overhead is over 5%) a second, cProfiled run lists the functions outside the engines by
cumulative time.

    python benchmarks/perf_run.py --n 4 --max-new-tokens 32

Memory (`--memory`): fresh `python -m bon run --no-cache` processes on K and 10K prompts
(the prompt file repeated with distinct ids), peak RSS from the kernel (`os.wait4`), on a tiny
random Llama (`--tiny`, cheap) or `--model`:

    python benchmarks/perf_run.py --memory --tiny --k 8
    python benchmarks/perf_run.py --memory --k 4

With `--before REV` the memory runs are made twice in one run, first on the `bon/` of git
revision REV (unpacked in a temporary folder), then on the working tree.

Writes benchmarks/results/perf_run.md (time) or perf_run_memory[_tiny].md (memory).
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import io
import json
import os
import pstats
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from perf_memory import tiny_model  # noqa: E402
from revisions import (  # noqa: E402  (benchmarks/ is on sys.path as a script)
    checkout,
    command_line,
    load_average,
    machine,
    revision,
    run_bon,
    versions,
)

TARGET_OVERHEAD = 0.05
TARGET_RSS_GROWTH = 0.10


class EngineClock:
    """Seconds spent inside wrapped callables, per label; nested calls count once."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._depth = 0

    def wrap(self, owner: object, name: str, label: str) -> None:
        """Replace `owner.name` with a timed version of itself."""
        inner = getattr(owner, name)

        @functools.wraps(inner)
        def timed(*args, **kwargs):
            if self._depth:
                return inner(*args, **kwargs)
            self._depth += 1
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - start
                self.calls[label] += 1
                self._depth -= 1

        setattr(owner, name, timed)

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def instrument() -> EngineClock:
    """Time every engine class's model methods and the embedder."""
    import bon.similarity
    from bon.engines import engines

    clock = EngineClock()
    for name in engines.names():
        cls = engines.get(name)
        clock.wrap(cls, "__init__", "load")
        for method in ("generate", "continuation_logprobs", "close"):
            clock.wrap(cls, method, method)
    clock.wrap(bon.similarity, "load_embedder", "embedder load")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return clock
    clock.wrap(SentenceTransformer, "encode", "embedder encode")
    return clock


def prompt_file(source: Path, limit: int | None, copies: int, out: Path) -> int:
    """`source`'s first `limit` prompts, repeated `copies` times with distinct ids."""
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    rows = rows[:limit] if limit else rows
    with open(out, "w", encoding="utf-8") as handle:
        for copy in range(copies):
            for row in rows:
                handle.write(json.dumps({**row, "id": f"{row['id']}-{copy}"}) + "\n")
    return len(rows) * copies


def run_options(args: argparse.Namespace, model: str) -> dict:
    return {
        "model": model,
        "reranker_model": model,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "reranker_max_new_tokens": args.max_new_tokens,
        "no_cache": True,
        "quiet": True,
    }


def time_run(args: argparse.Namespace, prompts: Path, out: Path) -> dict:
    """One in-process `bon.run` with the engines' time taken apart."""
    import torch  # noqa: F401  (imported before the clock: not bon's overhead)
    import transformers  # noqa: F401

    import bon

    clock = instrument()
    start = time.perf_counter()
    bon.run(prompts, out, **run_options(args, args.model))
    wall = time.perf_counter() - start
    return {
        "wall": wall,
        "engine": clock.total,
        "split": dict(clock.seconds),
        "calls": dict(clock.calls),
    }


def profile_run(args: argparse.Namespace, prompts: Path, out: Path, top: int = 20) -> str:
    """The top functions outside the engines by cumulative time, from a cProfiled run."""
    import bon

    profiler = cProfile.Profile()
    profiler.enable()
    bon.run(prompts, out, **run_options(args, args.model))
    profiler.disable()
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream)
    engines = str(ROOT / "bon" / "engines")
    keep = {
        key: value
        for key, value in stats.stats.items()
        if key[0].startswith(str(ROOT / "bon")) and not key[0].startswith(engines)
    }
    stats.stats = keep
    stats.sort_stats("cumulative").print_stats(top)
    text = stream.getvalue()
    return text[text.find("ncalls") :].replace(str(ROOT) + "/", "")


def peak_rss(
    prompts: Path, out: Path, args: argparse.Namespace, model: str, code: Path = ROOT
) -> tuple[float, float]:
    """(peak RSS MiB, wall s) of one fresh `python -m bon run` process running `code`'s bon."""
    arguments = [
        "run", str(prompts), "-o", str(out), "--no-cache", "-q",
        "--model", model, "--reranker-model", model, "-n", str(args.n),
        "--max-new-tokens", str(args.max_new_tokens),
        "--reranker-max-new-tokens", str(args.max_new_tokens),
    ]  # fmt: skip
    _, usage, seconds = run_bon(arguments, code)
    return usage.ru_maxrss / 1024, seconds


def memory(args: argparse.Namespace, tmp: Path) -> list[dict]:
    """One row per code (before, when `--before` is given, then after) and prompt count."""
    model = tiny_model(tmp / "tiny") if args.tiny else args.model
    codes = [("after", ROOT)]
    if args.before:
        codes.insert(0, (f"before ({args.before})", checkout(args.before, tmp / "before")))
    rows = []
    for label, code in codes:
        for scale in (1, 10):
            prompts = tmp / f"prompts-{scale}.jsonl"
            count = prompt_file(ROOT / args.prompts, args.k, scale, prompts)
            if count != args.k * scale:
                raise SystemExit(f"--k {args.k} is more than the {args.prompts} holds")
            mib, seconds = peak_rss(prompts, tmp / f"run-{label}-{scale}", args, model, code)
            rows.append({"code": label, "prompts": count, "peak_rss_mib": mib, "s": seconds})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def header(args: argparse.Namespace, title: str) -> list[str]:
    return [
        f"# {title}",
        "",
        f"- Command: `{command_line()}` (code: the working tree at {revision()})",
        f"- Machine: {machine()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}; load average at the "
        f"end {load_average()}",
        f"- Versions: {versions(('torch', 'transformers'))}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
    ]


def write_time(path: Path, args: argparse.Namespace, prompts: int, r: dict, profile: str) -> None:
    overhead = r["wall"] - r["engine"]
    share = overhead / r["engine"]
    lines = header(args, "`bon run` wall time against its engines' own time (issue 11, item 4)")
    lines += [
        f"Written by `benchmarks/perf_run.py`: `bon.run` in one process on {prompts} prompts of "
        f"`{args.prompts}`, `{args.model}` (hf engine) for generation and for the default "
        f"scorer, n={args.n}, max_new_tokens {args.max_new_tokens}, no score cache. Engine "
        "time: wall time inside the engines' model load, `generate`, `continuation_logprobs` "
        "and `close`, and the embedder's load and `encode`, timed by wrappers from the "
        "script; overhead = wall - engine time. Target: overhead <= 5% of engine time.",
        "",
        "| part | calls | s |",
        "|---|---|---|",
    ]
    for label, seconds in sorted(r["split"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| engine: {label} | {r['calls'][label]} | {seconds:.2f} |")
    lines += [
        f"| engine total | | {r['engine']:.2f} |",
        f"| `bon run` wall | | {r['wall']:.2f} |",
        f"| overhead (wall - engine) | | {overhead:.2f} |",
        "",
        f"Overhead: **{100 * share:.1f}%** of engine time "
        f"({'met' if share <= TARGET_OVERHEAD else 'not met'}: target <= 5%).",
    ]
    if profile:
        lines += [
            "",
            "Profile of a second run (cProfile; functions in `bon/` outside `bon/engines/`, by "
            "cumulative time; profiling slows Python code, so the seconds are inflated):",
            "",
            "```",
            profile.rstrip(),
            "```",
        ]
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def write_memory(path: Path, args: argparse.Namespace, rows: list[dict]) -> None:
    model = "a random tiny Llama (2 layers, hidden 64, SmolLM2's vocabulary)"
    model = model if args.tiny else f"`{args.model}`"
    after = [r for r in rows if r["code"] == "after"]
    growth = after[1]["peak_rss_mib"] / after[0]["peak_rss_mib"] - 1
    lines = header(args, "Peak RSS of `bon run` as prompts grow 10x (issue 11, item 5)")
    lines += [
        "Written by `benchmarks/perf_run.py --memory`: peak RSS (kernel `ru_maxrss`) of fresh "
        f"`python -m bon run --no-cache` processes on {model} (generator and reranker), "
        f"n={args.n}, max_new_tokens {args.max_new_tokens}, default scorer; prompts: the first "
        f"{args.k} of `{args.prompts}`, and the same repeated 10 times with distinct ids. "
        "Code: the working tree (after) and, with `--before`, the `bon/` of that revision, "
        "one after the other in this run.",
        "",
        "| code | prompts | peak RSS MiB | wall s |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['code']} | {r['prompts']} | {r['peak_rss_mib']:,.0f} | {r['s']:.0f} |")
    lines += [
        "",
        f"Growth of the working tree at 10x the prompts: **{100 * growth:+.1f}%** "
        f"({'met' if growth <= TARGET_RSS_GROWTH else 'not met'}: target within 10%).",
    ]
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--prompts", default="data/sample_prompts.jsonl")
    parser.add_argument("--limit", type=int, default=None, help="first prompts only (time mode)")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--profile", action="store_true", help="always add a cProfiled run")
    parser.add_argument("--memory", action="store_true", help="peak RSS at K and 10K prompts")
    parser.add_argument("--k", type=int, default=8, help="prompts in the smaller memory run")
    parser.add_argument("--tiny", action="store_true", help="memory runs on a tiny random Llama")
    parser.add_argument("--before", default=None, help="memory runs on this git revision too")
    parser.add_argument("--out", default=None, help="default: results/perf_run[_memory[_tiny]].md")
    args = parser.parse_args()
    results = ROOT / "benchmarks" / "results"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.memory:
            name = "perf_run_memory_tiny.md" if args.tiny else "perf_run_memory.md"
            write_memory(Path(args.out or results / name), args, memory(args, tmp))
            return
        prompts = tmp / "prompts.jsonl"
        count = prompt_file(ROOT / args.prompts, args.limit, 1, prompts)
        r = time_run(args, prompts, tmp / "run")
        print(json.dumps(r), flush=True)
        over = (r["wall"] - r["engine"]) / r["engine"] > TARGET_OVERHEAD
        profile = profile_run(args, prompts, tmp / "profiled") if args.profile or over else ""
        write_time(Path(args.out or results / "perf_run.md"), args, count, r, profile)


if __name__ == "__main__":
    main()
