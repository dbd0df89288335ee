import pytest

from bon.records import (
    RecordProblem,
    candidates,
    check_candidates,
    check_prompt,
    check_scored,
    content_id,
    conversation,
    fingerprint,
    validated,
)

GOOD = {"prompt": "hi"}


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ([1, 2], "expected a JSON object"),
        ({}, "exactly one of `prompt`"),
        ({"prompt": "a", "messages": []}, "exactly one of `prompt`"),
        ({"prompt": ""}, "`prompt` is empty"),
        ({"prompt": "  "}, "`prompt` is empty"),
        ({"prompt": 3}, "`prompt` must be a string, got int"),
        ({"prompt": "a", "id": ""}, "`id` must be"),
        ({"prompt": "a", "id": [1]}, "`id` must be"),
        ({"prompt": "a", "id": True}, "`id` must be a non-empty string or an integer, got True"),
        ({"prompt": "a", "id": 1.5}, "`id` must be .* got 1.5"),
        ({"prompt": "a", "id": {"k": 1}}, "`id` must be"),
        ({"prompt": "a", "id": None}, "`id` must be"),
        ({"messages": []}, "non-empty list"),
        ({"prompt": "a\ud800b"}, r"`prompt` holds a lone surrogate \(\\ud800 at character 2\)"),
        (
            {"messages": [{"role": "user", "content": "\udc00"}]},
            r"`messages\[0\]\.content` holds a lone surrogate",
        ),
        ({"messages": [{"role": "bot", "content": "x"}]}, r"messages\[0\]\.role"),
        ({"messages": [{"role": "user", "content": 5}]}, r"messages\[0\]\.content"),
        (
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            "last of `messages` must be a user turn",
        ),
    ],
)
def test_bad_prompt_records(record, match):
    with pytest.raises(RecordProblem, match=match):
        check_prompt(record)


@pytest.mark.parametrize(
    ("record", "match"),
    [
        (GOOD, "needs `candidates`"),
        ({**GOOD, "candidates": []}, "candidate list is empty"),
        ({**GOOD, "responses": []}, "candidate list is empty"),
        ({**GOOD, "candidates": "text"}, "`candidates` must be a list, got str"),
        (
            {**GOOD, "candidates": [{"txt": "a"}]},
            r"`candidates\[0\]` must be an object with a string `text`",
        ),
        ({**GOOD, "responses": ["a", 1]}, "`responses` must be a list of strings"),
        ({**GOOD, "responses": ["a", "\ud800"]}, r"`responses\[1\]` holds a lone surrogate"),
        (
            {**GOOD, "candidates": [{"text": "\ud83d"}]},
            r"`candidates\[0\]\.text` holds a lone surrogate",
        ),
    ],
)
def test_bad_candidate_records(record, match):
    with pytest.raises(RecordProblem, match=match):
        check_candidates(record)


def test_scored_record_needs_the_selected_score():
    record = {**GOOD, "candidates": [{"text": "a", "scores": {"flip": 0.5}}, {"text": "b"}]}
    check_scored({**record, "candidates": record["candidates"][:1]}, "flip")
    with pytest.raises(RecordProblem, match=r"candidates\[1\]\.scores\.flip"):
        check_scored(record, "flip")
    with pytest.raises(RecordProblem, match="run `bon score` first"):
        check_scored({**GOOD, "responses": ["a"]}, "flip")


def test_null_scores_stand_for_nan_and_are_accepted():
    record = {**GOOD, "candidates": [{"text": "a", "scores": {"flip": None}}]}
    check_scored(record, "flip")
    with pytest.raises(RecordProblem, match=r"candidates\[0\]\.scores\.flip"):
        check_scored({**GOOD, "candidates": [{"text": "a", "scores": {"flip": "high"}}]}, "flip")
    with pytest.raises(RecordProblem, match=r"candidates\[0\]\.scores\.flip"):
        check_scored({**GOOD, "candidates": [{"text": "a", "scores": None}]}, "flip")


def test_integer_and_string_ids_are_accepted():
    """Integer and string ids pass the check and are kept as given (no content id replaces
    them), while an equal prompt without an id is given one."""
    rows = [(1, {"prompt": "a", "id": 0}), (2, {"prompt": "a", "id": "x"}), (3, {"prompt": "a"})]
    out = list(validated("in.jsonl", rows, check_prompt))
    assert out[:2] == rows[:2]
    assert out[2] == (3, {"id": content_id({"prompt": "a"}), "prompt": "a"})


def test_fingerprint_is_canonical_and_hashes_lone_surrogates():
    assert fingerprint({"a": 1, "b": "é"}) == fingerprint({"b": "é", "a": 1})
    assert len(fingerprint({"a": 1})) == 16
    assert fingerprint({"a": "\ud800"}) != fingerprint({"a": "\udc00"})


def test_empty_response_text_is_a_valid_candidate():
    """An empty response passes the check and stays one candidate with empty text."""
    record = {**GOOD, "id": "e", "responses": [""]}
    assert list(validated("in.jsonl", [(1, record)], check_candidates)) == [(1, record)]
    assert candidates(record) == [{"text": ""}]


def test_conversation_and_candidates_views():
    assert conversation(GOOD) == [{"role": "user", "content": "hi"}]
    assert candidates({**GOOD, "responses": ["x"]}) == [{"text": "x"}]


def test_content_id_depends_on_every_field_not_key_order():
    assert content_id({"prompt": "a", "k": 1}) == content_id({"k": 1, "prompt": "a"})
    assert content_id({"prompt": "a", "k": 1}) != content_id({"prompt": "a", "k": 2})
