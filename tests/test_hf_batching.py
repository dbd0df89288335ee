"""The hf engine's sample batching modes (`sample_batching` engine arg) on a tiny random Llama:
shapes and order, seeds, the context cap, fewer `generate` calls, bad values. The default mode,
seeded, has tests of its own in test_seeded_sampling.py."""

import pytest

from bon.engines import EngineOptions, SamplingOptions, load_engine
from bon.errors import ConfigError

CONVERSATIONS = [
    [{"role": "user", "content": "Say hi"}],
    [{"role": "user", "content": "A longer question here, with a few more words?"}],
    [{"role": "user", "content": "Third"}],
]
SAMPLING = SamplingOptions(n=3, temperature=1.0, max_new_tokens=12, seed=1)


def engine_for(tiny_model: str, mode: str, batch_size: int = 8):
    options = EngineOptions(
        model=tiny_model, batch_size=batch_size, engine_args={"sample_batching": mode}
    )
    return load_engine(options)


@pytest.fixture(scope="module")
def grouped(tiny_model):
    return engine_for(tiny_model, "grouped")


@pytest.fixture(scope="module")
def continuous(tiny_model):
    return engine_for(tiny_model, "continuous")


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


@pytest.mark.parametrize("mode", ["grouped", "continuous"])
def test_n_completions_per_conversation_in_input_order(mode, grouped, continuous):
    engine = grouped if mode == "grouped" else continuous
    out = engine.generate(CONVERSATIONS, SAMPLING, seeds=[1, 2, 3])
    assert [len(row) for row in out] == [3, 3, 3]
    for row in out:
        for c in row:
            assert c.finish_reason in ("stop", "length")
            assert 1 <= c.tokens <= 12
            assert c.finish_reason == "stop" or c.tokens == 12
    assert len({c.text for row in out for c in row}) > 3  # sampled, not one text repeated


@pytest.mark.parametrize("mode", ["grouped", "continuous"])
def test_a_prompt_near_the_context_end_is_capped_alone(mode, grouped, continuous):
    engine = grouped if mode == "grouped" else continuous
    near = long_conversation(engine, room=4)
    out = engine.generate([CONVERSATIONS[0], near], SAMPLING, seeds=[1, 2])
    assert all(c.tokens <= 4 for c in out[1])
    assert any(c.tokens > 4 for c in out[0])  # its neighbour was not capped with it


def test_grouped_same_call_same_samples_other_seed_other_samples(grouped):
    first = grouped.generate(CONVERSATIONS, SAMPLING, seeds=[7, 8, 9])
    again = grouped.generate(CONVERSATIONS, SAMPLING, seeds=[7, 8, 9])
    other = grouped.generate(CONVERSATIONS, SAMPLING, seeds=[5, 8, 9])
    assert first == again
    assert first != other


def test_batched_modes_sample_several_conversations_per_generate_call(tiny_model):
    calls = {}
    for mode in ("prompt", "grouped", "seeded"):
        engine = engine_for(tiny_model, mode, batch_size=6)  # two conversations of n=3 per call
        real = engine.model.generate

        def counted(*args, _real=real, _mode=mode, **kwargs):
            calls[_mode] = calls.get(_mode, 0) + 1
            return _real(*args, **kwargs)

        engine.model.generate = counted
        engine.generate(CONVERSATIONS, SAMPLING, seeds=[1, 2, 3])
    assert calls == {"prompt": 3, "grouped": 2, "seeded": 2}


def test_default_is_seeded_and_the_mode_changes_the_identity(tiny_model):
    default = EngineOptions(model=tiny_model)
    grouped = EngineOptions(model=tiny_model, engine_args={"sample_batching": "grouped"})
    assert load_engine(default).engine_args["sample_batching"] == "seeded"
    assert default.identity() != grouped.identity()


def test_an_unknown_mode_says_which_are_allowed(tiny_model):
    with pytest.raises(
        ConfigError, match="`sample_batching` must be one of seeded, prompt, grouped"
    ):
        EngineOptions(model=tiny_model, engine_args={"sample_batching": "dynamic"})
