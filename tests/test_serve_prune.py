"""`bon serve` with pruned best-of-N (`--prune-at`): a real uvicorn server on 127.0.0.1 with the
tiny random Llama at float32, driven by the real `openai` client. Four candidates are pruned to
one after 4 tokens; a streamed request gets the survivor's text as it decodes, before
selection ends, and then what selection adds."""

from __future__ import annotations

import http.client
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest
from click.testing import CliRunner

import bon.entrypoints.serve
import bon.online
from bon.entrypoints.cli import main
from bon.entrypoints.serve import start
from bon.online import _cut, _shown

NAME = "bon-prune"
PROMPT = "Tell me a story."


@pytest.fixture(scope="module")
def server(tiny_model: str, tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("serve-prune-cache") / "scores.sqlite"
    running = start(
        model=tiny_model,
        reranker_model=tiny_model,
        dtype="float32",
        device="cpu",
        n=4,
        prune_at=(4,),
        keep=0.25,
        max_new_tokens=24,
        temperature=0.8,
        port=0,
        served_model_name=NAME,
        batch_wait_ms=300,
        keep_all=True,
        cache_path=str(cache),
    )
    yield running
    running.stop()


def _chat(client: openai.OpenAI, content: str = PROMPT, **extra):
    return client.chat.completions.create(
        model=NAME, messages=[{"role": "user", "content": content}], **extra
    )


def _streamed(client: openai.OpenAI, content: str = PROMPT, **extra) -> list:
    stream = _chat(client, content, stream=True, stream_options={"include_usage": True}, **extra)
    return list(stream)


def _post(server, body: dict) -> tuple[int, dict]:
    """A raw chat request: its status and JSON body (a 400 the `openai` client would raise)."""
    url = urlsplit(server.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    try:
        connection.request("POST", url.path + "/chat/completions", body=json.dumps(body))
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _text(chunks: list) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_a_pruned_request_answers_and_counts_what_pruning_spent(client: openai.OpenAI) -> None:
    reply = _chat(client, "Count what pruning spent.", seed=3)
    extra = reply.model_extra["bon"]
    candidates = extra["candidates"]
    assert extra["n"] == 4 and len(candidates) == 4
    pruned = [c for c in candidates if c["pruned_at"] == 4]
    assert len(pruned) == 3 and all(c["score"] is None for c in pruned)
    survivor = candidates[extra["index"]]
    assert survivor["pruned_at"] is None and survivor["score"] is not None
    assert reply.choices[0].message.content == survivor["text"]
    parts = extra["usage"]
    generator, reranker, pruner = parts["generator"], parts["reranker"], parts["pruner"]
    # Three candidates stopped at 4 tokens, the survivor went on to at most 24.
    assert 3 * 4 < generator["completion_tokens"] <= 3 * 4 + 24
    assert pruner["prompt_tokens"] > 0  # flip-tokens read the four partial candidates
    usage = reply.usage
    assert usage.prompt_tokens == sum(p["prompt_tokens"] for p in (generator, reranker, pruner))
    assert usage.completion_tokens == sum(
        p["completion_tokens"] for p in (generator, reranker, pruner)
    )
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_the_survivor_streams_before_selection_ends(
    client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Selection is held until the client has received text: a server that streamed only
    after selection would leave it waiting out its timeout."""
    plain = _chat(client, seed=5)
    received = threading.Event()
    held: list[bool] = []
    select = bon.online.select_record

    def held_selection(record, options):
        held.append(received.wait(timeout=20))
        return select(record, options)

    monkeypatch.setattr(bon.online, "select_record", held_selection)
    stream = _chat(client, seed=5, stream=True, stream_options={"include_usage": True})
    chunks = []
    for chunk in stream:
        chunks.append(chunk)
        if chunk.choices and chunk.choices[0].delta.content:
            received.set()
    assert held == [True]  # the first text came while selection waited
    *answer, last, usage_chunk = chunks
    assert answer[0].choices[0].delta.role == "assistant"
    assert sum(bool(c.choices[0].delta.content) for c in answer) > 1
    assert all(c.choices[0].finish_reason is None for c in answer)
    assert last.choices[0].finish_reason == plain.choices[0].finish_reason
    assert _text(chunks) == plain.choices[0].message.content
    assert usage_chunk.choices == []
    parts = usage_chunk.model_extra["bon"]["usage"].values()
    assert usage_chunk.usage.prompt_tokens == sum(p["prompt_tokens"] for p in parts)


def test_concurrent_streams_each_get_their_own_text(client: openai.OpenAI) -> None:
    seeds = [11, 12]
    plain = [_chat(client, seed=s).choices[0].message.content for s in seeds]
    assert plain[0] != plain[1]
    with ThreadPoolExecutor(2) as pool:
        streams = list(pool.map(lambda s: _streamed(client, seed=s), seeds))
    assert [_text(chunks) for chunks in streams] == plain
    assert [c[-1].model_extra["bon"]["batch_requests"] for c in streams] == [2, 2]


def test_a_streamed_answer_stops_where_its_stop_strings_cut_it(client: openai.OpenAI) -> None:
    plain = _chat(client, seed=9, stop=["e"])
    assert plain.choices[0].finish_reason == "stop"  # the survivor's text holds an "e"
    chunks = _streamed(client, seed=9, stop=["e"])
    assert _text(chunks) == plain.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_a_pick_other_than_the_streamed_candidate_ends_in_an_error_event(
    client: openai.OpenAI, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def a_pruned_pick(record, options):
        pruned = next(i for i, c in enumerate(record["candidates"]) if c.get("pruned_at"))
        return {**record, "selected": {"index": pruned, "score": 0.0}}

    monkeypatch.setattr(bon.online, "select_record", a_pruned_pick)
    received = []
    warned = caplog.at_level(logging.WARNING, logger="bon.entrypoints.serve")
    with warned, pytest.raises(openai.APIError, match="other than the one streamed"):
        for chunk in _chat(client, seed=7, stream=True):
            received.append(chunk)
    assert any(c.choices[0].delta.content for c in received)
    assert all(c.choices[0].finish_reason is None for c in received)
    assert "does not start with" in caplog.text


def test_max_tokens_not_above_the_checkpoint_is_a_400(server, client: openai.OpenAI) -> None:
    body = {"model": NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    for stream in (False, True):
        status, reply = _post(server, {**body, "stream": stream})
        assert status == 400
        error = reply["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == "max_tokens"
        assert "`prune_at` must be below `max_new_tokens` (4), got [4]" in error["message"]
    with pytest.raises(openai.BadRequestError, match="prune_at"):
        _chat(client, max_tokens=3)


def test_bon_serve_takes_the_pruning_flags(
    tiny_model: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    served: list[bon.online.BestOfN] = []

    def create_app(best_of_n, options):
        served.append(best_of_n)
        raise KeyboardInterrupt  # the end of a server

    monkeypatch.setattr(bon.entrypoints.serve, "create_app", create_app)
    flags = ["--prune-at", "4", "--keep", "0.25", "--prune-by", "flip-tokens"]
    where = ["--model", tiny_model, "--device", "cpu", "--cache-path", str(tmp_path / "c")]
    result = CliRunner().invoke(main, ["serve", *flags, *where, "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    (generate,) = [b.generate for b in served]
    assert (generate.prune_at, generate.keep, generate.prune_by) == ((4,), 0.25, "flip-tokens")
    served[0].close()
    bad = CliRunner().invoke(main, ["serve", "--prune-at", "8", *where, "--max-new-tokens", "8"])
    assert bad.exit_code == 1 and "`prune_at` must be below `max_new_tokens` (8)" in bad.output


@pytest.mark.parametrize(
    ("text", "stop", "shown"),
    [
        ("Hello wor", (), "Hello wor"),
        ("Hello. World", (".",), "Hello"),
        ("Hello wo", ("world",), "Hello "),  # "wo" may begin "world"
        ("Hello w", ("wx", "."), "Hello "),
        ("Hello", ("lo!",), "Hel"),
    ],
)
def test_a_followed_text_stops_short_of_what_a_stop_string_may_cut(text, stop, shown) -> None:
    assert _shown(text, stop) == shown
    for more in ("", "rld!", "x.", "o!"):  # whatever follows, the answer starts with it
        answer = _cut({"text": text + more, "finish_reason": "length"}, stop)["text"]
        assert answer.startswith(shown), (text + more, answer)
