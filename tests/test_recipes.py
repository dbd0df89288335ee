"""Recipes: every shipped recipe validates; flags given override a recipe; unknown keys fail."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import bon
from bon.entrypoints.cli import main
from bon.errors import ConfigError
from bon.scorers.mix import load_selector
from tests.conftest import costless, read_jsonl

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
SAMPLE = ROOT / "data" / "sample_prompts.jsonl"


def _command(recipe: Path):
    """The click command a recipe is for."""
    text = recipe.read_text()
    return (
        main.commands["eval"].commands["ifeval"]
        if "command: eval ifeval" in text
        else main.commands["run"]
    )


def _recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_five_recipes_ship():
    assert [r.name for r in RECIPES] == [
        "alpacaeval.yaml",
        "cpu-demo.yaml",
        "ifeval-bo8.yaml",
        "mtbench.yaml",
        "paper-gpu.yaml",
    ]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_validates_without_loading_a_model(recipe):
    command = "eval ifeval" if _command(recipe).name == "ifeval" else "run"
    values = bon.load_recipe(recipe, command)  # builds and checks every options object
    params = {p.name for p in _command(recipe).params}
    assert set(values) <= params, "each key is an option of the command"
    assert "out_dir" in values
    if command == "run":
        assert (ROOT / values["prompts"]).is_file()
    # Each recipe opens with comments that say how to run it.
    assert (
        recipe.read_text().startswith("#")
        and f"--recipe recipes/{recipe.name}" in recipe.read_text()
    )


def test_the_paper_recipe_is_a_tulu_generator_with_a_qwen3_flip_reranker_on_vllm():
    values = bon.load_recipe(ROOT / "recipes" / "paper-gpu.yaml")
    assert values["n"] == 16 and values["model"] == "allenai/Llama-3.1-Tulu-3-8B-SFT"
    assert values["engine"] == values["reranker_engine"] == "vllm"
    assert values["reranker_model"].startswith("Qwen/Qwen3")
    assert values["scorers"] == ("flip",)
    assert (values["prompt"], values["similarity"]) == ("paper", "f1")


def test_the_default_recipes_use_the_default_models():
    for name in ("cpu-demo", "ifeval-bo8"):
        values = bon.load_recipe(ROOT / "recipes" / f"{name}.yaml", None)
        assert values.get("model", "smollm2-135m") == "smollm2-135m"
        assert values.get("reranker_model", "smollm2-135m") == "smollm2-135m"
    assert bon.load_recipe(ROOT / "recipes" / "ifeval-bo8.yaml", "eval ifeval")["n"] == 8


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("n: 4\ntemprature: 0.5\n", "unknown key `temprature`"),
        ("n: 0\n", "`n` must be an integer >= 1, got 0"),
        ("scorers: [flip, nonesuch]\n", "`scorers` must be one of .* got 'nonesuch'"),
        ("engine_args: {bogus: 1}\n", "bogus"),
        ("- n: 4\n", "must be a mapping of option names"),
        ("n: [4\n", "not valid YAML"),
        ("output: a\nout_dir: b\n", "give `out_dir` or `output`, not both"),
        ("command: eval ifeval\nprompts: p.jsonl\n", "unknown key `prompts`"),
        ("command: eval ifeval\nshard: 0/2\n", "unknown key `shard`"),
        ("command: serve\n", "`command` must be one of run, eval ifeval"),
        ("command: eval ifeval\nlimit: 0\n", "`limit` must be an integer >= 1"),
    ],
)
def test_bad_recipes_name_the_file_and_the_problem(tmp_path, text, match):
    path = _recipe(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as raised:
        bon.load_recipe(path)
    assert str(path) in str(raised.value)


def test_the_cli_refuses_an_unknown_key_and_a_recipe_for_another_command(tmp_path):
    path = _recipe(tmp_path, f"prompts: {SAMPLE}\nout_dir: out\nbatchsize: 4\n")
    result = CliRunner().invoke(main, ["run", "--recipe", str(path)])
    assert result.exit_code == 2
    assert "unknown key `batchsize`" in result.output and str(path) in result.output
    ifeval = str(ROOT / "recipes" / "ifeval-bo8.yaml")
    result = CliRunner().invoke(main, ["run", "--recipe", ifeval])
    assert result.exit_code == 2 and "bon eval ifeval --recipe" in result.output


def test_flags_given_override_the_recipe_and_the_rest_comes_from_it(tmp_path, tiny_model):
    out = tmp_path / "out"
    path = _recipe(
        tmp_path,
        f"prompts: {tmp_path / 'missing.jsonl'}\noutput: {out}\nmodel: {tiny_model}\n"
        f"reranker_model: {tiny_model}\nn: 3\nmax_new_tokens: 5\nseed: 7\nquiet: true\n",
    )
    # PROMPTS on the command line overrides `prompts`; --n overrides `n`.
    result = CliRunner().invoke(main, ["run", "--recipe", str(path), str(SAMPLE), "--n", "2"])
    assert result.exit_code == 0, result.output
    records = read_jsonl(out / "candidates.jsonl")
    assert len(records) == len(read_jsonl(SAMPLE))
    generator = records[0]["generator"]
    assert (generator["n"], generator["max_new_tokens"], generator["seed"]) == (2, 5, 7)
    assert generator["model"] == tiny_model
    assert all(len(r["candidates"]) == 2 for r in records)
    # The same recipe through the API, with the same override, gives the same candidates.
    values = {**bon.load_recipe(path), "prompts": str(SAMPLE), "out_dir": str(tmp_path / "api")}
    bon.run(**{**values, "n": 2})
    assert costless(read_jsonl(tmp_path / "api" / "candidates.jsonl")) == costless(records)


def test_the_ifeval_recipe_runs_under_eval_ifeval(tmp_path, tiny_model):
    out = tmp_path / "ifeval"
    args = ["eval", "ifeval", "--recipe", str(ROOT / "recipes" / "ifeval-bo8.yaml")]
    args += ["-o", str(out), "--limit", "2", "--n", "2", "-m", tiny_model]
    args += ["--reranker-model", tiny_model, "--max-new-tokens", "6", "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    selected = read_jsonl(out / "selected.jsonl")
    assert len(selected) == 2 and selected[0]["generator"]["n"] == 2
    # The recipe's scorers (not the command's default) ran: both have a column in the table.
    assert "flip-tokens" in result.output and "shortest" in result.output


def test_a_flag_turns_off_what_the_recipe_turned_on(tmp_path):
    path = _recipe(tmp_path, "keep_all: true\n")
    run = main.commands["run"]
    given = ["--recipe", str(path), str(SAMPLE), "-o", str(tmp_path / "out")]
    assert run.make_context("run", [*given]).params["keep_all"] is True
    assert run.make_context("run", [*given, "--no-keep-all"]).params["keep_all"] is False


SELECTORS = sorted((ROOT / "recipes" / "selectors").glob("*.yaml"))


def test_the_fitted_selectors_ship_with_their_dev_and_test_accuracy():
    assert [s.stem for s in SELECTORS] == ["focus", "general", "ifeval_pref", "vs_small"]
    for path in SELECTORS:
        selector = load_selector(path)
        assert selector.names == ["flip-tokens", "relevance", "mbr", "confidence"]
        comments = "\n".join(line for line in path.read_text().splitlines() if line[:1] == "#")
        assert "# command: bon fit data/pref/" in comments and "--test data/pref/" in comments
        assert "cross-validated" in comments and "held out" in comments


def test_a_recipe_runs_a_fitted_selector_and_new_scorers_with_their_options(tmp_path):
    recipe = _recipe(
        tmp_path,
        f"prompts: {SAMPLE}\nout_dir: out\nscorers: [mix, vote]\n"
        f"mix: {ROOT / 'recipes' / 'selectors' / 'general.yaml'}\nanswer: text\n",
    )
    values = bon.load_recipe(recipe)
    assert (values["scorers"], values["answer"]) == (("mix", "vote"), "text")
    bad = _recipe(tmp_path, f"prompts: {SAMPLE}\nout_dir: out\nscorers: [vote]\nanswer: median\n")
    with pytest.raises(ConfigError, match="`answer` must be one of"):
        bon.load_recipe(bad)
