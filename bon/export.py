"""Selected outputs in the file shapes other tools read: AlpacaEval, IFEval, MT-Bench, DPO pairs.

Each format is a function from one record to the rows it contributes (a record may give none,
one or, for pairs, several). A record that cannot be exported (no selection, no finite score, a
shape the format cannot hold) is a `RecordProblem`; `export_file` stops at it with the file and
line, or under `on_error="skip"` leaves it out, counts it and lists it in
`<output>.errors.jsonl`. Outputs are written atomically and depend only on the input (and the
options), so exporting the same file twice gives the same bytes: MT-Bench's `answer_id` is a
hash of the answer and its `tstamp` the input file's modification time unless given.

AlpacaEval and IFEval take one instruction per row. A chat record (`messages`) gives its last
user turn, and its row says so (`"instruction_from": "last_user_turn"`, a key both tools'
readers pass over); the report counts these records and those whose earlier turns (a system
prompt, a previous exchange) the row leaves out, and a log line warns about the latter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bon import records
from bon.codec import dumps, read_lines
from bon.errors import InputError, require
from bon.options import non_negative, option, validate
from bon.outputs import Report, replace_atomically, write_error
from bon.records import RecordProblem
from bon.runner import ON_ERROR
from bon.scorers import higher_is_better
from bon.select import best_index, first_score

log = logging.getLogger(__name__)

FORMATS = ("alpacaeval", "ifeval", "mtbench", "pairs")
PAIRS = ("best-worst", "margin")
GENERATOR_SUFFIX = "-bon"
INSTRUCTION_FROM = "instruction_from"
LAST_USER_TURN = "last_user_turn"


@dataclass(frozen=True)
class ExportOptions:
    """Options of `bon export`."""

    generator: str | None = option(
        None,
        "Model name written as `generator` (alpacaeval) or `model_id` (mtbench); unset: the "
        "last part of each record's generator model plus '-bon'.",
        check=lambda v: v is None or (isinstance(v, str) and bool(v.strip())),
        constraint="a non-empty name",
    )
    tstamp: float | None = option(
        None,
        "mtbench: the answers' `tstamp` (Unix time); unset: the input file's modification "
        "time, so exporting the same file again gives the same bytes.",
        check=lambda v: v is None or non_negative(v),
        constraint="a time in seconds >= 0",
    )
    pairs: str = option(
        "best-worst",
        "pairs: the best and the worst candidate of each record, or every pair whose score "
        "difference is above --margin (margin).",
        choices=PAIRS,
    )
    margin: float | None = option(
        None,
        "pairs: keep every pair whose score difference is > M (implies --pairs margin; "
        "unset with --pairs margin: 0).",
        check=lambda v: v is None or non_negative(v),
        constraint="a number >= 0",
    )
    by: str | None = option(
        None,
        "pairs: the score to rank candidates by; unset: the score the record was selected by, "
        "else its first score.",
        check=lambda v: v is None or (isinstance(v, str) and bool(v)),
        constraint="a score name",
    )
    on_error: str = option(
        "fail",
        "On a record that cannot be exported (no selection or finite score): stop (fail), or "
        "leave it out and list it in OUTPUT.errors.jsonl (skip).",
        choices=ON_ERROR,
    )
    quiet: bool = option(False, "No log lines.", short="-q")

    def __post_init__(self) -> None:
        validate(self)

    def pair_margin(self) -> float | None:
        """The margin of `margin` mode, or None for best-worst."""
        if self.margin is not None:
            return float(self.margin)
        return 0.0 if self.pairs == "margin" else None


Row = dict[str, Any]
Exporter = Callable[[dict, ExportOptions, float], list[Row]]


def export_records(format: str, items: Iterable[dict], options: ExportOptions) -> list[Row]:
    """The rows of `format` for in-memory records; a record that cannot be exported raises
    `InputError` (line = its 1-based position). `tstamp` defaults to 0 here (no file)."""
    exporter = _exporter(format)
    tstamp = 0.0 if options.tstamp is None else float(options.tstamp)
    rows: list[Row] = []
    for line, record in enumerate(items, start=1):
        try:
            rows.extend(exporter(_checked(record), options, tstamp))
        except RecordProblem as problem:
            raise InputError("<records>", line, str(problem)) from None
    return rows


def export_file(
    format: str, selected: str | Path, output: str | Path, options: ExportOptions
) -> Report:
    """Write the rows of `format` for every record of the JSONL file `selected` to `output`
    (a JSON list for alpacaeval, JSONL otherwise); returns what was written and skipped."""
    exporter = _exporter(format)
    selected, output = str(selected), str(output)
    if Path(selected).resolve() == Path(output).resolve():
        raise InputError(selected, None, "the output is the input file; choose another output")
    tstamp = _tstamp(selected, options)
    report = Report(output=output)
    rows: list[Row] = []
    skipped: list[InputError] = []
    exported = 0
    for line, record in read_lines(selected):
        try:
            if isinstance(record, InputError):
                raise RecordProblem(record.problem)
            new = exporter(_checked(record), options, tstamp)
            rows.extend(new)
            exported += 1
            _count_chat(report.extra, record, new)
        except RecordProblem as problem:
            error = InputError(selected, line, str(problem))
            if options.on_error == "fail":
                raise error from None
            skipped.append(error)
    _write(output, rows, as_list=format == "alpacaeval")
    _write_errors(output, skipped, report)
    _log_chat(report.extra, format)
    report.written = len(rows)
    report.extra["records"] = exported
    return report


def _exporter(format: str) -> Exporter:
    require(format in FORMATS, "format", f"one of {', '.join(FORMATS)}", format)
    return EXPORTERS[format]


def _checked(record: Any) -> dict:
    if not isinstance(record, dict):
        raise RecordProblem(f"expected a JSON object, got {type(record).__name__}")
    return record


def _tstamp(path: str, options: ExportOptions) -> float:
    if options.tstamp is not None:
        return float(options.tstamp)
    try:
        return Path(path).stat().st_mtime
    except OSError as exc:
        raise InputError(path, None, f"cannot read the file: {exc.strerror}") from None


def _count_chat(extra: dict[str, Any], record: dict, rows: list[Row]) -> None:
    """Count a record whose rows took its last user turn (`chat_records`), and whether they
    left earlier turns out (`chat_turns_left_out`)."""
    if not any(row.get(INSTRUCTION_FROM) == LAST_USER_TURN for row in rows):
        return
    extra["chat_records"] = extra.get("chat_records", 0) + 1
    if len(record["messages"]) > 1:
        extra["chat_turns_left_out"] = extra.get("chat_turns_left_out", 0) + 1


def _log_chat(extra: dict[str, Any], format: str) -> None:
    chat, left_out = extra.get("chat_records", 0), extra.get("chat_turns_left_out", 0)
    if chat:
        log.info(
            '%d chat records: their last user turn is the %s instruction (rows marked "%s": "%s")',
            chat,
            format,
            INSTRUCTION_FROM,
            LAST_USER_TURN,
        )
    if left_out:
        log.warning(
            "%d chat records had turns before their last user turn (a system prompt or a "
            "previous exchange), which %s rows leave out: their instruction may lack context",
            left_out,
            format,
        )


def _write(output: str, rows: list[Row], *, as_list: bool) -> None:
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    if as_list:
        try:
            text = json.dumps(rows, ensure_ascii=False, indent=2) + "\n"
            data = text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: keep it as a JSON escape
            data = (json.dumps(rows, ensure_ascii=True, indent=2) + "\n").encode()
        replace_atomically(output, [data])
    else:
        replace_atomically(output, [(dumps(row) + "\n").encode() for row in rows])


def _write_errors(output: str, skipped: list[InputError], report: Report) -> None:
    path = Path(f"{output}.errors.jsonl")
    report.errors = len(skipped)
    if not skipped:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise write_error(path, exc) from None
        return
    entries = [{"file": e.path, "line": e.line, "error": e.problem} for e in skipped]
    replace_atomically(path, [(dumps(entry) + "\n").encode() for entry in entries])
    report.error_file = str(path)
    log.warning("%d records could not be exported; see %s", len(skipped), path)


# -- the formats ---------------------------------------------------------------------------------


def alpacaeval(record: dict, options: ExportOptions, tstamp: float) -> list[Row]:
    """AlpacaEval `model_outputs`: the instruction exactly as given (a chat record's last user
    turn, flagged), the selected output."""
    prompt = _single_prompt(record, "alpacaeval")
    row = {
        "instruction": prompt,
        "output": _selected_text(record.get("selected")),
        "generator": _generator_name(record, options),
    }
    if "dataset" in record:
        row["dataset"] = record["dataset"]
    return [_flagged(row, record)]


def ifeval(record: dict, options: ExportOptions, tstamp: float) -> list[Row]:
    """IFEval `input_response_data`: the prompt exactly as given (a chat record's last user
    turn, flagged) and the selected response."""
    prompt = _single_prompt(record, "ifeval")
    row = {"prompt": prompt, "response": _selected_text(record.get("selected"))}
    return [_flagged(row, record)]


def mtbench(record: dict, options: ExportOptions, tstamp: float) -> list[Row]:
    """MT-Bench `model_answer`: one choice whose turns are the selected answer of each turn."""
    if _multiturn(record):
        answers = record.get("answers")
        if not isinstance(answers, list):
            raise RecordProblem("has `turns` but no `answers`: run it with `bon run` first")
        if len(answers) < len(record["turns"]):
            raise RecordProblem(
                f"has {len(record['turns'])} turns but answers for {len(answers)} only "
                "(a turn had no finite score or failed): rerun it, or skip it with --on-error skip"
            )
        turns = [_selected_text(a.get("selected"), f"answers[{i}]") for i, a in enumerate(answers)]
    else:
        records.check_prompt(record)
        turns = [_selected_text(record.get("selected"))]
    question_id = record.get("question_id", record.get("id"))
    if question_id is None:
        raise RecordProblem("needs `question_id` (or `id`) to name its MT-Bench question")
    model_id = _generator_name(record, options)
    content = json.dumps([question_id, model_id, turns], ensure_ascii=False, sort_keys=True)
    answer_id = hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest()[:22]
    return [
        {
            "question_id": question_id,
            "answer_id": answer_id,
            "model_id": model_id,
            "choices": [{"index": 0, "turns": turns}],
            "tstamp": tstamp,
        }
    ]


def pairs(record: dict, options: ExportOptions, tstamp: float) -> list[Row]:
    """Chosen/rejected pairs for DPO-style training from a record's scored candidates.

    Strings for `prompt` records; TRL's conversational form (a list of turns for the prompt,
    one assistant turn each for chosen and rejected) for `messages` records.
    """
    if _multiturn(record):
        raise RecordProblem(
            "multi-turn records hold one selection per turn: export pairs from the turn's "
            "scored file, OUT/turn-K/scored.jsonl"
        )
    records.check_prompt(record)
    candidates = record.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        raise RecordProblem(
            "has no scored `candidates`: export pairs from scored.jsonl, or from a selection "
            "made with --keep-all"
        )
    name = options.by or _selected_by(record) or first_score(record)
    if name is None:
        raise RecordProblem("its candidates have no `scores`: run `bon score` first")
    values = [_score(c, i, name) for i, c in enumerate(candidates)]
    finite = [i for i, v in enumerate(values) if not math.isnan(v)]
    if len(finite) < 2:
        raise RecordProblem(f"fewer than two candidates have a finite `{name}` score")
    sign = 1.0 if higher_is_better(name) else -1.0
    margin = options.pair_margin()
    if margin is None:
        # A NaN never wins either way, so these are the best and worst finite scores.
        best, worst = best_index(values, sign > 0), best_index(values, sign < 0)
        chosen = [(best, worst)] if sign * (values[best] - values[worst]) > 0 else []
    else:
        chosen = [(i, j) for i in finite for j in finite if sign * (values[i] - values[j]) > margin]
    prompt = record["prompt"] if "prompt" in record else records.conversation(record)
    return [_pair(record, prompt, candidates, values, i, j) for i, j in chosen]


def _pair(
    record: dict, prompt: Any, candidates: list[dict], values: list[float], i: int, j: int
) -> Row:
    def answer(k: int) -> Any:
        text = candidates[k]["text"]
        return text if isinstance(prompt, str) else [{"role": "assistant", "content": text}]

    return {
        "id": record.get("id"),
        "prompt": prompt,
        "chosen": answer(i),
        "rejected": answer(j),
        "score_chosen": values[i],
        "score_rejected": values[j],
    }


EXPORTERS: dict[str, Exporter] = {
    "alpacaeval": alpacaeval,
    "ifeval": ifeval,
    "mtbench": mtbench,
    "pairs": pairs,
}


# -- helpers -------------------------------------------------------------------------------------


def _multiturn(record: dict) -> bool:
    """A question of a multi-turn run (`turns`, answered in `answers`), not one of its turns
    (those are chat records with `messages`)."""
    return "turns" in record and "prompt" not in record and "messages" not in record


def _single_prompt(record: dict, format: str) -> str:
    """The record's instruction: its `prompt`, or the last user turn of its `messages`."""
    if _multiturn(record):
        raise RecordProblem(
            f"a multi-turn record (`turns`) has no single {format} prompt: export it as mtbench"
        )
    records.check_prompt(record)
    if "prompt" in record:
        return record["prompt"]
    return record["messages"][-1]["content"]  # check_prompt: the last turn is the user's


def _flagged(row: Row, record: dict) -> Row:
    """The row, marked when its instruction is a chat record's last user turn."""
    if "messages" in record:
        row[INSTRUCTION_FROM] = LAST_USER_TURN
    return row


def _selected_text(selected: Any, where: str = "") -> str:
    prefix = f"`{where}.selected`" if where else "`selected`"
    if not isinstance(selected, dict):
        raise RecordProblem(f"has no {prefix}: run `bon select` (or `bon run`) first")
    if selected.get("index") is None or not isinstance(selected.get("text"), str):
        raise RecordProblem(
            f"{prefix} is null: no candidate had a finite score; rescore it, or skip it with "
            "--on-error skip"
        )
    return selected["text"]


def _generator_name(record: dict, options: ExportOptions) -> str:
    if options.generator is not None:
        return options.generator
    generator = record.get("generator")
    answers = record.get("answers")
    if generator is None and isinstance(answers, list) and answers:
        generator = answers[0].get("generator") if isinstance(answers[0], dict) else None
    model = generator.get("model") if isinstance(generator, dict) else None
    if not isinstance(model, str) or not model.strip():
        raise RecordProblem("has no `generator.model` to name its outputs by: pass --generator")
    # A Hub id or a path: its last part (MT-Bench names a file after the model id).
    return Path(model.rstrip("/")).name + GENERATOR_SUFFIX


def _selected_by(record: dict) -> str | None:
    selected = record.get("selected")
    by = selected.get("by") if isinstance(selected, dict) else None
    return by if isinstance(by, str) else None


def _score(candidate: Any, i: int, name: str) -> float:
    scores = candidate.get("scores") if isinstance(candidate, dict) else None
    if not isinstance(candidate, dict) or not isinstance(candidate.get("text"), str):
        raise RecordProblem(f"`candidates[{i}]` must be an object with a string `text`")
    value = scores.get(name, False) if isinstance(scores, dict) else False
    if value is None:
        return math.nan
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise RecordProblem(
            f"`candidates[{i}].scores.{name}` is missing or not a number: score with `{name}` "
            "first, or choose another score with --by"
        )
    return float(value)
