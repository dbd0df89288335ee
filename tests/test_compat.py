"""Work done before the module split and the per-scorer options classes (commit 0a360ad) carries
over: an output the old `bon score` wrote resumes under today's code, and the score cache keys
of the old scorer configurations are unchanged.

The fixtures in tests/data/compat/ were written by the old code; tests/data/compat/make.py
regenerates them from a checkout of it, with the runs and model folders declared here.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from bon.cache import score_key
from bon.models import fingerprint
from bon.reranker import Reranker
from bon.scorers import ScoreOptions
from tests.conftest import run_bon
from tests.tiny_llama import build_tiny_llama

DATA = Path(__file__).parent / "data" / "compat"
REPO = Path(__file__).resolve().parents[1]
OUTPUT = "scored.jsonl"
LEFT_OUT = "b"
"""The record left out of each fixture output, so that the rerun has one to score."""

RUNS = {
    "free": ["--scorer", "vote", "--answer", "text", "--scorer", "mbr", "--scorer", "longest",
             "--scorer", "random", "--seed", "3"],
    "model": ["--model", "tiny", "--device", "cpu", "--dtype", "float32",
              "--scorer", "flip-tokens", "--token-reduce", "gain", "--length-weight", "0.25",
              "--echo-penalty", "5"],
}  # fmt: skip
"""Each fixture run's scorer flags; `bon score` runs them in a folder holding candidates.jsonl
(and, for "model", the tiny model made by `tiny_model`)."""

MTIME_NS = 1_700_000_000 * 10**9
"""The modification time given to the model folders' files: a local model's fingerprint, part of
its scorers' configuration and cache keys, hashes its weight files' times."""
HEAD_CONFIG = (
    '{"architectures": ["LlamaForSequenceClassification"], "model_type": "llama", '
    '"num_labels": 2}\n'
)
"""config.json of the model folder of the cache key cases: with no weights, its fingerprint is
a hash of this text alone, and rm and prm accept it as a classifier."""
STEP_TAG = "<extra_0>"


def score_command(run: str) -> list[str]:
    return ["score", "candidates.jsonl", "-o", OUTPUT, "--no-cache", *RUNS[run]]


def tiny_model(folder: Path, tokenizer_path: str) -> str:
    """The seeded tiny Llama of conftest, its files' times fixed so that its fingerprint depends
    on its config.json (which names the transformers version) and its weight files' sizes."""
    build_tiny_llama(folder, tokenizer_path)
    for item in folder.iterdir():
        os.utime(item, ns=(MTIME_NS, MTIME_NS))
    return str(folder)


def reward_head(folder: Path, tokenizer_path: str) -> str:
    """A model folder with `HEAD_CONFIG` and a tokenizer that knows `STEP_TAG`, no weights:
    enough for every scorer to describe itself, which loads no model."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    tokenizer.add_special_tokens({"additional_special_tokens": [STEP_TAG]})
    tokenizer.save_pretrained(folder)
    (folder / "config.json").write_text(HEAD_CONFIG)
    return str(folder)


def _resume(run: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[list, list]:
    """Rerun the fixture's command with today's code over a copy of the old output, check that
    it resumed (one record written, the manifest unchanged) and return the old output's lines
    and the new output's."""
    shutil.copy(DATA / "candidates.jsonl", tmp_path)
    for name in (OUTPUT, f"{OUTPUT}.manifest.json"):
        shutil.copy(DATA / run / name, tmp_path)
    monkeypatch.chdir(tmp_path)
    paths = [str(REPO), os.environ.get("PYTHONPATH")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    done = run_bon(*score_command(run))
    manifest = f"{OUTPUT}.manifest.json"
    assert (tmp_path / manifest).read_bytes() == (DATA / run / manifest).read_bytes()
    assert "wrote 1 records" in done.stderr and "2 were already done" in done.stderr
    old = (DATA / run / OUTPUT).read_bytes().splitlines(keepends=True)
    return old, (tmp_path / OUTPUT).read_bytes().splitlines(keepends=True)


def _left_out(run: str) -> bytes:
    return (DATA / run / "left_out.jsonl").read_bytes()


@pytest.mark.slow
def test_old_output_resumes_byte_for_byte(tmp_path, monkeypatch):
    """Model-free scorers (one with an option of its own): the kept lines and the manifest stay
    byte for byte, and the missing record is written, in its input place, exactly as the old
    code wrote it."""
    old, new = _resume("free", tmp_path, monkeypatch)
    assert [json.loads(line)["id"] for line in old] == ["a", "c"]
    assert new == [old[0], _left_out("free"), old[1]]


@pytest.mark.slow
def test_old_model_output_resumes(tmp_path, monkeypatch, smollm2_path):
    """A model scorer on the tiny model: the kept lines and the manifest stay byte for byte, and
    only the missing record is scored, under the old records' recorded configuration, to the
    old code's scores (up to float rounding)."""
    manifest = json.loads((DATA / "model" / f"{OUTPUT}.manifest.json").read_text())
    recorded = manifest["config"]["scorers"]["flip-tokens"]["model_fingerprint"]
    if fingerprint(tiny_model(tmp_path / "tiny", smollm2_path)) != recorded:
        import transformers

        pytest.skip(
            f"the tiny model built with transformers {transformers.__version__} is not the "
            "fixture's (its config.json or weight files differ); regenerate the fixtures with "
            "tests/data/compat/make.py"
        )
    old, new = _resume("model", tmp_path, monkeypatch)
    assert len(new) == 3 and [new[0], new[2]] == old
    added, expected = json.loads(new[1]), json.loads(_left_out("model"))
    assert added["scoring"] == json.loads(old[0])["scoring"] == expected["scoring"]
    numbers: list[float] = []
    expected_numbers: list[float] = []
    assert _floats(added, numbers) == _floats(expected, expected_numbers)
    assert numbers == pytest.approx(expected_numbers, rel=1e-2, abs=1e-3)


def _floats(value: Any, out: list[float]) -> Any:
    """`value` with each float moved to `out` (None left in its place)."""
    if isinstance(value, float):
        out.append(value)
        return None
    if isinstance(value, dict):
        return {k: _floats(v, out) for k, v in value.items()}
    if isinstance(value, list):
        return [_floats(v, out) for v in value]
    return value


def test_score_cache_keys_unchanged(tmp_path, monkeypatch, smollm2_path):
    """Each scorer's cache key, for flat options that today fill the per-scorer options classes,
    is the key the old code computed (keys.json): scores cached before are still found."""
    golden = json.loads((DATA / "keys.json").read_text())
    reward_head(tmp_path / golden["model"], smollm2_path)
    monkeypatch.chdir(tmp_path)
    assert golden["cases"]
    for case in golden["cases"]:
        flat = {**case["keywords"], "scorers": tuple(case["keywords"]["scorers"])}
        reranker = Reranker(ScoreOptions.from_keywords(**flat, no_cache=True))
        keys = {
            s.name: score_key(s.describe(), golden["messages"], golden["candidate"])
            for s in reranker.scorers
        }
        assert keys == case["keys"], case["keywords"]
