"""FLIP: reward by backward inference (arXiv 2602.13551), and two variants beyond the paper.

A small instruction-tuned LM reads only a candidate response and infers the instruction that
most plausibly produced it; the similarity between the inferred and the original instruction is
the reward.

- `flip`: one greedy reconstruction (the paper's MAP estimate); an empty response scores 0
  without a model call.
- `flip-k`: the mean similarity over `k` sampled reconstructions (the expectation the paper
  approximates with one decode).
- `flip-likelihood`: the mean log-probability of the original instruction's tokens as the
  model's reply to the reconstruction prompt, teacher-forced in one forward pass (no decoding).
  Since the target instruction is the same for every candidate of a record, ranking by
  log p(x | y) ranks by how much each response makes x more likely.

Every variant can reconstruct the system prompt instead of the last user turn (`target`), and is
guarded against responses that restate their target (`bon.scorers.guards`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from bon.chat import Message
from bon.cost import rows_of
from bon.engines import Engine, SamplingOptions
from bon.errors import ConfigError
from bon.options import non_negative, option, positive
from bon.records import RecordProblem
from bon.scorers.base import (
    Query,
    Scored,
    ScoreOptions,
    Scorer,
    ScorerOptions,
    json_object,
    regroup,
    text_seed,
)
from bon.scorers.guards import EchoGuard
from bon.similarity import USES_EMBEDDER, load_similarity

PROMPT_VERSIONS = {"paper": "flip-v1", "short": "flip-short-v1"}
PROMPT_VERSION = PROMPT_VERSIONS["paper"]
_ECHO_OPTIONS = ("echo_guard", "echo_ngram", "echo_threshold", "echo_penalty")

_GUIDELINES = """\
Guidelines:
- Reconstruct a single {thing}.
- Say what the user wanted, the output format they asked for, and any constraints they set.
- Be concise and concrete.
- Add nothing that the response does not support.
- Do not copy the response's wording or its examples."""

SYSTEM_PROMPT = f"""\
You reconstruct instructions. You are shown a response written by an AI assistant. Work out the \
one instruction from a user that most plausibly led to exactly this response.

{_GUIDELINES.format(thing="instruction")}
- Give brief reasoning first, then the instruction.

Answer with a JSON object with exactly two keys, "REASONING" and "INFERRED INSTRUCTION"."""

USER_TEMPLATE = """\
{history}[Response]
{response}

[Your Inferred Instruction]
Answer with the JSON object {{"REASONING": "...", "INFERRED INSTRUCTION": "..."}}."""

SHORT_SYSTEM_PROMPT = """\
You guess the request behind an answer. Read the answer an AI assistant wrote and write the \
user's request that it answers. Reply with the request only, in one sentence."""

# The answer's shape; engines with structured outputs (vllm, openai) enforce it.
JSON_SCHEMA = {
    "type": "object",
    "properties": {"REASONING": {"type": "string"}, "INFERRED INSTRUCTION": {"type": "string"}},
    "required": ["REASONING", "INFERRED INSTRUCTION"],
    "additionalProperties": False,
}


SHORT_USER_TEMPLATE = """\
{history}Answer:
{response}

What was the user's request?"""

SYSTEM_TARGET_PROMPT = f"""\
You reconstruct system prompts. You are shown a conversation in which an AI assistant followed a \
hidden system prompt: the role, rules and style its operator set. Work out the system prompt \
that most plausibly led to exactly this response.

{_GUIDELINES.format(thing="system prompt")}
- Give brief reasoning first, then the system prompt.

Answer with a JSON object with exactly two keys, "REASONING" and "INFERRED SYSTEM PROMPT"."""

SYSTEM_TARGET_USER = """\
{history}[Response]
{response}

[Your Inferred System Prompt]
Answer with the JSON object {{"REASONING": "...", "INFERRED SYSTEM PROMPT": "..."}}."""

SHORT_SYSTEM_TARGET_PROMPT = """\
You guess the system prompt behind an answer. Read a conversation in which an AI assistant \
followed a hidden system prompt (the role, rules and style its operator set) and write that \
system prompt. Reply with the system prompt only."""

SHORT_SYSTEM_TARGET_USER = """\
{history}Answer:
{response}

What system prompt was the assistant given?"""

_TEMPLATES = {
    ("paper", "instruction"): (SYSTEM_PROMPT, USER_TEMPLATE),
    ("short", "instruction"): (SHORT_SYSTEM_PROMPT, SHORT_USER_TEMPLATE),
    ("paper", "system"): (SYSTEM_TARGET_PROMPT, SYSTEM_TARGET_USER),
    ("short", "system"): (SHORT_SYSTEM_TARGET_PROMPT, SHORT_SYSTEM_TARGET_USER),
}


def target_and_context(messages: Sequence[Message], target: str) -> tuple[str, list[Message]]:
    """What FLIP reconstructs for a conversation, and the turns shown as context.

    "instruction": the last user turn, with the earlier turns as context. "system": the leading
    system message, with the rest of the conversation (the user turns) as context.
    """
    if target == "instruction":
        return messages[-1]["content"], list(messages[:-1])
    if not messages or messages[0]["role"] != "system" or not messages[0]["content"].strip():
        raise ConfigError(
            "target 'system' needs records whose `messages` start with a non-empty system "
            "message; use target 'instruction' for the others"
        )
    return messages[0]["content"], list(messages[1:])


def reconstruction_messages(
    response: str,
    history: Sequence[Message] = (),
    *,
    prompt: str = "paper",
    target: str = "instruction",
) -> list[Message]:
    """The chat turns that ask the model to infer the instruction (or system prompt) behind
    `response`. Turns of `history`, when there are any, are shown as context."""
    system, template = _TEMPLATES[(prompt, target)]
    context = ""
    if history:
        turns = "\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in history)
        context = f"[Conversation so far]\n{turns}\n\n"
    user = template.format(history=context, response=response.strip())
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


class FlipItem:
    """One candidate to score: its response, its target and the context turns; `owner`, the
    `messages` of the query it comes from, names whose engine rows it makes (`rows_of`)."""

    __slots__ = ("context", "owner", "response", "target")

    def __init__(
        self, response: str, target: str, context: list[Message], owner: object = None
    ) -> None:
        self.response, self.target, self.context = response, target, context
        self.owner = owner


class _FlipBase(Scorer):
    """Shared by the FLIP variants: targets, prompts, similarity, echo guard, description."""

    prompt_variant: ClassVar[str | None] = None  # a fixed prompt, or None to follow options
    uses_similarity: ClassVar[bool] = True
    default_echo_penalty: ClassVar[float] = 1.0

    def __init__(self, options: ScoreOptions, engine: Callable[[], Engine]) -> None:
        super().__init__(options, engine)
        self.prompt = self.prompt_variant or options.prompt
        if self.uses_similarity:
            device = None if options.device == "auto" else options.device
            self._similarity = load_similarity(
                options.similarity, embedder=options.embedder, device=device
            )
        self.guard = EchoGuard(
            enabled=options.echo_guard,
            n=options.echo_ngram,
            threshold=options.echo_threshold,
            penalty=self.default_echo_penalty
            if options.echo_penalty is None
            else options.echo_penalty,
        )

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        for name in ("similarity", "embedder", "prompt", *_ECHO_OPTIONS):
            out.pop(name, None)
        out["prompt"] = PROMPT_VERSIONS[self.prompt]
        if self.uses_similarity:
            out["similarity"] = self.options.similarity
            if self.options.similarity in USES_EMBEDDER:
                out["embedder"] = self.options.embedder
        return {**out, **self.decoding(), **self.guard.describe()}

    def decoding(self) -> dict[str, Any]:
        return {"decoding": "greedy"}

    def messages(self, item: FlipItem) -> list[Message]:
        return reconstruction_messages(
            item.response, item.context, prompt=self.prompt, target=self.options.target
        )

    def check(self, query: Query) -> None:
        try:
            target_and_context(query.messages, self.options.target)
        except ConfigError as exc:
            raise RecordProblem(str(exc)) from None

    def score(self, queries: Sequence[Query]) -> list[list[Scored]]:
        items, checks = [], []
        for query in self.clipped(queries):
            target, context = target_and_context(query.messages, self.options.target)
            for text in query.candidates:
                check = self.guard.inspect(text, target)
                checks.append(check)
                items.append(FlipItem(check.text, target, context, query.messages))
        flat = self.score_items(items, [len(q.candidates) for q in queries]) if items else []
        guarded = [
            Scored(self.guard.apply(scored.value, check), {**scored.evidence, **check.evidence})
            for check, scored in zip(checks, flat, strict=True)
        ]
        return regroup(guarded, [len(q.candidates) for q in queries])

    def score_items(self, items: list[FlipItem], sizes: Sequence[int]) -> list[Scored]:
        """One `Scored` per item; `sizes` gives how many consecutive items each record holds."""
        raise NotImplementedError


class FlipScorer(_FlipBase):
    """Scores each candidate by how well its reconstructed instruction matches the original."""

    name = "flip"

    def __init__(self, options: ScoreOptions, engine: Callable[[], Engine]) -> None:
        super().__init__(options, engine)
        self._sampling = SamplingOptions(
            n=1,
            temperature=0,
            max_new_tokens=options.max_new_tokens,
            json_schema=JSON_SCHEMA if self.prompt == "paper" else None,
        )

    def score_items(self, items: list[FlipItem], sizes: Sequence[int]) -> list[Scored]:
        todo = [i for i, item in enumerate(items) if item.response.strip()]
        prompts = [self.messages(items[i]) for i in todo]
        with rows_of(self.engine, [items[i].owner for i in todo]):
            outputs = self.engine.generate(prompts, self._sampling) if prompts else []
        parsed = [
            ("", f"error: {out[0].error}")
            if out[0].error
            else parse_reconstruction(out[0].text, self.prompt)
            for out in outputs
        ]
        values = self._similarity([p[0] for p in parsed], [items[i].target for i in todo])
        flat = [Scored(0.0, {"inferred": "", "parse": "empty-response"}) for _ in items]
        for i, (inferred, status), value in zip(todo, parsed, values, strict=True):
            flat[i] = Scored(float(value), {"inferred": inferred, "parse": status})
        return flat


@dataclass(frozen=True)
class FlipKOptions(ScorerOptions):
    """flip-k's own options."""

    k: int = option(
        4,
        "Reconstructions sampled per candidate.",
        check=positive,
        constraint="an integer >= 1",
    )
    temperature: float = option(
        0.7,
        "Sampling temperature of the reconstructions.",
        check=lambda v: non_negative(v) and v > 0,
        constraint="> 0 (flip-k samples)",
    )


class FlipKScorer(_FlipBase):
    """The mean similarity over `k` reconstructions sampled at `temperature`."""

    name = "flip-k"
    Options = FlipKOptions

    def decoding(self) -> dict[str, Any]:
        return {
            "decoding": "sampled",
            "k": self.own.k,
            "temperature": self.own.temperature,
            "seed": self.options.seed,
        }

    def score_items(self, items: list[FlipItem], sizes: Sequence[int]) -> list[Scored]:
        k = self.own.k
        todo = [i for i, item in enumerate(items) if item.response.strip()]
        prompts = [self.messages(items[i]) for i in todo]
        sampling = SamplingOptions(
            n=k,
            temperature=self.own.temperature,
            max_new_tokens=self.options.max_new_tokens,
            seed=self.options.seed,
        )
        seeds = [text_seed(self.options.seed, items[i].target, items[i].response) for i in todo]
        with rows_of(self.engine, [items[i].owner for i in todo]):
            outputs = self.engine.generate(prompts, sampling, seeds) if prompts else []
        parsed = [[parse_reconstruction(c.text, self.prompt) for c in out] for out in outputs]
        values = self._similarity(
            [p[0] for group in parsed for p in group],
            [items[i].target for i in todo for _ in range(k)],
        )
        flat = [Scored(0.0, {"inferred": [], "parse": ["empty-response"]}) for _ in items]
        for j, (i, group) in enumerate(zip(todo, parsed, strict=True)):
            sims = [float(v) for v in values[j * k : (j + 1) * k]]
            flat[i] = Scored(
                sum(sims) / k,
                {
                    "inferred": [p[0] for p in group],
                    "parse": [p[1] for p in group],
                    "similarities": [round(v, 4) for v in sims],
                },
            )
        return flat


class FlipLikelihoodScorer(_FlipBase):
    """The mean log-probability of the target's tokens as the reply to the reconstruction
    prompt (always the "short" prompt, whose reply is the bare instruction)."""

    name = "flip-likelihood"
    reads_prefix = True
    prompt_variant = "short"
    uses_similarity = False
    default_echo_penalty = 10.0

    def decoding(self) -> dict[str, Any]:
        return {"decoding": "teacher-forced", "reduce": "mean-token-logprob"}

    def score_items(self, items: list[FlipItem], sizes: Sequence[int]) -> list[Scored]:
        with rows_of(self.engine, [item.owner for item in items]):
            rows = self.engine.continuation_logprobs(
                [self.messages(item) for item in items], [item.target for item in items]
            )
        flat = []
        for row in rows:
            total = float(sum(row))
            mean = total / len(row) if row else 0.0
            flat.append(Scored(mean, {"tokens": len(row), "logprob_sum": round(total, 4)}))
        return flat


_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
# A closing tag with no opening one: everything before it was reasoning.
_UNOPENED_THINK = re.compile(r"^.*?</think>", re.DOTALL | re.IGNORECASE)
# An echoed prompt: the response block, then the header under which the answer was asked for.
_ECHOED_HEADER = re.compile(
    r"^.*\[your inferred (?:instruction|system prompt)\][^\S\n]*\n?", re.DOTALL | re.IGNORECASE
)
_MARKER = re.compile(r"^\s*\[(?:response|answer)\]\s*", re.IGNORECASE)
# A template's placeholder copied back ("...", "…", "<instruction>") is no instruction.
_PLACEHOLDER = re.compile(r"^[\s.\u2026]*$|^\s*<[^<>]*>\s*$")
_TEMPLATE = re.compile(r"\{\s*(?:\"[^\"]*\"\s*:\s*\"[\s.\u2026]*\"\s*,?\s*)+\}")
_FENCE = re.compile(r"```[a-zA-Z]*\n?|```")
_KEY = re.compile(r"^\W*(?:inferred[\s_-]*)?(?:instruction|system[\s_-]*prompt)\W*$", re.IGNORECASE)
_QUOTED_VALUE = re.compile(
    r"(?:[\"']?inferred[\s_-]*(?:instruction|system[\s_-]*prompt)[\"']?"
    r"|[\"'](?:instruction|system[\s_-]*prompt)[\"'])\s*[:=]\s*"
    r"\"((?:[^\"\\]|\\.)*)",
    re.IGNORECASE,
)
_LABELLED_LINE = re.compile(
    r"^\W*(?:inferred\s+)?(?:instruction|system\s+prompt)\W*[:=]\s*(.+)$",
    re.IGNORECASE | re.MULTILINE,
)
_PREAMBLES = re.compile(
    r"^\s*(?:\[(?:response|instruction|system prompt|your inferred (?:instruction|system prompt))"
    r"\]\s*"
    r"|(?:sure|okay|ok|certainly)[!,.]?\s+"
    r"|here\s+is\s+(?:the|an?|my)\s+(?:inferred\s+|reconstructed\s+)?"
    r"(?:instruction|system\s+prompt)\s*[:.]?\s*"
    r"|(?:the\s+)?(?:user|human)\s+(?:has\s+)?(?:requested|asked(?:\s+(?:me|you))?|wants?"
    r"(?:\s+(?:me|you))?|is\s+asking(?:\s+(?:me|you))?)(?:\s+(?:to|for|that))?\s*[:,]?\s*"
    r"|(?:the\s+)?(?:inferred\s+)?(?:instruction|system\s+prompt)\s+(?:is|was)\s*:?\s*)+",
    re.IGNORECASE,
)
_QUOTES = "\"'\u201c\u201d\u2018\u2019"


def parse_reconstruction(output: str, prompt: str = "paper") -> tuple[str, str]:
    """Extract the inferred instruction from a reconstruction; return (text, parse status).

    Status is "json" (a JSON object with an instruction key), "partial-json" (the key's value
    recovered from broken JSON), "labelled" (an "Instruction: ..." line), then, for the
    "paper" prompt, "fallback" (the whole cleaned output) or, for the "short" prompt, "text"
    (its first paragraph: the reply it asked for); "empty" when nothing is left to score.
    """
    text = clean_output(output)
    if prompt == "short":
        last: tuple[str | None, str] = (_first_paragraph(text), "text")
    else:
        last = (text, "fallback")
    for candidate, status in (
        (_from_json(text), "json"),
        (_from_quoted_value(text), "partial-json"),
        (_from_labelled_line(text), "labelled"),
        last,
    ):
        if candidate is not None:
            cleaned = strip_preamble(candidate)
            if cleaned:
                return cleaned, status
    return "", "empty"


def clean_output(output: str) -> str:
    """A model's output without think blocks (also one whose opening tag is missing), markdown
    code fences, and an echoed copy of the prompt's response block and headers."""
    text = _UNOPENED_THINK.sub("", _THINK.sub("", output))
    text = _TEMPLATE.sub("", _FENCE.sub("", text)).strip()
    after = _ECHOED_HEADER.sub("", text, count=1).strip()
    if after:
        text = after
    return _MARKER.sub("", text).strip()


def strip_preamble(text: str) -> str:
    """Drop echoed prompt headers and openers such as "The user requested ...", and quotes
    around the whole text."""
    text = _PREAMBLES.sub("", text.strip(), count=1).strip()
    if len(text) >= 2 and text[0] in _QUOTES and text[-1] in _QUOTES:
        text = text[1:-1].strip()
    return text[:1].upper() + text[1:]


def _first_paragraph(text: str) -> str | None:
    for part in re.split(r"\n\s*\n", text):
        if part.strip():
            return part.strip()
    return None


def _from_json(text: str) -> str | None:
    data = json_object(text)
    if data is None:
        return None
    for key, value in data.items():
        if _KEY.match(str(key)) and isinstance(value, str) and not _PLACEHOLDER.match(value):
            return value
    return None


def _from_quoted_value(text: str) -> str | None:
    match = _QUOTED_VALUE.search(text)
    if not match or _PLACEHOLDER.match(match.group(1)):
        return None
    try:
        return json.loads(f'"{match.group(1)}"')
    except json.JSONDecodeError:
        return match.group(1)


def _from_labelled_line(text: str) -> str | None:
    match = _LABELLED_LINE.search(text)
    if not match:
        return None
    # The rest of a JSON line the model wrote: `"Write a poem"}` or `"Write a poem",`.
    value = match.group(1).strip().rstrip("}],").strip()
    return None if _PLACEHOLDER.match(value) else value
