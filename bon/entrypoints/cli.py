"""The `bon` command line: options in, one library call, a report on stderr."""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import Any

import click

from bon import api, recipes
from bon.engines import engines
from bon.entrypoints.serve import ServeOptions
from bon.errors import BonError
from bon.evals.ifeval import IfevalOptions
from bon.evals.pref import PrefOptions
from bon.export import FORMATS, ExportOptions
from bon.options import choices_of, fields, types_of, value_type
from bon.outputs import Report
from bon.ray_runner import LOCAL
from bon.scorers import ScoreOptions

INPUT = click.Path(exists=True, dir_okay=False)
# A stage's input: `-` is stdin; it may not exist yet when the stage follows it (--follow).
STAGE_INPUT = click.Path(dir_okay=False, allow_dash=True)


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


BARE_VALUES = {"ray": LOCAL}
"""Options whose flag alone stands for a value (`--ray` is `--ray=local`)."""


class _Command(click.Command):
    """A command that gives each `BARE_VALUES` flag written alone its value before parsing, so
    the flag never takes the next argument, such as the command's input file, as its value."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        bare = {
            flag: BARE_VALUES[param.name]
            for param in self.params
            if param.name in BARE_VALUES
            for flag in param.opts
        }
        try:
            return super().parse_args(ctx, _attach_bare(args, bare))
        except click.UsageError as exc:
            hint = _bare_hint(args, bare)
            if hint:  # click declares `message` Final, yet its subclasses format from it
                exc.message = f"{exc.message} ({hint})"  # type: ignore[misc]
            raise

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The options, then each scorer's own options under its name."""
        sections: dict[str | None, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(getattr(param, "section", None), []).append(record)
        for section, records in sections.items():
            title = "Options" if section is None else f"Options of scorer {section}"
            with formatter.section(title):
                formatter.write_dl(records)
        if any(p.name and p.name.endswith("engine_args") for p in self.params):
            for engine, records in _engine_arg_help():
                with formatter.section(f"Engine args of {engine} (--engine-arg KEY=VALUE)"):
                    formatter.write_dl(records)


def _engine_arg_help() -> list[tuple[str, list[tuple[str, str]]]]:
    """Each installed engine's own options as `--help` lists them, from their declarations."""
    out = []
    for name in engines.names():
        args = engines.get(name).Args
        hints = types_of(args)
        records = [
            (
                f"{f.name}={value_type(hints[f.name]).__name__.upper()}",
                f"{f.metadata['help'][:1].upper()}{f.metadata['help'][1:]}. "
                f"[default: {'unset' if f.default is None else repr(f.default)}]",
            )
            for f in fields(args)
        ]
        if records:
            out.append((name, records))
    return out


class _Group(click.Group):
    """A group whose commands, and those of its subgroups, are `_Command`s."""

    command_class = _Command
    group_class = type


def _attach_bare(args: list[str], bare: Mapping[str, str]) -> list[str]:
    """`args` with each bare flag given its value (`--ray` -> `--ray=local`), up to `--`."""
    out = list(args)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        if arg in bare:
            out[i] = f"{arg}={bare[arg]}"
    return out


def _bare_hint(args: list[str], bare: Mapping[str, str]) -> str | None:
    """How to write a value meant for a bare flag (`--ray auto`), when one seems to be."""
    for flag, following in itertools.pairwise(args):
        if flag == "--":
            return None
        if flag in bare and not following.startswith("-"):
            return f"{flag} alone takes no value: to give one, write {flag}={following}"
    return None


def _click_option(entry: api.Entry) -> Callable:
    """The click option derived from one declared option (see `bon.options`)."""
    field, hint, keyword = entry.field, entry.hint, entry.keyword
    prefixed = keyword != entry.name
    meta = field.metadata
    flag = meta["flag"] or "--" + entry.name.replace("_", "-")
    if prefixed:
        flag = "--" + api.RERANKER_PREFIX.replace("_", "-") + flag.removeprefix("--")
    names = [flag] if prefixed or not meta["short"] else [flag, meta["short"]]
    help = meta["help"]
    if meta["used_by"]:
        help += f" [{', '.join(meta['used_by'])}]"
    base = value_type(hint)
    kwargs: dict[str, Any] = {"default": field.default, "help": help, "show_default": True}
    choices = choices_of(field)
    if base is bool:  # both spellings, so a flag can undo a recipe's value
        names[0] = f"{flag}/--no-{flag.removeprefix('--')}"
    elif base is Mapping:
        kwargs.update(multiple=True, callback=_engine_args, metavar="KEY=VALUE", show_default=False)
    else:
        multiple = base is tuple
        element = str if multiple else base
        kwargs.update(multiple=multiple, type=click.Choice(choices) if choices else element)
    if field.default is None:
        kwargs["show_default"] = False
    return click.option(*names, keyword, cls=_Option, section=entry.section, **kwargs)


class _Option(click.Option):
    """An option that knows its help section: the scorers whose own option it is."""

    def __init__(self, *args: Any, section: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.section = section


def _declared(
    command: str | None = None, *, groups: list[api.Group] | None = None
) -> Callable[[Callable], Callable]:
    """Add the options a command takes (a stage's groups and the file options, or `groups`),
    derived from their one declaration."""

    if groups is not None:
        chosen = groups
    elif command is not None:
        chosen = [*api.COMMANDS[command], api.file_group(command)]
    else:
        raise TypeError("_declared takes a command or its groups")

    def add(fn: Callable) -> Callable:
        decorators: list[Callable] = []
        for group in chosen:
            decorators.extend(_click_option(entry) for entry in group.entries())
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn

    return add


def _recipe(command: str) -> Callable[[Callable], Callable]:
    """Add `--recipe FILE`: a YAML file of the command's options (see `bon.recipes`). Its values
    become the defaults of this invocation, so only the flags the user gave override them."""

    def load(ctx: click.Context, param: click.Parameter, path: str | None) -> None:
        if path is None:
            return
        try:
            values = recipes.load_recipe(path, command)
        except BonError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None
        if isinstance(values.get("engine_args"), Mapping):  # as --engine-arg gives them
            values["engine_args"] = tuple(f"{k}={v}" for k, v in values["engine_args"].items())
        ctx.default_map = {**(ctx.default_map or {}), **values}

    return click.option(
        "--recipe",
        type=INPUT,
        is_eager=True,
        expose_value=False,
        callback=load,
        help="YAML file of this command's options (recipes/); flags given here override it.",
    )


class _Terminated(KeyboardInterrupt):
    """SIGTERM, unwound like Ctrl-C: engines close (a vLLM engine stops its worker processes
    instead of leaving them orphaned) and the output's lock is released."""


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated


def _reported(fn: Callable[..., Report | list[Report] | None]) -> Callable[..., None]:
    """Set up logging, turn bon errors into a one-line message, and summarise on stderr."""

    @functools.wraps(fn)
    def wrapper(**kwargs: Any) -> None:
        _setup_logging(kwargs.get("quiet", False))
        before = signal.signal(signal.SIGTERM, _terminate)
        try:
            result = fn(**kwargs)
        except BonError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt as exc:
            stopped = "terminated" if isinstance(exc, _Terminated) else "interrupted"
            click.echo(f"{stopped}: rerun the same command to continue where it stopped", err=True)
            sys.exit(143 if isinstance(exc, _Terminated) else 130)
        finally:
            signal.signal(signal.SIGTERM, before)
        if result is not None and not kwargs.get("quiet"):
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
        # Through the environment: importing transformers here would slow every command.
        os.environ["TRANSFORMERS_VERBOSITY"] = "error"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        if "transformers" in sys.modules:
            sys.modules["transformers"].logging.set_verbosity_error()
            sys.modules["transformers"].logging.disable_progress_bar()


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
    if report.extra.get("mean_n") is not None:
        mean, most = report.extra["mean_n"], report.extra.get("n")
        click.echo(f"adaptive: mean N used {mean:.2f} of {most}", err=True)
    for scorer, counts in report.extra.get("parse", {}).items():
        total = sum(counts.values())
        rates = ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in sorted(counts.items()))
        click.echo(f"{scorer} parse status over {total} outputs: {rates}", err=True)


@click.group(cls=_Group)
@click.version_option(package_name="bon")
def main() -> None:
    """bon: best-of-N sampling with a small reward model that reads responses backwards (FLIP)."""


@main.command()
@click.argument("prompts", type=STAGE_INPUT)
@click.option(
    "--output",
    "-o",
    required=True,
    help="Candidates JSONL to write (resumed if present), or - for stdout.",
)
@_declared("generate")
@_reported
def generate(prompts: str, output: str, **options: Any) -> Report:
    """Sample N candidates for each prompt of PROMPTS (JSONL: `prompt` or `messages`; - is stdin).

    Example: bon generate data/sample_prompts.jsonl -o candidates.jsonl --n 8

    Stages pipe: records go to stdout as each batch finishes, logs to stderr:
    bon generate prompts.jsonl -o - | bon score - -o - | bon select - -o best.jsonl
    """
    return api.generate(prompts, output, **options)


@main.command()
@click.argument("candidates", type=STAGE_INPUT)
@click.option(
    "--output", "-o", required=True, help="Scored JSONL to write (resumed if present), or -."
)
@_declared("score")
@_reported
def score(candidates: str, output: str, **options: Any) -> Report:
    """Score every candidate of CANDIDATES with FLIP (or other scorers).

    A record needs `prompt` (or `messages`) and `candidates` (objects with `text`) or
    `responses` (strings); files made by other tools work.

    Example: bon score candidates.jsonl -o scored.jsonl

    While `bon generate` still writes CANDIDATES (another terminal or machine), --follow
    scores each record as it lands and stops when the generator has finished.
    """
    return api.score(candidates, output, **options)


@main.command()
@click.argument("scored", type=STAGE_INPUT)
@click.option("--output", "-o", required=True, help="Selected JSONL to write, or - for stdout.")
@_declared("select")
@_reported
def select(scored: str, output: str, **options: Any) -> Report:
    """Keep the best-scoring candidate of each record (ties: the lowest index).

    Example: bon select scored.jsonl -o selected.jsonl
    """
    return api.select(scored, output, **options)


@main.command()
@click.argument("file", type=STAGE_INPUT)
@click.option("--output", "-o", required=True, help="Selected JSONL to write, or - for stdout.")
@_declared("rerank")
@_reported
def rerank(file: str, output: str, **options: Any) -> Report:
    """Score and select in one step, for outputs you already have.

    Example: bon rerank my_outputs.jsonl -o best.jsonl
    """
    return api.rerank(file, output, **options)


@main.command()
@click.argument("prompts", type=STAGE_INPUT)
@click.option(
    "--output",
    "-o",
    "out_dir",
    required=True,
    help="Folder for candidates.jsonl, scored.jsonl and selected.jsonl.",
)
@_recipe("run")
@_declared("run")
@_reported
def run(prompts: str, out_dir: str, **options: Any) -> list[Report]:
    """Generate, score and select: the whole best-of-N job over PROMPTS.

    Multi-turn records (`turns`, a list of user turns, as in MT-Bench) are answered turn by
    turn: turn k is sampled after the answers selected for the turns before it; its files go
    to OUT/turn-k/ and OUT/selected.jsonl holds every turn's selection (`answers`).

    Example: bon run data/sample_prompts.jsonl -o out/ --n 4

    --concurrent scores while it generates (two processes); --ray runs both model stages on a
    Ray cluster; --shard I/K takes a part of PROMPTS (join the parts with `bon merge`).
    """
    return api.run(prompts, out_dir, **options)


@main.command("export")
@click.argument("format", type=click.Choice(FORMATS))
@click.argument("selected", type=INPUT)
@click.option("--output", "-o", required=True, help="File to write (replaced if present).")
@_declared(groups=[api.Group(ExportOptions)])
@_reported
def export(format: str, selected: str, output: str, **options: Any) -> Report:
    """Write the selections of SELECTED in another tool's format (FORMAT):

    \b
    alpacaeval  AlpacaEval model_outputs: a JSON list of {instruction, output, generator[, ...]}
    ifeval      IFEval input_response_data: JSONL {prompt, response}
    mtbench     MT-Bench model_answer: JSONL {question_id, answer_id, model_id, choices, tstamp}
    pairs       DPO pairs: JSONL {id, prompt, chosen, rejected, score_chosen, score_rejected},
                from scored candidates (scored.jsonl, or a selection made with --keep-all)

    Example: bon export alpacaeval out/selected.jsonl -o outputs.json
    """
    return api.export(format, selected, output, **options)


@main.command()
@click.argument("shards", nargs=-1, required=True, type=INPUT)
@click.option("--output", "-o", required=True, help="Merged JSONL to write, or - for stdout.")
@click.option(
    "--input",
    "input",
    type=INPUT,
    default=None,
    help="The file the shards were made from: sets the order and finds missing ids "
    "[default: sort by id].",
)
@click.option("--quiet", "-q", is_flag=True, help="No summary.")
@_reported
def merge(shards: tuple[str, ...], output: str, input: str | None, quiet: bool) -> Report:
    """Join the outputs of a sharded run (--shard I/K) into one file, in input order; fails on an
    id found twice or, with --input, on an id no shard holds.

    Example: bon merge c1.jsonl c2.jsonl --input prompts.jsonl -o candidates.jsonl
    """
    return api.merge(list(shards), output, input=input)


@main.group("eval")
def eval_group() -> None:
    """Measure scorers and best-of-N runs: preference accuracy, IFEval."""


@eval_group.command("pref")
@click.argument("files", nargs=-1, required=True, type=INPUT)
@click.option(
    "--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or log lines.")
@_declared(groups=[api.Group(PrefOptions), api.Group(ScoreOptions)])
@_reported
def eval_pref(files: tuple[str, ...], as_json: bool, quiet: bool, **options: Any) -> None:
    """Accuracy of scorers on labelled candidates: a preferred candidate must score strictly
    above every other (ties are wrong). Candidates carry `label` 1/0, or records have `chosen`
    and `rejected` lists; the table has one column per subset and a 95% bootstrap interval.
    --mix SELECTOR.yaml (written by `bon fit`) adds the fitted selector's row.

    Example: bon eval pref data/pref/focus.dev.jsonl --scorer flip-likelihood --scorer longest
    """
    from bon.evals.pref import eval_pref as run_eval

    report = run_eval(list(files), **options)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.to_markdown())


@main.command("curve")
@click.argument("scored", nargs=-1, required=True, type=INPUT)
@click.option(
    "--metric", required=True, help="Candidate field to average, a dotted path (e.g. label)."
)
@click.option("--by", multiple=True, help="Score to select by; repeat for several [default: all].")
@click.option(
    "--x",
    "x",
    type=click.Choice(["n", "tokens", "seconds"]),
    default="n",
    show_default=True,
    help="Place the points by N', or by the mean tokens or seconds spent per prompt "
    "(generator + scorer, from the records' `cost`).",
)
@click.option(
    "--label",
    "labels",
    multiple=True,
    help="Name of each SCORED file's curve, in order [default: the file names].",
)
@click.option("--plot", "plot", default=None, help="Also draw the curves into this PNG file.")
@click.option("--json", "as_json", is_flag=True, help="Print the curve as JSON instead of a table.")
@_reported
def curve(
    scored: tuple[str, ...],
    metric: str,
    by: tuple[str, ...],
    x: str,
    labels: tuple[str, ...],
    plot: str | None,
    as_json: bool,
) -> None:
    """Best-of-N' for N' = 1, 2, 4 ... N from scored files, by the exact expectation over all
    subsets of N' candidates (ties broken as the selector does), beside the oracle and random.
    `--x tokens` or `--x seconds` draws quality against the compute spent per prompt
    (generator + scorer); several files (runs of the same prompts) share one plot. With
    several files, --json prints {"curves": [...]}, one per file.

    Example: bon curve scored.jsonl --metric ifeval.prompt_strict --x tokens --plot curve.png
    """
    from bon.evals.curve import curve_files

    result = curve_files(
        list(scored), metric, by=list(by) or None, x=x, labels=list(labels) or None, plot=plot
    )
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else result.to_markdown())


@main.command("fit")
@click.argument("files", nargs=-1, required=True, type=INPUT)
@click.option("--output", "-o", required=True, help="Selector YAML to write (replaced if present).")
@click.option(
    "--json", "as_json", is_flag=True, help="Print the report as JSON instead of a table."
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or log lines.")
@_declared(groups=api.TOOLS["fit"])
@_reported
def fit(files: tuple[str, ...], output: str, as_json: bool, quiet: bool, **options: Any) -> None:
    """Fit a selector on labelled candidates (FILES as `bon eval pref` reads them): score them
    with every --scorer, standardise each score and the length within its record, fit their
    weights on the records' preferences, and write SELECTOR.yaml for the mix scorer. Prints
    held-out (cross-validated) and training accuracy beside each feature's own.

    Example: bon fit data/pref/vs_small.dev.jsonl -o sel.yaml --scorer longest --scorer mbr,
    then bon eval pref data/pref/vs_small.test.jsonl --scorer longest --mix sel.yaml
    """
    report = api.fit(list(files), output, **options)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.to_markdown())


@eval_group.command("ifeval")
@click.option(
    "--output",
    "-o",
    "out_dir",
    required=True,
    help="Folder for the run's files, labelled.jsonl, ifeval.json, ifeval.md and curve PNGs.",
)
@_recipe("eval ifeval")
@_declared(groups=[api.Group(IfevalOptions), *api.option_groups("eval ifeval", files=True)])
@_reported
def eval_ifeval(out_dir: str, **options: Any) -> None:
    """Best-of-N on IFEval: the packaged prompts through generate, score and select, each
    candidate checked by IFEval's own checkers (offline); prints prompt- and instruction-level
    strict and loose accuracy for N' = 1, 2, 4 ... N per scorer, beside the oracle and random.
    Every stage resumes.

    Example: bon eval ifeval -o ifeval-out --limit 100 --n 8 --scorer flip-tokens --scorer random
    """
    from bon.evals.ifeval import eval_ifeval as run_eval

    report = run_eval(out_dir, **options)
    click.echo(report.to_markdown())


@main.command()
@_declared(groups=[*api.COMMANDS["run"], api.Group(ServeOptions)])
@_reported
def serve(**options: Any) -> None:
    """Serve best-of-N behind an OpenAI-compatible API (/v1/chat/completions, /v1/completions,
    /v1/models): every request samples N candidates, scores them and answers with the selected
    one. Requests may override N (`best_of`), `scorer`, `temperature`, `top_p`, `max_tokens`,
    `seed` and `stop` in their body; one without `seed` gets a fresh one (returned in `bon.seed`).
    With --prune-at, candidates are pruned as they decode, and a `stream: true` request streams
    its answer's tokens once a single candidate is left. Listens on 127.0.0.1 unless --host
    says otherwise; Ctrl-C stops it. Needs the serve extra: pip install "bon[serve]".

    Example: bon serve --n 4 --port 8000, then
    curl 127.0.0.1:8000/v1/chat/completions -d '{"model": "bon", "messages": [{"role": "user",
    "content": "Name a colour."}]}'
    """
    from bon.entrypoints.serve import serve as run_server

    # uvicorn returns once a signal stopped it, then raises the signal again; asyncio's own
    # SIGINT handler may swallow that second one, so returning is a normal end too.
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C or SIGTERM: the normal end
        run_server(**options)
    click.echo("bon serve: stopped", err=True)


@main.command(
    "lm-eval",
    context_settings={
        "ignore_unknown_options": True,
        "allow_extra_args": True,
        "help_option_names": [],
    },
)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def lm_eval(args: tuple[str, ...]) -> None:
    """Run lm-evaluation-harness with best-of-N registered as its model `bon`; every argument
    goes to lm-eval's own command line (`bon lm-eval --help` shows lm-eval's help).
    `--model_args` takes `bon run`'s options, e.g. n=4,scorer=flip-tokens,temperature=0.8.

    Example: bon lm-eval --model bon --model_args n=4 --tasks ifeval --apply_chat_template

    Needs the lmeval extra: pip install "bon[lmeval]".
    """
    try:
        # Without lm-eval, this import raises a ConfigError naming the extra.
        from bon.entrypoints.lmeval import cli_evaluate

        cli_evaluate(list(args))
    except BonError as exc:
        raise click.ClickException(str(exc)) from None
