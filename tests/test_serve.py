"""`bon serve`: a real uvicorn server on 127.0.0.1 (a free port) with the tiny random Llama as
generator and reranker, driven by the real `openai` client and by raw HTTP for bad requests."""

from __future__ import annotations

import dataclasses
import http.client
import inspect
import json
import re
import typing
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest
from click.testing import CliRunner

from bon import api
from bon.entrypoints.cli import main
from bon.entrypoints.cli import serve as serve_command
from bon.entrypoints.request import NO_OPS as NO_OPS_DECLARED
from bon.entrypoints.request import request_model
from bon.entrypoints.serve import ServeArgs, ServeKeywords, ServeOptions, _build, serve, start
from bon.errors import ConfigError
from bon.generator import GenerateOptions
from bon.online import OVERRIDES, BestOfN, JobOptions, Overrides
from bon.options import fields as options_fields
from bon.options import types_of
from bon.scorers import ScoreOptions

NAME = "bon-test"
LIMIT = 20_000


@pytest.fixture(scope="module")
def server(tiny_model: str, tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("serve-cache") / "scores.sqlite"
    running = start(
        model=tiny_model,
        reranker_model=tiny_model,
        device="cpu",
        n=2,
        max_new_tokens=6,
        port=0,
        served_model_name=NAME,
        batch_wait_ms=400,
        max_request_bytes=LIMIT,
        keep_all=True,
        cache_path=str(cache),
    )
    yield running
    running.stop()


def _chat(client: openai.OpenAI, content: str = "Name a colour.", **extra):
    return client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": content}], **extra
    )


def test_binds_to_localhost_by_default(server) -> None:
    assert ServeOptions().host == "127.0.0.1"
    assert server.url.startswith("http://127.0.0.1:")


def test_chat_completion_returns_the_selected_candidate(client: openai.OpenAI) -> None:
    reply = _chat(client)
    assert len(reply.choices) == 1
    extra = reply.model_extra["bon"]
    assert extra["n"] == 2 and extra["by"] == "flip-tokens"
    scores = extra["scores"]
    assert len(scores) == 2 and extra["index"] == max(range(2), key=lambda i: (scores[i], -i))
    chosen = extra["candidates"][extra["index"]]
    assert reply.choices[0].message.content == chosen["text"]
    assert reply.choices[0].finish_reason == chosen["finish_reason"]


def test_usage_counts_both_stages(client: openai.OpenAI) -> None:
    reply = _chat(client, "Count the tokens of both stages.")
    usage, parts = reply.usage, reply.model_extra["bon"]["usage"]
    generator, reranker = parts["generator"], parts["reranker"]
    assert generator["prompt_tokens"] > 5 and 2 <= generator["completion_tokens"] <= 12
    # flip-tokens reads each candidate's reconstruction prompt and the instruction (and a prior).
    assert reranker["prompt_tokens"] > 3 * generator["prompt_tokens"]
    assert usage.prompt_tokens == generator["prompt_tokens"] + reranker["prompt_tokens"]
    assert usage.completion_tokens == generator["completion_tokens"] + reranker["completion_tokens"]
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_a_seeded_request_is_reproducible_and_seeds_differ(client: openai.OpenAI) -> None:
    first, again = _chat(client, seed=7), _chat(client, seed=7)
    other = _chat(client, seed=8)
    texts = [c["text"] for c in first.model_extra["bon"]["candidates"]]
    assert texts == [c["text"] for c in again.model_extra["bon"]["candidates"]]
    assert texts != [c["text"] for c in other.model_extra["bon"]["candidates"]]


def test_unseeded_requests_draw_fresh_seeds_and_report_them(client: openai.OpenAI) -> None:
    replies = [_chat(client, "Same words.", temperature=1.0, max_tokens=12) for _ in range(2)]
    seeds = [r.model_extra["bon"]["seed"] for r in replies]
    assert seeds[0] != seeds[1] and all(isinstance(s, int) and s >= 0 for s in seeds)
    # The seed returned reproduces the answer.
    again = _chat(client, "Same words.", temperature=1.0, max_tokens=12, seed=seeds[0])
    assert again.model_extra["bon"]["seed"] == seeds[0]
    assert again.choices[0].message.content == replies[0].choices[0].message.content


def test_request_fields_override_the_server_options(client: openai.OpenAI) -> None:
    reply = _chat(client, max_tokens=3, extra_body={"best_of": 3, "scorer": "longest"})
    extra = reply.model_extra["bon"]
    assert extra["n"] == 3 and extra["by"] == "longest" and len(extra["candidates"]) == 3
    assert extra["score"] == max(extra["scores"])
    assert reply.model_extra["bon"]["usage"]["reranker"]["prompt_tokens"] == 0
    assert reply.usage.completion_tokens <= 9


def test_stop_strings_end_every_candidate(client: openai.OpenAI) -> None:
    reply = _chat(client, "Write a sentence.", max_tokens=12, stop=[" ", "."])
    candidates = reply.model_extra["bon"]["candidates"]
    assert len(candidates) == 2  # the server's n
    for candidate in candidates:
        assert " " not in candidate["text"] and "." not in candidate["text"]


def test_completions_endpoint(client: openai.OpenAI) -> None:
    reply = client.completions.create(
        model=NAME, prompt="Once upon a time", max_tokens=4, extra_body={"bon_n": 3}
    )
    assert len(reply.choices) == 1 and isinstance(reply.choices[0].text, str)
    assert reply.model_extra["bon"]["n"] == 3
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_models_lists_the_served_name(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [NAME]


def test_concurrent_requests_run_as_one_batch(client: openai.OpenAI) -> None:
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda text: _chat(client, text), ["One?", "Two?"]))
    assert [r.model_extra["bon"]["batch_requests"] for r in replies] == [2, 2]
    assert all(len(r.choices) == 1 for r in replies)


BAD = [
    ({"n": 2}, 400, "`n` must be 1"),
    ({"n": 2, "stream": True}, 400, "`n` must be 1, got 2: the server returns"),
    ({"stream": "yes"}, 400, "`stream` must be true or false"),
    ({"stream": True, "stream_options": {"usage": True}}, 400, "`stream_options` must be"),
    ({"temperature": 0}, 400, "greedy decoding"),
    ({"temperature": "hot"}, 400, "`temperature` must be >= 0, got 'hot'"),
    ({"top_p": 1.5}, 400, r"`top_p` must be in \(0, 1\], got 1.5"),
    ({"max_tokens": 0}, 400, "`max_new_tokens` must be an integer >= 1, got 0"),
    ({"max_tokens": 3, "max_completion_tokens": 4}, 400, "differ; send one"),
    ({"best_of": 2, "bon_n": 3}, 400, "differ"),
    ({"scorer": "nope"}, 400, "`scorers` must be one of .*flip-tokens"),
    ({"stop": [""]}, 400, "`stop` must be"),
    ({"colour": "red"}, 400, "unknown field.*colour"),
    ({"logprobs": True}, 400, "log-probabilities"),
    ({"top_logprobs": 2}, 400, "`top_logprobs` must be 0, got 2"),
    ({"presence_penalty": 0.5}, 400, "`presence_penalty` must be 0, got 0.5: penalties"),
    ({"logit_bias": {"1": 5}}, 400, "`logit_bias` must be {}"),
    ({"response_format": {"type": "json_object"}}, 400, '`response_format` must be {"type": "t'),
    ({"tools": [{"type": "function"}]}, 400, "`tools` must be \\[\\]"),
    ({"tool_choice": "required"}, 400, '`tool_choice` must be "none" or "auto"'),
    ({"store": True}, 400, "not stored"),
    ({"extra_body": {"colour": "red"}}, 400, "unknown field.* in `extra_body`: colour"),
    ({"extra_body": {"n": 3}}, 400, "`n` must be 1, got 3"),
    ({"extra_body": {"best_of": 3}, "best_of": 2}, 400, "`best_of` differs"),
    ({"extra_body": "best_of=3"}, 400, "`extra_body` must be an object"),
    ({"messages": []}, 400, "`messages` must be a non-empty list"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "last of `messages`"),
    ({"messages": [{"role": "tool", "content": "x"}]}, 400, r"`messages\[0\]` must be"),
    ({"model": "gpt-4"}, 404, "does not exist"),
]


@dataclass
class Reply:
    status_code: int
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def _request(server, method: str, path: str, body=None, chunked: bool = False) -> Reply:
    """A raw HTTP request (stdlib); `chunked` sends the body without a Content-Length."""
    url = urlsplit(server.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    try:
        if chunked:
            connection.request(method, url.path + path, body=iter([body]), encode_chunked=True)
        else:
            connection.request(method, url.path + path, body=body)
        response = connection.getresponse()
        return Reply(response.status, response.read())
    finally:
        connection.close()


def _post(server, path: str, body, chunked: bool = False) -> Reply:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return _request(server, "POST", path, content, chunked)


@pytest.mark.parametrize(("change", "status", "message"), BAD)
def test_bad_chat_requests_get_openai_errors(server, change, status, message) -> None:
    body = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], **change}
    reply = _post(server, "/chat/completions", body)
    assert reply.status_code == status
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert re.search(message, error["message"])


NO_OPS = {
    "extra_body": {},
    "n": 1,
    "stream": False,
    "stream_options": {"include_usage": True},
    "logprobs": False,
    "top_logprobs": 0,
    "presence_penalty": 0,
    "frequency_penalty": 0.0,
    "logit_bias": {},
    "user": "someone",
    "metadata": {"run": "7"},
    "store": False,
    "parallel_tool_calls": True,
    "service_tier": "auto",
    "response_format": {"type": "text"},
    "tools": [],
    "tool_choice": "none",
}


def test_openai_fields_at_their_no_op_values_are_accepted(server, client) -> None:
    body = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], **NO_OPS}
    reply = _post(server, "/chat/completions", body)
    assert reply.status_code == 200, reply.body
    assert reply.json()["choices"][0]["message"]["role"] == "assistant"
    prompt = {"model": NAME, "prompt": "Once", "echo": False, "suffix": "", "extra_body": {}}
    assert _post(server, "/completions", prompt).status_code == 200
    # As the OpenAI client sends them (its_hub passes `extra_body={}`).
    assert len(_chat(client, extra_body={}, user="u", presence_penalty=0).choices) == 1


def test_fields_nested_in_extra_body_count_as_given(server) -> None:
    nested = {"best_of": 3, "scorer": "longest", "max_tokens": 3}
    body = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "extra_body": nested}
    extra = _post(server, "/chat/completions", body).json()["bon"]
    assert extra["n"] == 3 and extra["by"] == "longest"


def test_the_openai_client_sees_a_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="best_of"):
        _chat(client, n=2)


def test_oversized_and_malformed_bodies(server) -> None:
    big = {"model": NAME, "messages": [{"role": "user", "content": "x" * LIMIT}]}
    assert _post(server, "/chat/completions", big).status_code == 413
    chunked = _post(server, "/chat/completions", big, chunked=True)  # no Content-Length
    assert chunked.status_code == 413 and "limit" in chunked.json()["error"]["message"]
    broken = _post(server, "/chat/completions", b"{not json")
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]["message"]
    listed = _post(server, "/completions", [1, 2])
    assert listed.status_code == 400 and "JSON object" in listed.json()["error"]["message"]
    many = _post(server, "/completions", {"model": NAME, "prompt": ["a", "b"]})
    assert many.status_code == 400 and "one prompt per request" in many.json()["error"]["message"]


def test_unknown_routes_and_methods_answer_in_openai_shape(server) -> None:
    missing = _request(server, "GET", "/embeddings")
    assert missing.status_code == 404 and "message" in missing.json()["error"]
    wrong = _request(server, "GET", "/chat/completions")
    assert wrong.status_code == 405 and "message" in wrong.json()["error"]


def test_a_prompt_longer_than_the_context_is_a_400(client: openai.OpenAI, server) -> None:
    # The tiny model's context is 2048 tokens; this prompt has more (and fits the body limit).
    with pytest.raises(openai.BadRequestError, match="context"):
        _chat(client, "word " * 2500)


def test_api_mirrors_the_cli_command() -> None:
    """`bon serve`'s flags are `serve`'s flat keywords (`ServeArgs`), with the declarations'
    defaults; `serve` and `start` also take the options objects whole."""
    keywords = typing.get_type_hints(ServeArgs)
    assert {param.name for param in serve_command.params} == set(keywords)
    groups = [*api.option_groups("run", files=False), api.Group(ServeOptions)]
    declared = {e.keyword: e.field.default for g in groups for e in g.entries()}
    assert {param.name: param.default for param in serve_command.params} == declared
    for function in (serve, start):
        parameters = list(inspect.signature(function).parameters)
        assert parameters == ["generate", "score", "select", "server", "options"]


def test_serve_keywords_follow_the_server_declarations() -> None:
    hints = types_of(ServeOptions)
    declared = {f.name: hints[f.name] for f in options_fields(ServeOptions)}
    assert typing.get_type_hints(ServeKeywords) == declared


def test_options_objects_and_flat_keywords_combine() -> None:
    generate = GenerateOptions(n=3, temperature=0.5)
    bon, server = _build(generate, None, None, ServeOptions(port=0), {"n": 5, "host": "::1"})
    assert (bon.generate.n, bon.generate.temperature) == (5, 0.5)
    assert (server.port, server.host) == (0, "::1")
    with pytest.raises(ConfigError, match="`server` must be a ServeOptions"):
        _build(None, None, None, {"port": 1}, {})  # type: ignore[arg-type]


def test_bad_server_options_fail_before_loading(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="`port` must be an integer in"):
        start(port=70000, model=str(tmp_path / "no-model"))
    with pytest.raises(ConfigError, match="unknown option"):
        start(colour="red")


@pytest.mark.parametrize(
    "reranker, loads", [({}, 1), ({"reranker_engine_args": {"sample_batching": "grouped"}}, 2)]
)
def test_one_model_serves_both_stages_when_their_settings_agree(
    tiny_model: str, monkeypatch: pytest.MonkeyPatch, reranker, loads
) -> None:
    import bon.online

    loaded: list[str] = []
    closed: list[str] = []

    def counting(options):
        engine = real(options)
        close = engine.close

        def counted_close() -> None:
            closed.append(options.model)
            close()

        engine.close = counted_close
        loaded.append(options.model)
        return engine

    real = bon.online.load_engine
    monkeypatch.setattr(bon.online, "load_engine", counting)
    options = {"model": tiny_model, "reranker_model": tiny_model, "n": 2, "max_new_tokens": 4}
    options.update(reranker)  # batch sizes differ (32 and 16) either way
    with start(**options, device="cpu", port=0, served_model_name=NAME) as running:
        assert loaded == [tiny_model] * loads  # before the server listens
        client = openai.OpenAI(base_url=running.url, api_key="unused", max_retries=0)
        usage = _chat(client).model_extra["bon"]["usage"]
    assert usage["reranker"]["prompt_tokens"] > usage["generator"]["prompt_tokens"] > 0
    assert loaded == [tiny_model] * loads
    assert closed == [tiny_model] * loads


def test_a_server_selects_with_new_scorers_and_their_own_options(tiny_model: str) -> None:
    """relevance (an embedder, no generator model) and vote (its own `answer` option) run in
    `bon serve` as in `bon run`: scores of both, selection by the first."""
    options = {"model": tiny_model, "n": 3, "max_new_tokens": 4, "seed": 1}
    scoring = {"scorers": ("relevance", "vote"), "answer": "text", "keep_all": True}
    with start(**options, **scoring, device="cpu", port=0, served_model_name=NAME) as running:
        client = openai.OpenAI(base_url=running.url, api_key="unused", max_retries=0)
        extra = _chat(client).model_extra["bon"]
    assert extra["by"] == "relevance" and len(extra["candidates"]) == 3
    for candidate in extra["candidates"]:
        assert -1 <= candidate["scores"]["relevance"] <= 1
        assert candidate["scores"]["vote"] in (0.0, 1 / 3, 2 / 3, 1.0)
    relevance = [c["scores"]["relevance"] for c in extra["candidates"]]
    assert relevance == [c["score"] for c in extra["candidates"]] == extra["scores"]
    assert extra["index"] == max(range(3), key=lambda i: (relevance[i], -i))


# --- Request fields derived from the option declarations ---------------------------------

# A bad value of each option a request may override: the request's value, and `bon run`'s flag
# and argument for the same value (None: a scorer name or stop string, refused by the API).
BAD_OVERRIDES = {
    "n": (0, ["--n", "0"]),
    "temperature": (-1.0, ["--temperature", "-1.0"]),
    "top_p": (1.5, ["--top-p", "1.5"]),
    "max_new_tokens": (0, ["--max-new-tokens", "0"]),
    "seed": (-1, ["--seed", "-1"]),
    "scorers": ("nope", None),
    "stop": ([""], None),
}


def _api_message(override, value) -> str:
    """The message the options class gives for `value` (what bon.run(...) raises)."""
    with pytest.raises(ConfigError) as caught:
        dataclasses.replace(override.owner(), **{override.name: override.value(value)})
    return str(caught.value)


def test_every_override_has_a_bad_value_to_test() -> None:
    assert {o.name for o in OVERRIDES} == set(BAD_OVERRIDES)
    # BestOfN.job's static keywords are the same names, typed as declared (or None).
    hints = typing.get_type_hints(Overrides)
    assert set(hints) == {o.name for o in OVERRIDES}
    for override in OVERRIDES:
        declared = override.hint
        if typing.get_origin(declared) is tuple:
            declared = Sequence[typing.get_args(declared)[0]]
        assert hints[override.name] == declared | None, override.name


@pytest.mark.parametrize("override", OVERRIDES, ids=lambda o: o.name)
def test_a_bad_override_gets_the_message_of_the_cli(server, override, tmp_path: Path) -> None:
    value, flag = BAD_OVERRIDES[override.name]
    expected = _api_message(override, value)
    if flag is not None:  # `bon run` says the same, before loading anything
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text('{"prompt": "hi"}\n')
        result = CliRunner().invoke(main, ["run", str(prompts), "-o", str(tmp_path), *flag])
        assert result.exit_code == 1 and f"Error: {expected}\n" in result.output
    for name in override.request:
        body = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], name: value}
        reply = _post(server, "/chat/completions", body)
        assert reply.status_code == 400
        assert reply.json()["error"]["message"] == expected
        assert reply.json()["error"]["param"] == name
        with pytest.raises(ConfigError) as caught:  # and BestOfN.job, the library's door
            BestOfN().job([{"role": "user", "content": "hi"}], **{override.name: value})
        assert str(caught.value) == expected


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_the_request_model_follows_the_declarations(endpoint: str) -> None:
    for bon in (BestOfN(), BestOfN(GenerateOptions(n=3, top_p=0.5))):
        model = request_model(endpoint, bon, NAME)
        fields = model.model_fields
        values = {GenerateOptions: bon.generate, ScoreOptions: bon.score, JobOptions: JobOptions()}
        for override in OVERRIDES:
            served = getattr(values[override.owner], override.name)
            declared = override.field
            for name in override.request:
                if endpoint == "completions" and name == "max_completion_tokens":
                    assert name not in fields  # a chat field only
                    continue
                # The default is the server's value of the option (the declaration's when the
                # server takes the defaults); a request without a seed draws one.
                assert fields[name].default == (None if name == "seed" else served)
                if bon.generate == GenerateOptions() and name != "seed":
                    assert fields[name].default == declared.default
                assert declared.metadata["help"] in fields[name].description
        assert set(NO_OPS_DECLARED) <= set(fields)
        assert model.model_config["extra"] == "forbid"
    assert {"stream", "stream_options", "extra_body", "model"} <= set(fields)


def test_best_of_n_job_takes_the_declared_overrides_only() -> None:
    bon = BestOfN(GenerateOptions(n=2))
    job = bon.job([{"role": "user", "content": "hi"}], n=4, scorers=["longest"], stop=".")
    assert (job.generate.n, job.scorers, job.by, job.stop) == (4, ("longest",), "longest", (".",))
    assert bon.generate.n == 2  # the instance's options are left as they were
    with pytest.raises(ConfigError, match="unknown option.*colour; known: max_new_tokens, n"):
        bon.job([{"role": "user", "content": "hi"}], colour="red")  # type: ignore[call-arg]


# --- Streaming -------------------------------------------------------------------------------


def test_a_streamed_answer_is_the_selected_answer(client: openai.OpenAI) -> None:
    """The chunks join to the text the same request gets unstreamed (same seed); the last
    chunk carries `usage` (both stages) and no choices."""
    content = "Stream the selected answer, please."
    stream = client.chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": content}],
        seed=11,
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    *answer, last, usage_chunk = chunks
    assert last.choices[0].finish_reason in ("stop", "length")
    assert all(c.choices[0].finish_reason is None for c in answer)
    text = "".join(c.choices[0].delta.content or "" for c in answer)
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    parts = usage_chunk.model_extra["bon"]["usage"]
    generator, reranker = parts["generator"], parts["reranker"]
    assert reranker["prompt_tokens"] > 0  # a prompt not seen before: flip-tokens ran
    usage = usage_chunk.usage
    assert usage.prompt_tokens == generator["prompt_tokens"] + reranker["prompt_tokens"]
    assert usage.completion_tokens == generator["completion_tokens"] + reranker["completion_tokens"]
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    plain = _chat(client, content, seed=11, max_tokens=8)
    assert text == plain.choices[0].message.content
    assert last.choices[0].finish_reason == plain.choices[0].finish_reason
    assert plain.model_extra["bon"]["usage"]["generator"] == generator
    assert usage_chunk.model_extra["bon"]["seed"] == 11


def test_a_streamed_completion(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model=NAME, prompt="Once upon a time", max_tokens=6, seed=4, stream=True
    )
    chunks = list(stream)
    assert all(c.object == "text_completion" and c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    text = "".join(c.choices[0].text for c in chunks)
    plain = client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=6, seed=4)
    assert text == plain.choices[0].text


def test_the_event_stream_is_openai_framed(server) -> None:
    body = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    reply = _post(server, "/chat/completions", {**body, "max_tokens": 5, "seed": 2})
    assert reply.status_code == 200
    events = reply.body.decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "usage" not in chunks[-1]  # not asked for
    assert chunks[-1]["bon"]["seed"] == 2 and chunks[-1]["choices"][0]["finish_reason"]


def test_streaming_with_n_above_1_is_refused_before_any_work(client, monkeypatch) -> None:
    calls: list[int] = []
    answer = BestOfN.answer

    def counted(self, jobs):
        calls.append(len(jobs))
        return answer(self, jobs)

    monkeypatch.setattr(BestOfN, "answer", counted)
    with pytest.raises(openai.BadRequestError, match="`n` must be 1, got 2") as caught:
        client.chat.completions.create(
            model=NAME, messages=[{"role": "user", "content": "hi"}], n=2, stream=True
        )
    assert caught.value.body["param"] == "n"
    assert calls == []


def test_an_error_while_streaming_is_an_error_event(client, monkeypatch) -> None:
    import bon.entrypoints.serve as serving

    def broken(text: str):
        yield text[:1]
        raise RuntimeError("the stream broke")

    monkeypatch.setattr(serving, "pieces", broken)
    stream = _chat(client, "Break the stream.", stream=True, max_tokens=4)
    received = []
    with pytest.raises(openai.APIError, match="RuntimeError: the stream broke"):
        for chunk in stream:
            received.append(chunk)
    assert received and received[0].choices[0].delta.role == "assistant"


def test_a_failure_before_streaming_keeps_its_status(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="context"):
        _chat(client, "word " * 2500, stream=True)
