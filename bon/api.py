"""The Python API; it mirrors the CLI command for command, with the same names and defaults.

Each stage has a file function (`generate(input, output, ...)`, resumable, returns a `Report`)
and a records function (`generate_records(records, ...)`, in memory, returns the records).
Keyword options are the fields of the stage's options class (`GenerateOptions`, `ScoreOptions`,
`SelectOptions`); an unknown keyword is a `ConfigError`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bon import pipeline
from bon.errors import ConfigError
from bon.generator import GenerateOptions
from bon.pipeline import Report, Stage
from bon.scorers import ScoreOptions
from bon.select import SelectOptions

# In `bon run`, reranker options whose names the generator also has (model, engine, batch_size,
# max_new_tokens) take this prefix; device and dtype are shared by both stages.
RERANKER_PREFIX = "reranker_"
SHARED_FIELDS = ("device", "dtype")
RUN_FILES = ("candidates.jsonl", "scored.jsonl", "selected.jsonl")


def generate(
    input: str | Path,
    output: str | Path,
    *,
    on_error: str = "fail",
    overwrite: bool = False,
    quiet: bool = False,
    **options: Any,
) -> Report:
    """Sample candidates for each prompt record of `input` into `output` (see `GenerateOptions`)."""
    stage = pipeline.generate_stage(_build(GenerateOptions, options))
    return pipeline.run_file(
        stage, input, output, on_error=on_error, overwrite=overwrite, quiet=quiet
    )


def generate_records(records: Iterable[dict], **options: Any) -> list[dict]:
    """`generate` over in-memory records; returns them with `candidates` added."""
    return pipeline.run_records(pipeline.generate_stage(_build(GenerateOptions, options)), records)


def score(
    input: str | Path,
    output: str | Path,
    *,
    on_error: str = "fail",
    overwrite: bool = False,
    quiet: bool = False,
    **options: Any,
) -> Report:
    """Score every candidate of each record of `input` into `output` (see `ScoreOptions`)."""
    stage = pipeline.score_stage(_build(ScoreOptions, options))
    return pipeline.run_file(
        stage, input, output, on_error=on_error, overwrite=overwrite, quiet=quiet
    )


def score_records(records: Iterable[dict], **options: Any) -> list[dict]:
    """`score` over in-memory records."""
    return pipeline.run_records(pipeline.score_stage(_build(ScoreOptions, options)), records)


def select(
    input: str | Path,
    output: str | Path,
    *,
    on_error: str = "fail",
    overwrite: bool = False,
    quiet: bool = False,
    **options: Any,
) -> Report:
    """Keep the best candidate of each scored record (see `SelectOptions`)."""
    stage = pipeline.select_stage(_build(SelectOptions, options))
    return pipeline.run_file(
        stage, input, output, on_error=on_error, overwrite=overwrite, quiet=quiet
    )


def select_records(records: Iterable[dict], **options: Any) -> list[dict]:
    """`select` over in-memory records."""
    return pipeline.run_records(pipeline.select_stage(_build(SelectOptions, options)), records)


def rerank(
    input: str | Path,
    output: str | Path,
    *,
    on_error: str = "fail",
    overwrite: bool = False,
    quiet: bool = False,
    **options: Any,
) -> Report:
    """`score` then `select` in one pass, for outputs made elsewhere."""
    stage = _rerank_stage(options)
    return pipeline.run_file(
        stage, input, output, on_error=on_error, overwrite=overwrite, quiet=quiet
    )


def rerank_records(records: Iterable[dict], **options: Any) -> list[dict]:
    """`rerank` over in-memory records."""
    return pipeline.run_records(_rerank_stage(options), records)


def run(
    prompts: str | Path,
    out_dir: str | Path,
    *,
    on_error: str = "fail",
    overwrite: bool = False,
    quiet: bool = False,
    **options: Any,
) -> list[Report]:
    """Generate, score and select: writes candidates.jsonl, scored.jsonl and selected.jsonl.

    The stages run one after another, each streaming its input and freeing its model before the
    next loads; each resumes on its own. Reranker options take the prefix `reranker_`
    (`reranker_model`, ...); `device` and `dtype` apply to both models.
    """
    paths = [Path(out_dir) / name for name in RUN_FILES]
    stages = _run_stages(options)
    inputs = [Path(prompts), *paths[:2]]
    # Only the first stage sees user input; later stages read what bon wrote, which is valid.
    return [
        pipeline.run_file(
            stage,
            source,
            target,
            on_error=on_error if i == 0 else "fail",
            overwrite=overwrite,
            quiet=quiet,
        )
        for i, (stage, source, target) in enumerate(zip(stages, inputs, paths, strict=True))
    ]


def run_records(prompts: Iterable[dict], **options: Any) -> list[dict]:
    """`run` over in-memory prompt records; returns the selected records."""
    items = list(prompts)
    for stage in _run_stages(options):
        items = pipeline.run_records(stage, items)
    return items


def _rerank_stage(options: dict[str, Any]) -> Stage:
    options = _without_default_by(options)
    score_options = _take(ScoreOptions, options)
    select_options = _take(SelectOptions, options, defaults={"by": score_options.scorers[0]})
    _reject_leftovers(options, ScoreOptions, SelectOptions)
    return pipeline.chain(
        pipeline.score_stage(score_options), pipeline.select_stage(select_options)
    )


def _run_stages(options: dict[str, Any]) -> list[Stage]:
    options = _without_default_by(options)
    generator_fields = {f.name for f in dataclasses.fields(GenerateOptions)}
    reranker: dict[str, Any] = {}
    for field in dataclasses.fields(ScoreOptions):
        prefixed = RERANKER_PREFIX + field.name
        if field.name in SHARED_FIELDS and field.name in options:
            reranker[field.name] = options[field.name]
        elif field.name in generator_fields and prefixed in options:
            reranker[field.name] = options.pop(prefixed)
        elif field.name not in generator_fields and field.name in options:
            reranker[field.name] = options.pop(field.name)
    generate_options = _take(GenerateOptions, options)
    select_options = _take(
        SelectOptions, options, defaults={"by": ScoreOptions(**reranker).scorers[0]}
    )
    _reject_leftovers(options, GenerateOptions, SelectOptions)
    return [
        pipeline.generate_stage(generate_options),
        pipeline.score_stage(ScoreOptions(**reranker)),
        pipeline.select_stage(select_options),
    ]


def _without_default_by(options: dict[str, Any]) -> dict[str, Any]:
    """A copy of `options`; `by=None` is dropped, so selection follows the first scorer."""
    return {k: v for k, v in options.items() if not (k == "by" and v is None)}


def _build(cls: type, options: dict[str, Any]) -> Any:
    options = dict(options)
    built = _take(cls, options)
    _reject_leftovers(options, cls)
    return built


def _take(cls: type, options: dict[str, Any], defaults: dict[str, Any] | None = None) -> Any:
    """Build `cls` from the keys of `options` that are its fields, removing them."""
    names = {f.name for f in dataclasses.fields(cls)}
    mine = {**(defaults or {}), **{k: options.pop(k) for k in list(options) if k in names}}
    return cls(**mine)


def _reject_leftovers(options: dict[str, Any], *classes: type) -> None:
    if options:
        known = sorted({f.name for cls in classes for f in dataclasses.fields(cls)})
        raise ConfigError(
            f"unknown option(s) {', '.join(sorted(options))}; known: {', '.join(known)}"
        )
