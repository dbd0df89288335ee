"""`--follow` and `bon run --concurrent`: scoring a candidates file while it is being written."""

import os
import subprocess
import sys
import threading
import time

import pytest

import bon
from bon import api
from bon.errors import BonError
from bon.follow import follow_lines
from bon.outputs import locked, manifest_path, mark_complete, open_output, read_manifest
from tests.conftest import read_jsonl, without_seconds, write_jsonl

pytestmark = pytest.mark.slow  # processes, servers or the real model: see setup.cfg

PROMPTS = [{"id": f"p{i}", "prompt": f"Tell me about {i}."} for i in range(8)]


def test_follow_gives_whole_lines_as_they_land_and_stops_when_complete(tmp_path):
    path = tmp_path / "grow.jsonl"
    got: list = []
    follower = threading.Thread(target=lambda: got.extend(follow_lines(path, poll=0.01)))
    with locked(path), open_output(path, {"c": 1}) as out:
        follower.start()  # the file exists, incomplete, and its writer (this process) is alive
        out.write({"id": "a"})
        _until(lambda: len(got) == 1)
        with open(path, "ab") as raw:
            raw.write(b'{"id": "b", "half": ')  # half a line: not given until its end lands
            raw.flush()
            time.sleep(0.2)
            assert [value for _, value in got] == [{"id": "a"}]
            raw.write(b"1}\n")
        _until(lambda: len(got) == 2)
        out.write({"id": "c"})
        assert follower.is_alive()
        mark_complete(path)
    follower.join(timeout=10)
    assert not follower.is_alive()
    assert [value["id"] for _, value in got] == ["a", "b", "c"]


def test_follow_refuses_an_abandoned_file_and_one_bon_did_not_write(tmp_path):
    path = write_jsonl(tmp_path / "half.jsonl", [{"id": "a"}])
    with pytest.raises(BonError, match="has no manifest, so no bon command is writing it"):
        list(follow_lines(path, poll=0.01))
    manifest_path(path).write_text('{"config_hash": "x", "complete": false}')
    with pytest.raises(BonError, match="incomplete and no bon command is writing it any more"):
        list(follow_lines(path, poll=0.01))


def test_score_follows_a_running_generate_process(tmp_path, tiny_model):
    """A real `bon generate` process writes while this process scores; the result equals
    scoring the finished file."""
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    cands, followed, after = (tmp_path / n for n in ("c.jsonl", "s1.jsonl", "s2.jsonl"))
    model = ["--model", tiny_model, "--max-new-tokens", "48"]  # slow enough to overlap
    command = [sys.executable, "-m", "bon", "generate", str(prompts), "-o", str(cands)]
    producer = subprocess.Popen(
        [*command, "--n", "2", "--batch-size", "2", "-q", *model],
        env={**os.environ, "BON_CACHE_DIR": str(tmp_path)},
        stderr=subprocess.PIPE,
    )
    overlapped = threading.Event()
    watcher = threading.Thread(target=_watch_overlap, args=(cands, followed, overlapped))
    watcher.start()
    try:
        # A batch of one record (2 candidates), so each is scored as soon as it lands.
        options = {"model": tiny_model, "max_new_tokens": 4, "batch_size": 2, "no_cache": True}
        report = bon.score(cands, followed, follow=True, quiet=True, **options)
        assert producer.wait(timeout=300) == 0, producer.stderr.read().decode()[-2000:]
    finally:
        producer.kill()
        producer.wait()
    watcher.join()
    assert overlapped.is_set()  # a scored record landed while the generator was still writing
    assert (report.written, report.resumed) == (len(PROMPTS), 0)
    bon.score(cands, after, quiet=True, **options)
    assert without_seconds(followed) == without_seconds(after)
    assert [r["id"] for r in read_jsonl(followed)] == [p["id"] for p in PROMPTS]


def test_run_concurrent_equals_the_sequential_run(tmp_path, tiny_model):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS[:4])
    options = {
        "n": 2,
        "model": tiny_model,
        "max_new_tokens": 6,
        "reranker_model": tiny_model,
        "reranker_max_new_tokens": 4,
        "no_cache": True,
        "quiet": True,
    }
    reports = bon.run(prompts, tmp_path / "both", concurrent=True, **options)
    assert [r.written for r in reports] == [4, 4, 4]
    bon.run(prompts, tmp_path / "seq", **options)
    for name in api.RUN_FILES:
        assert without_seconds(tmp_path / "both" / name) == without_seconds(tmp_path / "seq" / name)


def _watch_overlap(cands, scored, overlapped: threading.Event) -> None:
    """Set `overlapped` if `scored` holds a record while `cands` is not yet complete."""
    while True:
        done = (read_manifest(cands) or {}).get("complete") is True
        if done:
            return
        if scored.exists() and scored.stat().st_size > 0:
            overlapped.set()
            return
        time.sleep(0.02)


def _until(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
