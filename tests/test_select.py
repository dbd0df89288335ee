import math

import pytest

from bon.errors import ConfigError
from bon.select import SelectOptions, best_index, select_record


def test_ties_go_to_the_lowest_index():
    assert best_index([0.2, 0.7, 0.7, 0.1]) == 1
    assert best_index([0.5, 0.5]) == 0


def test_lower_is_better_direction():
    assert best_index([3.0, 1.0, 1.0, 2.0], higher_is_better=False) == 1


def test_nan_never_wins():
    assert best_index([math.nan, -5.0]) == 1
    assert best_index([math.nan, 5.0], higher_is_better=False) == 1


def _scored():
    return {
        "id": "a",
        "prompt": "p",
        "candidates": [
            {"text": "x", "scores": {"flip": 0.1}},
            {"text": "y", "scores": {"flip": 0.9}},
        ],
    }


def test_select_record_drops_candidates_unless_keep_all():
    out = select_record(_scored(), SelectOptions())
    assert out["selected"] == {"index": 1, "text": "y", "score": 0.9, "by": "flip"}
    assert "candidates" not in out
    kept = select_record(_scored(), SelectOptions(keep_all=True))
    assert len(kept["candidates"]) == 2


def test_select_options_are_validated():
    with pytest.raises(ConfigError, match="`by` must be a score name, got ''"):
        SelectOptions(by="")


def test_nan_loses_to_minus_infinity_which_is_a_real_value():
    assert best_index([math.nan, -math.inf]) == 1
    assert best_index([math.nan, math.inf], higher_is_better=False) == 1
    assert best_index([-math.inf, math.nan, -math.inf]) == 0


def test_among_all_nan_values_the_lowest_index_wins():
    assert best_index([math.nan, None, math.nan]) == 0
    assert best_index([None, 2.0]) == 1


def test_a_record_without_a_finite_score_is_selected_as_null():
    record = _scored()
    record["candidates"][0]["scores"]["flip"] = math.nan
    record["candidates"][1]["scores"]["flip"] = None  # how bon writes NaN to JSON
    out = select_record(record, SelectOptions())
    assert out["selected"] == {"index": None, "text": None, "score": None, "by": "flip"}


def test_without_by_the_first_recorded_score_and_its_direction_decide():
    record = {
        "prompt": "p",
        "scoring": {"shortest": {}, "longest": {}},
        "candidates": [
            {"text": "long answer", "scores": {"shortest": 11.0, "longest": 11.0}},
            {"text": "short", "scores": {"shortest": 5.0, "longest": 5.0}},
        ],
    }
    selected = select_record(record, SelectOptions())["selected"]
    assert (selected["index"], selected["by"]) == (1, "shortest")  # lower is better
    assert select_record(record, SelectOptions(by="longest"))["selected"]["index"] == 0
