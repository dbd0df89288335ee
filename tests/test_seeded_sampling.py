"""The hf engine's default sampling, `sample_batching=seeded`, on the tiny random Llama at
float32: each sample draws from a stream of its own, so a conversation's samples are the same
alone, first or in the middle of a padded batch, at any batch size and after a kill -9 resume;
stop tokens, finish reasons, the context cap and `record_logprobs` behave as in the other modes;
the recorded configuration keeps outputs of the old default (`prompt`) apart."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import bon
from bon.engines import EngineOptions, SamplingOptions, load_engine
from bon.engines.hf import RowSampler, row_seed
from bon.errors import ConfigError, EngineError
from bon.outputs import config_hash, manifest_path
from bon.stages import generate_stage
from tests.conftest import costless, read_jsonl, without_seconds, write_jsonl

SAMPLING = SamplingOptions(n=3, temperature=0.8, top_p=0.9, max_new_tokens=10, seed=0)
CONVERSATIONS = [
    [{"role": "user", "content": " ".join(["word"] * (1 + (i * 7) % 29)) + f" question {i}?"}]
    for i in range(32)
]
"""32 prompts of mixed lengths (1 to 29 padding words)."""
SEEDS = [1000 + 17 * i for i in range(32)]
TARGET = 5
"""A prompt of middling length: padded in a batch holding the longest ones."""


def engine_for(tiny_model: str, batch_size: int = 24, **args):
    options = EngineOptions(
        model=tiny_model, dtype="float32", device="cpu", batch_size=batch_size, engine_args=args
    )
    return load_engine(options)


@pytest.fixture(scope="module")
def engine(tiny_model):
    engine = engine_for(tiny_model)
    yield engine
    engine.close()


def texts(rows) -> list[list[str]]:
    return [[c.text for c in row] for row in rows]


def test_a_conversation_samples_the_same_alone_first_in_the_middle_and_at_other_sizes(
    engine, tiny_model
):
    lengths = [len(engine._encode(engine.render(c))) for c in CONVERSATIONS]
    assert min(lengths) < lengths[TARGET] < max(lengths)  # padded in a batch with the longest
    alone = engine.generate([CONVERSATIONS[TARGET]], SAMPLING, [SEEDS[TARGET]])
    first = engine.generate(
        [CONVERSATIONS[TARGET], *CONVERSATIONS[:TARGET], *CONVERSATIONS[TARGET + 1 :]],
        SAMPLING,
        [SEEDS[TARGET], *SEEDS[:TARGET], *SEEDS[TARGET + 1 :]],
    )
    batched = engine.generate(CONVERSATIONS, SAMPLING, SEEDS)
    assert texts(alone)[0] == texts(first)[0] == texts(batched)[TARGET]
    assert alone[0] == batched[TARGET]  # finish reasons and token counts too
    assert len(set(texts(alone)[0])) == SAMPLING.n  # each sample its own stream
    for batch_size in (3, 7, 96):  # one conversation per call, two, all 32 in one call
        other = engine_for(tiny_model, batch_size=batch_size)
        assert texts(other.generate(CONVERSATIONS, SAMPLING, SEEDS)) == texts(batched)
        other.close()


def test_every_conversation_of_a_batch_samples_as_it_does_alone(engine):
    batched = engine.generate(CONVERSATIONS, SAMPLING, SEEDS)
    for conversation, seed, row in zip(CONVERSATIONS, SEEDS, batched, strict=True):
        assert engine.generate([conversation], SAMPLING, [seed])[0] == row


def test_other_seeds_give_other_samples_and_sample_j_does_not_depend_on_n(engine):
    first = engine.generate(CONVERSATIONS[:4], SAMPLING, SEEDS[:4])
    other = engine.generate(CONVERSATIONS[:4], SAMPLING, [s + 1 for s in SEEDS[:4]])
    for row, other_row in zip(texts(first), texts(other), strict=True):
        assert not set(row) & set(other_row)
    more = engine.generate(CONVERSATIONS[:4], dataclasses.replace(SAMPLING, n=5), SEEDS[:4])
    assert [row[:3] for row in texts(more)] == texts(first)


def test_the_callers_random_state_is_left_alone(engine):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    engine.generate(CONVERSATIONS[:3], SAMPLING, SEEDS[:3])
    assert torch.equal(torch.rand(3), expected)


@pytest.fixture
def stopping(tiny_model):
    """A float32 engine whose head adds a bias to the end-of-turn token's logit, making it about
    1 in 10 at each step: rows stop early while their neighbours go on."""
    engine = engine_for(tiny_model, batch_size=12)
    head = engine.model.get_output_embeddings()
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    biased.weight = head.weight
    with torch.no_grad():
        biased.bias.zero_()
        biased.bias[engine.tokenizer.eos_token_id] = math.log(head.out_features / 9)
    engine.model.set_output_embeddings(biased)
    yield engine
    engine.close()


def test_stop_tokens_finish_reasons_and_logprobs_match_each_conversation_alone(stopping):
    sampling = dataclasses.replace(SAMPLING, temperature=1.0, top_p=1.0, max_new_tokens=12)
    recorded = dataclasses.replace(sampling, record_logprobs=True)
    batched = stopping.generate(CONVERSATIONS[:8], recorded, SEEDS[:8])
    completions = [c for row in batched for c in row]
    reasons = {c.finish_reason for c in completions}
    assert reasons == {"stop", "length"}, reasons
    for c in completions:
        assert "<|im_end|>" not in c.text
        assert c.finish_reason == "stop" or c.tokens == 12
        if c.tokens > (c.finish_reason == "stop"):  # at least one token before any stop
            assert c.logprob_mean is not None and c.logprob_mean < 0 < c.self_certainty
    for i in range(8):
        alone = stopping.generate([CONVERSATIONS[i]], recorded, [SEEDS[i]])[0]
        assert [(c.text, c.finish_reason, c.tokens) for c in alone] == [
            (c.text, c.finish_reason, c.tokens) for c in batched[i]
        ]
        for a, b in zip(alone, batched[i], strict=True):
            if a.logprob_mean is not None:
                assert a.logprob_mean == pytest.approx(b.logprob_mean, abs=1e-4)
                assert a.self_certainty == pytest.approx(b.self_certainty, abs=1e-4)
    plain = stopping.generate(CONVERSATIONS[:8], sampling, SEEDS[:8])
    assert texts(plain) == texts(batched)  # recording log-probabilities changes no sample
    assert all(c.logprob_mean is None for row in plain for c in row)


def long_conversation(engine, room: int) -> list[dict]:
    """A conversation whose rendered prompt leaves `room` tokens of the context."""
    words = 1
    while True:
        conversation = [{"role": "user", "content": "word " * words}]
        left = engine.context_length - len(engine._encode(engine.render(conversation)))
        if left <= room:
            assert left == room, "the padding word is one token; adjust it if not"
            return conversation
        words += max(1, left - room - 1)


def test_the_context_cap_and_prompts_too_long_behave_as_in_the_other_modes(engine):
    near = long_conversation(engine, room=4)
    too_long = [{"role": "user", "content": "word " * (engine.context_length + 10)}]
    out = engine.generate([CONVERSATIONS[0], near, too_long], SAMPLING, [1, 2, 3])
    assert all(c.tokens <= 4 for c in out[1])
    assert any(c.tokens > 4 for c in out[0])  # its neighbour was not capped with it
    assert [c.finish_reason for c in out[2]] == ["error"] * SAMPLING.n
    assert out[0] == engine.generate([CONVERSATIONS[0]], SAMPLING, [1])[0]


def test_the_sampler_draws_from_the_warped_distribution():
    """Temperature, then top-p (transformers' warpers), then Gumbel-max: over many rows the
    frequencies match the warped distribution, and tokens outside the nucleus are never drawn."""
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    sampling = SamplingOptions(n=1, temperature=0.7, top_p=0.8, max_new_tokens=1)
    rows = 20_000
    seeds = [row_seed(seed, 0) for seed in range(rows)]
    sampler = RowSampler(torch, seeds, prompt_width=1, sampling=sampling, device="cpu")
    chosen = sampler(torch.zeros(rows, 1, dtype=torch.long), logits.repeat(rows, 1))
    assert torch.all(chosen.max(dim=-1).values == 0)
    picked = chosen.argmax(dim=-1)
    probs = torch.softmax(logits[0] / 0.7, dim=-1)
    kept = probs.sort(descending=True)
    nucleus = kept.indices[: int((kept.values.cumsum(0) < 0.8).sum()) + 1]
    wanted = torch.zeros_like(probs)
    wanted[nucleus] = probs[nucleus] / probs[nucleus].sum()
    seen = torch.bincount(picked, minlength=6).float() / rows
    assert torch.all(seen[wanted == 0] == 0)
    assert torch.allclose(seen, wanted, atol=0.015)


def test_rows_and_steps_must_be_the_streams():
    sampling = SamplingOptions(n=1, max_new_tokens=2)
    sampler = RowSampler(torch, [row_seed(0, 0)], 1, sampling, "cpu")
    with pytest.raises(EngineError, match="step 1 of 2 rows, but 1 random streams at step 1"):
        sampler(torch.zeros(2, 1, dtype=torch.long), torch.zeros(2, 4))
    sampler(torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 4))
    with pytest.raises(EngineError, match="step 3 of 1 rows, but 1 random streams at step 2"):
        sampler(torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 4))


# The recorded configuration: outputs sampled under the old default (`prompt`) stay apart.

PROMPTS = [{"id": f"p{i}", "prompt": f"Question {i}" + " and more" * (i % 5)} for i in range(6)]


def _options(tiny_model: str, **more) -> dict:
    return {"model": tiny_model, "dtype": "float32", "n": 2, "max_new_tokens": 6, **more}


def test_a_run_records_seeded_and_prompt_records_what_the_old_default_did(tiny_model):
    seeded = bon.GenerateOptions(**_options(tiny_model))
    prompt = bon.GenerateOptions(**_options(tiny_model, engine_args={"sample_batching": "prompt"}))
    greedy = bon.GenerateOptions(**_options(tiny_model, n=1, temperature=0))
    assert generate_stage(seeded).config["engine_args"] == {"sample_batching": "seeded"}
    assert "engine_args" not in generate_stage(prompt).config  # as the old default recorded
    assert "engine_args" not in generate_stage(greedy).config  # the mode changes nothing there
    assert generate_stage(seeded).budget == seeded.batch_size  # records share batches
    assert generate_stage(prompt).budget == prompt.n  # one record per batch


def test_an_output_of_the_old_default_resumes_in_prompt_mode_only(tmp_path, tiny_model):
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    old = tmp_path / "old.jsonl"
    legacy = _options(tiny_model, engine_args={"sample_batching": "prompt"})
    bon.generate(prompts, old, quiet=True, **legacy)
    assert "engine_args" not in json.loads(manifest_path(old).read_text())["config"]
    full = without_seconds(old)
    lines = old.read_bytes().splitlines(keepends=True)
    old.write_bytes(b"".join(lines[:3]))  # as if killed after three records
    with pytest.raises(ConfigError, match="sample_batching=prompt.*--engine-arg sample_batching"):
        bon.generate(prompts, old, quiet=True, **_options(tiny_model))
    report = bon.generate(prompts, old, quiet=True, **legacy)
    assert (report.resumed, report.written) == (3, 3)
    assert without_seconds(old) == full  # byte for byte, but the clock
    # An old output recorded with sample_batching=prompt given resumes too.
    manifest = json.loads(manifest_path(old).read_text())
    manifest["config"]["engine_args"] = {"sample_batching": "prompt"}
    manifest["config_hash"] = config_hash(manifest["config"])
    manifest_path(old).write_text(json.dumps(manifest))
    old.write_bytes(b"".join(lines[:2]))
    assert bon.generate(prompts, old, quiet=True, **legacy).written == 4
    assert without_seconds(old) == full


def _generate(prompts, out, model, batch_size: int = 8) -> list[str]:
    command = [sys.executable, "-m", "bon", "generate", str(prompts), "-o", str(out)]
    command += ["--model", model, "--dtype", "float32", "--n", "2", "--max-new-tokens", "12"]
    return [*command, "--batch-size", str(batch_size), "--seed", "3", "-q"]


def _samples(path) -> list[dict]:
    """The records without `generator.batch_size`, which says how each was batched, and
    without the measured cost (its seconds and share of a batch's time)."""
    rows = costless(read_jsonl(path))
    for row in rows:
        del row["generator"]["batch_size"]
    return rows


@pytest.mark.slow
def test_kill_9_then_rerun_at_another_batch_size_equals_an_uninterrupted_run(tmp_path, tiny_model):
    """Four records per batch, then three in the rerun (batch size is not part of the recorded
    configuration): the rerun's batches hold other neighbours than the first run's."""
    rows = [{"prompt": f"Question {i}?" + " Why" * ((i * 5) % 11)} for i in range(60)]
    prompts = write_jsonl(tmp_path / "p.jsonl", rows)
    out = tmp_path / "c.jsonl"
    proc = subprocess.Popen(_generate(prompts, out, tiny_model), stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) < 6):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 6 <= len(read_jsonl(out)) < 60, "the kill should land mid-run"
    subprocess.run(_generate(prompts, out, tiny_model, batch_size=6), check=True)
    fresh = tmp_path / "fresh.jsonl"
    subprocess.run(_generate(prompts, fresh, tiny_model), check=True)
    assert _samples(out) == _samples(fresh)
    assert len({r["id"] for r in _samples(out)}) == 60
