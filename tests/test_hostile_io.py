"""Hostile inputs through whole stages: each gets a clear file:line error or a sane result,
and none crashes the run or corrupts an output.

The model-free `longest` and `random` scorers stand in for a model wherever one adds nothing;
generation runs on the tiny random model.
"""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

import bon
from bon.codec import read_lines
from bon.entrypoints.cli import main
from bon.errors import InputError
from tests.conftest import read_jsonl, write_jsonl


def _cli(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def _score(source, out, **options):
    return bon.score(source, out, scorers=["longest"], quiet=True, **options)


def test_invalid_utf8_is_skipped_with_its_line_or_stops_the_run(tmp_path):
    source = tmp_path / "c.jsonl"
    good = json.dumps({"id": "a", "prompt": "p", "responses": ["x"]}).encode()
    source.write_bytes(good + b'\n{"id": "b", "prompt": "\xff\xfe", "responses": ["y"]}\n')
    out = tmp_path / "s.jsonl"
    report = _score(source, out, on_error="skip")
    assert (report.written, report.errors) == (1, 1)
    (entry,) = read_jsonl(tmp_path / "s.jsonl.errors.jsonl")
    assert entry["line"] == 2 and entry["error"] == "not valid UTF-8 (byte 0xff at column 24)"
    result = _cli("score", source, "-o", tmp_path / "t.jsonl", "--scorer", "longest", "-q")
    assert result.exit_code == 1
    assert f"{source}:2: not valid UTF-8 (byte 0xff at column 24)" in result.output


def test_a_10_mb_response_is_scored_and_selected(tmp_path):
    huge = "word " * 2_000_000
    source = write_jsonl(
        tmp_path / "c.jsonl", [{"id": "a", "prompt": "p", "responses": ["hi", huge]}]
    )
    out = tmp_path / "best.jsonl"
    report = bon.rerank(source, out, scorers=["longest"], quiet=True)
    assert report.written == 1
    (record,) = read_jsonl(out)
    assert record["selected"]["index"] == 1 and record["selected"]["text"] == huge


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ({"prompt": " \t\n "}, "`prompt` is empty"),
        (
            {"messages": [{"role": "user", "content": "   "}]},
            "the last user turn in `messages` is empty",
        ),
        ({"prompt": {"a": 1}}, "`prompt` must be a string, got dict"),
        ({"prompt": "a\ud800"}, r"`prompt` holds a lone surrogate \(\\ud800 at character 2\)"),
        ({"id": True, "prompt": "p"}, "`id` must be a non-empty string or an integer, got True"),
        ({"id": 2.5, "prompt": "p"}, "`id` must be a non-empty string or an integer, got 2.5"),
        ("[" * 50_000 + "]" * 50_000, "JSON nested too deeply to read"),
    ],
)
def test_unusable_prompts_are_named_by_file_and_line_before_any_model_loads(tmp_path, row, problem):
    source = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "fine"}, row])
    out = tmp_path / "c.jsonl"
    result = _cli("generate", source, "-o", out, "--model", tmp_path / "no-such-model", "-q")
    assert result.exit_code == 1
    assert f"{source}:2: " in result.output
    assert re.search(problem, result.output)
    assert not out.exists()


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        (
            {"prompt": "p", "candidates": [{"text": ["a", "b"]}]},
            "`candidates[0]` must be an object with a string `text`",
        ),
        (
            {"prompt": "p", "candidates": [{"text": {"a": 1}}]},
            "`candidates[0]` must be an object with a string `text`",
        ),
        ({"prompt": "p", "responses": [["a"]]}, "`responses` must be a list of strings"),
        ({"prompt": "p", "responses": "a"}, "`responses` must be a list of strings"),
    ],
)
def test_nested_json_where_text_belongs_is_named_by_file_and_line(tmp_path, row, problem):
    source = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "p", "responses": ["ok"]}, row])
    with pytest.raises(InputError) as caught:
        _score(source, tmp_path / "s.jsonl")
    assert (caught.value.line, caught.value.problem) == (2, problem)


def test_control_characters_and_nul_round_trip_through_generation(tmp_path, tiny_model):
    prompt = "Say\x00 this:\x07\x1b[31m red\x1b[0m\tand\u2028more\x7f"
    rows = [{"id": "ctl", "prompt": prompt, "note": "\x00\x01\x1f", "lone": "\udfff"}]
    source = write_jsonl(tmp_path / "p.jsonl", rows)
    out = tmp_path / "c.jsonl"
    report = bon.generate(source, out, model=tiny_model, n=2, max_new_tokens=4, quiet=True)
    assert report.written == 1
    ((_, record),) = read_lines(out)
    assert (record["prompt"], record["note"], record["lone"]) == (prompt, "\x00\x01\x1f", "\udfff")
    assert len(record["candidates"]) == 2
    assert b"\x00" not in out.read_bytes() and b"\x1b" not in out.read_bytes()


def test_ten_thousand_candidates_for_one_prompt(tmp_path):
    texts = [f"answer {i}" + "!" * (i % 97) for i in range(10_000)]
    source = write_jsonl(tmp_path / "c.jsonl", [{"id": "big", "prompt": "p", "responses": texts}])
    longest = texts.index(max(texts, key=len))
    out = tmp_path / "best.jsonl"
    assert bon.rerank(source, out, scorers=["longest"], quiet=True).written == 1
    assert read_jsonl(out)[0]["selected"]["index"] == longest
    scored = tmp_path / "s.jsonl"
    bon.score(source, scored, scorers=["random", "longest"], quiet=True)
    (record,) = read_jsonl(scored)
    assert len(record["candidates"]) == 10_000
    chosen = tmp_path / "chosen.jsonl"
    bon.select(scored, chosen, by="random", quiet=True)
    values = [c["scores"]["random"] for c in record["candidates"]]
    assert read_jsonl(chosen)[0]["selected"]["index"] == values.index(max(values))


def test_nan_scores_from_elsewhere_never_win_and_never_reach_the_output(tmp_path):
    source = tmp_path / "s.jsonl"
    rows = [
        '{"id": "a", "prompt": "p", "candidates": [{"text": "x", "scores": {"flip": NaN}}, '
        '{"text": "y", "scores": {"flip": -Infinity}}]}',
        '{"id": "b", "prompt": "p", "candidates": [{"text": "x", "scores": {"flip": NaN}}, '
        '{"text": "y", "scores": {"flip": null}}]}',
    ]
    source.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "sel.jsonl"
    result = _cli("select", source, "-o", out, "--keep-all")
    assert result.exit_code == 0, result.output
    assert "1 records had no finite score (selected is null)" in result.output
    text = out.read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    first, second = (json.loads(line) for line in text.splitlines())
    assert first["selected"] == {"index": 1, "text": "y", "score": None, "by": "flip"}
    assert first["candidates"][0]["scores"]["flip"] is None
    assert second["selected"] == {"index": None, "text": None, "score": None, "by": "flip"}
    again = bon.select(source, out, keep_all=True, quiet=True)  # a resume counts it too
    assert (again.resumed, again.unselected) == (2, 1)
