"""`--ray`: generation and scoring as Ray Data pipelines on a real local Ray cluster."""

import os
import time
from functools import partial
from pathlib import Path

import pytest
import ray

import bon
from bon import api, stages
from bon.generator import GenerateOptions
from bon.ray_runner import LOCAL, RayRunner
from bon.runner import run_file
from tests.conftest import without_seconds, write_jsonl

pytestmark = pytest.mark.slow  # processes, servers or the real model: see setup.cfg

PROMPTS = [{"id": f"p{i}", "prompt": f"Describe {i}."} for i in range(5)] + [{"prompt": "Hi."}]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster for this module: 2 CPUs, actors at 0.5 CPU each (a whole CPU per
    actor deadlocks a 2-core machine). Workers import bon and these tests from this checkout."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    ray.init(
        num_cpus=2,
        object_store_memory=200 * 2**20,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    yield
    ray.shutdown()


def test_run_on_ray_equals_the_local_run(tmp_path, tiny_model, cluster):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    options = {
        "n": 2,
        "batch_size": 4,  # two records a batch: several batches, spread over both actors
        "model": tiny_model,
        "max_new_tokens": 6,
        "reranker_model": tiny_model,
        "reranker_max_new_tokens": 4,
        "reranker_batch_size": 4,
        "no_cache": True,
        "quiet": True,
    }
    reports = bon.run(prompts, tmp_path / "ray", ray="local", ray_actors=2, **options)
    assert [r.written for r in reports] == [6, 6, 6]
    bon.run(prompts, tmp_path / "local", **options)
    for name in api.RUN_FILES:
        ray, local = tmp_path / "ray" / name, tmp_path / "local" / name
        assert without_seconds(ray) == without_seconds(local)


def _crashing_stage(marker: str, options: GenerateOptions) -> stages.Stage:
    """The real generate stage, except that the first batch any actor runs kills that actor's
    process (fault injection: `marker` records that the crash happened)."""
    stage = stages.generate_stage(options)
    process = stage.process

    def crash_once(batch: list[dict]) -> list:
        if not os.path.exists(marker):
            Path(marker).write_text(str(os.getpid()))
            time.sleep(0.5)  # let other batches be in flight on other actors
            os._exit(1)
        return process(batch)

    stage.process = crash_once
    return stage


def test_a_killed_actor_is_restarted_without_losing_or_duplicating_records(
    tmp_path, tiny_model, cluster
):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    options = GenerateOptions(model=tiny_model, n=2, batch_size=2, max_new_tokens=6)
    marker = tmp_path / "crashed"
    build = partial(_crashing_stage, str(marker), options)
    runner = RayRunner(
        build, address=LOCAL, actors=2, cpus=0.5, gpus=0.0, quiet=True, spool_dir=tmp_path
    )
    report = run_file(build(), prompts, tmp_path / "ray.jsonl", runner=runner, quiet=True)
    assert marker.exists()  # an actor did die mid-run
    assert report.written == len(PROMPTS)
    bon.generate(
        prompts,
        tmp_path / "local.jsonl",
        n=2,
        batch_size=2,
        model=tiny_model,
        max_new_tokens=6,
        quiet=True,
    )
    assert without_seconds(tmp_path / "ray.jsonl") == without_seconds(tmp_path / "local.jsonl")
