"""The scorer interface: (conversation, candidate texts) in, one score per candidate out.

Scorers know nothing of files or record layout. Each declares its direction, which the selector
reads instead of assuming an argmax.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from bon.chat import Message
from bon.engines import Engine, EngineOptions
from bon.errors import ConfigError
from bon.options import fields, non_negative, option, positive, used_by, validate
from bon.similarity import DEFAULT_EMBEDDER, SIMILARITIES

PROMPTS = ("paper", "short")
FLIP_FAMILY = ("flip", "flip-k", "flip-likelihood", "flip-tokens")
GENERATIVE_FLIP = ("flip", "flip-k")
JUDGES = ("judge-pointwise", "judge-pairwise", "judge-listwise")
TARGETS = ("instruction", "system")
EMBEDDING_SCORERS = ("relevance", "mbr")


@dataclass(frozen=True)
class Query:
    """What a scorer sees of one record: the chat turns whose last user turn is the instruction
    the candidates answer, and the candidate texts."""

    messages: list[Message]
    candidates: list[str]
    scores: tuple[dict[str, Any], ...] = ()
    """Each candidate's scores so far (from the input records or from a scorer run before this
    one), in candidate order; empty when the caller has none."""
    recorded: tuple[dict[str, Any], ...] = ()
    """Each candidate's other fields as its record holds them (e.g. the generator's
    `logprob_mean`), in candidate order; empty when the caller has none."""

    @property
    def instruction(self) -> str:
        return self.messages[-1]["content"]

    @property
    def history(self) -> list[Message]:
        """The turns before the instruction."""
        return self.messages[:-1]


@dataclass(frozen=True)
class Scored:
    """A candidate's score and the evidence behind it (stored beside the score)."""

    value: float
    evidence: dict[str, Any] = field(default_factory=dict)


def _scorer_names() -> list[str]:
    return _registry().names()


@dataclass(frozen=True)
class ScoreOptions(EngineOptions):
    """Options of the reranker stage: the scoring model (`EngineOptions`, independent of the
    generator's) and the options of each scorer. Each option names the scorers whose values it
    changes; only those enter a scorer's recorded configuration and its cache keys, so changing
    `k` does not touch a run of `flip` alone. `device` and `batch_size` are left out of both
    (they change scores by rounding at most); so are the cache's own settings.
    """

    scorers: tuple[str, ...] = option(
        ("flip-tokens",),
        "Scorer to run; repeat for several (each writes its own score).",
        check=lambda v: isinstance(v, tuple) and len(v) > 0,
        constraint="at least one scorer name",
        choices=_scorer_names,
        flag="--scorer",
    )
    batch_size: int = option(
        16,
        "Reconstructions or judgements computed at once.",
        check=positive,
        constraint="an integer >= 1",
    )
    max_new_tokens: int = option(
        128,
        "Cap on each generated reconstruction or judgement.",
        check=positive,
        constraint="an integer >= 1",
        used_by=(*GENERATIVE_FLIP, *JUDGES),
    )
    max_response_words: int = option(
        256,
        "Responses are cut to this many words before a model or a similarity reads them (long "
        "answers are told apart by their start; a 10 MB response must not overflow the "
        "context).",
        check=positive,
        constraint="an integer >= 1",
        used_by=(*FLIP_FAMILY, *JUDGES, *EMBEDDING_SCORERS),
    )
    similarity: str = option(
        "f1",
        "How inferred and original instructions are compared (mbr: how each candidate is "
        "compared with the others).",
        choices=tuple(sorted(SIMILARITIES)),
        used_by=(*GENERATIVE_FLIP, "mbr"),
    )
    embedder: str = option(
        DEFAULT_EMBEDDER,
        "sentence-transformers model (name or path) of the embedding similarities and of "
        "relevance; the default is the packaged all-MiniLM-L6-v2.",
        check=lambda v: isinstance(v, str) and bool(v),
        constraint="a model name or path",
        used_by=(*GENERATIVE_FLIP, *EMBEDDING_SCORERS),
    )
    prompt: str = option(
        "paper",
        "Reconstruction prompt of flip and flip-k: paper (reasoning, then JSON) or short (the "
        "instruction only). The paper's recipe: --scorer flip --prompt paper --similarity f1.",
        choices=PROMPTS,
        used_by=GENERATIVE_FLIP,
    )
    target: str = option(
        "instruction",
        "What FLIP reconstructs: the last user turn (earlier turns shown as context) or the "
        "system prompt (records must start with one).",
        choices=TARGETS,
        used_by=FLIP_FAMILY,
    )
    seed: int = option(
        0,
        "Base seed; per-candidate seeds derive from it and the candidate's text.",
        check=lambda v: non_negative(v) and isinstance(v, int),
        constraint="an integer >= 0",
        used_by=("flip-k", "random"),
    )
    echo_guard: bool = option(
        True,
        "Penalise scores of responses that restate the instruction.",
        used_by=FLIP_FAMILY,
    )
    echo_ngram: int = option(
        3,
        "Word n-gram size of the echo guard.",
        check=positive,
        constraint="an integer >= 1",
        used_by=FLIP_FAMILY,
    )
    echo_threshold: float = option(
        0.8,
        "Share of the instruction's n-grams found in a response that marks it as an echo.",
        check=lambda v: non_negative(v) and 0 < v <= 1,
        constraint="in (0, 1]",
        used_by=FLIP_FAMILY,
    )
    echo_penalty: float | None = option(
        None,
        "Subtracted from an echo's score; unset: 1.0 for similarity scores, 10.0 nats per "
        "token for flip-likelihood (an echo then ranks below every non-echo).",
        check=lambda v: v is None or non_negative(v),
        constraint=">= 0 (or None for the per-scorer default)",
        used_by=FLIP_FAMILY,
    )
    cache_path: str | None = option(
        None,
        "Score cache file; unset: scores.sqlite in bon's cache folder.",
        check=lambda v: v is None or (isinstance(v, str) and bool(v)),
        constraint="a file path",
    )
    no_cache: bool = option(False, "Neither read nor write the score cache.")

    scorer_options: Mapping[str, Any] = field(default_factory=dict)
    """Scorer name -> that scorer's own options: an instance of its `Options` class or a mapping
    of their values (checked and turned into the instance). A scorer not named here runs with
    its defaults. Flat keywords (`ScoreOptions.from_keywords`, the API, the CLI) fill it."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "scorers", tuple(self.scorers))
        object.__setattr__(self, "scorer_options", _own_options(self.scorer_options))
        super().__post_init__()
        for name in _registry().names():
            _registered(name).check_options(self)

    def of(self, scorer: str) -> Any:
        """The own options of the scorer called `scorer` (its `Options` defaults when unset)."""
        given = self.scorer_options.get(scorer)
        return given if given is not None else _registered(scorer).Options()

    @classmethod
    def from_keywords(cls, **values: Any) -> ScoreOptions:
        """Options from flat keywords, as `bon.score` and `bon score` take them: the shared
        options by name and each scorer's own by its keyword (`option_sections`)."""
        own: dict[str, Any] = {}
        for section in option_sections():
            mine = {f: values.pop(k) for k, f in section.keywords.items() if k in values}
            if mine:
                own.update(dict.fromkeys(section.scorers, section.cls(**mine)))
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"unknown scoring option(s) {', '.join(unknown)}")
        return cls(**values, scorer_options=own)

    def keywords(self) -> dict[str, Any]:
        """Every option by its flat keyword: the inverse of `from_keywords`."""
        out = {f.name: getattr(self, f.name) for f in fields(type(self))}
        for section in option_sections():
            own = self.of(section.scorers[0])
            out.update({k: getattr(own, f) for k, f in section.keywords.items()})
        return out

    def with_values(self, scorer: str, values: Mapping[str, Any]) -> ScoreOptions:
        """These options with `values` (by field name: shared ones, or `scorer`'s own) set."""
        own_names = {f.name for f in fields(_registered(scorer).Options)}
        own = {k: v for k, v in values.items() if k in own_names}
        shared = {k: v for k, v in values.items() if k not in own_names}
        changed = dataclasses.replace(self.of(scorer), **own)
        return dataclasses.replace(
            self, **shared, scorer_options={**self.scorer_options, scorer: changed}
        )


@dataclass(frozen=True)
class ScorerOptions:
    """Base of a scorer's own options class (`Scorer.Options`): frozen, its fields made with
    `bon.options.option`, checked when built. This one, with no fields, is the options class of
    a scorer that has none of its own."""

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class Section:
    """One scorer options class as flat keywords and the CLI take it.

    Attributes:
        scorers: the scorers whose `Options` it is (several when they share the class).
        cls: the options class.
        keywords: keyword -> field name; a field whose name a shared option or an earlier
            section already took is spelled `<scorer>_<field>`.
    """

    scorers: tuple[str, ...]
    cls: type
    keywords: dict[str, str]

    @property
    def title(self) -> str:
        return ", ".join(self.scorers)


def option_sections() -> list[Section]:
    """The own options of every installed scorer that has any, built-ins first (a plugin never
    renames a built-in's keyword), then plugins by name."""
    registry = _registry()
    classes: dict[type, list[str]] = {}
    for name in sorted(registry.names(), key=lambda n: (not _builtin(registry.get(n)), n)):
        cls = registry.get(name).Options
        if any(True for _ in fields(cls)):
            classes.setdefault(cls, []).append(name)
    taken = {f.name for f in fields(ScoreOptions)}
    out = []
    for cls, names in classes.items():
        keywords = {}
        for f in fields(cls):
            keyword = f.name if f.name not in taken else f"{names[0]}_{f.name}".replace("-", "_")
            if keyword in taken:
                raise ConfigError(
                    f"scorer {names[0]!r} declares option {f.name!r}, whose keyword {keyword!r} "
                    "another option already has: rename the option"
                )
            taken.add(keyword)
            keywords[keyword] = f.name
        out.append(Section(tuple(names), cls, keywords))
    return out


@dataclass(frozen=True)
class Keyword:
    """One flat keyword of `ScoreOptions.from_keywords`: its declaring class and field, and its
    section (None for a shared option)."""

    keyword: str
    cls: type
    field: dataclasses.Field
    section: Section | None = None


def keyword_fields() -> list[Keyword]:
    """Every flat keyword: the shared options, then each section's, in declaration order."""
    out = [Keyword(f.name, ScoreOptions, f) for f in fields(ScoreOptions)]
    for section in option_sections():
        names = {f: k for k, f in section.keywords.items()}
        out.extend(Keyword(names[f.name], section.cls, f, section) for f in fields(section.cls))
    return out


def _builtin(cls: type) -> bool:
    return cls.__module__.startswith("bon.")


def _registry() -> Any:
    from bon.scorers import scorers  # here, not at import time: the registry imports us

    return scorers


def _registered(name: str) -> type[Scorer]:
    return _registry().get(name)


def _own_options(given: Mapping[str, Any]) -> dict[str, Any]:
    """`scorer_options` checked: each key an installed scorer, each value its `Options` (a
    mapping of their values is built into one)."""
    if not isinstance(given, Mapping):
        raise ConfigError(f"`scorer_options` must map scorer names to their options, got {given!r}")
    out = {}
    for name, value in given.items():
        cls = _registered(name).Options
        if isinstance(value, Mapping):
            known = [f.name for f in fields(cls)]
            unknown = sorted(set(value) - set(known))
            if unknown:
                raise ConfigError(
                    f"`{unknown[0]}` is not an option of {name} (its options: "
                    f"{', '.join(known) or 'none'})"
                )
            value = cls(**value)
        if not isinstance(value, cls):
            raise ConfigError(
                f"`scorer_options[{name!r}]` must be a {cls.__name__} or a mapping of its "
                f"values, got {value!r}"
            )
        out[name] = value
    return out


class Scorer(ABC):
    """Scores candidates. Subclasses register with `bon.scorers.register`.

    A scorer gets the reranker's options and a function returning the shared engine, called only
    when the scorer first needs a model.
    """

    name: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    uses_model: ClassVar[bool] = True
    """False for scorers that run no model (the controls): the reranker does not cache them."""
    reads_prefix: ClassVar[bool] = False
    """True when the scorer can score a partial response (the first tokens of a candidate still
    being decoded) by reading it, as pruned best-of-N does between decoding segments
    (`bon.prune`); scorers that decode from the response (flip, flip-k, the judges) or compare
    candidates cannot."""
    version: ClassVar[str] = "1"
    """Bumped whenever the scorer's computation changes (prompt, parsing, aggregation), so
    cached scores of an older version are never reused."""
    independent: ClassVar[bool] = True
    """True when a candidate's score depends only on the conversation and its own text (so the
    cache can key it alone); False for scorers that compare candidates (pairwise, listwise)."""
    Options: ClassVar[type] = ScorerOptions
    """The scorer's own options class (a `ScorerOptions` subclass); every one of its fields
    changes the scorer's values. Its instance for a run is `own`."""

    def __init__(self, options: ScoreOptions, engine: Callable[[], Engine]) -> None:
        self.options = options
        given = options.scorer_options.get(self.name)
        self.own = given if given is not None else self.Options()
        """This scorer's own options (an instance of `Options`)."""
        self._engine = engine

    @classmethod
    def check_options(cls, options: ScoreOptions) -> None:
        """Check this scorer's own options against the whole `options` as they are built, before
        any model loads (the mix scorer reads its selector file here); raise `ConfigError`. The
        default checks nothing more than the options classes do."""

    @abstractmethod
    def score(self, queries: Sequence[Query]) -> list[list[Scored]]:
        """One `Scored` per candidate of each query, in input order."""

    @property
    def engine(self) -> Engine:
        return self._engine()

    def describe(self) -> dict[str, Any]:
        """What determines this scorer's values (recorded per record, part of its cache keys):
        its name, direction and version, the scoring model's identity when it uses one, and
        the options declared as used by it."""
        out: dict[str, Any] = {
            "scorer": self.name,
            "higher_is_better": self.higher_is_better,
            "version": self.version,
        }
        if self.uses_model:
            out.update(self.options.identity())
        out.update({name: getattr(self.options, name) for name in used_by(ScoreOptions, self.name)})
        own = self.own
        out.update({f.name: getattr(own, f.name) for f in fields(self.Options)})
        return out

    @classmethod
    def options_used(cls) -> list[str]:
        """The options that change this scorer's values: the shared ones declared as used by it,
        then its own."""
        return [*used_by(ScoreOptions, cls.name), *(f.name for f in fields(cls.Options))]

    def clipped(self, queries: Sequence[Query]) -> list[Query]:
        """`queries` with each candidate cut to `max_response_words` words."""
        limit = self.options.max_response_words
        return [Query(q.messages, [clip_words(t, limit) for t in q.candidates]) for q in queries]

    def check(self, query: Query) -> None:
        """Raise `RecordProblem` for a record this scorer cannot score (checked before any
        model loads)."""


CHARS_PER_WORD = 16


def refused(evidence: Any) -> bool:
    """True when a score's evidence says the engine refused to answer (parse status "error...")."""
    status = evidence.get("parse") if isinstance(evidence, dict) else None
    return isinstance(status, str) and status.startswith("error")


def clip_words(text: str, limit: int) -> str:
    """`text` cut after its `limit`-th whitespace-separated word, its layout kept, and to at
    most `CHARS_PER_WORD * limit` characters (a response without spaces is no exception)."""
    text = text[: CHARS_PER_WORD * limit]
    for count, match in enumerate(re.finditer(r"\S+", text), start=1):
        if count == limit:
            return text[: match.end()]
    return text


def text_seed(seed: int, *parts: str) -> int:
    """A 31-bit seed from a base seed and some text (stable across runs and machines)."""
    digest = hashlib.sha256("\x1f".join([str(seed), *parts]).encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def regroup(flat: Sequence[Scored], sizes: Sequence[int]) -> list[list[Scored]]:
    """Split a flat list of scores back into one list per query."""
    out, start = [], 0
    for size in sizes:
        out.append(list(flat[start : start + size]))
        start += size
    return out


def json_object(text: str) -> dict[str, Any] | None:
    """The JSON object spanning the first "{" to the last "}" of a model's output, if it parses."""
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        data = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None
