"""Teacher-forced log-probabilities of the transformers engine: batched, padded and normalised a
few rows at a time, they equal a plain full-vocabulary log-softmax over each pair alone."""

import pytest
import torch

from bon.engines import EngineOptions, load_engine
from bon.engines import hf as hf_engine

CONVERSATIONS = [
    [{"role": "user", "content": "Say hi"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "A much longer question, with several more words in it?"},
    ],
    [{"role": "user", "content": "Third"}],
    [{"role": "user", "content": "Name three colours of the rainbow, please."}],
]
CONTINUATIONS = ["Hello there.", "No.", "A long answer of a dozen or so words in one line.", "x"]


@pytest.fixture(scope="module")
def engine(tiny_model):
    # float32: padded and unpadded forwards then agree to rounding, not to bf16's 3 digits.
    return load_engine(EngineOptions(model=tiny_model, batch_size=3, dtype="float32"))


def plain_logprobs(engine, conversation, continuation):
    """One pair alone: every position's logits, log-softmax over the vocabulary, then pick."""
    prompt = engine._encode(engine.render(conversation))
    target = engine._encode(continuation)
    ids = torch.tensor([prompt + target])
    with torch.inference_mode():
        logits = engine.model(input_ids=ids).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    rows = range(len(prompt) - 1, len(prompt) + len(target) - 1)
    return [logprobs[row, token].item() for row, token in zip(rows, target, strict=True)]


@pytest.mark.parametrize("budget", [None, 1])
def test_batched_logprobs_equal_each_pair_alone(engine, monkeypatch, budget):
    if budget is not None:  # one row per forward pass, one row per log-softmax
        monkeypatch.setattr(hf_engine, "LOGITS_BYTES", {"cpu": budget})
        monkeypatch.setattr(hf_engine, "LOGSOFTMAX_BYTES", budget)
    batched = engine.continuation_logprobs(CONVERSATIONS, CONTINUATIONS)
    for conversation, continuation, row in zip(CONVERSATIONS, CONTINUATIONS, batched, strict=True):
        assert row == pytest.approx(plain_logprobs(engine, conversation, continuation), abs=1e-4)


def test_forward_passes_are_cut_to_the_logits_budget(engine, monkeypatch):
    row_bytes = engine._vocab_size * 4  # float32 logits per position
    monkeypatch.setattr(hf_engine, "LOGITS_BYTES", {"cpu": 3 * 5 * row_bytes})
    targets = [[0] * 4, [0] * 4, [0] * 4, [0] * 4, [0] * 9, [0]]
    # 3 rows of 5 positions fit; a 10-position row fits alone; then a new part begins.
    assert engine._within_logits_budget(list(range(6)), targets) == [[0, 1, 2], [3], [4], [5]]


def test_rows_normalised_in_steps_match_the_whole_batch():
    torch.manual_seed(0)
    logits = torch.randn(5, 7, 300, dtype=torch.bfloat16)
    targets = torch.randint(0, 300, (5, 7))
    whole = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1))[..., 0]
    stepped = hf_engine._target_logprobs(torch, logits, targets)
    assert stepped.dtype == torch.float32
    assert torch.allclose(stepped, whole, atol=1e-5)


def test_length_groups_cut_where_padding_passes_its_share():
    # 100, 95, 90 and 50 fill 335 of 400 cells (84% real); adding 49 would fill 384 of 500.
    assert hf_engine.length_groups([100, 95, 90, 50, 49, 0, 10], 16) == [[0, 1, 2, 3], [4], [6]]
    assert hf_engine.length_groups([10] * 5, 2) == [[0, 1], [2, 3], [4]]
