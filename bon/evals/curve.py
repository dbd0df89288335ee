"""Best-of-N' curves from one scored file, by exact expectation instead of resampling.

Order a record's N candidates as the selector would (best score first in the scorer's direction,
ties to the lower index, a missing or NaN score after every number). A uniformly random subset
of size k selects the candidate at rank r exactly when it holds r and none of the r candidates
ranked above it: C(N-1-r, k-1) of the C(N, k) subsets. So the expected metric of best-of-k is
sum_r metric[r] * C(N-1-r, k-1) / C(N, k), computed once per record with no sampling noise; two
scorers' curves differ only by how they rank.

Reference lines: "oracle" ranks by the metric itself (higher is better), the ceiling of every
scorer; "random" is the mean metric, the expected value of one uniform pick (equal to every
line at N'=1).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from bon.codec import read_lines
from bon.errors import ConfigError, InputError
from bon.evals.report import fmt, markdown_table
from bon.scorers import higher_is_better

log = logging.getLogger(__name__)

ORACLE, RANDOM = "oracle", "random"
RECORDS = "<records>"


@dataclass
class Curve:
    """Expected metric of best-of-N' per line, at each size in `sizes`.

    Attributes:
        metric: the dotted path of the candidate field averaged (e.g. "ifeval.prompt_strict").
        sizes: the subset sizes N' (1, 2, 4, ... and the smallest record's N).
        lines: "oracle", "random" and one line per score name, each a value per size. A score
            named like a reference line is keyed "<name> (scorer)".
        records: how many records the curve averages over.
        notes: remarks on the data (e.g. records of different N).
    """

    metric: str
    sizes: list[int]
    lines: dict[str, list[float]]
    records: int
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        """A table with a row per line and a column per N'."""
        header = ["line", *(f"N'={k}" for k in self.sizes)]
        rows = [[name, *(fmt(v) for v in values)] for name, values in self.lines.items()]
        text = [
            f"Best-of-N' expected `{self.metric}` over {self.records} records "
            "(exact mean over all size-N' subsets).",
            "",
            markdown_table(header, rows),
        ]
        text += ["", *(f"Note: {note}" for note in self.notes)] if self.notes else []
        return "\n".join(text)

    def to_dict(self) -> dict[str, Any]:
        """The curve as plain JSON-serialisable data."""
        return {
            "metric": self.metric,
            "sizes": list(self.sizes),
            "lines": {name: list(values) for name, values in self.lines.items()},
            "records": self.records,
            "notes": list(self.notes),
        }

    def plot(self, path: str | Path) -> Path:
        """Write the curve as a PNG at `path`: N' on a log2 axis, reference lines dashed."""
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise ConfigError(
                'plotting needs matplotlib (the plot extra): pip install "bon[plot]"'
            ) from None
        figure = Figure(figsize=(6.4, 4.2), dpi=120)
        axes = figure.add_subplot()
        for name, values in self.lines.items():
            reference = name in (ORACLE, RANDOM)
            axes.plot(
                self.sizes,
                values,
                linestyle="--" if reference else "-",
                marker=None if reference else "o",
                color="grey" if name == RANDOM else ("black" if name == ORACLE else None),
                label=name,
            )
        axes.set_xscale("log", base=2)
        axes.set_xticks(self.sizes, [str(k) for k in self.sizes])
        axes.set_xlabel("N' (candidates per prompt)")
        axes.set_ylabel(self.metric)
        axes.set_title(f"Best-of-N' over {self.records} records")
        axes.grid(alpha=0.3)
        axes.legend()
        figure.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format="png")
        return path


def curve(records: Iterable[dict], metric: str, by: Sequence[str] | None = None) -> Curve:
    """The best-of-N' curve of scored `records` for the candidate field `metric`.

    `by` names the scores to draw (default: every score name found). Errors name the record's
    position and id.
    """
    return _curve([(RECORDS, i, r) for i, r in enumerate(records, start=1)], metric, by)


def curve_file(
    input: str | Path,
    metric: str,
    by: Sequence[str] | None = None,
    plot: str | Path | None = None,
) -> Curve:
    """`curve` over the JSONL file `input`; with `plot`, also writes the PNG there."""
    entries = []
    for line, value in read_lines(input):
        if isinstance(value, InputError):
            raise value
        entries.append((str(input), line, value))
    result = _curve(entries, metric, by)
    if plot is not None:
        result.plot(plot)
    return result


def pick_probabilities(n: int, k: int) -> list[float]:
    """P(the candidate at rank r is the pick of a uniform size-k subset of n), r = 0..n-1."""
    _check_size(n, k)
    return list(_pick_probabilities(n, k))


def _check_size(n: int, k: int) -> None:
    if not 1 <= k <= n:
        raise ConfigError(f"`k` must be in [1, {n}], got {k!r}")


@lru_cache(maxsize=256)
def _pick_probabilities(n: int, k: int) -> tuple[float, ...]:
    total = math.comb(n, k)
    return tuple(math.comb(n - 1 - r, k - 1) / total for r in range(n))


def selection_order(values: Sequence[float | None], higher_is_better: bool = True) -> list[int]:
    """Candidate indices from the selector's first choice to its last.

    Better scores first in the given direction, ties to the lower index, None and NaN last.
    """
    sign = 1.0 if higher_is_better else -1.0

    def key(i: int) -> tuple[bool, float, int]:
        value = values[i]
        if value is None or math.isnan(value):
            return (True, 0.0, i)
        return (False, -sign * value, i)

    return sorted(range(len(values)), key=key)


def expected_best(metric: Sequence[float], order: Sequence[int], k: int) -> float:
    """Expected `metric` of the pick of a uniform size-k subset, candidates ranked by `order`."""
    _check_size(len(order), k)
    weights = _pick_probabilities(len(order), k)
    return math.fsum(w * metric[i] for w, i in zip(weights, order, strict=True))


def sizes_up_to(n: int) -> list[int]:
    """1, 2, 4, ... up to `n`, and `n` itself."""
    sizes = [1 << p for p in range(n.bit_length()) if 1 << p <= n]
    return sizes if sizes[-1] == n else [*sizes, n]


def _curve(entries: list[tuple[str, int, Any]], metric: str, by: Sequence[str] | None) -> Curve:
    if not isinstance(metric, str) or not metric.strip("."):
        raise ConfigError(f"`metric` must be a dotted field path such as 'label', got {metric!r}")
    if not entries:
        raise ConfigError("no records to draw a curve from: the input is empty")
    for source, line, record in entries:
        _check_candidates(source, line, record)
    names = list(by) if by is not None else _score_names(entries)
    counts = [len(r["candidates"]) for _, _, r in entries]
    sizes = sizes_up_to(min(counts))
    notes = []
    if min(counts) != max(counts):
        notes.append(
            f"records have {min(counts)} to {max(counts)} candidates; N' goes up to the "
            f"smallest, {min(counts)}"
        )
        log.warning(notes[-1])
    keys = _line_keys(names)
    totals = {key: [0.0] * len(sizes) for key in [ORACLE, RANDOM, *keys.values()]}
    for source, line, record in entries:
        values = [
            _metric(source, line, record, i, metric) for i in range(len(record["candidates"]))
        ]
        orders = {ORACLE: selection_order(values)}
        for name in names:
            scores = _scores(source, line, record, name)
            orders[keys[name]] = selection_order(scores, higher_is_better(name))
        mean = math.fsum(values) / len(values)
        for j, k in enumerate(sizes):
            totals[RANDOM][j] += mean
            for key, order in orders.items():
                totals[key][j] += expected_best(values, order, k)
    lines = {key: [t / len(entries) for t in values] for key, values in totals.items()}
    return Curve(metric, sizes, lines, len(entries), notes)


def _line_keys(names: Sequence[str]) -> dict[str, str]:
    if len(set(names)) != len(names):
        raise ConfigError(f"`by` must name each score once, got {list(names)!r}")
    return {n: f"{n} (scorer)" if n in (ORACLE, RANDOM) else n for n in names}


def _score_names(entries: list[tuple[str, int, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for _, _, record in entries:
        for candidate in record["candidates"]:
            scores = candidate.get("scores")
            if isinstance(scores, dict):
                names.update(dict.fromkeys(scores))
    return list(names)


def _where(record: Any) -> str:
    return f"record {record.get('id')!r}" if isinstance(record, dict) and "id" in record else ""


def _fail(source: str, line: int, record: Any, problem: str) -> InputError:
    where = _where(record)
    return InputError(source, line, f"{where}: {problem}" if where else problem)


def _check_candidates(source: str, line: int, record: Any) -> None:
    if not isinstance(record, dict):
        raise InputError(source, line, f"expected a JSON object, got {type(record).__name__}")
    candidates = record.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        raise _fail(source, line, record, "needs a non-empty `candidates` list: score it first")
    for i, candidate in enumerate(candidates):
        if not isinstance(candidate, dict):
            raise _fail(source, line, record, f"`candidates[{i}]` must be an object")


def _metric(source: str, line: int, record: dict, index: int, path: str) -> float:
    value: Any = record["candidates"][index]
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            raise _fail(
                source,
                line,
                record,
                f"`candidates[{index}].{path}` is missing; choose a metric "
                "every candidate has (e.g. run the evaluation that adds it first)",
            )
        value = value[part]
    if isinstance(value, bool):
        return float(value)
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(
            source,
            line,
            record,
            f"`candidates[{index}].{path}` must be a finite number or a boolean, got {value!r}",
        )
    return float(value)


def _scores(source: str, line: int, record: dict, name: str) -> list[float | None]:
    out: list[float | None] = []
    for i, candidate in enumerate(record["candidates"]):
        scores = candidate.get("scores")
        if not isinstance(scores, dict) or name not in scores:
            raise _fail(
                source,
                line,
                record,
                f"`candidates[{i}].scores.{name}` is missing: score with "
                f"`{name}` first, or leave it out of `by`",
            )
        value = scores[name]
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise _fail(
                source,
                line,
                record,
                f"`candidates[{i}].scores.{name}` must be a number, got {value!r}",
            )
        out.append(None if value is None else float(value))
    return out
