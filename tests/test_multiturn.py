"""Multi-turn `bon run`: best-of-N per turn, each sampled after the selected answer before it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

import bon
from bon import turns
from bon.entrypoints.cli import main
from bon.errors import InputError
from tests.conftest import read_jsonl, write_jsonl

SAMPLE = Path(__file__).resolve().parent.parent / "data" / "mt_bench_sample.jsonl"


def _options(tiny_model: str) -> dict:
    return {
        "model": tiny_model,
        "reranker_model": tiny_model,
        "n": 3,
        "max_new_tokens": 8,
    }


@pytest.fixture(scope="module")
def mt_run(tmp_path_factory, tiny_model):
    """One real multi-turn run over the packaged MT-Bench sample on the tiny model."""
    out = tmp_path_factory.mktemp("mt") / "out"
    reports = bon.run(SAMPLE, out, keep_all=True, quiet=True, **_options(tiny_model))
    return out, reports


def test_the_sample_holds_three_mtbench_questions():
    questions = read_jsonl(SAMPLE)
    assert [q["question_id"] for q in questions] == [81, 101, 111]
    assert all(len(q["turns"]) == 2 for q in questions)


def test_turn_two_follows_the_selected_turn_one_answer(mt_run):
    out, _ = mt_run
    first = {r["id"]: r for r in read_jsonl(out / "turn-1" / "selected.jsonl")}
    second = read_jsonl(out / "turn-2" / "prompts.jsonl")
    questions = read_jsonl(SAMPLE)
    assert len(second) == 3
    for question, record in zip(questions, second, strict=True):
        chosen = first[record["id"]]["selected"]
        assert chosen["index"] is not None
        assert record["messages"] == [
            {"role": "user", "content": question["turns"][0]},
            {"role": "assistant", "content": chosen["text"]},
            {"role": "user", "content": question["turns"][1]},
        ]
        # The selection, not merely a candidate: with 3 candidates it is the best-scoring one.
        candidates = first[record["id"]]["candidates"]
        scores = [c["scores"]["flip-tokens"] for c in candidates]
        assert chosen["text"] == candidates[scores.index(max(scores))]["text"]


def test_the_merged_record_holds_every_turns_candidates_and_selection(mt_run):
    out, reports = mt_run
    merged = read_jsonl(out / "selected.jsonl")
    questions = read_jsonl(SAMPLE)
    assert [m["question_id"] for m in merged] == [81, 101, 111]
    for question, record in zip(questions, merged, strict=True):
        # The question's own fields pass through; no turn's working fields leak into it.
        assert {k: record[k] for k in question} == question
        assert "messages" not in record and "selected" not in record
        assert [len(a["candidates"]) for a in record["answers"]] == [3, 3]
        seeds = [a["generator"]["request_seed"] for a in record["answers"]]
        assert seeds[0] != seeds[1]  # each turn draws samples of its own
    second = {r["id"]: r for r in read_jsonl(out / "turn-2" / "selected.jsonl")}
    assert [m["answers"][1]["selected"] for m in merged] == [
        second[m["id"]]["selected"] for m in merged
    ]
    assert reports[-1].written == 3 and reports[-1].unselected == 0


def test_export_mtbench_gives_both_turns(mt_run, tmp_path):
    out, _ = mt_run
    result = CliRunner().invoke(
        main, ["export", "mtbench", str(out / "selected.jsonl"), "-o", str(tmp_path / "a.jsonl")]
    )
    assert result.exit_code == 0, result.output
    answers = read_jsonl(tmp_path / "a.jsonl")
    merged = read_jsonl(out / "selected.jsonl")
    assert [a["question_id"] for a in answers] == [81, 101, 111]
    for answer, record in zip(answers, merged, strict=True):
        texts = [t["selected"]["text"] for t in record["answers"]]
        assert answer["choices"] == [{"index": 0, "turns": texts}]
        assert answer["model_id"].endswith("-bon")


def test_pairs_from_a_turns_scored_file_carry_the_conversation(mt_run):
    out, _ = mt_run
    pairs = bon.export_records("pairs", read_jsonl(out / "turn-2" / "scored.jsonl"))
    prompts = {r["id"]: r["messages"] for r in read_jsonl(out / "turn-2" / "prompts.jsonl")}
    assert pairs, "three candidates with distinct scores give a pair per record"
    for pair in pairs:
        assert pair["prompt"] == prompts[pair["id"]] and len(pair["prompt"]) == 3
        assert pair["chosen"][0]["role"] == "assistant"
        assert pair["score_chosen"] > pair["score_rejected"]


def test_a_rerun_resumes_every_turn(mt_run, tiny_model):
    out, _ = mt_run
    before = (out / "selected.jsonl").read_bytes()
    reports = bon.run(SAMPLE, out, keep_all=True, quiet=True, **_options(tiny_model))
    stages = [r for r in reports if "turn-" in r.output]
    assert len(stages) == 1 + 3 * 2  # the turns check, then three stages per turn
    assert all(r.written == 0 and r.resumed == 3 for r in stages)
    assert (out / "selected.jsonl").read_bytes() == before


def test_in_memory_run_matches_the_file_run(mt_run, tiny_model):
    out, _ = mt_run
    merged = bon.run_records(read_jsonl(SAMPLE), keep_all=True, **_options(tiny_model))
    on_disk = read_jsonl(out / "selected.jsonl")
    assert [[a["selected"] for a in r["answers"]] for r in merged] == [
        [a["selected"] for a in r["answers"]] for r in on_disk
    ]


def test_a_turn_without_a_selection_ends_that_conversation():
    record = turns.first_turn({"id": "q", "turns": ["a", "b"]})
    unselected = {**record, "selected": {"index": None, "text": None, "score": None}}
    assert turns.next_turn(unselected) is None
    last = turns.next_turn({**record, "selected": {"index": 0, "text": "A"}})
    assert turns.next_turn({**last, "selected": {"index": 1, "text": "B"}}) is None
    merged = turns.merge([record], [{"q": unselected}])
    assert not turns.finished(merged[0]) and len(merged[0]["answers"]) == 1


@pytest.mark.parametrize(
    ("rows", "line", "match"),
    [
        ([{"turns": ["a"]}, {"prompt": "b"}], 2, "needs `turns`"),
        ([{"turns": ["a"]}, {"turns": []}], 2, "non-empty list of strings"),
        ([{"turns": ["a"]}, {"turns": ["x", "  "]}], 2, r"`turns\[1\]` is empty"),
        ([{"turns": ["a"], "prompt": "a"}], 1, "cannot also have `prompt`"),
    ],
)
def test_bad_multiturn_files_fail_before_any_model_loads(tmp_path, rows, line, match):
    source = write_jsonl(tmp_path / "q.jsonl", rows)
    with pytest.raises(InputError, match=match) as raised:
        bon.run(source, tmp_path / "out", model="no/such-model", quiet=True)
    assert raised.value.line == line


def test_a_single_stage_explains_where_turns_records_run(tmp_path):
    source = write_jsonl(tmp_path / "q.jsonl", [json.loads(SAMPLE.read_text().splitlines()[0])])
    result = CliRunner().invoke(main, ["generate", str(source), "-o", str(tmp_path / "c.jsonl")])
    assert result.exit_code == 1 and "`bon run` runs them" in result.output
