"""A scorer from a plugin package brings its own options: they reach `bon score --help` (under
the scorer's name), the CLI, the API, recipes, recorded configurations and cache keys.

The plugin is a real distribution found by `importlib.metadata`: a `.dist-info` folder with an
`entry_points.txt` in the `bon.scorers` group, on the path of the subprocesses that run bon.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PLUGIN = """
from dataclasses import dataclass

from bon.options import option, positive
from bon.scorers import Scored, Scorer
from bon.scorers.base import ScorerOptions


@dataclass(frozen=True)
class ShoutOptions(ScorerOptions):
    volume: int = option(
        2, "Points per capital letter.", check=positive, constraint="an integer >= 1"
    )
    k: int = option(0, "Points added to every candidate.", check=lambda v: isinstance(v, int))


class ShoutScorer(Scorer):
    name = "shout"
    Options = ShoutOptions

    def score(self, queries):
        own = self.own
        return [
            [Scored(float(sum(c.isupper() for c in t) * own.volume + own.k)) for t in q.candidates]
            for q in queries
        ]
"""

RECORD = {
    "id": "a",
    "messages": [{"role": "user", "content": "Say hi."}],
    "candidates": [{"text": "HI there"}, {"text": "hi"}],
}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """A folder holding the installed plugin distribution `bon-shout`."""
    root = tmp_path_factory.mktemp("site")
    (root / "bon_shout.py").write_text(PLUGIN)
    info = root / "bon_shout-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bon-shout\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[bon.scorers]\nshout = bon_shout:ShoutScorer\n")
    return root


def _run(site: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.getcwd()])}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300
    )


def test_help_lists_the_plugins_options_under_its_name(site, tmp_path):
    done = _run(site, ["-m", "bon", "score", "--help"], tmp_path)
    assert done.returncode == 0, done.stderr
    section = done.stdout.split("Options of scorer shout:")[1]
    assert "--volume" in section and "Points per capital letter." in section
    # `k` is flip-k's keyword already: the plugin's is spelled with its scorer's name
    assert "--shout-k" in section and "Points added" in section
    assert "Options of scorer flip-k:" in done.stdout


def test_the_cli_runs_the_plugin_with_its_options(site, tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps(RECORD) + "\n")
    out = tmp_path / "out.jsonl"
    flags = ["--scorer", "shout", "--volume", "3", "--shout-k", "5", "-q"]
    done = _run(site, ["-m", "bon", "score", str(source), "-o", str(out), *flags], tmp_path)
    assert done.returncode == 0, done.stderr
    record = json.loads(out.read_text())
    assert [c["scores"]["shout"] for c in record["candidates"]] == [11.0, 5.0]
    config = record["scoring"]["shout"]
    assert (config["volume"], config["k"]) == (3, 5)


API = textwrap.dedent(
    """
    import inspect, json, sys
    import bon
    from bon.cache import score_key
    from bon.errors import ConfigError
    from bon.reranker import Reranker
    from bon.scorers import ScoreOptions

    record = json.loads(sys.argv[1])
    out = {"signature": "volume" in inspect.signature(bon.score).parameters}
    scored = bon.score_records([record], scorers=("shout",), volume=3, no_cache=True)
    out["scores"] = [c["scores"]["shout"] for c in scored[0]["candidates"]]
    keys = []
    for volume in (3, 3, 4):
        options = ScoreOptions.from_keywords(scorers=("shout",), volume=volume)
        keys.append(score_key(Reranker(options).scorers[0].describe(), record["messages"], "x"))
    out["keys"] = keys
    typed = ScoreOptions(scorers=("shout",), scorer_options={"shout": {"volume": 3}})
    out["typed"] = typed.of("shout").volume
    try:
        bon.score_records([record], scorers=("shout",), volume=-1)
    except ConfigError as exc:
        out["error"] = str(exc)
    recipe = sys.argv[2]
    with open(recipe, "w") as handle:
        handle.write("scorers: [shout]\\nreranker_model: m\\nvolume: 4\\n")
    out["recipe"] = bon.load_recipe(recipe)["volume"]
    with open(recipe, "w") as handle:
        handle.write("scorers: [shout]\\nvolume: 0\\n")
    try:
        bon.load_recipe(recipe)
    except ConfigError as exc:
        out["recipe_error"] = str(exc)
    print(json.dumps(out))
    """
)


def test_api_and_cache_keys_take_the_plugins_options(site, tmp_path):
    recipe = tmp_path / "shout.yaml"
    done = _run(site, ["-c", API, json.dumps(RECORD), str(recipe)], tmp_path)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["signature"]
    assert out["scores"] == [6.0, 0.0]
    first, same, other = out["keys"]
    assert first == same != other  # its option is part of its cache key
    assert out["typed"] == 3
    assert out["error"] == "`volume` must be an integer >= 1, got -1"
    assert out["recipe"] == 4
    assert str(recipe) in out["recipe_error"]
    assert "`volume` must be an integer >= 1, got 0" in out["recipe_error"]
