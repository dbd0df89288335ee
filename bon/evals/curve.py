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

Against compute (`x="tokens"` or `"seconds"`), each point sits at what best-of-N' costs per
prompt, from the records' `cost` (`bon.cost`): the generator's prompt once, plus N'/N of what
generating the record's N candidates cost and of what the line's scorer spent on them, the
exact expectation over uniform size-N' subsets of a cost that is a sum over candidates.
Scorers that compare candidates (pairwise and listwise judges) cost more than linearly in N';
their points are that linear share. The oracle and random lines spend no scorer compute. A
record's cost is what making and scoring all of its candidates took, so a file whose candidate
lists were cut afterwards overstates its points' compute.

A pruned run (candidates with `pruned_at`, `bon.prune`) or an adaptive one (records with
`adaptive`, `bon.adaptive`) did not spend alike on its candidates, so its subsets are not
best-of-N' runs: such a file is one point per line at its largest N, the run's own pick (the
best-scored candidate that finished) at all the run spent on the record (generator, pruning
and the line's scorer). Its oracle and random lines are the best and the mean of the finished
candidates, at the generator's and pruning's spend.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from bon.codec import read_lines
from bon.cost import PRUNE_TOKENS
from bon.errors import ConfigError, InputError
from bon.evals.report import fmt, markdown_table
from bon.records import is_pruned
from bon.scorers import higher_is_better

log = logging.getLogger(__name__)

ORACLE, RANDOM = "oracle", "random"
RECORDS = "<records>"
X_AXES = ("n", "tokens", "seconds")
"""What a curve's points are placed by: N', or the mean tokens or seconds spent per prompt."""
X_LABELS = {
    "n": "N' (candidates per prompt)",
    "tokens": "tokens per prompt (generator + scorer)",
    "seconds": "seconds per prompt (generator + scorer)",
}


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
        x: "n", or "tokens" or "seconds" when the points sit at their compute (`costs`).
        costs: per line, the mean tokens or seconds per prompt spent at each size (empty
            when `x` is "n").
        label: the curve's name beside others (its file's name, or one given).
    """

    metric: str
    sizes: list[int]
    lines: dict[str, list[float]]
    records: int
    notes: list[str] = field(default_factory=list)
    x: str = "n"
    costs: dict[str, list[float]] = field(default_factory=dict)
    label: str | None = None

    def xs(self, name: str) -> list[float]:
        """Where the points of line `name` sit on the x axis."""
        return [float(k) for k in self.sizes] if self.x == "n" else self.costs[name]

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
        if self.x != "n":
            header = ["line", *(f"N'={k}" for k in self.sizes)]
            rows = [[name, *(_amount(v) for v in values)] for name, values in self.costs.items()]
            text += [
                "",
                f"Mean {self.x} per prompt spent for best-of-N' (generator, plus the line's "
                "scorer).",
                "",
                markdown_table(header, rows),
            ]
        text += ["", *(f"Note: {note}" for note in self.notes)] if self.notes else []
        return "\n".join(text)

    def to_dict(self) -> dict[str, Any]:
        """The curve as plain JSON-serialisable data (`x` and `costs` when placed by compute,
        `label` when it has one)."""
        out: dict[str, Any] = {
            "metric": self.metric,
            "sizes": list(self.sizes),
            "lines": {name: list(values) for name, values in self.lines.items()},
            "records": self.records,
            "notes": list(self.notes),
        }
        if self.x != "n":
            out["x"] = self.x
            out["costs"] = {name: list(values) for name, values in self.costs.items()}
        if self.label is not None:
            out["label"] = self.label
        return out

    def plot(self, path: str | Path) -> Path:
        """Write the curve as a PNG at `path` (see `plot_curves`)."""
        return plot_curves([self], path)


@dataclass
class Curves:
    """Curves of several files (runs of the same prompts), drawn on one plot."""

    curves: list[Curve]

    def to_markdown(self) -> str:
        """Each curve's tables under its label."""
        if len(self.curves) == 1:
            return self.curves[0].to_markdown()
        return "\n\n".join(f"## {c.label}\n\n{c.to_markdown()}" for c in self.curves)

    def to_dict(self) -> dict[str, Any]:
        """One curve's dict (`Curve.to_dict`), or `{"curves": [...]}` for several."""
        if len(self.curves) == 1:
            return self.curves[0].to_dict()
        return {"curves": [c.to_dict() for c in self.curves]}

    def plot(self, path: str | Path) -> Path:
        return plot_curves(self.curves, path)


def plot_curves(curves: Sequence[Curve], path: str | Path) -> Path:
    """Write `curves` as one PNG at `path`: N' on a log2 axis, or the compute spent on a log
    axis, each scorer line's points marked with their N'; reference lines dashed. With several
    curves (runs of the same prompts) each line is named after its curve's label (alone for a
    curve's only scorer line), and only the first curve's reference lines are drawn."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError(
            'plotting needs matplotlib (the plot extra): pip install "bon[plot]"'
        ) from None
    if not curves or len({c.x for c in curves}) != 1:
        raise ConfigError("`curves` must be one or more curves placed on the same x axis")
    x = curves[0].x
    figure = Figure(figsize=(6.4, 4.2), dpi=120)
    axes = figure.add_subplot()
    several = len(curves) > 1
    for number, curve in enumerate(curves):
        scorers = [n for n in curve.lines if n not in (ORACLE, RANDOM)]
        for name, values in curve.lines.items():
            reference = name in (ORACLE, RANDOM)
            if reference and number > 0:
                continue
            label = name
            if several:
                alone = not reference and len(scorers) == 1
                label = str(curve.label) if alone else f"{curve.label}: {name}"
            color = None
            if not several and reference:
                color = "grey" if name == RANDOM else "black"
            xs = curve.xs(name)
            axes.plot(
                xs,
                values,
                linestyle="--" if reference else "-",
                marker=None if reference else "o",
                color=color,
                label=label,
            )
            if x != "n" and not reference:
                for k, at, value in zip(curve.sizes, xs, values, strict=True):
                    axes.annotate(
                        str(k), (at, value), textcoords="offset points", xytext=(3, 3), fontsize=7
                    )
    if x == "n":
        sizes = sorted({k for c in curves for k in c.sizes})
        axes.set_xscale("log", base=2)
        axes.set_xticks(sizes, [str(k) for k in sizes])
    else:
        axes.set_xscale("log")
    axes.set_xlabel(X_LABELS[x])
    axes.set_ylabel(curves[0].metric)
    records = curves[0].records
    title = f"Best-of-N' over {records} records" if not several else "Best-of-N'"
    axes.set_title(title + ("" if x == "n" else f" against {x} spent"))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8 if several else None)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")
    return path


def _amount(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def curve(
    records: Iterable[dict], metric: str, by: Sequence[str] | None = None, x: str = "n"
) -> Curve:
    """The best-of-N' curve of scored `records` for the candidate field `metric`.

    `by` names the scores to draw (default: every score name found); `x` places the points by
    N' ("n") or by the mean "tokens" or "seconds" spent per prompt (from the records' `cost`).
    Errors name the record's position and id.
    """
    return _curve([(RECORDS, i, r) for i, r in enumerate(records, start=1)], metric, by, x)


def curve_file(
    input: str | Path,
    metric: str,
    by: Sequence[str] | None = None,
    plot: str | Path | None = None,
    x: str = "n",
) -> Curve:
    """`curve` over the JSONL file `input`; with `plot`, also writes the PNG there."""
    result = _curve(_entries(input), metric, by, x)
    if plot is not None:
        result.plot(plot)
    return result


def curve_files(
    inputs: Sequence[str | Path],
    metric: str,
    *,
    by: Sequence[str] | None = None,
    x: str = "n",
    labels: Sequence[str] | None = None,
    plot: str | Path | None = None,
) -> Curves:
    """`curve` over each JSONL file of `inputs` (say a full run and a cheaper one over the
    same prompts), each labelled by `labels` (default: the file's name, or its path where two
    names are equal; none for one file alone); with `plot`, all drawn on one PNG there."""
    if not inputs:
        raise ConfigError("`inputs` must name at least one scored file")
    if labels is not None and len(labels) != len(inputs):
        raise ConfigError(
            f"`labels` must give one label per file ({len(inputs)}), got {len(labels)}"
        )
    names = [Path(str(i)).name for i in inputs]
    given: list[str | None] = list(labels) if labels is not None else []
    if not given and len(inputs) > 1:
        given = [n if names.count(n) == 1 else str(i) for n, i in zip(names, inputs, strict=True)]
    result = Curves(
        [
            dataclasses.replace(_curve(_entries(input), metric, by, x), label=label)
            for input, label in zip(inputs, given or [None], strict=True)
        ]
    )
    if plot is not None:
        result.plot(plot)
    return result


def _entries(input: str | Path) -> list[tuple[str, int, Any]]:
    entries = []
    for line, value in read_lines(input):
        if isinstance(value, InputError):
            raise value
        entries.append((str(input), line, value))
    return entries


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


def _curve(
    entries: list[tuple[str, int, Any]], metric: str, by: Sequence[str] | None, x: str = "n"
) -> Curve:
    if not isinstance(metric, str) or not metric.strip("."):
        raise ConfigError(f"`metric` must be a dotted field path such as 'label', got {metric!r}")
    if x not in X_AXES:
        raise ConfigError(f"`x` must be one of {', '.join(X_AXES)}, got {x!r}")
    if not entries:
        raise ConfigError("no records to draw a curve from: the input is empty")
    for source, line, record in entries:
        _check_candidates(source, line, record)
    names = list(by) if by is not None else _score_names(entries)
    if any(_spent_unevenly(r) for _, _, r in entries):
        return _run_point(entries, metric, names, x)
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
    spent = {key: [0.0] * len(sizes) for key in totals} if x != "n" else {}
    cached: dict[str, int] = {}
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
        if x != "n":
            fixed, generating, scoring = _record_cost(source, line, record, x, names, cached)
            share = [k / len(values) for k in sizes]
            for j, part in enumerate(share):
                spent[ORACLE][j] += fixed + part * generating
                spent[RANDOM][j] += fixed + part * generating
                for name in names:
                    spent[keys[name]][j] += fixed + part * (generating + scoring[name])
    lines = {key: [t / len(entries) for t in values] for key, values in totals.items()}
    costs = {key: [t / len(entries) for t in values] for key, values in spent.items()}
    notes += _cached_notes(cached)
    return Curve(metric, sizes, lines, len(entries), notes, x=x, costs=costs)


def _cached_notes(cached: dict[str, int]) -> list[str]:
    return [
        f"{count} candidate scores of {name} came from the score cache and cost nothing in "
        "this run; rescore with no_cache (--no-cache) to count what computing them costs"
        for name, count in cached.items()
    ]


def _spent_unevenly(record: dict) -> bool:
    """Whether a record comes from a pruned or an adaptive run (module docstring)."""
    return "adaptive" in record or any(is_pruned(c) for c in record["candidates"])


def _run_point(
    entries: list[tuple[str, int, Any]], metric: str, names: Sequence[str], x: str
) -> Curve:
    """The one point per line of a pruned or adaptive run (module docstring)."""
    keys = _line_keys(names)
    totals = dict.fromkeys([ORACLE, RANDOM, *keys.values()], 0.0)
    spent = dict.fromkeys(totals, 0.0)
    cached: dict[str, int] = {}
    for source, line, record in entries:
        finished = [i for i, c in enumerate(record["candidates"]) if not is_pruned(c)]
        values = [_metric(source, line, record, i, metric) for i in finished]
        totals[ORACLE] += max(values)
        totals[RANDOM] += math.fsum(values) / len(values)
        for name in names:
            scores = _scores(source, line, record, name)
            order = selection_order([scores[i] for i in finished], higher_is_better(name))
            totals[keys[name]] += values[order[0]]
        if x != "n":
            fixed, generating, scoring = _record_cost(source, line, record, x, names, cached)
            base = fixed + generating + _prune_cost(source, line, record, x)
            spent[ORACLE] += base
            spent[RANDOM] += base
            for name in names:
                spent[keys[name]] += base + scoring[name]
    count = len(entries)
    size = max(len(r["candidates"]) for _, _, r in entries)
    notes = [
        "a pruned or adaptive run: one point per line, the run's own pick at N = "
        f"{size} and all it spent",
        *_cached_notes(cached),
    ]
    return Curve(
        metric,
        [size],
        {key: [total / count] for key, total in totals.items()},
        count,
        notes,
        x=x,
        costs={key: [total / count] for key, total in spent.items()} if x != "n" else {},
    )


def _prune_cost(source: str, line: int, record: dict, x: str) -> float:
    """What pruning spent on a record beside decoding (`cost.prune`), 0 when not pruned."""
    part = record["cost"].get("prune")
    if not isinstance(part, dict):
        return 0.0
    if x == "seconds":
        return _number(source, line, record, part, "prune", "seconds")
    return math.fsum(_number(source, line, record, part, "prune", key) for key in PRUNE_TOKENS)


def _record_cost(
    source: str, line: int, record: dict, x: str, names: Sequence[str], cached: dict[str, int]
) -> tuple[float, float, dict[str, float]]:
    """A record's cost in `x` (tokens or seconds): what it costs once (the generator's prompt),
    what generating all its candidates cost, and what each scorer of `names` spent on them;
    counts each scorer's cached candidates into `cached`."""
    cost = record.get("cost")
    generate = cost.get("generate") if isinstance(cost, dict) else None
    if not isinstance(generate, dict):
        raise _fail(
            source,
            line,
            record,
            f"`cost.generate` is missing: --x {x} needs candidates made by `bon generate`, "
            "which records what they cost (or use --x n)",
        )
    if x == "tokens":
        fixed = _number(source, line, record, generate, "generate", "prompt_tokens")
        generating = _number(source, line, record, generate, "generate", "completion_tokens")
    else:
        fixed, generating = 0.0, _number(source, line, record, generate, "generate", "seconds")
    scores = cost.get("score") if isinstance(cost, dict) else None
    scoring = {}
    for name in names:
        part = scores.get(name) if isinstance(scores, dict) else None
        if not isinstance(part, dict):
            raise _fail(
                source,
                line,
                record,
                f"`cost.score.{name}` is missing: score with `{name}` to record what it costs, "
                "leave it out of `by`, or use --x n",
            )
        where = f"score.{name}"
        if x == "tokens":
            scoring[name] = _number(source, line, record, part, where, "read_tokens") + _number(
                source, line, record, part, where, "generated_tokens"
            )
        else:
            scoring[name] = _number(source, line, record, part, where, "seconds")
        hits = part.get("cached")
        if isinstance(hits, int) and hits > 0:
            cached[name] = cached.get(name, 0) + hits
    return fixed, generating, scoring


def _number(source: str, line: int, record: dict, part: dict, where: str, key: str) -> float:
    value = part.get(key)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise _fail(
            source,
            line,
            record,
            f"`cost.{where}.{key}` must be a number >= 0, got {value!r}",
        )
    return float(value)


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
