"""The request bodies `bon serve` takes: pydantic models derived from the option declarations.

A request body may set some of bon's options for itself. Which ones, and under which names, is
`bon.online.OVERRIDES` (`best_of`/`bon_n` -> `n`, `max_tokens`/`max_completion_tokens` ->
`max_new_tokens`, `scorer` -> `scorers`, ...); each becomes a field of the request model whose
type, help and default come from the option's declaration (the default is the server's value
of the option), and whose validator is the declaration's own check (`bon.options.check_value`),
so a bad value gets the message `bon run` gives for it: "`temperature` must be >= 0, got -1".
The job is then built by `BestOfN.job`, which rebuilds the options objects with
`dataclasses.replace`: checks across options (greedy decoding with N > 1) are the
declarations' too.

OpenAI's fields that cannot change a best-of-N answer are `NO_OPS`: each is a field that takes
the values that leave the answer as it is, and refuses any other. Unknown fields are refused
(`extra="forbid"`), naming the accepted ones. Every refusal is an `ApiError` in OpenAI's shape,
whose `param` names the request field.

pydantic comes with the serve extra (FastAPI); it is imported when a model is built, so that
`bon` itself imports without it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bon.errors import ConfigError, RecordError
from bon.online import OVERRIDES, BestOfN, Job, JobOptions, Override
from bon.options import check_value

if TYPE_CHECKING:
    from pydantic import BaseModel

MESSAGE_LIMIT = 2000
"""Longest error message sent back (a bad field may hold most of a megabyte)."""


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
        message = self.message
        if len(message) > MESSAGE_LIMIT:
            message = message[:MESSAGE_LIMIT] + " ..."
        return {"error": {"message": message, "type": kind, "param": self.param, "code": self.code}}


ANY = None
"""A `NO_OPS` entry that takes any value: the field cannot change the answer."""

# OpenAI fields bon does not honour: (the values, besides null, at which the answer is the same
# as without the field, or ANY; why other values are refused).
NO_OPS: dict[str, tuple[tuple[Any, ...] | None, str]] = {
    "n": (
        (1,),
        "the server returns (or streams) the one selected candidate; set the number of "
        "candidates with `best_of` (or `bon_n`)",
    ),
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

DRAWN = {"seed"}
"""Overrides with no default: a request without one draws it (a fresh seed per request)."""
CHAT_ONLY = {"messages", "max_completion_tokens"}
COMPLETIONS_ONLY = {"prompt"}
ENDPOINTS = ("chat", "completions")
STREAM_OPTIONS = {
    "include_usage": "a last chunk carries `usage` (and `choices: []`)",
    "include_obfuscation": "accepted; nothing is obfuscated",
}


@dataclass(frozen=True)
class RequestField:
    """One field of a request body: its type, default and help, and `check`, which returns the
    value as the model holds it or raises `ConfigError` with the message to send back.
    `required`: a missing or null value is checked too (and refused)."""

    name: str
    hint: Any
    default: Any
    help: str
    check: Callable[[Any], Any]
    required: bool = False


def _short(value: Any) -> str:
    return f"{value!r:.200}"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)[:200]


def _override_check(override: Override) -> Callable[[Any], Any]:
    field = override.field

    def check(value: Any) -> Any:
        value = override.value(value)
        check_value(field, value)
        return value

    return check


def _no_op_check(name: str, allowed: tuple[Any, ...] | None, why: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if allowed is ANY or value in allowed:
            return value
        constraint = " or ".join(_json(v) for v in allowed)
        raise ConfigError(f"`{name}` must be {constraint}, got {_json(value)}: {why}")

    return check


def _model_check(served: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not isinstance(value, str):
            raise ConfigError(
                f"`model` must be the served model name {served!r}, got {_short(value)}"
            )
        return value

    return check


def _bool(name: str) -> Callable[[Any], Any]:
    def check(value: Any) -> Any:
        if not isinstance(value, bool):
            raise ConfigError(f"`{name}` must be true or false, got {_short(value)}")
        return value

    return check


def _stream_options(value: Any) -> Any:
    if not isinstance(value, dict) or set(value) - set(STREAM_OPTIONS):
        raise ConfigError(
            f"`stream_options` must be an object with {' or '.join(STREAM_OPTIONS)}, got "
            f"{_short(value)}"
        )
    for key, flag in value.items():
        if flag is not None and not isinstance(flag, bool):
            raise ConfigError(f"`stream_options.{key}` must be true or false, got {_short(flag)}")
    return value


def _extra_body(value: Any) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"`extra_body` must be an object of request fields, got {_short(value)}")
    return value


def _text_part(part: Any, where: str) -> str:
    if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
        return part["text"]
    raise ConfigError(f"`{where}` must be a text part ({{type: text, text}})")


def _messages(messages: Any) -> list[dict[str, str]]:
    """Chat turns as bon takes them: `developer` is `system`, text parts are joined."""
    if not isinstance(messages, list) or not messages:
        raise ConfigError(
            f"`messages` must be a non-empty list of {{role, content}} objects, got "
            f"{_short(messages)}"
        )
    out = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ConfigError(
                f"`messages[{i}]` must be an object with role and content, got {_short(message)}"
            )
        role, content = message.get("role"), message.get("content")
        role = "system" if role == "developer" else role
        if isinstance(content, list):
            content = "".join(
                _text_part(p, f"messages[{i}].content[{j}]") for j, p in enumerate(content)
            )
        if role not in ("system", "user", "assistant") or not isinstance(content, str):
            raise ConfigError(
                f"`messages[{i}]` must be a system, user or assistant turn with text content, "
                f"got {_short(message)}"
            )
        out.append({"role": role, "content": content})
    return out


def _prompt(prompt: Any) -> str:
    if not isinstance(prompt, str):
        raise ConfigError(
            f"`prompt` must be a string (one prompt per request), got {prompt!r:.200}"
        )
    return prompt


def request_fields(endpoint: str, bon: BestOfN, served: str) -> list[RequestField]:
    """The fields of an endpoint's request body ("chat" or "completions"), for a server of
    `bon` serving the model name `served`: bon's own, each `OVERRIDES` name (default: `bon`'s
    value of the option), then `NO_OPS`."""
    if endpoint not in ENDPOINTS:
        raise ValueError(f"endpoint must be one of {ENDPOINTS}, got {endpoint!r}")
    options = (bon.generate, bon.score, JobOptions())
    out = [
        RequestField(
            "model", str, None, f"The served model name, {served!r}.", _model_check(served), True
        ),
        RequestField(
            "messages",
            list[dict[str, str]],
            None,
            "The conversation: system, user and assistant turns, the last a user's.",
            _messages,
            True,
        ),
        RequestField("prompt", str, None, "One prompt, sent as one user turn.", _prompt, True),
        RequestField(
            "stream",
            bool,
            False,
            "Send the answer as server-sent events (chunks): after selection, or with pruning "
            "as it decodes once one candidate is left.",
            _bool("stream"),
        ),
        RequestField(
            "stream_options",
            dict[str, bool],
            None,
            "With `stream`: " + "; ".join(f"{k}: {v}" for k, v in STREAM_OPTIONS.items()) + ".",
            _stream_options,
        ),
        RequestField(
            "extra_body",
            dict[str, Any],
            None,
            "Request fields, counted as given at the top level (as the OpenAI SDK's argument).",
            _extra_body,
        ),
    ]
    for override in OVERRIDES:
        field = override.field
        owner = next(o for o in options if isinstance(o, override.owner))
        drawn = override.name in DRAWN
        default = None if drawn else getattr(owner, override.name)
        help = field.metadata["help"]
        if drawn:
            help += " A request without it draws a fresh one (returned in `bon.seed`)."
        for name in override.request:
            out.append(
                RequestField(
                    name,
                    override.hint | None,
                    default,
                    f"bon's `{override.name}`: {help}",
                    _override_check(override),
                )
            )
    for name, (allowed, why) in NO_OPS.items():
        help = "Accepted at any value; it cannot change the answer."
        if allowed is not ANY:
            help = f"Accepted at {' or '.join(_json(v) for v in allowed)} only: {why}."
        out.append(RequestField(name, Any, None, help, _no_op_check(name, allowed, why)))
    skip = COMPLETIONS_ONLY if endpoint == "chat" else CHAT_ONLY
    return [f for f in out if f.name not in skip]


def _validator(field: RequestField) -> Callable[[Any], Any]:
    """The field's check as a pydantic "before" validator: a refusal becomes a custom error
    whose message is the check's."""
    from pydantic_core import PydanticCustomError

    def validate(value: Any) -> Any:
        if value is None and not field.required:
            return None
        try:
            return field.check(value)
        except ConfigError as exc:
            raise PydanticCustomError("bon", "{message}", {"message": str(exc)}) from None

    return validate


def request_model(endpoint: str, bon: BestOfN, served: str) -> type[BaseModel]:
    """The pydantic model of an endpoint's request body (see `request_fields`); unknown fields
    are refused."""
    from typing import Annotated

    from pydantic import BeforeValidator, ConfigDict, Field, create_model

    definitions: dict[str, Any] = {}
    for field in request_fields(endpoint, bon, served):
        hint = Annotated[field.hint, BeforeValidator(_validator(field))]  # type: ignore[name-defined]  # a type built at run time
        spec = Field(field.default, description=field.help, validate_default=field.required)
        definitions[field.name] = (hint, spec)
    name = "ChatCompletionRequest" if endpoint == "chat" else "CompletionRequest"
    model: type[BaseModel] = create_model(  # type: ignore[call-overload]  # fields built above
        name,
        __config__=ConfigDict(extra="forbid", arbitrary_types_allowed=True),
        __doc__=f"A /v1/{'chat/' if endpoint == 'chat' else ''}completions request to bon serve.",
        **definitions,
    )
    return model


@dataclass(frozen=True)
class Parsed:
    """A checked request: its job, and how to answer it."""

    job: Job
    stream: bool = False
    include_usage: bool = False


def _merged(body: dict, known: set[str]) -> dict:
    """The body with the fields of `extra_body` at its top level, as the OpenAI SDK sends them."""
    extra = body.get("extra_body")
    if extra is None:
        return body
    if not isinstance(extra, dict):
        raise ApiError(400, str(_refusal(_extra_body, extra)), param="extra_body")
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


def _refusal(check: Callable[[Any], Any], value: Any) -> ConfigError:
    try:
        check(value)
    except ConfigError as exc:
        return exc
    raise AssertionError("the check accepted the value")  # pragma: no cover


def _validated(model: type[BaseModel], body: dict) -> BaseModel:
    """`body` as `model`; a refusal as an `ApiError` naming the field."""
    from pydantic import ValidationError

    try:
        return model.model_validate(body)
    except ValidationError as exc:
        errors = exc.errors()
    unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
    if unknown:
        raise ApiError(
            400,
            f"unknown field(s) {', '.join(unknown)}; this server accepts: "
            f"{', '.join(sorted(model.model_fields))}",
            param=unknown[0],
        )
    first = errors[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    message = first["msg"] if first["type"] == "bon" else f"`{param}`: {first['msg']}"
    raise ApiError(400, message, param=param)


def _param(message: str, sent: dict[str, str]) -> str | None:
    """The request field behind an option's error: the first option the message names in
    backquotes that the request set (`sent` maps option names to request names)."""
    for part in message.split("`")[1::2]:
        if part in sent:
            return sent[part]
    return None


def parse(
    model: type[BaseModel], body: dict, bon: BestOfN, served: str, seeds: random.Random
) -> Parsed:
    """The job of a request `body` (a JSON object) checked by `model` (see `request_model`); an
    unseeded body takes the next seed of `seeds`. Raises `ApiError`: 400 for a bad body, 404
    for another model name."""
    request = _validated(model, _merged(body, set(model.model_fields)))
    data = {name: getattr(request, name) for name in model.model_fields}
    given = {name: data[name] for name in request.model_fields_set if data[name] is not None}
    if data["model"] != served:
        raise ApiError(
            404,
            f"the model {data['model']!r} does not exist; this server serves {served!r}",
            param="model",
            code="model_not_found",
        )
    overrides: dict[str, Any] = {}
    sent: dict[str, str] = {}
    for override in OVERRIDES:
        names = [n for n in override.request if n in given]
        if len({json.dumps(given[n], sort_keys=True) for n in names}) > 1:
            shown = " and ".join(f"`{n}` ({_json(given[n])})" for n in names)
            raise ApiError(400, f"{shown} differ; send one", param=names[0])
        if names:
            overrides[override.name] = given[names[0]]
            sent[override.name] = names[0]
    if "seed" not in overrides:
        overrides["seed"] = seeds.randrange(2**31)
    chat = "messages" in data
    messages = data["messages"] if chat else [{"role": "user", "content": data["prompt"]}]
    try:
        job = bon.job(messages, **overrides)
    except RecordError as exc:
        raise ApiError(400, str(exc), param="messages" if chat else "prompt") from None
    except ConfigError as exc:
        raise ApiError(400, str(exc), param=_param(str(exc), sent)) from None
    include_usage = bool((data["stream_options"] or {}).get("include_usage"))
    return Parsed(job, data["stream"], include_usage)
