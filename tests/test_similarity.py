import pytest

from bon.similarity import load_similarity, normalize, token_f1


@pytest.mark.parametrize(
    ("inferred", "expected"),
    [
        ("Define 'soil degradation'.", 0.5714),
        ("Explain soil degradation, and its causes.", 0.4000),
    ],
)
def test_token_f1_matches_paper_check_values(inferred, expected):
    assert token_f1(inferred, "what is soil degradation?") == pytest.approx(expected, abs=1e-4)


def test_normalize_drops_case_punctuation_and_articles():
    assert normalize("The  Cat, an APPLE; a dog!") == "cat apple dog"
    assert normalize("theme another") == "theme another"  # whole words only


@pytest.mark.parametrize(("a", "b"), [("", "what"), ("what", ""), ("the a an", "what"), ("x", "y")])
def test_token_f1_is_zero_without_common_tokens(a, b):
    assert token_f1(a, b) == 0.0


def test_token_f1_counts_repeated_tokens_as_a_multiset():
    assert token_f1("red red red", "red") == pytest.approx(0.5)


def test_batch_similarity_keeps_order():
    f1 = load_similarity("f1")
    assert f1(["a b", "c"], ["a b", "d"]) == [1.0, 0.0]
