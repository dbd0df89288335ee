"""The labelled preference sets of data/pref/ and the script that builds them."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from bon.evals.ifeval import check

ROOT = Path(__file__).resolve().parent.parent
PREF = ROOT / "data" / "pref"
SETS = {"focus": "focus", "vs_small": "vs-small", "ifeval_pref": "ifeval-pref"}


def load_script():
    spec = importlib.util.spec_from_file_location(
        "build_prefsets", ROOT / "benchmarks" / "build_prefsets.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = load_script()


def read(name: str, half: str) -> list[dict]:
    path = PREF / f"{name}.{half}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def alpaca() -> dict[str, str]:
    """AlpacaEval instruction -> its GPT-4-turbo reference output."""
    return {row["instruction"]: row["output"] for row in build.alpaca_rows()}


# --- the committed data ---


@pytest.mark.parametrize("name", SETS)
def test_records_have_the_shape_bon_score_reads(name: str) -> None:
    for half in ("dev", "test"):
        records = read(name, half)
        assert records, f"{name}.{half} is empty"
        for record in records:
            assert record["subset"] == SETS[name]
            assert isinstance(record["id"], str) and record["prompt"].strip()
            labels = [c["label"] for c in record["candidates"]]
            assert set(labels) == {0, 1}, record["id"]
            assert all(isinstance(c["text"], str) for c in record["candidates"])


@pytest.mark.parametrize("name", SETS)
def test_dev_and_test_are_disjoint_halves(name: str) -> None:
    dev, test = read(name, "dev"), read(name, "test")
    assert len(dev) - len(test) in (0, 1)
    assert not {r["id"] for r in dev} & {r["id"] for r in test}
    assert not {r["prompt"] for r in dev} & {r["prompt"] for r in test}


def test_sizes() -> None:
    assert [len(read("focus", h)) for h in ("dev", "test")] == [80, 80]
    assert [len(read("vs_small", h)) for h in ("dev", "test")] == [60, 60]
    assert len(read("ifeval_pref", "dev")) >= 10


@pytest.mark.parametrize("name", ["focus", "vs_small"])
def test_the_preferred_answer_is_the_reference(name: str, alpaca: dict[str, str]) -> None:
    for record in read(name, "dev") + read(name, "test"):
        assert len(record["candidates"]) == 4
        preferred = [c["text"] for c in record["candidates"] if c["label"] == 1]
        assert preferred == [alpaca[record["prompt"]]]
        others = [c["text"] for c in record["candidates"] if c["label"] == 0]
        assert alpaca[record["prompt"]] not in others


def test_focus_is_disjoint_from_vs_small() -> None:
    focus = {r["prompt"] for h in ("dev", "test") for r in read("focus", h)}
    vs_small = {r["prompt"] for h in ("dev", "test") for r in read("vs_small", h)}
    assert not focus & vs_small


def test_focus_distractors_are_other_instructions_answers(alpaca: dict[str, str]) -> None:
    answers = set(alpaca.values())
    for record in read("focus", "dev"):
        assert all(c["text"] in answers for c in record["candidates"])


@pytest.mark.parametrize("name", SETS)
def test_position_carries_no_signal(name: str) -> None:
    """The preferred candidates sit at many positions, not at one fixed place."""
    positions = Counter(
        i
        for r in read(name, "dev") + read(name, "test")
        for i, c in enumerate(r["candidates"])
        if c["label"] == 1
    )
    assert len(positions) >= 3
    assert max(positions.values()) < 0.6 * sum(positions.values())


def test_ifeval_pref_labels_are_the_official_strict_checks() -> None:
    for record in read("ifeval_pref", "dev"):
        assert len(record["candidates"]) == 8
        for c in record["candidates"]:
            assert c["label"] == check(record, c["text"])["prompt_strict"]


def test_manifest_names_every_file_with_its_hash() -> None:
    manifest = json.loads((PREF / "manifest.json").read_text())
    files = sorted(p.name for p in PREF.glob("*.jsonl"))
    assert sorted(manifest["sha256"]) == files
    for name, digest in manifest["sha256"].items():
        assert hashlib.sha256((PREF / name).read_bytes()).hexdigest() == digest
    assert manifest["models"]["generator"]["ifeval"]["n"] == 8
    assert manifest["statistics"]["focus"]["dev"]["items"] == 80


# --- the builder's parts ---


def test_split_is_seeded_and_halves() -> None:
    items = [{"id": i} for i in range(7)]
    halves = build.split(items, seed=3)
    assert halves == build.split(items, seed=3)
    assert [len(halves["dev"]), len(halves["test"])] == [4, 3]
    assert sorted(r["id"] for r in halves["dev"] + halves["test"]) == list(range(7))
    assert halves != build.split(items, seed=4)


def test_candidates_are_shuffled_with_their_labels() -> None:
    texts = [f"t{i}" for i in range(6)]
    shuffled = build.shuffled_candidates(texts, [1, 0, 0, 0, 0, 0], random.Random(0))
    assert sorted(c["text"] for c in shuffled) == texts
    assert [c["text"] for c in shuffled if c["label"] == 1] == ["t0"]
    assert [c["text"] for c in shuffled] != texts


def test_focus_items_use_the_nearest_other_instructions() -> None:
    rows = [
        {"instruction": "How do I bake sourdough bread at home?", "output": "bread"},
        {"instruction": "What is a good recipe for homemade bread?", "output": "recipe"},
        {"instruction": "How can I make pizza dough from scratch?", "output": "dough"},
        {"instruction": "Tips for baking cookies?", "output": "cookies"},
        {"instruction": "Explain the theory of general relativity.", "output": "physics"},
        {"instruction": "Who won the 1998 football world cup?", "output": "football"},
    ]
    items = build.build_focus(rows, exclude={1, 2, 3, 4, 5}, count=1, seed=0)
    assert len(items) == 1
    item = items[0]
    assert item["prompt"] == rows[0]["instruction"]
    labelled = {c["text"]: c["label"] for c in item["candidates"]}
    assert labelled == {"bread": 1, "recipe": 0, "dough": 0, "cookies": 0}


def test_ifeval_pref_keeps_only_prompts_with_both_outcomes() -> None:
    base = {"instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}], "prompt": "Reply."}
    mixed = {**base, "id": "ifeval-1", "key": 1}
    mixed["candidates"] = [{"text": "No commas here."}, {"text": "Yes, a comma."}]
    failing = {**base, "id": "ifeval-2", "key": 2}
    failing["candidates"] = [{"text": "Comma, one."}, {"text": "Comma, two."}]
    items = build.build_ifeval_pref([mixed, failing], seed=0)
    assert [r["id"] for r in items] == ["ifeval-pref-1"]
    labels = {c["text"]: c["label"] for c in items[0]["candidates"]}
    assert labels == {"No commas here.": 1, "Yes, a comma.": 0}


def test_length_controls_follow_their_direction() -> None:
    items = [
        {
            "id": "a",
            "prompt": "p",
            "candidates": [{"text": "long long long", "label": 1}, {"text": "short", "label": 0}],
        },
        {
            "id": "b",
            "prompt": "q",
            "candidates": [{"text": "tiny", "label": 1}, {"text": "much much longer", "label": 0}],
        },
        {
            "id": "c",
            "prompt": "r",
            "candidates": [{"text": "same", "label": 1}, {"text": "same", "label": 0}],
        },
    ]
    assert build.control_accuracy(items, "longest") == pytest.approx(1 / 3)
    assert build.control_accuracy(items, "shortest") == pytest.approx(1 / 3)
    stats = build.statistics_of(items)
    assert stats["random"] == pytest.approx(0.5)
    assert stats["preferred"] == 1
