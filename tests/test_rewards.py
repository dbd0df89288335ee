"""bon.entrypoints.rewards: scorers as TRL GRPO reward functions, called directly and by one
real `GRPOTrainer` step on the tiny random Llama (which is also the reranker)."""

from __future__ import annotations

import math
import pickle
import sqlite3
from pathlib import Path

import pytest

import bon
from bon.entrypoints.rewards import Reward, flip_reward
from bon.errors import ConfigError, EngineError, RecordError
from tests.conftest import write_jsonl

PROMPTS = ["Say hello.", "Say hello.", "Name a fruit.", "Name a fruit.", "Name a fruit."]
COMPLETIONS = ["Hello there!", "Hi", "A banana is a fruit.", "Apple.", "Pears are sweet and green."]


@pytest.fixture
def reward(tiny_model: str, tmp_path: Path) -> Reward:
    made = flip_reward(model=tiny_model, device="cpu", cache_path=str(tmp_path / "s.sqlite"))
    yield made
    made.close()


def test_completions_of_one_prompt_form_one_record(reward: Reward, tmp_path: Path) -> None:
    values = reward(PROMPTS, COMPLETIONS)
    assert len(values) == 5 and all(isinstance(v, float) and math.isfinite(v) for v in values)
    # flip-tokens (with its length term) is a sum of standard scores within a record: each
    # prompt's rewards add up to 0, which they would not if the groups were mixed.
    assert sum(values[:2]) == pytest.approx(0, abs=1e-6)
    assert sum(values[2:]) == pytest.approx(0, abs=1e-6)
    assert len(set(values[2:])) == 3
    with sqlite3.connect(tmp_path / "s.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == 5
    assert reward(PROMPTS, COMPLETIONS) == values  # served by the cache, same values


def test_chat_format_gives_the_same_rewards(reward: Reward) -> None:
    chats = [[{"role": "user", "content": p}] for p in PROMPTS]
    replies = [[{"role": "assistant", "content": c}] for c in COMPLETIONS]
    assert reward(chats, replies) == pytest.approx(reward(PROMPTS, COMPLETIONS))


def test_lower_is_better_scorers_are_negated() -> None:
    shortest = Reward("shortest")
    assert shortest(["Say hi."] * 2, ["hi", "hello there"]) == [-2.0, -11.0]
    assert shortest.__name__ == "bon_shortest"


def test_options_are_checked_at_once_and_the_model_loads_on_first_call(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="`token_reduce` must be one of"):
        flip_reward(token_reduce="median")
    lazy = flip_reward(model=str(tmp_path / "missing-model"), device="cpu")
    with pytest.raises(EngineError, match="cannot load model"):
        lazy(["Say hi."], ["hi"])


def test_mismatched_inputs_and_unscorable_prompts() -> None:
    longest = Reward("longest")
    with pytest.raises(RecordError, match="2 prompts and 1 completions"):
        longest(["a", "b"], ["x"])
    # A conversation ending with an assistant turn has no instruction to score against.
    prefilled = [[{"role": "assistant", "content": "Sure"}], "Say hi."]
    assert longest(prefilled, ["x", "hey"]) == [None, 3.0]


def test_a_used_reward_pickles_without_its_model(reward: Reward) -> None:
    reward(PROMPTS[:2], COMPLETIONS[:2])
    copy = pickle.loads(pickle.dumps(reward))
    assert copy._reranker is None and copy.options == reward.options


def test_one_grpo_step_with_the_flip_reward(
    reward: Reward, tiny_model: str, tmp_path: Path
) -> None:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    data = Dataset.from_list(
        [{"prompt": [{"role": "user", "content": text}]} for text in ("Say hi.", "Name a fruit.")]
    )
    config = GRPOConfig(
        output_dir=str(tmp_path / "grpo"),
        per_device_train_batch_size=4,
        num_generations=2,
        max_completion_length=8,
        max_steps=1,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        seed=0,
    )
    trainer = GRPOTrainer(model=tiny_model, reward_funcs=[reward], args=config, train_dataset=data)
    trainer.train()
    assert reward.calls == 1
    logged = trainer.state.log_history[0]
    assert math.isfinite(logged["rewards/bon_flip_tokens/mean"])
    assert logged["rewards/bon_flip_tokens/mean"] == pytest.approx(0, abs=1e-5)


def test_new_scorers_serve_as_rewards_with_their_own_options(tmp_path: Path) -> None:
    vote = Reward("vote", answer="text")
    assert vote(["Capital?"] * 3, ["Paris.", "paris", "Lyon"]) == pytest.approx(
        [2 / 3, 2 / 3, 1 / 3]
    )
    with pytest.raises(ConfigError, match="`answer` must be one of boxed, number, regex, text"):
        Reward("vote", answer="median")
    relevance = Reward("relevance", cache_path=str(tmp_path / "s.sqlite"))
    on, off = relevance(["Name a fruit."] * 2, ["An apple is a fruit.", "Stocks fell today."])
    assert on > off
    records = [
        {
            "prompt": f"Question {i}?",
            "candidates": [
                {"text": "word " * (3 + i), "label": 1},
                {"text": "word", "label": 0},
            ],
        }
        for i in range(6)
    ]
    selector = tmp_path / "sel.yaml"
    write_jsonl(tmp_path / "labelled.jsonl", records)
    bon.fit(tmp_path / "labelled.jsonl", selector, scorers=("longest",), folds=2)
    mix = Reward("mix", mix=str(selector))
    longer, shorter = mix(["Say more."] * 2, ["one two three four", "one"])
    assert longer > shorter
