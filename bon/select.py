"""Selectors: pick the best candidate of a scored record.

Tie rule: among equal best scores the lowest candidate index wins, so a selection never depends
on anything but the scores and their order. A NaN (or null) score never wins while another
score exists; a record with no other score is selected as null.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bon.errors import require


@dataclass(frozen=True)
class SelectOptions:
    """Options of the selector.

    Attributes:
        by: the score to rank by (a key of each candidate's `scores`).
        keep_all: keep the candidate list in the output instead of only the selection.
    """

    by: str = "flip"
    keep_all: bool = False

    def __post_init__(self) -> None:
        require(bool(self.by), "by", "a score name", self.by)


def best_index(values: Sequence[float | None], higher_is_better: bool = True) -> int | None:
    """Index of the best value; ties go to the lowest index.

    NaN (or None) never wins while any other value exists; infinities are real values. Returns
    None when every value is NaN.
    """
    sign = 1.0 if higher_is_better else -1.0
    finite = [i for i, v in enumerate(values) if not _missing(v)]
    if not finite:
        return None
    return max(finite, key=lambda i: (sign * values[i], -i))


def _missing(value: float | None) -> bool:
    return value is None or math.isnan(value)


def select_record(record: dict, options: SelectOptions, higher_is_better: bool = True) -> dict:
    """Return `record` with `selected` added (and its candidates dropped unless `keep_all`).

    A record whose scores are all NaN or null gets `selected` with null index, text and score.
    """
    candidates = record["candidates"]
    values = [_as_float(c["scores"][options.by]) for c in candidates]
    index = best_index(values, higher_is_better)
    out = dict(record)
    if not options.keep_all:
        out.pop("candidates", None)
        out.pop("responses", None)
    out["selected"] = {
        "index": index,
        "text": None if index is None else candidates[index]["text"],
        "score": None if index is None else values[index],
        "by": options.by,
    }
    return out


def _as_float(value: float | None) -> float:
    return math.nan if value is None else float(value)
