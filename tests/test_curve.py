"""Best-of-N' curves: the closed form against brute force over every subset, and the file API."""

from __future__ import annotations

import itertools
import json
import math
import random
import struct

import pytest

from bon.errors import ConfigError, InputError
from bon.evals.curve import (
    curve,
    curve_file,
    expected_best,
    pick_probabilities,
    selection_order,
    sizes_up_to,
)
from bon.select import best_index
from tests.conftest import write_jsonl


def brute_force(metric: list[float], scores: list, k: int, higher: bool = True) -> float:
    """Mean metric of the selector's pick over every size-k subset, using bon's real selector."""
    picks = []
    for subset in itertools.combinations(range(len(metric)), k):
        values = [math.nan if scores[i] is None else scores[i] for i in subset]
        picks.append(metric[subset[best_index(values, higher)]])
    return math.fsum(picks) / len(picks)


def random_record(rng: random.Random, n: int, names=("a", "b")) -> dict:
    """Scores from a small set (so ties are common), with NaN and None mixed in."""
    pool = [0.0, 1.0, 2.0, 2.0, 3.0, math.nan, None]
    return {
        "id": f"r{rng.random()}",
        "candidates": [
            {
                "text": "x" * rng.randint(1, 9),
                "m": rng.choice([0.0, 0.25, 1.0, rng.random()]),
                "scores": {name: rng.choice(pool) for name in names},
            }
            for _ in range(n)
        ],
    }


def metric_of(record: dict) -> list[float]:
    return [c["m"] for c in record["candidates"]]


def scores_of(record: dict, name: str) -> list:
    return [c["scores"][name] for c in record["candidates"]]


@pytest.mark.parametrize("seed", range(40))
def test_closed_form_equals_brute_force_for_every_size(seed):
    rng = random.Random(seed)
    record = random_record(rng, rng.randint(1, 8))
    metric, scores = metric_of(record), scores_of(record, "a")
    for higher in (True, False):
        order = selection_order(scores, higher)
        for k in range(1, len(metric) + 1):
            assert expected_best(metric, order, k) == pytest.approx(
                brute_force(metric, scores, k, higher), abs=1e-12
            )


def test_curve_lines_equal_brute_force_averaged_over_records():
    rng = random.Random(7)
    records = [random_record(rng, 8) for _ in range(12)]
    result = curve(records, "m")
    assert result.sizes == [1, 2, 4, 8]
    assert result.records == 12
    assert set(result.lines) == {"oracle", "random", "a", "b"}
    for j, k in enumerate(result.sizes):
        for name in ("a", "b"):
            want = [brute_force(metric_of(r), scores_of(r, name), k) for r in records]
            assert result.lines[name][j] == pytest.approx(sum(want) / len(want), abs=1e-12)
        oracle = [brute_force(metric_of(r), metric_of(r), k) for r in records]
        assert result.lines["oracle"][j] == pytest.approx(sum(oracle) / len(oracle), abs=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_oracle_bounds_every_line_and_sizes_one_and_n(seed):
    rng = random.Random(100 + seed)
    records = [random_record(rng, 6) for _ in range(5)]
    result = curve(records, "m")
    mean = sum(sum(metric_of(r)) / 6 for r in records) / len(records)
    assert result.sizes == [1, 2, 4, 6]
    assert result.lines["random"] == pytest.approx([mean] * 4)
    for name, values in result.lines.items():
        assert values[0] == pytest.approx(mean), name
        for j, value in enumerate(values):
            assert value <= result.lines["oracle"][j] + 1e-12, (name, j)
    for name in ("a", "b"):
        best = [
            metric_of(r)[best_index([math.nan if s is None else s for s in scores_of(r, name)])]
            for r in records
        ]
        assert result.lines[name][-1] == pytest.approx(sum(best) / len(best))


def test_direction_of_shortest_is_respected():
    texts = ["a long answer here", "mid answer", "short"]
    records = [
        {
            "id": f"p{i}",
            "candidates": [
                {
                    "text": t,
                    "label": int(t == "short"),
                    "scores": {"shortest": len(t), "longest": len(t)},
                }
                for t in texts
            ],
        }
        for i in range(3)
    ]
    result = curve(records, "label")
    assert result.sizes == [1, 2, 3]
    # The shortest text is the lone label 1: shortest picks it whenever it is in the subset.
    assert result.lines["shortest"] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert result.lines["longest"] == pytest.approx([1 / 3, 0.0, 0.0])
    assert result.lines["oracle"] == pytest.approx([1 / 3, 2 / 3, 1.0])


def test_selection_order_matches_the_selector_and_puts_missing_last():
    assert selection_order([1.0, 3.0, 3.0, None, math.nan, 0.5]) == [1, 2, 0, 5, 3, 4]
    assert selection_order([1.0, 3.0, 3.0, None, 0.5], higher_is_better=False) == [4, 0, 1, 2, 3]
    assert selection_order([None, math.nan, None]) == [0, 1, 2]
    values = [2.0, 5.0, 5.0, 1.0]
    assert selection_order(values)[0] == best_index(values)
    assert selection_order(values, False)[0] == best_index(values, False)


def test_pick_probabilities_sum_to_one_and_reject_bad_sizes():
    for n in range(1, 9):
        for k in range(1, n + 1):
            weights = pick_probabilities(n, k)
            assert math.fsum(weights) == pytest.approx(1.0)
            assert weights[n - k + 1 :] == [0.0] * (k - 1)
    assert pick_probabilities(4, 2) == pytest.approx([3 / 6, 2 / 6, 1 / 6, 0.0])
    with pytest.raises(ConfigError, match=r"`k` must be in \[1, 3\], got 4"):
        pick_probabilities(3, 4)


def test_sizes_are_powers_of_two_and_n():
    assert sizes_up_to(1) == [1]
    assert sizes_up_to(2) == [1, 2]
    assert sizes_up_to(5) == [1, 2, 4, 5]
    assert sizes_up_to(16) == [1, 2, 4, 8, 16]


def test_records_of_different_n_use_sizes_up_to_the_smallest():
    rng = random.Random(3)
    records = [random_record(rng, 8), random_record(rng, 5), random_record(rng, 7)]
    result = curve(records, "m", by=["a"])
    assert result.sizes == [1, 2, 4, 5]
    assert set(result.lines) == {"oracle", "random", "a"}
    assert "5 to 8 candidates" in result.notes[0]
    assert "Note: records have 5 to 8" in result.to_markdown()
    want = [brute_force(metric_of(r), scores_of(r, "a"), 5) for r in records]
    assert result.lines["a"][-1] == pytest.approx(sum(want) / 3)


def test_dotted_metric_with_booleans_and_a_score_named_random():
    records = [
        {
            "id": "q",
            "candidates": [
                {"text": "a", "ifeval": {"prompt_strict": False}, "scores": {"random": 0.9}},
                {"text": "b", "ifeval": {"prompt_strict": True}, "scores": {"random": 0.1}},
            ],
        }
    ]
    result = curve(records, "ifeval.prompt_strict")
    assert result.lines["random"] == [0.5, 0.5]
    assert result.lines["random (scorer)"] == [0.5, 0.0]
    assert result.lines["oracle"] == [0.5, 1.0]


@pytest.mark.parametrize(
    ("candidate", "metric", "message"),
    [
        (
            {"text": "a", "scores": {"s": 1}},
            "label",
            r"'bad-1'.*`candidates\[1\]\.label` is missing",
        ),
        ({"text": "a", "label": "yes", "scores": {"s": 1}}, "label", r"must be a finite number"),
        ({"text": "a", "x": {"y": None}, "scores": {"s": 1}}, "x.y", r"got None"),
        ({"text": "a", "label": math.nan, "scores": {"s": 1}}, "label", r"got nan"),
        ({"text": "a", "label": 1}, "label", r"`candidates\[1\]\.scores\.s` is missing"),
        ({"text": "a", "label": 1, "scores": {"s": "hi"}}, "label", r"must be a number"),
    ],
)
def test_bad_records_name_the_record(candidate, metric, message):
    good = {"text": "b", "label": 0, "x": {"y": 1}, "scores": {"s": 0.5}}
    records = [{"id": "bad-1", "candidates": [good, candidate]}]
    with pytest.raises(InputError, match=message):
        curve(records, metric, by=["s"])


def test_curve_file_errors_name_file_and_line(tmp_path):
    path = write_jsonl(
        tmp_path / "scored.jsonl",
        [
            {"id": "ok", "candidates": [{"text": "a", "label": 1, "scores": {"s": 1}}]},
            {"id": "empty", "candidates": []},
        ],
    )
    with pytest.raises(InputError, match=r"scored\.jsonl:2: record 'empty': needs a non-empty"):
        curve_file(path, "label")
    bad = write_jsonl(tmp_path / "bad.jsonl", ["{not json"])
    with pytest.raises(InputError, match=r"bad\.jsonl:1: not valid JSON"):
        curve_file(bad, "label")
    with pytest.raises(ConfigError, match="input is empty"):
        curve_file(write_jsonl(tmp_path / "none.jsonl", []), "label")


def test_curve_file_writes_tables_json_and_a_png(tmp_path):
    rng = random.Random(11)
    path = write_jsonl(tmp_path / "scored.jsonl", [random_record(rng, 4) for _ in range(6)])
    png = tmp_path / "plots" / "curve.png"
    result = curve_file(path, "m", by=["b", "a"], plot=png)
    assert list(result.lines) == ["oracle", "random", "b", "a"]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (768, 504)
    table = result.to_markdown()
    assert "| line | N'=1 | N'=2 | N'=4 |" in table
    assert f"| oracle | {result.lines['oracle'][0]:.3f} |" in table
    assert json.loads(json.dumps(result.to_dict())) == {
        "metric": "m",
        "sizes": [1, 2, 4],
        "lines": result.lines,
        "records": 6,
        "notes": [],
    }


def test_by_must_name_each_score_once():
    rng = random.Random(1)
    with pytest.raises(ConfigError, match="`by` must name each score once"):
        curve([random_record(rng, 3)], "m", by=["a", "a"])
