"""A real kill -9 in the middle of a run, then the same command again."""

import logging
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

import bon
from bon.entrypoints.cli import main
from bon.errors import ConfigError
from bon.records import fingerprint, input_fingerprint
from tests.conftest import read_jsonl, without_seconds, write_jsonl

pytestmark = pytest.mark.slow  # processes, servers or the real model: see setup.cfg


def _generate(prompts, out, model):
    cmd = [sys.executable, "-m", "bon", "generate", str(prompts), "-o", str(out), "--model", model]
    cmd += ["--n", "2", "--max-new-tokens", "12", "--batch-size", "2", "--seed", "3", "-q"]
    return cmd


def test_kill_9_then_rerun_continues_without_loss_or_duplicates(tmp_path, tiny_model):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Question {i}?"} for i in range(40)])
    out = tmp_path / "c.jsonl"
    proc = subprocess.Popen(_generate(prompts, out, tiny_model), stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) < 5):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(read_jsonl(out))
    assert 5 <= done_before < 40, "the kill should land mid-run"
    with open(out, "a") as handle:
        handle.write('{"id": "half-written')  # as if the kill had hit a write
    subprocess.run(_generate(prompts, out, tiny_model), check=True)
    resumed = read_jsonl(out)

    fresh = tmp_path / "fresh.jsonl"
    subprocess.run(_generate(prompts, fresh, tiny_model), check=True)
    uninterrupted = read_jsonl(fresh)
    assert [r["id"] for r in resumed] == [r["id"] for r in uninterrupted]
    assert len({r["id"] for r in resumed}) == 40
    # One prompt per batch and per-record seeds: the resumed run is the uninterrupted run
    # (but for the seconds each record took).
    assert without_seconds(out) == without_seconds(fresh)


def test_sigterm_unwinds_says_so_and_the_rerun_finishes_the_job(tmp_path, tiny_model):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Question {i}?"} for i in range(40)])
    out = tmp_path / "c.jsonl"
    proc = subprocess.Popen(_generate(prompts, out, tiny_model), stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) < 5):
        time.sleep(0.05)
    proc.terminate()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr
    assert "terminated: rerun the same command to continue where it stopped" in stderr
    assert 5 <= len(read_jsonl(out)) < 40, "the signal should land mid-run"
    subprocess.run(_generate(prompts, out, tiny_model), check=True)
    fresh = tmp_path / "fresh.jsonl"
    subprocess.run(_generate(prompts, fresh, tiny_model), check=True)
    assert without_seconds(out) == without_seconds(fresh)


# Resume that notices changed input, with the model-free `longest` scorer and the selector.


def _responses(texts: dict) -> list[dict]:
    return [
        {"id": key, "prompt": f"Say {key}.", "responses": value} for key, value in texts.items()
    ]


def _score(source, out, **options):
    return bon.score(source, out, scorers=["longest"], quiet=True, **options)


def test_a_changed_input_record_is_redone_not_kept(tmp_path, caplog):
    source = write_jsonl(tmp_path / "c.jsonl", _responses({"a": ["x", "yy"], "b": ["zzz"]}))
    out = tmp_path / "s.jsonl"
    assert _score(source, out).written == 2
    write_jsonl(source, _responses({"a": ["a much longer one", "yy"], "b": ["zzz"]}))
    with caplog.at_level(logging.INFO, logger="bon.runner"):
        report = _score(source, out)
    assert "1 records changed since the last run; redoing them" in caplog.text
    assert (report.written, report.redone, report.resumed) == (1, 1, 1)
    scored = read_jsonl(out)
    assert [r["id"] for r in scored] == ["a", "b"]  # still in input order
    assert scored[0]["candidates"][0]["scores"]["longest"] == len("a much longer one")
    fresh = tmp_path / "fresh.jsonl"
    _score(source, fresh)
    assert without_seconds(out) == without_seconds(fresh)


def test_records_that_left_the_input_are_dropped_and_order_follows_the_input(tmp_path):
    source = write_jsonl(tmp_path / "c.jsonl", _responses({"a": ["1"], "b": ["2"], "c": ["3"]}))
    out = tmp_path / "s.jsonl"
    _score(source, out)
    write_jsonl(source, _responses({"c": ["3"], "new": ["4"], "a": ["1"]}))
    report = _score(source, out)
    assert (report.written, report.resumed, report.redone) == (1, 2, 0)
    assert [r["id"] for r in read_jsonl(out)] == ["c", "new", "a"]
    fresh = tmp_path / "fresh.jsonl"
    _score(source, fresh)
    assert without_seconds(out) == without_seconds(fresh)


def test_each_output_record_carries_the_fingerprint_of_its_input(tmp_path):
    rows = _responses({"a": ["x"]})
    source = write_jsonl(tmp_path / "c.jsonl", rows)
    out = tmp_path / "s.jsonl"
    _score(source, out)
    selected = tmp_path / "sel.jsonl"
    bon.select(out, selected, by="longest", quiet=True)
    scored = read_jsonl(out)[0]
    assert scored["fingerprints"] == {"score": fingerprint(rows[0])}
    assert read_jsonl(selected)[0]["fingerprints"] == {
        "score": fingerprint(rows[0]),
        "select": input_fingerprint(scored),  # the fingerprint of all but its `cost`
    }


def test_overwrite_redoes_only_what_changed_when_the_config_is_the_same(tmp_path):
    source = write_jsonl(tmp_path / "s.jsonl", [_scored_row("a", 1.0), _scored_row("b", 2.0)])
    out = tmp_path / "sel.jsonl"
    assert bon.select(source, out, quiet=True).written == 2
    write_jsonl(source, [_scored_row("a", 1.0), _scored_row("b", -2.0)])
    report = bon.select(source, out, overwrite=True, quiet=True)
    assert (report.written, report.redone, report.resumed) == (1, 1, 1)
    assert [r["selected"]["index"] for r in read_jsonl(out)] == [0, 1]
    with pytest.raises(ConfigError, match="different configuration"):
        bon.select(source, out, keep_all=True, quiet=True)
    assert bon.select(source, out, keep_all=True, overwrite=True, quiet=True).written == 2


def _scored_row(key: str, first: float) -> dict:
    return {
        "id": key,
        "prompt": "p",
        "candidates": [
            {"text": "x", "scores": {"flip": first}},
            {"text": "y", "scores": {"flip": 0.0}},
        ],
    }


def test_cli_says_how_many_records_changed(tmp_path):
    source = write_jsonl(tmp_path / "s.jsonl", [_scored_row("a", 1.0)])
    out = tmp_path / "sel.jsonl"
    runner = CliRunner()
    assert runner.invoke(main, ["select", str(source), "-o", str(out), "-q"]).exit_code == 0
    write_jsonl(source, [_scored_row("a", -1.0)])
    result = runner.invoke(main, ["select", str(source), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "1 of them redone because their input changed" in result.output
