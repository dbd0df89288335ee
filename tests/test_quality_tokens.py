"""flip-tokens: per-token aggregations of teacher-forced FLIP (inline numbers, tiny model)."""

from __future__ import annotations

import pytest

import bon
from bon.scorers.base import TOKEN_REDUCTIONS
from bon.scorers.tokens import _REDUCE, combine, reduce_tokens, standardise

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
    # The default mixes in the length: the empty response, with no words and no gain, is last.
    mixed = bon.score_records([RECORD], scorers=["flip-tokens"], **fast)[0]
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
