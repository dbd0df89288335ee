"""The content-addressed score cache: hits make no model call, keys follow the configuration."""

from __future__ import annotations

import hashlib
import sqlite3

import pytest

import bon
import bon.reranker
from bon.cache import CachedScorer, KeyMaker, ScoreCache, score_key
from bon.errors import ConfigError
from bon.scorers import Query, Scored, ScoreOptions, Scorer
from tests.conftest import costless

MESSAGES = [{"role": "user", "content": "Name a colour."}]


class Counting(Scorer):
    """Scores by length and counts the candidates it was asked about."""

    name = "counting"

    def __init__(self, independent: bool = True, tag: str = "v1") -> None:
        super().__init__(ScoreOptions(), lambda: None)
        self.independent = independent
        self.tag = tag
        self.seen: list[str] = []

    def describe(self):
        self.described = getattr(self, "described", 0) + 1
        return {"scorer": self.name, "tag": self.tag}

    def score(self, queries):
        out = []
        for q in queries:
            self.seen.extend(q.candidates)
            out.append([Scored(float(len(t)), {"n": len(q.candidates)}) for t in q.candidates])
        return out


def test_hits_skip_the_scorer_and_only_misses_are_scored(tmp_path):
    cache = ScoreCache(tmp_path / "s.sqlite")
    scorer = Counting()
    cached = CachedScorer(scorer, cache)
    first = cached.score([Query(MESSAGES, ["red", "blue", "red"])])
    assert [s.value for s in first[0]] == [3.0, 4.0, 3.0]
    assert scorer.seen == ["red", "blue"]  # duplicates scored once
    # Fewer candidates (a smaller N), in another order, plus one new: only the new one is scored.
    again = cached.score([Query(MESSAGES, ["blue", "green", "red"])])
    assert [s.value for s in again[0]] == [4.0, 5.0, 3.0]
    assert scorer.seen == ["red", "blue", "green"]
    assert again[0][0].evidence == {"n": 2}  # stored evidence comes back as it was
    assert (cached.hits, cached.misses) == (3, 3)


def test_a_cache_made_with_a_rowid_table_still_reads_and_writes(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:  # the layout bon 0.2.0 and older created
        db.execute(
            "CREATE TABLE scores (key TEXT PRIMARY KEY, value REAL NOT NULL, "
            "evidence TEXT NOT NULL, created REAL NOT NULL)"
        )
        db.execute("INSERT INTO scores VALUES ('k1', 1.5, '{\"n\":1}', 0)")
    cache = ScoreCache(path)
    cache.put_many({"k2": Scored(2.5, {"n": 2})})
    assert cache.get_many(["k1", "k2", "k3"]) == {
        "k1": Scored(1.5, {"n": 1}),
        "k2": Scored(2.5, {"n": 2}),
    }
    fresh = ScoreCache(tmp_path / "new.sqlite")
    (table,) = fresh._db.execute("SELECT sql FROM sqlite_master WHERE name = 'scores'").fetchone()
    assert table.endswith("WITHOUT ROWID")


def test_keys_change_with_configuration_and_conversation(tmp_path):
    cache = ScoreCache(tmp_path / "s.sqlite")
    CachedScorer(Counting(tag="v1"), cache).score([Query(MESSAGES, ["red"])])
    other_config = Counting(tag="v2")
    CachedScorer(other_config, cache).score([Query(MESSAGES, ["red"])])
    assert other_config.seen == ["red"]
    other_prompt = Counting(tag="v1")
    CachedScorer(other_prompt, cache).score([Query([{"role": "user", "content": "x"}], ["red"])])
    assert other_prompt.seen == ["red"]
    assert len(cache) == 3
    assert score_key({"a": 1}, MESSAGES, "red") == score_key({"a": 1}, MESSAGES, "red")
    assert score_key({"a": 1}, MESSAGES, "red") != score_key({"a": 2}, MESSAGES, "red")


def test_key_is_the_hash_of_the_canonical_json_of_its_parts():
    # Pinned: a change of this layout orphans every cached score (bump SCHEMA_VERSION then).
    payload = (
        f'[1,"{bon.__version__}",{{"a":1,"b":"é"}},[{{"content":"Name a colour.","role":"user"}}],'
        '"red"]'
    )
    expected = hashlib.sha256(payload.encode()).hexdigest()
    assert score_key({"b": "é", "a": 1}, MESSAGES, "red") == expected


TRICKY = ["red", "", 'say "hi"\n\\ ok', "日本語 \u2028", "red", "lone \ud800 surrogate"]
CONFIG = {"scorer": "x", "nested": {"z": [1, 2.5, None], "a": True}, "ü": "ß"}
CONVERSATION = [
    {"role": "system", "content": 'Be "brief".'},
    {"role": "user", "content": "Übersetze:\n日本"},
]


def test_key_maker_gives_score_key_exactly():
    keys = KeyMaker(CONFIG)
    assert keys.independent(CONVERSATION, TRICKY) == [
        score_key(CONFIG, CONVERSATION, text) for text in TRICKY
    ]
    assert keys.compared(CONVERSATION, TRICKY) == [
        score_key(CONFIG, CONVERSATION, {"candidates": TRICKY, "index": i})
        for i in range(len(TRICKY))
    ]
    assert len(set(keys.independent(CONVERSATION, TRICKY))) == len(set(TRICKY))


def test_configuration_is_described_once_per_cached_scorer(tmp_path):
    scorer = Counting()
    cached = CachedScorer(scorer, ScoreCache(tmp_path / "s.sqlite"))
    for text in ["red", "blue", "red"]:
        cached.score([Query(MESSAGES, [text])])
        assert cached.describe() == {"scorer": "counting", "tag": "v1"}
    assert scorer.described == 1
    assert scorer.seen == ["red", "blue"]


def test_comparing_scorers_are_keyed_by_the_whole_candidate_list(tmp_path):
    cache = ScoreCache(tmp_path / "s.sqlite")
    scorer = Counting(independent=False)
    cached = CachedScorer(scorer, cache)
    cached.score([Query(MESSAGES, ["a", "bb"])])
    cached.score([Query(MESSAGES, ["a", "bb"])])
    assert scorer.seen == ["a", "bb"]
    cached.score([Query(MESSAGES, ["bb", "a"])])  # another order is another comparison
    assert scorer.seen == ["a", "bb", "bb", "a"]


def test_scores_are_committed_per_batch(tmp_path):
    path = tmp_path / "s.sqlite"
    CachedScorer(Counting(), ScoreCache(path)).score([Query(MESSAGES, ["red", "blue"])])
    # Another connection sees the rows before the writer is closed (as after a kill).
    rows = sqlite3.connect(path).execute("SELECT COUNT(*) FROM scores").fetchone()
    assert rows == (2,)
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_an_unwritable_cache_path_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot open the score cache"):
        ScoreCache(blocker / "s.sqlite")


RECORDS = [
    {"id": "a", "prompt": "Name a colour.", "responses": ["Red.", "Blue is a colour.", "Hm"]},
    {"id": "b", "prompt": "Count to three.", "responses": ["1, 2, 3", "one two three"]},
]


def _refuse(options):
    """Stands in for `load_engine`: proves that no model was needed."""
    raise AssertionError("the engine was loaded")


@pytest.mark.slow
@pytest.mark.parametrize("scorer", ["flip", "flip-likelihood", "judge-listwise"])
def test_rescoring_makes_no_model_call(scorer, tiny_model, tmp_path, monkeypatch):
    options = {"model": tiny_model, "max_new_tokens": 4, "cache_path": str(tmp_path / "c.sqlite")}
    first = bon.score_records(RECORDS, scorers=[scorer], **options)
    monkeypatch.setattr(bon.reranker, "load_engine", _refuse)
    # The same records, but for what the rescoring cost (nothing: every score is cached).
    assert costless(bon.score_records(RECORDS, scorers=[scorer], **options)) == costless(first)
    # Selecting by another rule, or rerunning select, needs no model either.
    selected = bon.rerank_records(RECORDS, scorers=[scorer], keep_all=True, **options)
    assert [r["candidates"] for r in selected] == [r["candidates"] for r in first]
    if scorer != "judge-listwise":  # per-candidate scorers: a smaller N is all hits
        fewer = [{**r, "responses": r["responses"][:1]} for r in RECORDS]
        out = bon.score_records(fewer, scorers=[scorer], **options)
        assert [r["candidates"][0] for r in out] == [r["candidates"][0] for r in first]
    with pytest.raises(AssertionError, match="the engine was loaded"):
        bon.score_records(RECORDS, scorers=[scorer], no_cache=True, **options)


def test_cache_options_do_not_change_the_stage_config(tiny_model, tmp_path):
    from bon.reranker import Reranker

    plain = Reranker(ScoreOptions(model=tiny_model, cache_path=str(tmp_path / "a.sqlite")))
    other = Reranker(ScoreOptions(model=tiny_model, no_cache=True))
    assert plain.config() == other.config()
    assert "cache_path" not in plain.config()
    plain.close()
    other.close()


def test_controls_are_not_cached(tmp_path):
    path = tmp_path / "c.sqlite"
    bon.score_records(RECORDS, scorers=["random", "longest", "shortest"], cache_path=str(path))
    assert len(ScoreCache(path)) == 0


def test_default_cache_lives_in_bon_cache_dir(tmp_path, monkeypatch):
    from bon import cache

    monkeypatch.setenv("BON_CACHE_DIR", str(tmp_path))
    assert cache.default_path() == tmp_path / "scores.sqlite"
    store = ScoreCache()
    assert store.path == tmp_path / "scores.sqlite" and store.path.exists()
    store.close()
