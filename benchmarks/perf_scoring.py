"""Seconds per candidate of the FLIP scorers, and of a plain per-candidate loop, in one run.

One transformers engine (one model in memory) serves every measurement, on the same
candidates: the first `--records` records of the input. Measured side by side:

- each scorer's batch path as `bon score --no-cache` runs it (pipeline batches of
  `--batch-size` candidates handed to `Scorer.score`);
- a plain loop over the same model, the way reference code is used: `flip` as one greedy
  `generate` per candidate (same prompt, `max_new_tokens`, parsing and F1), `flip-likelihood`
  as one full forward pass per candidate (every position's logits, then a log-softmax).

    python benchmarks/perf_scoring.py --records 4

Writes benchmarks/results/perf_scoring.md (command, machine, versions, numbers).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from revisions import load_average, machine, versions  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def load_items(path: Path, count: int) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line, _ in zip(handle, range(count), strict=False)]


def queries_of(items: list[dict]) -> list:
    from bon import records
    from bon.scorers import Query

    return [
        Query(records.conversation(r), [c["text"] for c in records.candidates(r)]) for r in items
    ]


def pipeline_batches(queries: list, budget: int) -> list[list]:
    """Records grouped as the pipeline groups them: until their candidates reach `budget`."""
    batches, batch, used = [], [], 0
    for query in queries:
        batch.append(query)
        used += len(query.candidates)
        if used >= budget:
            batches.append(batch)
            batch, used = [], 0
    return batches + ([batch] if batch else [])


def time_scorer(name: str, engine, options, queries: list) -> tuple[float, list[float]]:
    from bon.scorers import scorers

    scorer = scorers.get(name)(options, lambda: engine)
    start = time.perf_counter()
    values = []
    for batch in pipeline_batches(queries, options.batch_size):
        values += [s.value for row in scorer.score(batch) for s in row]
    return time.perf_counter() - start, values


def prompt_ids(engine, options, query, text: str, prompt: str) -> list[int]:
    """The token ids of the reconstruction prompt that FLIP builds for one candidate."""
    from bon.scorers.base import clip_words
    from bon.scorers.flip import reconstruction_messages

    response = clip_words(text, options.max_response_words)
    messages = reconstruction_messages(response, query.history, prompt=prompt)
    return engine._encode(engine.render(messages))


def loop_flip(engine, options, queries: list) -> tuple[float, list[float]]:
    """One greedy `generate` per candidate on the same model, prompt, parsing and F1."""
    import torch

    from bon.scorers.flip import parse_reconstruction
    from bon.similarity import token_f1

    start = time.perf_counter()
    values = []
    for query in queries:
        for text in query.candidates:
            ids = torch.tensor([prompt_ids(engine, options, query, text, options.prompt)])
            ids = ids.to(engine.device)
            with torch.inference_mode():
                out = engine.model.generate(
                    input_ids=ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=options.max_new_tokens,
                    do_sample=False,
                    pad_token_id=engine.tokenizer.pad_token_id,
                )
            output = engine.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
            inferred, _ = parse_reconstruction(output, options.prompt)
            values.append(token_f1(inferred, query.instruction))
    return time.perf_counter() - start, values


def loop_likelihood(engine, options, queries: list) -> tuple[float, list[float]]:
    """One full forward pass per candidate: every position's logits, then a log-softmax."""
    import torch

    start = time.perf_counter()
    values = []
    for query in queries:
        target = engine._encode(query.instruction)
        for text in query.candidates:
            prompt = prompt_ids(engine, options, query, text, "short")
            ids = torch.tensor([prompt + target], device=engine.device)
            with torch.inference_mode():
                logits = engine.model(input_ids=ids).logits[0].float()
            logprobs = torch.log_softmax(logits, dim=-1)
            first = len(prompt) - 1
            picked = [logprobs[first + i, t].item() for i, t in enumerate(target)]
            values.append(sum(picked) / len(picked))
    return time.perf_counter() - start, values


def flip_prefill(engine, options, queries: list) -> float:
    """Seconds of the forward passes over flip's prompts alone, one candidate at a time (a
    forward pass gains nothing from batching here: see `batching_headroom`)."""
    import torch

    start = time.perf_counter()
    for query in queries:
        for text in query.candidates:
            ids = [prompt_ids(engine, options, query, text, options.prompt)]
            ids = torch.tensor(ids, device=engine.device)
            with torch.inference_mode():
                engine.model(input_ids=ids, use_cache=False, logits_to_keep=1)
    return time.perf_counter() - start


def batching_headroom(
    engine, batch: int, length: int, prompt_length: int, new_tokens: int
) -> list[dict]:
    """What batching alone can buy on this machine: seconds for `batch` equal sequences one by
    one and all at once, for a forward pass of `length` tokens (all of flip-likelihood's work)
    and for greedy decoding of `new_tokens` after a `prompt_length`-token prompt (most of
    flip's)."""
    import torch

    generator = torch.Generator().manual_seed(0)
    vocab = engine.model.config.vocab_size

    def tokens(rows: int, width: int):
        return torch.randint(100, vocab, (rows, width), generator=generator).to(engine.device)

    def forward(ids) -> None:
        engine.model(input_ids=ids, use_cache=False, logits_to_keep=1)

    def decode(ids) -> None:
        engine.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=engine.tokenizer.pad_token_id,
        )

    out = []
    for name, run, ids in (
        (f"forward pass, {length} tokens", forward, tokens(batch, length)),
        (
            f"greedy decoding, {new_tokens} new tokens after {prompt_length}",
            decode,
            tokens(batch, prompt_length),
        ),
    ):
        with torch.inference_mode():
            run(ids[:1])  # warm-up
            start = time.perf_counter()
            for row in range(batch):
                run(ids[row : row + 1])
            alone = time.perf_counter() - start
            start = time.perf_counter()
            run(ids)
            together = time.perf_counter() - start
        out.append({"pass": name, "one_by_one_s": alone, "batched_s": together})
        print(json.dumps(out[-1]), flush=True)
    return out


def median_length(engine, options, queries: list, prompt: str, instruction: bool) -> int:
    """The median token count of the reconstruction prompts (template and response) built with
    `prompt`, each followed by its instruction when `instruction` (flip-likelihood's inputs)."""
    lengths = sorted(
        len(prompt_ids(engine, options, q, text, prompt))
        + (len(engine._encode(q.instruction)) if instruction else 0)
        for q in queries
        for text in q.candidates
    )
    return lengths[len(lengths) // 2]


def shared_head(engine, options, queries: list) -> int:
    """How many leading tokens every flip-likelihood input shares (the reconstruction prompt's
    fixed head): the most that reusing one key-value cache across candidates could skip."""
    inputs = [
        prompt_ids(engine, options, q, text, "short") for q in queries for text in q.candidates
    ]
    shortest = min(len(ids) for ids in inputs)
    return next((k for k in range(shortest) if len({ids[k] for ids in inputs}) > 1), shortest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default="data/pref/vs_small.dev.jsonl")
    parser.add_argument("--records", type=int, default=4)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--scorers", default="flip,flip-likelihood,flip-tokens")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/perf_scoring.md"))
    args = parser.parse_args()

    from bon.engines import load_engine
    from bon.scorers import ScoreOptions

    options = ScoreOptions(
        model=args.model,
        batch_size=args.batch_size,
        max_new_tokens=args.max_new_tokens,
        echo_guard=False,  # the plain loops have none; the guard costs no model call anyway
        no_cache=True,
    )
    engine = load_engine(options)
    items = load_items(ROOT / args.input, args.records)
    queries = queries_of(items)
    candidates = sum(len(q.candidates) for q in queries)
    warm = queries_of([{"prompt": "Say hi.", "responses": ["Hi!"]}])
    time_scorer("flip-likelihood", engine, options, warm)  # first-call costs, paid by neither

    rows: dict[str, dict] = {}
    loops = {"flip": loop_flip, "flip-likelihood": loop_likelihood}
    for name in args.scorers.split(","):
        seconds, values = time_scorer(name, engine, options, queries)
        row = {"scorer": name, "bon_s": seconds, "bon_s_per_candidate": seconds / candidates}
        if name in loops:
            loop_s, loop_values = loops[name](engine, options, queries)
            pairs = zip(values, loop_values, strict=True)
            row.update(
                loop_s=loop_s,
                loop_s_per_candidate=loop_s / candidates,
                batching_ratio=loop_s / seconds,
                max_abs_score_diff=max(abs(a - b) for a, b in pairs),
            )
        print(json.dumps(row), flush=True)
        rows[name] = row
    length = median_length(engine, options, queries, "short", instruction=True)
    flip_length = median_length(engine, options, queries, options.prompt, instruction=False)
    headroom = batching_headroom(engine, args.batch_size, length, flip_length, args.max_new_tokens)
    shared = {"head": shared_head(engine, options, queries), "length": length}
    if "flip" in rows:
        rows["flip"]["prefill_s_per_candidate"] = (
            flip_prefill(engine, options, queries) / candidates
        )
    write_results(Path(args.out), rows, headroom, shared, args, len(queries), candidates)


def write_results(
    path: Path,
    rows: dict[str, dict],
    headroom: list[dict],
    shared: dict[str, int],
    args: argparse.Namespace,
    records: int,
    candidates: int,
) -> None:
    lines = [
        "# FLIP scoring cost: batched vs a per-candidate loop, flip vs flip-likelihood "
        "(issue 11, items 1 and 2)",
        "",
        "Written by `benchmarks/perf_scoring.py`, every figure from one process, one model in "
        f"memory, the same {candidates} candidates (the first {records} records of "
        f"`{args.input}`). 'bon' is the scorer's batch path as `bon score --no-cache` runs it "
        f"(batches of {args.batch_size} candidates); 'loop' is a plain loop over the same "
        "model: one greedy `generate` per candidate for flip, one full forward pass per "
        "candidate for flip-likelihood. Echo guard off (the loops have none).",
        "",
        f"- Command: `python benchmarks/perf_scoring.py --input {args.input} --records "
        f"{args.records} --model {args.model} --batch-size {args.batch_size} "
        f"--max-new-tokens {args.max_new_tokens} --scorers {args.scorers}`",
        f"- Machine: {machine()}; load average at the end {load_average()}",
        f"- Versions: {versions(('torch', 'transformers'))}",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| scorer | bon s/candidate | loop s/candidate | loop / bon | max score diff |",
        "|---|---|---|---|---|",
    ]
    for r in rows.values():
        loop = f"{r['loop_s_per_candidate']:.2f}" if "loop_s" in r else "-"
        ratio = f"{r['batching_ratio']:.2f}x" if "loop_s" in r else "-"
        diff = f"{r['max_abs_score_diff']:.3g}" if "loop_s" in r else "-"
        lines.append(
            f"| {r['scorer']} | {r['bon_s_per_candidate']:.2f} | {loop} | {ratio} | {diff} |"
        )
    if "flip" in rows:
        lines.append("")
        for name in ("flip-likelihood", "flip-tokens"):
            if name in rows:
                ratio = rows["flip"]["bon_s"] / rows[name]["bon_s"]
                lines.append(f"- flip / {name} seconds per candidate (bon): {ratio:.1f}x")
    lines += [
        "",
        f"What batching alone can buy here: {args.batch_size} equal sequences of random tokens, "
        "one by one and as one batch, on the same model (the forward pass at the median "
        "length of flip-likelihood's inputs, decoding after the median length of flip's "
        "prompts).",
        "",
        "| pass | one by one s | one batch s | one by one / batch |",
        "|---|---|---|---|",
    ]
    for h in headroom:
        ratio = h["one_by_one_s"] / h["batched_s"]
        lines.append(
            f"| {h['pass']} | {h['one_by_one_s']:.2f} | {h['batched_s']:.2f} | {ratio:.2f}x |"
        )
    share = shared["head"] / shared["length"]
    reuse_bound = headroom[0]["one_by_one_s"] / headroom[0]["batched_s"] / (1 - share)
    lines += [
        "",
        f"- The head of the reconstruction prompt that every candidate shares: "
        f"{shared['head']} tokens, {100 * share:.0f}% of the median input "
        f"({shared['length']} tokens). Computing its key-value cache once would skip at "
        f"most that share of each forward pass: with the batching ratio above, flip-likelihood "
        f"could be at most {reuse_bound:.2f}x "
        "the loop.",
    ]
    if "prefill_s_per_candidate" in rows.get("flip", {}):
        flip = rows["flip"]
        prefill = flip["prefill_s_per_candidate"]
        decode = headroom[-1]["one_by_one_s"] / headroom[-1]["batched_s"]
        best = prefill + (flip["loop_s_per_candidate"] - prefill) / decode
        bound = flip["loop_s_per_candidate"] / best
        lines += [
            "",
            f"- flip's forward pass over its prompts alone: {prefill:.2f} s/candidate. If "
            f"batching bought nothing there and the decoding ratio above on the rest, flip "
            f"would take about {best:.2f} s/candidate, {bound:.2f}x the loop (bon's flip path: "
            f"{flip['batching_ratio']:.2f}x, in the first table).",
        ]
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
