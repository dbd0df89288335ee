"""What a new user hit on a fresh clone (issue 22): the CPU's dtype and threads, progress and
work kept within a batch, early checks of `--by`, resume after a failed start, and messages."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import bon
from bon.engines.hf import cpu_has_bf16, others_running
from bon.entrypoints.cli import main
from bon.errors import ConfigError
from bon.generator import GenerateOptions
from bon.outputs import open_output
from bon.stages import generate_stage
from tests.conftest import read_jsonl, write_jsonl

# The dtype and threads chosen for the CPU.


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("fpu sse avx2 fma", False),
        ("fpu avx2 avx512f avx512_bf16", True),
        ("fpu avx2 amx_bf16 amx_tile", True),
    ],
)
def test_bf16_only_with_native_bf16_instructions(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    )
    assert cpu_has_bf16(str(cpuinfo)) is expected


def test_unknown_cpu_features_mean_float32(tmp_path):
    assert cpu_has_bf16(str(tmp_path / "missing")) is False


def test_auto_dtype_follows_the_cpu(tiny_model, monkeypatch):
    import bon.engines.hf as hf
    from bon.engines import load_engine

    for native, dtype in ((False, "float32"), (True, "bfloat16")):
        monkeypatch.setattr(hf, "cpu_has_bf16", lambda native=native: native)
        engine = load_engine(GenerateOptions(model=tiny_model, device="cpu", dtype="auto"))
        try:
            assert engine.describe()["dtype"] == dtype
        finally:
            engine.close()


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads Linux's /proc")
def test_a_busy_core_is_seen_and_left_to_its_owner():
    idle = others_running()
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)
        busy = others_running()
    finally:
        hog.kill()
        hog.wait()
    assert busy >= 1
    assert busy >= idle


def test_threads_follow_omp_num_threads_when_set(tiny_model, monkeypatch):
    import torch

    import bon.engines.hf as hf
    from bon.engines import load_engine

    before = torch.get_num_threads()
    monkeypatch.setattr(hf, "others_running", lambda: 10**6)  # every core busy
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", str(before))
        load_engine(GenerateOptions(model=tiny_model, device="cpu")).close()
        assert torch.get_num_threads() == before
        monkeypatch.delenv("OMP_NUM_THREADS")
        load_engine(GenerateOptions(model=tiny_model, device="cpu")).close()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


# Progress and work kept within what used to be one batch.


def test_hf_sampling_batches_one_record_at_a_time_only_when_each_has_a_call_of_its_own():
    alone = GenerateOptions(n=4, batch_size=32, engine_args={"sample_batching": "prompt"})
    assert generate_stage(alone).budget == generate_stage(alone).cost({}) == 4
    for mode in ("seeded", "grouped"):  # seeded, the default, batches records' rows together
        batched = GenerateOptions(n=4, batch_size=32, engine_args={"sample_batching": mode})
        assert generate_stage(batched).budget == 32
    assert generate_stage(GenerateOptions(n=4, batch_size=32)).budget == 32
    assert generate_stage(GenerateOptions(n=1, temperature=0, batch_size=32)).budget == 32


@pytest.mark.slow
def test_sigterm_keeps_the_records_of_the_batches_done(tmp_path, tiny_model):
    """Two records a batch (the default seeded sampling batches records, up to --batch-size
    sequences): a SIGTERM keeps the batches written, not only a whole run's."""
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"Question {i}?"} for i in range(12)])
    out = tmp_path / "c.jsonl"
    command = [sys.executable, "-m", "bon", "generate", str(prompts), "-o", str(out)]
    command += ["--model", tiny_model, "--n", "2", "--max-new-tokens", "96", "-q"]
    command += ["--batch-size", "4"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or not out.read_bytes().strip()):
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    kept = read_jsonl(out)
    assert proc.returncode == 143, stderr
    assert 1 <= len(kept) < 12, "records must be written one by one, not as one batch of 12"
    subprocess.run(command, check=True)
    assert len(read_jsonl(out)) == 12


# `--by` is checked before any model loads.


def test_rerank_by_an_unknown_score_fails_before_any_model_loads(tmp_path):
    source = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "Hi?", "responses": ["a", "bb"]}])
    started = time.monotonic()
    args = ["rerank", str(source), "-o", str(tmp_path / "o.jsonl"), "--by", "foo"]
    result = CliRunner().invoke(main, [*args, "--model", str(tmp_path / "no-such-model")])
    assert result.exit_code == 1
    assert "r.jsonl:1" in result.output and "'foo'" in result.output
    assert "--scorer foo" in result.output
    assert "cannot load model" not in result.output
    assert time.monotonic() - started < 30


def test_rerank_by_a_score_the_input_already_has_is_fine(tmp_path):
    scored = {"prompt": "Hi?", "candidates": [{"text": "a", "scores": {"mine": 2}}, {"text": "bb"}]}
    scored["candidates"][1]["scores"] = {"mine": 1}
    out = bon.rerank_records([scored], scorers=["longest"], by="mine")
    assert out[0]["selected"]["index"] == 0


def test_run_by_a_scorer_not_run_is_refused_before_generating(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi?"}])
    with pytest.raises(ConfigError, match="`by` must be one of the scorers run"):
        bon.run(prompts, tmp_path / "out", model=str(tmp_path / "nothing"), by="foo")


# Resume after a failed start; refusals name what changed; JSON errors point at the fault.


def test_a_run_that_failed_before_its_first_record_does_not_block_the_corrected_rerun(
    tmp_path, tiny_model
):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hi?"}])
    out = tmp_path / "c.jsonl"
    args = ["generate", str(prompts), "-o", str(out), "--n", "2", "--max-new-tokens", "4"]
    failed = CliRunner().invoke(main, [*args, "--model", str(tmp_path / "typo")])
    assert failed.exit_code == 1 and "cannot load model" in failed.output
    fixed = CliRunner().invoke(main, [*args, "--model", tiny_model])
    assert fixed.exit_code == 0, fixed.output
    assert len(read_jsonl(out)) == 1


def test_a_refused_resume_names_the_options_that_differ(tmp_path):
    path = tmp_path / "out.jsonl"
    with open_output(path, {"stage": "generate", "n": 4, "model": "a"}) as out:
        out.write({"id": "x"})
    with pytest.raises(ConfigError) as refused:
        open_output(path, {"stage": "generate", "n": 8, "model": "a"})
    assert "n: 4 -> 8" in str(refused.value)
    assert "model" not in str(refused.value).split(":", 2)[-1]


def test_an_empty_output_under_another_configuration_is_started_afresh(tmp_path):
    path = tmp_path / "out.jsonl"
    open_output(path, {"n": 4}).close()
    path.write_bytes(b'{"id": "half-writ')  # a kill before the first record was complete
    with open_output(path, {"n": 8}) as out:
        assert out.done == set()
    manifest = json.loads(Path(f"{path}.manifest.json").read_text())
    assert manifest["config"] == {"n": 8}


@pytest.mark.parametrize("read", ["file", "stdin"])
def test_a_json_error_names_the_column_of_the_fault(tmp_path, read):
    line = '{"prompt": "hello", x "responses": ["a"]}'
    assert line.index("x") + 1 == 21
    source = tmp_path / "bad.jsonl"
    source.write_text('{"prompt": "fine", "responses": ["a"]}\n' + line + "\n")
    path, stdin = (str(source), None) if read == "file" else ("-", source.read_text())
    result = CliRunner().invoke(
        main, ["rerank", path, "-o", str(tmp_path / "o"), "--scorer", "longest"], input=stdin
    )
    assert result.exit_code == 1
    assert ":2: not valid JSON" in result.output and "column 21" in result.output
