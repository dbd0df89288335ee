"""Peak memory (RSS) of teacher-forced scoring, before and after a change, in one run.

Each measurement is a fresh `python -m bon score --no-cache` process whose peak RSS comes from
the kernel (`os.wait4`); the "before" code is `git archive REV bon` unpacked in a temporary
folder, so both run on the same machine, input and model, one after the other:

    python benchmarks/perf_memory.py --before 4b51034 --input data/pref/ifeval_pref.dev.jsonl

For each code it measures one record (the model loaded plus one small batch) and the first
`--candidates` candidates of the input at the default batch size. Writes
benchmarks/results/perf_memory.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from revisions import checkout, load_average, machine, revision, run_bon, versions  # noqa: E402  (benchmarks/ is on sys.path when run as a script)

from tests.tiny_llama import build_tiny_llama  # noqa: E402


def subset(input: Path, candidates: int, out: Path) -> tuple[int, int]:
    """The first records of `input` holding at least `candidates` candidates."""
    rows, total = [], 0
    with open(input, encoding="utf-8") as handle:
        for line in handle:
            if total >= candidates:
                break
            record = json.loads(line)
            rows.append(line if line.endswith("\n") else line + "\n")
            total += len(record.get("candidates") or record.get("responses") or [])
    out.write_text("".join(rows))
    return len(rows), total


def tiny_model(folder: Path) -> str:
    """A random 2-layer Llama (hidden 64) with the SmolLM2 tokenizer: the forward pass costs
    little, the vocabulary-wide logits (49,152 wide) as much as the real model's."""
    from bon.models import resolve_model

    return build_tiny_llama(folder, resolve_model("smollm2-135m"), max_positions=8192)


def peak_rss(code: Path, input: Path, args: argparse.Namespace) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of one `bon score` process running `code`'s bon."""
    out = input.with_suffix(".scored.jsonl")
    out.unlink(missing_ok=True)
    arguments = [
        "score", str(input), "-o", str(out), "--no-cache",
        "--scorer", args.scorer, "--model", args.model, "--batch-size", str(args.batch_size),
    ]  # fmt: skip
    _, usage, seconds = run_bon(arguments, code)
    return usage.ru_maxrss / 1024, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", required=True, help="git revision of the code before")
    parser.add_argument("--input", default="data/pref/ifeval_pref.dev.jsonl")
    parser.add_argument("--candidates", type=int, default=48)
    parser.add_argument("--scorer", default="flip-likelihood")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument(
        "--tiny", action="store_true", help="a random tiny Llama instead of --model"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", default=None, help="default: results/perf_memory[_tiny].md")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        small = tmp / "one.jsonl"
        subset(ROOT / args.input, 1, small)
        records, candidates = subset(ROOT / args.input, args.candidates, tmp / "many.jsonl")
        before = checkout(args.before, tmp / "before")
        if args.tiny:
            args.model = tiny_model(tmp / "tiny")
        for label, code in (("before", before), ("after", ROOT)):
            for name, path in (("one record", small), (f"{candidates} candidates", None)):
                mib, seconds = peak_rss(code, path or tmp / "many.jsonl", args)
                row = {"code": label, "input": name, "peak_rss_mib": round(mib), "s": seconds}
                print(json.dumps(row), flush=True)
                rows.append(row)
    name = "perf_memory_tiny.md" if args.tiny else "perf_memory.md"
    write_results(
        Path(args.out or ROOT / "benchmarks/results" / name), rows, args, records, candidates
    )


def write_results(
    path: Path, rows: list[dict], args: argparse.Namespace, records: int, candidates: int
) -> None:
    model = "a random tiny Llama (2 layers, hidden 64, SmolLM2's vocabulary)"
    model = model if args.tiny else f"`{args.model}`"
    lines = [
        f"# Peak memory of `{args.scorer}` (issue 11, item 5)",
        "",
        "Written by `benchmarks/perf_memory.py`: peak RSS (kernel `ru_maxrss`) of a whole "
        f"`bon score --no-cache --scorer {args.scorer} --batch-size {args.batch_size}` process "
        f"on {model}, before ({args.before}) and after (the working tree at {revision()}), "
        f"one after the other. Input: the first {records} records ({candidates} candidates) "
        f"of `{args.input}`; 'one record' is its first record alone.",
        "",
        f"- Command: `python benchmarks/perf_memory.py --before {args.before} --input "
        f"{args.input} --candidates {args.candidates} --scorer {args.scorer} "
        f"{'--tiny' if args.tiny else '--model ' + args.model} --batch-size {args.batch_size}`",
        f"- Machine: {machine()}; load average at the end {load_average()}",
        f"- Versions: {versions(('torch', 'transformers'))}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| code | input | peak RSS MiB | wall s |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['code']} | {r['input']} | {r['peak_rss_mib']:,} | {r['s']:.0f} |")
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
