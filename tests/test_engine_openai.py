"""The openai engine against a fake of the upstream API: retries, permanent failures, row errors.

`FakeOpenAI` is NOT a real model server: it is a stdlib HTTP server on 127.0.0.1 that answers
chat-completions requests in the OpenAI wire format with canned text, and returns the HTTP errors
a test scripts (429, 5xx, 401, 400). Its `reject` switches make it an upstream that refuses
parameters bon sends (`seed`, `logprobs`, `response_format`), as some hosted APIs and older
servers do (real vLLM accepts them all), and `refuse_all` one that refuses every request alike.
The engine against a real vLLM server is tested in tests/test_engines_real.py.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

import bon
from bon.engines import EngineOptions, SamplingOptions, load_engine
from bon.entrypoints.cli import main
from bon.errors import ConfigError, EngineError, RecordError
from bon.scorers.flip import JSON_SCHEMA
from tests.conftest import read_jsonl, write_jsonl

REFUSED = "TOO LONG"


class FakeOpenAI:
    """A fake of an OpenAI-compatible server (see the module docstring)."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.keys: list[str | None] = []  # Authorization headers seen
        self.fail_next: list[tuple[int, dict]] = []  # (status, headers) for the next requests
        self.delay = 0.0
        self.reject: dict[str, tuple[int, str]] = {}  # parameter -> (status, message) if sent
        self.refuse_all: tuple[int, str] | None = None  # (status, message) for every request
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path.endswith("/tokenize"):  # vLLM's, beside /v1: one id per word
                    return self._send(200, {"tokens": fake.tokenize(body)})
                if self.path.endswith("/detokenize"):
                    return self._send(200, {"prompt": f"<{body['tokens'][0]}>"})
                with fake._lock:
                    fake.requests.append(body)
                    fake.keys.append(self.headers.get("Authorization"))
                    failure = fake.fail_next.pop(0) if fake.fail_next else None
                    refusal = next((r for p, r in fake.reject.items() if p in body), None)
                    refusal = refusal or fake.refuse_all
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    time.sleep(fake.delay)
                    if failure:
                        status, headers = failure
                        self._send(status, {"error": {"message": f"scripted {status}"}}, headers)
                    elif refusal:
                        self._send(refusal[0], {"error": {"message": refusal[1], "code": 400}})
                    elif self.path.endswith("/completions") and "prompt" in body:
                        fake.complete(self, body)
                    elif REFUSED in body["messages"][-1]["content"]:
                        message = "This model's maximum context length is 2048 tokens"
                        self._send(400, {"error": {"message": message, "code": 400}})
                    else:
                        self._send(200, fake.reply(body))
                finally:
                    with fake._lock:
                        fake.in_flight -= 1

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:  # keep test output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def reply(body: dict) -> dict:
        question = body["messages"][-1]["content"]
        choices = []
        for i in range(body.get("n", 1)):
            words = f"reply {i} seed {body.get('seed')} to {question}".split()[:7]
            logprobs = {"content": [{"token": w, "logprob": -1.0} for w in words]}
            choices.append(
                {
                    "index": i,
                    "message": {"role": "assistant", "content": " ".join(words)},
                    "finish_reason": "length" if len(words) >= body["max_tokens"] else "stop",
                    "logprobs": logprobs if body.get("logprobs") else None,
                }
            )
        usage = {"prompt_tokens": 5, "completion_tokens": 7 * len(choices), "total_tokens": 0}
        return {
            "id": "fake",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": choices,
            "usage": usage,
        }

    @staticmethod
    def tokenize(body: dict) -> list[int]:
        texts = [m["content"] for m in body.get("messages", [])] or [body.get("prompt", "")]
        return [7] * sum(len(text.split()) for text in texts)

    CONTEXT = 20

    def complete(self, handler: BaseHTTPRequestHandler, body: dict) -> None:
        """/v1/completions with `echo`: -0.5 for each prompt token after the first; prompts
        over `CONTEXT` tokens are refused with a message naming their length."""
        size = len(body["prompt"])
        if size > self.CONTEXT:
            message = (
                f"This model's maximum context length is {self.CONTEXT} tokens. However, you "
                f"requested {size + 1} tokens"
            )
            return handler._send(400, {"error": {"message": message}})
        logprobs = {"token_logprobs": [None] + [-0.5] * (size - 1), "tokens": ["w"] * size}
        choice = {"index": 0, "text": "", "finish_reason": "length", "logprobs": logprobs}
        reply = {"id": "fake", "object": "text_completion", "created": 0, "model": body["model"]}
        handler._send(200, {**reply, "choices": [choice]})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    server = FakeOpenAI()
    yield server
    server.close()


def _engine(fake, **args):
    engine_args = {"base_url": fake.url, "timeout": 10, **args}
    return load_engine(EngineOptions(engine="openai", model="tiny", engine_args=engine_args))


CONVERSATIONS = [[{"role": "user", "content": f"question {i}"}] for i in range(5)]


def test_n_samples_per_request_in_input_order_with_seeds_and_schema(fake, monkeypatch):
    monkeypatch.setenv("BON_TEST_KEY", "sk-test")
    engine = _engine(fake, api_key_env="BON_TEST_KEY", concurrency=3)
    sampling = SamplingOptions(n=2, temperature=0.7, max_new_tokens=50, json_schema=JSON_SCHEMA)
    out = engine.generate(CONVERSATIONS, sampling, seeds=[10, 11, 12, 13, 14])
    assert [[c.text for c in row] for row in out] == [
        [f"reply {j} seed {10 + i} to question {i}" for j in range(2)] for i in range(5)
    ]
    assert all(c.tokens == 7 and c.finish_reason == "stop" for row in out for c in row)
    assert len(fake.requests) == 5  # one request per conversation, n samples each
    body = next(r for r in fake.requests if r["seed"] == 12)
    assert (body["n"], body["model"], body["max_tokens"], body["temperature"]) == (
        2,
        "tiny",
        50,
        0.7,
    )
    assert body["response_format"]["json_schema"]["schema"] == JSON_SCHEMA
    assert fake.keys == ["Bearer sk-test"] * 5
    assert engine.describe() == {
        "engine": "openai",
        "model": "tiny",
        "base_url": fake.url,
        "dropped_params": [],
    }


def test_transient_errors_are_retried_with_backoff(fake):
    fake.fail_next = [(429, {"Retry-After": "0"}), (503, {}), (500, {})]
    out = _engine(fake).generate(CONVERSATIONS[:1], SamplingOptions(max_new_tokens=50))
    assert out[0][0].text == "reply 0 seed 0 to question 0"
    assert len(fake.requests) == 4


def test_retries_that_run_out_stop_the_job(fake):
    fake.fail_next = [(502, {})] * 3
    with pytest.raises(EngineError, match="kept failing after 2 retries .*HTTP 502.*rerun"):
        _engine(fake, max_retries=2).generate(CONVERSATIONS[:1], SamplingOptions())
    assert len(fake.requests) == 3


def test_a_refused_connection_is_retried_then_reported():
    engine_args = {"base_url": "http://127.0.0.1:9/v1", "max_retries": 1}
    engine = load_engine(EngineOptions(engine="openai", engine_args=engine_args))
    with pytest.raises(EngineError, match="kept failing after 1 retries .*Connection"):
        engine.generate(CONVERSATIONS[:1], SamplingOptions())


@pytest.mark.parametrize(
    ("status", "fix"),
    [(401, r"set a valid key in \$BON_NO_SUCH_KEY"), (404, "check the model name 'tiny'")],
)
def test_permanent_errors_fail_at_once_and_say_how_to_fix(fake, monkeypatch, status, fix):
    monkeypatch.delenv("BON_NO_SUCH_KEY", raising=False)
    fake.fail_next = [(status, {})]
    engine = _engine(fake, api_key_env="BON_NO_SUCH_KEY")
    with pytest.raises(EngineError, match=f"HTTP {status}: scripted {status}; {fix}"):
        engine.generate(CONVERSATIONS[:1], SamplingOptions())
    assert len(fake.requests) == 1


def test_concurrency_limit_holds(fake):
    fake.delay = 0.2
    _engine(fake, concurrency=2).generate(CONVERSATIONS, SamplingOptions(max_new_tokens=50))
    assert fake.max_in_flight == 2


def test_a_refused_row_is_a_per_record_problem_and_the_job_goes_on(fake, tmp_path):
    records = [{"id": "ok", "prompt": "fine"}, {"id": "bad", "prompt": f"{REFUSED} prompt"}]
    args = {"base_url": fake.url}
    options = {"engine": "openai", "model": "tiny", "engine_args": args}
    prompts = write_jsonl(tmp_path / "p.jsonl", records)
    out = tmp_path / "c.jsonl"
    report = bon.generate(prompts, out, n=2, on_error="skip", quiet=True, **options)
    assert (report.written, report.errors) == (1, 1)
    assert [c["finish_reason"] for c in read_jsonl(out)[0]["candidates"]] == ["stop", "stop"]
    (error,) = read_jsonl(tmp_path / "c.jsonl.errors.jsonl")
    assert error["line"] == 2 and error["id"] == "bad"
    assert "could not answer this prompt: HTTP 400: This model's maximum" in error["error"]
    # In memory the problem names the record; a refused reconstruction is one too.
    with pytest.raises(bon.InputError, match="<records>:2: the generator could not answer"):
        bon.generate_records(records, n=2, **options)
    scored = [{"prompt": "p", "responses": ["fine answer", f"{REFUSED} answer"]}]
    with pytest.raises(bon.InputError, match="could not score candidate 1: error: HTTP 400"):
        bon.score_records(scored, scorers=["flip"], **options)


def test_engine_args_are_checked_per_engine_before_anything_loads():
    with pytest.raises(ConfigError, match="unknown engine arg\\(s\\) nope for the openai engine; "):
        EngineOptions(engine="openai", engine_args={"nope": 1})
    with pytest.raises(ConfigError, match="for the hf engine; it accepts: sample_batching"):
        bon.generate_records([{"prompt": "x"}], engine_args={"enforce_eager": True})
    with pytest.raises(ConfigError, match="`concurrency` must be a int"):
        EngineOptions(engine="openai", engine_args={"concurrency": "many"})
    options = bon.GenerateOptions(engine="vllm", engine_args={"enforce_eager": "true"})
    assert options.engine_args == {"enforce_eager": True}
    assert bon.ScoreOptions(engine="vllm").engine_args == {}


def test_cli_engine_args(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x"}])
    out = str(tmp_path / "c.jsonl")
    runner = CliRunner()
    bad = runner.invoke(main, ["generate", str(prompts), "-o", out, "--engine-arg", "novalue"])
    assert bad.exit_code == 2 and "expected KEY=VALUE, got 'novalue'" in bad.output
    unknown = runner.invoke(
        main, ["generate", str(prompts), "-o", out, "--engine", "openai", "--engine-arg", "x=1"]
    )
    assert unknown.exit_code == 1 and "it accepts: api_key_env, base_url" in unknown.output


def test_cli_run_passes_each_stage_its_own_engine_args(tmp_path, fake):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "Name a colour."}])
    other = FakeOpenAI()  # the reranker's server
    try:
        args = ["run", prompts, "-o", tmp_path / "out", "--n", 2, "-q", "--scorer", "flip"]
        args += ["--engine", "openai", "--engine-arg", f"base_url={fake.url}"]
        args += ["--reranker-engine", "openai", "--reranker-engine-arg", f"base_url={other.url}"]
        args += ["--reranker-engine-arg", "concurrency=1"]
        result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert [r["n"] for r in fake.requests] == [2]
        assert len(other.requests) == 2  # one reconstruction per candidate
        assert all("[Response]" in r["messages"][-1]["content"] for r in other.requests)
        scored = read_jsonl(tmp_path / "out" / "scored.jsonl")[0]
        assert scored["generator"]["base_url"] == fake.url
    finally:
        other.close()


# Messages in the shapes upstream servers give when they refuse a parameter.
PARAMETER_REFUSALS = {
    "seed": (400, "Unrecognized request argument supplied: seed"),
    "logprobs": (422, "logprobs is not supported for this model"),
    "response_format": (400, "Invalid parameter: 'response_format' of type 'json_schema'"),
}


@pytest.mark.parametrize("param", sorted(PARAMETER_REFUSALS))
def test_a_refused_optional_parameter_is_dropped_and_the_request_retried(fake, param, caplog):
    fake.reject = {param: PARAMETER_REFUSALS[param]}
    engine = _engine(fake)
    sampling = SamplingOptions(n=2, max_new_tokens=50, json_schema=JSON_SCHEMA)
    out = engine.generate(CONVERSATIONS[:3], sampling, seeds=[1, 2, 3])
    assert all(c.error is None and c.text.startswith("reply") for row in out for c in row)
    assert engine.describe()["dropped_params"] == [param]
    sent = [r for r in fake.requests if param in r]
    assert 1 <= len(sent) <= 3  # refused once per request in flight, then never sent again
    more = engine.generate(CONVERSATIONS[3:], sampling, seeds=[4, 5])
    assert all(c.error is None for row in more for c in row)
    assert len([r for r in fake.requests if param in r]) == len(sent)
    assert f"refused `{param}`" in caplog.text


def test_dropped_parameters_are_recorded_beside_the_outputs(fake):
    fake.reject = {p: PARAMETER_REFUSALS[p] for p in ("seed", "logprobs")}
    records = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(3)]
    args = {"base_url": fake.url}
    out = bon.generate_records(records, engine="openai", model="tiny", n=2, engine_args=args)
    assert all(c["finish_reason"] == "stop" for r in out for c in r["candidates"])
    assert out[-1]["generator"]["dropped_params"] == ["logprobs", "seed"]
    # Each row ends with one request that carries neither (and is answered).
    assert sum("seed" not in r and "logprobs" not in r for r in fake.requests) == 3


def test_the_same_refusal_of_every_row_of_a_call_stops_the_job(fake):
    fake.refuse_all = (400, "top_p must be at most 0.9")
    records = [{"id": "a", "prompt": "one"}, {"id": "b", "prompt": "two"}]
    args = {"base_url": fake.url}
    with pytest.raises(
        EngineError,
        match=r"refused all 2 requests of a call with the same error \(HTTP 400: top_p must be "
        r"at most 0\.9\), so the problem is the job's.*--top-p",
    ):
        bon.generate_records(records, engine="openai", model="tiny", n=2, engine_args=args)


def test_the_same_refusal_of_the_first_three_rows_stops_the_job(fake):
    fake.refuse_all = (422, "temperature must be at most 0.5")
    engine = _engine(fake)
    sampling = SamplingOptions(n=2, max_new_tokens=50)
    for i in range(2):  # one row per call, as when the pipeline retries records one by one
        row = engine.generate(CONVERSATIONS[i : i + 1], sampling)[0]
        assert row[0].error == "HTTP 422: temperature must be at most 0.5"
    with pytest.raises(EngineError, match="refused each of its first 3 requests with the same"):
        engine.generate(CONVERSATIONS[2:3], sampling)


def test_row_specific_refusals_stay_row_errors(fake):
    """Rows too long for the context stay each row's own errors even when they fail alike,
    in one call or in the first three; a call where only some rows fail goes on."""
    engine = _engine(fake)
    sampling = SamplingOptions(n=1, max_new_tokens=50)
    too_long = [[{"role": "user", "content": f"{REFUSED} {i}"}] for i in range(3)]
    out = engine.generate(too_long, sampling)
    assert all("maximum context length" in row[0].error for row in out)
    for conversation in too_long:
        assert engine.generate([conversation], sampling)[0][0].finish_reason == "error"
    mixed = engine.generate([too_long[0], *CONVERSATIONS[:2]], sampling)
    assert [row[0].finish_reason for row in mixed] == ["error", "stop", "stop"]
    assert engine.describe()["dropped_params"] == []


def test_token_pieces_come_back_per_text_in_order(fake):
    # The fake's /tokenize gives id 7 per word and /detokenize writes an id as <id>.
    pieces = _engine(fake).token_pieces(["a b c", "", "d e"])
    assert pieces == [["<7>"] * 3, [], ["<7>"] * 2]


def test_a_refused_continuation_is_a_record_error_naming_its_row(fake):
    engine = _engine(fake)
    question = [{"role": "user", "content": "one two three"}]
    assert engine.continuation_logprobs([question], ["four five"]) == [[-0.5, -0.5]]
    with pytest.raises(
        RecordError, match=r"^row 1: .* refused it: HTTP 400: This model's maximum context"
    ):
        engine.continuation_logprobs([question, question], ["four", "w " * 30])


def test_a_continuation_refusal_every_row_gets_stops_the_job(fake):
    fake.refuse_all = (400, "echo is not supported")
    engine = _engine(fake)
    question = [{"role": "user", "content": "one two three"}]
    with pytest.raises(EngineError, match=r"all 2 requests .*\(HTTP 400: echo is not supported\)"):
        engine.continuation_logprobs([question, question], ["four", "five"])
