"""The transformers engine on a tiny random Llama: shapes, finish reasons, seeds, templates."""

import pytest

from bon.chat import merge_system
from bon.engines import EngineOptions, SamplingOptions, load_engine
from bon.errors import ConfigError, EngineError

CONVERSATIONS = [
    [{"role": "user", "content": "Say hi"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "A longer question here?"},
    ],
    [{"role": "user", "content": "Third"}],
]


@pytest.fixture(scope="module")
def engine(tiny_model):
    return load_engine(EngineOptions(model=tiny_model, batch_size=4))


def test_n_completions_per_conversation_in_input_order(engine):
    sampling = SamplingOptions(n=3, temperature=1.0, max_new_tokens=6, seed=1)
    out = engine.generate(CONVERSATIONS, sampling)
    assert [len(c) for c in out] == [3, 3, 3]
    for completions in out:
        for c in completions:
            assert c.finish_reason in ("stop", "length")
            assert 1 <= c.tokens <= 6
            assert c.finish_reason == "stop" or c.tokens == 6


def test_results_do_not_depend_on_input_position(engine):
    greedy = SamplingOptions(n=1, temperature=0, max_new_tokens=8)
    alone = engine.generate(CONVERSATIONS[2:], greedy)[0][0].text
    together = engine.generate(CONVERSATIONS, greedy)[2][0].text
    assert alone == together


def test_same_seed_same_samples_other_seed_other_samples(engine):
    sampling = SamplingOptions(n=2, temperature=1.0, max_new_tokens=8)
    first = engine.generate(CONVERSATIONS[:1], sampling, seeds=[7])
    again = engine.generate(CONVERSATIONS[:1], sampling, seeds=[7])
    other = engine.generate(CONVERSATIONS[:1], sampling, seeds=[8])
    assert first == again
    assert first != other


def test_template_without_system_role_gets_it_merged(tiny_model):
    engine = load_engine(EngineOptions(model=tiny_model))
    engine.tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    engine._system_role = False
    rendered = engine.render(CONVERSATIONS[1])
    assert "<|im_start|>user\nBe brief.\n\nA longer question here?" in rendered


def test_merge_system_without_user_turn():
    assert merge_system([{"role": "system", "content": "s"}]) == [{"role": "user", "content": "s"}]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n": 0}, "`n` must be an integer >= 1, got 0"),
        ({"temperature": -1}, "`temperature` must be >= 0"),
        ({"top_p": 0}, r"`top_p` must be in \(0, 1\]"),
        ({"max_new_tokens": 0}, "`max_new_tokens`"),
    ],
)
def test_sampling_options_are_validated(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SamplingOptions(**kwargs)


def test_engine_options_are_validated_before_loading():
    with pytest.raises(ConfigError, match="`device` must be one of"):
        EngineOptions(device="tpu")
    with pytest.raises(ConfigError, match="`engine` must be one of hf, openai, vllm, got 'nope'"):
        load_engine(EngineOptions(engine="nope"))


def test_a_missing_model_is_an_engine_error(tmp_path):
    with pytest.raises(EngineError, match="cannot load model"):
        load_engine(EngineOptions(model=str(tmp_path / "no-such-model")))
