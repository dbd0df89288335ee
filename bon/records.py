"""Record shapes, their validation, and the ids that join them across stages.

One record per prompt travels through every stage and is enriched, never rebuilt:

    {"id", "prompt" | "messages", ...user fields...}
    + "candidates": [{"text", "finish_reason", "tokens"[, "error"]}], "generator": {...}  (generate)
    + per candidate "scores": {name: float} and evidence under the scorer's name   (score)
    + "selected": {"index", "text", "score", "by"}                                 (select)
    + "cost": what each stage spent (tokens, seconds), per candidate too   (bon.cost)

Validators raise `RecordProblem` with a message that says what to fix; `validated` checks a
stream of records with one, gives each record its id, and adds the file and line to a problem.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from bon.chat import Message
from bon.codec import canonical
from bon.errors import InputError

ROLES = ("system", "user", "assistant")
COST = "cost"
"""The field of a record, and of each of its candidates, that holds what the stages spent on
it (`bon.cost`)."""


class RecordProblem(ValueError):
    """A record does not have the shape a stage needs, or a stage could not process it.

    Validators raise it; `Stage.process` returns an instance in place of a record it failed on,
    and the runner reports it with the record's file and line.
    """


def check_prompt(record: Any) -> None:
    """A record the generator can read: a non-empty `prompt` string or chat `messages`."""
    if not isinstance(record, dict):
        raise RecordProblem(f"expected a JSON object, got {type(record).__name__}")
    if "id" in record and not _valid_id(record["id"]):
        raise RecordProblem(f"`id` must be a non-empty string or an integer, got {record['id']!r}")
    has_prompt, has_messages = "prompt" in record, "messages" in record
    if not has_prompt and not has_messages and "turns" in record:
        raise RecordProblem(
            "has `turns` (a multi-turn record): `bon run` runs them, over a file whose records "
            "all have `turns`"
        )
    if has_prompt == has_messages:
        raise RecordProblem("needs exactly one of `prompt` (a string) or `messages` (chat turns)")
    if has_prompt:
        prompt = record["prompt"]
        if not isinstance(prompt, str):
            raise RecordProblem(f"`prompt` must be a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise RecordProblem("`prompt` is empty")
        _check_text("prompt", prompt)
    else:
        _check_messages(record["messages"])


def check_turns(record: Any) -> None:
    """A multi-turn record: `turns`, a non-empty list of user turns (strings), answered one
    after another (MT-Bench's question files)."""
    if not isinstance(record, dict):
        raise RecordProblem(f"expected a JSON object, got {type(record).__name__}")
    if "id" in record and not _valid_id(record["id"]):
        raise RecordProblem(f"`id` must be a non-empty string or an integer, got {record['id']!r}")
    if "turns" not in record:
        raise RecordProblem(
            "needs `turns` (a list of user turns): this file is multi-turn, as its first record "
            "has `turns`"
        )
    if "prompt" in record or "messages" in record:
        raise RecordProblem("a `turns` record cannot also have `prompt` or `messages`")
    turns = record["turns"]
    if not isinstance(turns, list) or not turns or not all(isinstance(t, str) for t in turns):
        raise RecordProblem("`turns` must be a non-empty list of strings (the user turns)")
    for i, turn in enumerate(turns):
        if not turn.strip():
            raise RecordProblem(f"`turns[{i}]` is empty")
        _check_text(f"turns[{i}]", turn)


def _check_text(name: str, text: str) -> None:
    """Text for a model must be encodable: no lone surrogates (JSON allows them as escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RecordProblem(
            f"`{name}` holds a lone surrogate (\\u{ord(text[exc.start]):04x} at character "
            f"{exc.start + 1}), which is not text; fix the escape in the input"
        ) from None


def check_candidates(record: Any) -> None:
    """A record the reranker can read: a prompt plus `candidates` or `responses`."""
    check_prompt(record)
    if "candidates" in record:
        candidates = record["candidates"]
        if not isinstance(candidates, list):
            raise RecordProblem(f"`candidates` must be a list, got {type(candidates).__name__}")
        for i, candidate in enumerate(candidates):
            if not isinstance(candidate, dict) or not isinstance(candidate.get("text"), str):
                raise RecordProblem(f"`candidates[{i}]` must be an object with a string `text`")
            _check_text(f"candidates[{i}].text", candidate["text"])
    elif "responses" in record:
        responses = record["responses"]
        if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise RecordProblem("`responses` must be a list of strings")
        for i, response in enumerate(responses):
            _check_text(f"responses[{i}]", response)
        candidates = responses
    else:
        raise RecordProblem("needs `candidates` (objects with `text`) or `responses` (strings)")
    if not candidates:
        raise RecordProblem("the candidate list is empty: nothing to score or select")


def check_scored(record: Any, by: str) -> None:
    """A record the selector can read: candidates that each carry `scores[by]`."""
    check_candidates(record)
    if "candidates" not in record:
        raise RecordProblem("has `responses` but no scored `candidates`: run `bon score` first")
    for i, candidate in enumerate(record["candidates"]):
        scores = candidate.get("scores")
        value = scores.get(by, False) if isinstance(scores, dict) else False
        # null stands for a score that is not a number (NaN): never selected while others are.
        if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise RecordProblem(
                f"`candidates[{i}].scores.{by}` is missing or not a number: "
                f"score with `{by}` first, or choose another score with --by"
            )


def _valid_id(value: Any) -> bool:
    """Ids are non-empty strings or integers (not booleans, floats, lists or objects)."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and value != "")


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, list) or not messages:
        raise RecordProblem("`messages` must be a non-empty list of {role, content} objects")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise RecordProblem(f"`messages[{i}].role` must be one of {', '.join(ROLES)}")
        if not isinstance(message.get("content"), str):
            raise RecordProblem(f"`messages[{i}].content` must be a string")
        _check_text(f"messages[{i}].content", message["content"])
    if messages[-1]["role"] != "user":
        raise RecordProblem("the last of `messages` must be a user turn: the one to answer")
    if not messages[-1]["content"].strip():
        raise RecordProblem("the last user turn in `messages` is empty")


def conversation(record: dict) -> list[Message]:
    """The chat turns to send to a generator."""
    if "messages" in record:
        return [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
    return [{"role": "user", "content": record["prompt"]}]


def candidates(record: dict) -> list[dict]:
    """The record's candidates, made from `responses` when it has only those."""
    if "candidates" in record:
        return record["candidates"]
    return [{"text": text} for text in record["responses"]]


def is_pruned(candidate: Any) -> bool:
    """Whether a candidate was pruned while it decoded (it carries `pruned_at`, `bon.prune`):
    the score stage gives it null scores and the selector never picks it."""
    return isinstance(candidate, dict) and candidate.get("pruned_at") is not None


def content_id(record: dict) -> str:
    """A stable id from the record's whole content (all fields, canonical JSON)."""
    return fingerprint(record)


def fingerprint(record: dict) -> str:
    """The first 16 hex digits of the SHA-256 of the record's canonical JSON (keys sorted,
    compact, non-ASCII kept), so any change to any field changes it."""
    text = canonical(record)
    # surrogatepass: a lone surrogate (legal as a JSON escape) still hashes instead of failing.
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def input_fingerprint(record: dict) -> str:
    """The fingerprint of a stage's input record as resume compares it: `fingerprint` of the
    record without the costs bon measured (`cost`, on the record and on its candidates), which
    differ from run to run. A record without them fingerprints as it always did."""
    return fingerprint(without_cost(record))


def without_cost(record: dict) -> dict:
    """`record` without the `cost` objects on it and on its candidates."""
    candidates = record.get("candidates")
    if not isinstance(candidates, list):
        candidates = []
    costly = any(isinstance(c, dict) and isinstance(c.get(COST), dict) for c in candidates)
    if not isinstance(record.get(COST), dict) and not costly:
        return record
    out = {k: v for k, v in record.items() if not (k == COST and isinstance(v, dict))}
    if costly:
        out["candidates"] = [
            {k: v for k, v in c.items() if not (k == COST and isinstance(v, dict))}
            if isinstance(c, dict)
            else c
            for c in candidates
        ]
    return out


def validated(
    source: str, lines: Iterable[tuple[int, Any]], check: Callable[[Any], None]
) -> Iterator[tuple[int, dict | InputError]]:
    """Check each record and give it an id; yield problems as `InputError` values.

    Records without an id get one from their content; the k-th repeat of identical content gets
    the suffix "-k", so equal prompts stay distinct records.
    """
    seen: dict[str, int] = {}
    repeats: dict[str, int] = {}
    for line, record in lines:
        if isinstance(record, InputError):
            yield line, record
            continue
        try:
            check(record)
        except RecordProblem as problem:
            yield line, InputError(source, line, str(problem))
            continue
        if "id" not in record:
            base = content_id(record)
            repeats[base] = repeats.get(base, 0) + 1
            record = {"id": base if repeats[base] == 1 else f"{base}-{repeats[base]}", **record}
        key = str(record["id"])
        if key in seen:
            yield (
                line,
                InputError(source, line, f"duplicate id {key!r} (first on line {seen[key]})"),
            )
            continue
        seen[key] = line
        yield line, record
