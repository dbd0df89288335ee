"""The openai engine: any OpenAI-compatible chat server (vLLM, SGLang, llama.cpp, hosted APIs).

Each conversation is one chat-completions request with `n` samples and its own `seed`; up to
`concurrency` requests are in flight at once, and results come back in input order.

Errors are sorted by who can fix them:
- transient (429, 408, 409, 5xx, timeouts, refused or reset connections): retried by the
  openai SDK (`max_retries` times, with its exponential backoff, honouring Retry-After); when
  the retries run out the job stops with an `EngineError`, and rerunning the same command
  resumes it;
- the whole job's (401, 403, 404: key, permission, model name): an `EngineError` at once;
- one row's (other 4xx, e.g. a prompt longer than the context): that conversation gets
  `Completion(finish_reason="error", error=...)` and the other rows go on.

A 4xx can also refuse what every request carries, so that each row would fail alike and every
score would be 0. Two rules tell such a refusal from a row's:
- a 400/422 whose message names an optional parameter bon sent (`response_format` or
  `json_schema`, `seed`, `logprobs`) drops that parameter for the rest of the engine's life,
  with a warning, and retries; `describe()["dropped_params"]` records it beside the outputs;
- the same error (status and message) for every row of a call of two or more, or for the
  engine's first three rows, is the job's: an `EngineError` with the server's message. Context
  overflows ("maximum context length") are always one row's, however many rows share them.

Log-probabilities of a continuation (`continuation_logprobs`) use vLLM's `/tokenize` endpoint
and `/v1/completions` with `echo`; other servers raise `EngineError`.

Reward models served by vLLM (`vllm serve RM`, which picks the pooling runner for a
classification checkpoint) score through the endpoints beside /v1: `sequence_scores` posts each
conversation to `/classify` (the server renders it with the model's chat template) and
`tag_logits` posts its `/tokenize`d ids to `/pooling` with `task: token_classify`, which needs
a server started with `--pooler-config '{"task": "token_classify"}'`; both ask for raw logits
(`use_activation: false`). With `record_logprobs`, chat requests ask for `logprobs` and each
completion's `logprob_mean` is the mean over its tokens (a trailing end-of-turn token that is
not part of the text left out); servers give no whole distribution, so no `self_certainty`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from bon.chat import Message
from bon.engines.base import (
    Completion,
    Engine,
    EngineArgs,
    EngineOptions,
    SamplingOptions,
    continuation_seed,
    ended_by,
)
from bon.errors import ConfigError, EngineError, RecordError
from bon.options import non_negative, option, positive

log = logging.getLogger(__name__)

T = TypeVar("T")

TRANSIENT_STATUS = (408, 409, 429)
FATAL_STATUS = (401, 403, 404)
OPTIONAL_PARAMS = {
    "response_format": re.compile(r"response_format|json_schema", re.IGNORECASE),
    "seed": re.compile(r"\bseed\b", re.IGNORECASE),
    "logprobs": re.compile(r"logprobs", re.IGNORECASE),
}
"""Request parameters bon can do without, and how a server's error message names each."""
DROP_EFFECTS = {
    "response_format": "outputs no longer follow the JSON schema",
    "seed": "samples are no longer reproducible",
    "logprobs": "token counts of n > 1 samples are unknown and recorded as 0",
}
CONTEXT_OVERFLOW = re.compile(
    r"context length|context window|maximum context|prompt is too long", re.IGNORECASE
)
FIRST_ROWS = 3
CONTINUE = {"continue_final_message": True, "add_generation_prompt": False}
"""Request fields that make a server continue the conversation's last (assistant) message
instead of answering it: vLLM's and SGLang's chat extension (pruned best-of-N, `resume`)."""
LOGPROBS_SERVER = (
    "continuation log-probabilities need a vLLM server; use the hf or vllm engine for "
    "likelihood scoring"
)
REWARD_SERVER = (
    "reward models need a vLLM server serving one (per-step scores: started with "
    '--pooler-config \'{"task": "token_classify"}\'); or use the hf or vllm engine'
)


class RowError(Exception):
    """A request the server refused (4xx): one conversation's problem unless shown otherwise."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"HTTP {status}: {message}")


@dataclass(frozen=True)
class OpenAIArgs(EngineArgs):
    """The openai engine's own options (`--engine-arg KEY=VALUE`)."""

    base_url: str = option(
        "",
        "the API root, e.g. http://127.0.0.1:8000/v1; empty reads OPENAI_BASE_URL, else "
        "api.openai.com",
    )
    api_key_env: str = option("OPENAI_API_KEY", "environment variable that holds the API key")
    concurrency: int = option(
        8, "requests in flight at once", check=positive, constraint="an integer >= 1"
    )
    timeout: float = option(
        600.0,
        "seconds one request may take before it is retried",
        check=lambda v: non_negative(v) and v > 0,
        constraint="> 0 seconds",
    )
    max_retries: int = option(
        5,
        "retries of a request after a transient error (the openai SDK's, with its exponential "
        "backoff and the server's Retry-After)",
        check=lambda v: non_negative(v) and isinstance(v, int),
        constraint="an integer >= 0",
    )


class OpenAIEngine(Engine):
    """Chat completions over HTTP with the `openai` client (`pip install bon[openai]`)."""

    name = "openai"
    Args = OpenAIArgs

    def __init__(self, options: EngineOptions) -> None:
        super().__init__(options)
        args = self.engine_args
        try:
            import openai
        except ImportError:
            raise EngineError(
                "the openai engine needs the openai package: pip install bon[openai]"
            ) from None
        self._openai = openai
        self.base_url = _base_url(args["base_url"])
        key = os.environ.get(args["api_key_env"])
        if not key:
            log.info(
                "%s is not set: sending no API key (fine for local servers)", args["api_key_env"]
            )
        self._key = key or "EMPTY"
        self.client = openai.OpenAI(
            base_url=self.base_url,
            api_key=self._key,
            timeout=args["timeout"],
            max_retries=args["max_retries"],
        )
        self._lock = threading.Lock()
        self.dropped_params: list[str] = []
        """Optional parameters the server refused, no longer sent (see the module docstring)."""
        self._rows = 0
        self._first: dict[int, str | None] = {}  # error (or None) of each of the first rows

    @classmethod
    def identity(cls, engine_args: Mapping[str, Any]) -> dict[str, Any]:
        return {"base_url": _base_url(engine_args.get("base_url", ""))}

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "base_url": self.base_url,
            "dropped_params": sorted(self.dropped_params),
        }

    def generate(
        self,
        conversations: Sequence[list[Message]],
        sampling: SamplingOptions,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        seeds = list(seeds) if seeds is not None else [sampling.seed] * len(conversations)
        first = self._claim_rows(len(conversations))
        jobs = [
            partial(self._chat_row, first + i, c, sampling, s)
            for i, (c, s) in enumerate(zip(conversations, seeds, strict=True))
        ]
        results = self._run_all(jobs)
        self._check_call([row[0].error for row in results])
        return results

    @classmethod
    def resumes(cls, engine_args: Mapping[str, Any]) -> bool:
        return True

    def resume(
        self,
        conversations: Sequence[list[Message]],
        sampling: SamplingOptions,
        seeds: Sequence[int] | None,
        partials: Sequence[Sequence[tuple[int, Completion]]],
        follow: Mapping[tuple[int, int], Callable[[str], None]] | None = None,
    ) -> list[list[Completion]]:
        """Continue each partial completion as a chat request of its own (n=1) that ends with
        the partial answer as an open assistant turn (`CONTINUE`), seeded by
        `continuation_seed`; `prefill_tokens` is the prompt the server read, less what it says
        it found cached. A followed continuation is streamed, `follow` called as it grows."""
        seeds = list(seeds) if seeds is not None else [sampling.seed] * len(conversations)
        results = [[so_far for _, so_far in row] for row in partials]
        places: list[tuple[int, int]] = []
        jobs: list[Callable[[], list[Completion]]] = []
        first = self._claim_rows(sum(len(row) for row in partials))
        for i, row in enumerate(partials):
            for k, (j, so_far) in enumerate(row):
                left = sampling.max_new_tokens - so_far.tokens
                if left <= 0:
                    continue
                one = dataclasses.replace(sampling, n=1, max_new_tokens=left)
                seed = continuation_seed(seeds[i], j, so_far.tokens)
                places.append((i, k))
                watch = (follow or {}).get((i, k))
                row_number = first + len(jobs)
                jobs.append(
                    partial(self._chat_row, row_number, conversations[i], one, seed, so_far, watch)
                )
        done = self._run_all(jobs)
        self._check_call([row[0].error for row in done])
        for (i, k), (more,) in zip(places, done, strict=True):
            results[i][k] = more
        return results

    def continuation_logprobs(
        self, conversations: Sequence[list[Message]], continuations: Sequence[str]
    ) -> list[list[float]]:
        """As `Engine.continuation_logprobs`; a pair the server refuses is a `RecordError`."""
        first = self._claim_rows(len(conversations))
        jobs = [
            partial(self._logprobs_row, first + i, c, t)
            for i, (c, t) in enumerate(zip(conversations, continuations, strict=True))
        ]
        results = self._run_all(jobs)
        errors = [str(r) if isinstance(r, RowError) else None for r in results]
        self._check_call(errors)
        for row, result in enumerate(results):
            if isinstance(result, RowError):
                raise RecordError(f"row {row}: {self.base_url} refused it: {result}")
        return results  # type: ignore[return-value]

    def _chat_row(
        self,
        row: int,
        conversation: list[Message],
        sampling: SamplingOptions,
        seed: int,
        so_far: Completion | None = None,
        follow: Callable[[str], None] | None = None,
    ) -> list[Completion]:
        try:
            completions = self._chat(conversation, sampling, seed, so_far, follow)
        except RowError as exc:
            self._note(row, str(exc))
            log.warning("a request failed and its row is marked as an error: %s", exc)
            return [Completion("", "error", 0, error=str(exc))] * sampling.n
        self._note(row, None)
        return completions

    def _logprobs_row(
        self, row: int, conversation: list[Message], continuation: str
    ) -> list[float] | RowError:
        try:
            values = self._logprobs(conversation, continuation)
        except RowError as exc:
            self._note(row, str(exc))
            return exc
        self._note(row, None)
        return values

    def _claim_rows(self, count: int) -> int:
        """The engine-wide number of the first of `count` new rows."""
        with self._lock:
            first, self._rows = self._rows, self._rows + count
        return first

    def _note(self, row: int, error: str | None) -> None:
        """Record how one of the engine's first rows ended; raise once they all failed alike."""
        if row >= FIRST_ROWS:
            return
        with self._lock:
            self._first[row] = error
            outcomes = list(self._first.values())
        if len(outcomes) == FIRST_ROWS:
            self._check_same(outcomes, f"each of its first {FIRST_ROWS} requests")

    def _check_call(self, errors: list[str | None]) -> None:
        if len(errors) >= 2:
            self._check_same(errors, f"all {len(errors)} requests of a call")

    def _check_same(self, errors: list[str | None], which: str) -> None:
        """Raise `EngineError` when every one of `errors` is the same (non-overflow) error."""
        error = errors[0]
        if error is None or CONTEXT_OVERFLOW.search(error) or any(e != error for e in errors):
            return
        raise EngineError(
            f"{self.base_url} refused {which} with the same error ({error}), so the problem is "
            "the job's, not one row's: change the option or parameter the message names "
            "(e.g. --max-new-tokens, --n, --temperature, --top-p, --model) or the server's "
            "settings, then rerun"
        )

    def close(self) -> None:
        self.client.close()

    def _run_all(self, jobs: Sequence[Callable[[], T]]) -> list[T]:
        """Run `jobs` with at most `concurrency` at once; results in input order."""
        if not jobs:
            return []
        workers = min(self.engine_args["concurrency"], len(jobs))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(job) for job in jobs]
            try:
                return [future.result() for future in futures]
            except BaseException:
                for future in futures:
                    future.cancel()
                raise

    def _chat(
        self,
        conversation: list[Message],
        sampling: SamplingOptions,
        seed: int,
        so_far: Completion | None = None,
        follow: Callable[[str], None] | None = None,
    ) -> list[Completion]:
        """The request's completions; with `so_far`, the one continuation of that partial
        completion, joined to it (streamed when followed: `follow` gets the whole text each
        time it grows)."""
        while True:
            kwargs = self._chat_request(conversation, sampling, seed)
            if so_far is not None:
                kwargs["messages"] = [*conversation, {"role": "assistant", "content": so_far.text}]
                kwargs["extra_body"] = CONTINUE
            if so_far is not None and follow is not None:
                kwargs.update(stream=True, stream_options={"include_usage": True})
            try:
                response = self._retrying(partial(self.client.chat.completions.create, **kwargs))
            except RowError as exc:
                if not self._drop_named(exc, kwargs):
                    raise
                continue
            if so_far is not None and follow is not None:
                return [_joined(so_far, *_streamed(response, so_far.text, follow))]
            choices = sorted(response.choices, key=lambda c: c.index)
            usage = response.usage.completion_tokens if response.usage else 0
            record = sampling.record_logprobs
            out = [_completion(c, usage if len(choices) == 1 else None, record) for c in choices]
            return out if so_far is None else [_joined(so_far, out[0], response.usage)]

    def _chat_request(
        self, conversation: list[Message], sampling: SamplingOptions, seed: int
    ) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "model": self.options.model,
            "messages": conversation,
            "n": sampling.n,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": 1.0 if sampling.greedy else sampling.top_p,
            "seed": seed,
        }
        if sampling.n > 1 or sampling.record_logprobs:
            kwargs["logprobs"] = True  # usage counts all n samples together; logprobs each one
        if sampling.json_schema is not None:
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": dict(sampling.json_schema)},
            }
        with self._lock:
            for name in self.dropped_params:
                kwargs.pop(name, None)
        return kwargs

    def _drop_named(self, exc: RowError, sent: dict[str, Any]) -> bool:
        """Stop sending the optional parameters a 400/422 names; False when it names none."""
        if exc.status not in (400, 422):
            return False
        named = [
            p for p, pattern in OPTIONAL_PARAMS.items() if p in sent and pattern.search(exc.message)
        ]
        with self._lock:
            for name in named:
                if name not in self.dropped_params:
                    self.dropped_params.append(name)
                    log.warning(
                        "%s refused `%s` (%s); it is no longer sent and %s",
                        self.base_url,
                        name,
                        exc,
                        DROP_EFFECTS[name],
                    )
        return bool(named)

    def _logprobs(self, conversation: list[Message], continuation: str) -> list[float]:
        head = self._tokenize({"messages": conversation, "add_generation_prompt": True})
        tail = self._tokenize({"prompt": continuation, "add_special_tokens": False})
        if not tail:
            return []
        response = self._retrying(
            lambda: self.client.completions.create(
                model=self.options.model,
                prompt=head + tail,
                max_tokens=1,
                temperature=0,
                echo=True,
                logprobs=0,
            )
        )
        logprobs = response.choices[0].logprobs
        values = logprobs.token_logprobs if logprobs else None
        if not values or len(values) < len(head) + len(tail):
            raise EngineError(
                f"the server at {self.base_url} returned no prompt log-probabilities "
                "(it needs `echo` with `logprobs` on /v1/completions, as vLLM has)"
            )
        return [float(v) for v in values[len(head) : len(head) + len(tail)]]

    def token_pieces(self, texts: Sequence[str]) -> list[list[str]]:
        """As `Engine.token_pieces`, through vLLM's /tokenize and /detokenize endpoints (one
        token per /detokenize call, `concurrency` calls in flight)."""
        rows = self._run_all(
            [partial(self._tokenize, {"prompt": t, "add_special_tokens": False}) for t in texts]
        )
        flat = self._run_all(
            [
                partial(self._server, "detokenize", {"tokens": [t]}, "prompt")
                for r in rows
                for t in r
            ]
        )
        starts = itertools.accumulate((len(r) for r in rows), initial=0)
        return [flat[start : start + len(r)] for start, r in zip(starts, rows, strict=False)]

    def sequence_scores(self, conversations: Sequence[list[Message]]) -> list[list[float]]:
        """As `Engine.sequence_scores`, through vLLM's /classify endpoint."""
        return self._run_all([partial(self._classify, c) for c in conversations])

    def _classify(self, conversation: list[Message]) -> list[float]:
        body = {"messages": conversation, "use_activation": False}
        data = self._server("classify", body, "data", need=REWARD_SERVER)
        return [float(v) for v in data[0]["probs"]]

    def tag_logits(
        self, conversations: Sequence[list[Message]], tag: str
    ) -> list[list[list[float]]]:
        """As `Engine.tag_logits`, through vLLM's /tokenize and /pooling endpoints."""
        body = {"prompt": tag, "add_special_tokens": False}
        ids = self._server("tokenize", body, "tokens", need=REWARD_SERVER)
        if len(ids) != 1:
            raise ConfigError(
                f"step tag {tag!r} is {len(ids)} tokens in the tokenizer of {self.base_url}, not "
                "one: give a tag the tokenizer holds as one token (e.g. a special token the "
                "process reward model was trained with)"
            )
        return self._run_all([partial(self._tag_row, c, ids[0]) for c in conversations])

    def _tag_row(self, conversation: list[Message], tag_id: int) -> list[list[float]]:
        tokens = {"messages": conversation, "add_generation_prompt": False}
        ids = self._server("tokenize", tokens, "tokens", need=REWARD_SERVER)
        body = {"input": ids, "task": "token_classify", "use_activation": False}
        rows = self._server("pooling", body, "data", need=REWARD_SERVER)[0]["data"]
        return [[float(v) for v in rows[k]] for k, token in enumerate(ids) if token == tag_id]

    def _tokenize(self, body: dict[str, Any]) -> list[int]:
        """Token ids from vLLM's /tokenize endpoint (beside /v1)."""
        return list(self._server("tokenize", body, "tokens"))

    def _server(
        self, endpoint: str, body: dict[str, Any], field: str, need: str = LOGPROBS_SERVER
    ) -> Any:
        """`field` of the answer of one of vLLM's endpoints beside /v1 (tokenize, detokenize,
        classify, pooling); `need` says, on failure, what needs such a server."""
        root = self.base_url.removesuffix("/v1")
        request = urllib.request.Request(
            f"{root}/{endpoint}",
            data=json.dumps({"model": self.options.model, **body}).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {self._key}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.engine_args["timeout"]) as reply:
                return json.load(reply)[field]
        except (urllib.error.URLError, KeyError, TypeError, ValueError) as exc:
            raise EngineError(
                f"cannot {endpoint} through {root}/{endpoint} ({exc}): {need}"
            ) from None

    def _retrying(self, call: Callable[[], T]) -> T:
        """`call()`, which the SDK retries on transient errors (`max_retries` times, with its
        exponential backoff and the server's Retry-After); what still fails becomes an
        `EngineError` (the job's) or a `RowError` (one row's)."""
        openai = self._openai
        try:
            return call()
        except openai.APIStatusError as exc:
            status = exc.status_code
            if status in FATAL_STATUS:
                raise EngineError(self._fatal_message(status, exc)) from None
            if status not in TRANSIENT_STATUS and status < 500:
                raise RowError(status, _message(exc)) from None
            problem = f"HTTP {status}: {_message(exc)}"
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        raise EngineError(
            f"{self.base_url} kept failing after {self.engine_args['max_retries']} retries "
            f"({problem}); check the server, then rerun the same command to resume where it "
            "stopped"
        )

    def _fatal_message(self, status: int, exc: Exception) -> str:
        fixes = {
            401: f"set a valid key in ${self.engine_args['api_key_env']} "
            "(or name another variable with --engine-arg api_key_env=NAME)",
            403: "the key may not use this model or endpoint",
            404: f"check the model name {self.options.model!r} (the server's model list is at "
            f"{self.base_url}/models) and the base URL",
        }
        return (
            f"{self.base_url} refused the request: HTTP {status}: {_message(exc)}; {fixes[status]}"
        )


def _streamed(stream: Any, before: str, follow: Callable[[str], None]) -> tuple[Completion, Any]:
    """The one choice of a streamed response and its usage (the last chunk's, asked for with
    `include_usage`), `follow(before + text so far)` called as its text grows."""
    text, reason, usage = "", None, None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            if choice.delta.content:
                text += choice.delta.content
                follow(before + text)
            reason = choice.finish_reason or reason
    tokens = usage.completion_tokens if usage is not None else 0
    return Completion(text=text, finish_reason=ended_by(reason), tokens=tokens), usage


def _joined(so_far: Completion, more: Completion, usage: Any) -> Completion:
    """A partial completion and its continuation as one; the server's prompt tokens, less
    those it reports cached, as what it read again."""
    read = getattr(usage, "prompt_tokens", 0) or 0
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", 0) or 0
    return Completion(
        text=so_far.text + more.text,
        finish_reason=more.finish_reason,
        tokens=so_far.tokens + more.tokens,
        prefill_tokens=max(0, read - cached),
    )


def _base_url(given: str) -> str:
    """The API root: the engine arg, else $OPENAI_BASE_URL, else OpenAI's."""
    return (given or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1").rstrip("/")


def _completion(choice: Any, usage: int | None, record_logprobs: bool = False) -> Completion:
    text = choice.message.content or ""
    reason = ended_by(choice.finish_reason)
    content = getattr(choice.logprobs, "content", None) if choice.logprobs else None
    tokens = len(content) if content is not None else (usage or 0)
    mean = _logprob_mean(content, text, reason) if record_logprobs and content else None
    return Completion(text=text, finish_reason=reason, tokens=tokens, logprob_mean=mean)


def _logprob_mean(content: list[Any], text: str, reason: str) -> float | None:
    """The mean log-probability of a choice's tokens; a last token that stopped it and is not
    part of its text (an end-of-turn token, as vLLM lists it) left out."""
    last = content[-1].token or ""
    if reason == "stop" and (not last or not text.endswith(last)):
        content = content[:-1]
    values = [float(c.logprob) for c in content]
    return sum(values) / len(values) if values else None


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if body.get("message"):
            return str(body["message"])
    return str(getattr(exc, "message", exc))
