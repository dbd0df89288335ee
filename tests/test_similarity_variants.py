"""Similarity variants beyond token F1: ROUGE-L, BLEU, their mix, embedding cosine."""

from __future__ import annotations

import pytest

from bon.errors import ConfigError
from bon.similarity import (
    SIMILARITIES,
    bleu,
    bleu_rouge_l,
    harmonic_mean,
    load_similarity,
    rouge_l,
    token_f1,
)

X = "what is soil degradation?"
X1 = "Define 'soil degradation'."
X2 = "Explain soil degradation, and its causes."


def test_rouge_l_is_lcs_f_measure():
    # LCS of [define, soil, degradation] and [what, is, soil, degradation] is 2: P 2/3, R 1/2.
    assert rouge_l(X1, X) == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert rouge_l("", X) == 0.0
    assert rouge_l(X, X) == pytest.approx(1.0)


def test_bleu_ignores_brevity_and_glued_punctuation():
    assert bleu(X, X) == pytest.approx(1.0)
    assert bleu("soil degradation", X) > 0.5  # a short exact sub-phrase: no brevity penalty
    assert bleu(X1, X) > 0.3  # quotes glued to words do not prevent matches
    assert bleu("cats purr loudly", X) == 0.0
    assert bleu(X1, X) > bleu(X2, X)


def test_bleu_rouge_l_is_their_harmonic_mean():
    assert bleu_rouge_l(X2, X) == pytest.approx(harmonic_mean(bleu(X2, X), rouge_l(X2, X)))
    assert harmonic_mean(0.0, 0.5) == 0.0


def test_cosine_prefers_paraphrase_over_unrelated_text():
    cosine = load_similarity("cosine")
    para, unrelated, empty = cosine(
        ["Tell me what soil degradation means.", "Write a poem about the sea.", ""], [X, X, X]
    )
    assert 0.0 <= unrelated < para <= 1.0
    assert para > 0.6
    assert empty == 0.0
    # Word F1 misses most of the paraphrase; the embedding does not.
    assert token_f1("Tell me what soil degradation means.", X) < para


def test_f1_cosine_is_the_mean():
    pair = ([X2], [X])
    assert load_similarity("f1-cosine")(*pair)[0] == pytest.approx(
        (token_f1(X2, X) + load_similarity("cosine")(*pair)[0]) / 2
    )


@pytest.mark.parametrize("name", sorted(SIMILARITIES))
def test_every_similarity_is_a_batch_function_in_unit_range(name):
    values = load_similarity(name)([X1, X2, X, ""], [X, X, X, X])
    assert len(values) == 4
    assert all(0.0 <= v <= 1.0 for v in values)
    assert values[2] == pytest.approx(1.0, abs=1e-3)
    assert values[3] == 0.0


def test_unknown_similarity_lists_the_known_ones():
    with pytest.raises(ConfigError, match="available: bleu, bleu-rougeL, cosine"):
        load_similarity("bertscore")


def test_unloadable_embedder_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot load embedder"):
        load_similarity("cosine", embedder="/nonexistent/embedder")(["a"], ["b"])
