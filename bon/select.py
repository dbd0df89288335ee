"""Selectors: pick the best candidate of a scored record.

Tie rule: among equal best scores the lowest candidate index wins, so a selection never depends
on anything but the scores and their order. A NaN (or null) score never wins while another
score exists; a record with no other score is selected as null.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from bon.options import option, validate

DEFAULT_SCORE = "flip"


@dataclass(frozen=True)
class SelectOptions:
    """Options of the selector."""

    by: str | None = option(
        None,
        "Score to select by (a key of each candidate's `scores`); unset: the first scorer run "
        f"(`{DEFAULT_SCORE}` in `bon select`).",
        check=lambda v: v is None or (isinstance(v, str) and bool(v)),
        constraint="a score name",
    )
    keep_all: bool = option(False, "Keep all candidates beside the selection.")

    def __post_init__(self) -> None:
        validate(self)

    @property
    def score(self) -> str:
        """The score selected by."""
        return self.by or DEFAULT_SCORE


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
    values = [_as_float(c["scores"][options.score]) for c in candidates]
    index = best_index(values, higher_is_better)
    out = dict(record)
    if not options.keep_all:
        out.pop("candidates", None)
        out.pop("responses", None)
    out["selected"] = {
        "index": index,
        "text": None if index is None else candidates[index]["text"],
        "score": None if index is None else values[index],
        "by": options.score,
    }
    return out


def _as_float(value: float | None) -> float:
    return math.nan if value is None else float(value)
