"""Faults: records that fail mid-run, kill -9 at random moments, two writers, a full disk.

The first tests drive the pipeline with a fake stage (no real engine fails on demand); the
rest run `python -m bon` in real processes on the tiny random model.
"""

from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bon.errors import ConfigError, EngineError, InputError, RecordError
from bon.outputs import locked
from bon.records import RecordProblem, check_prompt
from bon.runner import run_file, run_records
from bon.stages import Stage, chain
from tests.conftest import read_jsonl, without_seconds, write_jsonl

pytestmark = pytest.mark.slow  # processes, servers or the real model: see setup.cfg

# --- per-record failures, with a fake stage ------------------------------------------------


class FakeStage:
    """A fake stage (the real engines cannot be made to fail on demand): it answers each record
    with its prompt upper-cased, returns a problem for ids in `problems`, raises `RecordError`
    for any batch holding an id in `record_errors`, and `unexpected` for every batch."""

    def __init__(self, problems=(), record_errors=(), unexpected=None) -> None:
        self.problems, self.record_errors, self.unexpected = problems, record_errors, unexpected
        self.calls: list[list[str]] = []

    def process(self, batch: list[dict]) -> list:
        self.calls.append([r["id"] for r in batch])
        if self.unexpected is not None:
            raise self.unexpected
        bad = [r["id"] for r in batch if r["id"] in self.record_errors]
        if bad:
            raise RecordError(f"prompt of {bad[0]} is too long for the model")
        return [
            RecordProblem("the engine could not answer")
            if r["id"] in self.problems
            else {**r, "answer": r["prompt"].upper()}
            for r in batch
        ]

    def stage(self) -> Stage:
        return Stage("fake", check_prompt, self.process, {"stage": "fake"}, budget=3)


def _prompts(tmp_path: Path, count: int = 7) -> Path:
    return write_jsonl(
        tmp_path / "p.jsonl", [{"id": f"r{i}", "prompt": f"q{i}"} for i in range(count)]
    )


def test_a_problem_under_skip_goes_to_the_errors_file_with_its_line(tmp_path):
    source, out = _prompts(tmp_path), tmp_path / "out.jsonl"
    report = run_file(FakeStage(problems={"r4"}).stage(), source, out, on_error="skip", quiet=True)
    assert (report.written, report.errors) == (6, 1)
    assert [r["id"] for r in read_jsonl(out)] == ["r0", "r1", "r2", "r3", "r5", "r6"]
    (entry,) = read_jsonl(Path(report.error_file))
    assert entry == {
        "file": str(source),
        "line": 5,
        "error": "the engine could not answer",
        "id": "r4",
    }
    # The failed record is retried by the next run; its problem is not lost or doubled.
    again = FakeStage(problems={"r4"})
    report = run_file(again.stage(), source, out, on_error="skip", quiet=True)
    assert again.calls == [["r4"]] and (report.resumed, report.errors) == (6, 1)
    assert len(read_jsonl(Path(report.error_file))) == 1
    fixed = run_file(FakeStage().stage(), source, out, on_error="skip", quiet=True)
    assert fixed.written == 1 and fixed.error_file is None
    assert not Path(f"{out}.errors.jsonl").exists()
    assert [r["id"] for r in read_jsonl(out)] == [f"r{i}" for i in range(7)]


def test_a_pre_check_error_and_a_run_time_problem_share_the_errors_file(tmp_path):
    source = write_jsonl(
        tmp_path / "p.jsonl", [{"id": "a", "prompt": "x"}, "{bad", {"id": "b", "prompt": "y"}]
    )
    out = tmp_path / "out.jsonl"
    report = run_file(FakeStage(problems={"b"}).stage(), source, out, on_error="skip", quiet=True)
    assert report.errors == 2
    assert [e["line"] for e in read_jsonl(Path(report.error_file))] == [2, 3]


def test_a_problem_under_fail_keeps_what_came_before_and_names_file_and_line(tmp_path):
    source, out = _prompts(tmp_path), tmp_path / "out.jsonl"
    with pytest.raises(InputError, match=f"{source}:5: the engine could not answer") as caught:
        run_file(FakeStage(problems={"r4"}).stage(), source, out, quiet=True)
    assert (caught.value.path, caught.value.line) == (str(source), 5)
    assert [r["id"] for r in read_jsonl(out)] == ["r0", "r1", "r2", "r3"]
    report = run_file(FakeStage().stage(), source, out, quiet=True)
    assert (report.resumed, report.written) == (4, 3)
    fresh = tmp_path / "fresh.jsonl"
    run_file(FakeStage().stage(), source, fresh, quiet=True)
    assert out.read_bytes() == fresh.read_bytes()


def test_a_record_error_retries_the_batch_one_record_at_a_time(tmp_path):
    source, out = _prompts(tmp_path), tmp_path / "out.jsonl"
    fake = FakeStage(record_errors={"r1"})
    report = run_file(fake.stage(), source, out, on_error="skip", quiet=True)
    assert fake.calls[:4] == [["r0", "r1", "r2"], ["r0"], ["r1"], ["r2"]]
    assert (report.written, report.errors) == (6, 1)
    (entry,) = read_jsonl(Path(report.error_file))
    assert (entry["line"], entry["error"]) == (2, "prompt of r1 is too long for the model")


def test_the_same_unexpected_error_for_every_record_of_the_first_batch_is_raised(tmp_path):
    fake = FakeStage(unexpected=KeyError("logits"))
    with pytest.raises(KeyError, match="logits"):
        run_file(fake.stage(), _prompts(tmp_path), tmp_path / "out.jsonl", on_error="skip")
    assert fake.calls == [["r0", "r1", "r2"], ["r0"], ["r1"], ["r2"]]


@pytest.mark.parametrize("error", [ConfigError("`x` must be set"), EngineError("server gone")])
def test_job_wide_errors_propagate_without_retries(tmp_path, error):
    fake = FakeStage(unexpected=error)
    with pytest.raises(type(error), match=str(error)):
        run_file(fake.stage(), _prompts(tmp_path), tmp_path / "out.jsonl", on_error="skip")
    assert fake.calls == [["r0", "r1", "r2"]]


def test_a_pipe_as_input_is_refused_rather_than_read_once(tmp_path):
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="not a regular file .*save it to a file first"):
        run_file(FakeStage().stage(), fifo, tmp_path / "out.jsonl")


def test_in_memory_runs_name_the_failed_record_by_position():
    items = [{"id": f"r{i}", "prompt": "q"} for i in range(3)]
    with pytest.raises(InputError, match="<records>:2: the engine could not answer"):
        run_records(FakeStage(problems={"r1"}).stage(), items)


def test_a_chain_passes_the_first_stages_problems_through():
    first, second = FakeStage(problems={"r1"}), FakeStage()
    items = [{"id": f"r{i}", "prompt": "q"} for i in range(3)]
    outcomes = chain(first.stage(), second.stage()).process(items)
    assert isinstance(outcomes[1], RecordProblem)
    assert [o["id"] for o in (outcomes[0], outcomes[2])] == ["r0", "r2"]
    assert second.calls == [["r0", "r2"]]


# --- real processes ------------------------------------------------------------------------

PROMPTS = [{"prompt": f"Write {i} words about the sea."} for i in range(24)]


def _bon(*args: object) -> list[str]:
    return [sys.executable, "-m", "bon", *(str(a) for a in args)]


def _generate(source: Path, out: Path, model: str) -> list[str]:
    return _bon(
        "generate",
        source,
        "-o",
        out,
        "--model",
        model,
        "--n",
        2,
        "--max-new-tokens",
        8,
        "--batch-size",
        4,
        "--seed",
        7,
        "--dtype",
        "float32",
        "-q",
    )


def _score(source: Path, out: Path, model: str) -> list[str]:
    return _bon(
        "score",
        source,
        "-o",
        out,
        "--model",
        model,
        "--max-new-tokens",
        8,
        "--batch-size",
        4,
        "--dtype",
        "float32",
        "--no-cache",
        "-q",
    )


def _select(source: Path, out: Path) -> list[str]:
    return _bon("select", source, "-o", out, "-q")


# One torch thread per process: on a small, shared machine two threads mostly wait on each other.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _ok(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=ENV, **kwargs)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _scored_rows(count: int) -> list[dict]:
    """Many scored records, so that `bon select` runs long enough to be killed mid-way."""
    rng = random.Random(0)
    return [
        {
            "id": f"s{i}",
            "prompt": f"question {i}",
            "candidates": [
                {"text": f"answer {i}.{j}", "scores": {"flip": rng.random()}} for j in range(4)
            ],
        }
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def references(tiny_model, tmp_path_factory):
    """Uninterrupted runs of each stage: the files every interrupted run must end up equal to."""
    folder = tmp_path_factory.mktemp("reference")
    prompts = write_jsonl(folder / "prompts.jsonl", PROMPTS)
    candidates, scored = folder / "candidates.jsonl", folder / "scored.jsonl"
    _ok(_generate(prompts, candidates, tiny_model))
    _ok(_score(candidates, scored, tiny_model))
    big = write_jsonl(folder / "big_scored.jsonl", _scored_rows(20_000))
    selected = folder / "selected.jsonl"
    _ok(_select(big, selected))
    return {
        "generate": (prompts, candidates),
        "score": (candidates, scored),
        "select": (big, selected),
    }


def _command(stage: str, source: Path, out: Path, model: str) -> list[str]:
    if stage == "generate":
        return _generate(source, out, model)
    if stage == "score":
        return _score(source, out, model)
    return _select(source, out)


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _kill_when(proc: subprocess.Popen, out: Path, lines: int, delay: float) -> None:
    """SIGKILL `proc` `delay` seconds after `out` holds `lines` lines; fail if it ended first."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and _lines(out) < lines:
        time.sleep(0.002)
    time.sleep(delay)
    proc.kill()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before the kill: not a mid-run kill"


TRIALS = ["generate"] * 4 + ["score"] * 4 + ["select"] * 2


@pytest.mark.parametrize("trial", range(len(TRIALS)))
def test_kill_9_at_a_random_moment_then_rerun_equals_an_uninterrupted_run(
    trial, references, tiny_model, tmp_path
):
    """Kills land after a random number of written lines plus a random delay (0-30 ms), so some
    hit a batch being computed and some (in `select`, which writes without pause) a write."""
    stage = TRIALS[trial]
    source, reference = references[stage]
    total = _lines(reference)
    rng = random.Random(1000 + trial)
    out = tmp_path / f"{stage}.jsonl"
    command = _command(stage, source, out, tiny_model)
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    _kill_when(proc, out, rng.randrange(1, int(total * 0.8)), rng.uniform(0, 0.03))
    assert _lines(out) < total
    if rng.random() < 0.5:
        with open(out, "ab") as handle:  # as if the kill had landed in the middle of a write
            handle.write(b'{"id": "half-writ')
    _ok(command)
    assert without_seconds(out) == without_seconds(reference)


def test_a_second_writer_is_refused_while_the_first_runs(tiny_model, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", PROMPTS * 20)
    out = tmp_path / "c.jsonl"
    first = subprocess.Popen(
        _generate(prompts, out, tiny_model),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    lock = Path(f"{out}.lock")
    try:
        deadline = time.monotonic() + 120
        while not (lock.exists() and lock.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        second = subprocess.run(
            _generate(prompts, out, tiny_model),
            capture_output=True,
            text=True,
            timeout=600,
            env=ENV,
        )
        assert first.poll() is None, "the first writer should still be running"
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 1
    assert (
        f"{out} is being written by another bon process (pid {first.pid}); "
        "wait for it or choose another output" in second.stderr
    )
    assert "Traceback" not in second.stderr
    # The killed writer's lock died with it, though its lock file stays behind.
    assert lock.exists()
    with locked(out):
        pass


def test_a_full_disk_stops_with_a_clear_message_and_a_rerun_completes(references, tmp_path):
    big, reference = references["select"]
    out = tmp_path / "selected.jsonl"
    limit = reference.stat().st_size // 3

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        _select(big, out),
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=small_files,
        env=ENV,
    )
    assert done.returncode == 1
    assert f"cannot write {out}: File too large; free space and rerun the same command" in (
        done.stderr
    )
    assert "Traceback" not in done.stderr
    assert 0 < out.stat().st_size <= limit
    _ok(_select(big, out))
    assert out.read_bytes() == reference.read_bytes()
