"""Selectors: pick the best candidate of a scored record.

Tie rule: among equal best scores the lowest candidate index wins, so a selection never depends
on anything but the scores and their order. A NaN (or null) score never wins while another
score exists; a record with no other score is selected as null. A candidate pruned while it
decoded (it carries `pruned_at`, see `bon.prune`) counts as NaN whatever its scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bon import cost
from bon.options import option, validate
from bon.records import is_pruned
from bon.scorers import ScoreOptions, higher_is_better

DEFAULT_SCORE = ScoreOptions().scorers[0]


@dataclass(frozen=True)
class SelectOptions:
    """Options of the selector."""

    by: str | None = option(
        None,
        "Score to select by (a key of each candidate's `scores`); unset: the first scorer run "
        "(in `bon select`: the first score the input records hold).",
        check=lambda v: v is None or (isinstance(v, str) and bool(v)),
        constraint="a score name",
    )
    keep_all: bool = option(False, "Keep all candidates beside the selection.")
    adaptive: bool = option(
        False,
        "bon run only: sample each prompt in waves (2, 4, 8, ... up to --n candidates) and stop "
        "once its pick is settled: under vote when the leading answer's lead exceeds the "
        "samples still to come; under another score when the best of the samples to come is "
        "expected to beat the best so far by less than --settle standard deviations of the "
        "record's scores (bon.adaptive). "
        "Needs the hf engine's seeded sampling; not for random or judge-pairwise/listwise.",
    )
    settle: float = option(
        0.3,
        "bon run --adaptive: a record settles once the best of its samples still to come is "
        "expected to beat its best score so far by less than this many standard deviations of "
        "its current scores (the expected improvement under a normal fit; smaller spends more "
        "samples).",
        check=lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0,
        constraint="a number > 0",
    )

    def __post_init__(self) -> None:
        validate(self)

    def score_for(self, record: Any) -> str:
        """The score to select `record` by: `by`, else the first score the record holds, else
        the default scorer's."""
        return self.by or first_score(record) or DEFAULT_SCORE


def first_score(record: Any) -> str | None:
    """The first scorer a scored record names (its `scoring` block, else its first candidate's
    `scores`), or None."""
    if not isinstance(record, dict):
        return None
    for names in (record.get("scoring"), _first_scores(record)):
        if isinstance(names, dict) and names:
            return str(next(iter(names)))
    return None


def _first_scores(record: dict) -> Any:
    candidates = record.get("candidates")
    if isinstance(candidates, list) and candidates and isinstance(candidates[0], dict):
        return candidates[0].get("scores")
    return None


def best_index(values: Sequence[float | None], higher_is_better: bool = True) -> int:
    """Index of the best value; ties go to the lowest index.

    NaN (or None) ranks below every number, infinities included, so it never wins while a
    number exists; among values that are all NaN the lowest index wins (`select_record`
    writes such a record's selection as null).
    """
    sign = 1.0 if higher_is_better else -1.0

    def key(i: int) -> tuple[bool, float, int]:
        value = values[i]
        if _missing(value):
            return (False, 0.0, -i)
        return (True, sign * value, -i)  # type: ignore[operator]

    return max(range(len(values)), key=key)


def _missing(value: float | None) -> bool:
    return value is None or math.isnan(value)


def select_record(record: dict, options: SelectOptions) -> dict:
    """Return `record` with `selected` added (and its candidates dropped unless `keep_all`),
    in the direction the score's scorer declares, and `cost.total`, the sum of what generating
    and scoring it cost (when it carries those costs; `bon.cost.total`).

    A record whose scores are all NaN or null gets `selected` with null index, text and score.
    """
    name = options.score_for(record)
    candidates = record["candidates"]
    # A candidate pruned while it decoded (`pruned_at`, bon.prune) is never selected.
    values = [math.nan if is_pruned(c) else _as_float(c["scores"][name]) for c in candidates]
    index = None if all(map(_missing, values)) else best_index(values, higher_is_better(name))
    out = dict(record)
    if not options.keep_all:
        out.pop("candidates", None)
        out.pop("responses", None)
    out["selected"] = {
        "index": index,
        "text": None if index is None else candidates[index]["text"],
        "score": None if index is None else values[index],
        "by": name,
    }
    spent = cost.total(out)
    return out if spent is None else cost.with_part(out, cost.TOTAL, spent)


def _as_float(value: float | None) -> float:
    return math.nan if value is None else float(value)
