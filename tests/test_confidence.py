"""`record_logprobs` and the `confidence` scorer, on the tiny random Llama (hf engine) and a
fake OpenAI-compatible server: recorded values equal a teacher-forced pass over the same tokens,
outputs without the option stay as they were, and the scorer reads recorded values without a
model or falls back to the scoring model (through the score cache).
"""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

import bon
from bon.engines import EngineOptions, SamplingOptions, load_engine
from bon.engines.hf import HFEngine
from bon.entrypoints.cli import main
from tests.conftest import read_jsonl, write_jsonl

CONVERSATIONS = [
    [{"role": "user", "content": "Write a haiku about rain."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
]


@pytest.fixture(scope="module")
def engine32(tiny_model):
    engine = load_engine(EngineOptions(model=tiny_model, dtype="float32", batch_size=8))
    yield engine
    engine.close()


def _teacher_forced(engine, conversation, token_ids) -> tuple[list[float], list[float]]:
    """Each token's log-probability and each step's KL(uniform || p) in one forward pass."""
    import torch

    prompt = engine._encode(engine.render(conversation))
    ids = torch.tensor([prompt + token_ids])
    with torch.inference_mode():
        logits = engine.model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float()
    logp = torch.log_softmax(logits, dim=-1)
    chosen = logp.gather(-1, torch.tensor(token_ids).unsqueeze(-1)).squeeze(-1)
    certainty = -logp.mean(-1) - math.log(logp.shape[-1])
    return chosen.tolist(), certainty.tolist()


@pytest.mark.parametrize(
    "sampling",
    [
        SamplingOptions(n=3, temperature=0.7, top_p=0.9, max_new_tokens=10, seed=5),
        SamplingOptions(n=1, temperature=0, max_new_tokens=10),
    ],
    ids=["sampled", "greedy"],
)
def test_recorded_values_equal_a_teacher_forced_pass_over_the_same_tokens(
    engine32, sampling, monkeypatch
):
    seen: list[list[int]] = []
    real = HFEngine._completion

    def spy(self, token_ids, *rest, **named):
        seen.append(list(token_ids))
        return real(self, token_ids, *rest, **named)

    monkeypatch.setattr(HFEngine, "_completion", spy)
    recorded = dataclass_replace(sampling, record_logprobs=True)
    out = engine32.generate(CONVERSATIONS, recorded, seeds=[1, 2])
    completions = [c for row in out for c in row]
    assert len(seen) == len(completions)
    stops = set(engine32._stop_ids)
    checked = 0
    for conversation_index, row in enumerate(out):
        for k, completion in enumerate(row):
            ids = seen[conversation_index * sampling.n + k]
            kept = next((i for i, t in enumerate(ids) if t in stops), len(ids))
            if kept == 0:
                assert completion.logprob_mean is None
                continue
            chosen, certainty = _teacher_forced(
                engine32, CONVERSATIONS[conversation_index], ids[:kept]
            )
            assert completion.logprob_mean == pytest.approx(sum(chosen) / kept, abs=1e-3)
            assert completion.self_certainty == pytest.approx(sum(certainty) / kept, abs=1e-3)
            checked += 1
    assert checked >= 1
    # Raw log-probabilities, not the tempered ones: a random model's are about -log(vocab).
    assert all(c.logprob_mean < -5 for c in completions if c.logprob_mean is not None)
    plain = engine32.generate(CONVERSATIONS, sampling, seeds=[1, 2])
    assert [[c.text for c in row] for row in plain] == [[c.text for c in row] for row in out]
    assert all(c.logprob_mean is None and c.self_certainty is None for r in plain for c in r)


def dataclass_replace(obj, **changes):
    import dataclasses

    return dataclasses.replace(obj, **changes)


PROMPTS = [{"id": "p1", "prompt": "Write a haiku about rain."}, {"id": "p2", "prompt": "Hi!"}]


def test_records_without_the_option_are_unchanged_and_with_it_gain_two_fields(tiny_model):
    options = {"model": tiny_model, "n": 2, "max_new_tokens": 8, "seed": 3}
    plain = bon.generate_records(PROMPTS, **options)
    recorded = bon.generate_records(PROMPTS, **options, record_logprobs=True)
    assert any(c["text"] for r in recorded for c in r["candidates"])  # some gain the fields
    for before, after in zip(plain, recorded, strict=True):
        assert "record_logprobs" not in before["generator"]
        assert after["generator"]["record_logprobs"] is True
        for old, new in zip(before["candidates"], after["candidates"], strict=True):
            assert set(old) == {"text", "finish_reason", "tokens", "cost"}
            same = [k for k in old if k != "cost"]  # what the samples cost in seconds differs
            assert {k: new[k] for k in same} == {k: old[k] for k in same}  # the same samples
            if new["text"]:
                assert set(new) - set(old) == {"logprob_mean", "self_certainty"}
                assert new["logprob_mean"] < 0 < new["self_certainty"]


def test_the_cli_flag_records_them(tiny_model, tmp_path):
    source = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS[:1])
    out = tmp_path / "candidates.jsonl"
    args = ["generate", source, "-o", out, "--model", tiny_model, "--n", 2]
    args += ["--max-new-tokens", 6, "--record-logprobs", "-q"]
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (record,) = read_jsonl(out)
    assert all("logprob_mean" in c for c in record["candidates"] if c["text"])


def test_confidence_reads_recorded_values_without_loading_a_model(monkeypatch):
    def no_load(options):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("bon.reranker.load_engine", no_load)
    record = {
        "prompt": "Hi",
        "candidates": [
            {"text": "Hello", "logprob_mean": -1.5, "self_certainty": 3.0},
            {"text": "Hey there", "logprob_mean": -0.25},
            {"text": ""},  # an empty candidate has nothing to be sure of
        ],
    }
    (out,) = bon.score_records([record], scorers=["confidence"])
    scores = [c["scores"]["confidence"] for c in out["candidates"]]
    assert scores[:2] == [-1.5, -0.25]
    assert math.isnan(scores[2])
    assert out["candidates"][0]["confidence"] == {"source": "generator"}
    (chosen,) = bon.rerank_records([record], scorers=["confidence"])
    assert chosen["selected"]["index"] == 1


def test_confidence_falls_back_to_the_scoring_model_for_the_whole_record(tiny_model, engine32):
    records = [
        {"prompt": "Write a haiku about rain.", "responses": ["Rain on the roof.", "Sunny."]},
        {  # one candidate without a recorded value: the record is teacher-forced throughout
            "prompt": "Name a colour.",
            "candidates": [{"text": "Blue.", "logprob_mean": -0.1}, {"text": "Red, I think."}],
        },
    ]
    out = bon.score_records(records, scorers=["confidence"], model=tiny_model, dtype="float32")
    for record, scored in zip(records, out, strict=True):
        texts = [c["text"] for c in scored["candidates"]]
        conversation = [{"role": "user", "content": record["prompt"]}]
        rows = engine32.continuation_logprobs([conversation] * len(texts), texts)
        for candidate, row in zip(scored["candidates"], rows, strict=True):
            assert candidate["scores"]["confidence"] == pytest.approx(sum(row) / len(row), abs=1e-4)
            assert candidate["confidence"] == {"source": "teacher-forced", "tokens": len(row)}
    assert out[0]["scoring"]["confidence"]["model"] == tiny_model


def test_the_fallback_is_cached(tiny_model, tmp_path, monkeypatch):
    records = [{"prompt": "Hi", "responses": ["Hello there.", ""]}]
    options = {"scorers": ["confidence"], "model": tiny_model, "cache_path": str(tmp_path / "c")}
    first = bon.score_records(records, **options)

    def no_load(options):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("bon.reranker.load_engine", no_load)
    again = bon.score_records(records, **options)
    values = [[c["scores"]["confidence"] for c in r[0]["candidates"]] for r in (first, again)]
    assert values[0][0] == values[1][0] < 0
    assert math.isnan(values[0][1]) and math.isnan(values[1][1])
    with pytest.raises(AssertionError, match="a model was loaded"):
        bon.score_records(records, **options, no_cache=True)


class FakeServer:
    """A stdlib HTTP server on 127.0.0.1 answering chat completions with canned log-probabilities
    (the last entry an end-of-turn token, as vLLM lists it) and vLLM's /classify, /tokenize and
    /pooling endpoints with canned logits. Not a model: it checks the requests bon sends."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append((self.path, body))
                self._send(fake.answer(self.path, body))

            def _send(self, payload: dict) -> None:
                data = json.dumps(payload).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, path: str, body: dict) -> dict:
        if path.endswith("/chat/completions"):
            entries = [{"token": t, "logprob": v, "top_logprobs": []} for t, v in TOKENS]
            choice = {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello there"},
                "finish_reason": "stop",
                "logprobs": {"content": entries} if body.get("logprobs") else None,
            }
            usage = {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
            return {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                    "choices": [choice], "usage": usage}  # fmt: skip
        if path.endswith("/classify"):
            probs = [float(len(body["messages"][-1]["content"])), -1.0]
            return {"data": [{"index": 0, "label": None, "probs": probs, "num_classes": 2}]}
        if path.endswith("/tokenize"):
            if "prompt" in body:
                return {"tokens": [99]}
            words = " ".join(m["content"] for m in body["messages"]).replace("<step>", " <step> ")
            return {"tokens": [99 if w == "<step>" else 5 for w in words.split()]}
        if path.endswith("/pooling"):
            return {
                "data": [{"index": 0, "data": [[float(i), 0.0] for i in range(len(body["input"]))]}]
            }
        raise AssertionError(path)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


TOKENS = [("Hello", -0.5), (" there", -1.5), ("<|im_end|>", -0.1)]


@pytest.fixture
def fake():
    server = FakeServer()
    yield server
    server.close()


def test_openai_records_the_mean_without_the_end_of_turn_token(fake):
    engine = load_engine(
        EngineOptions(model="m", engine="openai", engine_args={"base_url": fake.url})
    )
    (row,) = engine.generate(CONVERSATIONS[:1], SamplingOptions(n=1, record_logprobs=True))
    assert row[0].logprob_mean == pytest.approx(-1.0)  # (-0.5 - 1.5) / 2
    assert row[0].self_certainty is None  # a server gives no whole distribution
    assert fake.requests[-1][1]["logprobs"] is True
    (row,) = engine.generate(CONVERSATIONS[:1], SamplingOptions(n=1))
    assert row[0].logprob_mean is None and "logprobs" not in fake.requests[-1][1]


def test_openai_reward_models_through_vllms_pooling_endpoints(fake):
    engine = load_engine(
        EngineOptions(model="m", engine="openai", engine_args={"base_url": fake.url})
    )
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    assert engine.sequence_scores([conversation]) == [[5.0, -1.0]]
    path, body = fake.requests[-1]
    assert path == "/classify" and body["use_activation"] is False
    assert body["messages"] == conversation
    stepped = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "a<step> b<step>"},
    ]
    # /tokenize gives one id per word: "Hi a <step> b <step>" -> the tags at positions 2 and 4.
    assert engine.tag_logits([stepped], "<step>") == [[[2.0, 0.0], [4.0, 0.0]]]
    path, body = fake.requests[-1]
    assert path == "/pooling" and body["task"] == "token_classify"
    assert body["use_activation"] is False
