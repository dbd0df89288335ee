"""Multi-turn best-of-N: each turn is an ordinary single-turn run over chat `messages`.

A record with `turns` (MT-Bench's question files: `{"question_id", "turns": [t1, t2]}`) is
answered turn by turn. Turn k is a prompt record whose `messages` are the user turns before it,
each followed by the answer selected for it, then user turn k; generate, score and select run
over those records as over any others (so FLIP reads the earlier turns as context and
reconstructs turn k). Turn k+1 is built from turn k's selections, so it is sampled after the
selected answer, never after a rejected one. In `bon run OUT`, turn k's files are
`OUT/turn-k/{prompts,candidates,scored,selected}.jsonl` (each resumes as usual) and
`OUT/selected.jsonl` holds one record per question with `answers`: per turn, its `selected`
(plus `candidates` under `keep_all`), `generator`, `scoring` and `cost`. A turn whose scores
are all NaN (or whose generation failed under `on_error="skip"`) ends that record's
conversation early.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bon import records
from bon.codec import dumps, read_lines
from bon.errors import InputError
from bon.outputs import Report, replace_atomically
from bon.stages import Stage

STAGE_FIELDS = (
    "candidates",
    "responses",
    "generator",
    "scoring",
    "selected",
    "fingerprints",
    "cost",
)
"""Fields the stages add to a turn's record; none of them carries over to the next turn."""
ANSWER_FIELDS = ("selected", "candidates", "generator", "scoring", "cost")
"""A turn's fields kept in the merged record's `answers`."""


def is_multiturn(path: str | Path) -> bool:
    """Whether the JSONL file's first record has `turns` (then every record must)."""
    if str(path) == "-":  # never consume a stream to peek at it
        return False
    try:
        for _, record in read_lines(path):
            return isinstance(record, dict) and "turns" in record
    except InputError:  # unreadable: the single-turn path reports it
        return False
    return False


def first_stage() -> Stage:
    """Checks multi-turn records (ids given or derived as for any record) and writes each as
    the prompt record of its first turn."""

    def process(batch: list[dict]) -> list[dict]:
        return [first_turn(record) for record in batch]

    return Stage("turns", records.check_turns, process, {"stage": "turns"}, budget=64)


def first_turn(record: dict) -> dict:
    """The prompt record of a multi-turn record's first turn."""
    return {**record, "messages": [{"role": "user", "content": record["turns"][0]}]}


def next_turn(selected: dict) -> dict | None:
    """The prompt record of the next turn after a selected turn record, or None when the
    conversation is over (no turn left, or this turn has no selection)."""
    done = sum(m["role"] == "user" for m in selected["messages"])
    choice = selected.get("selected")
    if done >= len(selected["turns"]) or not isinstance(choice, dict) or choice["index"] is None:
        return None
    base = {k: v for k, v in selected.items() if k not in STAGE_FIELDS}
    messages = [
        *selected["messages"],
        {"role": "assistant", "content": choice["text"]},
        {"role": "user", "content": selected["turns"][done]},
    ]
    return {**base, "messages": messages}


def next_turns(selected: Iterable[dict]) -> list[dict]:
    """The next turn's prompt records of the conversations that go on."""
    return [n for n in map(next_turn, selected) if n is not None]


def merge(order: list[dict], by_turn: list[dict[str, dict]]) -> list[dict]:
    """One record per question (in `order`, the first turn's records): its own fields and the
    `answers` of the turns it reached, from `by_turn` (per turn: id -> selected record)."""
    merged = []
    for first in order:
        key = str(first["id"])
        base = {k: v for k, v in first.items() if k not in (*STAGE_FIELDS, "messages")}
        answers = [_answer(turn[key]) for turn in by_turn if key in turn]
        merged.append({**base, "answers": answers})
    return merged


def finished(record: dict) -> bool:
    """Whether a merged record has a selected answer for every turn."""
    answers = record["answers"]
    return len(answers) == len(record["turns"]) and all(
        a["selected"]["index"] is not None for a in answers
    )


def _answer(record: dict) -> dict[str, Any]:
    return {k: record[k] for k in ANSWER_FIELDS if k in record}


def read(path: str | Path) -> list[dict]:
    """The records of a JSONL file bon wrote."""
    return [record for _, record in read_lines(path)]


def write(path: str | Path, items: list[dict]) -> None:
    """Replace `path` with `items`, one JSON line each."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, [(dumps(r) + "\n").encode() for r in items])


def merge_files(first: Path, selected: list[Path], output: Path) -> Report:
    """Merge the turns' selected files into `output`, in the order of the first turn's prompt
    file; `unselected` counts the questions left without an answer to some turn."""
    by_turn = [{str(r["id"]): r for r in read(path)} for path in selected]
    merged = merge(read(first), by_turn)
    write(output, merged)
    report = Report(output=str(output), written=len(merged))
    report.unselected = sum(not finished(r) for r in merged)
    return report
