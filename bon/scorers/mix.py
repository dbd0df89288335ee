"""The `mix` scorer: a fitted combination of other scorers, read from a selector file.

A selector file (YAML, written by `bon fit`, see `bon.fitting`) names the scorers to run, the
`ScoreOptions` values they were fitted under, and one weight per feature. The features of a
candidate are, for each scorer, its score standardised within its record (a z-score over the
record's candidates, negated for lower-is-better scores; a record whose scores are all equal
gives 0s, and a missing or non-finite score counts as 0, the record's mean), plus `length`, the
standardised log(1 + words) of its text. A candidate's mix score is the weighted sum of its
features, so it depends on the record's other candidates (`independent` is False).

Standardising within a record makes scores of different scorers, which live on different scales
(characters, log-probabilities, shares of votes), comparable without any statistic of the
training set: a selector carries weights and nothing else that the data could drift away from.

The file is read and checked when the options are built (`ScoreOptions` calls each scorer's
`check_options`), so an unknown scorer, a weight for a scorer that is not installed, a malformed
file or a format this bon cannot read is reported, with the file and line, before any model
loads. The file's content hash, not its path, enters the recorded configuration.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bon.engines import Engine
from bon.errors import ConfigError
from bon.options import option
from bon.scorers.base import Query, Scored, ScoreOptions, Scorer, ScorerOptions, refused

FORMAT = 1
"""The selector format this bon writes and reads."""
LENGTH = "length"
"""The name of the length feature among the weights."""
STANDARDISE = "within-record-z"
"""The only standardisation there is: a z-score over the record's candidates."""
LENGTH_FEATURE = "log1p-words"
"""The only length feature there is: log(1 + whitespace-separated words)."""
KEYS = ("format", "scorers", "features", "weights", "fit")


def standardise(values: Sequence[float | None], higher_is_better: bool = True) -> list[float]:
    """`values` as z-scores over the finite ones (population standard deviation), negated when
    lower is better; a missing or non-finite value gives 0, and so do values that are all equal
    (compared exactly, so rounding in the mean never makes noise of a constant)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite or all(v == finite[0] for v in finite):
        return [0.0] * len(values)
    mean = math.fsum(finite) / len(finite)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / len(finite))
    sign = 1.0 if higher_is_better else -1.0
    return [
        sign * (float(v) - mean) / std if v is not None and math.isfinite(v) else 0.0
        for v in values
    ]


def words(text: str) -> float:
    """The raw length feature of one text: log(1 + whitespace-separated words)."""
    return math.log1p(len(text.split()))


def features(
    scores: Mapping[str, Sequence[float | None]], texts: Sequence[str], names: Sequence[str]
) -> list[list[float]]:
    """One row per candidate: each named score standardised within the record (in its
    direction), then the standardised length."""
    from bon.scorers import higher_is_better  # here: the registry imports this module

    columns = [standardise(scores[name], higher_is_better(name)) for name in names]
    columns.append(standardise([words(t) for t in texts]))
    return [list(row) for row in zip(*columns, strict=True)]


def combine(rows: Sequence[Sequence[float]], weights: Sequence[float]) -> list[float]:
    """Each row's weighted sum, exactly rounded (`math.fsum`), so a fit and the mix scorer that
    reads its file compute the same floats whatever the platform's linear algebra."""
    return [math.fsum(w * f for w, f in zip(weights, row, strict=True)) for row in rows]


@dataclass(frozen=True)
class Selector:
    """A checked selector file.

    Attributes:
        path: where it was read from.
        sha256: the SHA-256 of its bytes (part of the mix scorer's recorded configuration).
        scorers: scorer name -> the `ScoreOptions` values it runs with, in the file's order.
        weights: feature name -> weight, in feature order (the scorers, then `length`).
    """

    path: str
    sha256: str
    scorers: dict[str, dict[str, Any]]
    weights: dict[str, float]

    @property
    def names(self) -> list[str]:
        return list(self.scorers)

    def score_options(self, shared: ScoreOptions) -> ScoreOptions:
        """`shared` running this selector's scorers with its options (options it does not set
        keep their values in `shared`); `ConfigError` naming the file for a value they reject."""
        own = {name: o for name, o in shared.scorer_options.items() if name != "mix"}
        try:
            out = dataclasses.replace(shared, scorers=tuple(self.names), scorer_options=own)
            for name, values in self.scorers.items():
                out = out.with_values(name, values)
        except ConfigError as exc:
            raise ConfigError(f"{self.path}: {exc}") from None
        return out


def load_selector(path: str | Path) -> Selector:
    """Read and check the selector file at `path`; `ConfigError` naming the file (and its line
    where there is one) and how to fix it."""
    path = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{path}: cannot read the selector file ({exc.strerror or exc}); give the path of "
            "a file written by `bon fit`"
        ) from None
    try:
        text = raw.decode("utf-8")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: a selector file must be UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    return _checked(_File(path, root), data, hashlib.sha256(raw).hexdigest())


@dataclass(frozen=True)
class _File:
    """A selector file's path and YAML node tree, to say on which line a problem is."""

    path: str
    root: yaml.Node | None

    def error(self, problem: str, *keys: str) -> ConfigError:
        line = self.line(*keys)
        where = f"{self.path}:{line}" if line is not None else self.path
        return ConfigError(f"{where}: {problem}")

    def line(self, *keys: str) -> int | None:
        """The 1-based line of the key at `keys` (or of the deepest mapping found on the way)."""
        node = self.root
        if node is None:
            return None
        line = node.start_mark.line + 1
        for key in keys:
            if not isinstance(node, yaml.MappingNode):
                break
            found = next(((k, v) for k, v in node.value if k.value == key), None)
            if found is None:
                break
            line = found[0].start_mark.line + 1
            node = found[1]
        return line


def _checked(file: _File, data: Any, sha256: str) -> Selector:
    if not isinstance(data, dict):
        raise file.error(
            "a selector file must be a mapping with `format`, `scorers`, `features` and "
            f"`weights`, got {type(data).__name__}; write one with `bon fit`"
        )
    unknown = [k for k in data if k not in KEYS]
    if unknown:
        raise file.error(
            f"unknown key `{unknown[0]}`; a selector file has {', '.join(KEYS)}", str(unknown[0])
        )
    _check_format(file, data.get("format"))
    _check_features(file, data.get("features"))
    scorers = _check_scorers(file, data.get("scorers"))
    weights = _check_weights(file, data.get("weights"), list(scorers))
    _check_agreement(file, scorers)
    return Selector(file.path, sha256, scorers, weights)


def _check_format(file: _File, value: Any) -> None:
    if value is None:
        raise file.error(
            f"no `format`: a selector file written by `bon fit` has `format: {FORMAT}`"
        )
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise file.error(f"`format` must be an integer >= 1, got {value!r}", "format")
    if value > FORMAT:
        raise file.error(
            f"format {value} is newer than this bon reads (format {FORMAT}): upgrade bon, or "
            "refit the selector with this one (`bon fit`)",
            "format",
        )


def _check_features(file: _File, value: Any) -> None:
    expected = {"standardise": STANDARDISE, LENGTH: LENGTH_FEATURE}
    if not isinstance(value, dict):
        raise file.error(
            f"`features` must be a mapping {expected}, got {value!r}",
            "features",
        )
    for key, known in expected.items():
        if value.get(key) != known:
            raise file.error(
                f"`features.{key}` must be {known!r} (the only one this bon computes), got "
                f"{value.get(key)!r}",
                "features",
                key,
            )
    extra = sorted(set(value) - set(expected))
    if extra:
        raise file.error(f"unknown key `features.{extra[0]}`", "features", str(extra[0]))


def _installed() -> list[str]:
    return _registry().names()


def _registry() -> Any:
    from bon.scorers import scorers  # here: the registry imports this module

    return scorers


def _check_scorers(file: _File, value: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict) or not value:
        raise file.error(
            f"`scorers` must be a non-empty mapping of scorer names to their options, got "
            f"{value!r}",
            "scorers",
        )
    installed = _installed()
    out: dict[str, dict[str, Any]] = {}
    for name, options in value.items():
        if name == "mix":
            raise file.error(
                "a selector cannot run mix itself: list the scorers it combines", "scorers", "mix"
            )
        if name not in installed:
            raise file.error(
                f"unknown scorer {name!r}; installed scorers: {', '.join(installed)} (install "
                "the plugin that provides it, or refit without it)",
                "scorers",
                str(name),
            )
        options = {} if options is None else options
        if not isinstance(options, dict):
            raise file.error(
                f"`scorers.{name}` must be a mapping of its options, got {options!r}",
                "scorers",
                name,
            )
        allowed = _registry().get(name).options_used()
        for key in options:
            if key not in allowed:
                raise file.error(
                    f"`{key}` is not an option of {name} (its options: "
                    f"{', '.join(allowed) or 'none'})",
                    "scorers",
                    name,
                    str(key),
                )
        out[name] = dict(options)
    return out


def _check_weights(file: _File, value: Any, names: list[str]) -> dict[str, float]:
    if not isinstance(value, dict):
        raise file.error(
            f"`weights` must map each scorer and `{LENGTH}` to a number, got {value!r}", "weights"
        )
    installed = _installed()
    for key in value:
        if key == LENGTH or key in names:
            continue
        if key not in installed:
            problem = (
                f"a weight for {key!r}, which is not an installed scorer ({', '.join(installed)})"
            )
        else:
            problem = (
                f"a weight for {key!r}, which `scorers` does not list: list it there or drop "
                "the weight"
            )
        raise file.error(problem, "weights", str(key))
    out = {}
    for name in [*names, LENGTH]:
        if name not in value:
            raise file.error(f"no weight for `{name}`: give every feature one", "weights")
        weight = value[name]
        if (
            isinstance(weight, bool)
            or not isinstance(weight, (int, float))
            or not math.isfinite(weight)
        ):
            raise file.error(
                f"the weight of `{name}` must be a finite number, got {weight!r}", "weights", name
            )
        out[name] = float(weight)
    return out


def _check_agreement(file: _File, scorers: dict[str, dict[str, Any]]) -> None:
    """Scorers sharing an option must give it the same value (they run with one set)."""
    seen: dict[str, tuple[str, Any]] = {}
    for name, options in scorers.items():
        for key, value in options.items():
            if key in seen and seen[key][1] != value:
                other, first = seen[key]
                raise file.error(
                    f"{other} and {name} give `{key}` different values ({first!r}, {value!r}); "
                    "they run with one set of options",
                    "scorers",
                    name,
                    key,
                )
            seen.setdefault(key, (name, value))


@dataclass(frozen=True)
class MixOptions(ScorerOptions):
    """mix's own options."""

    mix: str | None = option(
        None,
        "Selector file of the mix scorer (YAML written by `bon fit`): the scorers it runs, "
        "their options and the weights of their within-record standard scores.",
        check=lambda v: v is None or (isinstance(v, str) and bool(v)),
        constraint="a file path",
    )


class MixScorer(Scorer):
    """The weighted sum of other scorers' within-record standard scores (see the module)."""

    name = "mix"
    Options = MixOptions
    uses_model = False  # its scorers that run a model sit behind the cache themselves
    independent = False

    @classmethod
    def check_options(cls, options: ScoreOptions) -> None:
        """The selector file, read and checked with `options`, before any model loads."""
        path = options.of(cls.name).mix
        if path is None:
            if cls.name in options.scorers:
                raise ConfigError(
                    "`mix` must name a selector file when the scorers include mix: add "
                    "--mix SELECTOR.yaml (written by `bon fit`)"
                )
            return
        load_selector(path).score_options(options)

    def __init__(self, options: ScoreOptions, engine: Callable[[], Engine]) -> None:
        super().__init__(options, engine)
        if self.own.mix is None:
            raise ConfigError("`mix` must name a selector file: add --mix SELECTOR.yaml")
        from bon.scorers import scorers  # here: the registry imports this module

        self.selector = load_selector(self.own.mix)
        self._options = self.selector.score_options(options)
        self._weights = list(self.selector.weights.values())
        self._parts: list[Scorer] = [
            scorers.get(name)(self._options, engine) for name in self.selector.names
        ]
        self._config: dict[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        """The selector file's content hash (not its path: a moved file is the same
        selector) and each of its scorers' configuration; computed once."""
        if self._config is None:
            self._config = {
                "scorer": self.name,
                "higher_is_better": self.higher_is_better,
                "version": self.version,
                "mix_sha256": self.selector.sha256,
                "scorers": {part.name: part.describe() for part in self._parts},
            }
        return self._config

    def check(self, query: Query) -> None:
        for part in self._parts:
            part.check(query)

    def score(self, queries: Sequence[Query]) -> list[list[Scored]]:
        results = self._run_parts(queries)
        names = self.selector.names
        out = []
        for query, found in zip(queries, results, strict=True):
            values = {name: [s.value for s in found[name]] for name in names}
            totals = combine(features(values, query.candidates, names), self._weights)
            out.append([Scored(total, _evidence(found, i)) for i, total in enumerate(totals)])
        return out

    def _run_parts(self, queries: Sequence[Query]) -> list[dict[str, list[Scored]]]:
        """Each query's scores by each of the selector's scorers, run in the file's order (each
        sees the scores of those before it), those that run a model through the score cache."""
        from bon.cache import CachedScorer, ScoreCache  # here: the cache imports the scorers

        cache = None if self.options.no_cache else ScoreCache(self.options.cache_path)
        try:
            current = [
                [dict(q.scores[i]) if i < len(q.scores) else {} for i in range(len(q.candidates))]
                for q in queries
            ]
            found: list[dict[str, list[Scored]]] = [{} for _ in queries]
            for part in self._parts:
                runner = (
                    CachedScorer(part, cache) if cache is not None and part.uses_model else part
                )
                asked = [
                    Query(q.messages, q.candidates, tuple(scores))
                    for q, scores in zip(queries, current, strict=True)
                ]
                for i, scored in enumerate(runner.score(asked)):
                    found[i][part.name] = scored
                    for candidate, item in zip(current[i], scored, strict=True):
                        candidate[part.name] = item.value
            return found
        finally:
            if cache is not None:
                cache.close()


def _evidence(found: dict[str, list[Scored]], index: int) -> dict[str, Any]:
    """A candidate's evidence: its scorers' scores, and the first refusal among them."""
    out: dict[str, Any] = {"scores": {name: scored[index].value for name, scored in found.items()}}
    for name, scored in found.items():
        if refused(scored[index].evidence):
            out["parse"] = f"{scored[index].evidence['parse']} ({name})"
            break
    return out
