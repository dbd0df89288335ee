"""One declaration per option: validation, recorded configurations and cache keys follow it."""

from __future__ import annotations

import inspect
import os

import click
import pytest
from click.testing import CliRunner

import bon
from bon.api import FileOptions
from bon.cache import score_key
from bon.entrypoints.cli import main
from bon.errors import ConfigError
from bon.models import fingerprint
from bon.reranker import Reranker
from bon.scorers import ScoreOptions
from tests.conftest import costless, read_jsonl, write_jsonl


def _config(**options):
    return Reranker(ScoreOptions.from_keywords(**options)).config()


def test_a_scorer_config_holds_only_the_options_it_uses():
    assert _config(k=4) == _config(k=9)  # flip does not read k
    assert _config(scorers=["flip-k"], k=4) != _config(scorers=["flip-k"], k=9)
    assert _config(scorers=["longest"], similarity="f1") == _config(
        scorers=["longest"], similarity="cosine", prompt="short", model="elsewhere"
    )
    assert _config(batch_size=2, device="cpu", no_cache=True) == _config()


def test_the_scoring_block_records_each_direction():
    config = _config(scorers=["flip", "shortest", "longest"])["scorers"]
    assert config["shortest"]["higher_is_better"] is False
    assert config["longest"]["higher_is_better"] is True
    assert config["flip"]["higher_is_better"] is True


def test_cache_keys_follow_the_server_the_weights_and_bon(tmp_path, monkeypatch):
    messages = [{"role": "user", "content": "hi"}]

    def key(**options):
        return score_key(
            Reranker(ScoreOptions.from_keywords(**options)).scorers[0].describe(), messages, "x"
        )

    a = key(engine="openai", engine_args={"base_url": "http://127.0.0.1:1/v1"})
    b = key(engine="openai", engine_args={"base_url": "http://127.0.0.1:2/v1"})
    assert a != b
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    weights = model / "model.safetensors"
    weights.write_bytes(b"one")
    before = key(model=str(model))
    weights.write_bytes(b"other weights")
    assert fingerprint(str(model)).startswith("local:")
    assert key(model=str(model)) != before
    now = key(model=str(model))
    monkeypatch.setattr(bon, "__version__", "999")
    assert key(model=str(model)) != now


def test_an_unused_option_change_does_not_block_a_resume(tmp_path, tiny_model):
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "Name a colour.", "responses": ["Red."]}])
    out = tmp_path / "s.jsonl"
    args = ["score", path, "-o", out, "--scorer", "flip", "--model", tiny_model]
    args += ["--max-new-tokens", 4, "-q"]
    assert CliRunner().invoke(main, [str(a) for a in args]).exit_code == 0
    again = CliRunner().invoke(main, [str(a) for a in [*args[:-1], "--k", 9, "--batch-size", 3]])
    assert again.exit_code == 0, again.output
    assert "1 were already done" in again.output
    refused = CliRunner().invoke(main, [str(a) for a in [*args, "--similarity", "cosine"]])
    assert refused.exit_code == 1 and "different configuration" in refused.output
    assert len(read_jsonl(out)) == 1


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"on_error": "ignore"}, "`on_error` must be one of fail, skip, got 'ignore'"),
        ({"scorers": ["flip", "nope"]}, "`scorers` must be one of .*flip-likelihood.*got 'nope'"),
        ({"max_response_words": 0}, "`max_response_words` must be an integer >= 1, got 0"),
        ({"echo_threshold": 1.5}, r"`echo_threshold` must be in \(0, 1\], got 1.5"),
        ({"n": True}, "`n` must be an integer >= 1, got True"),
    ],
)
def test_options_are_checked_against_their_declaration(options, match):
    with pytest.raises(ConfigError, match=match):
        if "on_error" in options:
            FileOptions(**options)
        elif "n" in options:
            bon.GenerateOptions(**options)
        else:
            ScoreOptions.from_keywords(**options)


def test_api_functions_show_every_option_in_their_signature():
    params = inspect.signature(bon.run).parameters
    assert params["n"].default == 8 and params["reranker_model"].default == "smollm2-135m"
    assert params["scorers"].default == ("flip-tokens",) and params["quiet"].default is False
    assert "device" in params and "reranker_device" not in params
    assert "max_response_words" in bon.score.__doc__
    with pytest.raises(ConfigError, match="unknown option\\(s\\) reranker_n"):
        bon.run_records([{"prompt": "x"}], reranker_n=3)


def test_run_shares_device_and_dtype_with_the_reranker():
    from bon.api import split_options

    generate, score, _ = split_options(
        "run", {"dtype": "float32", "reranker_model": "m"}, files=False
    )
    assert generate.dtype == score.dtype == "float32"
    assert score.model == "m" and generate.model == "smollm2-135m"


def test_options_objects_are_taken_whole_and_flat_keywords_set_their_fields():
    from bon.api import split_options

    generate = bon.GenerateOptions(n=4, temperature=0.5)
    score = ScoreOptions.from_keywords(scorers=("flip-k",), k=6, batch_size=4)
    given = {"generate": generate, "score": score, "select": bon.SelectOptions(keep_all=True)}
    same = split_options("run", {}, files=False, given=given)
    assert same[0] is generate and same[1] is score and same[2].keep_all
    built, scored, _ = split_options(
        "run",
        {"n": 2, "reranker_batch_size": 8, "reranker_temperature": 0.3, "dtype": "float32"},
        files=False,
        given=given,
    )
    assert (built.n, built.temperature, built.dtype) == (2, 0.5, "float32")
    assert (scored.batch_size, scored.scorers, scored.dtype) == (8, ("flip-k",), "float32")
    assert (scored.of("flip-k").k, scored.of("flip-k").temperature) == (6, 0.3)
    assert (generate.n, score.batch_size, score.of("flip-k").temperature) == (4, 4, 0.7)
    _, files = split_options("select", {"quiet": True}, files=True, given={"files": FileOptions()})
    assert files.quiet and files.on_error == "fail"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: bon.score_records([], score=bon.SelectOptions()), "`score` must be a Score"),
        (lambda: bon.run_records([], generate=ScoreOptions()), "`generate` must be a Generate"),
        (lambda: bon.generate_records([], generate=bon.GenerateOptions(), nn=3), "unknown opt"),
        (lambda: bon.select_records([], select=bon.SelectOptions(), by=""), "`by` must be"),
    ],
)
def test_a_wrong_options_object_or_keyword_is_a_config_error(call, message):
    with pytest.raises(ConfigError, match=message):
        call()


def test_typed_and_flat_calls_give_the_same_records():
    records = [{"id": "a", "prompt": "Pick one.", "responses": ["short", "a longer answer"]}]
    flat = bon.rerank_records(records, scorers=["longest"], keep_all=True)
    typed = bon.rerank_records(
        records,
        score=ScoreOptions(scorers=("longest",)),
        select=bon.SelectOptions(keep_all=True),
    )
    assert costless(typed) == costless(flat) and flat[0]["selected"]["text"] == "a longer answer"
    params = inspect.signature(bon.rerank).parameters
    assert params["score"].default is None and params["files"].kind == params["files"].KEYWORD_ONLY


def test_the_openai_base_url_from_the_environment_is_part_of_the_identity(monkeypatch):
    monkeypatch.setitem(os.environ, "OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    one = ScoreOptions(engine="openai").identity()
    monkeypatch.setitem(os.environ, "OPENAI_BASE_URL", "http://127.0.0.1:8/v1")
    assert ScoreOptions(engine="openai").identity() != one


def _parsed(command: str, *args: str) -> dict:
    return main.commands[command].make_context(command, list(args)).params


@pytest.mark.parametrize(
    ("args", "ray"),
    [
        (["--ray", "in.jsonl", "-o", "out.jsonl"], "local"),
        (["in.jsonl", "-o", "out.jsonl", "--ray"], "local"),
        (["--ray=auto", "in.jsonl", "-o", "out.jsonl"], "auto"),
        (["in.jsonl", "--ray=ray://head:10001", "-o", "out.jsonl"], "ray://head:10001"),
        (["in.jsonl", "-o", "out.jsonl"], None),
    ],
)
def test_ray_alone_never_takes_the_next_argument(args, ray):
    params = _parsed("score", *args)
    assert (params["candidates"], params["output"], params["ray"]) == ("in.jsonl", "out.jsonl", ray)


def test_a_ray_address_after_a_space_is_refused_with_the_spelling_to_use():
    with pytest.raises(click.UsageError, match="write --ray=auto") as refused:
        _parsed("score", "--ray", "auto", "in.jsonl", "-o", "out.jsonl")
    assert "unexpected extra argument (in.jsonl)" in refused.value.message


def test_ray_alone_overrides_a_recipe_address(tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("ray: auto\n", encoding="utf-8")
    given = ["--recipe", str(recipe), "in.jsonl", "-o", str(tmp_path / "out")]
    assert _parsed("run", *given)["ray"] == "auto"
    assert _parsed("run", "--ray", *given)["ray"] == "local"


def test_eval_ifeval_offers_no_shard_or_follow_option():
    result = CliRunner().invoke(main, ["eval", "ifeval", "--help"])
    assert result.exit_code == 0 and "--overwrite" in result.output
    assert "--ray" in result.output and "--concurrent" in result.output
    for flag in ("--shard", "--follow"):
        assert flag not in result.output
        refused = CliRunner().invoke(main, ["eval", "ifeval", "-o", "out", flag])
        assert refused.exit_code == 2 and f"No such option '{flag}'" in refused.output
    assert "shard" in {p.name for p in main.commands["run"].params}
