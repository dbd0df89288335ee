"""IFEval inside bon: packaged prompts, the official checkers offline, and the best-of-N' report."""

from __future__ import annotations

import json
from pathlib import Path

import nltk
import pytest

from bon.errors import RecordError
from bon.evals import ifeval
from bon.evals.ifeval import check, eval_ifeval, label_records, load_prompts


def record(ids: list[str], kwargs: list[dict], prompt: str = "Answer the question.") -> dict:
    return {"id": "hand", "prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs}


LOWERCASE = record(["change_case:english_lowercase"], [{}])
NO_COMMA = record(["punctuation:no_comma"], [{}])
QUOTED = record(["startend:quotation"], [{}])
FEW_SENTENCES = record(
    ["length_constraints:number_sentences"], [{"relation": "less than", "num_sentences": 3}]
)
CAPITAL_WORDS = record(
    ["change_case:capital_word_frequency"],
    [{"capital_relation": "at least", "capital_frequency": 3}],
)


@pytest.mark.parametrize(
    ("rec", "response", "strict", "loose"),
    [
        (LOWERCASE, "all of this answer is in lowercase letters.", 1, 1),
        (LOWERCASE, "This answer starts with a capital letter.", 0, 0),
        (NO_COMMA, "No commas appear in this answer.", 1, 1),
        (NO_COMMA, "Well, here is a comma.", 0, 0),
        (QUOTED, '"The whole answer is quoted."', 1, 1),
        # Loose checking drops a first line of preamble; strict does not.
        (QUOTED, 'Sure, here it is:\n"The whole answer is quoted."', 0, 1),
        (FEW_SENTENCES, "One sentence. Two sentences.", 1, 1),
        (FEW_SENTENCES, "One. Two. Three. Four.", 0, 0),
        (CAPITAL_WORDS, "THIS IS VERY LOUD indeed.", 1, 1),
        (CAPITAL_WORDS, "THIS is quiet.", 0, 0),
        (LOWERCASE, "   ", 0, 0),
    ],
)
def test_checks_hand_written_responses(rec: dict, response: str, strict: int, loose: int) -> None:
    result = check(rec, response)
    assert (result["prompt_strict"], result["prompt_loose"]) == (strict, loose)
    assert result["inst_strict"] == strict and result["inst_loose"] == loose
    assert result["instructions"] == 1


def test_instruction_level_is_the_share_followed() -> None:
    both = record(["change_case:english_lowercase", "punctuation:no_comma"], [{}, {}])
    result = check(both, "lowercase, but with a comma.")
    assert result == {
        "prompt_strict": 0,
        "prompt_loose": 0,
        "inst_strict": 0.5,
        "inst_loose": 0.5,
        "instructions": 2,
    }


def test_every_packaged_prompt_evaluates_offline() -> None:
    """All 541 prompts, including those whose checkers count sentences or tokenize words with
    NLTK's punkt (a LookupError offline without bon's substitution)."""
    prompts = load_prompts()
    response = "First sentence here. SECOND ONE is LOUD! A third, with a comma?"
    results = [check(p, response) for p in prompts]
    assert len(results) == 541
    assert all(0 <= r["inst_strict"] <= r["inst_loose"] <= 1 for r in results)
    assert {r["prompt_strict"] for r in results} == {0, 1}


def test_the_substitution_stays_private() -> None:
    """The installed NLTK and eval_framework are left as they were."""
    import sys

    ifeval.checkers()
    assert nltk.word_tokenize.__module__ == "nltk.tokenize"
    assert "eval_framework.tasks" not in sys.modules


def test_load_prompts_all_and_seeded_subsets() -> None:
    everything = load_prompts()
    assert len(everything) == 541
    assert len({p["id"] for p in everything}) == 541
    first = everything[0]
    assert first["id"] == f"ifeval-{first['key']}"
    assert set(first) == {"id", "prompt", "key", "instruction_id_list", "kwargs"}
    subset = load_prompts(limit=20, seed=0)
    assert subset == load_prompts(limit=20, seed=0)
    assert subset != load_prompts(limit=20, seed=1)
    assert len(subset) == 20 and all(p in everything for p in subset)
    keys = [p["key"] for p in subset]
    assert keys == sorted(keys, key=[p["key"] for p in everything].index)


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"prompt": "x", "kwargs": []}, "instruction_id_list"),
        (
            {"prompt": "x", "instruction_id_list": ["punctuation:no_comma"], "kwargs": []},
            "one entry",
        ),
        ({"prompt": "x", "instruction_id_list": ["made:up"], "kwargs": [{}]}, "made:up"),
    ],
)
def test_records_without_valid_instructions_are_refused(bad: dict, match: str) -> None:
    with pytest.raises(RecordError, match=match):
        check(bad, "a response")


def test_label_records_adds_labels_without_changing_the_input() -> None:
    rec = {
        **LOWERCASE,
        "candidates": [{"text": "these quiet words are all lowercase."}, {"text": "Loud Words."}],
    }
    labelled = label_records([rec])
    assert [c["ifeval"]["prompt_strict"] for c in labelled[0]["candidates"]] == [1, 0]
    assert "ifeval" not in rec["candidates"][0]


def test_instruction_level_curve_is_micro_averaged() -> None:
    """Two prompts with 1 and 3 instructions: the share of all 4 instructions, not the mean of
    the per-prompt shares."""
    one = {"id": "a", "candidates": [_labelled(1.0, 1, score=1.0), _labelled(0.0, 1, score=0.0)]}
    three = {"id": "b", "candidates": [_labelled(0.0, 3, score=1.0), _labelled(1 / 3, 3, 0.0)]}
    curves = ifeval.ifeval_curves([one, three], ["s"])
    inst = curves["inst_strict"]
    assert inst.sizes == [1, 2]
    # The scorer picks candidate 0 in both: 1 of 4 instructions followed.
    assert inst.lines["s"][1] == pytest.approx(1 / 4)
    # The oracle picks 1 of 1 and 1 of 3: 2 of 4.
    assert inst.lines["oracle"][1] == pytest.approx(2 / 4)
    assert curves["prompt_strict"].lines["s"][1] == pytest.approx(0.5)


def _labelled(share: float, count: int, score: float) -> dict:
    labels = {
        "prompt_strict": int(share == 1.0),
        "prompt_loose": int(share == 1.0),
        "inst_strict": share,
        "inst_loose": share,
        "instructions": count,
    }
    return {"text": "t", "scores": {"s": score}, "ifeval": labels}


def test_eval_ifeval_end_to_end_on_the_tiny_model(tiny_model: str, tmp_path: Path) -> None:
    options = {
        "model": tiny_model,
        "max_new_tokens": 24,
        "reranker_model": tiny_model,
        "reranker_max_new_tokens": 16,
        "quiet": True,
    }
    report = eval_ifeval(tmp_path, limit=3, n=2, scorers=("flip", "longest"), **options)
    assert report.records == 3 and report.n == 2
    assert set(report.curves) == {"prompt_strict", "prompt_loose", "inst_strict", "inst_loose"}
    for curve in report.curves.values():
        assert curve.sizes == [1, 2]
        assert set(curve.lines) == {"flip", "longest", "oracle", "random"}
        for line in curve.lines.values():
            assert line[1] <= curve.lines["oracle"][1] + 1e-12
            assert line[0] == pytest.approx(curve.lines["random"][0])
    labelled = [json.loads(x) for x in (tmp_path / "labelled.jsonl").read_text().splitlines()]
    assert [r["id"] for r in labelled] == [p["id"] for p in load_prompts(limit=3)]
    assert all("ifeval" in c and "flip" in c["scores"] for r in labelled for c in r["candidates"])
    saved = json.loads((tmp_path / "ifeval.json").read_text())
    assert saved["curves"]["prompt_strict"]["lines"] == report.curves["prompt_strict"].lines
    assert "## inst_loose" in (tmp_path / "ifeval.md").read_text()
    # A second call resumes every stage: the candidates are not generated again.
    before = (tmp_path / "candidates.jsonl").stat().st_mtime_ns
    again = eval_ifeval(tmp_path, limit=3, n=2, scorers=("flip", "longest"), **options)
    assert (tmp_path / "candidates.jsonl").stat().st_mtime_ns == before
    assert again.to_dict() == report.to_dict()
