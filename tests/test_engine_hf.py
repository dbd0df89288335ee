"""The transformers engine on a tiny random Llama: shapes, finish reasons, seeds, templates,
prompts longer than the context."""

import json
import shutil

import pytest
import torch

import bon
from bon.chat import merge_system
from bon.engines import Completion, EngineOptions, SamplingOptions, load_engine
from bon.errors import ConfigError, EngineError, RecordError
from bon.scorers import ScoreOptions, scorers

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


def test_a_records_samples_depend_only_on_its_own_seed(tiny_model):
    """Default n (8) and batch_size (32): four conversations fit one micro-batch unless each
    is seeded apart. The others are longer than b, so a length-sorted batch never starts
    with b."""
    engine = load_engine(EngineOptions(model=tiny_model))
    assert engine.options.batch_size == 32
    sampling = SamplingOptions(n=8, temperature=1.0, max_new_tokens=6)
    b = [{"role": "user", "content": "b"}]
    others = [[{"role": "user", "content": "longer question " * (k + 1)}] for k in range(3)]
    alone = engine.generate([b], sampling, seeds=[42])[0]
    first = engine.generate([b, *others], sampling, seeds=[42, 1, 2, 3])[0]
    middle = engine.generate([others[0], b, *others[1:]], sampling, seeds=[1, 42, 2, 3])[1]
    assert len({c.text for c in alone}) > 1  # eight samples, not one repeated
    assert first == alone
    assert middle == alone


def test_sampling_leaves_the_callers_random_state_alone(engine):
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    engine.generate(CONVERSATIONS, SamplingOptions(n=2, max_new_tokens=4), seeds=[1, 2, 3])
    assert torch.equal(torch.rand(4), expected)


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
        (
            {"n": 8, "temperature": 0},
            r"^`n` must be 1 when `temperature` is 0 \(greedy decoding gives n identical "
            r"candidates\), got 8; set --temperature > 0 or --n 1$",
        ),
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


def test_greedy_with_n_above_one_is_refused_before_any_model_loads():
    with pytest.raises(ConfigError, match="`n` must be 1 when `temperature` is 0"):
        bon.GenerateOptions(model="/no/such/model", temperature=0)
    assert bon.GenerateOptions(temperature=0, n=1).sampling().greedy


@pytest.mark.parametrize("name", ["flip", "judge-pointwise", "judge-pairwise", "judge-listwise"])
def test_greedy_scorers_still_build(name):
    def no_engine():
        raise AssertionError("building a scorer must not load its engine")

    scorer = scorers.get(name)(ScoreOptions(scorers=(name,)), no_engine)
    assert scorer._sampling.n == 1 and scorer._sampling.greedy


CONTEXT = 128


@pytest.fixture(scope="module")
def short_context(tiny_model, tmp_path_factory):
    """The tiny model with a context of 128 tokens (its config says so; the weights are
    the same)."""
    path = tmp_path_factory.mktemp("tiny-short-context")
    shutil.copytree(tiny_model, path, dirs_exist_ok=True)
    config = json.loads((path / "config.json").read_text())
    config["max_position_embeddings"] = CONTEXT
    (path / "config.json").write_text(json.dumps(config))
    return load_engine(EngineOptions(model=str(path), batch_size=4))


def _prompt_of(engine, tokens: int) -> list[dict]:
    """A one-turn conversation whose rendered prompt has exactly `tokens` tokens."""

    def length(conversation: list[dict]) -> int:
        return len(engine.tokenizer(engine.render(conversation), add_special_tokens=False)[0])

    base = length([{"role": "user", "content": ""}])
    conversation = [{"role": "user", "content": " a" * (tokens - base)}]
    assert length(conversation) == tokens
    return conversation


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_a_prompt_longer_than_the_context_gets_error_completions(short_context, temperature):
    n = 1 if temperature == 0 else 3
    too_long, at_limit, near, short = (
        _prompt_of(short_context, t) for t in (CONTEXT + 40, CONTEXT, CONTEXT - 5, 40)
    )
    sampling = SamplingOptions(n=n, temperature=temperature, max_new_tokens=20, seed=3)
    out = short_context.generate([too_long, near, at_limit, short], sampling)
    assert out[0] == [
        Completion("", "error", 0, error=f"prompt has {CONTEXT + 40} tokens; the model's "
                   f"context is {CONTEXT}")
    ] * n  # fmt: skip
    assert out[2] == [
        Completion("", "error", 0, error=f"prompt has {CONTEXT} tokens; the model's context is "
                   f"{CONTEXT}")
    ] * n  # fmt: skip
    # Capped to the 5 tokens left: prompt and completion fit the context.
    assert all(c.finish_reason == "length" and c.tokens == 5 for c in out[1])
    assert len(out[3]) == n and all(c.error is None for c in out[3])
    assert out[3] == short_context.generate([short], sampling)[0]


def test_a_continuation_that_does_not_fit_is_a_record_error_naming_its_row(short_context):
    prompt = _prompt_of(short_context, 100)
    fits = short_context.continuation_logprobs([prompt], [" a" * 28])
    assert len(fits[0]) == 28
    with pytest.raises(
        RecordError,
        match=r"^row 1: the prompt \(100 tokens\) and the "
        r"continuation \(29 tokens\) have 129 tokens; the model takes at most 128",
    ):
        short_context.continuation_logprobs([prompt, prompt], [" a", " a" * 29])  # fmt: skip


def test_describe_names_what_changes_outputs_and_outlives_close(tiny_model):
    engine = load_engine(EngineOptions(model=tiny_model, device="cpu", dtype="float32"))
    expected = {"engine": "hf", "model": tiny_model, "device": "cpu", "dtype": "float32"}
    assert engine.describe() == expected
    engine.close()
    assert json.loads(json.dumps(engine.describe())) == expected
