"""The Python API; it mirrors the CLI command for command, with the same names and defaults.

Each stage has a file function (`generate(input, output, ...)`, resumable, returns a `Report`)
and a records function (`generate_records(records, ...)`, in memory, returns the records).
Their options are the stage's options objects (`GenerateOptions`, `ScoreOptions`,
`SelectOptions`, and `FileOptions` for file runs), taken whole by keyword (`generate=`,
`score=`, `select=`, `files=`) or field by field as flat keywords, which override the fields of
a given object. The flat keywords' runtime signature is derived from the declarations, so
`help(bon.generate)` and `inspect.signature` list every option with its default; their static
types are the `TypedDict`s of `bon.keywords`, generated from the same declarations, so a type
checker catches a misspelled keyword. At run time an unknown keyword is a `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import inspect
import multiprocessing
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from bon import adaptive, prune, records, runner, stages, turns
from bon.codec import STDIO, read_lines
from bon.engines import Engine, SharedEngine, same_engine
from bon.errors import BonError, ConfigError, InputError
from bon.export import ExportOptions, export_file
from bon.export import export_records as _export_records
from bon.fitting import FitOptions, FitReport, check_scorers, fit_files
from bon.follow import writer_alive
from bon.generator import GenerateOptions
from bon.keywords import (
    ExportArgs,
    ExportRecordsArgs,
    FitArgs,
    GenerateArgs,
    GenerateRecordsArgs,
    RerankArgs,
    RerankRecordsArgs,
    RunArgs,
    RunRecordsArgs,
    ScoreArgs,
    ScoreRecordsArgs,
    SelectArgs,
    SelectRecordsArgs,
)
from bon.options import (
    fields,
    non_negative,
    option,
    positive,
    refuse_unknown,
    types_of,
    validate,
)
from bon.outputs import Report, mark_complete
from bon.ray_runner import RayRunner
from bon.records import RecordProblem
from bon.runner import ON_ERROR
from bon.scorers import ScoreOptions
from bon.scorers.base import keyword_fields
from bon.select import SelectOptions
from bon.shards import merge as merge_shards
from bon.shards import parse_shard, valid_shard
from bon.stages import Stage

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # typing_extensions comes with torch; setup.cfg names it for Python 3.10
    from typing_extensions import Unpack

# In `bon run`, reranker options whose names the generator also has (model, engine, batch_size,
# max_new_tokens, ...) take this prefix; device and dtype are shared by both stages.
RERANKER_PREFIX = "reranker_"
SHARED_FIELDS = ("device", "dtype")
RUN_FILES = ("candidates.jsonl", "scored.jsonl", "selected.jsonl")


@dataclass(frozen=True)
class FileOptions:
    """How a stage treats its files."""

    on_error: str = option(
        "fail",
        "On a bad record: stop (fail), or write it to OUTPUT.errors.jsonl and go on (skip).",
        choices=ON_ERROR,
    )
    overwrite: bool = option(
        False,
        "Redo the records whose configuration changed instead of refusing to resume.",
    )
    quiet: bool = option(False, "No progress bars or log lines.", short="-q")
    follow: bool = option(
        False,
        "Read INPUT while another bon command is still writing it, until that command marks "
        "it complete in its manifest.",
    )
    shard: str | None = option(
        None,
        "Take only shard I of K of the input (I/K, 1-based, by a hash of each id); join the "
        "shards' outputs with `bon merge`.",
        check=lambda v: v is None or valid_shard(v),
        constraint="I/K with 1 <= I <= K (e.g. 1/4)",
    )
    ray: str | None = option(
        None,
        "Run the model stages as Ray Data pipelines: `--ray` alone (or `local`) starts a Ray "
        "cluster inside this process; `--ray=ADDRESS` joins a running one (`auto` for the one "
        "`ray start` began on this machine, or `ray://HOST:10001`).",
    )
    ray_actors: int = option(
        2,
        "Ray actors (copies of the model) per stage.",
        check=positive,
        constraint="an integer >= 1",
    )
    ray_cpus: float = option(
        0.5,
        "CPUs each Ray actor reserves; fractions let actors share cores.",
        check=lambda v: non_negative(v) and v > 0,
        constraint="a number > 0",
    )
    ray_gpus: float = option(
        0.0, "GPUs each Ray actor reserves.", check=non_negative, constraint="a number >= 0"
    )
    concurrent: bool = option(
        False,
        "Generate and score at the same time, in two processes: the scorer follows "
        "candidates.jsonl as it grows.",
    )

    def __post_init__(self) -> None:
        validate(self)
        if self.concurrent and self.ray is not None:
            raise ConfigError("`concurrent` and `ray` do not go together; choose one")


# The file options each command leaves out: following is for stages that read bon's output,
# running stages concurrently is for `run`, Ray for stages that hold a model.
RAY_FIELDS = ("ray", "ray_actors", "ray_cpus", "ray_gpus")
FILE_SKIPS: dict[str, tuple[str, ...]] = {
    "generate": ("follow", "concurrent"),
    "score": ("concurrent",),
    "select": ("concurrent", *RAY_FIELDS),
    "rerank": ("concurrent",),
    "run": ("follow",),
    "eval ifeval": ("follow", "shard"),  # reads its packaged prompts whole, reports on all
}


def file_group(command: str) -> Group:
    """The `FileOptions` a command takes."""
    return Group(FileOptions, skip=FILE_SKIPS.get(command, ()))


@dataclass(frozen=True)
class Entry:
    """One option as a command takes it.

    Attributes:
        keyword: its name in the API function and (dashed) on the command line.
        name: its name in the options class (for a scorer's own option, the flat keyword
            `ScoreOptions.from_keywords` takes).
        field: its declaration.
        hint: its type.
        owner: the options class that declares it (a scorer's own options class for its own).
        section: the scorers whose own option it is; None for a stage's options.
    """

    keyword: str
    name: str
    field: dataclasses.Field
    hint: Any
    owner: type
    section: str | None = None


OBJECT_PARAMS: dict[type, str] = {
    GenerateOptions: "generate",
    ScoreOptions: "score",
    SelectOptions: "select",
    FileOptions: "files",
    ExportOptions: "export",
    FitOptions: "fit",
}
"""The keyword under which each API function takes an options class's object whole."""


@dataclass(frozen=True)
class Group:
    """The options of one class as a command takes them: `prefix` before clashing names. The
    group of `ScoreOptions` holds every installed scorer's own options too."""

    cls: type[Any]
    prefix: str = ""
    clashes: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()

    @property
    def param(self) -> str:
        """The API functions' keyword that takes this group's options object whole."""
        return OBJECT_PARAMS[self.cls]

    def entries(self) -> list[Entry]:
        """The options this group contributes, in the order `--help` lists them."""
        if issubclass(self.cls, ScoreOptions):
            declared = [(k.keyword, k.cls, k.field, k.section) for k in keyword_fields()]
        else:
            declared = [(f.name, self.cls, f, None) for f in fields(self.cls)]
        return [
            Entry(
                (self.prefix if name in self.clashes else "") + name,
                name,
                field,
                types_of(cls)[field.name],
                cls,
                section.title if section else None,
            )
            for name, cls, field, section in declared
            if name not in self.skip
        ]

    def names(self) -> dict[str, str]:
        """Keyword name -> name in the options class, for the options this group contributes."""
        return {e.keyword: e.name for e in self.entries()}

    def build(self, values: dict[str, Any], base: Any = None) -> Any:
        """The options object of `values` (by name in the options class), set over the fields
        of `base` when one is given (an object of `cls`, left unchanged)."""
        if base is None:
            if issubclass(self.cls, ScoreOptions):
                return self.cls.from_keywords(**values)
            return self.cls(**values)
        if not isinstance(base, self.cls):
            raise ConfigError(
                f"`{self.param}` must be a {self.cls.__name__}, got {base!r}: build it with "
                f"bon.{self.cls.__name__}(...) or give its options as keywords"
            )
        if not values:
            return base
        if isinstance(base, ScoreOptions):
            return type(base).from_keywords(**{**base.keywords(), **values})
        return dataclasses.replace(base, **values)


def _generator_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(GenerateOptions))


ADAPTIVE_FIELDS = ("adaptive", "settle")
"""`SelectOptions` that only `run` reads (adaptive best-of-N samples as it selects)."""
SELECT_GROUP = Group(SelectOptions, skip=ADAPTIVE_FIELDS)
"""`SelectOptions` as the commands that select what others sampled take them."""

COMMANDS: dict[str, list[Group]] = {
    "generate": [Group(GenerateOptions)],
    "score": [Group(ScoreOptions)],
    "select": [SELECT_GROUP],
    "rerank": [Group(ScoreOptions), SELECT_GROUP],
    "run": [
        Group(GenerateOptions),
        Group(
            ScoreOptions,
            RERANKER_PREFIX,
            clashes=tuple(n for n in _generator_names() if n not in SHARED_FIELDS),
            skip=SHARED_FIELDS,
        ),
        Group(SelectOptions),
    ],
}
"""The option groups of each command, in the order the CLI lists them."""


TOOLS: dict[str, list[Group]] = {
    "export": [Group(ExportOptions)],
    "fit": [Group(FitOptions), Group(ScoreOptions, skip=("mix",))],
    "eval ifeval": COMMANDS["run"],
}
"""Commands outside the pipeline's stages (no records function, no file options)."""


def option_groups(command: str, *, files: bool) -> list[Group]:
    """The option groups of a command's API function (with `FileOptions` for file runs)."""
    own = COMMANDS[command] if command in COMMANDS else TOOLS[command]
    return [*own, *([file_group(command)] if files else [])]


def keywords(command: str, *, files: bool = True) -> list[inspect.Parameter]:
    """The flat keyword parameters of a command's API function (with `FileOptions` for file
    runs)."""
    return [
        inspect.Parameter(
            entry.keyword,
            inspect.Parameter.KEYWORD_ONLY,
            default=entry.field.default,
            annotation=entry.hint,
        )
        for group in option_groups(command, files=files)
        for entry in group.entries()
    ]


F = TypeVar("F", bound=Callable[..., Any])


def _mirrors(command: str, *, files: bool) -> Callable[[F], F]:
    """Give an API function the derived signature (its own parameters, then every flat
    keyword) and an options section in its docstring."""

    def wrap(fn: F) -> F:
        own = inspect.signature(fn)
        head = [p for p in own.parameters.values() if p.kind != p.VAR_KEYWORD]
        flat = keywords(command, files=files)
        signature = inspect.Signature([*head, *flat], return_annotation=own.return_annotation)
        fn.__signature__ = signature  # type: ignore[attr-defined]  # inspect.signature reads it
        objects = ", ".join(
            f"{g.param}={g.cls.__name__}" for g in option_groups(command, files=files)
        )
        lines = [f"    {p.name}={p.default!r}: {_help(command, p.name)}" for p in flat]
        fn.__doc__ = (
            f"{fn.__doc__}\n\n    Options objects: {objects}; the flat options below set their "
            "fields.\n\n    Options:\n" + "\n".join(lines)
        )
        return fn

    return wrap


def _help(command: str, keyword: str) -> str:
    for group in option_groups(command, files=True):
        for entry in group.entries():
            if entry.keyword == keyword:
                return entry.field.metadata["help"]
    return ""


def split_options(
    command: str,
    options: Mapping[str, Any],
    *,
    files: bool,
    given: Mapping[str, Any] | None = None,
) -> list[Any]:
    """Build each group's options object from the flat keywords `options`, over the object
    `given` holds under the group's `param` (e.g. `score`) when it holds one; an unknown
    keyword is an error."""
    options = dict(options)
    given = given or {}
    groups = option_groups(command, files=files)
    shared = {name: options[name] for name in SHARED_FIELDS if name in options}
    built = []
    for group in groups:
        mine = {name: options.pop(kw) for kw, name in group.names().items() if kw in options}
        if set(group.skip) & set(shared):  # the reranker in `run` shares device and dtype
            mine.update({name: shared[name] for name in group.skip if name in shared})
        built.append(mine)
    refuse_unknown(options, (kw for g in groups for kw in g.names()))
    return [g.build(mine, given.get(g.param)) for g, mine in zip(groups, built, strict=True)]


def validate_options(command: str, options: Mapping[str, Any]) -> None:
    """Check a command's keyword options (with its file options) as the API function would,
    loading no model; raises `ConfigError`."""
    split_options(command, options, files=True)


def _run_file(
    build: Callable[[], Stage],
    input: str | Path,
    output: str | Path,
    files: FileOptions,
    *,
    follow: bool | None = None,
) -> Report:
    """Run the stage `build()` makes over a file (`build` itself goes to Ray's actors)."""
    runs = runner.run_locally
    if files.ray is not None:
        runs = RayRunner(
            build,
            address=files.ray,
            actors=files.ray_actors,
            cpus=files.ray_cpus,
            gpus=files.ray_gpus,
            quiet=files.quiet,
            spool_dir=None if str(output) == STDIO else Path(output).parent,
        )
    return runner.run_file(
        build(),
        input,
        output,
        on_error=files.on_error,
        overwrite=files.overwrite,
        quiet=files.quiet,
        follow=files.follow if follow is None else follow,
        shard=parse_shard(files.shard),
        runner=runs,
    )


@_mirrors("generate", files=True)
def generate(
    input: str | Path,
    output: str | Path,
    *,
    generate: GenerateOptions | None = None,
    files: FileOptions | None = None,
    **options: Unpack[GenerateArgs],
) -> Report:
    """Sample candidates for each prompt record of `input` into `output`."""
    generate_options, file_options = split_options(
        "generate", options, files=True, given={"generate": generate, "files": files}
    )
    return _run_file(partial(stages.generate_stage, generate_options), input, output, file_options)


@_mirrors("generate", files=False)
def generate_records(
    records: Iterable[dict],
    *,
    generate: GenerateOptions | None = None,
    **options: Unpack[GenerateRecordsArgs],
) -> list[dict]:
    """`generate` over in-memory records; returns them with `candidates` added."""
    (generate_options,) = split_options(
        "generate", options, files=False, given={"generate": generate}
    )
    return runner.run_records(stages.generate_stage(generate_options), records)


@_mirrors("score", files=True)
def score(
    input: str | Path,
    output: str | Path,
    *,
    score: ScoreOptions | None = None,
    files: FileOptions | None = None,
    **options: Unpack[ScoreArgs],
) -> Report:
    """Score every candidate of each record of `input` into `output`."""
    score_options, file_options = split_options(
        "score", options, files=True, given={"score": score, "files": files}
    )
    return _run_file(partial(stages.score_stage, score_options), input, output, file_options)


@_mirrors("score", files=False)
def score_records(
    records: Iterable[dict],
    *,
    score: ScoreOptions | None = None,
    **options: Unpack[ScoreRecordsArgs],
) -> list[dict]:
    """`score` over in-memory records."""
    (score_options,) = split_options("score", options, files=False, given={"score": score})
    return runner.run_records(stages.score_stage(score_options), records)


@_mirrors("select", files=True)
def select(
    input: str | Path,
    output: str | Path,
    *,
    select: SelectOptions | None = None,
    files: FileOptions | None = None,
    **options: Unpack[SelectArgs],
) -> Report:
    """Keep the best candidate of each scored record."""
    select_options, file_options = split_options(
        "select", options, files=True, given={"select": select, "files": files}
    )
    return _run_file(partial(stages.select_stage, select_options), input, output, file_options)


@_mirrors("select", files=False)
def select_records(
    records: Iterable[dict],
    *,
    select: SelectOptions | None = None,
    **options: Unpack[SelectRecordsArgs],
) -> list[dict]:
    """`select` over in-memory records."""
    (select_options,) = split_options("select", options, files=False, given={"select": select})
    return runner.run_records(stages.select_stage(select_options), records)


@_mirrors("rerank", files=True)
def rerank(
    input: str | Path,
    output: str | Path,
    *,
    score: ScoreOptions | None = None,
    select: SelectOptions | None = None,
    files: FileOptions | None = None,
    **options: Unpack[RerankArgs],
) -> Report:
    """`score` then `select` in one pass, for outputs made elsewhere."""
    given = {"score": score, "select": select, "files": files}
    score_options, select_options, file_options = split_options(
        "rerank", options, files=True, given=given
    )
    build = partial(_rerank_stage, score_options, select_options)
    return _run_file(build, input, output, file_options)


@_mirrors("rerank", files=False)
def rerank_records(
    records: Iterable[dict],
    *,
    score: ScoreOptions | None = None,
    select: SelectOptions | None = None,
    **options: Unpack[RerankRecordsArgs],
) -> list[dict]:
    """`rerank` over in-memory records."""
    score_options, select_options = split_options(
        "rerank", options, files=False, given={"score": score, "select": select}
    )
    return runner.run_records(_rerank_stage(score_options, select_options), records)


RunStages = tuple[GenerateOptions, ScoreOptions, SelectOptions]
"""The options of `run`'s three stages."""


@_mirrors("run", files=True)
def run(
    prompts: str | Path,
    out_dir: str | Path,
    *,
    generate: GenerateOptions | None = None,
    score: ScoreOptions | None = None,
    select: SelectOptions | None = None,
    files: FileOptions | None = None,
    **options: Unpack[RunArgs],
) -> list[Report]:
    """Generate, score and select: writes candidates.jsonl, scored.jsonl and selected.jsonl.

    The stages run one after another, each streaming its input and freeing its model before the
    next loads (one model serves both when they name the same one with the same engine
    settings); each resumes on its own, and with `overwrite` only the stages whose input or
    configuration changed are redone. Reranker options whose names the generator also has take
    the prefix `reranker_` (`reranker_model`, ...); `device` and `dtype` apply to both models
    (an object's own `device` and `dtype` apply to its stage alone). Records with `turns`
    (MT-Bench's question files) are answered turn by turn, each turn sampled after the selected
    answer to the one before (see `bon.turns`).
    """
    given = {"generate": generate, "score": score, "select": select, "files": files}
    generate_options, score_options, select_options, file_options = split_options(
        "run", options, files=True, given=given
    )
    _check_run_by(score_options, select_options)
    if str(out_dir) == STDIO:
        raise ConfigError(
            "`run` writes three files into a folder, not to stdout; to stream, pipe the stages: "
            "bon generate P -o - | bon score - -o - | bon select - -o BEST"
        )
    if file_options.concurrent and str(prompts) == STDIO:
        raise ConfigError("`concurrent` generates in a child process: pass PROMPTS as a file")
    stage_options = (generate_options, score_options, select_options)
    if select_options.adaptive:
        return _run_adaptive(prompts, Path(out_dir), stage_options, file_options)
    if turns.is_multiturn(prompts):
        return _run_turns(prompts, Path(out_dir), stage_options, file_options)
    return _run_three(prompts, Path(out_dir), stage_options, file_options)


def _run_adaptive(
    prompts: str | Path, out_dir: Path, stage_options: RunStages, files: FileOptions
) -> list[Report]:
    """Adaptive best-of-N (`bon.adaptive`): the waves run from `prompts` to scored.jsonl, then
    candidates.jsonl (scored.jsonl without scores) and selected.jsonl follow from it. The
    selection's report carries `mean_n`, the mean candidates drawn per record, and `n`."""
    generate_options, score_options, select_options = stage_options
    adaptive.check(generate_options, score_options, select_options)
    if files.ray is not None or files.concurrent:
        raise ConfigError("`adaptive` runs its waves in this process: drop --ray and --concurrent")
    if turns.is_multiturn(prompts):
        raise ConfigError("`adaptive` samples single-turn prompts: drop it for `turns` records")
    candidates, scored, selected = (out_dir / name for name in RUN_FILES)
    engine = _shared_engine(generate_options, score_options)
    try:
        build = partial(adaptive.adaptive_stage, *stage_options, engine)
        reports = [_run_file(build, prompts, scored, files)]
    finally:
        if engine is not None:
            engine.close()
    later = dataclasses.replace(files, on_error="fail", shard=None)
    build = partial(adaptive.candidates_stage, score_options)
    reports.append(_run_file(build, scored, candidates, later))
    select_build = _run_builders(*stage_options)[2]
    reports.append(_run_file(select_build, scored, selected, later))
    mean = adaptive.mean_n([r for _, r in read_lines(selected) if isinstance(r, dict)])
    reports[-1].extra.update(mean_n=mean, n=generate_options.n)
    return reports


def _run_three(
    prompts: str | Path, out_dir: Path, stage_options: RunStages, files: FileOptions
) -> list[Report]:
    """Generate, score and select `prompts` into the three files of `out_dir`."""
    paths = [out_dir / name for name in RUN_FILES]
    # Ray actors and a child process build their own stages: only a local run shares a model.
    engine = None if files.ray or files.concurrent else _shared_engine(*stage_options[:2])
    builds = _run_builders(*stage_options, engine)
    # Only the first stage sees user input (and takes the shard); later stages read what bon
    # wrote, which is valid and already sharded. Selection needs no model: it runs here.
    later = dataclasses.replace(files, on_error="fail", shard=None)
    steps = [
        partial(_run_file, builds[0], prompts, paths[0], files),
        partial(_run_file, builds[1], paths[0], paths[1], later, follow=files.concurrent),
        partial(_run_file, builds[2], paths[1], paths[2], dataclasses.replace(later, ray=None)),
    ]
    if files.concurrent:
        return [*_concurrently(steps[0], steps[1], paths[0]), steps[2]()]
    try:
        return [step() for step in steps]
    finally:
        if engine is not None:
            engine.close()


def _run_turns(
    prompts: str | Path, out_dir: Path, stage_options: RunStages, files: FileOptions
) -> list[Report]:
    """Multi-turn records (see `bon.turns`): turn k runs in OUT/turn-k/, then the selections
    of every turn are merged into OUT/selected.jsonl."""
    source = out_dir / "turn-1" / "prompts.jsonl"
    reports = [_run_file(turns.first_stage, prompts, source, files)]
    selected: list[Path] = []
    while True:
        folder = source.parent
        reports.extend(_run_three(source, folder, stage_options, files))
        selected.append(folder / RUN_FILES[-1])
        following = turns.next_turns(turns.read(selected[-1]))
        if not following:
            break
        source = out_dir / f"turn-{len(selected) + 1}" / "prompts.jsonl"
        turns.write(source, following)
    first = out_dir / "turn-1" / "prompts.jsonl"
    reports.append(turns.merge_files(first, selected, out_dir / RUN_FILES[-1]))
    return reports


def _concurrently(
    produce: Callable[[], Report], consume: Callable[[], Report], between: Path
) -> list[Report]:
    """Run `produce` in a child process and `consume` (which follows `between`) here."""
    # A stale `complete` from an earlier run must not end the follower before the child starts.
    mark_complete(between, False)
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        produced = pool.submit(_in_child, produce)
        while not produced.done() and not writer_alive(between):
            time.sleep(0.05)  # the child is starting: its lock says when it writes
        if produced.done() and produced.exception() is not None:
            produced.result()
        try:
            consumed = consume()
        except BonError:
            if produced.exception() is not None:  # the producer's error explains the follower's
                produced.result()
            raise
        return [produced.result(), consumed]


def _in_child(step: Callable[[], Report]) -> Report:
    """`step()`, with its errors made picklable (an `InputError` cannot be rebuilt from its
    message) so the parent can raise them."""
    try:
        return step()
    except InputError as exc:
        raise BonError(str(exc)) from None


def merge(
    shards: list[str | Path], output: str | Path, *, input: str | Path | None = None
) -> Report:
    """Join the outputs of a sharded run into `output` (see `bon.shards.merge`)."""
    return merge_shards(shards, output, input=input)


@_mirrors("run", files=False)
def run_records(
    prompts: Iterable[dict],
    *,
    generate: GenerateOptions | None = None,
    score: ScoreOptions | None = None,
    select: SelectOptions | None = None,
    **options: Unpack[RunRecordsArgs],
) -> list[dict]:
    """`run` over in-memory prompt records; returns the selected records."""
    items = list(prompts)
    given = {"generate": generate, "score": score, "select": select}
    generate_options, score_options, select_options = split_options(
        "run", options, files=False, given=given
    )
    _check_run_by(score_options, select_options)
    stage_options = (generate_options, score_options, select_options)
    if select_options.adaptive:
        adaptive.check(generate_options, score_options, select_options)
    if items and isinstance(items[0], dict) and "turns" in items[0]:
        if select_options.adaptive:
            raise ConfigError("`adaptive` samples single-turn prompts: drop it for `turns` records")
        return _run_turns_records(items, stage_options)
    engine = _shared_engine(generate_options, score_options)
    try:
        if select_options.adaptive:
            select_stage = _run_builders(*stage_options)[2]()
            chosen = [adaptive.adaptive_stage(*stage_options, engine), select_stage]
        else:
            chosen = _run_stages(*stage_options, engine)
        for stage in chosen:
            items = runner.run_records(stage, items)
    finally:
        if engine is not None:
            engine.close()
    return items


def _run_turns_records(items: list[dict], stage_options: RunStages) -> list[dict]:
    first = runner.run_records(turns.first_stage(), items)
    by_turn: list[dict[str, dict]] = []
    current = first
    while current:
        for stage in _run_stages(*stage_options):
            current = runner.run_records(stage, current)
        by_turn.append({str(r["id"]): r for r in current})
        current = turns.next_turns(current)
    return turns.merge(first, by_turn)


@_mirrors("export", files=False)
def export(
    format: str,
    selected: str | Path,
    output: str | Path,
    *,
    export: ExportOptions | None = None,
    **options: Unpack[ExportArgs],
) -> Report:
    """Write the selections of the JSONL file `selected` as `format` (alpacaeval, ifeval,
    mtbench or pairs) to `output`; returns how many rows were written and records skipped."""
    (export_options,) = split_options("export", options, files=False, given={"export": export})
    return export_file(format, selected, output, export_options)


@_mirrors("export", files=False)
def export_records(
    format: str,
    records: Iterable[dict],
    *,
    export: ExportOptions | None = None,
    **options: Unpack[ExportRecordsArgs],
) -> list[dict]:
    """`export` over in-memory records; returns the rows."""
    (export_options,) = split_options("export", options, files=False, given={"export": export})
    return _export_records(format, records, export_options)


@_mirrors("fit", files=False)
def fit(
    files: str | Path | Sequence[str | Path],
    output: str | Path,
    *,
    fit: FitOptions | None = None,
    score: ScoreOptions | None = None,
    **options: Unpack[FitArgs],
) -> FitReport:
    """Fit a selector on labelled best-of-N records and write it to `output` (YAML) for the
    `mix` scorer: score the records of `files` (candidates with `label` 1/0, or `chosen` and
    `rejected`) with every one of `scorers`, standardise each score and the length within its
    record, and fit their weights by Bradley-Terry on the record's (preferred, other) pairs.
    Returns a `FitReport`: the weights, cross-validated and training accuracy, and each
    feature's accuracy alone (see `bon.fitting`)."""
    check_scorers(options.get("scorers", ()))
    fit_options, score_options = split_options(
        "fit", options, files=False, given={"fit": fit, "score": score}
    )
    return fit_files(files, output, fit_options, score_options)


def _check_run_by(score_options: ScoreOptions, select_options: SelectOptions) -> None:
    """In `run`, the candidates carry only the scores run now: `by` must name one of them."""
    if select_options.by is not None and select_options.by not in score_options.scorers:
        raise ConfigError(
            f"`by` must be one of the scorers run ({', '.join(score_options.scorers)}), got "
            f"{select_options.by!r}: add --scorer {select_options.by} or choose another --by"
        )


def _first_scorer(select_options: SelectOptions, score_options: ScoreOptions) -> SelectOptions:
    """Selection by the first scorer run, unless `by` names a score."""
    if select_options.by is not None:
        return select_options
    return SelectOptions(by=score_options.scorers[0], keep_all=select_options.keep_all)


def _rerank_stage(score_options: ScoreOptions, select_options: SelectOptions) -> Stage:
    stage = stages.chain(
        stages.score_stage(score_options),
        stages.select_stage(_first_scorer(select_options, score_options)),
    )
    by = select_options.by
    if by is None or by in score_options.scorers:
        return stage
    score_check = stage.check

    def check(record: dict) -> None:
        """The scores run now, and the score to select by already in the input."""
        score_check(record)
        if "candidates" not in record:
            raise RecordProblem(
                f"`by` names {by!r}, which is not among the scorers run "
                f"({', '.join(score_options.scorers)}) and not in this record: add "
                f"--scorer {by} or select by one of the scorers run"
            )
        records.check_scored(record, by)

    return dataclasses.replace(stage, check=check)


def _run_builders(
    generate_options: GenerateOptions,
    score_options: ScoreOptions,
    select_options: SelectOptions,
    engine: Engine | None = None,
) -> list[Callable[[], Stage]]:
    """Functions that build `run`'s three stages (picklable without `engine`, for Ray actors and
    child processes); `engine`, when given, serves generation and scoring."""
    scoring_engine = None if engine is None else engine.with_batch_size(score_options.batch_size)
    prune.score_options(generate_options, score_options)  # a pruning error before any model loads
    return [
        partial(stages.generate_stage, generate_options, engine, score_options, scoring_engine),
        partial(stages.score_stage, score_options, scoring_engine),
        partial(stages.select_stage, _first_scorer(select_options, score_options)),
    ]


def _run_stages(
    generate_options: GenerateOptions,
    score_options: ScoreOptions,
    select_options: SelectOptions,
    engine: Engine | None = None,
) -> list[Stage]:
    builds = _run_builders(generate_options, score_options, select_options, engine)
    return [build() for build in builds]


def _shared_engine(
    generate_options: GenerateOptions, score_options: ScoreOptions
) -> SharedEngine | None:
    """One engine for generation and scoring when `same_engine` allows it (one model load, and
    one vLLM start-up, instead of two); else None."""
    return SharedEngine(generate_options) if same_engine(generate_options, score_options) else None
