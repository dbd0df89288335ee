"""Preference accuracy: hand-built scored records with known answers, and eval_pref end to end."""

from __future__ import annotations

import json
import math

import pytest

from bon import api
from bon.errors import ConfigError, InputError
from bon.evals.pref import accuracy, eval_pref, judge, labelled
from tests.conftest import write_jsonl


def item(labels, scores, name="s", subset=None, id=None):
    """A scored record: one candidate per (label, score)."""
    record = {
        "candidates": [
            {"text": f"c{i}", "label": label, "scores": {name: value}}
            for i, (label, value) in enumerate(zip(labels, scores, strict=True))
        ]
    }
    if subset is not None:
        record["subset"] = subset
    if id is not None:
        record["id"] = id
    return record


def test_accuracy_counts_ties_as_wrong():
    records = [
        item([1, 0], [0.9, 0.1]),  # right
        item([1, 0, 0], [0.5, 0.5, 0.1]),  # tie with a rejected one: wrong
        item([1, 0], [0.2, 0.8]),  # wrong
        item([0, 1, 0], [0.1, 0.7, 0.6]),  # right
    ]
    report = accuracy(records, ["s"], bootstrap=0)
    cell = report.overall.scorers["s"]
    assert cell.accuracy == 0.5
    assert cell.ties == 0.25
    assert (cell.low, cell.high) == (None, None)
    assert report.overall.items == 4
    assert report.overall.random == pytest.approx((1 / 2 + 1 / 3 + 1 / 2 + 1 / 3) / 4)
    assert report.subsets == {}


def test_constant_scorer_gets_zero_not_chance():
    records = [item([1, 0], [1.0, 1.0]), item([0, 1, 0], [3, 3, 3])]
    cell = accuracy(records, ["s"], bootstrap=0).overall.scorers["s"]
    assert (cell.accuracy, cell.ties) == (0.0, 1.0)


def test_direction_of_shortest_is_respected():
    # The same lengths under `shortest` (lower is better) and under a higher-is-better name.
    records = [item([1, 0], [3, 10], "shortest"), item([0, 1], [12, 5], "shortest")]
    assert accuracy(records, ["shortest"], bootstrap=0).overall.scorers["shortest"].accuracy == 1
    flipped = [item([1, 0], [3, 10], "length"), item([0, 1], [12, 5], "length")]
    assert accuracy(flipped, ["length"], bootstrap=0).overall.scorers["length"].accuracy == 0


def test_several_preferred_need_one_strictly_above_every_rejected():
    assert judge([True, True, False], [0.9, 0.1, 0.5]) == (True, False)
    assert judge([True, True, False], [0.5, 0.1, 0.5]) == (False, True)
    assert judge([True, True, False], [0.2, 0.1, 0.5]) == (False, False)


def test_missing_and_nan_scores_are_never_preferred():
    assert judge([True, False], [None, -5.0]) == (False, False)
    assert judge([True, False], [math.nan, 0.0]) == (False, False)
    assert judge([True, False], [0.0, math.nan]) == (True, False)
    assert judge([True, False], [math.nan, None]) == (False, True)
    assert judge([True, False], [None, 1.0], higher=False) == (False, False)


def test_chosen_rejected_become_labelled_candidates():
    record = {"id": "x", "prompt": "p", "chosen": "good", "rejected": ["bad", "worse"], "k": 1}
    assert labelled(record) == {
        "id": "x",
        "prompt": "p",
        "k": 1,
        "candidates": [
            {"text": "good", "label": 1},
            {"text": "bad", "label": 0},
            {"text": "worse", "label": 0},
        ],
    }
    scored = labelled(record)
    for candidate, value in zip(scored["candidates"], [0.3, 0.1, 0.2], strict=True):
        candidate["scores"] = {"s": value}
    assert accuracy([scored], ["s"], bootstrap=0).overall.scorers["s"].accuracy == 1.0


def test_per_subset_split_and_baseline():
    records = [
        item([1, 0], [1, 0], subset="chat"),
        item([1, 0], [0, 1], subset="chat"),
        item([1, 0, 0, 0], [1, 0, 0, 0], subset="code"),
        item([1, 0], [1, 0]),  # no subset: counted overall only
    ]
    report = accuracy(records, ["s"], bootstrap=0)
    assert list(report.subsets) == ["chat", "code"]
    assert report.subsets["chat"].items == 2
    assert report.subsets["chat"].scorers["s"].accuracy == 0.5
    assert report.subsets["code"].scorers["s"].accuracy == 1.0
    assert report.subsets["code"].random == 0.25
    assert report.overall.items == 4
    assert report.overall.scorers["s"].accuracy == 0.75


def many_items(n=60):
    """Items that `a` gets right 2 times in 3, and `b` every other time."""
    return [
        {
            "candidates": [
                {"text": "p", "label": 1, "scores": {"a": float(i % 3 != 0), "b": i % 2}},
                {"text": "r", "label": 0, "scores": {"a": 0.5, "b": 0.5}},
            ]
        }
        for i in range(n)
    ]


def test_bootstrap_interval_contains_estimate_and_is_reproducible():
    report = accuracy(many_items(), ["a", "b"], bootstrap=500, bootstrap_seed=3)
    a = report.overall.scorers["a"]
    assert a.accuracy == pytest.approx(2 / 3)
    assert a.low < a.accuracy < a.high
    assert a.low > 0.4 and a.high < 0.85
    again = accuracy(many_items(), ["a", "b"], bootstrap=500, bootstrap_seed=3)
    assert again.to_dict() == report.to_dict()
    other_seed = accuracy(
        many_items(), ["a", "b"], bootstrap=500, bootstrap_seed=4
    ).overall.scorers["a"]
    assert (other_seed.low, other_seed.high) != (a.low, a.high)
    # A scorer's interval does not depend on which other scorers are evaluated with it.
    alone = accuracy(many_items(), ["a"], bootstrap=500, bootstrap_seed=3).overall.scorers["a"]
    assert alone == a


def test_degenerate_records_are_skipped_and_reported():
    records = [item([1, 0], [1, 0]), item([1, 1], [1, 0], id="all-good"), item([0, 0], [1, 0])]
    report = accuracy(records, ["s"], bootstrap=0)
    assert report.overall.items == 1
    assert [(e.line, e.problem) for e in report.skipped] == [
        (2, "record 'all-good': no non-preferred candidate (label 0): nothing to beat"),
        (3, "no preferred candidate (label 1): nothing to find"),
    ]
    assert "Skipped 2 record(s)" in report.to_markdown()
    assert report.to_dict()["skipped"][1] == {
        "file": "<records>",
        "line": 3,
        "error": "no preferred candidate (label 1): nothing to find",
    }


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"id": "q", "candidates": [{"text": "a", "label": 2}]}, r"record 'q'.*label` must be 1"),
        ({"candidates": [{"text": "a"}]}, r"`candidates\[0\]\.label` must be 1 .* got None"),
        ({"chosen": "a"}, r"`rejected` must be a string or a list of strings, got None"),
        ({"chosen": "a", "rejected": [1]}, r"`rejected` must be a string or a list"),
        ({"chosen": "a", "rejected": "b", "candidates": []}, "keep one of the two forms"),
        ({"prompt": "p"}, "needs `candidates`"),
        ({"candidates": [{"text": "a", "label": 1}, {"text": "b", "label": 0}]}, r"scores\.s` is"),
        (item([1, 0], ["high", 0]), r"`candidates\[0\]\.scores\.s` must be a number, got 'high'"),
    ],
)
def test_malformed_records_raise_with_position(record, message):
    with pytest.raises(InputError, match=r"<records>:2: .*" + message):
        accuracy([item([1, 0], [1, 0]), record], ["s"], bootstrap=0)


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="`bootstrap` must be an integer >= 0, got -1"):
        accuracy([item([1, 0], [1, 0])], ["s"], bootstrap=-1)
    with pytest.raises(ConfigError, match="`by` must be at least one score name"):
        accuracy([item([1, 0], [1, 0])], [])
    with pytest.raises(ConfigError, match="no records with both"):
        accuracy([item([1, 1], [1, 0])], ["s"])


def test_markdown_and_dict():
    records = [item([1, 0], [1, 0], subset="x"), item([1, 0], [0, 1], subset="y")] * 5
    report = accuracy(records, ["s"], bootstrap=200, bootstrap_seed=0)
    table = report.to_markdown()
    header, _, row, baseline = table.splitlines()[:4]
    assert header == "| scorer | all (n=10) | x (n=5) | y (n=5) | ties |"
    cell = report.overall.scorers["s"]
    assert row == f"| s | 0.500 [{cell.low:.3f}, {cell.high:.3f}] | 1.000 [1.000, 1.000] | " + (
        "0.000 [0.000, 0.000] | 0.000 |"
    )
    assert baseline == "| uniform pick | 0.500 | 0.500 | 0.500 | - |"
    data = json.loads(json.dumps(report.to_dict()))
    assert data["subsets"]["x"]["scorers"]["s"]["accuracy"] == 1.0
    assert data["overall"]["items"] == 10 and data["bootstrap"] == 200


def pairs_file(path, rows):
    return write_jsonl(path, rows)


def test_eval_pref_with_controls_end_to_end(tmp_path):
    chat = pairs_file(
        tmp_path / "chat.jsonl",
        [
            {"id": "c1", "prompt": "Say hi", "chosen": "Hello there, friend!", "rejected": "hi"},
            {"id": "c2", "prompt": "Say bye", "chosen": "bye", "rejected": ["goodbye now", "ok"]},
            {"id": "c3", "prompt": "Yes?", "chosen": "yes", "rejected": "yes"},
            {"id": "c4", "prompt": "No?", "chosen": [], "rejected": "no"},
        ],
    )
    code = pairs_file(
        tmp_path / "code.jsonl",
        [
            {
                "id": "k1",
                "prompt": "Add",
                "subset": "math",
                "candidates": [{"text": "1 + 1 = 2", "label": 1}, {"text": "3", "label": 0}],
            },
            {"id": "k2", "messages": [{"role": "user", "content": "Loop"}], "chosen": "for"},
        ],
    )
    with pytest.raises(InputError, match=r"code\.jsonl:2: `rejected` must be a string"):
        eval_pref([chat, code], scorers=("longest",))
    code = pairs_file(tmp_path / "code.jsonl", [json.loads(code.read_text().splitlines()[0])])
    report = eval_pref(
        [chat, code], scorers=("longest", "shortest", "random"), bootstrap=100, no_cache=True
    )
    assert report.overall.items == 4  # c4 has no chosen text
    assert [(e.path, e.line) for e in report.skipped] == [(str(chat), 4)]
    assert list(report.subsets) == ["chat", "math"]
    longest, shortest = report.overall.scorers["longest"], report.overall.scorers["shortest"]
    # c1 longer chosen; c2 a rejected is longer; c3 equal texts tie; k1 longer chosen.
    assert (longest.accuracy, longest.ties) == (0.5, 0.25)
    # c2: "bye" (3) vs "ok" (2): shorter rejected, so shortest is wrong there too.
    assert (shortest.accuracy, shortest.ties) == (0.0, 0.25)
    assert report.subsets["chat"].scorers["longest"].accuracy == pytest.approx(1 / 3)
    assert report.subsets["math"].scorers["longest"].accuracy == 1.0
    assert report.overall.random == pytest.approx((1 / 2 + 1 / 3 + 1 / 2 + 1 / 2) / 4)
    # The random control's draw depends on the text only: it ties on equal texts (c3) alone.
    assert report.overall.scorers["random"].ties == 0.25


def test_eval_pref_rejects_bad_input_with_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", [{"id": "1", "chosen": "x", "rejected": "y"}])
    with pytest.raises(InputError, match=r"a\.jsonl:1: needs exactly one of `prompt`"):
        eval_pref(path, scorers=("longest",))
    good = {"id": "1", "prompt": "p", "chosen": "x", "rejected": "y"}
    other = write_jsonl(tmp_path / "b.jsonl", [good])
    write_jsonl(path, [good])
    with pytest.raises(InputError, match=r"b\.jsonl:1: duplicate id '1' \(first at .*a\.jsonl:1\)"):
        eval_pref([path, other], scorers=("longest",))
    with pytest.raises(ConfigError, match="unknown option"):
        eval_pref(path, scorers=("longest",), colour="red")
    empty = write_jsonl(tmp_path / "c.jsonl", [{**good, "chosen": []}])
    with pytest.raises(ConfigError, match="no usable records"):
        eval_pref(empty, scorers=("longest",))


def test_eval_pref_flip_on_tiny_model_matches_accuracy_of_its_scores(tiny_model, tmp_path):
    rows = [
        {"id": "a", "prompt": "Name a fruit.", "chosen": "Apple.", "rejected": "Blue whale."},
        {"id": "b", "prompt": "Say two.", "chosen": "2", "rejected": ["three", "Paris"]},
        {"id": "c", "prompt": "Greet me.", "chosen": "Hello!", "rejected": "Seven."},
    ]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    options = {"model": tiny_model, "max_new_tokens": 6, "cache_path": str(tmp_path / "c.sqlite")}
    report = eval_pref(path, scorers=("flip",), bootstrap=50, **options)
    assert report.scorers == ["flip"] and report.overall.items == 3
    # The same scores again (from the cache), through the records API: the same report.
    scored = api.score_records([labelled(r) for r in rows], scorers=("flip",), **options)
    assert all(isinstance(c["scores"]["flip"], float) for r in scored for c in r["candidates"])
    assert accuracy(scored, ["flip"], bootstrap=50).to_dict() == report.to_dict()
