"""A real kill -9 in the middle of a run, then the same command again."""

import os
import signal
import subprocess
import sys
import time

from tests.conftest import read_jsonl, write_jsonl


def _generate(prompts, out, model):
    cmd = [sys.executable, "-m", "bon", "generate", str(prompts), "-o", str(out), "--model", model]
    cmd += ["--n", "2", "--max-new-tokens", "24", "--batch-size", "2", "--seed", "3", "-q"]
    return cmd


def test_kill_9_then_rerun_continues_without_loss_or_duplicates(tmp_path, tiny_model):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Question {i}?"} for i in range(80)])
    out = tmp_path / "c.jsonl"
    proc = subprocess.Popen(_generate(prompts, out, tiny_model), stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or len(out.read_bytes().splitlines()) < 5):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(read_jsonl(out))
    assert 5 <= done_before < 80, "the kill should land mid-run"
    with open(out, "a") as handle:
        handle.write('{"id": "half-written')  # as if the kill had hit a write
    subprocess.run(_generate(prompts, out, tiny_model), check=True)
    resumed = read_jsonl(out)

    fresh = tmp_path / "fresh.jsonl"
    subprocess.run(_generate(prompts, fresh, tiny_model), check=True)
    uninterrupted = read_jsonl(fresh)
    assert [r["id"] for r in resumed] == [r["id"] for r in uninterrupted]
    assert len({r["id"] for r in resumed}) == 80
    # One prompt per batch and per-record seeds: the resumed run is the uninterrupted run.
    assert resumed == uninterrupted
