"""`bon serve`: an OpenAI-compatible HTTP server whose every request runs best-of-N.

`/v1/chat/completions` and `/v1/completions` sample N candidates, score them and answer with
the selected one as the only choice; `/v1/models` lists the one served name. The models load
once, before the server listens. Requests that arrive together are batched: the first waits
`batch_wait_ms` for others until their candidates fill the generator's `batch_size`, and the
batch runs as one `BestOfN.answer` call in a single worker thread (so the event loop keeps
accepting requests while the models work).

Per request, extra body fields override the server's options: `best_of` (or `bon_n`) is N,
`scorer` a scorer name or list; `temperature`, `top_p`, `max_tokens`, `seed` and `stop` are
OpenAI's. A request without `seed` takes the next seed of a generator seeded with the server's
`seed` option, so repeated requests sample afresh; the seed used is returned, and sending it
back reproduces the answer. Fields nested under `extra_body` (a client that sent the OpenAI
SDK's argument as it is) count as given at the top level.

OpenAI's other fields are accepted where they cannot change a best-of-N answer: `NO_OPS` lists
each with the values that leave the answer as it is (`n` 1, `stream` false, penalties 0, ...);
any other value is refused, never silently ignored. `usage` counts the generator's prompt and
all N completions plus the reranker's tokens; the body's `bon` field holds the breakdown, the
selected index, the scores, the seed and the batch size. Errors come in OpenAI's shape,
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from bon import api
from bon.errors import BonError, ConfigError, EngineError, RecordError
from bon.online import Answer, BestOfN, Job, finite
from bon.options import fields, non_negative, option, positive, validate

log = logging.getLogger(__name__)

MAX_STOPS = 16


@dataclass(frozen=True)
class ServeOptions:
    """How the server listens and batches."""

    host: str = option(
        "127.0.0.1",
        "Address to bind; the default takes connections from this machine only (0.0.0.0 "
        "exposes the server to the network: it has no authentication).",
        check=lambda v: isinstance(v, str) and bool(v),
        constraint="a host name or address",
    )
    port: int = option(
        8000,
        "Port to listen on.",
        check=lambda v: isinstance(v, int) and 0 <= v <= 65535,
        constraint="an integer in [0, 65535]",
    )
    served_model_name: str = option(
        "bon",
        "Model name that requests must send and /v1/models lists.",
        check=lambda v: isinstance(v, str) and bool(v.strip()),
        constraint="a non-empty name",
    )
    batch_wait_ms: float = option(
        50.0,
        "How long the first request of a batch waits for others to join it, in milliseconds.",
        check=non_negative,
        constraint=">= 0",
    )
    max_request_bytes: int = option(
        1_000_000,
        "Largest request body accepted; a larger one is refused with 413.",
        check=positive,
        constraint="an integer >= 1",
    )

    def __post_init__(self) -> None:
        validate(self)


class ApiError(Exception):
    """A request the server refuses: an HTTP status and OpenAI's error fields."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {
            "error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        }


# --- Request bodies -----------------------------------------------------------------------


def _bad(param: str, constraint: str, value: Any) -> ApiError:
    # Values are cut short: a bad field may hold most of a megabyte.
    return ApiError(400, f"`{param}` must be {constraint}, got {value!r:.200}", param=param)


def _number(body: dict, name: str, check: Callable[[float], bool], constraint: str) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not check(value):
        raise _bad(name, constraint, value)
    return value


def _integer(body: dict, name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _bad(name, f"an integer >= {minimum}", value)
    return value


def _stops(body: dict) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if (
        not isinstance(stops, list)
        or len(stops) > MAX_STOPS
        or not all(isinstance(s, str) and s for s in stops)
    ):
        raise _bad("stop", f"a non-empty string or a list of at most {MAX_STOPS}", value)
    return tuple(stops)


def _scorers(body: dict) -> list[str] | None:
    value = body.get("scorer")
    if value is None:
        return None
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise _bad("scorer", "a scorer name or a non-empty list of names", value)
    return names


def _best_of(body: dict) -> int | None:
    best_of, bon_n = _integer(body, "best_of", 1), _integer(body, "bon_n", 1)
    if best_of is not None and bon_n is not None and best_of != bon_n:
        raise ApiError(
            400, f"`best_of` ({best_of}) and `bon_n` ({bon_n}) differ; send one", param="best_of"
        )
    return best_of if best_of is not None else bon_n


ANY = None
"""A `NO_OPS` entry that takes any value: the field cannot change the answer."""

# OpenAI fields bon does not honour: (the values, besides null, at which the answer is the same
# as without the field, or ANY; why other values are refused).
NO_OPS: dict[str, tuple[tuple[Any, ...] | None, str]] = {
    "n": (
        (1,),
        "the server returns the one selected candidate; set the number of candidates with "
        "`best_of` (or `bon_n`)",
    ),
    "stream": ((False,), "responses are not streamed"),
    "stream_options": (ANY, ""),
    "presence_penalty": ((0,), "penalties are not applied"),
    "frequency_penalty": ((0,), "penalties are not applied"),
    "logit_bias": (({},), "logit biases are not applied"),
    "logprobs": ((False,), "log-probabilities are not returned"),
    "top_logprobs": ((0,), "log-probabilities are not returned"),
    "response_format": (({"type": "text"},), "answers are free text, not held to a format"),
    "tools": (([],), "tools are not called"),
    "functions": (([],), "functions are not called"),
    "tool_choice": (("none", "auto"), "tools are not called"),
    "function_call": (("none", "auto"), "functions are not called"),
    "parallel_tool_calls": (ANY, ""),
    "modalities": ((["text"],), "answers are text only"),
    "store": ((False,), "completions are not stored"),
    "metadata": (ANY, ""),
    "user": (ANY, ""),
    "service_tier": (ANY, ""),
    "prompt_cache_key": (ANY, ""),
    "safety_identifier": (ANY, ""),
    "echo": ((False,), "the prompt is not echoed"),
    "suffix": (("",), "suffixes are not supported"),
}
HONOURED = {
    "model", "max_tokens", "temperature", "top_p", "seed", "stop", "best_of", "bon_n", "scorer",
}  # fmt: skip
CHAT = HONOURED | set(NO_OPS) | {"messages", "max_completion_tokens", "extra_body"}
COMPLETIONS = HONOURED | set(NO_OPS) | {"prompt", "extra_body"}


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)[:200]


def _no_ops(body: dict) -> None:
    """Refuse an OpenAI field set to a value that would change the answer (see `NO_OPS`)."""
    for name, (allowed, why) in NO_OPS.items():
        value = body.get(name)
        if value is None or allowed is ANY or value in allowed:
            continue
        constraint = " or ".join(_json(v) for v in allowed)
        raise ApiError(400, f"`{name}` must be {constraint}, got {_json(value)}: {why}", param=name)


def _merged(body: dict, known: set[str]) -> dict:
    """The body with the fields of `extra_body` at its top level, as the OpenAI SDK sends them."""
    extra = body.get("extra_body")
    if extra is None:
        return body
    if not isinstance(extra, dict):
        raise _bad("extra_body", "an object of request fields", extra)
    allowed = known - {"extra_body"}
    unknown = sorted(set(extra) - allowed)
    if unknown:
        raise ApiError(
            400,
            f"unknown field(s) in `extra_body`: {', '.join(unknown)}; it may hold: "
            f"{', '.join(sorted(allowed))}",
            param="extra_body",
        )
    rest = {k: v for k, v in body.items() if k != "extra_body"}
    clash = sorted(k for k in extra if k in rest and rest[k] != extra[k])
    if clash:
        raise ApiError(
            400,
            f"`{clash[0]}` differs between the body and its `extra_body`; send it once",
            param=clash[0],
        )
    return {**rest, **extra}


def _checked(body: dict, known: set[str], served: str) -> dict:
    """The body (with `extra_body` merged) after the checks shared by both endpoints: the
    fields, the model name, the OpenAI fields bon does not honour."""
    body = _merged(body, known)
    unknown = sorted(set(body) - known)
    if unknown:
        raise ApiError(
            400,
            f"unknown field(s) {', '.join(unknown)}; this server accepts: "
            f"{', '.join(sorted(known))}",
            param=unknown[0],
        )
    model = body.get("model")
    if not isinstance(model, str):
        raise _bad("model", f"the served model name {served!r}", model)
    if model != served:
        raise ApiError(
            404,
            f"the model {model!r} does not exist; this server serves {served!r}",
            param="model",
            code="model_not_found",
        )
    _no_ops(body)
    return body


def _job(
    bon: BestOfN, body: dict, messages: list[dict], max_tokens: str, seeds: random.Random
) -> Job:
    """The job of a checked body: its messages and the fields that override the options; an
    unseeded body takes the next seed of `seeds`."""
    temperature = _number(body, "temperature", lambda v: v >= 0, "a number >= 0")
    top_p = _number(body, "top_p", lambda v: 0 < v <= 1, "a number in (0, 1]")
    n = _best_of(body)
    greedy = temperature == 0 if temperature is not None else bon.generate.temperature == 0
    if greedy and (n if n is not None else bon.generate.n) > 1:
        raise ApiError(
            400,
            f"`temperature` 0 is greedy decoding: all {n or bon.generate.n} candidates would be "
            "the same; send a temperature > 0, or best_of=1",
            param="temperature",
        )
    try:
        return bon.job(
            messages,
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=_integer(body, max_tokens, 1),
            seed=_seed(body, seeds),
            scorers=_scorers(body),
            stop=_stops(body),
        )
    except BonError as exc:
        raise ApiError(400, str(exc)) from None


def _seed(body: dict, seeds: random.Random) -> int:
    seed = _integer(body, "seed", 0)
    return seeds.randrange(2**31) if seed is None else seed


def _text_part(part: Any, where: str) -> str:
    if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
        return part["text"]
    raise ApiError(400, f"`{where}` must be a text part ({{type: text, text}})", param="messages")


def _chat_messages(body: dict) -> list[dict]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "a non-empty list of {role, content} objects", messages)
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _bad(f"messages[{i}]", "an object with role and content", message)
        role, content = message.get("role"), message.get("content")
        role = "system" if role == "developer" else role
        if isinstance(content, list):
            content = "".join(
                _text_part(p, f"messages[{i}].content[{j}]") for j, p in enumerate(content)
            )
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise _bad(
                f"messages[{i}]", "a system, user or assistant turn with text content", message
            )
        out.append({"role": role, "content": content})
    return out


def _prompt(body: dict) -> str:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise _bad("prompt", "a string (one prompt per request)", prompt)
    return prompt


def chat_job(bon: BestOfN, body: dict, options: ServeOptions, seeds: random.Random) -> Job:
    """The job of a `/v1/chat/completions` body; raises `ApiError` for a bad one. An unseeded
    body takes the next seed of `seeds`."""
    body = _checked(body, CHAT, options.served_model_name)
    if body.get("max_tokens") is not None and body.get("max_completion_tokens") is not None:
        raise ApiError(400, "send `max_tokens` or `max_completion_tokens`, not both")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    return _job(bon, body, _chat_messages(body), key, seeds)


def completion_job(bon: BestOfN, body: dict, options: ServeOptions, seeds: random.Random) -> Job:
    """The job of a `/v1/completions` body; the prompt is sent as one user turn (bon's engines
    apply the model's chat template). An unseeded body takes the next seed of `seeds`."""
    body = _checked(body, COMPLETIONS, options.served_model_name)
    messages = [{"role": "user", "content": _prompt(body)}]
    return _job(bon, body, messages, "max_tokens", seeds)


# --- Responses ------------------------------------------------------------------------------


def _extra(answer: Answer, job: Job, batch: int, keep_all: bool) -> dict[str, Any]:
    """The `bon` field of a response: what was selected, from what, and what it cost."""
    scores = [finite((c.get("scores") or {}).get(answer.by)) for c in answer.candidates]
    extra: dict[str, Any] = {
        "n": job.generate.n,
        "by": answer.by,
        "index": answer.index,
        "score": finite(answer.score),
        "scores": scores,
        "seed": job.generate.seed,
        "batch_requests": batch,
        "usage": answer.usage.to_dict(),
    }
    if keep_all:
        extra["candidates"] = [
            {
                "text": c["text"],
                "finish_reason": c["finish_reason"],
                "score": s,
                "scores": {k: finite(v) for k, v in (c.get("scores") or {}).items()},
            }
            for c, s in zip(answer.candidates, scores, strict=True)
        ]
    return extra


def _usage(answer: Answer) -> dict[str, int]:
    usage = answer.usage
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.prompt_tokens + usage.completion_tokens,
    }


def chat_response(answer: Answer, job: Job, name: str, batch: int, keep_all: bool) -> dict:
    """The chat.completion body of an answer."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": name,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.text},
                "finish_reason": answer.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": _usage(answer),
        "bon": _extra(answer, job, batch, keep_all),
    }


def completion_response(answer: Answer, job: Job, name: str, batch: int, keep_all: bool) -> dict:
    """The text_completion body of an answer."""
    return {
        "id": f"cmpl-{uuid.uuid4().hex}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": name,
        "choices": [
            {
                "index": 0,
                "text": answer.text,
                "finish_reason": answer.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": _usage(answer),
        "bon": _extra(answer, job, batch, keep_all),
    }


# --- Batching -------------------------------------------------------------------------------

Waiting = tuple[Job, "asyncio.Future[tuple[Answer, int]]"]


class Batcher:
    """Gathers concurrent jobs and answers each gathered batch in one worker thread.

    The first job of a batch waits up to `wait` seconds for others, until their N add up to
    `budget` candidates; jobs arriving while a batch runs form the next one.
    """

    def __init__(self, bon: BestOfN, budget: int, wait: float) -> None:
        self.bon = bon
        self.budget = budget
        self.wait = wait
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bon-worker")
        self._queue: asyncio.Queue[Waiting] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start gathering (from within the server's event loop)."""
        self._task = asyncio.create_task(self._loop())

    async def submit(self, job: Job) -> tuple[Answer, int]:
        """The job's answer and the number of jobs in its batch; raises the job's error."""
        if self._task is None:
            raise EngineError("the server is not started")
        future: asyncio.Future[tuple[Answer, int]] = asyncio.get_running_loop().create_future()
        await self._queue.put((job, future))
        return await future

    async def stop(self) -> None:
        """Stop taking jobs, then close the models in the worker thread that used them."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            future.cancel()
        await asyncio.get_running_loop().run_in_executor(self.worker, self.bon.close)
        self.worker.shutdown()

    async def _gather(self) -> list[Waiting]:
        batch = [await self._queue.get()]
        cost = batch[0][0].generate.n
        deadline = time.monotonic() + self.wait
        while cost < self.budget:
            left = deadline - time.monotonic()
            try:
                item = (
                    self._queue.get_nowait()
                    if left <= 0
                    else await asyncio.wait_for(self._queue.get(), left)
                )
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
            batch.append(item)
            cost += item[0].generate.n
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            live = [(job, future) for job, future in batch if not future.done()]
            if not live:
                continue
            try:
                answers = await loop.run_in_executor(
                    self.worker, self.bon.answer, [job for job, _ in live]
                )
            except Exception as exc:  # the whole batch failed: every request hears why
                log.exception("a batch of %d requests failed", len(live))
                answers = [exc] * len(live)
            for (_, future), answer in zip(live, answers, strict=True):
                if future.done():
                    continue
                if isinstance(answer, Answer):
                    future.set_result((answer, len(live)))
                else:
                    future.set_exception(answer)


def _failure(exc: BaseException) -> ApiError:
    """The HTTP error of a job that failed."""
    if isinstance(exc, RecordError):
        return ApiError(400, str(exc), code="invalid_prompt")
    if isinstance(exc, BonError):
        return ApiError(500, str(exc))
    return ApiError(500, f"best-of-N failed: {type(exc).__name__}: {exc}")


# --- The application ------------------------------------------------------------------------


async def _read_json(request: Any, limit: int) -> dict:
    """The request's JSON object; 413 past `limit` bytes, 400 for anything but an object."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body has {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def create_app(bon: BestOfN, options: ServeOptions) -> Any:
    """The FastAPI application serving `bon` (whose models should already be loaded)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    batcher = Batcher(bon, budget=bon.generate.batch_size, wait=options.batch_wait_ms / 1000)
    started = int(time.time())
    seeds = random.Random(bon.generate.seed)  # unseeded requests: a fresh seed each
    name = options.served_model_name
    keep_all = bon.select.keep_all

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="bon", lifespan=lifespan)

    # Plain Starlette endpoints: they read the raw body themselves (size limit, error shape).
    async def api_error(request: Any, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    async def http_error(request: Any, exc: HTTPException) -> JSONResponse:
        error = ApiError(exc.status_code, str(exc.detail), code=str(exc.status_code))
        return JSONResponse(error.body(), status_code=exc.status_code)

    async def run(request: Any, parse: Callable, respond: Callable) -> JSONResponse:
        job = parse(bon, await _read_json(request, options.max_request_bytes), options, seeds)
        try:
            answer, batch = await batcher.submit(job)
        except Exception as exc:
            raise _failure(exc) from None
        return JSONResponse(respond(answer, job, name, batch, keep_all))

    async def chat(request: Any) -> JSONResponse:
        return await run(request, chat_job, chat_response)

    async def completions(request: Any) -> JSONResponse:
        return await run(request, completion_job, completion_response)

    async def models(request: Any) -> JSONResponse:
        entry = {"id": name, "object": "model", "created": started, "owned_by": "bon"}
        return JSONResponse({"object": "list", "data": [entry]})

    async def health(request: Any) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    # Starlette types a handler as taking any Exception; it passes the class it was added for.
    app.add_exception_handler(ApiError, api_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, http_error)  # type: ignore[arg-type]
    app.add_route("/v1/chat/completions", chat, methods=["POST"])
    app.add_route("/v1/completions", completions, methods=["POST"])
    app.add_route("/v1/models", models, methods=["GET"])
    app.add_route("/health", health, methods=["GET"])
    return app


SERVE_EXTRA = ("fastapi", "starlette", "uvicorn")


def _require_extra() -> None:
    """Raise `ConfigError` naming the serve extra when one of its modules is missing (before
    any model loads); another missing module keeps its traceback."""
    for module in SERVE_EXTRA:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            raise ConfigError(
                f"bon serve needs the serve extra ({module} is not installed): "
                'pip install "bon[serve]"'
            ) from None


def _build(options: dict[str, Any]) -> tuple[BestOfN, ServeOptions]:
    """Split keyword options into the stages' objects and the server's."""
    names = {f.name for f in fields(ServeOptions)}
    server = ServeOptions(**{k: v for k, v in options.items() if k in names})
    generate, score, select = api.split_options(
        "run", {k: v for k, v in options.items() if k not in names}, files=False
    )
    return BestOfN(generate, score, select), server


def _config(app: Any, server: ServeOptions, log_level: str) -> Any:
    import uvicorn

    return uvicorn.Config(
        app, host=server.host, port=server.port, log_level=log_level, lifespan="on"
    )


def serve(**options: Any) -> None:
    """Load the models, then serve until interrupted. Takes `bon run`'s options (sampling,
    scorers, selection) and `ServeOptions`' (host, port, served_model_name, batch_wait_ms,
    max_request_bytes)."""
    _require_extra()
    import uvicorn

    bon, server = _build(options)
    bon.load()
    log.info("serving %r on http://%s:%d/v1", server.served_model_name, server.host, server.port)
    uvicorn.Server(_config(create_app(bon, server), server, "info")).run()


@dataclass
class Running:
    """A server started by `start`, running in a background thread; `stop()` ends it."""

    url: str
    server: Any
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(**options: Any) -> Running:
    """Load the models and serve them from a background thread of this process; returns once
    the server listens. Same options as `serve`; `url` is the base URL (…/v1)."""
    _require_extra()
    import uvicorn

    bon, server = _build(options)
    bon.load()
    runner = uvicorn.Server(_config(create_app(bon, server), server, "warning"))
    thread = threading.Thread(target=runner.run, name="bon-serve", daemon=True)
    thread.start()
    while not runner.started:
        if not thread.is_alive():
            bon.close()
            raise ConfigError(
                f"the server could not listen on {server.host}:{server.port} (in use?); "
                "choose another port"
            )
        time.sleep(0.02)
    port = runner.servers[0].sockets[0].getsockname()[1]
    return Running(f"http://{server.host}:{port}/v1", runner, thread)


def _mirror(fn: Callable) -> Callable:
    """Give `serve`/`start` the keyword signature `bon serve` takes (as `bon.api` does)."""
    server = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default)
        for f in fields(ServeOptions)
    ]
    fn.__signature__ = inspect.Signature(  # type: ignore[attr-defined]  # inspect reads it
        [*api.keywords("run", files=False), *server],
        return_annotation=inspect.signature(fn).return_annotation,
    )
    return fn


serve = _mirror(serve)
start = _mirror(start)
