"""The `bon` command line: options in, one library call, a report on stderr."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

import click

from bon import api
from bon.engines.base import DTYPES
from bon.errors import BonError
from bon.generator import GenerateOptions as G
from bon.pipeline import ON_ERROR, Report
from bon.scorers import ScoreOptions as S
from bon.select import SelectOptions

INPUT = click.Path(exists=True, dir_okay=False)


def _common(fn: Callable) -> Callable:
    """Options every file command takes."""
    fn = click.option(
        "--on-error",
        type=click.Choice(ON_ERROR),
        default="fail",
        show_default=True,
        help="On a bad record: stop, or write it to OUTPUT.errors.jsonl and go on.",
    )(fn)
    fn = click.option(
        "--overwrite",
        is_flag=True,
        default=False,
        help="Start over instead of resuming an earlier run.",
    )(fn)
    fn = click.option(
        "--quiet", "-q", is_flag=True, default=False, help="No progress bars or log lines."
    )(fn)
    return fn


def _hardware(fn: Callable) -> Callable:
    fn = click.option(
        "--device", default=G.device, show_default=True, help="auto, cpu, cuda, cuda:N or mps."
    )(fn)
    fn = click.option(
        "--dtype",
        type=click.Choice(DTYPES),
        default=G.dtype,
        show_default=True,
        help="Model precision; auto is bfloat16.",
    )(fn)
    return fn


def _engine_args(
    ctx: click.Context, param: click.Parameter, values: tuple[str, ...]
) -> dict[str, str] | None:
    """`KEY=VALUE` pairs as a dict; the engine converts and checks them."""
    if not values:
        return None
    pairs = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {value!r}", ctx, param)
        pairs[key.strip()] = text
    return pairs


ENGINE_ARG_HELP = (
    "Engine-specific option KEY=VALUE; repeat for several (e.g. enforce_eager=true, "
    "gpu_memory_utilization=0.45, base_url=http://127.0.0.1:8000/v1). An unknown key lists the "
    "engine's options."
)


def _generation(fn: Callable) -> Callable:
    for decorator in reversed(
        [
            click.option(
                "--model",
                "-m",
                default=G.model,
                show_default=True,
                help="Generator: an alias, a Hub id or a local path.",
            ),
            click.option(
                "--engine",
                default=G.engine,
                show_default=True,
                help="Generation engine: hf, vllm or openai.",
            ),
            click.option(
                "--engine-arg",
                "engine_args",
                multiple=True,
                default=G.engine_args,
                callback=_engine_args,
                metavar="KEY=VALUE",
                help=ENGINE_ARG_HELP,
            ),
            click.option(
                "--n", "-n", type=int, default=G.n, show_default=True, help="Candidates per prompt."
            ),
            click.option(
                "--temperature",
                type=float,
                default=G.temperature,
                show_default=True,
                help="0 is greedy.",
            ),
            click.option("--top-p", type=float, default=G.top_p, show_default=True),
            click.option("--max-new-tokens", type=int, default=G.max_new_tokens, show_default=True),
            click.option(
                "--seed",
                type=int,
                default=G.seed,
                show_default=True,
                help="Base seed; each record's seed derives from it and its id.",
            ),
            click.option(
                "--batch-size",
                type=int,
                default=G.batch_size,
                show_default=True,
                help="Sequences decoded at once (a prompt counts N times).",
            ),
        ]
    ):
        fn = decorator(fn)
    return fn


def _scoring(prefix: str = "", option_prefix: str = "") -> Callable[[Callable], Callable]:
    """Reranker options; `bon run` prefixes the ones that clash with the generator's."""

    def add(fn: Callable) -> Callable:
        for decorator in reversed(
            [
                click.option(
                    "--scorer",
                    "scorers",
                    multiple=True,
                    default=S.scorers,
                    show_default=True,
                    help="Scorer to run; repeat for several.",
                ),
                click.option(
                    f"--{option_prefix}model",
                    f"{prefix}model",
                    default=S.model,
                    show_default=True,
                    help="Reranker LM: an alias, a Hub id or a local path.",
                ),
                click.option(
                    f"--{option_prefix}engine",
                    f"{prefix}engine",
                    default=S.engine,
                    show_default=True,
                    help="Reranker engine: hf, vllm or openai.",
                ),
                click.option(
                    f"--{option_prefix}engine-arg",
                    f"{prefix}engine_args",
                    multiple=True,
                    default=S.engine_args,
                    callback=_engine_args,
                    metavar="KEY=VALUE",
                    help=ENGINE_ARG_HELP,
                ),
                click.option(
                    f"--{option_prefix}batch-size",
                    f"{prefix}batch_size",
                    type=int,
                    default=S.batch_size,
                    show_default=True,
                    help="Reconstructions decoded at once.",
                ),
                click.option(
                    f"--{option_prefix}max-new-tokens",
                    f"{prefix}max_new_tokens",
                    type=int,
                    default=S.max_new_tokens,
                    show_default=True,
                    help="Cap on each reconstruction.",
                ),
                click.option(
                    "--similarity",
                    type=click.Choice(S.CHOICES["similarity"]),
                    default=S.similarity,
                    show_default=True,
                    help="How inferred and original instructions are compared.",
                ),
                click.option(
                    "--embedder",
                    default=S.embedder,
                    show_default=True,
                    help="sentence-transformers model (name or path) of the cosine similarities.",
                ),
                click.option(
                    "--prompt",
                    type=click.Choice(S.CHOICES["prompt"]),
                    default=S.prompt,
                    show_default=True,
                    help="FLIP reconstruction prompt: paper (reasoning + JSON) or short.",
                ),
                click.option(
                    "--target",
                    type=click.Choice(S.CHOICES["target"]),
                    default=S.target,
                    show_default=True,
                    help="What FLIP reconstructs: the last user turn or the system prompt.",
                ),
                click.option(
                    "--k",
                    type=int,
                    default=S.k,
                    show_default=True,
                    help="Reconstructions sampled per candidate by flip-k.",
                ),
                click.option(
                    f"--{option_prefix}temperature",
                    f"{prefix}temperature",
                    type=float,
                    default=S.temperature,
                    show_default=True,
                    help="Sampling temperature of flip-k.",
                ),
                click.option(
                    f"--{option_prefix}seed",
                    f"{prefix}seed",
                    type=int,
                    default=S.seed,
                    show_default=True,
                    help="Base seed of flip-k and the random control.",
                ),
                click.option(
                    "--echo-guard/--no-echo-guard",
                    default=S.echo_guard,
                    show_default=True,
                    help="Penalise FLIP scores of responses that restate the instruction.",
                ),
                click.option(
                    "--echo-ngram",
                    type=int,
                    default=S.echo_ngram,
                    show_default=True,
                    help="Word n-gram size of the echo guard.",
                ),
                click.option(
                    "--echo-threshold",
                    type=float,
                    default=S.echo_threshold,
                    show_default=True,
                    help="Share of the instruction's n-grams in a response that marks an echo.",
                ),
                click.option(
                    "--echo-penalty",
                    type=float,
                    default=S.echo_penalty,
                    show_default=True,
                    help="Subtracted from an echo's FLIP score  "
                    "[default: 1.0; 10.0 nats/token for flip-likelihood]",
                ),
                click.option(
                    "--pairwise",
                    type=click.Choice(S.CHOICES["pairwise"]),
                    default=S.pairwise,
                    show_default=True,
                    help="judge-pairwise aggregation: both orders of every pair, or a knockout.",
                ),
                click.option(
                    "--cache-path",
                    default=S.cache_path,
                    help="Score cache file  [default: scores.sqlite in bon's cache folder]",
                ),
                click.option(
                    "--no-cache",
                    is_flag=True,
                    default=S.no_cache,
                    help="Neither read nor write the score cache.",
                ),
            ]
        ):
            fn = decorator(fn)
        return fn

    return add


def _selection(fn: Callable) -> Callable:
    fn = click.option("--by", default=None, help="Score to select by  [default: the first scorer]")(
        fn
    )
    fn = click.option(
        "--keep-all", is_flag=True, default=False, help="Keep all candidates beside the selection."
    )(fn)
    return fn


def _reported(fn: Callable[..., Report | list[Report]]) -> Callable[..., None]:
    """Set up logging, turn bon errors into a one-line message, and summarise on stderr."""

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> None:
        _setup_logging(kwargs.get("quiet", False))
        try:
            result = fn(**kwargs)
        except BonError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted: rerun the same command to continue where it stopped", err=True)
            sys.exit(130)
        if not kwargs.get("quiet"):
            for report in result if isinstance(result, list) else [result]:
                _summarise(report)

    return wrapper


def _setup_logging(quiet: bool) -> None:
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="bon: %(message)s",
        stream=sys.stderr,
    )
    if quiet:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()


def _summarise(report: Report) -> None:
    parts = [f"wrote {report.written} records to {report.output}"]
    if report.redone:
        parts.append(f"{report.redone} of them redone because their input changed")
    if report.resumed:
        parts.append(f"{report.resumed} were already done")
    if report.unselected:
        parts.append(f"{report.unselected} records had no finite score (selected is null)")
    if report.errors:
        parts.append(f"{report.errors} bad records skipped (see {report.error_file})")
    click.echo("; ".join(parts), err=True)


@click.group()
@click.version_option(package_name="bon")
def main() -> None:
    """bon: best-of-N sampling with a small reward model that reads responses backwards (FLIP)."""


@main.command()
@click.argument("prompts", type=INPUT)
@click.option(
    "--output", "-o", required=True, help="Candidates JSONL to write (resumed if present)."
)
@_generation
@_hardware
@_common
@_reported
def generate(prompts: str, output: str, **options: Any) -> Report:
    """Sample N candidates for each prompt of PROMPTS (JSONL: `prompt` or `messages`).

    Example: bon generate data/sample_prompts.jsonl -o candidates.jsonl --n 8
    """
    return api.generate(prompts, output, **options)


@main.command()
@click.argument("candidates", type=INPUT)
@click.option("--output", "-o", required=True, help="Scored JSONL to write (resumed if present).")
@_scoring()
@_hardware
@_common
@_reported
def score(candidates: str, output: str, **options: Any) -> Report:
    """Score every candidate of CANDIDATES with FLIP (or other scorers).

    A record needs `prompt` (or `messages`) and `candidates` (objects with `text`) or
    `responses` (strings); files made by other tools work.

    Example: bon score candidates.jsonl -o scored.jsonl
    """
    return api.score(candidates, output, **options)


@main.command()
@click.argument("scored", type=INPUT)
@click.option("--output", "-o", required=True, help="Selected JSONL to write.")
@click.option("--by", default=SelectOptions.by, show_default=True, help="Score to select by.")
@click.option(
    "--keep-all", is_flag=True, default=False, help="Keep all candidates beside the selection."
)
@_common
@_reported
def select(scored: str, output: str, **options: Any) -> Report:
    """Keep the best-scoring candidate of each record (ties: the lowest index).

    Example: bon select scored.jsonl -o selected.jsonl
    """
    return api.select(scored, output, **options)


@main.command()
@click.argument("file", type=INPUT)
@click.option("--output", "-o", required=True, help="Selected JSONL to write.")
@_scoring()
@_selection
@_hardware
@_common
@_reported
def rerank(file: str, output: str, **options: Any) -> Report:
    """Score and select in one step, for outputs you already have.

    Example: bon rerank my_outputs.jsonl -o best.jsonl
    """
    return api.rerank(file, output, **options)


@main.command()
@click.argument("prompts", type=INPUT)
@click.option(
    "--output",
    "-o",
    "out_dir",
    required=True,
    help="Folder for candidates.jsonl, scored.jsonl and selected.jsonl.",
)
@_generation
@_scoring(prefix=api.RERANKER_PREFIX, option_prefix="reranker-")
@_selection
@_hardware
@_common
@_reported
def run(prompts: str, out_dir: str, **options: Any) -> list[Report]:
    """Generate, score and select: the whole best-of-N job over PROMPTS.

    Example: bon run data/sample_prompts.jsonl -o out/ --n 4
    """
    return api.run(prompts, out_dir, **options)
