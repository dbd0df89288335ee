"""Adaptive best-of-N (`bon run --adaptive`, bon.adaptive): waves that reproduce a full run's
samples, the stopping rules, the files and costs a run writes, bad options and resume."""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner

import bon
from bon import adaptive
from bon.entrypoints.cli import main
from bon.errors import ConfigError
from bon.generator import GenerateOptions, Generator
from tests.conftest import costless, read_jsonl, write_jsonl

PROMPTS = [{"id": f"p{i}", "prompt": f"Question {i}" + " and more" * (i % 3)} for i in range(4)]


def _options(tiny_model: str, **more) -> dict:
    """A run on the tiny model at float32, selected by the generator's own confidence (recorded
    as it samples: no scoring model loads)."""
    base = {
        "model": tiny_model,
        "reranker_model": tiny_model,
        "dtype": "float32",
        "device": "cpu",
        "n": 4,
        "max_new_tokens": 8,
        "seed": 5,
        "record_logprobs": True,
        "scorers": ["confidence"],
        "quiet": True,
    }
    return {**base, **more}


def _texts(rows: list[dict]) -> dict[str, list[str]]:
    return {r["id"]: [c["text"] for c in r["candidates"]] for r in rows}


# Unit tests of the rules, on inline data.


def test_waves_double_up_to_n():
    assert adaptive.wave_ends(1) == [1]
    assert adaptive.wave_ends(2) == [2]
    assert adaptive.wave_ends(3) == [2, 3]
    assert adaptive.wave_ends(8) == [2, 4, 8]
    assert adaptive.wave_ends(12) == [2, 4, 8, 12]


def improvement(z: float) -> float:
    """E[max(0, X - z)] for X standard normal: the closed form of one draw's expected gain."""
    density = math.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    return density - z * 0.5 * math.erfc(z / math.sqrt(2))


def test_the_expected_gain_of_one_more_sample_is_the_closed_form():
    # Values with mean 0 and sample sd 1 whose best has standard score z.
    for values in ([1.0, -1.0], [2.0, 0.0, -1.0, -1.0], [0.5, 0.5, -0.5, -0.5]):
        mean = sum(values) / len(values)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        z = (max(values) - mean) / sd
        assert adaptive.expected_gain(values, 1) == pytest.approx(improvement(z), abs=1e-6)


def test_the_expected_gain_grows_with_the_samples_to_come_and_shrinks_with_an_outlier():
    spread = [0.3, 0.1, 0.2, 0.4]
    gains = [adaptive.expected_gain(spread, r) for r in (1, 4, 12)]
    assert gains[0] < gains[1] < gains[2]
    outlier = [5.0, 0.1, 0.2, 0.0, 0.1, 0.2, 0.0, 0.1]
    even = [0.1 * i for i in range(8)]
    assert adaptive.expected_gain(outlier, 8) < 0.05 < 0.2 < adaptive.expected_gain(even, 8)
    # In the score's direction: the lowest value is the best when lower is better.
    assert adaptive.expected_gain([-v for v in outlier], 8, higher=False) == pytest.approx(
        adaptive.expected_gain(outlier, 8)
    )
    assert adaptive.expected_gain([1.0, 1.0, 1.0], 4) is None  # no spread: never settled
    assert adaptive.expected_gain([1.0, math.nan], 4) is None  # one finite score
    # Scale and shift leave it alone: it is in the record's own standard deviations.
    assert adaptive.expected_gain([10 * v + 3 for v in spread], 12) == pytest.approx(gains[2])


def test_the_vote_lead_counts_answers_and_ignores_none():
    assert adaptive.vote_lead(["4", "4", "7", None]) == 1
    assert adaptive.vote_lead(["4", "4", "4"]) == 3
    assert adaptive.vote_lead([None, None]) == 0
    votes = [{"vote": {"answer": a}} for a in ("4", "4", "4", "7")]
    assert adaptive.settled(votes, "vote", "vote", remaining=1, settle=1.0) == (True, None)
    assert adaptive.settled(votes, "vote", "vote", remaining=2, settle=1.0) == (False, None)


def test_costs_add_field_by_field():
    one = {"generate": {"prompt_tokens": 3, "completion_tokens": 5, "seconds": 0.25}}
    two = {"generate": {"prompt_tokens": 3, "completion_tokens": 7, "seconds": 0.5}}
    assert adaptive.summed(one, two) == {
        "generate": {"prompt_tokens": 6, "completion_tokens": 12, "seconds": 0.75}
    }
    assert adaptive.summed({}, one) == one


# Bad options, before any model loads.


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"scorers": ["random"]}, "no stopping rule for selection by 'random'"),
        ({"scorers": ["longest", "random"], "by": "random"}, "no stopping rule"),
        ({"settle": 0}, r"`settle` must be a number > 0, got 0"),
        ({"settle": -1.0}, r"`settle` must be a number > 0"),
        ({"engine_args": {"sample_batching": "prompt"}}, "seeded sampling"),
        (
            {"scorers": ["longest", "vote"], "by": "vote", "weight_by": "longest"},
            "unweighted votes",
        ),
        ({"concurrent": True}, "drop --ray and --concurrent"),
        ({"scorers": ["flip-tokens"], "prune_at": (4,)}, "`adaptive` and `prune_at` do not go"),
    ],
)
def test_bad_adaptive_options_are_refused(tmp_path, options, match):
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    base = {"model": "no-such-model-is-loaded", "adaptive": True, "quiet": True}
    with pytest.raises(ConfigError, match=match):
        bon.run(prompts, tmp_path / "out", **{**base, **options})
    assert not (tmp_path / "out" / "scored.jsonl").exists()


def test_the_cli_refuses_a_selector_without_a_rule(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    args = ["run", str(prompts), "-o", str(tmp_path / "o"), "--adaptive", "--scorer", "random"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert "no stopping rule" in result.output


def test_select_and_rerank_do_not_take_adaptive_options():
    assert "adaptive" not in bon.api.split_options.__doc__  # sanity: the helper exists
    with pytest.raises(ConfigError, match="unknown option"):
        bon.api.split_options("select", {"adaptive": True}, files=False)
    with pytest.raises(ConfigError, match="unknown option"):
        bon.api.split_options("rerank", {"settle": 2.0}, files=False)
    with pytest.raises(ConfigError, match="not for requests answered one at a time"):
        from bon.online import BestOfN

        BestOfN(select=bon.SelectOptions(adaptive=True))


# The real tiny model.


def test_a_wave_draws_the_full_runs_later_samples(tiny_model):
    options = GenerateOptions(model=tiny_model, dtype="float32", device="cpu", n=4, seed=5)
    options = GenerateOptions(**{**options.__dict__, "max_new_tokens": 8})
    generator = Generator(options)
    try:
        full = generator.process(list(PROMPTS))
        first = generator.wave(0, 2).process(list(PROMPTS))
        later = generator.wave(2, 2).process(list(PROMPTS))
    finally:
        generator.close()
    for whole, a, b in zip(full, first, later, strict=True):
        assert [c["text"] for c in whole["candidates"]] == [
            c["text"] for c in a["candidates"] + b["candidates"]
        ]


def test_a_tiny_settle_is_full_best_of_n(tmp_path, tiny_model):
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    bon.run(prompts, tmp_path / "full", **_options(tiny_model))
    reports = bon.run(prompts, tmp_path / "ad", **_options(tiny_model, adaptive=True, settle=1e-9))
    full_scored = read_jsonl(tmp_path / "full" / "scored.jsonl")
    ad_scored = read_jsonl(tmp_path / "ad" / "scored.jsonl")
    assert _texts(ad_scored) == _texts(full_scored)
    assert _texts(read_jsonl(tmp_path / "ad" / "candidates.jsonl")) == _texts(full_scored)
    full_sel = {r["id"]: r["selected"] for r in read_jsonl(tmp_path / "full" / "selected.jsonl")}
    ad_rows = read_jsonl(tmp_path / "ad" / "selected.jsonl")
    assert {r["id"]: r["selected"] for r in ad_rows} == full_sel
    for row in ad_rows:
        assert row["adaptive"]["n_used"] == 4
        assert row["adaptive"]["waves"] == [2, 4]
        assert row["adaptive"]["settled"] is False
        assert row["adaptive"]["rule"] == "gain"
    assert reports[-1].extra == {"mean_n": 4.0, "n": 4}
    # The cost sums the waves: every candidate's tokens once, the prompt once per wave.
    full_cost = {r["id"]: r["cost"] for r in full_scored}
    for row in ad_scored:
        spent = row["cost"]["generate"]
        assert spent["completion_tokens"] == sum(c["tokens"] for c in row["candidates"])
        assert spent["completion_tokens"] == full_cost[row["id"]]["generate"]["completion_tokens"]
        assert spent["prompt_tokens"] == 2 * full_cost[row["id"]]["generate"]["prompt_tokens"]
        assert set(row["cost"]["score"]) == {"confidence"}
    for row in ad_rows:
        generated = row["cost"]["generate"]
        assert row["cost"]["total"]["tokens"] == (
            generated["prompt_tokens"] + generated["completion_tokens"]
        )
    # candidates.jsonl holds no scores.
    for row in read_jsonl(tmp_path / "ad" / "candidates.jsonl"):
        assert "scoring" not in row and set(row["cost"]) == {"generate"}
        assert all("scores" not in c for c in row["candidates"])


def test_a_huge_settle_stops_every_record_at_the_first_wave(tmp_path, tiny_model):
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    bon.run(prompts, tmp_path / "full", **_options(tiny_model))
    reports = bon.run(prompts, tmp_path / "ad", **_options(tiny_model, adaptive=True, settle=1e9))
    full = _texts(read_jsonl(tmp_path / "full" / "scored.jsonl"))
    rows = read_jsonl(tmp_path / "ad" / "scored.jsonl")
    for row in rows:
        assert row["adaptive"]["n_used"] == 2 and row["adaptive"]["settled"] is True
        # Two scores: the best's standard score is 1/sqrt(2) whatever they are; 2 samples to come.
        assert row["adaptive"]["gain"] == pytest.approx(adaptive.expected_gain([1.0, 0.0], 2))
        assert _texts([row])[row["id"]] == full[row["id"]][:2]  # the full run's first two
        assert row["generator"]["n"] == 2
    assert reports[-1].extra["mean_n"] == 2.0


def test_vote_stops_once_the_lead_cannot_be_overtaken():
    """The real vote scorer on written candidates: 4, 4 and 4 lead by 3, 4, 4 and 7 by 1."""
    rows = [
        {"id": "a", "prompt": "2+2?", "responses": ["It is 4.", "4", "The answer is 4"]},
        {"id": "b", "prompt": "2+2?", "responses": ["It is 4.", "4", "7", "maybe 4"]},
    ]
    scored = {r["id"]: r["candidates"] for r in bon.score_records(rows, scorers=["vote"])}
    assert adaptive.settled(scored["a"], "vote", "vote", remaining=2, settle=1.0)[0]
    assert not adaptive.settled(scored["a"], "vote", "vote", remaining=3, settle=1.0)[0]
    assert adaptive.settled(scored["b"], "vote", "vote", remaining=1, settle=1.0)[0]
    assert not adaptive.settled(scored["b"], "vote", "vote", remaining=2, settle=1.0)[0]


def test_a_vote_with_no_answers_never_settles(tmp_path, tiny_model):
    """The tiny model's gibberish holds no number: no answer leads, every record takes all n."""
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    options = _options(tiny_model, n=3, scorers=["vote"], adaptive=True, keep_all=True)
    bon.run(prompts, tmp_path / "out", **options)
    for row in read_jsonl(tmp_path / "out" / "selected.jsonl"):
        assert row["adaptive"] == {"n_used": 3, "waves": [2, 3], "settled": False, "rule": "vote"}
        assert all(c["vote"]["answer"] is None for c in row["candidates"])


def test_an_interrupted_run_resumes_to_the_same_files(tmp_path, tiny_model):
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS)
    options = _options(tiny_model, adaptive=True, settle=0.4, n=8)
    bon.run(prompts, tmp_path / "whole", **options)
    out = tmp_path / "cut"
    bon.run(prompts, out, **options)
    scored = out / "scored.jsonl"
    lines = scored.read_bytes().splitlines(keepends=True)
    scored.write_bytes(b"".join(lines[:2]))  # as if killed after two records
    for name in ("candidates.jsonl", "selected.jsonl"):
        (out / name).unlink()
    reports = bon.run(prompts, out, **options)
    assert (reports[0].resumed, reports[0].written) == (2, 2)
    # Batches of other records leave the texts alone; log-probabilities move in their last bits.
    for name in ("candidates.jsonl", "scored.jsonl"):
        assert _texts(read_jsonl(out / name)) == _texts(read_jsonl(tmp_path / "whole" / name))
    got, want = (read_jsonl(d / "selected.jsonl") for d in (out, tmp_path / "whole"))
    assert [(r["id"], r["selected"]["index"]) for r in got] == [
        (r["id"], r["selected"]["index"]) for r in want
    ]
    assert [costless([r])[0]["adaptive"]["waves"] for r in got] == [
        r["adaptive"]["waves"] for r in want
    ]


def test_run_records_samples_adaptively_too(tiny_model):
    options = _options(tiny_model, adaptive=True, settle=1e9)
    options.pop("quiet")
    rows = bon.run_records(PROMPTS, **options)
    assert [r["adaptive"]["n_used"] for r in rows] == [2] * len(PROMPTS)
    assert all("selected" in r for r in rows)


def test_old_candidates_scores_are_reused_even_without_the_cache(tmp_path, tiny_model):
    """flip-likelihood reads each candidate alone: wave 2 scores its 2 new candidates only."""
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS[:2])
    options = _options(
        tiny_model, scorers=["flip-likelihood"], no_cache=True, record_logprobs=False
    )
    bon.run(prompts, tmp_path / "ad", **options, adaptive=True, settle=1e-9)
    bon.run(prompts, tmp_path / "full", **options)
    full = {
        r["id"]: r["cost"]["score"]["flip-likelihood"]
        for r in read_jsonl(tmp_path / "full" / "scored.jsonl")
    }
    for row in read_jsonl(tmp_path / "ad" / "scored.jsonl"):
        spent = row["cost"]["score"]["flip-likelihood"]
        assert spent["cached"] == 2  # wave 2: the two candidates of wave 1
        assert spent["read_tokens"] == full[row["id"]]["read_tokens"]
    assert not (tmp_path / "scores.sqlite").exists()  # nothing written to the disk cache


def test_the_hf_engine_draws_later_samples_only_when_seeded(tiny_model):
    from bon.engines import SamplingOptions, load_engine
    from bon.errors import EngineError

    options = GenerateOptions(
        model=tiny_model, dtype="float32", device="cpu", engine_args={"sample_batching": "prompt"}
    )
    engine = load_engine(options)
    try:
        sampling = SamplingOptions(n=2, max_new_tokens=4, first_sample=2)
        with pytest.raises(EngineError, match="first_sample.*sample_batching=seeded"):
            engine.generate([[{"role": "user", "content": "Hi"}]], sampling)
    finally:
        engine.close()


def test_the_cli_runs_adaptively_and_reports_the_mean_n(tmp_path, tiny_model):
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS[:2])
    args = ["run", str(prompts), "-o", str(tmp_path / "out"), "--model", tiny_model]
    args += ["--reranker-model", tiny_model, "--dtype", "float32", "--device", "cpu", "--n", "4"]
    args += ["--max-new-tokens", "6", "--record-logprobs", "--scorer", "confidence"]
    result = CliRunner().invoke(main, [*args, "--adaptive", "--settle", "0.5"])
    assert result.exit_code == 0, result.output
    assert "adaptive: mean N used 2.00 of 4" in result.output
    assert len(read_jsonl(tmp_path / "out" / "selected.jsonl")) == 2
    again = CliRunner().invoke(main, [*args, "--adaptive", "--settle", "0.7"])
    assert again.exit_code != 0  # another settle is another configuration: no silent resume
    assert "overwrite" in again.output
