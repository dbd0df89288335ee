"""`bon serve`: an OpenAI-compatible HTTP server whose every request runs best-of-N.

`/v1/chat/completions` and `/v1/completions` sample N candidates, score them and answer with
the selected one as the only choice; `/v1/models` lists the one served name. The models load
once, before the server listens. Requests that arrive together are batched: the first waits
`batch_wait_ms` for others until their candidates fill the generator's `batch_size`, and the
batch runs as one `BestOfN.answer` call in a single worker thread (so the event loop keeps
accepting requests while the models work).

Request bodies are checked by pydantic models derived from the option declarations (see
`bon.entrypoints.request`): the options a request may override (`bon.online.OVERRIDES`:
`best_of`/`bon_n`, `temperature`, `top_p`, `max_tokens`, `seed`, `scorer`, `stop`) get the
message `bon run` gives for the same bad value, OpenAI's fields that cannot change the answer
are accepted at their no-op values (`NO_OPS`), and unknown fields are refused. A request
without `seed` takes the next seed of a generator seeded with the server's `seed` option, so
repeated requests sample afresh; the seed used is returned, and sending it back reproduces the
answer. `usage` counts the generator's prompt and all N completions, the reranker's tokens
and, with pruning (`--prune-at`, `--keep`, `--prune-by`), what pruning spent (`cost.prune`);
the body's `bon` field holds the breakdown, the selected index, the scores, the seed and the
batch size (with `keep_all`, each candidate and where it was pruned). A request whose
`max_tokens` is not above the last `prune_at` checkpoint is refused. Errors come in OpenAI's
shape, `{"error": {"message", "type", "param", "code"}}`.

`stream: true` sends the answer as server-sent events in OpenAI's chunk format. Best-of-N
cannot know the answer before selection, so it is sent once selection is done; but with
pruning (`--prune-at`), once a single candidate of a request is left decoding its text is the
answer, and it is sent as it grows (`BestOfN.answer`'s `follow`, called in the worker thread
and handed to the event loop through a queue per request), then what selection adds. Should
selection pick another candidate (none got a finite score), the stream ends with an error
event rather than a wrong answer. A failure before the first chunk is a plain error response
with its status; one while streaming is an error event that ends the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import json
import logging
import random
import re
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypedDict

from bon import api
from bon.entrypoints.request import ApiError, Parsed, parse, request_model
from bon.errors import BonError, ConfigError, EngineError, RecordError
from bon.generator import GenerateOptions
from bon.keywords import RunRecordsArgs
from bon.online import Answer, BestOfN, Job, finite
from bon.options import fields, non_negative, option, positive, refuse_unknown, validate
from bon.prune import PRUNED_AT
from bon.scorers import ScoreOptions
from bon.select import SelectOptions

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # typing_extensions comes with torch; setup.cfg names it for Python 3.10
    from typing_extensions import Unpack

log = logging.getLogger(__name__)


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


class ServeKeywords(TypedDict, total=False):
    """`ServeOptions` as flat keywords (a test checks them against the declarations)."""

    host: str
    port: int
    served_model_name: str
    batch_wait_ms: float
    max_request_bytes: int


class ServeArgs(RunRecordsArgs, ServeKeywords, total=False):
    """The flat keywords of `serve` and `start`: `bon run`'s (without its file options) and the
    server's."""


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
                "pruned_at": c.get(PRUNED_AT),
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


def chat_response(answer: Answer, name: str, extra: dict[str, Any]) -> dict:
    """The chat.completion body of an answer; `extra` is its `bon` field."""
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
        "bon": extra,
    }


def completion_response(answer: Answer, name: str, extra: dict[str, Any]) -> dict:
    """The text_completion body of an answer; `extra` is its `bon` field."""
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
        "bon": extra,
    }


# --- Streaming ------------------------------------------------------------------------------

PIECE = re.compile(r"\s*\S+|\s+")
"""A streamed piece of the answer: a word with the white space before it."""


def pieces(text: str) -> list[str]:
    """`text` cut into the pieces it is streamed in (joined, they are `text`)."""
    return PIECE.findall(text)


@dataclass(frozen=True)
class Chunks:
    """The chunks of one streamed answer, in OpenAI's format for the endpoint (`chat`:
    `chat.completion.chunk` objects whose `delta` holds the role first, then the text; else
    `text_completion` objects); the last choice chunk has the finish reason."""

    chat: bool
    id: str
    created: int
    name: str
    include_usage: bool

    def chunk(self, choices: list[dict], **more: Any) -> dict:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk" if self.chat else "text_completion",
            "created": self.created,
            "model": self.name,
            "choices": choices,
        }
        if self.include_usage:
            body["usage"] = None
        return {**body, **more}

    def choice(self, text: str | None, finish_reason: str | None, role: bool = False) -> dict:
        if not self.chat:
            return {
                "index": 0,
                "text": text or "",
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        return {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}

    def opening(self) -> Iterator[dict]:
        """The chunk before the text (chat: the role), if any."""
        if self.chat:
            yield self.chunk([self.choice("", None, role=True)])

    def text(self, piece: str) -> dict:
        """A chunk of the answer's text."""
        return self.chunk([self.choice(piece, None)])

    def closing(self, answer: Answer, extra: dict[str, Any]) -> Iterator[dict]:
        """The chunks after the text: the finish reason, then `usage` when asked for; `extra`
        (the `bon` field) rides on the last."""
        last = self.choice(None if self.chat else "", answer.finish_reason)
        if not self.include_usage:
            yield self.chunk([last], bon=extra)
            return
        yield self.chunk([last])
        yield self.chunk([], usage=_usage(answer), bon=extra)


def _event(data: dict | str) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {text}\n\n".encode()


Selected = tuple[Answer, dict[str, Any]]
"""An answer and its `bon` field."""


class Growing:
    """The text of a streamed answer as the worker thread passes it on (`put`, thread-safe),
    then None once the answer is there (`end`, a done callback of the task answering)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.texts: asyncio.Queue[str | None] = asyncio.Queue()

    def put(self, text: str) -> None:
        self.loop.call_soon_threadsafe(self.texts.put_nowait, text)

    def end(self, answered: object) -> None:
        self.texts.put_nowait(None)

    async def get(self) -> str | None:
        return await self.texts.get()


async def _events(
    chunks: Chunks, first: str | None, growing: Growing, answered: asyncio.Future[Selected]
) -> AsyncIterator[bytes]:
    """The server-sent events of a streamed answer, `data: [DONE]` last: its text as it grows,
    from `first` (None: no text came before the answer), then what the selected answer adds.
    A failure while streaming (the status, 200, is sent) becomes an error event that ends the
    stream, and so does a selected answer that does not start with the text sent."""
    sent = ""
    try:
        for chunk in chunks.opening():
            yield _event(chunk)
        text = first
        while text is not None:
            if text.startswith(sent) and len(text) > len(sent):  # else wait: it may settle
                yield _event(chunks.text(text[len(sent) :]))
                sent = text
            text = await growing.get()
        answer, extra = answered.result()
        if not answer.text.startswith(sent):
            log.warning(
                "the selected answer (candidate %s) does not start with the %d characters "
                "streamed; ending the stream with an error",
                answer.index,
                len(sent),
            )
            yield _event(_mismatch().body())
            return
        for piece in pieces(answer.text[len(sent) :]):
            yield _event(chunks.text(piece))
        for chunk in chunks.closing(answer, extra):
            yield _event(chunk)
    except Exception as exc:
        log.exception("streaming an answer failed")
        yield _event(_failure(exc).body())
        return
    finally:
        answered.cancel()  # a client gone: dropped if its batch has not started
    yield _event("[DONE]")


def _mismatch() -> ApiError:
    return ApiError(
        500,
        "selection picked a candidate other than the one streamed (no candidate got a finite "
        "score); send the request again without `stream` to get the selected answer",
    )


# --- Batching -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Waiting:
    """A job waiting for its batch: where its answer goes and who follows its text."""

    job: Job
    future: asyncio.Future[tuple[Answer, int]]
    follow: Callable[[str], None] | None


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

    async def submit(
        self, job: Job, follow: Callable[[str], None] | None = None
    ) -> tuple[Answer, int]:
        """The job's answer and the number of jobs in its batch; raises the job's error.
        `follow(text)` is called from the worker thread as the answer grows, when it is known
        before selection (`BestOfN.answer`)."""
        if self._task is None:
            raise EngineError("the server is not started")
        future: asyncio.Future[tuple[Answer, int]] = asyncio.get_running_loop().create_future()
        await self._queue.put(Waiting(job, future, follow))
        return await future

    async def stop(self) -> None:
        """Stop taking jobs, then close the models in the worker thread that used them."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while not self._queue.empty():
            self._queue.get_nowait().future.cancel()
        await asyncio.get_running_loop().run_in_executor(self.worker, self.bon.close)
        self.worker.shutdown()

    async def _gather(self) -> list[Waiting]:
        batch = [await self._queue.get()]
        cost = batch[0].job.generate.n
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
            cost += item.job.generate.n
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            live = [waiting for waiting in batch if not waiting.future.done()]
            if not live:
                continue
            jobs = [waiting.job for waiting in live]
            try:
                answers = await loop.run_in_executor(
                    self.worker, self.bon.answer, jobs, _follow(live)
                )
            except Exception as exc:  # the whole batch failed: every request hears why
                log.exception("a batch of %d requests failed", len(live))
                answers = [exc] * len(live)
            for waiting, answer in zip(live, answers, strict=True):
                if waiting.future.done():
                    continue
                if isinstance(answer, Answer):
                    waiting.future.set_result((answer, len(live)))
                else:
                    waiting.future.set_exception(answer)


def _follow(batch: list[Waiting]) -> Callable[[int, str], None] | None:
    """`BestOfN.answer`'s `follow` for a batch: job k's text to its own follower."""
    follows = [waiting.follow for waiting in batch]
    if not any(follows):
        return None

    def follow(k: int, text: str) -> None:
        mine = follows[k]
        if mine is not None:
            mine(text)

    return follow


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
    requests = {
        endpoint: request_model(endpoint, bon, name) for endpoint in ("chat", "completions")
    }

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

    async def selected(job: Job, follow: Callable[[str], None] | None = None) -> Selected:
        answer, batch = await batcher.submit(job, follow)
        return answer, _extra(answer, job, batch, keep_all)

    async def run(request: Any, endpoint: str) -> Any:
        body = await _read_json(request, options.max_request_bytes)
        parsed = parse(requests[endpoint], body, bon, name, seeds)
        if parsed.stream:
            return await _stream(parsed, selected, endpoint == "chat", name)
        try:
            answer, extra = await selected(parsed.job)
        except Exception as exc:
            raise _failure(exc) from None
        respond = chat_response if endpoint == "chat" else completion_response
        return JSONResponse(respond(answer, name, extra))

    async def chat(request: Any) -> Any:
        return await run(request, "chat")

    async def completions(request: Any) -> Any:
        return await run(request, "completions")

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


async def _stream(
    parsed: Parsed,
    selected: Callable[[Job, Callable[[str], None]], Awaitable[Selected]],
    chat: bool,
    name: str,
) -> Any:
    """The streamed response of a request, once its first text or its answer is there (a
    failure before that raises its `ApiError`, sent with its status)."""
    from starlette.responses import StreamingResponse

    growing = Growing()
    answered = asyncio.ensure_future(selected(parsed.job, growing.put))
    answered.add_done_callback(growing.end)
    try:
        first = await growing.get()
    except BaseException:
        answered.cancel()
        raise
    failed = answered.exception() if first is None else None
    if failed is not None:
        raise _failure(failed) from None
    prefix = "chatcmpl" if chat else "cmpl"
    identifier = f"{prefix}-{uuid.uuid4().hex}"
    chunks = Chunks(chat, identifier, int(time.time()), name, parsed.include_usage)
    return StreamingResponse(
        _events(chunks, first, growing, answered),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache"},
    )


SERVE_EXTRA = ("fastapi", "starlette", "uvicorn", "pydantic")


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


def _build(
    generate: GenerateOptions | None,
    score: ScoreOptions | None,
    select: SelectOptions | None,
    server: ServeOptions | None,
    options: dict[str, Any],
) -> tuple[BestOfN, ServeOptions]:
    """The stages' options and the server's: the objects given, their fields set by the flat
    keywords `options` (as `bon.api`'s functions take them); an unknown keyword is an error."""
    server_names = {f.name for f in fields(ServeOptions)}
    groups = api.option_groups("run", files=False)
    refuse_unknown(options, [*server_names, *(kw for g in groups for kw in g.names())])
    if server is not None and not isinstance(server, ServeOptions):
        raise ConfigError(
            f"`server` must be a ServeOptions, got {server!r}: build it with "
            "bon.entrypoints.serve.ServeOptions(...) or give its options as keywords"
        )
    mine = {k: v for k, v in options.items() if k in server_names}
    server = ServeOptions(**mine) if server is None else dataclasses.replace(server, **mine)
    given = {"generate": generate, "score": score, "select": select}
    stages = {k: v for k, v in options.items() if k not in server_names}
    generate, score, select = api.split_options("run", stages, files=False, given=given)
    return BestOfN(generate, score, select), server


def _config(app: Any, server: ServeOptions, log_level: str) -> Any:
    import uvicorn

    return uvicorn.Config(
        app, host=server.host, port=server.port, log_level=log_level, lifespan="on"
    )


def serve(
    *,
    generate: GenerateOptions | None = None,
    score: ScoreOptions | None = None,
    select: SelectOptions | None = None,
    server: ServeOptions | None = None,
    **options: Unpack[ServeArgs],
) -> None:
    """Load the models, then serve until interrupted.

    Takes the stages' options objects (`generate`, `score`, `select`, as `bon.run` does) and the
    server's (`server=ServeOptions(host, port, served_model_name, batch_wait_ms,
    max_request_bytes)`), or any of their fields as flat keywords (`ServeArgs`: `bon run`'s
    names, `reranker_` before the reranker's), which override the fields of a given object;
    `bon serve`'s flags are these keywords.
    """
    _require_extra()
    import uvicorn

    bon, settings = _build(generate, score, select, server, dict(options))
    bon.load()
    log.info(
        "serving %r on http://%s:%d/v1", settings.served_model_name, settings.host, settings.port
    )
    uvicorn.Server(_config(create_app(bon, settings), settings, "info")).run()


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


def start(
    *,
    generate: GenerateOptions | None = None,
    score: ScoreOptions | None = None,
    select: SelectOptions | None = None,
    server: ServeOptions | None = None,
    **options: Unpack[ServeArgs],
) -> Running:
    """Load the models and serve them from a background thread of this process; returns once
    the server listens. Same options as `serve`; `url` is the base URL (…/v1)."""
    _require_extra()
    import uvicorn

    bon, settings = _build(generate, score, select, server, dict(options))
    bon.load()
    runner = uvicorn.Server(_config(create_app(bon, settings), settings, "warning"))
    thread = threading.Thread(target=runner.run, name="bon-serve", daemon=True)
    thread.start()
    while not runner.started:
        if not thread.is_alive():
            bon.close()
            raise ConfigError(
                f"the server could not listen on {settings.host}:{settings.port} (in use?); "
                "choose another port"
            )
        time.sleep(0.02)
    port = runner.servers[0].sockets[0].getsockname()[1]
    return Running(f"http://{settings.host}:{port}/v1", runner, thread)
