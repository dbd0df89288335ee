"""What a new user meets first on the command line: a missing extra is a one-line error that
says what to install, and stopping `bon serve` is a normal end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import bon.entrypoints.serve
from bon import api
from bon.entrypoints.cli import main
from tests.conftest import _free_port, _stop, _wait_until_ready


@pytest.mark.parametrize("module", ["fastapi", "uvicorn"])
def test_serve_without_the_serve_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails
    result = CliRunner().invoke(main, ["serve", "--model", "no-model-is-loaded"])
    assert result.exit_code == 1
    assert f'({module} is not installed): pip install "bon[serve]"' in result.output
    assert "Traceback" not in result.output


def test_another_missing_module_keeps_its_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A fastapi that is there but lacks a dependency of its own is not a missing extra."""
    (tmp_path / "fastapi").mkdir()
    (tmp_path / "fastapi" / "__init__.py").write_text("import bon_absent_dependency\n")
    monkeypatch.delitem(sys.modules, "fastapi", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="bon_absent_dependency"):
        bon.entrypoints.serve.serve(model="no-model-is-loaded")


@pytest.mark.parametrize("args", [["--help"], ["--model", "bon", "--tasks", "ifeval"]])
def test_lm_eval_without_the_lmeval_extra_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    monkeypatch.delitem(sys.modules, "bon.entrypoints.lmeval", raising=False)
    for name in ["lm_eval", *(n for n in list(sys.modules) if n.startswith("lm_eval."))]:
        monkeypatch.setitem(sys.modules, name, None)
    result = CliRunner().invoke(main, ["lm-eval", *args])
    assert result.exit_code == 1
    assert "bon lm-eval needs the lmeval extra" in result.output
    assert 'pip install "bon[lmeval]"' in result.output


def _stopped_by(signum: int):
    def fake_server(**options) -> None:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C
        os.kill(os.getpid(), signum)  # `bon serve` turns SIGTERM into an exception

    return fake_server


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stopping_serve_is_a_normal_end(monkeypatch: pytest.MonkeyPatch, signum: int) -> None:
    monkeypatch.setattr(bon.entrypoints.serve, "serve", _stopped_by(signum))
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 0, result.output
    assert "bon serve: stopped" in result.output and "rerun" not in result.output


def test_an_interrupted_stage_still_says_to_rerun(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def interrupted(*args, **options):
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "select", interrupted)
    result = CliRunner().invoke(main, ["select", str(tmp_path / "in"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 130
    assert "interrupted: rerun the same command to continue where it stopped" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_real_server_stops_cleanly_on_a_signal(
    tiny_model: str, tmp_path: Path, signum: int
) -> None:
    port = _free_port()
    log_path = tmp_path / "serve.log"
    command = [
        sys.executable, "-m", "bon", "serve", "--model", tiny_model, "--device", "cpu",
        "--n", "2", "--port", str(port), "--cache-path", str(tmp_path / "scores.sqlite"),
    ]  # fmt: skip
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_until_ready(server, f"http://127.0.0.1:{port}/health", log_path, timeout=180)
        server.send_signal(signum)
        code = server.wait(timeout=60)
    finally:
        _stop(server)
    output = log_path.read_text()
    assert code == 0, output[-4000:]
    assert "bon serve: stopped" in output and "Traceback" not in output
