"""The scorers that need no generator model: `mbr`, `vote` (bon.scorers.consensus) and
`relevance` (bon.scorers.relevance), on tiny inline data with exact expectations."""

from __future__ import annotations

import math
import re

import pytest
from click.testing import CliRunner

import bon
from bon import similarity
from bon.entrypoints.cli import main
from bon.errors import ConfigError, InputError
from bon.records import RecordProblem
from bon.reranker import Reranker
from bon.scorers import Query, ScoreOptions, scorers
from bon.scorers.consensus import extract_answer, min_max, normalize_number
from tests.conftest import read_jsonl, write_jsonl

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
BASE = ("scorer", "higher_is_better", "version")


def _no_engine():
    raise AssertionError("this scorer must not load the scoring engine")


def _scorer(name: str, **options):
    return scorers.get(name)(ScoreOptions.from_keywords(scorers=(name,), **options), _no_engine)


def _values(name: str, candidates: list[str], scores=(), **options) -> list[float]:
    (row,) = _scorer(name, **options).score([Query(QUESTION, candidates, tuple(scores))])
    return [s.value for s in row]


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
    counting = CountingEmbedder(similarity.load_embedder())
    monkeypatch.setattr(similarity, "load_embedder", lambda *args, **kwargs: counting)
    return counting


# mbr


PARAPHRASES = [
    "The capital of France is Paris.",
    "Paris is the capital of France.",
    "France's capital city is Paris.",
    "Bananas are a yellow fruit rich in potassium.",
]


def test_mbr_is_the_mean_similarity_to_the_other_candidates():
    # f1: "a b" agrees fully with its twin and not at all with "c"; itself is not counted.
    assert _values("mbr", ["a b", "a b", "c"]) == [0.5, 0.5, 0.0]
    assert _values("mbr", ["a", "b"]) == [0.0, 0.0]
    assert _values("mbr", ["red apple", "red pear", "green pear"]) == pytest.approx(
        [0.25, 0.5, 0.25]
    )


def test_mbr_scores_the_outlier_lowest_and_a_lone_candidate_zero():
    values = _values("mbr", PARAPHRASES)
    assert values.index(min(values)) == 3
    assert min(values[:3]) > values[3]
    assert _values("mbr", ["Paris."]) == [0.0]


def test_mbr_with_cosine_embeds_each_candidate_once(counting_embedder):
    values = _values("mbr", PARAPHRASES, similarity="cosine")
    assert values.index(min(values)) == 3
    assert min(values[:3]) > values[3] + 0.2
    assert len(counting_embedder.calls) == 1
    assert sorted(counting_embedder.calls[0]) == sorted(PARAPHRASES)
    assert _values("mbr", ["Paris."], similarity="cosine") == [0.0]


def test_mbr_never_lets_an_empty_response_win(monkeypatch):
    assert _values("mbr", ["", "x y", "x y"]) == [0.0, 0.5, 0.5]
    scorer = _scorer("mbr")
    # Even under a similarity that calls everything identical, a blank response scores 0.
    monkeypatch.setattr(scorer, "_similarity", lambda p, r: [1.0] * len(p))
    (row,) = scorer.score([Query(QUESTION, [" ", "x", "y"])])
    assert [s.value for s in row] == [0.0, 1.0, 1.0]


def test_mbr_scores_each_record_apart_in_one_batch():
    scorer = _scorer("mbr")
    rows = scorer.score([Query(QUESTION, ["x", "x", "y"]), Query(QUESTION, ["y"])])
    assert [[s.value for s in row] for row in rows] == [[0.5, 0.5, 0.0], [0.0]]


# vote: extraction


@pytest.mark.parametrize(
    ("text", "mode", "expected"),
    [
        (r"So \boxed{\frac{1}{2}}.", "boxed", r"\frac{1}{2}"),
        (r"\boxed{1} then \boxed{x^{2} + \sqrt{y}}", "boxed", r"x^{2} + \sqrt{y}"),
        (r"\boxed{7} but \boxed{8", "boxed", "7"),  # the last balanced one
        (r"\boxed{ 1,000 }", "boxed", "1000"),  # a boxed number is normalised
        (r"\boxed{}", "boxed", None),
        ("no box here", "boxed", None),
        ("He paid $1,000 in total.", "number", "1000"),
        ("Step 1: 500 + 500 = 1000.0", "number", "1000"),
        ("It costs 2.50 dollars, not 3.", "number", "3"),
        ("The change is -0.50.", "number", "-0.5"),
        ("pages 3-5", "number", "5"),
        ("1,000,000 people", "number", "1000000"),
        ("no digits", "number", None),
        ("  The Answer is PARIS. ", "text", "the answer is paris"),
        ("Paris!?", "text", "paris"),
        ("...", "text", None),
    ],
)
def test_extract_answer(text, mode, expected):
    assert extract_answer(text, mode) == expected


def test_extract_answer_by_regex_reads_the_last_match():
    grouped = re.compile(r"answer: (\w+)")
    assert extract_answer("answer: a, no, answer: B", "regex", grouped) == "B"
    assert extract_answer("no answer here", "regex", grouped) is None
    assert extract_answer("x 12 y 13", "regex", re.compile(r"\d+")) == "13"  # no group: all
    assert extract_answer("answer: 1,000", "regex", re.compile(r"answer: ([\d,]+)")) == "1000"


def test_number_normalisation():
    assert {normalize_number(n) for n in ("1,000", "1000", "1000.0", "01000.00")} == {"1000"}
    assert normalize_number("-0.0") == "0"
    assert normalize_number("0.250") == "0.25"


# vote: shares


def _vote(candidates, scores=(), **options):
    (row,) = _scorer("vote", **options).score([Query(QUESTION, candidates, tuple(scores))])
    return [s.value for s in row], [s.evidence for s in row]


def test_vote_scores_the_share_of_candidates_giving_the_same_answer():
    values, evidence = _vote(["It is 42.", "42", "Maybe 7", "I cannot say"])
    assert values == [0.5, 0.5, 0.25, 0.0]
    assert evidence == [
        {"answer": "42", "votes": 2},
        {"answer": "42", "votes": 2},
        {"answer": "7", "votes": 1},
        {"answer": None},
    ]


def test_vote_ties_score_equal_and_the_lowest_index_is_selected():
    values, evidence = _vote(["1", "2", "2", "1", "3"])
    assert values == [0.4, 0.4, 0.4, 0.4, 0.2]
    assert [e["votes"] for e in evidence] == [2, 2, 2, 2, 1]
    record = {"prompt": "?", "responses": ["3", "2", "1", "2", "1"]}
    (scored,) = bon.score_records([record], scorers=["vote"])
    (selected,) = bon.select_records([scored], by="vote")
    assert selected["selected"]["index"] == 1  # "2" and "1" tie; "2" comes first


def test_vote_with_no_answer_anywhere_scores_zero():
    values, evidence = _vote(["none", "at all"])
    assert values == [0.0, 0.0]
    assert evidence == [{"answer": None}, {"answer": None}]


def test_vote_modes_agree_across_formats():
    assert _vote([r"\boxed{1,000}", r"so \boxed{1000}", r"\boxed{999}"], answer="boxed")[0] == [
        pytest.approx(2 / 3),
        pytest.approx(2 / 3),
        pytest.approx(1 / 3),
    ]
    texts = ["Final: B", "final: b", "Final: C", "no final"]
    values, _ = _vote(texts, answer="regex", answer_pattern=r"(?i)final: (\w)")
    assert values == [0.25, 0.25, 0.25, 0.0]  # the group is compared as written
    assert _vote(["Paris.", "paris", "Lyon"], answer="text")[0] == pytest.approx(
        [2 / 3, 2 / 3, 1 / 3]
    )


def test_vote_reads_the_whole_response_not_a_clipped_one():
    long = " ".join(["word"] * 300) + r" \boxed{5}"
    values, evidence = _vote([long, r"\boxed{5}"], answer="boxed", max_response_words=10)
    assert values == [1.0, 1.0]
    assert evidence[0]["answer"] == "5"


# vote: weighted


def test_weighted_vote_sums_min_max_normalised_scores():
    # rm 0, 1, 0.5, 0.25 -> weights 0, 1, 0.5, 0.25 (total 1.75); A: 0.5, B: 1.
    scores = [{"rm": 0.0}, {"rm": 1.0}, {"rm": 0.5}, {"rm": 0.25}]
    values, evidence = _vote(["A is 1", "B is 2", "A is 1", "dunno"], scores, weight_by="rm")
    assert values == pytest.approx([0.5 / 1.75, 1 / 1.75, 0.5 / 1.75, 0.0])
    assert evidence[0] == {"answer": "1", "votes": 2, "weight": 0.5}
    assert evidence[3] == {"answer": None}


def test_weighted_vote_respects_a_lower_is_better_score():
    # shortest: lower is better. 10 -> 1, 30 -> 0, 20 -> 0.5.
    scores = [{"shortest": 10.0}, {"shortest": 30.0}, {"shortest": 20.0}]
    values, _ = _vote(["1", "2", "2"], scores, weight_by="shortest")
    assert values == pytest.approx([1 / 1.5, 0.5 / 1.5, 0.5 / 1.5])
    assert values[0] > values[1]  # the plain vote would pick "2"


def test_weighted_vote_with_equal_scores_is_the_plain_vote():
    scores = [{"rm": 3.0}] * 4
    assert _vote(["42", "42", "7", "x"], scores, weight_by="rm")[0] == [0.5, 0.5, 0.25, 0.0]


def test_min_max_treats_scores_that_are_not_numbers_as_weightless():
    assert min_max([2.0, None, float("nan"), 4.0, 3.0]) == [0.0, 0.0, 0.0, 1.0, 0.5]
    assert min_max([2.0, 4.0], higher_is_better=False) == [1.0, 0.0]
    assert min_max([None, float("inf")]) == [0.0, 0.0]


def test_weighted_vote_without_the_score_is_a_clear_record_problem():
    scorer = _scorer("vote", weight_by="rm")
    query = Query(QUESTION, ["1", "2"], ({"rm": 1.0}, {"other": 2.0}))
    with pytest.raises(RecordProblem, match=r"candidate 1 has no `rm` score.*--scorer rm"):
        scorer.check(query)
    with pytest.raises(RecordProblem, match="candidate 0 has no `rm` score"):
        scorer.check(Query(QUESTION, ["1", "2"]))
    record = {"id": "q", "prompt": "?", "responses": ["1", "2"]}
    with pytest.raises(InputError, match=r"<records>:1: candidate 0 has no `rm` score"):
        bon.score_records([record], scorers=["vote"], weight_by="rm")


def test_weighted_vote_through_the_api_reads_an_earlier_scorer_of_the_same_run():
    record = {"id": "q", "prompt": "6 times 7?", "responses": ["It is 42.", "42", "I think 7"]}
    (out,) = bon.score_records([record], scorers=["longest", "vote"], weight_by="longest")
    # longest 9, 2, 9 -> weights 1, 0, 1 (total 2); "42": 1, "7": 1.
    assert [c["scores"]["longest"] for c in out["candidates"]] == [9.0, 2.0, 9.0]
    assert [c["scores"]["vote"] for c in out["candidates"]] == [0.5, 0.5, 0.5]
    assert [c["vote"]["weight"] for c in out["candidates"]] == [1.0, 1.0, 1.0]
    plain = bon.score_records([record], scorers=["vote"])[0]["candidates"]
    assert [c["scores"]["vote"] for c in plain] == pytest.approx([2 / 3, 2 / 3, 1 / 3])


def test_weighted_vote_reads_scores_already_in_the_records():
    scored = {
        "id": "q",
        "prompt": "?",
        "candidates": [
            {"text": "1", "scores": {"rm": -2.0}},
            {"text": "2", "scores": {"rm": 0.0}},
            {"text": "1", "scores": {"rm": -1.0}},
        ],
    }
    (out,) = bon.score_records([scored], scorers=["vote"], weight_by="rm")
    # -2, 0, -1 -> 0, 1, 0.5 (total 1.5)
    assert [c["scores"]["vote"] for c in out["candidates"]] == pytest.approx([1 / 3, 2 / 3, 1 / 3])
    assert [c["scores"]["rm"] for c in out["candidates"]] == [-2.0, 0.0, -1.0]  # kept


def test_weighted_vote_through_the_cli(tmp_path):
    source = write_jsonl(
        tmp_path / "in.jsonl",
        [{"id": "q", "prompt": "?", "responses": ["answer 1", "answer 22", "answer 22"]}],
    )
    target = tmp_path / "out.jsonl"
    args = ["score", str(source), "-o", str(target), "--scorer", "shortest", "--scorer", "vote"]
    result = CliRunner().invoke(main, [*args, "--weight-by", "shortest", "-q"])
    assert result.exit_code == 0, result.output
    (out,) = read_jsonl(target)
    # shortest 8, 9, 9 (lower is better) -> weights 1, 0, 0: all the weight on "1".
    assert [c["scores"]["vote"] for c in out["candidates"]] == [1.0, 0.0, 0.0]
    assert out["scoring"]["vote"]["weight_by"] == "shortest"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"answer": "regex"}, r"`answer_pattern` must be set when `answer` is regex"),
        ({"answer": "regex", "answer_pattern": "("}, "`answer_pattern` must be a regular"),
        ({"answer_pattern": r"(\d+)"}, "`answer_pattern` is read only when `answer` is regex"),
        ({"answer": "letter"}, "`answer` must be one of boxed, number, regex, text"),
        ({"weight_by": "vote"}, "`weight_by` must name a score other than vote's own"),
        ({"weight_by": ""}, "`weight_by` must be a score name"),
        (
            {"scorers": ["vote", "longest"], "weight_by": "longest"},
            "computed after vote: list longest before vote",
        ),
    ],
)
def test_bad_vote_options_fail_before_anything_runs(options, message):
    with pytest.raises(ConfigError, match=message):
        ScoreOptions.from_keywords(**{"scorers": ["vote"], **options})


def test_the_cli_reports_a_bad_vote_option(tmp_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"prompt": "?", "responses": ["1"]}])
    args = ["score", str(source), "-o", str(tmp_path / "out.jsonl"), "--scorer", "vote"]
    result = CliRunner().invoke(main, [*args, "--answer", "regex"])
    assert result.exit_code != 0
    assert "`answer_pattern` must be set when `answer` is regex" in result.output


# relevance


def test_relevance_prefers_the_on_topic_response():
    values = _values(
        "relevance",
        [
            "Paris is the capital of France.",
            "Bananas are rich in potassium.",
            "",
        ],
    )
    assert values[0] > values[1] + 0.2
    assert values[2] == 0.0
    assert all(0.0 <= v <= 1.0 for v in values)


def test_relevance_embeds_each_instruction_once_per_record(counting_embedder):
    queries = [
        Query(QUESTION, ["Paris.", "It is Paris.", "Paris.", "Lyon."]),
        Query([{"role": "user", "content": "Name a colour."}], ["Red.", "Blue."]),
    ]
    rows = _scorer("relevance").score(queries)
    assert [len(row) for row in rows] == [4, 2]
    assert len(counting_embedder.calls) == 1  # one batched call for the whole batch
    embedded = counting_embedder.calls[0]
    assert embedded.count(QUESTION[0]["content"]) == 1
    assert embedded.count("Name a colour.") == 1
    assert embedded.count("Paris.") == 1
    assert len(embedded) == 7
    assert rows[0][0].value == rows[0][2].value  # same text, same vector


def test_relevance_reads_responses_cut_to_max_response_words(counting_embedder):
    _scorer("relevance", max_response_words=3).score(
        [Query(QUESTION, ["Paris is the capital, and bananas are yellow."])]
    )
    assert "Paris is the" in counting_embedder.calls[0]


def test_relevance_and_cosine_mbr_share_one_embedder():
    before = similarity.load_embedder.cache_info().misses
    record = {"prompt": "What is the capital of France?", "responses": PARAPHRASES}
    (out,) = bon.score_records([record], scorers=["relevance", "mbr"], similarity="cosine")
    assert similarity.load_embedder.cache_info().misses - before <= 1
    for candidate in out["candidates"]:
        assert all(math.isfinite(v) for v in candidate["scores"].values())


# recorded configurations


def _scoring(**options) -> dict:
    return Reranker(ScoreOptions.from_keywords(**options)).config()["scorers"]


def test_each_new_scorer_records_exactly_its_options():
    blocks = _scoring(scorers=["vote", "mbr", "relevance"])
    assert set(blocks["vote"]) == {*BASE, "answer", "answer_pattern", "weight_by"}
    assert set(blocks["mbr"]) == {*BASE, "similarity", "max_response_words"}
    assert set(blocks["relevance"]) == {*BASE, "embedder", "max_response_words"}
    assert blocks["vote"]["answer"] == "number"
    assert blocks["mbr"]["similarity"] == "f1"
    cosine = _scoring(scorers=["mbr"], similarity="cosine", embedder="elsewhere")["mbr"]
    assert set(cosine) == {*BASE, "similarity", "max_response_words", "embedder"}
    assert cosine["embedder"] == "elsewhere"


def test_new_scorer_configs_ignore_the_scoring_model_and_others_options():
    one = _scoring(scorers=["vote", "mbr", "relevance"])
    other = _scoring(scorers=["vote", "mbr", "relevance"], model="elsewhere", k=9, prompt="short")
    assert one == other
    assert _scoring(scorers=["flip"])["flip"] == _scoring(scorers=["flip"], answer="text")["flip"]
