"""`bon export`: AlpacaEval, IFEval, MT-Bench and DPO-pair files from selected and scored files."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
from pathlib import Path

import pytest
from click import Option
from click.testing import CliRunner

import bon
from bon import api
from bon.entrypoints.cli import main
from bon.errors import ConfigError, InputError
from bon.export import ExportOptions
from tests.conftest import read_jsonl, write_jsonl

# Instructions whose bytes a careless exporter would change: surrounding and inner whitespace,
# CRLF, non-ASCII, an escaped quote, a tab.
TRICKY = [
    "  Leading and trailing spaces.  ",
    "Line one\r\nline two\n",
    'Café, naïve, 東京 and an emoji 🙂 with "quotes" and a\ttab',
]


def _selected(prompt: str, text: str, index: int | None = 0, **extra) -> dict:
    return {
        "prompt": prompt,
        "generator": {"engine": "hf", "model": "/models/Llama-3.1-Tulu-3-8B-SFT/"},
        "selected": {"index": index, "text": text, "score": 0.5, "by": "flip"},
        **extra,
    }


def _scored(prompt: str, scores: list[float | None], name: str = "flip", **extra) -> dict:
    return {
        "id": extra.pop("id", prompt),
        "prompt": prompt,
        "candidates": [{"text": f"c{i}", "scores": {name: s}} for i, s in enumerate(scores)],
        **extra,
    }


def test_alpacaeval_keeps_each_instruction_byte_exact(tmp_path):
    rows = [_selected(p, f"answer {i}") for i, p in enumerate(TRICKY)]
    rows[0]["dataset"] = "helpful_base"
    source = write_jsonl(tmp_path / "selected.jsonl", rows)
    report = bon.export("alpacaeval", source, tmp_path / "outputs.json")
    out = json.loads((tmp_path / "outputs.json").read_text(encoding="utf-8"))
    assert isinstance(out, list) and report.written == 3
    assert [o["instruction"] for o in out] == TRICKY
    assert [o["output"] for o in out] == ["answer 0", "answer 1", "answer 2"]
    # The generator model's last path part, plus -bon; `dataset` only where the record has it.
    assert {o["generator"] for o in out} == {"Llama-3.1-Tulu-3-8B-SFT-bon"}
    assert out[0]["dataset"] == "helpful_base" and "dataset" not in out[1]


def test_the_generator_name_can_be_given(tmp_path):
    source = write_jsonl(tmp_path / "s.jsonl", [_selected("Hi", "Hello")])
    bon.export("alpacaeval", source, tmp_path / "o.json", generator="tulu-bo16")
    assert json.loads((tmp_path / "o.json").read_text())[0]["generator"] == "tulu-bo16"


def test_ifeval_rows_are_prompt_and_response(tmp_path):
    source = write_jsonl(tmp_path / "s.jsonl", [_selected(p, "r") for p in TRICKY])
    bon.export("ifeval", source, tmp_path / "input_response_data.jsonl")
    rows = read_jsonl(tmp_path / "input_response_data.jsonl")
    assert rows == [{"prompt": p, "response": "r"} for p in TRICKY]


CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "I am planning a trip to Japan."},
    {"role": "assistant", "content": "Lovely."},
    {"role": "user", "content": "Which two cities first?"},
]


@pytest.mark.parametrize(("format", "key"), [("alpacaeval", "instruction"), ("ifeval", "prompt")])
def test_chat_records_export_their_last_user_turn_flagged(tmp_path, caplog, format, key):
    one_turn = {**_selected("unused", "Blue."), "messages": [{"role": "user", "content": "Hi?"}]}
    del one_turn["prompt"]
    many = {**one_turn, "messages": CHAT, "selected": {"index": 0, "text": "Kyoto, Tokyo."}}
    source = write_jsonl(tmp_path / "s.jsonl", [_selected("Plain?", "Yes."), one_turn, many])
    with caplog.at_level("INFO", logger="bon.export"):
        report = bon.export(format, source, tmp_path / "out")
    out = tmp_path / "out"
    rows = json.loads(out.read_text()) if format == "alpacaeval" else read_jsonl(out)
    assert [r[key] for r in rows] == ["Plain?", "Hi?", "Which two cities first?"]
    assert [r.get("instruction_from") for r in rows] == [None, "last_user_turn", "last_user_turn"]
    assert report.written == 3 and report.errors == 0
    assert report.extra["chat_records"] == 2 and report.extra["chat_turns_left_out"] == 1
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith("1 chat records had turns before their last user turn")
    # In memory, the same rows.
    assert bon.export_records(format, [many])[0]["instruction_from"] == "last_user_turn"


def test_the_sample_prompts_export_to_alpacaeval_and_ifeval(tmp_path):
    """data/sample_prompts.jsonl (the README's quick start), selected: its chat record too."""
    sample = Path(__file__).resolve().parent.parent / "data" / "sample_prompts.jsonl"
    prompts = read_jsonl(sample)
    chosen = [
        {**p, "generator": {"model": "smollm2-135m"}, "selected": {"index": 0, "text": f"a{i}"}}
        for i, p in enumerate(prompts)
    ]
    source = write_jsonl(tmp_path / "selected.jsonl", chosen)
    bon.export("alpacaeval", source, tmp_path / "outputs.json")
    report = bon.export("ifeval", source, tmp_path / "input_response_data.jsonl")
    alpaca = json.loads((tmp_path / "outputs.json").read_text())
    ifeval = read_jsonl(tmp_path / "input_response_data.jsonl")
    expected = [p.get("prompt") or p["messages"][-1]["content"] for p in prompts]
    assert [r["instruction"] for r in alpaca] == [r["prompt"] for r in ifeval] == expected
    chat = [i for i, p in enumerate(prompts) if "messages" in p]
    assert chat and all(alpaca[i]["instruction_from"] == "last_user_turn" for i in chat)
    assert [i for i, r in enumerate(ifeval) if "instruction_from" in r] == chat
    assert report.written == len(prompts) and report.extra["chat_records"] == len(chat)


def _multiturn(question_id: int, answers: list[str | None]) -> dict:
    return {
        "id": f"q{question_id}",
        "question_id": question_id,
        "turns": ["First?", "Second?"],
        "answers": [
            {
                "selected": {"index": None if a is None else 0, "text": a, "score": 1.0},
                "generator": {"model": "smollm2-135m"},
            }
            for a in answers
        ],
    }


def test_mtbench_emits_one_choice_with_every_turns_selection(tmp_path):
    rows = [_multiturn(81, ["a1", "a2"]), {**_selected("Solo?", "only"), "id": "solo"}]
    source = write_jsonl(tmp_path / "selected.jsonl", rows)
    os.utime(source, (1_700_000_000.5, 1_700_000_000.5))
    bon.export("mtbench", source, tmp_path / "answers.jsonl")
    first, second = read_jsonl(tmp_path / "answers.jsonl")
    assert set(first) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
    assert first["question_id"] == 81 and first["model_id"] == "smollm2-135m-bon"
    assert first["choices"] == [{"index": 0, "turns": ["a1", "a2"]}]
    assert first["tstamp"] == 1_700_000_000.5  # the input's modification time
    assert second["question_id"] == "solo" and second["choices"][0]["turns"] == ["only"]
    assert len(first["answer_id"]) == 22 and first["answer_id"] != second["answer_id"]


def test_mtbench_output_is_reproducible_and_the_answer_id_follows_the_content(tmp_path):
    source = write_jsonl(tmp_path / "s.jsonl", [_multiturn(81, ["a1", "a2"])])
    bon.export("mtbench", source, tmp_path / "one.jsonl", tstamp=12.0)
    os.utime(source, (5.0, 5.0))  # the file's time is ignored when a tstamp is given
    bon.export("mtbench", source, tmp_path / "two.jsonl", tstamp=12.0)
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "two.jsonl").read_bytes()
    assert read_jsonl(tmp_path / "one.jsonl")[0]["tstamp"] == 12.0
    changed = write_jsonl(tmp_path / "c.jsonl", [_multiturn(81, ["a1", "other"])])
    bon.export("mtbench", changed, tmp_path / "three.jsonl", tstamp=12.0)
    ids = [read_jsonl(tmp_path / f)[0]["answer_id"] for f in ("one.jsonl", "three.jsonl")]
    assert ids[0] != ids[1]


def test_pairs_best_worst_follows_each_scores_direction():
    rows = [
        _scored("p", [0.2, None, 0.9, 0.1]),  # null never chosen nor rejected
        _scored("q", [3.0, 1.0, 2.0], name="shortest"),  # lower is better
        _scored("r", [0.5, 0.5]),  # a tie gives no pair
    ]
    out = bon.export_records("pairs", rows)
    assert out == [
        {
            "id": "p",
            "prompt": "p",
            "chosen": "c2",
            "rejected": "c3",
            "score_chosen": 0.9,
            "score_rejected": 0.1,
        },
        {
            "id": "q",
            "prompt": "q",
            "chosen": "c1",
            "rejected": "c0",
            "score_chosen": 1.0,
            "score_rejected": 3.0,
        },
    ]


def test_pairs_with_a_margin_keep_every_pair_above_it():
    rows = [_scored("p", [0.0, 0.5, 1.0])]
    pairs = [(r["chosen"], r["rejected"]) for r in bon.export_records("pairs", rows, margin=0.4)]
    assert pairs == [("c1", "c0"), ("c2", "c0"), ("c2", "c1")]
    wide = bon.export_records("pairs", rows, margin=0.6)
    assert [(r["chosen"], r["rejected"]) for r in wide] == [("c2", "c0")]
    every = bon.export_records("pairs", rows, pairs="margin")  # margin 0: all strict pairs
    assert len(every) == 3


def test_pairs_rank_by_the_selection_score_unless_by_is_given():
    record = _scored("p", [0.1, 0.9], selected={"index": 1, "by": "flip"})
    for candidate, other in zip(record["candidates"], [5.0, 1.0], strict=True):
        candidate["scores"]["random"] = other
    assert bon.export_records("pairs", [record])[0]["chosen"] == "c1"
    assert bon.export_records("pairs", [record], by="random")[0]["chosen"] == "c0"


def test_pairs_of_chat_records_are_conversational():
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Name a colour."},
    ]
    record = {
        "id": "chat",
        "messages": messages,
        "candidates": [
            {"text": "Blue.", "scores": {"flip": 1.0}},
            {"text": "Seven.", "scores": {"flip": 0.0}},
        ],
    }
    (pair,) = bon.export_records("pairs", [record])
    assert pair["prompt"] == messages
    assert pair["chosen"] == [{"role": "assistant", "content": "Blue."}]
    assert pair["rejected"] == [{"role": "assistant", "content": "Seven."}]


@pytest.mark.parametrize(
    ("format", "record", "match"),
    [
        ("alpacaeval", _selected("p", None, index=None), "`selected` is null"),
        ("ifeval", {"prompt": "p"}, "has no `selected`: run `bon select`"),
        ("alpacaeval", {**_selected("p", "t"), "generator": None}, "pass --generator"),
        (
            "alpacaeval",
            {"messages": [{"role": "assistant", "content": "x"}], "selected": {"index": 0}},
            "the last of `messages` must be a user turn",
        ),
        ("ifeval", _multiturn(1, ["a", "b"]), "export it as mtbench"),
        ("mtbench", _multiturn(1, ["a"]), "has 2 turns but answers for 1 only"),
        ("mtbench", _multiturn(1, ["a", None]), r"`answers\[1\].selected` is null"),
        ("pairs", _selected("p", "t"), "has no scored `candidates`"),
        ("pairs", _scored("p", [0.3, math.nan]), "fewer than two candidates"),
        ("pairs", _scored("p", [0.3, 0.1], name="random"), r"`candidates\[0\]\.scores\.flip` is"),
    ],
)
def test_records_that_cannot_be_exported_name_their_line(tmp_path, format, record, match):
    fine = {**_selected("fine", "ok"), "id": "fine"}
    if format == "pairs":
        fine = _scored("fine", [1.0, 0.0])
    source = write_jsonl(tmp_path / "s.jsonl", [fine, record])
    with pytest.raises(InputError, match=match) as raised:
        bon.export(format, source, tmp_path / "out", by="flip" if format == "pairs" else None)
    assert raised.value.line == 2 and raised.value.path == str(source)
    assert not (tmp_path / "out").exists()


def test_skip_leaves_bad_records_out_and_lists_them(tmp_path):
    rows = [_selected("a", "A"), _selected("b", None, index=None), "not json", _selected("c", "C")]
    source = write_jsonl(tmp_path / "s.jsonl", rows)
    report = bon.export("ifeval", source, tmp_path / "out.jsonl", on_error="skip")
    assert [r["prompt"] for r in read_jsonl(tmp_path / "out.jsonl")] == ["a", "c"]
    assert report.written == 2 and report.errors == 2
    errors = read_jsonl(Path(report.error_file))
    assert [e["line"] for e in errors] == [2, 3] and "null" in errors[0]["error"]
    # A clean export removes the stale error list.
    clean = write_jsonl(tmp_path / "s.jsonl", [_selected("a", "A")])
    assert bon.export("ifeval", clean, tmp_path / "out.jsonl", on_error="skip").errors == 0
    assert not Path(report.error_file).exists()


def test_options_are_validated():
    with pytest.raises(ConfigError, match="`format` must be one of alpacaeval"):
        bon.export_records("csv", [])
    with pytest.raises(ConfigError, match="`margin` must be a number >= 0, got -1"):
        bon.export_records("pairs", [], margin=-1)
    with pytest.raises(ConfigError, match="unknown option"):
        bon.export_records("pairs", [], bogus=1)


def test_the_cli_mirrors_the_api_and_reports_errors_with_file_and_line(tmp_path):
    cli = {p.name: p.default for p in main.commands["export"].params if isinstance(p, Option)}
    cli.pop("help", None), cli.pop("output")
    api_keywords = {
        p.name: p.default
        for p in inspect.signature(api.export).parameters.values()
        if p.kind == p.KEYWORD_ONLY and p.name != "export"  # the API's ExportOptions object
    }
    assert cli == api_keywords == {f.name: f.default for f in dataclasses.fields(ExportOptions)}
    source = write_jsonl(tmp_path / "s.jsonl", [_selected("a", "A"), {"prompt": "b"}])
    result = CliRunner().invoke(main, ["export", "ifeval", str(source), "-o", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert f"{source}:2: has no `selected`" in result.output
    ok = CliRunner().invoke(
        main, ["export", "ifeval", str(source), "-o", str(tmp_path / "o"), "--on-error", "skip"]
    )
    assert ok.exit_code == 0 and "wrote 1 records" in ok.output and "1 bad records" in ok.output


def test_pairs_from_a_real_scored_file(tmp_path, tiny_model):
    """A real rerank on the tiny model: the pair is the best and worst scored candidate."""
    responses = ["Canberra is the capital.", "Sydney.", "I like trains.", ""]
    record = {"id": "cap", "prompt": "Capital of Australia?", "responses": responses}
    source = write_jsonl(tmp_path / "in.jsonl", [record])
    bon.score(source, tmp_path / "scored.jsonl", model=tiny_model, quiet=True)
    (record,) = read_jsonl(tmp_path / "scored.jsonl")
    values = [c["scores"]["flip-tokens"] for c in record["candidates"]]
    bon.export("pairs", tmp_path / "scored.jsonl", tmp_path / "pairs.jsonl")
    (pair,) = read_jsonl(tmp_path / "pairs.jsonl")
    assert pair["score_chosen"] == max(values) and pair["score_rejected"] == min(values)
    assert pair["chosen"] == responses[values.index(max(values))]
    assert pair["prompt"] == "Capital of Australia?"
