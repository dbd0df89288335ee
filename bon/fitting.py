"""`bon fit`: a selector fitted on labelled best-of-N data, written as a file the `mix` scorer
reads.

The labelled files are read and scored as `bon eval pref` does (`bon.evals.pref`: the same
record shapes, the score stage and its cache). Each candidate becomes a feature vector (see
`bon.scorers.mix`: every scorer's score standardised within its record, plus the standardised
log(1 + words)), and the weights are a Bradley-Terry model of the record's preferences: an L2
regularised logistic regression, without intercept, of "the preferred candidate wins" on the
difference of the two feature vectors, over every (preferred, non-preferred) pair of a record.
Each record weighs 1 in all, shared by its pairs, so a record with 8 candidates counts no more
than one with 2. The fit is Newton's method on a convex loss (plain numpy, a few iterations).

Accuracy is `bon eval pref`'s: a record counts when a preferred candidate scores strictly above
every non-preferred one (ties are wrong). It is reported held out, by K-fold cross-validation
over records (a seeded shuffle), beside the accuracy on the training records and that of each
feature alone. Weights are rounded to 6 significant digits before use, and nothing in the file
depends on the time or the machine, so the same inputs and options write the same bytes.
"""

from __future__ import annotations

import dataclasses
import logging
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from bon.errors import ConfigError, InputError, require
from bon.evals import pref
from bon.evals.report import fmt, markdown_table
from bon.options import fields, non_negative, option, positive, validate
from bon.outputs import replace_atomically
from bon.scorers import ScoreOptions, higher_is_better, scorers
from bon.scorers.base import keyword_fields
from bon.scorers.mix import (
    FORMAT,
    LENGTH,
    LENGTH_FEATURE,
    STANDARDISE,
    combine,
    features,
    words,
)

log = logging.getLogger(__name__)

SUBSET_FIELD = "subset"
NEWTON_STEPS = 100
TOLERANCE = 1e-10
DIGITS = 6
"""Significant digits of the written weights and accuracies."""


@dataclass(frozen=True)
class FitOptions:
    """How `bon fit` fits and judges the weights."""

    l2: float = option(
        1.0,
        "L2 penalty on the weights (larger: weights nearer 0). Each record weighs 1 in the "
        "loss, so it is worth about that many records.",
        check=lambda v: non_negative(v) and v > 0,
        constraint="a number > 0",
    )
    folds: int = option(
        5,
        "Cross-validation folds over records, for the held-out accuracy.",
        check=lambda v: positive(v) and v >= 2,
        constraint="an integer >= 2",
    )
    fold_seed: int = option(
        0,
        "Seed of the shuffle that deals the records into folds.",
        check=lambda v: non_negative(v) and isinstance(v, int),
        constraint="an integer >= 0",
    )
    test: tuple[str, ...] = option(
        (),
        "Held-out labelled file (repeat for several): never fitted on; the written selector "
        "is judged on it beside each of its scorers and the length controls (`bon eval pref`, "
        "with intervals), and the result goes in the report and the file's comments.",
        check=lambda v: isinstance(v, tuple) and all(isinstance(p, str) and p for p in v),
        constraint="file paths",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "test", tuple(self.test))
        validate(self)


CONTROLS = ("longest", "shortest")
"""The controls judged beside a selector on held-out files."""


@dataclass(frozen=True)
class Example:
    """One usable labelled record: its candidates' labels, raw scores and texts."""

    labels: list[bool]
    scores: dict[str, list[float | None]]
    texts: list[str]

    def rows(self, names: Sequence[str]) -> list[list[float]]:
        """The candidates' feature vectors (as the mix scorer computes them)."""
        return features(self.scores, self.texts, names)


@dataclass
class FitReport:
    """What `bon fit` fitted and how well it selects.

    Attributes:
        output: the selector file written.
        scorers: the scorers combined, in order; `features` adds `length`.
        weights: feature -> weight, as written.
        cv_accuracy: share of records right under weights fitted without them (K folds).
        train_accuracy: share of records right under the written weights.
        single: each feature's accuracy alone (a scorer's own score, in its direction, as
            `bon eval pref` reports it; `length` in words, longer better).
        records, pairs: the records and (preferred, non-preferred) pairs fitted on.
        files: each file's (records used, records skipped).
        skipped: the records left out, each an `InputError` saying where and why.
        scores: the fitted selector's score of each candidate of each record, in file order
            (what the `mix` scorer computes from the written file).
        options: the `FitOptions` used.
        test: the selector (`mix`), its scorers and `CONTROLS` judged on the `test` files;
            None without them.
    """

    output: str
    scorers: list[str]
    weights: dict[str, float]
    cv_accuracy: float
    train_accuracy: float
    single: dict[str, float]
    records: int
    pairs: int
    files: dict[str, tuple[int, int]]
    options: FitOptions
    scores: list[list[float]] = field(default_factory=list, repr=False)
    skipped: list[InputError] = field(default_factory=list)
    test: pref.PrefReport | None = None

    @property
    def features(self) -> list[str]:
        return [*self.scorers, LENGTH]

    def to_markdown(self) -> str:
        """A table of accuracies (fitted, held out and on training; each feature alone) and
        one of weights."""
        o = self.options
        rows = [
            [f"fitted, held out ({o.folds}-fold CV)", fmt(self.cv_accuracy)],
            ["fitted, training records", fmt(self.train_accuracy)],
            *([f"{name} alone", fmt(value)] for name, value in self.single.items()),
        ]
        text = [
            markdown_table(["selector", f"accuracy (n={self.records})"], rows),
            "",
            markdown_table(["feature", "weight"], [[k, f"{v:g}"] for k, v in self.weights.items()]),
            "",
            "Accuracy: a preferred candidate must score strictly above every other; ties are "
            f"wrong. Wrote {self.output}.",
        ]
        if self.skipped:
            text.append(
                f"Skipped {len(self.skipped)} record(s) without label variation (first: "
                f"{self.skipped[0]})."
            )
        if self.test is not None:
            text += ["", "Held out (the test files; mix is the written selector):", ""]
            text.append(self.test.to_markdown())
        return "\n".join(text)

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-serialisable data (without the per-candidate scores)."""
        return {
            "output": self.output,
            "scorers": list(self.scorers),
            "weights": dict(self.weights),
            "cv_accuracy": self.cv_accuracy,
            "train_accuracy": self.train_accuracy,
            "single": dict(self.single),
            "records": self.records,
            "pairs": self.pairs,
            "files": {p: {"used": u, "skipped": s} for p, (u, s) in self.files.items()},
            "l2": self.options.l2,
            "folds": self.options.folds,
            "fold_seed": self.options.fold_seed,
            "skipped": [{"file": e.path, "line": e.line, "error": e.problem} for e in self.skipped],
            "test": None if self.test is None else self.test.to_dict(),
        }


def fit_files(
    files: str | Path | Sequence[str | Path],
    output: str | Path,
    options: FitOptions,
    score_options: ScoreOptions,
) -> FitReport:
    """Score the labelled records of `files`, fit the selector, write it to `output` (YAML,
    atomically) and report. Raises `InputError` naming a file in which no record has both a
    preferred and a non-preferred candidate, and `ConfigError` for unusable options, both
    before any model loads."""
    paths = [str(files)] if isinstance(files, (str, Path)) else [str(p) for p in files]
    require(len(paths) > 0, "files", "a JSONL path or a non-empty list of them", files)
    names = list(score_options.scorers)
    check_scorers(names)
    entries, skipped = pref.read_labelled(paths, SUBSET_FIELD)
    counts = _file_counts(paths, entries, skipped)
    if len(entries) < options.folds:
        raise ConfigError(
            f"`folds` must be at most the number of usable records ({len(entries)}), got "
            f"{options.folds}: lower --folds or add labelled records"
        )
    entries = pref.score_entries(entries, score_options)
    examples = [_example(source, line, record, names) for source, line, record in entries]
    fitted = fit_examples(examples, names, options)
    fitted.output = str(output)
    fitted.files = counts
    fitted.skipped = skipped
    configs = _scorer_configs(entries, names)
    command = _command(paths, output, options, score_options)
    replace_atomically(output, [selector_text(fitted, configs, command).encode("utf-8")])
    if options.test:
        fitted.test = _held_out(options.test, output, score_options)
        replace_atomically(output, [selector_text(fitted, configs, command).encode("utf-8")])
    return fitted


def _held_out(
    paths: Sequence[str], selector: str | Path, score_options: ScoreOptions
) -> pref.PrefReport:
    """The selector written at `selector` (the mix scorer reading it), its scorers and the
    controls, judged on the labelled files `paths` by `bon eval pref`."""
    values = score_options.keywords()
    scorers = (*values.pop("scorers"), *(c for c in CONTROLS if c not in score_options.scorers))
    return pref.eval_pref(list(paths), scorers=scorers, **{**values, "mix": str(selector)})


def check_scorers(names: Sequence[str]) -> None:
    """`ConfigError` for scorers a fit cannot combine (mix, or one called like the length
    feature); called before the options are built, whose own message would mislead."""
    if "mix" in names:
        raise ConfigError(
            "`scorers` must not include mix: fit the scorers a selector combines (--scorer A "
            "--scorer B ...), not another selector"
        )
    if LENGTH in names:
        raise ConfigError(
            f"`scorers` must not include {LENGTH!r}: that name is the length feature, which "
            "every fit includes"
        )


def _file_counts(
    paths: list[str], entries: list[tuple[str, int, dict]], skipped: list[InputError]
) -> dict[str, tuple[int, int]]:
    """Each file's (records used, records skipped); `InputError` for a file nothing to fit on."""
    counts = {}
    for path in paths:
        used = sum(1 for source, _, _ in entries if source == path)
        left = [e for e in skipped if e.path == path]
        if used == 0:
            raise InputError(path, None, _useless(left))
        counts[path] = (used, len(left))
    return counts


def _useless(skipped: list[InputError]) -> str:
    """Why a file gives nothing to fit on."""
    fix = (
        "bon fit learns from records whose candidates differ in label (at least one `label` 1 "
        "and one 0, or both `chosen` and `rejected`)"
    )
    if not skipped:
        return f"no records; {fix}"
    if all(e.problem == pref.ONE_CANDIDATE for e in skipped):
        return f"every record has one candidate only: nothing to compare; {fix}"
    first = skipped[0]
    return (
        f"no record has label variation ({len(skipped)} skipped, first: line {first.line}: "
        f"{first.problem}); {fix}"
    )


def _example(source: str, line: int, record: dict, names: list[str]) -> Example:
    item = pref.scored_item(source, line, record, names, SUBSET_FIELD)
    texts = [c["text"] for c in record["candidates"]]
    return Example(labels=item.labels, scores=item.scores, texts=texts)


def fit_examples(
    examples: Sequence[Example], names: Sequence[str], options: FitOptions
) -> FitReport:
    """Fit weights on `examples` (each with both labels) and judge them; the report's `output`,
    `files` and `skipped` are left empty for the caller."""
    names = list(names)
    require(len(examples) > 0, "examples", "at least one labelled record", len(examples))
    rows = [e.rows(names) for e in examples]
    labels = [e.labels for e in examples]
    weights = _fit(rows, labels, options.l2)
    scores = [combine(r, weights) for r in rows]
    train = _share([_right(lab, s) for lab, s in zip(labels, scores, strict=True)])
    return FitReport(
        output="",
        scorers=names,
        weights=dict(zip([*names, LENGTH], weights, strict=True)),
        cv_accuracy=_cross_validated(rows, labels, options),
        train_accuracy=train,
        single=_single(examples, names),
        records=len(examples),
        pairs=sum(sum(lab) * (len(lab) - sum(lab)) for lab in labels),
        files={},
        options=options,
        scores=scores,
    )


def _fit(rows: list[list[list[float]]], labels: list[list[bool]], l2: float) -> list[float]:
    """The rounded Bradley-Terry weights of records `rows` (candidates x features)."""
    diffs, weights = [], []
    for matrix, labs in zip(rows, labels, strict=True):
        good = [r for r, lab in zip(matrix, labs, strict=True) if lab]
        bad = [r for r, lab in zip(matrix, labs, strict=True) if not lab]
        for g in good:
            for b in bad:
                diffs.append([x - y for x, y in zip(g, b, strict=True)])
                weights.append(1.0 / (len(good) * len(bad)))
    w = _newton(np.array(diffs, dtype=float), np.array(weights), l2)
    return [_rounded(x) for x in w]


def _loss(d: np.ndarray, weight: np.ndarray, l2: float, w: np.ndarray) -> float:
    """Weighted logistic loss of "the preferred one wins" plus the L2 penalty."""
    return float(weight @ np.logaddexp(0.0, -(d @ w)) + 0.5 * l2 * (w @ w))


def _newton(d: np.ndarray, weight: np.ndarray, l2: float) -> np.ndarray:
    """Minimise `_loss` over w by Newton's method with step halving (the loss is strictly
    convex: the penalty makes its Hessian positive definite)."""
    w = np.zeros(d.shape[1])
    loss = _loss(d, weight, l2, w)
    for _ in range(NEWTON_STEPS):
        margin = d @ w
        lose = np.exp(-np.logaddexp(0.0, margin))  # P(the preferred one loses)
        grad = -(weight * lose) @ d + l2 * w
        hess = (d * (weight * lose * (1.0 - lose))[:, None]).T @ d + l2 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-8:
            new = w - t * step
            new_loss = _loss(d, weight, l2, new)
            if new_loss <= loss:
                break
            t /= 2
        else:
            break
        done = float(np.max(np.abs(new - w))) < TOLERANCE
        w, loss = new, new_loss
        if done:
            break
    return w


def _rounded(value: float) -> float:
    """`value` to `DIGITS` significant digits (and never -0.0)."""
    return float(f"{value:.{DIGITS}g}") + 0.0


def _right(labels: Sequence[bool], scores: Sequence[float]) -> bool:
    return pref.judge(labels, scores, True)[0]


def _share(flags: Sequence[bool]) -> float:
    return _rounded(sum(flags) / len(flags))


def _cross_validated(
    rows: list[list[list[float]]], labels: list[list[bool]], options: FitOptions
) -> float:
    """Share of records right under weights fitted on the other folds."""
    order = np.random.default_rng(options.fold_seed).permutation(len(rows))
    right = 0
    for held in np.array_split(order, options.folds):
        out = set(held.tolist())
        train = [i for i in range(len(rows)) if i not in out]
        weights = _fit([rows[i] for i in train], [labels[i] for i in train], options.l2)
        right += sum(_right(labels[i], combine(rows[i], weights)) for i in sorted(out))
    return _rounded(right / len(rows))


def _single(examples: Sequence[Example], names: list[str]) -> dict[str, float]:
    """Each feature's accuracy alone, as `bon eval pref` would report it."""
    out = {}
    for name in names:
        flags = [pref.judge(e.labels, e.scores[name], higher_is_better(name))[0] for e in examples]
        out[name] = _share(flags)
    out[LENGTH] = _share([_right(e.labels, [words(t) for t in e.texts]) for e in examples])
    return out


def _scorer_configs(entries: list[tuple[str, int, dict]], names: list[str]) -> dict[str, dict]:
    """Each scorer's recorded configuration (`Scorer.describe()`, as the score stage wrote it
    beside the scores)."""
    scoring = entries[0][2].get("scoring", {})
    return {name: dict(scoring.get(name, {})) for name in names}


def selector_text(report: FitReport, configs: dict[str, dict], command: str) -> str:
    """The selector file: comments saying how it was made and how well it selects, then the
    YAML the `mix` scorer reads (`bon.scorers.mix.load_selector`)."""
    from bon import __version__

    body = {
        "format": FORMAT,
        "scorers": {name: _options_of(name, configs.get(name, {})) for name in report.scorers},
        "features": {"standardise": STANDARDISE, LENGTH: LENGTH_FEATURE},
        "weights": dict(report.weights),
        "fit": {
            "method": "bradley-terry",
            "l2": report.options.l2,
            "folds": report.options.folds,
            "fold_seed": report.options.fold_seed,
            "records": report.records,
            "pairs": report.pairs,
            "cv_accuracy": report.cv_accuracy,
            "train_accuracy": report.train_accuracy,
            "single_accuracy": dict(report.single),
        },
    }
    lines = [
        f"# A best-of-N selector written by `bon fit` (bon {__version__}); use it with",
        f"#   bon score CANDIDATES --scorer mix --mix {_quoted(report.output)} -o SCORED",
        f"# command: {_one_line(command)}",
        "# files (records used, records skipped without label variation):",
        *(f"#   {_quoted(p)}: {u} used, {s} skipped" for p, (u, s) in report.files.items()),
        f"# accuracy on {report.records} records (a preferred candidate strictly highest; "
        "ties wrong):",
        f"#   cross-validated {report.cv_accuracy:g} ({report.options.folds} folds over records, "
        f"fold seed {report.options.fold_seed}); training {report.train_accuracy:g}",
        "#   each feature alone: "
        + ", ".join(f"{name} {value:g}" for name, value in report.single.items()),
        *_model_lines(configs),
        *_test_lines(report.test),
        "# Features: each scorer's score as a z-score over its record's candidates (negated when",
        "# lower is better; all equal, missing or NaN: 0), and length, the same of log(1 + words).",
        "",
    ]
    dumped = yaml.safe_dump(body, sort_keys=False, allow_unicode=True, width=100)
    return "\n".join(lines) + dumped


def _options_of(name: str, config: dict) -> dict[str, Any]:
    """The `ScoreOptions` values recorded in a scorer's configuration that change its scores."""
    used = scorers.get(name).options_used()
    return {key: config[key] for key in used if key in config}


def _test_lines(test: pref.PrefReport | None) -> list[str]:
    """Comments giving the held-out accuracy of the selector (mix), its scorers and the
    controls on each test file, with the 95% bootstrap intervals."""
    if test is None:
        return []
    groups = {"all test files": test.overall, **test.subsets}
    lines = [
        f"# held out (never fitted on; mix is this selector; 95% bootstrap interval, "
        f"{test.bootstrap} resamples, seed {test.seed}):"
    ]
    for name, group in groups.items():
        order = ["mix", *(s for s in test.scorers if s != "mix")]
        cells = [f"{s} {pref.cell_text(group.scorers[s])}" for s in order]
        cells.append(f"uniform pick {fmt(group.random)}")
        lines.append(f"#   {name} ({group.items} records): " + "; ".join(cells))
    return lines


def _model_lines(configs: dict[str, dict]) -> list[str]:
    """A comment naming the scoring model of the scorers that ran one (mix runs its scorers
    with the model it is given: give it this one)."""
    models = {
        name: f"{c['model']} ({c.get('engine')}, {c.get('dtype')})"
        for name, c in configs.items()
        if "model" in c
    }
    return [f"# scoring model of {name}: {model}" for name, model in models.items()]


def _command(
    paths: list[str], output: str | Path, options: FitOptions, score_options: ScoreOptions
) -> str:
    """The `bon fit` command line that writes this file (options at their defaults left out,
    except the scorers)."""
    words_ = ["bon", "fit", *paths, "-o", str(output)]
    words_ += [w for name in score_options.scorers for w in ("--scorer", name)]
    words_ += _flags(_declared(options), skip=())
    values = score_options.keywords()
    scoring = [(k.keyword, k.field, values[k.keyword]) for k in keyword_fields()]
    words_ += _flags(scoring, skip=("scorers",))
    return " ".join(shlex.quote(w) for w in words_)


def _declared(obj: Any) -> list[tuple[str, dataclasses.Field, Any]]:
    return [(f.name, f, getattr(obj, f.name)) for f in fields(type(obj))]


def _flags(values: list[tuple[str, dataclasses.Field, Any]], skip: tuple[str, ...]) -> list[str]:
    """The command-line flags of the options (keyword, declaration, value) that differ from
    their defaults."""
    out: list[str] = []
    for keyword, f, value in values:
        if keyword in skip or value == f.default:
            continue
        flag = f.metadata["flag"] or "--" + keyword.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else f"--no-{flag.removeprefix('--')}")
        elif isinstance(value, tuple):
            out += [w for item in value for w in (flag, str(item))]
        elif isinstance(value, dict):
            out += [w for k, v in value.items() for w in (flag, f"{k}={v}")]
        elif value is not None:
            out += [flag, str(value)]
    return out


def _quoted(path: str) -> str:
    return _one_line(shlex.quote(path))


def _one_line(text: str) -> str:
    """`text` safe inside a YAML comment line."""
    return text.replace("\r", "\\r").replace("\n", "\\n")
