"""`--dtype` and torch threads on the CPU: what `auto` picks against bf16 and float32, on an idle
machine and on one whose other core is busy (issue 22, item 1).

Each row is one `python -m bon generate` process over the same prompts (the default model,
`--n 2`, `--max-new-tokens` 32 as in the issue's report, or more with the flag); wall time is
the whole process, model load included, as a user waits for it. "busy" rows run
beside a pure-Python busy loop on one core (another job on a shared machine). Threads:
`all` sets OMP_NUM_THREADS to the core count (torch's own default), `auto` leaves it unset so
bon picks one per core not busy with other processes, `1` sets it to 1. Every configuration
runs `--repeats` times, interleaved; the table gives the fastest. The texts of each row are
compared with the float32 row's of the same machine state.

    python benchmarks/cpu_defaults.py
    python benchmarks/cpu_defaults.py --max-new-tokens 128

Writes benchmarks/results/cpu_defaults.md (cpu_defaults_N.md for other `--max-new-tokens`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from revisions import command_line, load_average, machine, revision, run_bon, versions  # noqa: E402

from bon.engines.hf import cpu_has_bf16  # noqa: E402

PROMPTS = [
    "Name three primary colours.",
    "Write one sentence about the sea.",
    "What is 12 times 7? Explain briefly.",
]
ROWS = [
    ("idle", "bfloat16", "all"),
    ("idle", "float32", "all"),
    ("idle", "auto", "auto"),
    ("busy", "bfloat16", "all"),
    ("busy", "float32", "all"),
    ("busy", "float32", "1"),
    ("busy", "auto", "auto"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--out", default=None, help="results file [default: see above]")
    args = parser.parse_args()
    load = load_average()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        prompts = folder / "prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
        best: dict[tuple[str, str, str], float] = {}
        texts: dict[tuple[str, str, str], list[list[str]]] = {}
        for repeat in range(args.repeats):
            for row in ROWS:
                out = folder / f"{repeat}-{'-'.join(row)}.jsonl"
                seconds, found = _one(row, prompts, out, args.max_new_tokens)
                best[row] = min(seconds, best.get(row, seconds))
                texts[row] = found
                print(f"{row}: {seconds:.1f} s", file=sys.stderr)
    suffix = "" if args.max_new_tokens == 32 else f"_{args.max_new_tokens}"
    out = args.out or ROOT / f"benchmarks/results/cpu_defaults{suffix}.md"
    _write(Path(out), best, texts, args.max_new_tokens, load)


def _one(
    row: tuple[str, str, str], prompts: Path, out: Path, max_new_tokens: int
) -> tuple[float, list[list[str]]]:
    state, dtype, threads = row
    env_threads = {"all": str(os.cpu_count()), "1": "1"}.get(threads)
    if env_threads is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = env_threads
    hog = None
    if state == "busy":
        hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        arguments = ["generate", str(prompts), "-o", str(out), "--n", "2"]
        arguments += ["--max-new-tokens", str(max_new_tokens), "--dtype", dtype, "--seed", "0"]
        arguments += ["-q"]
        arguments += ["--device", "cpu"]
        _, _, seconds = run_bon(arguments)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
        os.environ.pop("OMP_NUM_THREADS", None)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    return seconds, [[c["text"] for c in r["candidates"]] for r in records]


def _write(path: Path, best: dict, texts: dict, max_new_tokens: int, load: str) -> None:
    lines = [
        "# dtype and threads on the CPU",
        "",
        f"Command: `{command_line()}`",
        "",
        f"bon {revision()}; {machine()}; native bf16: {cpu_has_bf16()}; load before: "
        f"{load}; {versions(('torch', 'transformers'))}.",
        f"Default model, {len(PROMPTS)} prompts x 2 samples x at most {max_new_tokens} new "
        "tokens, seed 0; fastest "
        "of the repeats; wall time of the whole `bon generate` process.",
        "",
        "| machine | --dtype | threads | seconds | x float32, all threads | texts as float32 |",
        "|---|---|---|---:|---:|---|",
    ]
    for row in ROWS:
        state = row[0]
        reference = (state, "float32", "all")
        same = "yes" if texts[row] == texts[reference] else "no"
        ratio = best[row] / best[reference]
        lines.append(f"| {state} | {row[1]} | {row[2]} | {best[row]:.1f} | {ratio:.2f} | {same} |")
    lines += [
        "",
        "`auto` rows: bon's defaults (the dtype from the CPU's flags, one thread per core not "
        "busy with other processes).",
    ]
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
