"""End-to-end stages on a tiny random Llama, through the Python API and the CLI."""

import dataclasses
import inspect
import json
import re

import click
import pytest
from click.testing import CliRunner

import bon
from bon import api
from bon.entrypoints.cli import main
from bon.outputs import manifest_path
from tests.conftest import costless, read_jsonl, write_jsonl

PROMPTS = [
    {"id": "a", "prompt": "Name a colour.", "source": "team"},
    {"prompt": "Count to three."},
    {"prompt": "Count to three."},  # equal content: a distinct record with its own id
    {
        "messages": [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye?"},
        ]
    },
]


@pytest.fixture
def fast(tiny_model):
    """Options that keep the tiny model's runs short."""
    return {"model": tiny_model, "max_new_tokens": 6}


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_generate_records_adds_candidates_and_provenance(fast):
    out = bon.generate_records(PROMPTS, n=3, seed=5, **fast)
    assert len(out) == 4
    assert out[0]["id"] == "a" and out[0]["source"] == "team"
    assert out[1]["id"] != out[2]["id"]
    assert out[2]["id"] == f"{out[1]['id']}-2"
    for record in out:
        assert len(record["candidates"]) == 3
        assert set(record["candidates"][0]) == {"text", "finish_reason", "tokens", "cost"}
        meta = record["generator"]
        assert (meta["engine"], meta["n"], meta["seed"], meta["max_new_tokens"]) == ("hf", 3, 5, 6)
        assert isinstance(meta["request_seed"], int)


def test_generation_is_reproducible_for_a_seed(fast):
    first = bon.generate_records(PROMPTS[:2], n=2, seed=1, **fast)
    again = bon.generate_records(PROMPTS[:2], n=2, seed=1, **fast)
    other = bon.generate_records(PROMPTS[:2], n=2, seed=2, **fast)
    assert costless(first) == costless(again)  # what it cost in seconds differs
    assert [r["candidates"] for r in first] != [r["candidates"] for r in other]


def test_score_accepts_responses_from_elsewhere_and_empty_ones_score_zero(fast):
    records = [{"prompt": "Name a colour.", "responses": ["Blue.", "", "   "], "model": "theirs"}]
    out = bon.score_records(records, scorers=["flip"], **fast)[0]
    assert out["responses"] == records[0]["responses"] and out["model"] == "theirs"
    flip = [c["scores"]["flip"] for c in out["candidates"]]
    assert 0.0 <= flip[0] <= 1.0
    assert flip[1:] == [0.0, 0.0]
    assert out["candidates"][1]["flip"]["parse"] == "empty-response"
    assert out["scoring"]["flip"]["similarity"] == "f1"


def test_rerank_and_run_records_select_the_argmax(fast):
    records = [{"prompt": "p", "responses": ["x", "y"]}]
    selected = bon.rerank_records(records, **fast)[0]
    assert selected["selected"]["by"] == "flip-tokens"  # the default scorer
    assert "candidates" not in selected and "responses" not in selected
    out = bon.run_records(
        PROMPTS[:2], n=2, reranker_model=fast["model"], reranker_max_new_tokens=6, **fast
    )
    assert out[0]["id"] == "a"
    assert all(0 <= r["selected"]["index"] < 2 for r in out)


def test_cli_run_writes_the_three_files(tmp_path, fast):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    result = _cli(
        "run",
        prompts,
        "-o",
        tmp_path / "out",
        "--n",
        2,
        "--model",
        fast["model"],
        "--max-new-tokens",
        6,
        "--reranker-model",
        fast["model"],
        "--reranker-max-new-tokens",
        6,
        "-q",
    )
    assert result.exit_code == 0, result.output
    candidates, scored, selected = (read_jsonl(tmp_path / "out" / name) for name in api.RUN_FILES)
    assert [r["id"] for r in candidates] == [r["id"] for r in scored] == [r["id"] for r in selected]
    assert len(selected) == 4
    assert all("scores" in c for r in scored for c in r["candidates"])
    best = scored[0]["candidates"][selected[0]["selected"]["index"]]
    assert best["scores"]["flip-tokens"] == max(
        c["scores"]["flip-tokens"] for c in scored[0]["candidates"]
    )


def test_cli_stages_one_by_one_and_resume_skips_done_records(tmp_path, fast):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    cands, scored, selected = (tmp_path / n for n in api.RUN_FILES)
    args = ["--model", fast["model"], "--max-new-tokens", 6, "-q"]
    assert _cli("generate", prompts, "-o", cands, "--n", 2, *args).exit_code == 0
    assert _cli("score", cands, "-o", scored, *args).exit_code == 0
    assert _cli("select", scored, "-o", selected, "--keep-all").exit_code == 0
    assert len(read_jsonl(selected)[0]["candidates"]) == 2
    before = cands.read_text()
    result = CliRunner().invoke(
        main, [str(a) for a in ["generate", prompts, "-o", cands, "--n", 2, *args[:-1]]]
    )
    assert result.exit_code == 0
    assert "0 records" in result.output and "4 were already done" in result.output
    assert cands.read_text() == before


def test_cli_refuses_a_changed_config_then_overwrites(tmp_path, fast):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS[:1])
    out = tmp_path / "c.jsonl"
    args = ["generate", prompts, "-o", out, "--model", fast["model"], "--max-new-tokens", 6, "-q"]
    assert _cli(*args, "--n", 2).exit_code == 0
    result = _cli(*args, "--n", 3)
    assert result.exit_code == 1
    assert "different configuration" in result.output and "--overwrite" in result.output
    assert _cli(*args, "--n", 3, "--overwrite").exit_code == 0
    assert len(read_jsonl(out)[0]["candidates"]) == 3
    assert json.loads(manifest_path(out).read_text())["config"]["n"] == 3


BAD_LINES = [
    ("{not json", "not valid JSON"),
    (json.dumps({"id": "x"}), "needs exactly one of `prompt`"),
    (json.dumps({"prompt": ""}), "`prompt` is empty"),
    (json.dumps({"prompt": ["a"]}), "`prompt` must be a string, got list"),
    (json.dumps({"id": "a", "prompt": "again"}), "duplicate id 'a' \\(first on line 1\\)"),
]


@pytest.mark.parametrize(("line", "problem"), BAD_LINES)
def test_bad_input_names_file_and_line_and_does_no_work(tmp_path, fast, line, problem):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "ok"}, line])
    out = tmp_path / "c.jsonl"
    result = _cli("generate", prompts, "-o", out, "--model", fast["model"], "-q")
    assert result.exit_code == 1
    assert f"{prompts}:2: " in result.output
    assert re.search(problem, result.output)
    assert not out.exists()


def test_empty_candidate_list_is_a_clear_error(tmp_path, fast):
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "p", "candidates": []}])
    result = _cli("score", path, "-o", tmp_path / "s.jsonl", "--model", fast["model"], "-q")
    assert result.exit_code == 1
    assert f"{path}:1: the candidate list is empty" in result.output


def test_on_error_skip_writes_bad_records_aside_and_goes_on(tmp_path, fast):
    rows = [{"id": "a", "prompt": "ok"}, "{bad", {"prompt": 1}, {"id": "b", "prompt": "fine"}]
    prompts = write_jsonl(tmp_path / "p.jsonl", rows)
    out = tmp_path / "c.jsonl"
    args = [
        "generate",
        prompts,
        "-o",
        out,
        "--model",
        fast["model"],
        "--max-new-tokens",
        4,
        "--n",
        1,
        "--on-error",
        "skip",
    ]
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0
    assert [r["id"] for r in read_jsonl(out)] == ["a", "b"]
    errors = read_jsonl(tmp_path / "c.jsonl.errors.jsonl")
    assert [e["line"] for e in errors] == [2, 3]
    assert "2 bad records skipped" in result.output
    again = CliRunner().invoke(main, [str(a) for a in args])
    assert again.exit_code == 0 and len(read_jsonl(tmp_path / "c.jsonl.errors.jsonl")) == 2


def test_invalid_option_is_reported_before_any_model_loads(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}])
    result = _cli(
        "generate",
        prompts,
        "-o",
        tmp_path / "c.jsonl",
        "--model",
        tmp_path / "missing",
        "--top-p",
        2,
    )
    assert result.exit_code == 1
    assert "`top_p` must be in (0, 1], got 2.0" in result.output


def test_api_rejects_unknown_options():
    with pytest.raises(bon.ConfigError, match="unknown option\\(s\\) nn; known: .*n,"):
        bon.generate_records([{"prompt": "x"}], nn=3)


def test_records_api_names_the_bad_record():
    with pytest.raises(bon.InputError, match="<records>:2: `prompt` is empty"):
        bon.generate_records([{"prompt": "x"}, {"prompt": ""}])


def _defaults(params) -> dict:
    """Name -> default, with list defaults as tuples (click gives lists or tuples)."""
    return {name: tuple(d) if isinstance(d, list) else d for name, d in params if name is not None}


@pytest.mark.parametrize("command", sorted(api.COMMANDS))
def test_cli_options_mirror_the_api(command):
    """Every CLI option of a command is a keyword of its API functions with the same default,
    and the other way round; `run` included. (The keywords that take an options object whole,
    `score=ScoreOptions(...)`, are the API's alone.)"""
    objects = set(api.OBJECT_PARAMS.values())
    cli = _defaults(
        (p.name, p.default)
        for p in main.commands[command].params
        if isinstance(p, click.Option) and not p.required
    )
    cli.pop("help", None)
    cli.pop("recipe", None)  # CLI only: the API takes a recipe as bon.run(**bon.load_recipe(f))
    file_fn = inspect.signature(getattr(api, command)).parameters
    api_keywords = _defaults(
        (p.name, p.default)
        for p in file_fn.values()
        if p.kind == p.KEYWORD_ONLY and p.name not in objects
    )
    assert cli == api_keywords
    records_fn = inspect.signature(getattr(api, f"{command}_records")).parameters
    file_only = {f.name for f in dataclasses.fields(api.FileOptions)}
    flat = {p for p in records_fn if p not in ("records", "prompts", *objects)}
    assert flat == set(cli) - file_only


def test_a_changed_list_default_breaks_the_mirror(monkeypatch):
    """The mirror test compares list defaults by value: a tuple default that differs is caught."""
    cli = _defaults([("scorers", ["flip"])])
    assert cli != _defaults([("scorers", ("flip", "random"))])


@pytest.mark.parametrize(
    "reranker, loads",
    [
        ({"reranker_batch_size": 8}, 1),
        ({}, 1),
        ({"reranker_engine_args": {"sample_batching": "grouped"}}, 2),
    ],
)
def test_run_loads_one_model_when_both_stages_name_the_same(
    tmp_path, fast, monkeypatch, reranker, loads
):
    """Batch sizes aside, the same settings share one model, and each stage keeps its own
    batch size (the generator's 32; the reranker's 8, or its default 16)."""
    import bon.engines
    import bon.generator
    import bon.reranker
    from bon.engines.hf import HFEngine

    loaded = []
    batch_sizes = {"generate": set(), "score": set()}

    def counting(options):
        loaded.append(options.model)
        return real(options)

    def sizes(method, stage):
        def recorded(self, *args, **kwargs):
            batch_sizes[stage].add(self.options.batch_size)
            return method(self, *args, **kwargs)

        return recorded

    real = bon.engines.load_engine
    for module in (bon.engines, bon.generator, bon.reranker):
        monkeypatch.setattr(module, "load_engine", counting)
    monkeypatch.setattr(HFEngine, "generate", sizes(HFEngine.generate, "generate"))
    logprobs = sizes(HFEngine.continuation_logprobs, "score")
    monkeypatch.setattr(HFEngine, "continuation_logprobs", logprobs)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    options = {"n": 2, "reranker_model": fast["model"], "scorers": ("flip-likelihood",), **fast}
    options.update(reranker)
    bon.run(prompts, tmp_path / "out", no_cache=True, quiet=True, **options)
    assert loaded == [fast["model"]] * loads
    assert batch_sizes == {"generate": {32}, "score": {reranker.get("reranker_batch_size", 16)}}
    assert len(read_jsonl(tmp_path / "out" / "selected.jsonl")) == len(PROMPTS)
    records = bon.run_records(PROMPTS, no_cache=True, **options)
    assert loaded == [fast["model"]] * loads * 2
    assert len(records) == len(PROMPTS)


def test_stages_share_an_engine_across_batch_sizes_but_not_across_models():
    for engine in ("hf", "vllm"):
        generate = bon.GenerateOptions(model="m", engine=engine, batch_size=32)
        score = bon.ScoreOptions(model="m", engine=engine, batch_size=16)
        assert api._shared_engine(generate, score)
        assert not api._shared_engine(generate, bon.ScoreOptions(model="other", engine=engine))
