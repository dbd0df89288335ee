"""Pruned best-of-N (`--prune-at`, `--keep`, `--prune-by`; `bon.prune`) on the tiny random
Llama at float32: survivors finish exactly as the unpruned run's candidates of the same seed,
keep=1 is the unpruned run, pruning decodes fewer tokens, a pruned candidate is never scored
nor selected, and every bad setting is refused before any model loads."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

import bon
from bon.engines import EngineOptions, SamplingOptions, load_engine
from bon.errors import ConfigError
from bon.generator import GenerateOptions
from bon.prune import kept_count
from bon.select import SelectOptions, select_record

PROMPTS = [{"id": f"p{i}", "prompt": "Tell me about " + "cats and dogs " * i} for i in range(3)]


def common(tiny_model: str) -> dict:
    return dict(
        model=tiny_model,
        reranker_model=tiny_model,
        dtype="float32",
        device="cpu",
        n=4,
        max_new_tokens=16,
        seed=5,
        scorers=("flip-tokens",),
        keep_all=True,
    )


@pytest.fixture(scope="module")
def full(tiny_model):
    return bon.run_records(PROMPTS, **common(tiny_model))


@pytest.fixture(scope="module")
def pruned(tiny_model):
    return bon.run_records(PROMPTS, **common(tiny_model), prune_at=(4, 8), keep=0.5)


def test_the_engine_resumes_a_row_where_an_uninterrupted_call_would_be(tiny_model):
    engine = load_engine(EngineOptions(model=tiny_model, dtype="float32", device="cpu"))
    try:
        conversations = [[{"role": "user", "content": "hi " * k}] for k in (1, 6)]
        sampling = SamplingOptions(n=4, temperature=0.8, top_p=0.9, max_new_tokens=20)
        whole = engine.generate(conversations, sampling, [11, 22])
        first = engine.generate(
            conversations, dataclasses.replace(sampling, max_new_tokens=7), [11, 22]
        )
        partials = [[(1, first[0][1]), (3, first[0][3])], [(0, first[1][0])]]
        resumed = engine.resume(conversations, sampling, [11, 22], partials)
    finally:
        engine.close()
    assert [c.text for c in resumed[0]] == [whole[0][1].text, whole[0][3].text]
    assert resumed[1][0].text == whole[1][0].text
    assert resumed[1][0].tokens == whole[1][0].tokens == 20
    assert resumed[0][0].prefill_tokens == engine.prompt_tokens(conversations[0]) + 7


def test_survivors_go_on_from_the_kept_cache_as_an_uninterrupted_call_would(tiny_model):
    """`start` keeps each call's KV cache: survivors continue from it (nothing read again),
    over two segments, and finish as the uninterrupted call's samples; a followed row's text
    is passed on as it grows and ends as the completion's."""
    engine = load_engine(EngineOptions(model=tiny_model, dtype="float32", device="cpu"))
    conversations = [[{"role": "user", "content": "hi " * k}] for k in (1, 6)]
    sampling = SamplingOptions(n=4, temperature=0.8, top_p=0.9, max_new_tokens=20)
    seen: list[str] = []
    try:
        whole = engine.generate(conversations, sampling, [11, 22])
        first = engine.start(
            conversations, dataclasses.replace(sampling, max_new_tokens=5), [11, 22]
        )
        assert all(c.state is not None for row in first for c in row if c.finish_reason == "length")
        middle = engine.resume(
            conversations,
            dataclasses.replace(sampling, max_new_tokens=9),
            [11, 22],
            [[(0, first[0][0]), (2, first[0][2])], [(1, first[1][1])]],
        )
        last = engine.resume(
            conversations[1:],
            sampling,
            [22],
            [[(1, middle[1][0])]],
            follow={(0, 0): seen.append},
        )
    finally:
        engine.close()
    for c, uninterrupted in zip(middle[0], (whole[0][0], whole[0][2]), strict=True):
        assert uninterrupted.text.startswith(c.text) and c.tokens <= 9
    assert [c.prefill_tokens for row in middle for c in row] == [0, 0, 0]
    assert last[0][0].text == whole[1][1].text and last[0][0].tokens == whole[1][1].tokens
    assert last[0][0].prefill_tokens == 0
    assert seen and seen[-1] == whole[1][1].text
    assert all(b.startswith(a) for a, b in itertools.pairwise(seen))


def test_survivors_finish_as_the_unpruned_candidates_of_the_same_seed(full, pruned):
    survivors = 0
    for whole, cut in zip(full, pruned, strict=True):
        assert len(cut["candidates"]) == 4
        for one, other in zip(whole["candidates"], cut["candidates"], strict=True):
            if "pruned_at" in other:
                assert other["pruned_at"] in (4, 8)
                assert one["text"].startswith(other["text"])
                assert other["scores"] == {"flip-tokens": None}
                assert str(other["pruned_at"]) in other["partial_scores"]
            else:
                survivors += 1
                assert other["text"] == one["text"]
                assert other["tokens"] == one["tokens"]
                assert set(other["partial_scores"]) == {"4", "8"}
        assert sum("pruned_at" not in c for c in cut["candidates"]) == 1  # 4 -> 2 -> 1
    assert survivors == len(PROMPTS)


def test_pruned_candidates_are_never_selected(pruned):
    for record in pruned:
        index = record["selected"]["index"]
        assert index is not None
        assert "pruned_at" not in record["candidates"][index]


def test_the_selector_skips_a_pruned_candidate_whatever_its_score():
    record = {
        "id": "x",
        "prompt": "p",
        "candidates": [
            {"text": "short", "scores": {"s": 9.0}, "pruned_at": 4},
            {"text": "whole", "scores": {"s": 1.0}},
        ],
    }
    assert select_record(record, SelectOptions(by="s"))["selected"]["index"] == 1


def test_pruning_decodes_fewer_tokens_and_counts_what_it_spent(full, pruned):
    for whole, cut in zip(full, pruned, strict=True):
        decoded = sum(c["tokens"] for c in cut["candidates"])
        assert cut["cost"]["generate"]["completion_tokens"] == decoded
        assert decoded < whole["cost"]["generate"]["completion_tokens"]
        spent = cut["cost"]["prune"]
        assert spent["read_tokens"] > 0
        assert spent["prefill_tokens"] == 0  # survivors go on from the kept KV cache
        assert cut["generator"]["prune"] == {"at": [4, 8], "keep": 0.5, "by": "flip-tokens"}
        total = cut["cost"]["total"]["tokens"]
        score = cut["cost"]["score"]["flip-tokens"]["read_tokens"]
        generate = cut["cost"]["generate"]
        parts = generate["prompt_tokens"] + decoded + spent["read_tokens"] + spent["prefill_tokens"]
        assert total == parts + score
    # the score stage reads only the survivors
    for whole, cut in zip(full, pruned, strict=True):
        assert (
            cut["cost"]["score"]["flip-tokens"]["read_tokens"]
            < whole["cost"]["score"]["flip-tokens"]["read_tokens"]
        )


def test_keep_one_is_the_unpruned_run(tiny_model, full):
    kept = bon.run_records(PROMPTS, **common(tiny_model), prune_at=(4, 8), keep=1.0)
    for whole, same in zip(full, kept, strict=True):
        assert [c["text"] for c in same["candidates"]] == [c["text"] for c in whole["candidates"]]
        assert not any("pruned_at" in c for c in same["candidates"])
        assert same["selected"]["index"] == whole["selected"]["index"]
        assert same["cost"]["prune"]["read_tokens"] == 0  # nothing to prune: nothing scored


def test_bon_generate_prunes_with_the_scorer_it_is_given(tiny_model, tmp_path):
    from tests.conftest import read_jsonl, write_jsonl

    source = write_jsonl(tmp_path / "p.jsonl", PROMPTS[:1])
    out = tmp_path / "c.jsonl"
    bon.generate(
        source, out, model=tiny_model, dtype="float32", device="cpu", n=4, max_new_tokens=12,
        prune_at=(6,), keep=0.25, prune_by="relevance",
    )  # fmt: skip
    (record,) = read_jsonl(out)
    assert sum("pruned_at" in c for c in record["candidates"]) == 3
    assert record["cost"]["prune"]["read_tokens"] == 0  # relevance reads no language model


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"keep": 0.0}, r"`keep` must be a number in \(0, 1\], got 0.0"),
        ({"keep": 1.5}, r"`keep` must be a number in \(0, 1\], got 1.5"),
        ({"prune_at": (8, 4)}, r"`prune_at` must be increasing token counts, got \[8, 4\]"),
        ({"prune_at": (4, 4)}, r"`prune_at` must be increasing"),
        ({"prune_at": (16,)}, r"`prune_at` must be below `max_new_tokens` \(16\)"),
        ({"prune_at": (0,)}, r"`prune_at` must be token counts >= 1"),
        ({"prune_at": ("4,x",)}, r"`prune_at` must be token counts >= 1, got '4,x'"),
        ({"prune_by": "flip"}, r"`prune_by` must be a scorer that reads partial responses"),
        ({"prune_by": "judge-pointwise"}, r"reads partial responses \(flip-likelihood"),
        ({"prune_by": "nope"}, r"`prune_by` must be one of"),
        ({"engine_args": {"sample_batching": "prompt"}}, r"continues partial candidates: the hf"),
        ({"record_logprobs": True}, r"`record_logprobs` cannot be combined with `prune_at`"),
    ],
)
def test_bad_pruning_settings_are_refused_before_any_model_loads(values, match):
    settings = {"model": "/no/such/model", "max_new_tokens": 16, "prune_at": (4,), **values}
    with pytest.raises(ConfigError, match=match):
        GenerateOptions(**settings)


def test_checkpoints_come_from_the_command_line_as_comma_separated_counts():
    assert GenerateOptions(prune_at=("4,8",), max_new_tokens=16).prune_at == (4, 8)
    assert GenerateOptions(prune_at=("4", "8"), max_new_tokens=16).prune_at == (4, 8)
    assert GenerateOptions(prune_at=[4, 8], max_new_tokens=16).prune_at == (4, 8)


def test_a_run_refuses_a_first_scorer_that_cannot_read_prefixes_before_loading(tmp_path):
    from tests.conftest import write_jsonl

    source = write_jsonl(tmp_path / "p.jsonl", PROMPTS[:1])
    with pytest.raises(ConfigError, match="reads partial responses"):
        bon.run(source, tmp_path / "out", model="/no/such/model", scorers=("flip",),
                max_new_tokens=16, prune_at=(4,))  # fmt: skip
    with pytest.raises(ConfigError, match="`prune_by` must name the scorer"):
        bon.generate_records(PROMPTS, model="/no/such/model", max_new_tokens=16, prune_at=(4,))


def test_kept_count_rounds_up_and_keeps_one():
    assert [kept_count(8, k) for k in (0.01, 0.25, 0.3, 0.5, 1.0)] == [1, 2, 3, 4, 8]
    assert kept_count(1, 0.5) == 1
    assert kept_count(3, 0.5) == 2


def test_the_cli_takes_the_pruning_flags(tiny_model, tmp_path):
    from click.testing import CliRunner

    from bon.entrypoints.cli import main
    from tests.conftest import read_jsonl, write_jsonl

    source = write_jsonl(tmp_path / "p.jsonl", PROMPTS[:1])
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        ["run", str(source), "-o", str(out), "-m", tiny_model, "--reranker-model", tiny_model,
         "--dtype", "float32", "--device", "cpu", "-n", "4", "--max-new-tokens", "12",
         "--prune-at", "4,8", "--keep", "0.5", "-q"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (record,) = read_jsonl(out / "candidates.jsonl")
    assert sum("pruned_at" in c for c in record["candidates"]) == 3
    help_text = CliRunner().invoke(main, ["generate", "--help"]).output
    assert "--prune-at" in help_text and "--keep" in help_text and "--prune-by" in help_text


def test_a_killed_pruned_run_resumes_record_by_record_and_refuses_other_settings(
    tiny_model, tmp_path
):
    from tests.conftest import without_seconds, write_jsonl

    source = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    out = tmp_path / "c.jsonl"
    settings = dict(
        model=tiny_model, dtype="float32", device="cpu", n=4, max_new_tokens=12,
        prune_at=(4,), keep=0.5, prune_by="relevance",
    )  # fmt: skip
    bon.generate(source, out, **settings)
    whole = without_seconds(out)
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:1]) + lines[1][:40])  # killed while writing record 2
    bon.generate(source, out, **settings)
    assert without_seconds(out) == whole
    with pytest.raises(ConfigError, match="keep"):
        bon.generate(source, out, **{**settings, "keep": 0.75})


def test_serving_prunes_by_the_first_scorer_and_refuses_one_that_cannot_before_loading():
    """`BestOfN` (bon serve, lm-eval) prunes as `bon run` does; tests/test_serve_prune.py
    serves it."""
    from bon.online import BestOfN
    from bon.scorers import ScoreOptions

    options = GenerateOptions(model="/no/such/model", max_new_tokens=16, prune_at=(4,))
    BestOfN(options)  # flip-tokens, the first scorer, reads prefixes; nothing loads
    with pytest.raises(ConfigError, match="`prune_by` must be a scorer that reads partial"):
        BestOfN(options, ScoreOptions(scorers=("mbr",)))


def test_a_candidate_that_ended_before_a_checkpoint_is_neither_scored_nor_pruned():
    """Keeping a finished candidate costs nothing and it may be the pick: only the candidates
    still decoding are ranked, and `keep` is a share of them."""
    from bon.engines import Completion
    from bon.prune import PARTIAL_SCORES, PRUNED_AT, Decoded, _prune

    ended = Completion("short and done", "stop", 3, token_ids=(1, 2, 3))
    going = [Completion(f"still going {k}", "length", 8, token_ids=(1,) * 8) for k in range(4)]
    out = Decoded([[going[0], ended, *going[1:]]], [[{} for _ in range(5)]], 0.0,
                  [{"read_tokens": 0, "generated_tokens": 0, "seconds": 0.0,
                    "prefill_tokens": 0}], [None])  # fmt: skip
    seen: list[list[str]] = []

    def score(rows, texts):
        seen.extend(texts)
        return [[0.1, 0.9, 0.5, 0.3]], [{"read_tokens": 40, "seconds": 0.5}]

    standing = [[0, 1, 2, 3, 4]]
    _prune(out, standing, 8, 0.5, score, higher_is_better=True)
    assert seen == [["still going 0", "still going 1", "still going 2", "still going 3"]]
    assert standing == [[1, 2, 3]]  # the ended one, and the best 2 of the 4 still decoding
    assert [PRUNED_AT in f for f in out.fields[0]] == [True, False, False, False, True]
    assert PARTIAL_SCORES not in out.fields[0][1]
    assert out.prune_costs[0]["read_tokens"] == 40
