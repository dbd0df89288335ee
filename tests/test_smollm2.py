"""The real packaged SmolLM2-135M-Instruct, end to end (about a minute on two CPU cores)."""

import json
import math
import re

import pytest
from click.testing import CliRunner

import bon
from bon.engines.hf import cpu_has_bf16
from bon.entrypoints.cli import main
from bon.models import resolve_model
from tests.conftest import read_jsonl, write_jsonl

pytestmark = pytest.mark.slow  # processes, servers or the real model: see setup.cfg


def test_packaged_model_converts_once_to_a_bf16_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BON_CACHE_DIR", str(tmp_path))
    path = resolve_model("smollm2-135m")
    config = json.loads((tmp_path / "models" / "smollm2-135m-bf16" / "config.json").read_text())
    assert path == str(tmp_path / "models" / "smollm2-135m-bf16")
    assert config["dtype"] == "bfloat16" and "quantization_config" not in config
    assert resolve_model("smollm2-135m") == path  # second call: no conversion
    assert (
        resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
        == "HuggingFaceTB/SmolLM2-135M-Instruct"
    )


def test_bon_run_on_the_default_model(tmp_path, smollm2_path):
    prompts = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"id": "capital", "prompt": "What is the capital of France?"},
            {"id": "colours", "prompt": "Name three colours of the rainbow."},
        ],
    )
    out = tmp_path / "out"
    args = [
        "run",
        prompts,
        "-o",
        out,
        "--n",
        2,
        "--max-new-tokens",
        32,
        "--reranker-max-new-tokens",
        48,
        "-q",
    ]
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    candidates = read_jsonl(out / "candidates.jsonl")
    assert candidates[0]["generator"]["model"] == "smollm2-135m"
    assert candidates[0]["generator"]["dtype"] == ("bfloat16" if cpu_has_bf16() else "float32")
    assert all(c["text"].strip() for r in candidates for c in r["candidates"])
    assert re.search(r"Paris|France", " ".join(c["text"] for c in candidates[0]["candidates"]))
    scored = read_jsonl(out / "scored.jsonl")
    name = bon.ScoreOptions().scorers[0]  # the default scorer
    for record in scored:
        assert record["scoring"][name]["model"] == "smollm2-135m"
        for candidate in record["candidates"]:
            assert math.isfinite(candidate["scores"][name])
    selected = read_jsonl(out / "selected.jsonl")
    assert [r["id"] for r in selected] == ["capital", "colours"]
    for record, scored_record in zip(selected, scored, strict=True):
        best = max(c["scores"][name] for c in scored_record["candidates"])
        assert record["selected"]["score"] == best and record["selected"]["by"] == name
