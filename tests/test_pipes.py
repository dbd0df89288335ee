"""Stages piped through stdin and stdout, in real `python -m bon` processes on the tiny model."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

import bon
from bon import api
from bon.entrypoints.cli import main
from tests.conftest import costless, read_jsonl, write_jsonl

pytestmark = pytest.mark.slow  # processes, servers or the real model: see setup.cfg

PROMPTS = [
    {"id": "a", "prompt": "Name a colour."},
    {"prompt": "Count to three."},
    {"prompt": "Count to three."},
    {"id": 7, "prompt": "Say hi.", "source": "team"},
]


def _env(tmp_path) -> dict:
    return {**os.environ, "BON_CACHE_DIR": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}


def _options(model: str) -> list[str]:
    return ["--model", model, "--max-new-tokens", "5"]


def test_three_piped_stages_equal_the_file_run(tmp_path, tiny_model):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    bon_ = f"{sys.executable} -m bon"
    model = " ".join(_options(tiny_model))
    command = (
        f"{bon_} generate {prompts} -o - --n 3 --seed 4 {model} "
        f"| {bon_} score - -o - --no-cache {model} "
        f"| {bon_} select - -o best.jsonl"
    )
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == ""  # every record went down the pipe, every message to stderr
    assert "wrote 4 records to <stdout>" in done.stderr
    # No resume state for stdout: only the selector's file output has a manifest.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.jsonl",
        "best.jsonl.manifest.json",
        "prompts.jsonl",
    ]
    reports = bon.run(
        prompts,
        tmp_path / "files",
        n=3,
        seed=4,
        model=tiny_model,
        max_new_tokens=5,
        reranker_model=tiny_model,
        reranker_max_new_tokens=5,
        no_cache=True,
        quiet=True,
    )
    assert [r.written for r in reports] == [4, 4, 4]
    piped = read_jsonl(tmp_path / "best.jsonl")
    assert costless(piped) == costless(read_jsonl(tmp_path / "files" / api.RUN_FILES[2]))
    assert [r["id"] for r in piped][0::3] == ["a", 7]


def test_a_record_leaves_as_soon_as_its_batch_is_done(tmp_path, tiny_model):
    """With stdin still open, the first prompt's record comes out before the second goes in."""
    command = [sys.executable, "-m", "bon", "generate", "-", "-o", "-", "--n", "2"]
    stage = subprocess.Popen(
        [*command, "--batch-size", "2", *_options(tiny_model)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(tmp_path),
        cwd=tmp_path,
    )
    try:
        stage.stdin.write(json.dumps(PROMPTS[0]).encode() + b"\n")
        stage.stdin.flush()
        first = json.loads(stage.stdout.readline())
        assert first["id"] == "a" and len(first["candidates"]) == 2
        stage.stdin.write(b'{"id": "b", "prompt": "Another."}\n{"prompt": ""}\n')
        stage.stdin.close()
        rest = stage.stdout.read().decode()
        assert stage.wait(timeout=120) != 0  # the empty prompt fails the run ...
        assert [json.loads(line)["id"] for line in rest.splitlines()] == ["b"]  # ... once reached
        assert "<stdin>:3: `prompt` is empty" in stage.stderr.read().decode()
    finally:
        stage.kill()
        stage.wait()


def test_stdin_into_a_file_output_resumes(tmp_path, tiny_model):
    """A file output keeps its resume when its input comes from stdin (read whole first)."""
    text = "".join(json.dumps(p) + "\n" for p in PROMPTS[:2])
    out = tmp_path / "cands.jsonl"
    args = ["generate", "-", "-o", out, "--n", 2, "--model", tiny_model, "--max-new-tokens", 3]
    runner = CliRunner()
    first = runner.invoke(main, [str(a) for a in args], input=text)
    assert first.exit_code == 0, first.output
    assert "wrote 2 records" in first.output
    again = runner.invoke(main, [str(a) for a in args], input=text)
    assert "wrote 0 records" in again.output and "2 were already done" in again.output
    assert read_jsonl(out)[0]["id"] == "a"
