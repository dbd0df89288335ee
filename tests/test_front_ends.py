"""Every front end takes its options from the one declaration of each option (`bon.options`):
the same names, the same defaults, and for a bad value the same message as the command line.

The front ends walked here: the CLI's commands, the API functions, the lm-eval model, the Ray
runner, `bon eval pref` and `bon eval ifeval`, recipes, `bon.rewards`, and the engine args of
`--help`. `bon serve`'s request model is walked in tests/test_serve.py.
"""

from __future__ import annotations

import dataclasses
import inspect
import re

import click
import pytest
from click.testing import CliRunner

import bon
from bon import api
from bon.engines import engines
from bon.entrypoints import cli
from bon.entrypoints.rewards import Reward
from bon.errors import ConfigError
from bon.evals.ifeval import IfevalOptions
from bon.evals.pref import PrefOptions
from bon.generator import GenerateOptions
from bon.options import defaults, fields
from bon.ray_runner import RayRunner
from bon.recipes import load_recipe
from bon.scorers import ScoreOptions

# One bad value per kind of option, and the options class that declares it.
BAD = [
    (GenerateOptions, "temperature", -1.0),
    (GenerateOptions, "n", 0),
    (GenerateOptions, "top_p", 1.5),
    (ScoreOptions, "batch_size", 0),
    (PrefOptions, "bootstrap", -1),
    (IfevalOptions, "limit", 0),
]


def declared_message(cls: type, name: str, value: object) -> str:
    with pytest.raises(ConfigError) as caught:
        cls(**{name: value})
    return str(caught.value)


def cli_error(*args: str) -> str:
    result = CliRunner().invoke(cli.main, list(args))
    assert result.exit_code != 0, result.output
    return result.output.strip().splitlines()[-1].removeprefix("Error: ")


def command(path: str) -> click.Command:
    found: click.Command = cli.main
    for name in path.split():
        assert isinstance(found, click.Group)
        found = found.commands[name]
    return found


def options_of(path: str) -> dict[str, click.Parameter]:
    return {p.name: p for p in command(path).params if isinstance(p, click.Option) and p.name}


@pytest.mark.parametrize(
    "path, groups",
    [
        *((name, api.option_groups(name, files=True)) for name in api.COMMANDS),
        ("export", api.option_groups("export", files=False)),
        ("fit", api.option_groups("fit", files=False)),
        ("eval pref", [api.Group(PrefOptions), api.Group(ScoreOptions)]),
        ("eval ifeval", [api.Group(IfevalOptions), *api.option_groups("eval ifeval", files=True)]),
    ],
)
def test_each_command_takes_the_declared_names_and_defaults(path, groups):
    declared = {e.keyword: e.field.default for g in groups for e in g.entries()}
    given = options_of(path)
    assert set(declared) <= set(given)
    for keyword, default in declared.items():
        assert given[keyword].default == default, keyword
    # Options not declared are only the command's own presentation (output, json, quiet).
    assert set(given) - set(declared) <= {"as_json", "quiet", "output", "out_dir", "recipe"}


@pytest.mark.parametrize("name", sorted(api.COMMANDS))
def test_api_functions_take_the_declared_keywords(name):
    signature = inspect.signature(getattr(bon, name))
    flat = {p.name: p.default for p in signature.parameters.values() if p.kind == p.KEYWORD_ONLY}
    for parameter in api.keywords(name, files=True):
        assert flat[parameter.name] == parameter.default


def test_cli_and_api_give_the_declarations_message(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"id": "a", "prompt": "Hi"}\n')
    expected = declared_message(GenerateOptions, "temperature", -1.0)
    assert expected == "`temperature` must be >= 0, got -1.0"
    assert (
        cli_error("generate", str(prompts), "-o", str(tmp_path / "c.jsonl"), "--temperature", "-1")
        == expected
    )
    with pytest.raises(ConfigError) as caught:
        bon.generate(prompts, tmp_path / "c.jsonl", temperature=-1.0)
    assert str(caught.value) == expected


def test_lm_eval_model_args_are_run_keywords_with_the_same_checks():
    from bon.entrypoints.lmeval import BonLM

    model = BonLM(n=3, scorer="longest", temperature=0.5)
    assert (model.bon.generate.n, model.bon.score.scorers) == (3, ("longest",))
    assert model.bon.generate.top_p == defaults(GenerateOptions)["top_p"]
    # lm-eval's own batch_size is prompts per call; the reranker's takes `bon run`'s prefix.
    cases = [(cls, name, name, value) for cls, name, value in BAD[:3]]
    cases.append((ScoreOptions, "reranker_batch_size", "batch_size", 0))
    for cls, keyword, name, value in cases:
        with pytest.raises(ConfigError) as caught:
            BonLM(**{keyword: value})
        assert str(caught.value) == declared_message(cls, name, value)
    with pytest.raises(ConfigError, match="give `scorer` or `scorers`, not both"):
        BonLM(scorer="longest", scorers=("random",))


def test_the_ray_runner_takes_the_file_options_and_repeats_no_default():
    parameters = inspect.signature(RayRunner).parameters
    for name in ("address", "actors", "cpus", "gpus", "quiet"):
        assert parameters[name].default is inspect.Parameter.empty, name
    assert {"ray", "ray_actors", "ray_cpus", "ray_gpus"} <= {
        f.name for f in fields(api.FileOptions)
    }


def test_eval_pref_checks_its_options_as_declared(tmp_path):
    labelled = tmp_path / "pref.jsonl"
    labelled.write_text('{"prompt": "Hi", "chosen": ["Hello"], "rejected": ["x"]}\n')
    expected = declared_message(PrefOptions, "bootstrap", -1)
    assert cli_error("eval", "pref", str(labelled), "--bootstrap", "-1") == expected
    with pytest.raises(ConfigError) as caught:
        bon.eval_pref(labelled, bootstrap=-1)
    assert str(caught.value) == expected


def test_recipes_know_the_declared_keys_and_checks(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("command: eval ifeval\nlimit: 0\n")
    with pytest.raises(ConfigError) as caught:
        load_recipe(recipe)
    assert str(caught.value) == f"{recipe}: {declared_message(IfevalOptions, 'limit', 0)}"
    recipe.write_text("command: eval ifeval\nlimit: 3\nprompt_seed: 2\nn: 2\n")
    assert load_recipe(recipe) == {"limit": 3, "prompt_seed": 2, "n": 2}
    recipe.write_text("temperature: -1.0\n")
    with pytest.raises(ConfigError) as caught:
        load_recipe(recipe)
    assert (
        str(caught.value) == f"{recipe}: {declared_message(GenerateOptions, 'temperature', -1.0)}"
    )


def test_rewards_take_the_scoring_keywords():
    reward = Reward(batch_size=4, token_reduce="mean")
    assert reward.scorer == ScoreOptions().scorers[0]
    assert reward.options.batch_size == 4
    with pytest.raises(ConfigError) as caught:
        Reward(batch_size=0)
    assert str(caught.value) == declared_message(ScoreOptions, "batch_size", 0)


def test_help_lists_every_engine_arg_with_its_default():
    text = CliRunner().invoke(cli.main, ["generate", "--help"], terminal_width=200).output
    for name in engines.names():
        args = engines.get(name).Args
        if not fields(args):
            continue
        section = " ".join(text.split(f"Engine args of {name} ")[1].split())
        for field in fields(args):
            shown = "unset" if field.default is None else repr(field.default)
            assert re.search(rf"{field.name}=\w+ [^\[]*\[default: {re.escape(shown)}\]", section)


def test_engine_args_are_checked_as_declared():
    for name in engines.names():
        args = engines.get(name).Args
        assert dataclasses.asdict(args()) == defaults(args)
    with pytest.raises(ConfigError, match="`concurrency` must be an integer >= 1, got 0"):
        GenerateOptions(engine="openai", engine_args={"concurrency": "0"})
    with pytest.raises(ConfigError, match="`sample_batching` must be one of"):
        GenerateOptions(engine_args={"sample_batching": "nope"})
