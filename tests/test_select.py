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
