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


class CountingEmbedder:
    """The real MiniLM behind a thin wrapper that records every text it is asked to embed."""

    def __init__(self, model) -> None:
        self.model = model
        self.calls: list[list[str]] = []

    def encode(self, texts, **kwargs):
        self.calls.append(list(texts))
        return self.model.encode(texts, **kwargs)


@pytest.fixture
def counting_embedder(monkeypatch):
    from bon import similarity

    counting = CountingEmbedder(similarity.load_embedder())
    monkeypatch.setattr(similarity, "load_embedder", lambda *args, **kwargs: counting)
    return counting


def test_cosine_embeds_each_distinct_text_once_in_one_batch(counting_embedder):
    from bon.similarity import cosine_similarity

    instructions = ["Name a colour.", "Count to three."]
    inferred = ["Name a colour.", "Say a colour", "Say a colour", "", "Count to 3", "Say a colour"]
    references = [instructions[0]] * 4 + [instructions[1]] * 2
    scores = cosine_similarity(inferred, references)
    assert len(counting_embedder.calls) == 1
    embedded = counting_embedder.calls[0]
    # Each instruction and each inferred text once; the empty one not at all.
    assert sorted(embedded) == sorted({*inferred, *instructions} - {""})
    assert scores[0] == pytest.approx(1.0, abs=1e-5)
    assert scores[1] == scores[2] > scores[5]  # same pair, same vector; another reference
    assert scores[3] == 0.0
    assert cosine_similarity(["", "x"], [" ", ""]) == [0.0, 0.0]
    assert len(counting_embedder.calls) == 1  # nothing to embed: no call


@pytest.mark.slow
def test_flip_embeds_each_original_instruction_once_per_prompt(counting_embedder, smollm2_path):
    # The real SmolLM2: the tiny random model's reconstructions parse to nothing to embed.
    import bon

    records = [
        {"id": "a", "prompt": "Name a colour.", "responses": ["Red.", "Blue is a colour."]},
        {"id": "b", "prompt": "Count to three.", "responses": ["1, 2, 3"]},
    ]
    out = bon.score_records(
        records, scorers=["flip"], similarity="cosine", model=smollm2_path, max_new_tokens=16,
        no_cache=True, prompt="short",
    )  # fmt: skip
    embedded = [text for call in counting_embedder.calls for text in call]
    assert len(counting_embedder.calls) == 1  # one batch of records, one encode
    for record in records:
        assert embedded.count(record["prompt"]) == 1
    inferred = {c["flip"]["inferred"] for r in out for c in r["candidates"]} - {""}
    assert inferred  # something was reconstructed, so something was compared
    assert set(embedded) == inferred | {r["prompt"] for r in records}
    assert len(embedded) == len(set(embedded))
