"""The Python API; it mirrors the CLI command for command, with the same names and defaults.

Each stage has a file function (`generate(input, output, ...)`, resumable, returns a `Report`)
and a records function (`generate_records(records, ...)`, in memory, returns the records).
Their keyword options are the fields of the stage's options classes (`GenerateOptions`,
`ScoreOptions`, `SelectOptions`, and `FileOptions` for file runs), declared once there; each
function's signature is derived from those declarations, so `help(bon.generate)` and
`inspect.signature` list every option with its default. An unknown keyword is a `ConfigError`.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bon import pipeline, turns
from bon.errors import ConfigError
from bon.export import ExportOptions, export_file
from bon.export import export_records as _export_records
from bon.generator import GenerateOptions
from bon.options import fields, option, types_of, validate
from bon.pipeline import ON_ERROR, Report, Stage
from bon.scorers import ScoreOptions
from bon.select import SelectOptions

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

    def __post_init__(self) -> None:
        validate(self)


@dataclass(frozen=True)
class Group:
    """The options of one class as a command takes them: `prefix` before clashing names."""

    cls: type
    prefix: str = ""
    clashes: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()

    def names(self) -> dict[str, str]:
        """Keyword name -> field name, for the fields this group contributes."""
        out = {}
        for field in fields(self.cls):
            if field.name in self.skip:
                continue
            out[(self.prefix if field.name in self.clashes else "") + field.name] = field.name
        return out


def _generator_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(GenerateOptions))


COMMANDS: dict[str, list[Group]] = {
    "generate": [Group(GenerateOptions)],
    "score": [Group(ScoreOptions)],
    "select": [Group(SelectOptions)],
    "rerank": [Group(ScoreOptions), Group(SelectOptions)],
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

TOOLS: dict[str, list[Group]] = {"export": [Group(ExportOptions)]}
"""Commands outside the pipeline's stages (no records function, no file options)."""


def _groups(command: str, files: bool) -> list[Group]:
    own = COMMANDS[command] if command in COMMANDS else TOOLS[command]
    return [*own, *([Group(FileOptions)] if files else [])]


def keywords(command: str, *, files: bool = True) -> list[inspect.Parameter]:
    """The keyword parameters of a command's API function (with `FileOptions` for file runs)."""
    groups = _groups(command, files)
    params = []
    for group in groups:
        hints = types_of(group.cls)
        for keyword, name in group.names().items():
            default = next(f.default for f in fields(group.cls) if f.name == name)
            params.append(
                inspect.Parameter(
                    keyword, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hints[name]
                )
            )
    return params


def _mirrors(command: str, *, files: bool) -> Callable[[Callable], Callable]:
    """Give an API function the derived signature and an options section in its docstring."""

    def wrap(fn: Callable) -> Callable:
        head = [p for p in inspect.signature(fn).parameters.values() if p.kind != p.VAR_KEYWORD]
        fn.__signature__ = inspect.Signature(
            [*head, *keywords(command, files=files)],
            return_annotation=inspect.signature(fn).return_annotation,
        )
        lines = [
            f"    {p.name}={p.default!r}: {_help(command, p.name)}"
            for p in keywords(command, files=files)
        ]
        fn.__doc__ = f"{fn.__doc__}\n\n    Options:\n" + "\n".join(lines)
        return fn

    return wrap


def _help(command: str, keyword: str) -> str:
    for group in _groups(command, True):
        name = group.names().get(keyword)
        if name is not None:
            return next(f.metadata["help"] for f in fields(group.cls) if f.name == name)
    return ""


def _split(command: str, options: dict[str, Any], *, files: bool) -> list[Any]:
    """Build each group's options object from the keywords; an unknown keyword is an error."""
    options = dict(options)
    groups = _groups(command, files)
    shared = {name: options[name] for name in SHARED_FIELDS if name in options}
    built = []
    for group in groups:
        mine = {name: options.pop(kw) for kw, name in group.names().items() if kw in options}
        if set(group.skip) & set(shared):  # the reranker in `run` shares device and dtype
            mine.update({name: shared[name] for name in group.skip if name in shared})
        built.append(mine)
    if options:
        known = sorted(kw for g in groups for kw in g.names())
        raise ConfigError(
            f"unknown option(s) {', '.join(sorted(options))}; known: {', '.join(known)}"
        )
    return [g.cls(**mine) for g, mine in zip(groups, built, strict=True)]


def validate_options(command: str, options: dict[str, Any]) -> None:
    """Check a command's keyword options (with its file options) as the API function would,
    loading no model; raises `ConfigError`."""
    _split(command, options, files=True)


def _run_file(stage: Stage, input: str | Path, output: str | Path, files: FileOptions) -> Report:
    return pipeline.run_file(
        stage,
        input,
        output,
        on_error=files.on_error,
        overwrite=files.overwrite,
        quiet=files.quiet,
    )


@_mirrors("generate", files=True)
def generate(input: str | Path, output: str | Path, **options: Any) -> Report:
    """Sample candidates for each prompt record of `input` into `output`."""
    generate_options, files = _split("generate", options, files=True)
    return _run_file(pipeline.generate_stage(generate_options), input, output, files)


@_mirrors("generate", files=False)
def generate_records(records: Iterable[dict], **options: Any) -> list[dict]:
    """`generate` over in-memory records; returns them with `candidates` added."""
    (generate_options,) = _split("generate", options, files=False)
    return pipeline.run_records(pipeline.generate_stage(generate_options), records)


@_mirrors("score", files=True)
def score(input: str | Path, output: str | Path, **options: Any) -> Report:
    """Score every candidate of each record of `input` into `output`."""
    score_options, files = _split("score", options, files=True)
    return _run_file(pipeline.score_stage(score_options), input, output, files)


@_mirrors("score", files=False)
def score_records(records: Iterable[dict], **options: Any) -> list[dict]:
    """`score` over in-memory records."""
    (score_options,) = _split("score", options, files=False)
    return pipeline.run_records(pipeline.score_stage(score_options), records)


@_mirrors("select", files=True)
def select(input: str | Path, output: str | Path, **options: Any) -> Report:
    """Keep the best candidate of each scored record."""
    select_options, files = _split("select", options, files=True)
    return _run_file(pipeline.select_stage(select_options), input, output, files)


@_mirrors("select", files=False)
def select_records(records: Iterable[dict], **options: Any) -> list[dict]:
    """`select` over in-memory records."""
    (select_options,) = _split("select", options, files=False)
    return pipeline.run_records(pipeline.select_stage(select_options), records)


@_mirrors("rerank", files=True)
def rerank(input: str | Path, output: str | Path, **options: Any) -> Report:
    """`score` then `select` in one pass, for outputs made elsewhere."""
    score_options, select_options, files = _split("rerank", options, files=True)
    return _run_file(_rerank_stage(score_options, select_options), input, output, files)


@_mirrors("rerank", files=False)
def rerank_records(records: Iterable[dict], **options: Any) -> list[dict]:
    """`rerank` over in-memory records."""
    score_options, select_options = _split("rerank", options, files=False)
    return pipeline.run_records(_rerank_stage(score_options, select_options), records)


@_mirrors("run", files=True)
def run(prompts: str | Path, out_dir: str | Path, **options: Any) -> list[Report]:
    """Generate, score and select: writes candidates.jsonl, scored.jsonl and selected.jsonl.

    The stages run one after another, each streaming its input and freeing its model before the
    next loads; each resumes on its own, and with `overwrite` only the stages whose input or
    configuration changed are redone. Reranker options whose names the generator also has take
    the prefix `reranker_` (`reranker_model`, ...); `device` and `dtype` apply to both models.
    Records with `turns` (MT-Bench's question files) are answered turn by turn, each turn
    sampled after the selected answer to the one before (see `bon.turns`).
    """
    *stage_options, files = _split("run", options, files=True)
    if turns.is_multiturn(prompts):
        return _run_turns(prompts, Path(out_dir), stage_options, files)
    return _run_three(Path(prompts), Path(out_dir), stage_options, files)


def _run_three(
    prompts: Path, out_dir: Path, stage_options: list[Any], files: FileOptions
) -> list[Report]:
    """Generate, score and select `prompts` into the three files of `out_dir`."""
    paths = [out_dir / name for name in RUN_FILES]
    inputs = [prompts, *paths[:2]]
    reports = []
    for i, (stage, source, target) in enumerate(
        zip(_run_stages(*stage_options), inputs, paths, strict=True)
    ):
        # Only the first stage sees user input; later stages read what bon wrote, which is valid.
        step = files if i == 0 else dataclasses.replace(files, on_error="fail")
        reports.append(_run_file(stage, source, target, step))
    return reports


def _run_turns(
    prompts: str | Path, out_dir: Path, stage_options: list[Any], files: FileOptions
) -> list[Report]:
    """Multi-turn records (see `bon.turns`): turn k runs in OUT/turn-k/, then the selections
    of every turn are merged into OUT/selected.jsonl."""
    source = out_dir / "turn-1" / "prompts.jsonl"
    reports = [_run_file(turns.first_stage(), prompts, source, files)]
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


@_mirrors("run", files=False)
def run_records(prompts: Iterable[dict], **options: Any) -> list[dict]:
    """`run` over in-memory prompt records; returns the selected records."""
    items = list(prompts)
    stage_options = _split("run", options, files=False)
    if items and isinstance(items[0], dict) and "turns" in items[0]:
        return _run_turns_records(items, stage_options)
    for stage in _run_stages(*stage_options):
        items = pipeline.run_records(stage, items)
    return items


def _run_turns_records(items: list[dict], stage_options: list[Any]) -> list[dict]:
    first = pipeline.run_records(turns.first_stage(), items)
    by_turn: list[dict[str, dict]] = []
    current = first
    while current:
        for stage in _run_stages(*stage_options):
            current = pipeline.run_records(stage, current)
        by_turn.append({str(r["id"]): r for r in current})
        current = turns.next_turns(current)
    return turns.merge(first, by_turn)


@_mirrors("export", files=False)
def export(format: str, selected: str | Path, output: str | Path, **options: Any) -> Report:
    """Write the selections of the JSONL file `selected` as `format` (alpacaeval, ifeval,
    mtbench or pairs) to `output`; returns how many rows were written and records skipped."""
    (export_options,) = _split("export", options, files=False)
    return export_file(format, selected, output, export_options)


@_mirrors("export", files=False)
def export_records(format: str, records: Iterable[dict], **options: Any) -> list[dict]:
    """`export` over in-memory records; returns the rows."""
    (export_options,) = _split("export", options, files=False)
    return _export_records(format, records, export_options)


def _first_scorer(select_options: SelectOptions, score_options: ScoreOptions) -> SelectOptions:
    """Selection by the first scorer run, unless `by` names a score."""
    if select_options.by is not None:
        return select_options
    return SelectOptions(by=score_options.scorers[0], keep_all=select_options.keep_all)


def _rerank_stage(score_options: ScoreOptions, select_options: SelectOptions) -> Stage:
    return pipeline.chain(
        pipeline.score_stage(score_options),
        pipeline.select_stage(_first_scorer(select_options, score_options)),
    )


def _run_stages(
    generate_options: GenerateOptions, score_options: ScoreOptions, select_options: SelectOptions
) -> list[Stage]:
    return [
        pipeline.generate_stage(generate_options),
        pipeline.score_stage(score_options),
        pipeline.select_stage(_first_scorer(select_options, score_options)),
    ]
