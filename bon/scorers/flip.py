"""FLIP: reward by backward inference (arXiv 2602.13551).

A small instruction-tuned LM reads only a candidate response and infers the instruction that
most plausibly produced it; the similarity between the inferred and the original instruction is
the reward. Reconstructions are decoded greedily in batches; an empty response scores 0 without
a model call.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from bon.chat import Message
from bon.engines import Engine, SamplingOptions
from bon.scorers.base import Query, Scored, ScoreOptions, Scorer
from bon.similarity import load_similarity

PROMPT_VERSION = "flip-v1"

SYSTEM_PROMPT = """\
You reconstruct instructions. You are shown a response written by an AI assistant. Work out the \
one instruction from a user that most plausibly led to exactly this response.

Guidelines:
- Reconstruct a single instruction.
- Say what the user wanted, the output format they asked for, and any constraints they set.
- Be concise and concrete.
- Add nothing that the response does not support.
- Do not copy the response's wording or its examples.
- Give brief reasoning first, then the instruction.

Answer with a JSON object with exactly two keys, "REASONING" and "INFERRED INSTRUCTION"."""

USER_TEMPLATE = """\
{history}[Response]
{response}

[Your Inferred Instruction]
Answer with the JSON object {{"REASONING": "...", "INFERRED INSTRUCTION": "..."}}."""

# The answer's shape; engines with structured outputs (vllm, openai) enforce it.
JSON_SCHEMA = {
    "type": "object",
    "properties": {"REASONING": {"type": "string"}, "INFERRED INSTRUCTION": {"type": "string"}},
    "required": ["REASONING", "INFERRED INSTRUCTION"],
    "additionalProperties": False,
}


class FlipScorer(Scorer):
    """Scores each candidate by how well its reconstructed instruction matches the original."""

    name = "flip"

    def __init__(self, options: ScoreOptions, engine: Callable[[], Engine]) -> None:
        super().__init__(options, engine)
        self._similarity = load_similarity(options.similarity)
        self._sampling = SamplingOptions(
            n=1, temperature=0, max_new_tokens=options.max_new_tokens, json_schema=JSON_SCHEMA
        )

    def describe(self) -> dict[str, Any]:
        return {
            "scorer": self.name,
            "prompt": PROMPT_VERSION,
            "model": self.options.model,
            "engine": self.options.engine,
            "max_new_tokens": self.options.max_new_tokens,
            "similarity": self.options.similarity,
            "decoding": "greedy",
        }

    def score(self, queries: Sequence[Query]) -> list[list[Scored]]:
        pairs = [(q, text) for q in queries for text in q.candidates]
        todo = [i for i, (_, text) in enumerate(pairs) if text.strip()]
        prompts = [reconstruction_messages(pairs[i][1], pairs[i][0].history) for i in todo]
        outputs = self.engine.generate(prompts, self._sampling) if prompts else []
        parsed = [
            ("", f"error: {out[0].error}") if out[0].error else parse_reconstruction(out[0].text)
            for out in outputs
        ]
        values = self._similarity(
            [inferred for inferred, _ in parsed], [pairs[i][0].instruction for i in todo]
        )
        flat = [Scored(0.0, {"inferred": "", "parse": "empty-response"}) for _ in pairs]
        for i, (inferred, status), value in zip(todo, parsed, values, strict=True):
            flat[i] = Scored(float(value), {"inferred": inferred, "parse": status})
        return _regroup(flat, [len(q.candidates) for q in queries])


def reconstruction_messages(response: str, history: Sequence[Message] = ()) -> list[Message]:
    """The chat turns that ask the model to infer the instruction behind `response`.

    Earlier turns of a multi-turn record, when there are any, are shown as context.
    """
    context = ""
    if history:
        turns = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in history)
        context = f"[Conversation so far]\n{turns}\n\n"
    user = USER_TEMPLATE.format(history=context, response=response.strip())
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```[a-zA-Z]*\n?|```")
_KEY = re.compile(r"^\W*inferred[\s_-]*instruction\W*$", re.IGNORECASE)
_QUOTED_VALUE = re.compile(
    r"[\"']?inferred[\s_-]*instruction[\"']?\s*[:=]\s*\"((?:[^\"\\]|\\.)*)", re.IGNORECASE
)
_LABELLED_LINE = re.compile(
    r"^\W*(?:inferred\s+)?instruction\W*[:=]\s*(.+)$", re.IGNORECASE | re.MULTILINE
)
_PREAMBLES = re.compile(
    r"^\s*(?:\[(?:response|your inferred instruction)\]\s*"
    r"|(?:the\s+)?(?:user|human)\s+(?:has\s+)?(?:requested|asked(?:\s+(?:me|you))?|wants?"
    r"(?:\s+(?:me|you))?|is\s+asking(?:\s+(?:me|you))?)(?:\s+(?:to|for|that))?\s*[:,]?\s*"
    r"|(?:the\s+)?(?:inferred\s+)?instruction\s+(?:is|was)\s*:?\s*)+",
    re.IGNORECASE,
)


def parse_reconstruction(output: str) -> tuple[str, str]:
    """Extract the inferred instruction from a reconstruction; return (text, parse status).

    Status is "json" (a JSON object with an instruction key), "partial-json" (the key's value
    recovered from broken JSON), "labelled" (an "Instruction: ..." line), "fallback" (the whole
    cleaned output) or "empty" (nothing left to score).
    """
    text = _FENCE.sub("", _THINK.sub("", output)).strip()
    for candidate, status in (
        (_from_json(text), "json"),
        (_from_quoted_value(text), "partial-json"),
        (_from_labelled_line(text), "labelled"),
        (text, "fallback"),
    ):
        if candidate is not None:
            cleaned = strip_preamble(candidate)
            if cleaned:
                return cleaned, status
    return "", "empty"


def strip_preamble(text: str) -> str:
    """Drop echoed prompt headers and openers such as "The user requested ..."."""
    text = _PREAMBLES.sub("", text.strip(), count=1).strip()
    return text[:1].upper() + text[1:]


def _from_json(text: str) -> str | None:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        data = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    for key, value in data.items():
        if _KEY.match(str(key)) and isinstance(value, str):
            return value
    return None


def _from_quoted_value(text: str) -> str | None:
    match = _QUOTED_VALUE.search(text)
    if not match:
        return None
    try:
        return json.loads(f'"{match.group(1)}"')
    except json.JSONDecodeError:
        return match.group(1)


def _from_labelled_line(text: str) -> str | None:
    match = _LABELLED_LINE.search(text)
    return match.group(1) if match else None


def _regroup(flat: list[Scored], sizes: list[int]) -> list[list[Scored]]:
    out, start = [], 0
    for size in sizes:
        out.append(flat[start : start + size])
        start += size
    return out
