"""The openai engine against a fake of the upstream API: retries, permanent failures, row errors.

`FakeOpenAI` is NOT a real model server: it is a stdlib HTTP server on 127.0.0.1 that answers
chat-completions requests in the OpenAI wire format with canned text, and returns the HTTP errors
a test scripts (429, 5xx, 401, 400). The engine against a real vLLM server is tested in
tests/test_engines_real.py.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

import bon
from bon.cli import main
from bon.engines import EngineOptions, SamplingOptions, load_engine
from bon.errors import ConfigError, EngineError
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
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake._lock:
                    fake.requests.append(body)
                    fake.keys.append(self.headers.get("Authorization"))
                    failure = fake.fail_next.pop(0) if fake.fail_next else None
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    time.sleep(fake.delay)
                    if failure:
                        status, headers = failure
                        self._send(status, {"error": {"message": f"scripted {status}"}}, headers)
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

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    server = FakeOpenAI()
    yield server
    server.close()


def _engine(fake, **args):
    engine_args = {"base_url": fake.url, "backoff": 0.0, "timeout": 10, **args}
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
    assert engine.describe() == {"engine": "openai", "model": "tiny", "base_url": fake.url}


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
    engine_args = {"base_url": "http://127.0.0.1:9/v1", "max_retries": 1, "backoff": 0.0}
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


def test_a_refused_row_becomes_an_error_record_and_the_job_goes_on(fake):
    records = [{"id": "ok", "prompt": "fine"}, {"id": "bad", "prompt": f"{REFUSED} prompt"}]
    args = {"base_url": fake.url, "backoff": 0.0}
    out = bon.generate_records(records, engine="openai", model="tiny", n=2, engine_args=args)
    assert [c["finish_reason"] for c in out[0]["candidates"]] == ["stop", "stop"]
    assert "error" not in out[0]["candidates"][0]
    bad = out[1]["candidates"]
    assert [(c["text"], c["finish_reason"], c["tokens"]) for c in bad] == [("", "error", 0)] * 2
    assert "maximum context length" in bad[0]["error"]
    # The reranker records a refused reconstruction the same way, beside a score of 0.
    scored = bon.score_records(
        [{"prompt": "p", "responses": ["fine answer", f"{REFUSED} answer"]}],
        scorers=["flip"],
        engine="openai",
        model="tiny",
        engine_args=args,
    )[0]["candidates"]
    assert scored[0]["flip"]["parse"] != "error"
    assert scored[1]["flip"]["parse"].startswith("error: HTTP 400: This model's maximum")
    assert scored[1]["scores"]["flip"] == 0.0


def test_engine_args_are_checked_per_engine_before_anything_loads():
    with pytest.raises(ConfigError, match="unknown engine arg\\(s\\) nope for the openai engine; "):
        EngineOptions(engine="openai", engine_args={"nope": 1})
    with pytest.raises(ConfigError, match="for the hf engine; it accepts: none"):
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
    assert unknown.exit_code == 1 and "it accepts: api_key_env, backoff, base_url" in unknown.output


def test_cli_run_passes_each_stage_its_own_engine_args(tmp_path, fake):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "Name a colour."}])
    other = FakeOpenAI()  # the reranker's server
    try:
        args = ["run", prompts, "-o", tmp_path / "out", "--n", 2, "-q"]
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
