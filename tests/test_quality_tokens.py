"""flip-tokens: per-token aggregations of teacher-forced FLIP (inline numbers, tiny model)."""

from __future__ import annotations

import pytest

import bon
from bon.scorers import ScoreOptions
from bon.scorers.tokens import (
    _REDUCE,
    TOKEN_REDUCTIONS,
    combine,
    reduce_tokens,
    sentence_spans,
    standardise,
)

RECORD = {
    "id": "sky",
    "prompt": "Explain why the sky looks blue during the day",
    "responses": ["Air scatters blue light more than red.", "Bananas are yellow.", ""],
}


def test_every_declared_reduction_is_implemented():
    assert set(TOKEN_REDUCTIONS) == set(_REDUCE)


def test_gain_credits_only_tokens_made_likelier_than_the_prior():
    prior = [-2.0, -3.0]
    rows = [[-1.0, -5.0], [-2.5, -3.5], [-2.0, -1.0]]
    assert reduce_tokens(rows, prior, "gain") == pytest.approx([0.5, 0.0, 1.0])
    # The mean would rank the first candidate below the second; the clipped gain does not.
    assert reduce_tokens(rows, prior, "mean") == pytest.approx([-3.0, -3.0, -1.5])


def test_z_and_rank_ignore_tokens_every_candidate_predicts_alike():
    # Token 0 is a topic word all candidates predict; token 1 a constraint only one meets.
    rows = [[-0.5, -6.0], [-0.5, -1.0], [-0.5, -6.0]]
    for how in ("z", "rank"):
        values = reduce_tokens(rows, [-4.0, -6.0], how)
        assert values[1] > values[0] == pytest.approx(values[2])
    # A large gap on one token counts no more than a small one once standardised.
    assert reduce_tokens([[0.0, -1.0], [-9.0, 0.0]], [0.0, 0.0], "z") == pytest.approx(
        [0.0, 0.0], abs=1e-5
    )


def test_sentence_spans_end_at_punctuation_and_line_breaks():
    pieces = ["Write", " a", " poem", ".", " Use", " no", " commas", ":\n", "ok", "!", " P", ".S"]
    assert sentence_spans(pieces) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9], [10, 11]]
    assert sentence_spans(["Hi", "!", "\n", "\n", "Bye"]) == [[0, 1, 2, 3], [4]]
    assert sentence_spans([]) == []


def test_weakest_scores_the_least_gained_sentence():
    # Two sentences: a topic (tokens 0-1) and a constraint (token 2), with the prior at 0.
    rows = [[3.0, 3.0, -2.0], [1.0, 1.0, 1.0]]
    spans = [[0, 1], [2]]
    assert reduce_tokens(rows, [0.0] * 3, "weakest", spans) == pytest.approx([-2.0, 1.0])
    # Read as one span, the topic outweighs the missed constraint.
    assert reduce_tokens(rows, [0.0] * 3, "weakest") == pytest.approx([4 / 3, 1.0])


def test_sentences_mixes_the_mean_sentence_with_the_weakest():
    # Topic sentence (tokens 0-1) and constraint (token 2); prior 0. The first candidate gains
    # most per token but misses the constraint; the second gains on both.
    rows = [[4.0, 4.0, -3.0], [1.5, 1.5, 1.0], [0.0, 0.0, 0.0]]
    spans = [[0, 1], [2]]
    values = reduce_tokens(rows, [0.0] * 3, "sentences", spans)
    assert values[1] > values[0] > values[2]
    # Read as one sentence, the mean and the weakest agree: 1.5 standard scores each.
    one = reduce_tokens(rows, [0.0] * 3, "sentences")
    assert one == pytest.approx(1.5 * standardise([5 / 3, 4 / 3, 0.0]))
    assert ScoreOptions().of("flip-tokens").token_reduce == "sentences"


def test_empty_inputs():
    assert reduce_tokens([], [], "z") == []
    assert reduce_tokens([[], []], [], "gain") == [0.0, 0.0]


@pytest.fixture
def fast(tiny_model, tmp_path):
    return {"model": tiny_model, "dtype": "float32", "cache_path": str(tmp_path / "s.sqlite")}


def test_mean_reduction_equals_flip_likelihood(fast):
    both = bon.score_records(
        [RECORD],
        scorers=["flip-likelihood", "flip-tokens"],
        token_reduce="mean",
        length_weight=0.0,
        **fast,
    )[0]
    for candidate in both["candidates"]:
        assert candidate["scores"]["flip-tokens"] == pytest.approx(
            candidate["scores"]["flip-likelihood"], abs=1e-4
        )
    assert both["scoring"]["flip-tokens"]["reduce"] == "mean"
    assert "token_reduce" not in both["scoring"]["flip-likelihood"]


def test_empty_response_gains_nothing_and_scores_depend_on_the_record(fast):
    out = bon.score_records(
        [RECORD], scorers=["flip-tokens"], token_reduce="gain", length_weight=0.0, **fast
    )[0]
    values = [c["scores"]["flip-tokens"] for c in out["candidates"]]
    assert values[2] == 0.0  # the empty response is the prior itself
    assert all(v >= 0.0 for v in values)
    assert [c["flip-tokens"]["gain"] for c in out["candidates"]] == pytest.approx(values, abs=1e-4)
    # Mixed with the length (the default): the empty response, with no words and no gain, is last.
    mixed = bon.score_records([RECORD], scorers=["flip-tokens"], token_reduce="gain", **fast)[0]
    scores = [c["scores"]["flip-tokens"] for c in mixed["candidates"]]
    assert scores[2] == min(scores) and mixed["scoring"]["flip-tokens"]["length_weight"] == 0.5
    # z compares candidates: dropping one changes the others' scores.
    z3 = bon.score_records([RECORD], scorers=["flip-tokens"], token_reduce="z", **fast)[0]
    two = {**RECORD, "responses": RECORD["responses"][:2]}
    z2 = bon.score_records([two], scorers=["flip-tokens"], token_reduce="z", **fast)[0]
    assert z2["candidates"][0]["scores"]["flip-tokens"] != pytest.approx(
        z3["candidates"][0]["scores"]["flip-tokens"]
    )


def test_length_term_breaks_ties_but_does_not_outweigh_a_clear_gain():
    assert combine([0.2, 0.1], [5, 50], 0.0) == [0.2, 0.1]
    tied = combine([0.2, 0.2], [5, 50], 0.5)
    assert tied[1] > tied[0]
    # Three candidates: a clearly better gain beats a much longer answer at weight 0.5.
    mixed = combine([0.9, 0.1, 0.1], [20, 400, 20], 0.5)
    assert mixed[0] == max(mixed)
    assert combine([0.3, 0.3], [7, 7], 0.5) == [0.0, 0.0]
    assert standardise([2.0, 4.0]).tolist() == [-1.0, 1.0]


def test_weakest_reads_the_engines_tokens(fast):
    from bon.engines import load_engine
    from bon.scorers import ScoreOptions

    engine = load_engine(ScoreOptions(model=fast["model"], dtype="float32"))
    text = "Say hi. Use capitals!\nEnd with ok"
    (pieces,) = engine.token_pieces([text])
    (row,) = engine.continuation_logprobs([[{"role": "user", "content": "x"}]], [text])
    assert len(pieces) == len(row) and "".join(pieces) == text
    assert len(sentence_spans(pieces)) == 3
    engine.close()
    out = bon.score_records(
        [{**RECORD, "prompt": text}], scorers=["flip-tokens"], token_reduce="weakest", **fast
    )[0]
    assert out["scoring"]["flip-tokens"]["reduce"] == "weakest"
    assert all("weakest" in c["flip-tokens"] for c in out["candidates"])
