"""Preference accuracy of scorers on labelled candidates (RewardBench-style).

An item is one record whose candidates carry `label` 1 (preferred) or 0, or that has `chosen`
and `rejected` (strings or lists of strings), converted to labelled candidates. A scorer is right
on an item when a preferred candidate scores strictly better, in the scorer's own direction, than
every non-preferred one: the selector would pick a preferred candidate with no non-preferred one
tied with it. Ties count as wrong, so a constant scorer scores 0 rather than chance; a missing or
NaN score is worse than every number. The "tie rate" is the share of items lost to such a tie.

The random baseline is the expected accuracy of a uniform pick: the mean share of preferred
candidates. Intervals are 95% percentile bootstraps over items, seeded; every scorer sees the
same resamples, so two scorers' intervals come from paired draws.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bon import records as shapes
from bon.codec import read_lines
from bon.errors import ConfigError, InputError, require
from bon.evals.report import fmt, markdown_table
from bon.options import fields, non_negative, option, own, refuse_unknown, validate
from bon.records import RecordProblem
from bon.runner import run_records
from bon.scorers import ScoreOptions, higher_is_better
from bon.scorers.base import keyword_fields
from bon.stages import score_stage

"""The default scorers of `bon score`."""

log = logging.getLogger(__name__)

RECORDS = "<records>"
# Bootstrap resamples are drawn in chunks of about this many indices, to bound memory. The chunks
# depend on the item count only, so a scorer's interval does not change with the other scorers.
_CHUNK = 1 << 20


@dataclass(frozen=True)
class PrefCell:
    """One scorer's result on one group of items.

    Attributes:
        accuracy: share of items the scorer gets right (ties wrong).
        low, high: the 95% bootstrap interval (None when `bootstrap` is 0).
        ties: share of items lost to a tie between the best preferred and non-preferred scores.
    """

    accuracy: float
    low: float | None
    high: float | None
    ties: float

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "low": self.low, "high": self.high, "ties": self.ties}


@dataclass(frozen=True)
class PrefGroup:
    """All scorers on one group of items (every item, or one subset).

    Attributes:
        items: how many items the group holds.
        random: the expected accuracy of a uniform pick (mean share of preferred candidates).
        scorers: each scorer's `PrefCell`.
    """

    items: int
    random: float
    scorers: dict[str, PrefCell]

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "random": self.random,
            "scorers": {name: cell.to_dict() for name, cell in self.scorers.items()},
        }


@dataclass
class PrefReport:
    """Preference accuracy per scorer, overall and per subset.

    Attributes:
        scorers: the scorers evaluated, in the order asked.
        overall: the result on every item.
        subsets: the result per value of the subset field, sorted by name.
        skipped: records left out, each an `InputError` saying where and why.
        bootstrap, seed: the bootstrap's resamples and seed.
    """

    scorers: list[str]
    overall: PrefGroup
    subsets: dict[str, PrefGroup]
    skipped: list[InputError] = field(default_factory=list)
    bootstrap: int = 1000
    seed: int = 0

    def to_markdown(self) -> str:
        """A table: a row per scorer (and the uniform-pick baseline), a column per subset."""
        groups = {"all": self.overall, **self.subsets}
        header = ["scorer", *(f"{name} (n={g.items})" for name, g in groups.items()), "ties"]
        rows = [
            [
                name,
                *(cell_text(g.scorers[name]) for g in groups.values()),
                fmt(self.overall.scorers[name].ties),
            ]
            for name in self.scorers
        ]
        rows.append(["uniform pick", *(fmt(g.random) for g in groups.values()), "-"])
        text = [markdown_table(header, rows), "", self._legend()]
        if self.skipped:
            first = self.skipped[0]
            text.append(
                f"Skipped {len(self.skipped)} record(s) with no preferred or no non-preferred "
                f"candidate (first: {first})."
            )
        return "\n".join(text)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-serialisable data."""
        return {
            "scorers": list(self.scorers),
            "overall": self.overall.to_dict(),
            "subsets": {name: group.to_dict() for name, group in self.subsets.items()},
            "skipped": [{"file": e.path, "line": e.line, "error": e.problem} for e in self.skipped],
            "bootstrap": self.bootstrap,
            "seed": self.seed,
        }

    def _legend(self) -> str:
        interval = (
            f"[95% percentile bootstrap over items, {self.bootstrap} resamples, seed {self.seed}]"
            if self.bootstrap
            else "(no bootstrap)"
        )
        return (
            f"Accuracy {interval}: a preferred candidate must score strictly better than every "
            "non-preferred one; ties count as wrong. `ties`: share of all items lost to a tie."
        )


def cell_text(cell: PrefCell) -> str:
    """A cell as `accuracy [low, high]` (the interval when there is one)."""
    if cell.low is None or cell.high is None:
        return fmt(cell.accuracy)
    return f"{fmt(cell.accuracy)} [{fmt(cell.low)}, {fmt(cell.high)}]"


@dataclass(frozen=True)
class Item:
    """One labelled record as the accuracy sees it: its subset, each candidate's label, and
    each named score of each candidate (None when missing)."""

    subset: str | None
    labels: list[bool]
    scores: dict[str, list[float | None]]


def labelled(record: Any) -> dict:
    """`record` with labelled `candidates`: `chosen`/`rejected` become candidates labelled 1/0.

    Raises `RecordProblem` when the labels are missing or malformed.
    """
    if not isinstance(record, dict):
        raise RecordProblem(f"expected a JSON object, got {type(record).__name__}")
    if "chosen" in record or "rejected" in record:
        return _from_pairs(record)
    candidates = record.get("candidates")
    if not isinstance(candidates, list):
        raise RecordProblem(
            "needs `candidates` (objects with `text` and `label` 1 or 0) or `chosen` and "
            "`rejected` (strings or lists of strings)"
        )
    for i, candidate in enumerate(candidates):
        label = candidate.get("label") if isinstance(candidate, dict) else None
        if isinstance(label, bool) or (isinstance(label, (int, float)) and label in (0, 1)):
            continue
        raise RecordProblem(f"`candidates[{i}].label` must be 1 (preferred) or 0, got {label!r}")
    return record


ONE_CANDIDATE = "one candidate only: nothing to compare it with"


def unlabelled_problem(record: dict) -> str | None:
    """Why a labelled record cannot be an item (one candidate, or no preferred or no
    non-preferred candidate)."""
    labels = [bool(c["label"]) for c in record["candidates"]]
    if len(labels) == 1:
        return ONE_CANDIDATE
    if not any(labels):
        return "no preferred candidate (label 1): nothing to find"
    if all(labels):
        return "no non-preferred candidate (label 0): nothing to beat"
    return None


@dataclass(frozen=True)
class PrefOptions:
    """How `bon eval pref` reads subsets and draws its intervals."""

    subset_field: str = option(
        "subset",
        "Record field that names an item's subset (a file's stem when absent).",
        check=lambda v: isinstance(v, str) and bool(v),
        constraint="a field name",
    )
    bootstrap: int = option(
        1000,
        "Bootstrap resamples (0: no intervals).",
        check=lambda v: non_negative(v) and isinstance(v, int),
        constraint="an integer >= 0",
    )
    bootstrap_seed: int = option(
        0,
        "Seed of the resamples.",
        check=lambda v: non_negative(v) and isinstance(v, int),
        constraint="an integer >= 0",
    )

    def __post_init__(self) -> None:
        validate(self)


def accuracy(
    records: Iterable[dict], by: Sequence[str], pref: PrefOptions | None = None, **options: Any
) -> PrefReport:
    """Preference accuracy of the scores named `by` on already-scored, labelled `records`;
    `pref`, or its fields as keywords, says how subsets are read and intervals drawn.

    Scores are read from `candidate["scores"][name]`. Records without both a preferred and a
    non-preferred candidate are skipped and listed in `PrefReport.skipped`; a malformed record
    raises `InputError` naming its position.
    """
    entries = []
    skipped = []
    for position, record in enumerate(records, start=1):
        try:
            record = labelled(record)
        except RecordProblem as problem:
            raise _error(RECORDS, position, record, str(problem)) from None
        why = unlabelled_problem(record)
        if why:
            skipped.append(_error(RECORDS, position, record, why))
        else:
            entries.append((RECORDS, position, record))
    return _report(entries, by, _pref(pref, options), skipped)


def eval_pref(
    input: str | Path | Sequence[str | Path],
    *,
    pref: PrefOptions | None = None,
    score: ScoreOptions | None = None,
    **options: Any,
) -> PrefReport:
    """Score the labelled records of `input` (one JSONL path or several) and report accuracy.

    `pref` (or its fields as keywords) says how subsets are read and intervals drawn; `score`
    (or `bon.api.score_records`' keywords: scorers, model, batch_size, ...) how to score. With
    several files, a record without a `subset_field` value takes its file's stem as its subset.
    `mix` (a selector file written by `bon fit`) adds the `mix` scorer's row when `scorers`
    does not name it.
    """
    paths = [input] if isinstance(input, (str, Path)) else list(input)
    require(len(paths) > 0, "input", "a JSONL path or a non-empty list of them", input)
    mine, rest = own(PrefOptions, options)
    pref = _pref(pref, mine)
    known = [*(f.name for f in fields(PrefOptions)), *(k.keyword for k in keyword_fields())]
    refuse_unknown(rest, known)
    values = {**(score or ScoreOptions()).keywords(), **rest}
    if values.get("mix") is not None and "mix" not in values["scorers"]:
        values["scorers"] = (*values["scorers"], "mix")
    score = ScoreOptions.from_keywords(**values)
    entries, skipped = read_labelled(paths, pref.subset_field)
    if not entries:
        raise ConfigError(
            f"no usable records in {', '.join(map(str, paths))}: each needs a preferred and a "
            "non-preferred candidate"
        )
    entries = score_entries(entries, score)
    return _report(entries, score.scorers, pref, skipped)


def _pref(pref: PrefOptions | None, values: dict[str, Any]) -> PrefOptions:
    """`pref` (or the defaults) with `values` set; an unknown name is a `ConfigError`."""
    refuse_unknown(values, (f.name for f in fields(PrefOptions)))
    return dataclasses.replace(pref or PrefOptions(), **values)


def score_entries(
    entries: list[tuple[str, int, dict]], options: ScoreOptions
) -> list[tuple[str, int, dict]]:
    """`entries` (file, line, record) with each record scored through bon's score stage and
    its cache."""
    scored = run_records(score_stage(options), [r for _, _, r in entries])
    return [(s, line, r) for (s, line, _), r in zip(entries, scored, strict=True)]


def read_labelled(
    paths: Sequence[str | Path], subset_field: str
) -> tuple[list[tuple[str, int, dict]], list[InputError]]:
    """Labelled, prompt-checked records of every file as (file, line, record), and the ones
    skipped (`unlabelled_problem`) as `InputError`s; a malformed record or an id used twice
    raises `InputError`."""
    entries: list[tuple[str, int, dict]] = []
    skipped: list[InputError] = []
    ids: dict[str, str] = {}
    for path in map(str, paths):
        for line, value in read_lines(path):
            if isinstance(value, InputError):
                raise value
            try:
                record = labelled(value)
                shapes.check_candidates(record)
            except RecordProblem as problem:
                raise InputError(path, line, str(problem)) from None
            why = unlabelled_problem(record)
            if why:
                skipped.append(InputError(path, line, why))
                continue
            if "id" in record:
                key = str(record["id"])
                if key in ids:
                    raise InputError(
                        path,
                        line,
                        f"duplicate id {key!r} (first at {ids[key]}); ids must be "
                        "unique across the input files",
                    )
                ids[key] = f"{path}:{line}"
            if len(paths) > 1 and record.get(subset_field) is None:
                record = {**record, subset_field: Path(path).stem}
            entries.append((path, line, record))
    if skipped:
        log.warning(
            "skipped %d record(s) with nothing to compare (first: %s)", len(skipped), skipped[0]
        )
    return entries, skipped


def _report(
    entries: list[tuple[str, int, dict]],
    by: Sequence[str],
    pref: PrefOptions,
    skipped: list[InputError],
) -> PrefReport:
    names = list(by)
    require(len(names) > 0, "by", "at least one score name", by)
    require(len(set(names)) == len(names), "by", "distinct score names", by)
    items = [
        scored_item(source, line, record, names, pref.subset_field)
        for source, line, record in entries
    ]
    if not items:
        raise ConfigError("no records with both a preferred and a non-preferred candidate")
    subsets = sorted({i.subset for i in items if i.subset is not None})
    resamples, seed = pref.bootstrap, pref.bootstrap_seed
    return PrefReport(
        scorers=names,
        overall=_group(items, names, resamples, seed),
        subsets={
            s: _group([i for i in items if i.subset == s], names, resamples, seed) for s in subsets
        },
        skipped=skipped,
        bootstrap=resamples,
        seed=seed,
    )


def scored_item(
    source: str, line: int, record: dict, names: Sequence[str], subset_field: str
) -> Item:
    """The `Item` of a scored, labelled record; `InputError` naming `source` and `line` when
    a named score is missing or not a number."""
    candidates = record["candidates"]
    scores: dict[str, list[float | None]] = {name: [] for name in names}
    for i, candidate in enumerate(candidates):
        found = candidate.get("scores")
        for name in names:
            if not isinstance(found, dict) or name not in found:
                raise _error(
                    source,
                    line,
                    record,
                    f"`candidates[{i}].scores.{name}` is missing: score with `{name}` first",
                )
            value = found[name]
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float))
            ):
                raise _error(
                    source,
                    line,
                    record,
                    f"`candidates[{i}].scores.{name}` must be a number, got {value!r}",
                )
            scores[name].append(None if value is None else float(value))
    subset = record.get(subset_field)
    return Item(
        subset=None if subset is None else str(subset),
        labels=[bool(c["label"]) for c in candidates],
        scores=scores,
    )


def judge(
    labels: Sequence[bool], values: Sequence[float | None], higher: bool = True
) -> tuple[bool, bool]:
    """(right, tied) for one item: is the best preferred score strictly better than the best
    non-preferred one, and are the two equal? Missing and NaN scores are worse than any number."""
    sign = 1.0 if higher else -1.0
    keys = [-math.inf if v is None or math.isnan(v) else sign * v for v in values]
    best_preferred = max(k for k, good in zip(keys, labels, strict=True) if good)
    best_other = max(k for k, good in zip(keys, labels, strict=True) if not good)
    return best_preferred > best_other, best_preferred == best_other


def _group(items: list[Item], names: list[str], bootstrap: int, seed: int) -> PrefGroup:
    right = np.zeros((len(names), len(items)))
    tied = np.zeros((len(names), len(items)))
    for s, name in enumerate(names):
        direction = higher_is_better(name)
        for j, item in enumerate(items):
            right[s, j], tied[s, j] = judge(item.labels, item.scores[name], direction)
    low, high = _intervals(right, bootstrap, seed)
    cells = {
        name: PrefCell(
            accuracy=float(right[s].mean()),
            low=None if low is None else float(low[s]),
            high=None if high is None else float(high[s]),
            ties=float(tied[s].mean()),
        )
        for s, name in enumerate(names)
    }
    share = [sum(i.labels) / len(i.labels) for i in items]
    return PrefGroup(items=len(items), random=math.fsum(share) / len(share), scorers=cells)


def _intervals(
    right: np.ndarray, bootstrap: int, seed: int
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Percentile 95% bounds per row of `right` (scorers x items), paired across rows."""
    if bootstrap == 0:
        return None, None
    n = right.shape[1]
    rng = np.random.default_rng(seed)
    means = np.empty((right.shape[0], bootstrap))
    step = max(1, _CHUNK // n)
    for start in range(0, bootstrap, step):
        count = min(step, bootstrap - start)
        draws = rng.integers(0, n, size=(count, n))
        means[:, start : start + count] = right[:, draws].mean(axis=2)
    low, high = np.percentile(means, [2.5, 97.5], axis=1)
    return low, high


def _from_pairs(record: dict) -> dict:
    if "candidates" in record or "responses" in record:
        raise RecordProblem(
            "has both `chosen`/`rejected` and `candidates`/`responses`: keep one of the two forms"
        )
    texts = {}
    for key in ("chosen", "rejected"):
        value = record.get(key)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            raise RecordProblem(f"`{key}` must be a string or a list of strings, got {value!r}")
        texts[key] = value
    out = {k: v for k, v in record.items() if k not in ("chosen", "rejected")}
    out["candidates"] = [{"text": t, "label": 1} for t in texts["chosen"]] + [
        {"text": t, "label": 0} for t in texts["rejected"]
    ]
    return out


def _error(source: str, line: int, record: Any, problem: str) -> InputError:
    if isinstance(record, dict) and "id" in record:
        problem = f"record {record['id']!r}: {problem}"
    return InputError(source, line, problem)
