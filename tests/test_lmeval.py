"""lm-evaluation-harness on the offline task data/lmeval_task: the registered `bon` model through
`simple_evaluate`, and lm-eval's `local-chat-completions` pointed at a real `bon serve`
subprocess, run by `bon lm-eval`. Generator and reranker are the tiny random Llama."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

os.environ["HF_DATASETS_OFFLINE"] = "1"

import lm_eval
from lm_eval.tasks import TaskManager

from bon.entrypoints.cli import main
from bon.entrypoints.lmeval import BonLM
from tests.conftest import _free_port, _stop, _wait_until_ready

TASK = Path(__file__).resolve().parent.parent / "data" / "lmeval_task"
STOPS = ("\n", ".")


@pytest.fixture
def task_dir(tmp_path: Path) -> Path:
    """The task's YAML with its data file's absolute path filled in (lm-eval needs one)."""
    folder = tmp_path / "tasks"
    folder.mkdir()
    data = TASK / "bon_tiny.jsonl"
    yaml = (TASK / "bon_tiny.yaml").read_text().replace("DATA_FILE", str(data))
    (folder / "bon_tiny.yaml").write_text(yaml)
    return folder


def _check_samples(samples: list[dict]) -> None:
    assert len(samples) == 3
    for sample in samples:
        (answer,) = sample["filtered_resps"]
        assert isinstance(answer, str) and not any(stop in answer for stop in STOPS)
        assert sample["exact_match"] in (0.0, 1.0)


def test_simple_evaluate_runs_best_of_n(tiny_model: str, task_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "scores.sqlite"
    args = f"model={tiny_model},reranker_model={tiny_model},n=2,device=cpu,cache_path={cache}"
    out = lm_eval.simple_evaluate(
        model="bon",
        model_args=args,
        tasks=["bon_tiny"],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        apply_chat_template=True,
        log_samples=True,
    )
    assert 0.0 <= out["results"]["bon_tiny"]["exact_match,none"] <= 1.0
    _check_samples(out["samples"]["bon_tiny"])
    # The reranker scored every prompt's candidates (flip-tokens keys a record's whole list).
    with sqlite3.connect(cache) as db:
        assert db.execute("SELECT COUNT(*) FROM scores").fetchone()[0] == 3 * 2


def test_likelihood_requests_are_refused_clearly(tiny_model: str) -> None:
    model = BonLM(model=tiny_model, n=2)  # loads nothing until it generates
    with pytest.raises(NotImplementedError, match="only generates"):
        model.loglikelihood([])
    with pytest.raises(NotImplementedError, match="generate_until tasks"):
        model.loglikelihood_rolling([])


def test_bad_model_args_are_config_errors(tiny_model: str) -> None:
    with pytest.raises(Exception, match="unknown option.*colour"):
        BonLM(model=tiny_model, colour="red")
    with pytest.raises(Exception, match="`batch_size` must be"):
        BonLM(model=tiny_model, batch_size="many")


@pytest.mark.slow
def test_local_chat_completions_against_bon_serve(
    tiny_model: str, task_dir: Path, tmp_path: Path
) -> None:
    port = _free_port()
    log_path = tmp_path / "serve.log"
    command = [
        sys.executable, "-m", "bon", "serve", "--model", tiny_model,
        "--reranker-model", tiny_model, "--device", "cpu", "--n", "2", "--port", str(port),
        "--cache-path", str(tmp_path / "scores.sqlite"),
    ]  # fmt: skip
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_until_ready(server, f"http://127.0.0.1:{port}/health", log_path, timeout=120)
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        args = [
            "lm-eval", "--model", "local-chat-completions",
            "--model_args", f"model=bon,base_url={url},max_retries=1",
            "--tasks", "bon_tiny", "--include_path", str(task_dir),
            "--apply_chat_template", "--gen_kwargs", "temperature=0.8",
            "--output_path", str(tmp_path / "out"), "--log_samples",
        ]  # fmt: skip
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
    finally:
        _stop(server)
    (results,) = (tmp_path / "out").rglob("results_*.json")
    assert 0.0 <= json.loads(results.read_text())["results"]["bon_tiny"]["exact_match,none"] <= 1
    (samples,) = (tmp_path / "out").rglob("samples_bon_tiny_*.jsonl")
    _check_samples([json.loads(line) for line in samples.read_text().splitlines()])
    served = log_path.read_text()
    assert served.count('"POST /v1/chat/completions HTTP/1.1" 200') == 3
