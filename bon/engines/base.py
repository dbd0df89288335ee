"""The engine interface: chat conversations in, N sampled completions each out.

Engines know nothing of scoring or files. Every engine takes the same two option objects, so the
generator and the reranker can each pick any engine.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from bon.chat import Message
from bon.errors import ConfigError, EngineError, RecordError
from bon.models import DEFAULT_MODEL, fingerprint
from bon.options import (
    defaults,
    fields,
    non_negative,
    option,
    positive,
    types_of,
    validate,
    value_type,
)

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "bfloat16", "float16", "float32")
CAUSAL_LM = "causal-lm"
SEQUENCE_CLASSIFIER = "sequence-classification"
TOKEN_CLASSIFIER = "token-classification"
HEADS = (CAUSAL_LM, SEQUENCE_CLASSIFIER, TOKEN_CLASSIFIER)
"""What a checkpoint's head gives: next-token logits (generation, log-probabilities) or a
classification head's logits (reward models: one row per conversation, or one per token)."""


@dataclass(frozen=True)
class SamplingOptions:
    """Per-request sampling parameters, the same for every engine.

    Attributes:
        n: completions to sample per conversation; 1 under greedy decoding.
        temperature: 0 means greedy decoding.
        top_p: nucleus sampling mass, in (0, 1].
        max_new_tokens: cap on generated tokens per completion.
        seed: base random seed; engines derive per-request seeds from it.
        json_schema: when set, a JSON schema the output must follow. Engines with structured
            outputs (vllm, openai) enforce it; hf ignores it (the prompt still asks for JSON).
        record_logprobs: give each completion the model's own mean token log-probability
            (`Completion.logprob_mean`) and, where the engine sees the whole distribution
            (hf), its self-certainty (`Completion.self_certainty`).
        first_sample: the index of the first of the `n` samples within its conversation: with
            it, the hf engine's seeded sampling draws samples first_sample .. first_sample+n-1,
            the same ones a call with `first_sample` 0 and a larger `n` draws there (the waves
            of adaptive best-of-N, `bon.adaptive`). Engines that cannot honour it refuse it.
    """

    n: int = option(
        1, "completions to sample per conversation", check=positive, constraint="an integer >= 1"
    )
    temperature: float = option(1.0, "0 is greedy", check=non_negative, constraint=">= 0")
    top_p: float = option(
        1.0,
        "nucleus sampling mass",
        check=lambda v: non_negative(v) and 0 < v <= 1,
        constraint="in (0, 1]",
    )
    max_new_tokens: int = option(
        256, "cap on generated tokens", check=positive, constraint="an integer >= 1"
    )
    seed: int = option(
        0,
        "base random seed",
        check=lambda v: non_negative(v) and isinstance(v, int),
        constraint="an integer >= 0",
    )
    json_schema: Mapping[str, Any] | None = option(
        None,
        "a JSON schema the output must follow",
        check=lambda v: v is None or isinstance(v, Mapping),
        constraint="a JSON schema object (a dict) or None",
    )
    record_logprobs: bool = option(False, "record each completion's log-probabilities")
    first_sample: int = option(
        0,
        "index of the first sample drawn in each conversation",
        check=lambda v: non_negative(v) and isinstance(v, int),
        constraint="an integer >= 0",
    )

    def __post_init__(self) -> None:
        validate(self)
        if self.temperature == 0 and self.n > 1:
            raise ConfigError(
                "`n` must be 1 when `temperature` is 0 (greedy decoding gives n identical "
                f"candidates), got {self.n}; set --temperature > 0 or --n 1"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict[str, Any]:
        """The options as recorded beside the outputs (`json_schema` and `record_logprobs` only
        when set, so that runs without them record what they always did)."""
        out = dataclasses.asdict(self)
        if self.json_schema is None:
            del out["json_schema"]
        if not self.record_logprobs:
            del out["record_logprobs"]
        if not self.first_sample:
            del out["first_sample"]
        return out


def _engine_names() -> list[str]:
    from bon.engines import engines  # here, not at import time: the registry imports us

    return engines.names()


ENGINE_ARG_HELP = (
    "Engine-specific option KEY=VALUE; repeat for several (e.g. enforce_eager=true, "
    "gpu_memory_utilization=0.45, base_url=http://127.0.0.1:8000/v1). An unknown key lists the "
    "engine's options."
)


@dataclass(frozen=True)
class EngineOptions:
    """Which model an engine loads and how; the base of every stage's options that runs a model.

    `engine_args` holds options only one engine understands (e.g. vllm's
    `gpu_memory_utilization`, openai's `base_url`); each engine declares the ones it accepts in
    `Engine.Args`, and any other key is a `ConfigError`. Values may be strings ("true", "0.4"),
    as the command line gives them; they are converted to the declared type.
    """

    model: str = option(
        DEFAULT_MODEL,
        "Model: an alias (smollm2-135m), a Hugging Face Hub id or a local path.",
        check=lambda v: isinstance(v, str) and bool(v.strip()),
        constraint="a non-empty name or path",
        short="-m",
    )
    engine: str = option("hf", "Engine that runs the model.", choices=_engine_names)
    device: str = option(
        "auto",
        "Where the model runs: auto (CUDA when present, else the CPU), cpu, cuda, cuda:N or mps.",
        check=lambda v: isinstance(v, str) and (v in DEVICES or v.startswith("cuda:")),
        constraint=f"one of {', '.join(DEVICES)} or cuda:N",
    )
    dtype: str = option(
        "auto",
        "Model precision; auto is bfloat16 on GPUs and on CPUs with native bf16 "
        "(avx512_bf16 or AMX), float32 on other CPUs (where bf16 runs at half the speed).",
        choices=DTYPES,
    )
    batch_size: int = option(
        32,
        "Most sequences decoded at once (the hf engine draws each candidate from a random "
        "stream of its own, seeded by its prompt's seed and its index, whatever the batch).",
        check=positive,
        constraint="an integer >= 1",
    )
    engine_args: Mapping[str, Any] | None = option(
        None,
        ENGINE_ARG_HELP,
        check=lambda v: v is None or isinstance(v, Mapping),
        constraint="a mapping of engine option names to values",
        flag="--engine-arg",
    )

    def __post_init__(self) -> None:
        validate(self)
        from bon.engines import engines

        cls = engines.get(self.engine)
        # Keep the validated, typed copy: the caller's mapping is never shared or mutated.
        object.__setattr__(self, "engine_args", cls.check_args(self.engine_args or {}))

    def identity(self) -> dict[str, Any]:
        """What identifies the model's outputs without loading it: the model and its weights'
        fingerprint, the engine, the precision and the engine's own settings."""
        from bon.engines import engines

        out = {
            "model": self.model,
            "model_fingerprint": fingerprint(self.model),
            "engine": self.engine,
            "dtype": self.dtype,
            **engines.get(self.engine).identity(dict(self.engine_args or {})),
        }
        if self.engine_args:
            out["engine_args"] = dict(sorted(self.engine_args.items()))
        return out


@dataclass(frozen=True)
class EngineArgs:
    """Base of an engine's own options class (`Engine.Args`): frozen, its fields made with
    `bon.options.option` and checked when built, given as `--engine-arg KEY=VALUE`. This one,
    with no fields, is the class of an engine that has none."""

    def __post_init__(self) -> None:
        validate(self)


def engine_arg(engine: str, cls: type, name: str, value: Any) -> Any:
    """`value` of the engine arg `name` of `cls` as its declared type (bool, int, float or
    str, or None where the default is None); strings from the command line are parsed."""
    field = next(f for f in fields(cls) if f.name == name)
    kind = value_type(types_of(cls)[name])
    wanted = f"{kind.__name__} (engine arg of the {engine} engine: {field.metadata['help']})"
    if value is None and field.default is None:
        return None
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        if kind is bool:
            if text not in _BOOLS:
                raise ConfigError(f"`{name}` must be true or false, got {value!r}")
            return _BOOLS[text]
        try:
            return kind(text)
        except ValueError:
            raise ConfigError(f"`{name}` must be a {wanted}, got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"`{name}` must be a {wanted}, got {value!r}")
    return value


_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


@dataclass(frozen=True)
class RecordedArgs:
    """The engine args a generate run records in its configuration (the resume manifest), with
    the other records an output made by an earlier version may hold (`Engine.recorded_args`)."""

    args: dict[str, Any]
    """What this run records (usually the args as given)."""
    older: tuple[dict[str, Any], ...] = ()
    """Older spellings of the same outputs' args: an output recorded with one of them resumes
    as if it held `args`."""
    advice: tuple[tuple[dict[str, Any], str], ...] = ()
    """(args, how to resume): an output recorded with those args was made some other way (e.g.
    under an earlier default) and is refused with this advice."""


@dataclass(frozen=True)
class Completion:
    """One sampled completion: its text, why it ended, its token count (the stop token included).

    `finish_reason` is "stop" or "length", or "error" when the engine could not answer this
    conversation (a prompt longer than the model's context, a request the server refused for
    this row); then `text` is empty, `tokens` is 0 and `error` says why. Other rows of the same
    call are unaffected.

    Under `SamplingOptions.record_logprobs`, `logprob_mean` is the mean log-probability (nats)
    of the text's tokens under the model's own distribution (before temperature and top-p; the
    stop token left out, so that a teacher-forced pass over the text gives the same value), and
    `self_certainty` the mean over the same steps of KL(uniform || p), the divergence of the
    model's next-token distribution from uniform (Kang et al. 2025; engines that see only the
    sampled token's log-probability leave it None). Both are None for an empty text.
    """

    text: str
    finish_reason: str
    tokens: int
    error: str | None = None
    logprob_mean: float | None = None
    self_certainty: float | None = None
    token_ids: tuple[int, ...] | None = dataclasses.field(default=None, compare=False, repr=False)
    """The completion's token ids (stop token included), from engines that can continue a
    completion (`Engine.resume`); never written into records."""
    state: Any = dataclasses.field(default=None, compare=False, repr=False)
    """What the engine kept to continue this completion without reading it again (hf: its
    batch's KV cache), from `Engine.start`; never written into records."""
    prefill_tokens: int = dataclasses.field(default=0, compare=False, repr=False)
    """Prompt and partial tokens the engine read again to continue this completion
    (`Engine.resume`: none from a kept `state` or a prefix cache); never written into records."""

    def to_record(self) -> dict[str, Any]:
        """The candidate as stored in records (`error`, `logprob_mean` and `self_certainty`
        only when there are some)."""
        record = {name: getattr(self, name) for name in RECORD_FIELDS}
        for name in OPTIONAL_FIELDS:
            if record[name] is None:
                del record[name]
        return record


RECORD_FIELDS = ("text", "finish_reason", "tokens", "error", "logprob_mean", "self_certainty")
"""`Completion` fields written into records."""
OPTIONAL_FIELDS = ("error", "logprob_mean", "self_certainty")
"""`Completion` fields written into records only when set."""


def continuation_seed(seed: int, sample: int, done: int) -> int:
    """The seed of a continuation request (`Engine.resume` on vllm and openai): a hash of the
    conversation's seed, the sample index and the tokens the sample already holds, so that a
    rerun draws the same continuation and no two continuations share a stream."""
    digest = hashlib.sha256(f"bon-continue:{seed}:{sample}:{done}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def ended_by(reason: str | None) -> str:
    """A server's or vLLM's finish reason in bon's terms: "length" when capped, else "stop"."""
    return "length" if reason == "length" else "stop"


def too_long(prompt_tokens: int, context: int) -> Completion:
    """The error completion of a prompt that leaves no room for a reply in the context."""
    return Completion(
        text="",
        finish_reason="error",
        tokens=0,
        error=f"prompt has {prompt_tokens} tokens; the model's context is {context}",
    )


def check_fits(
    prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], room: int
) -> None:
    """Raise `RecordError` naming the first (prompt, continuation) pair longer than `room`."""
    for row, (prompt, target) in enumerate(zip(prompts, targets, strict=True)):
        if len(prompt) + len(target) > room:
            raise RecordError(
                f"row {row}: the prompt ({len(prompt)} tokens) and the continuation "
                f"({len(target)} tokens) have {len(prompt) + len(target)} tokens; the model "
                f"takes at most {room}; shorten the prompt or the text to score"
            )


def require_classifier(head: str, model: str, job: str) -> None:
    """Raise `EngineError` when `model` (whose head is `head`) is a causal LM, which cannot
    `job` (the reward-model calls need a classification head)."""
    if head == CAUSAL_LM:
        raise EngineError(
            f"model {model!r} has no classification head (its config names a causal LM), so "
            f"it cannot {job}: give a reward model, a checkpoint that "
            "AutoModelForSequenceClassification loads, as the scoring --model"
        )


def check_lengths(sequences: Sequence[Sequence[int]], room: int) -> None:
    """Raise `RecordError` naming the first token sequence longer than `room`."""
    for row, sequence in enumerate(sequences):
        if len(sequence) > room:
            raise RecordError(
                f"row {row}: the conversation has {len(sequence)} tokens; the model takes at "
                f"most {room}; shorten the response or the prompt"
            )


def decode_each(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Each token id decoded on its own (a character split across tokens decodes as U+FFFD)."""
    return [tokenizer.decode([token]) for token in ids]


class Engine(ABC):
    """A text-generation backend. Subclasses register with `bon.engines.register`."""

    name: ClassVar[str]
    Args: ClassVar[type[EngineArgs]] = EngineArgs
    """The engine-specific options this engine accepts in `EngineOptions.engine_args`."""

    def __init__(self, options: EngineOptions) -> None:
        self.options = options
        # Checked by `EngineOptions`; a proxy keeps the args of the engine it wraps.
        self.engine_args: dict[str, Any] = {
            **defaults(self.Args),
            **(options.engine_args or {}),
        }

    @classmethod
    def check_args(cls, given: Mapping[str, Any]) -> dict[str, Any]:
        """`given` converted to the declared types and checked against `cls.Args`."""
        names = [f.name for f in fields(cls.Args)]
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise ConfigError(
                f"unknown engine arg(s) {', '.join(unknown)} for the {cls.name} engine; "
                f"it accepts: {', '.join(sorted(names)) or 'none'}"
            )
        out = {key: engine_arg(cls.name, cls.Args, key, value) for key, value in given.items()}
        cls.Args(**out)
        return out

    @classmethod
    def samples_alone(cls, engine_args: Mapping[str, Any]) -> bool:
        """Whether this engine samples each conversation in a call of its own, so that a batch
        of several records is no faster than one record at a time: the generate stage then
        batches one record at a time and writes each as soon as it is done. (Not whether a
        record's samples depend on its seed alone: the hf engine's `seeded` mode batches
        records and still draws each record's samples from its own seed.)"""
        return False

    @classmethod
    def recorded_args(cls, engine_args: Mapping[str, Any], sampled: bool) -> RecordedArgs:
        """The engine args (as given, not defaulted) as a generate run records them: as given,
        unless the engine changed a default that changes samples (`sampled`: temperature > 0),
        whose value must then be recorded so that an output made under the old default is not
        resumed under the new one."""
        return RecordedArgs(dict(engine_args))

    @classmethod
    def identity(cls, engine_args: Mapping[str, Any]) -> dict[str, Any]:
        """Settings outside `engine_args` that change this engine's outputs (e.g. a server URL
        read from the environment), known before the engine loads."""
        return {}

    @abstractmethod
    def generate(
        self,
        conversations: Sequence[list[Message]],
        sampling: SamplingOptions,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """Sample `sampling.n` completions for each conversation, in input order.

        `seeds`, one per conversation (default: `sampling.seed` for all), make each
        conversation's samples depend on its own seed only, not on the other conversations.
        A conversation the engine cannot answer (e.g. a prompt longer than the model's
        context) gets `n` completions with `finish_reason="error"`; a failure of the whole
        job (a refused parameter, a lost server) raises `EngineError`.
        """

    def continuation_logprobs(
        self, conversations: Sequence[list[Message]], continuations: Sequence[str]
    ) -> list[list[float]]:
        """Log-probability of each token of `continuations[i]` as the assistant's reply to
        `conversations[i]`, teacher-forced (one forward pass, no decoding).

        A pair that does not fit the model's context raises `RecordError` naming its row;
        engines that cannot return prompt log-probabilities raise `EngineError`.
        """
        raise EngineError(f"the {self.name} engine cannot return log-probabilities")

    def token_pieces(self, texts: Sequence[str]) -> list[list[str]]:
        """Each text's tokens as a continuation (the rows of `continuation_logprobs`), each
        decoded on its own; engines without a local tokenizer raise `EngineError`."""
        raise EngineError(f"the {self.name} engine cannot split text into its tokens")

    def prompt_tokens(self, conversation: list[Message]) -> int:
        """Tokens of `conversation` as this engine formats it for a reply (its chat template);
        0 for engines that do not see the template and the tokenizer (a server's)."""
        return 0

    @classmethod
    def resumes(cls, engine_args: Mapping[str, Any]) -> bool:
        """Whether `resume` can continue partial completions of sampled runs, as pruned
        best-of-N needs (`bon.prune`); known before the engine loads."""
        return False

    def start(
        self,
        conversations: Sequence[list[Message]],
        sampling: SamplingOptions,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """`generate` for completions that `resume` will continue: an engine that can keep what
        it read (hf: the KV cache) holds it in each completion's `state`."""
        return self.generate(conversations, sampling, seeds)

    def resume(
        self,
        conversations: Sequence[list[Message]],
        sampling: SamplingOptions,
        seeds: Sequence[int] | None,
        partials: Sequence[Sequence[tuple[int, Completion]]],
        follow: Mapping[tuple[int, int], Callable[[str], None]] | None = None,
    ) -> list[list[Completion]]:
        """Continue partial completions made by `start` or `resume` with the same `sampling`
        but a smaller `max_new_tokens`: `partials[i]` holds (sample index j, the completion so
        far) for conversation i, and each comes back, in that order, as the whole completion
        (its first tokens included) up to `sampling.max_new_tokens`, with `prefill_tokens`
        saying what the engine read again. How the continuation is drawn is the engine's: the
        hf engine's `seeded` sampling goes on with the draws an uninterrupted `generate` would
        have made; vllm and openai draw it from `continuation_seed`. `follow[(i, k)]`, for the
        k-th partial of conversation i, is called with that completion's whole text each time
        it grows. Engines that cannot continue (`resumes`) raise `EngineError`."""
        raise EngineError(
            f"the {self.name} engine cannot continue partial candidates (pruned best-of-N, "
            "--prune-at): use the hf engine with its default sample_batching=seeded, or vllm"
        )

    @classmethod
    def model_head(cls, model: str) -> str | None:
        """Which head (one of `HEADS`) the checkpoint `model` carries, read from its
        configuration before any weights load; None when this engine cannot tell before it
        asks a server."""
        return None

    @classmethod
    def token_count(cls, model: str, text: str) -> int | None:
        """How many tokens `text` makes on its own in `model`'s tokenizer, known before any
        weights load; None when this engine cannot tell (a server's tokenizer)."""
        return None

    def sequence_scores(self, conversations: Sequence[list[Message]]) -> list[list[float]]:
        """The classification head's logits at the last token of each conversation: a reward
        model's raw scores (one per label), in input order. Each conversation ends with the
        assistant turn to score and is rendered whole with the model's own chat template.

        A conversation longer than the model's context raises `RecordError` naming its row; a
        model without a classification head, or an engine that cannot run one, raises
        `EngineError`.
        """
        raise EngineError(
            f"the {self.name} engine cannot run a classification head (reward models): use the "
            "hf or vllm engine"
        )

    def tag_logits(
        self, conversations: Sequence[list[Message]], tag: str
    ) -> list[list[list[float]]]:
        """The classification head's logits at each position of the token `tag` in each
        conversation (rendered as by `sequence_scores`), in position order: a process reward
        model's per-step scores. `tag` must be one token of the model's tokenizer, else
        `ConfigError`; errors otherwise as `sequence_scores`.
        """
        raise EngineError(
            f"the {self.name} engine cannot give per-token classification logits (process "
            "reward models): use the hf or vllm engine"
        )

    @contextmanager
    def decoding(self, on_tokens: Callable[[int], None]) -> Iterator[None]:
        """While inside, `on_tokens(k)` is called as the engine decodes about `k` more tokens
        (summed over the rows of a batch; rows that already stopped may still count), so a
        progress bar can move during a long call. An estimate: what a call generated is in its
        completions. The default calls nothing (the engine cannot tell)."""
        yield

    def with_batch_size(self, batch_size: int) -> Engine:
        """This engine, its loaded model shared, calling in batches of `batch_size` (so stages
        with different batch sizes share one model); closing either closes both."""
        if batch_size == self.options.batch_size:
            return self
        view = copy.copy(self)
        view.options = dataclasses.replace(self.options, batch_size=batch_size)
        return view

    def describe(self) -> dict[str, Any]:
        """What identifies this engine's outputs, for records and manifests."""
        return {"engine": self.name, "model": self.options.model}

    def close(self) -> None:
        """Release the model's memory; the engine is unusable afterwards."""
