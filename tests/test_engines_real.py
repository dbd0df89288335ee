"""The engine contract on real engines, and the openai engine against a real vLLM server.

`test_contract` runs generate, score and select through the `bon` command (in a subprocess, as
vLLM needs) with each engine on the packaged SmolLM2; every engine must produce the same record
shapes. The openai engine talks to a vLLM server that the `vllm_server` fixture starts on
127.0.0.1 for the session and stops afterwards. Tests marked `vllm` need vLLM installed (CI runs
them in the second environment made by .ci/vllm-env: `pytest -m vllm`).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys
import time

import pytest

from tests.conftest import read_jsonl, run_bon, write_jsonl

PROMPTS = [
    {"id": "capital", "prompt": "What is the capital of France?"},
    {
        "id": "sea",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Write one sentence about the sea."},
        ],
    },
]
N, MAX_NEW_TOKENS, RECONSTRUCTION_TOKENS = 2, 12, 64


@pytest.fixture
def engine_args(request):
    """CLI arguments that pick the engine under test (the openai one gets a live server)."""
    name = request.param
    if name == "hf":
        return ["--engine", "hf"]
    if name == "vllm":
        return ["--engine", "vllm", "--engine-arg", "enforce_eager=true"]
    url = request.getfixturevalue("vllm_server")
    return ["--engine", "openai", "--engine-arg", f"base_url={url}"]


@pytest.mark.parametrize(
    "engine_args",
    [
        "hf",
        pytest.param("vllm", marks=pytest.mark.vllm),
        pytest.param("openai", marks=pytest.mark.vllm),
    ],
    indirect=True,
)
@pytest.mark.slow
def test_contract(tmp_path, engine_args, smollm2_path):
    """generate -> score -> select: the same record shapes whichever engine runs both stages."""
    engine = engine_args[1]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    candidates, scored, selected = (tmp_path / f"{n}.jsonl" for n in ("c", "s", "sel"))
    common = ["--model", "smollm2-135m", *engine_args, "-q"]
    run_bon("generate", prompts, "-o", candidates, "--n", N, "--max-new-tokens", MAX_NEW_TOKENS,
            "--seed", 3, *common)  # fmt: skip
    run_bon("score", candidates, "-o", scored, "--scorer", "flip",
            "--max-new-tokens", RECONSTRUCTION_TOKENS, *common)  # fmt: skip
    run_bon("select", scored, "-o", selected, "-q")

    generated = read_jsonl(candidates)
    assert [r["id"] for r in generated] == ["capital", "sea"]
    for record in generated:
        assert record["generator"]["engine"] == engine
        assert record["generator"]["model"] == "smollm2-135m"
        assert len(record["candidates"]) == N
        spent = record["cost"]["generate"]  # the openai engine does not see the template
        assert (spent["prompt_tokens"] > 0) == (engine != "openai") and spent["seconds"] > 0
        assert spent["completion_tokens"] == sum(c["tokens"] for c in record["candidates"])
        for c in record["candidates"]:
            assert set(c) == {"text", "finish_reason", "tokens", "cost"}
            assert c["cost"]["completion_tokens"] == c["tokens"]
            assert c["text"].strip()
            assert c["finish_reason"] in ("stop", "length")
            assert 1 <= c["tokens"] <= MAX_NEW_TOKENS
            assert c["finish_reason"] == "stop" or c["tokens"] == MAX_NEW_TOKENS
    statuses = []
    for record in read_jsonl(scored):
        assert record["scoring"]["flip"]["engine"] == engine
        spent = record["cost"]["score"]["flip"]
        if not spent.get("cached"):  # scores from an earlier run's cache cost nothing here
            assert (spent["read_tokens"] > 0) == (engine != "openai")
            assert spent["generated_tokens"] > 0
        for c in record["candidates"]:
            assert 0.0 <= c["scores"]["flip"] <= 1.0
            assert c["flip"]["inferred"] or c["scores"]["flip"] == 0.0
            statuses.append(c["flip"]["parse"])
    if engine != "hf":  # structured outputs: reconstructions are the JSON object, whole or cut
        assert set(statuses) <= {"json", "partial-json", "fallback"}, statuses
        assert "json" in statuses, statuses
    for record in read_jsonl(selected):
        assert record["selected"]["by"] == "flip"
        assert 0 <= record["selected"]["index"] < N
        assert record["selected"]["text"].strip()


@pytest.fixture(scope="module")
def served(request):
    """The openai engine on the live vLLM server; closed after the module."""
    from bon.engines import EngineOptions, load_engine

    url = request.getfixturevalue("vllm_server")
    engine = load_engine(EngineOptions(engine="openai", engine_args={"base_url": url}))
    yield engine
    engine.close()


CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Name a colour."}],
]


@pytest.mark.vllm
def test_openai_on_vllm_seeds_n_and_token_counts(served):
    from bon.engines import SamplingOptions

    sampling = SamplingOptions(n=3, temperature=1.0, max_new_tokens=10)
    first = served.generate(CONVERSATIONS, sampling, seeds=[1, 2])
    again = served.generate(CONVERSATIONS, sampling, seeds=[1, 2])
    other = served.generate(CONVERSATIONS, sampling, seeds=[3, 4])
    assert [len(row) for row in first] == [3, 3]
    # Same seed, same samples, up to batch numerics: concurrent requests land in batches of
    # varying make-up (and the second call hits the prefix cache), which can flip a near-tie
    # late in a sample. So the starts must agree exactly.
    assert _starts(first) == _starts(again)
    assert _starts(first) != _starts(other)
    greedy = SamplingOptions(n=1, temperature=0, max_new_tokens=10)
    one = served.generate(CONVERSATIONS[:1], greedy)[0][0]
    assert 1 <= one.tokens <= 10 and one.text
    assert all(1 <= c.tokens <= 10 for row in first for c in row)


def _starts(rows, chars=12):
    return [[c.text[:chars] for c in row] for row in rows]


@pytest.mark.vllm
def test_openai_on_vllm_structured_output_and_logprobs(served):
    from bon.engines import SamplingOptions
    from bon.scorers.flip import JSON_SCHEMA, reconstruction_messages

    sampling = SamplingOptions(n=1, temperature=0, max_new_tokens=96, json_schema=JSON_SCHEMA)
    out = served.generate([reconstruction_messages("Paris is the capital of France.")], sampling)
    text = out[0][0].text
    if out[0][0].finish_reason == "stop":
        assert set(json.loads(text)) == {"REASONING", "INFERRED INSTRUCTION"}
    else:
        assert text.lstrip().startswith('{"REASONING"')
    logprobs = served.continuation_logprobs(CONVERSATIONS[:1], ["The capital of France is Paris."])
    assert len(logprobs[0]) == 7 and all(v <= 0 for v in logprobs[0])
    assert sum(logprobs[0]) / 7 > -4
    (pieces,) = served.token_pieces(["The capital of France is Paris."])
    assert len(pieces) == 7 and "".join(pieces) == "The capital of France is Paris."
    # A real vLLM server takes every optional parameter bon sends (seed, logprobs for n > 1 in
    # the test above, response_format here): none was dropped.
    assert served.describe()["dropped_params"] == []


@pytest.mark.vllm
def test_openai_on_vllm_continues_partial_candidates(served):
    """Pruned best-of-N on an OpenAI-compatible server: the partial answer is sent as an open
    assistant turn the server continues (greedy: the uninterrupted completion), its tokens
    counted with the partial's; a followed continuation streams."""
    import dataclasses

    from bon.engines import SamplingOptions

    for temperature in (0.0, 1.0):
        n = 1 if temperature == 0 else 2
        sampling = SamplingOptions(n=n, temperature=temperature, max_new_tokens=12)
        cut = dataclasses.replace(sampling, max_new_tokens=4)
        first = served.start(CONVERSATIONS, cut, [1, 2])
        partials = [
            [(j, c) for j, c in enumerate(row) if c.finish_reason == "length"] for row in first
        ]
        watched = next(i for i, row in enumerate(partials) if row)
        seen: list[str] = []
        resumed = served.resume(
            CONVERSATIONS, sampling, [1, 2], partials, {(watched, 0): seen.append}
        )
        # streamed as it grows: from the partial to the whole text
        part, final = partials[watched][0][1], resumed[watched][0]
        assert seen[0].startswith(part.text) and seen[-1] == final.text
        assert len(seen) > 1 or final.tokens - part.tokens <= 2
        assert all(b.startswith(a) for a, b in itertools.pairwise(seen))
        for row, done in zip(partials, resumed, strict=True):
            for (_, part), c in zip(row, done, strict=True):
                assert c.text.startswith(part.text) and 4 < c.tokens <= 12
                assert c.finish_reason == "stop" or c.tokens == 12
                assert c.prefill_tokens > 0
        if temperature == 0:  # at bfloat16 a re-read prompt may flip a near-tie later on
            whole = served.generate(CONVERSATIONS, sampling)
            for row, done, one in zip(partials, resumed, whole, strict=True):
                if not row:  # ended within the first segment
                    continue
                a, b = one[0].text, done[0].text
                shared = next(
                    (k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(a)
                )
                assert shared > len(row[0][1].text) + 1


@pytest.mark.vllm
def test_openai_on_vllm_unknown_model_fails_clearly(vllm_server):
    from bon.engines import EngineOptions, SamplingOptions, load_engine
    from bon.errors import EngineError

    options = EngineOptions(
        engine="openai", model="no-such-model", engine_args={"base_url": vllm_server}
    )
    engine = load_engine(options)
    with pytest.raises(EngineError, match="HTTP 404: .*check the model name 'no-such-model'"):
        engine.generate(CONVERSATIONS[:1], SamplingOptions(max_new_tokens=4))


@pytest.mark.vllm
def test_sigterm_mid_run_leaves_no_vllm_process_behind(tmp_path):
    import psutil

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Count to {i}."} for i in range(60)])
    out = tmp_path / "c.jsonl"
    command = [sys.executable, "-m", "bon", "generate", prompts, "-o", out, "--model",
               "smollm2-135m", "--engine", "vllm", "--engine-arg", "enforce_eager=true",
               "--n", 4, "--max-new-tokens", 64, "--batch-size", 4, "-q"]  # fmt: skip
    proc = subprocess.Popen([str(c) for c in command], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None and not _written(out):
        time.sleep(0.2)
    workers = psutil.Process(proc.pid).children(recursive=True)
    try:
        assert workers, "vLLM should run its engine in child processes"
        proc.terminate()
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 143, stderr[-2000:]
        _, alive = psutil.wait_procs(workers, timeout=60)
        assert not alive, f"left behind: {[p.name() for p in alive]}"
    finally:
        for worker in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                worker.kill()
        proc.kill()
    assert 1 <= len(read_jsonl(out)) < 60


def _written(path) -> bool:
    return path.exists() and b"\n" in path.read_bytes()
