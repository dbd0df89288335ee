"""The rm and prm scorers and the hf engine's classification calls, on tiny random reward
models (a 2-layer `LlamaForSequenceClassification` with the SmolLM2 tokenizer): the head read at
the last real token under either padding side, the reward model's own chat template, steps and
their tags, the aggregations, and the errors that come before any weights load.
"""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner

import bon
from bon.engines import EngineOptions, load_engine
from bon.engines.hf import HFEngine
from bon.entrypoints.cli import main
from bon.errors import ConfigError, EngineError
from bon.scorers import ScoreOptions
from bon.scorers.reward_models import (
    reduce_steps,
    separator,
    softmax,
    split_steps,
    tag_steps,
)
from tests.conftest import build_tiny_llama, read_jsonl, write_jsonl

TAG = "<step>"
OWN_TEMPLATE = (
    "{% for m in messages %}[{{ m['role'] | upper }}] {{ m['content'] }}\n{% endfor %}[END]"
)


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory, smollm2_path) -> str:
    """A one-output reward model (num_labels=1)."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-rm"), smollm2_path, labels=1)


@pytest.fixture(scope="module")
def tiny_prm(tmp_path_factory, smollm2_path) -> str:
    """A two-label process reward model whose tokenizer knows the step tag as one token."""
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-prm"), smollm2_path, labels=2, tag=TAG)


@pytest.fixture(scope="module")
def rm_engine(tiny_rm):
    engine = load_engine(EngineOptions(model=tiny_rm, dtype="float32", batch_size=8))
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def prm_engine(tiny_prm):
    engine = load_engine(EngineOptions(model=tiny_prm, dtype="float32", batch_size=8))
    yield engine
    engine.close()


def _conversation(prompt: str, response: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


# Close lengths, so that length-sorted batching puts them in one padded batch.
CONVERSATIONS = [
    _conversation("Name a colour.", "Blue."),
    _conversation("Name a colour, please.", "Blue, like the sky."),
    _conversation("Name two colours.", "Red and green."),
    _conversation("Name a fruit.", "An apple a day."),
]


def _unpadded_logits(engine, conversation: list[dict]) -> list[float]:
    """The model's own forward pass over one unpadded conversation (its own pooling)."""
    import torch

    text = engine.tokenizer.apply_chat_template(conversation, tokenize=False)
    ids = engine.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return engine.model(input_ids=ids).logits[0].tolist()


@pytest.mark.parametrize("side", ["left", "right"])
def test_rm_reads_the_last_real_token_under_either_padding(rm_engine, side, monkeypatch):
    expected = [_unpadded_logits(rm_engine, c) for c in CONVERSATIONS]
    batches = []
    real = HFEngine._classify_batch

    def spy(self, sequences, positions):
        batches.append([len(s) for s in sequences])
        return real(self, sequences, positions)

    monkeypatch.setattr(HFEngine, "_classify_batch", spy)
    monkeypatch.setattr(rm_engine.tokenizer, "padding_side", side)
    got = rm_engine.sequence_scores(CONVERSATIONS)
    assert any(len(set(lengths)) > 1 for lengths in batches)  # padding really happened
    assert [len(row) for row in got] == [1] * len(CONVERSATIONS)
    for row, want in zip(got, expected, strict=True):
        assert row == pytest.approx(want, abs=1e-4)
    assert len({round(row[0], 5) for row in got}) == len(got)  # distinct: not one position


def test_rm_renders_with_the_reward_models_own_chat_template(tiny_rm, tmp_path):
    import shutil

    import torch
    from transformers import AutoTokenizer

    folder = tmp_path / "own-template"
    shutil.copytree(tiny_rm, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = OWN_TEMPLATE
    tokenizer.save_pretrained(folder)
    engine = load_engine(EngineOptions(model=str(folder), dtype="float32"))
    try:
        conversation = _conversation("Name a colour.", "Blue.")
        text = "[USER] Name a colour.\n[ASSISTANT] Blue.\n[END]"
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            want = engine.model(input_ids=ids).logits[0].tolist()
        assert engine.sequence_scores([conversation])[0] == pytest.approx(want, abs=1e-5)
    finally:
        engine.close()


def test_a_causal_lm_is_refused_as_a_reward_model_before_it_loads(tiny_model, monkeypatch):
    def no_load(options):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("bon.reranker.load_engine", no_load)
    records = [{"prompt": "Hi", "responses": ["Hello"]}]
    for scorer in ("rm", "prm"):
        with pytest.raises(ConfigError, match=f"{scorer} scorer needs a reward model.*tiny-llama"):
            bon.score_records(records, scorers=[scorer], model=tiny_model)


def test_a_causal_lm_engine_cannot_score_and_a_reward_model_cannot_generate(tiny_model, rm_engine):
    engine = load_engine(EngineOptions(model=tiny_model))
    try:
        with pytest.raises(EngineError, match="has no classification head"):
            engine.sequence_scores(CONVERSATIONS[:1])
    finally:
        engine.close()
    with pytest.raises(EngineError, match="cannot give token log-probabilities"):
        rm_engine.continuation_logprobs([CONVERSATIONS[0][:1]], ["Blue."])


RECORDS = [
    {"id": "a", "prompt": "Name a colour.", "responses": ["Blue.", "Blue, like the sky.", ""]},
    {"id": "b", "prompt": "Name a fruit.", "candidates": [{"text": "An apple a day."}]},
]


def _expected_rm(engine) -> list[list[float]]:
    return [
        [row[0] for row in engine.sequence_scores([_conversation(r["prompt"], t) for t in texts])]
        for r, texts in zip(
            RECORDS, [RECORDS[0]["responses"], [RECORDS[1]["candidates"][0]["text"]]], strict=True
        )
    ]


def test_rm_end_to_end_through_the_python_api(tiny_rm, rm_engine):
    out = bon.score_records(RECORDS, scorers=["rm"], model=tiny_rm, dtype="float32")
    got = [[c["scores"]["rm"] for c in r["candidates"]] for r in out]
    expected = _expected_rm(rm_engine)
    for row, want in zip(got, expected, strict=True):
        assert row == pytest.approx(want, abs=1e-4)
    assert out[0]["scoring"]["rm"]["rm_label"] == 0
    assert "step_tag" not in out[0]["scoring"]["rm"]  # prm's options stay out of rm's key


def test_rm_through_the_cli(tiny_rm, rm_engine, tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", RECORDS)
    out = tmp_path / "scored.jsonl"
    args = ["score", source, "-o", out, "--scorer", "rm", "--model", tiny_rm]
    args += ["--dtype", "float32", "-q"]
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    got = [[c["scores"]["rm"] for c in r["candidates"]] for r in read_jsonl(out)]
    for row, want in zip(got, _expected_rm(rm_engine), strict=True):
        assert row == pytest.approx(want, abs=1e-4)
    other = tmp_path / "other.jsonl"
    bad = CliRunner().invoke(main, [str(a) for a in [*args, "--rm-label", 3, "-o", other]])
    assert bad.exit_code != 0
    assert "`rm_label` must be below the 1 output(s)" in bad.output


def test_rm_label_picks_one_output_of_a_multi_label_head(tiny_prm, prm_engine):
    out = bon.score_records(
        RECORDS[1:], scorers=["rm"], rm_label=1, model=tiny_prm, dtype="float32"
    )
    candidate = out[0]["candidates"][0]
    (logits,) = prm_engine.sequence_scores([_conversation("Name a fruit.", "An apple a day.")])
    assert candidate["scores"]["rm"] == pytest.approx(logits[1], abs=1e-4)
    assert candidate["rm"]["logits"] == pytest.approx(logits, abs=1e-4)


def test_steps_are_split_tagged_and_stray_tags_removed():
    text = "First, add.\n\n  \n\nThen <step>carry.\n\nDone."
    assert split_steps(text, "\n\n", TAG) == ["First, add.", "Then carry.", "Done."]
    assert split_steps(text, "\n", TAG) == ["First, add.", "Then carry.", "Done."]
    assert split_steps("a. b. c.", ". ", TAG) == ["a", "b", "c."]
    assert split_steps(" \n\n ", "\n\n", TAG) == []
    assert tag_steps(["a", "b"], "\n\n", TAG) == "a<step>\n\nb<step>"
    # A shell gives a newline as backslash-n: the default is written so, and read as a newline.
    assert separator("\\n\\n") == separator("\n\n") == "\n\n"
    assert separator(ScoreOptions().of("prm").step_sep) == "\n\n"


def test_step_reductions():
    probs = [0.9, 0.5, 0.8]
    assert reduce_steps(probs, "last") == 0.8
    assert reduce_steps(probs, "min") == 0.5
    assert reduce_steps(probs, "prod") == pytest.approx(0.36)
    assert reduce_steps(probs, "mean") == pytest.approx(2.2 / 3)
    assert softmax([0.0, math.log(3)]) == pytest.approx([0.25, 0.75])


STEPPED = "Add the units.\n\nCarry the one.\nThen the tens.\n\nThe answer is 42."


def test_tag_logits_are_the_heads_logits_at_the_tags_under_either_padding(prm_engine, monkeypatch):
    import torch

    conversations = [
        _conversation("Add 17 and 25.", tag_steps(["Add.", "Carry.", "Done: 42."], "\n\n", TAG)),
        _conversation("Add 1 and 2.", tag_steps(["Add them: 3."], "\n\n", TAG)),
    ]
    expected = []
    model = prm_engine.model
    for conversation in conversations:
        text = prm_engine.tokenizer.apply_chat_template(conversation, tokenize=False)
        ids = prm_engine.tokenizer(text, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            hidden = model.base_model(input_ids=torch.tensor([ids])).last_hidden_state
            logits = model.score(hidden)[0]
        tag_id = prm_engine.tokenizer.convert_tokens_to_ids(TAG)
        expected.append([logits[k].tolist() for k, t in enumerate(ids) if t == tag_id])
    assert [len(rows) for rows in expected] == [3, 1]
    for side in ("left", "right"):
        monkeypatch.setattr(prm_engine.tokenizer, "padding_side", side)
        got = prm_engine.tag_logits(conversations, TAG)
        for rows, want in zip(got, expected, strict=True):
            assert len(rows) == len(want)
            for row, w in zip(rows, want, strict=True):
                assert row == pytest.approx(w, abs=1e-4)


@pytest.mark.parametrize("reduce", ["last", "min", "prod", "mean"])
def test_prm_aggregates_the_step_probabilities(tiny_prm, prm_engine, reduce):
    records = [{"prompt": "Add 17 and 25.", "responses": [STEPPED, "42", "  "]}]
    out = bon.score_records(
        records, scorers=["prm"], model=tiny_prm, dtype="float32", step_reduce=reduce
    )
    candidates = out[0]["candidates"]
    steps = [["Add the units.", "Carry the one.\nThen the tens.", "The answer is 42."], ["42"]]
    conversations = [_conversation("Add 17 and 25.", tag_steps(s, "\n\n", TAG)) for s in steps]
    rows_per_candidate = prm_engine.tag_logits(conversations, TAG)
    for candidate, rows in zip(candidates[:2], rows_per_candidate, strict=True):
        probs = [softmax(row)[1] for row in rows]
        assert candidate["prm"]["steps"] == pytest.approx(probs, abs=1e-4)
        assert candidate["scores"]["prm"] == pytest.approx(reduce_steps(probs, reduce), abs=1e-4)
    assert [len(c["prm"]["steps"]) for c in candidates] == [3, 1, 0]
    assert candidates[2]["scores"]["prm"] == 0.0  # no step, nothing to trust
    assert out[0]["scoring"]["prm"]["step_reduce"] == reduce


def test_prm_splits_on_step_sep_and_reads_another_label(tiny_prm, prm_engine):
    records = [{"prompt": "Add 17 and 25.", "responses": [STEPPED]}]
    out = bon.score_records(
        records, scorers=["prm"], model=tiny_prm, dtype="float32", step_sep="\\n", prm_label=0
    )
    candidate = out[0]["candidates"][0]
    steps = ["Add the units.", "Carry the one.", "Then the tens.", "The answer is 42."]
    (rows,) = prm_engine.tag_logits(
        [_conversation("Add 17 and 25.", tag_steps(steps, "\n", TAG))], TAG
    )
    probs = [softmax(row)[0] for row in rows]
    assert candidate["prm"]["steps"] == pytest.approx(probs, abs=1e-4)
    assert candidate["scores"]["prm"] == pytest.approx(min(probs), abs=1e-4)


def test_an_unknown_step_tag_is_refused_before_the_model_loads(tiny_prm, prm_engine, monkeypatch):
    def no_load(options):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr("bon.reranker.load_engine", no_load)
    records = [{"prompt": "Hi", "responses": ["Hello"]}]
    with pytest.raises(ConfigError, match="`step_tag` '<no-such-tag>' is [0-9]+ tokens"):
        bon.score_records(records, scorers=["prm"], model=tiny_prm, step_tag="<no-such-tag>")
    with pytest.raises(ConfigError, match="is [0-9]+ tokens in model"):
        prm_engine.tag_logits(CONVERSATIONS[:1], "<no-such-tag>")
    with pytest.raises(ConfigError, match="`prm_label` must be an integer >= 0"):
        bon.score_records(records, scorers=["prm"], model=tiny_prm, prm_label=-1)


def test_prm_label_past_the_head_is_a_config_error(tiny_prm):
    records = [{"prompt": "Hi", "responses": ["Hello"]}]
    with pytest.raises(ConfigError, match="`prm_label` must name one of the labels"):
        bon.score_records(records, scorers=["prm"], model=tiny_prm, prm_label=2, no_cache=True)
