"""Compute accounting on the tiny model: what generating, scoring and selecting each record cost,
the curves drawn against it, the progress bars that read the same counters, and resuming an
output written before the accounting."""

from __future__ import annotations

import itertools
import json
import math
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

import bon
from bon import records
from bon.cost import Meter, rows_of, split_count, strip, total
from bon.engines import EngineOptions, load_engine
from bon.entrypoints.cli import main
from bon.generator import GenerateOptions
from bon.outputs import open_output
from bon.runner import run_file, run_records
from bon.select import SelectOptions
from bon.stages import generate_stage, select_stage
from tests.conftest import read_jsonl, write_jsonl

PROMPTS = [
    {"id": "prime", "prompt": "Name a prime number."},
    {"id": "hi", "messages": [{"role": "system", "content": "Be brief."},
                              {"role": "user", "content": "Say hello to Ada."}]},
]  # fmt: skip
FAST = {"device": "cpu", "max_new_tokens": 12, "no_cache": True}


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def selected(tiny_model):
    """Best-of-3 over PROMPTS with a model scorer and two that run no model, candidates kept."""
    return bon.run_records(
        PROMPTS,
        n=3,
        model=tiny_model,
        scorers=["flip-tokens", "longest", "mbr"],
        keep_all=True,
        **FAST,
    )


def prompt_tokens(tokenizer, record: dict) -> int:
    text = tokenizer.apply_chat_template(
        records.conversation(record), add_generation_prompt=True, tokenize=False
    )
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_candidates_carry_their_generation_cost(selected, tokenizer):
    """The prompt is counted once per record, as the chat template renders it; each candidate's
    completion tokens are the engine's count (a random model's text does not tokenize back to
    the same tokens, so the count is the engine's, not a re-tokenization); the record's seconds
    are its candidates' shares."""
    for record in selected:
        generate = record["cost"]["generate"]
        assert generate["prompt_tokens"] == prompt_tokens(tokenizer, record) > 0
        candidates = record["candidates"]
        assert generate["completion_tokens"] == sum(c["tokens"] for c in candidates)
        for candidate in candidates:
            spent = candidate["cost"]
            assert spent["completion_tokens"] == candidate["tokens"] > 0
            if candidate["finish_reason"] == "length":
                assert candidate["tokens"] == FAST["max_new_tokens"]
            assert spent["seconds"] >= 0
        shares = math.fsum(c["cost"]["seconds"] for c in candidates)
        assert generate["seconds"] == pytest.approx(shares, abs=1e-5)
        assert generate["seconds"] > 0


def test_every_scorer_records_its_cost(selected):
    """A model scorer read tokens (its prompts and the teacher-forced instruction) and wrote
    none; scorers that run no model read nothing; every one has its seconds."""
    for record in selected:
        scores = record["cost"]["score"]
        assert list(scores) == ["flip-tokens", "longest", "mbr"]
        assert scores["flip-tokens"]["read_tokens"] > 0
        assert scores["flip-tokens"]["generated_tokens"] == 0
        for name in ("longest", "mbr"):
            assert scores[name]["read_tokens"] == scores[name]["generated_tokens"] == 0
        for part in scores.values():
            assert part["seconds"] >= 0 and "cached" not in part


def test_the_selected_record_sums_both_stages(selected):
    for record in selected:
        cost = record["cost"]
        generate = cost["generate"]
        tokens = generate["prompt_tokens"] + generate["completion_tokens"]
        tokens += sum(p["read_tokens"] + p["generated_tokens"] for p in cost["score"].values())
        seconds = generate["seconds"] + sum(p["seconds"] for p in cost["score"].values())
        assert cost["total"]["tokens"] == tokens
        assert cost["total"]["seconds"] == pytest.approx(seconds, abs=1e-5)
        assert total(record) == cost["total"]


@pytest.mark.parametrize("scorer", ["flip-tokens", "flip", "judge-pairwise"])
def test_a_records_tokens_do_not_depend_on_its_batch(selected, tiny_model, scorer):
    """Each engine row is counted for the record it scores: a record scored with others reads
    and writes what it does alone. A rescore served by the cache reads nothing and says how
    many came from it."""
    options = {"model": tiny_model, "scorers": [scorer], "device": "cpu", "max_new_tokens": 6}
    together = bon.score_records(selected, no_cache=True, **options)
    alone = [bon.score_records([r], no_cache=True, **options)[0] for r in selected]

    def spent(rows: list[dict]) -> list[tuple[int, int]]:
        parts = [r["cost"]["score"][scorer] for r in rows]
        return [(p["read_tokens"], p["generated_tokens"]) for p in parts]

    assert spent(together) == spent(alone)
    assert all(read > 0 for read, _ in spent(together))
    if scorer == "flip-tokens":
        assert spent(together) == spent(selected)
    bon.score_records(selected, **options)
    cached = bon.score_records(selected, **options)
    for record in cached:
        part = record["cost"]["score"][scorer]
        assert part["read_tokens"] == 0 and part["cached"] == len(record["candidates"])


def test_the_meter_counts_what_the_engine_reads_and_writes(tiny_model, tokenizer):
    engine = load_engine(EngineOptions(model=tiny_model, device="cpu"))
    meter = Meter(lambda: engine, engine.options)
    conversation = records.conversation(PROMPTS[0])
    mine, other = records.conversation(PROMPTS[1]), records.conversation(PROMPTS[1])
    with rows_of(meter, [mine, other]):
        rows = meter.continuation_logprobs([conversation, conversation], ["Seven.", ""])
    reading = meter.take()
    assert reading.read == prompt_tokens(tokenizer, PROMPTS[0]) + len(rows[0]) and rows[1] == []
    assert reading.generated == 0
    assert reading.owned == {id(mine): [reading.read, 0], id(other): [0, 0]}
    sampling = bon.engines.SamplingOptions(n=2, temperature=1.0, max_new_tokens=5)
    with rows_of(meter, [mine, other]):  # a call of another row count is nobody's
        out = meter.generate([conversation], sampling, [1])
    reading = meter.take()
    assert reading.read == prompt_tokens(tokenizer, PROMPTS[0]) and reading.owned == {}
    assert reading.generated == sum(c.tokens for c in out[0]) > 0
    assert (meter.take().read, meter.owners) == (0, None)


def test_shares_are_whole_tokens_that_add_up():
    assert split_count(10, [1, 1, 1]) == [4, 3, 3]
    assert split_count(7, [0, 0]) == [4, 3]
    assert split_count(0, [2, 5]) == [0, 0]
    assert sum(split_count(1001, [3, 8, 1, 0, 5])) == 1001


def test_the_hf_engine_reports_tokens_while_it_decodes(tiny_model):
    """`Engine.decoding` calls back on each decoding step: the bar moves before the call ends."""
    engine = load_engine(EngineOptions(model=tiny_model, device="cpu"))
    steps: list[int] = []
    sampling = bon.engines.SamplingOptions(n=3, temperature=1.0, max_new_tokens=8)
    with engine.decoding(steps.append):
        out = engine.generate([records.conversation(PROMPTS[0])], sampling, [5])
    generated = sum(c.tokens for c in out[0])
    assert len(steps) >= max(c.tokens for c in out[0]) and sum(steps) >= generated
    before = len(steps)
    engine.generate([records.conversation(PROMPTS[0])], sampling, [5])
    assert len(steps) == before  # the hook left with the block


def test_progress_bars_show_tokens_and_candidate_scores(tiny_model, capsys):
    stage = generate_stage(GenerateOptions(model=tiny_model, n=2, device="cpu", max_new_tokens=6))
    done = run_records(stage, PROMPTS, quiet=False)
    err = capsys.readouterr().err
    assert "2/2" in err and " tok" in err and "tok/s" in err
    from bon.scorers import ScoreOptions
    from bon.stages import score_stage

    scoring = score_stage(ScoreOptions(scorers=("longest", "shortest"), no_cache=True))
    run_records(scoring, done, quiet=False)
    err = capsys.readouterr().err
    assert "8/8" in err and "score/s" in err  # 2 records x 2 candidates x 2 scorers
    run_records(generate_stage(GenerateOptions(model=tiny_model, n=2, device="cpu")), PROMPTS)
    err = capsys.readouterr().err  # quiet: no bar (the model's loading may still say so)
    assert "tok" not in err and "rec" not in err


def test_resume_fingerprints_ignore_the_measured_costs():
    record = {"id": "a", "prompt": "p", "candidates": [{"text": "x", "cost": {"seconds": 1.0}}]}
    faster = {**record, "candidates": [{"text": "x", "cost": {"seconds": 0.5}}], "cost": {}}
    plain = {"id": "a", "prompt": "p", "candidates": [{"text": "x"}]}
    assert records.input_fingerprint(record) == records.input_fingerprint(faster)
    assert records.input_fingerprint(record) == records.fingerprint(plain)
    user = {"id": "b", "prompt": "p", "cost": 3}  # a field of the user's, not bon's
    assert records.input_fingerprint(user) == records.fingerprint(user)


def test_an_output_written_without_costs_resumes_without_them(tmp_path, selected):
    """Records of an older bon carry no `cost.total`: the resumed run writes none either, so
    the file never mixes the two; a new output gets them."""
    source = write_jsonl(tmp_path / "scored.jsonl", selected)
    stage = select_stage(SelectOptions(by="longest"))
    out = tmp_path / "selected.jsonl"
    with open_output(out, stage.config):
        pass
    old = strip(bon.select_records(selected[:1], by="longest")[0], ["total"])
    old = {**old, "fingerprints": {"select": records.input_fingerprint(selected[0])}}
    write_jsonl(out, [old])
    run_file(stage, source, out, quiet=True)
    rows = read_jsonl(out)
    assert [r["id"] for r in rows] == ["prime", "hi"]
    assert all("total" not in r["cost"] and "score" in r["cost"] for r in rows)
    fresh = tmp_path / "fresh.jsonl"
    run_file(select_stage(SelectOptions(by="longest")), source, fresh, quiet=True)
    assert all("total" in r["cost"] for r in read_jsonl(fresh))


def with_metric(rows: list[dict]) -> list[dict]:
    """Each candidate labelled 1 when its text is longer than 40 characters."""
    return [
        {**r, "candidates": [{**c, "m": int(len(c["text"]) > 40)} for c in r["candidates"]]}
        for r in rows
    ]


def test_curve_against_tokens_and_seconds(tmp_path, tiny_model):
    more = [{"id": f"p{i}", "prompt": f"Count to {i}."} for i in range(3)]
    rows = bon.run_records([*PROMPTS, *more], n=4, model=tiny_model, scorers=["flip-tokens",
                           "longest"], keep_all=True, **FAST)  # fmt: skip
    full = write_jsonl(tmp_path / "full.jsonl", with_metric(rows))
    cheap = write_jsonl(tmp_path / "cheap.jsonl", with_metric(
        [{**r, "candidates": r["candidates"][:2]} for r in rows]))  # fmt: skip
    runner = CliRunner()
    result = runner.invoke(main, ["curve", str(full), "--metric", "m", "--x", "tokens", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["x"] == "tokens" and data["sizes"] == [1, 2, 4]
    for name, xs in data["costs"].items():
        assert all(a < b for a, b in itertools.pairwise(xs)), name
    assert data["costs"]["flip-tokens"][0] > data["costs"]["longest"][0]
    assert data["costs"]["longest"] == pytest.approx(data["costs"]["random"])
    mean_total = sum(r["cost"]["total"]["tokens"] for r in rows) / len(rows)
    assert data["costs"]["flip-tokens"][-1] + data["costs"]["longest"][-1] == pytest.approx(
        mean_total + data["costs"]["oracle"][-1]
    )
    png = tmp_path / "curve.png"
    args = ["curve", str(full), str(cheap), "--metric", "m", "--x", "seconds", "--by", "longest"]
    result = runner.invoke(main, [*args, "--label", "N=4", "--label", "N=2", "--plot", str(png),
                                  "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    both = json.loads(result.output)["curves"]
    assert [c["label"] for c in both] == ["N=4", "N=2"] and both[1]["sizes"] == [1, 2]
    assert all(c["x"] == "seconds" and c["costs"]["longest"][0] > 0 for c in both)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24]) == (768, 504)
    table = runner.invoke(main, [*args, "--label", "N=4", "--label", "N=2"]).output
    assert "## N=2" in table and "Mean seconds per prompt" in table


def test_curve_against_tokens_needs_recorded_costs(tmp_path):
    old = [{"id": "a", "candidates": [{"text": "x", "m": 1, "scores": {"longest": 1}}]}]
    path = write_jsonl(tmp_path / "old.jsonl", old)
    result = CliRunner().invoke(main, ["curve", str(path), "--metric", "m", "--x", "tokens"])
    assert result.exit_code == 1
    assert "old.jsonl:1: record 'a': `cost.generate` is missing" in result.output
    result = CliRunner().invoke(
        main, ["curve", str(path), "--metric", "m", "--label", "a", "--label", "b"]
    )
    assert result.exit_code != 0 and "one label per file" in result.output


def spent(generate: int, score: int, prune: dict | None = None) -> dict:
    """A record's `cost` with `generate` completion tokens (prompt 10) and `score` read."""
    out = {
        "generate": {"prompt_tokens": 10, "completion_tokens": generate, "seconds": 1.0},
        "score": {"longest": {"read_tokens": score, "generated_tokens": 0, "seconds": 0.5}},
    }
    return out | ({"prune": prune} if prune else {})


def test_a_pruned_or_adaptive_run_is_one_point_at_all_it_spent(tmp_path):
    """Its candidates were not drawn alike (pruned ones stopped early, an adaptive record's
    count is the rule's), so no subset is a best-of-N' run: the curve is the run's own pick
    among the finished candidates, at everything the record cost, pruning included."""
    prune = {"read_tokens": 7, "generated_tokens": 0, "prefill_tokens": 3, "seconds": 0.25}
    pruned = [
        {"id": "a", "cost": spent(40, 5, prune), "candidates": [
            {"text": "best but cut", "m": 1, "pruned_at": 8, "scores": {"longest": None}},
            {"text": "kept", "m": 0, "scores": {"longest": 4.0}},
            {"text": "kept, and good", "m": 1, "scores": {"longest": 3.0}}]},
        {"id": "b", "cost": spent(20, 1, prune), "candidates": [
            {"text": "x", "m": 1, "scores": {"longest": 1.0}},
            {"text": "cut", "m": 0, "pruned_at": 8, "scores": {"longest": None}}]},
    ]  # fmt: skip
    adaptive = [
        {"id": "a", "adaptive": {"n_used": 2}, "cost": spent(30, 2), "candidates": [
            {"text": "y", "m": 0, "scores": {"longest": 2.0}},
            {"text": "z", "m": 1, "scores": {"longest": 1.0}}]},
    ]  # fmt: skip
    paths = [write_jsonl(tmp_path / f"{n}.jsonl", rows) for n, rows in
             (("pruned", pruned), ("adaptive", adaptive))]  # fmt: skip
    result = CliRunner().invoke(
        main, ["curve", *map(str, paths), "--metric", "m", "--x", "tokens", "--json"]
    )
    assert result.exit_code == 0, result.output
    cut, waves = json.loads(result.output)["curves"]
    assert cut["sizes"] == [3] and cut["lines"]["longest"] == [0.5]  # a: "kept"; b: "x"
    assert cut["lines"]["oracle"] == [1.0] and cut["lines"]["random"] == [0.75]
    per_record = [10 + 40 + 10 + 5, 10 + 20 + 10 + 1]
    assert cut["costs"]["longest"] == [sum(per_record) / 2]
    assert cut["costs"]["oracle"] == [sum(per_record) / 2 - 3]
    assert waves["sizes"] == [2] and waves["lines"]["longest"] == [0.0]
    assert waves["costs"]["longest"] == [10 + 30 + 2]
    assert "one point per line" in cut["notes"][0]
    seconds = CliRunner().invoke(
        main, ["curve", str(paths[0]), "--metric", "m", "--x", "seconds", "--json"]
    )
    assert json.loads(seconds.output)["costs"]["longest"] == [1.0 + 0.25 + 0.5]


def test_curve_json_for_one_file_keeps_its_shape(tmp_path):
    old = [{"id": "a", "candidates": [{"text": "x", "m": 1, "scores": {"longest": 1}}]}]
    path = write_jsonl(tmp_path / "old.jsonl", old)
    result = CliRunner().invoke(main, ["curve", str(path), "--metric", "m", "--json"])
    assert set(json.loads(result.output)) == {"metric", "sizes", "lines", "records", "notes"}


def test_multiturn_answers_keep_each_turns_cost(tmp_path, tiny_model):
    out = bon.run_records(
        [{"id": "q", "turns": ["Name a colour.", "And another?"]}],
        n=2,
        model=tiny_model,
        scorers=["longest"],
        **FAST,
    )
    answers = out[0]["answers"]
    assert len(answers) == 2 and all("total" in a["cost"] for a in answers)
    assert "cost" not in out[0]


def test_the_cost_paths_are_documented():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for text in ("cost.generate", "read_tokens", "bon curve", "--x tokens"):
        assert text in readme
