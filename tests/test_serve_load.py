"""`bon serve` under a bounded load: 64 concurrent requests from the async OpenAI client, mixed
with bodies it must refuse, against a real server with the tiny random Llama. The load and its
checks are benchmarks/serve_load.py's (`load`, `check`), which measures the same on a larger
setting."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

import openai

from bon import GenerateOptions, ScoreOptions
from bon.entrypoints.serve import ServeOptions, start

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 20_000


def _benchmark():
    spec = importlib.util.spec_from_file_location(
        "serve_load", ROOT / "benchmarks" / "serve_load.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_64_concurrent_requests_are_each_answered_once(tiny_model: str) -> None:
    bench = _benchmark()
    good = bench.good_requests(64, max_tokens=4)
    bad = bench.bad_bodies(LIMIT, repeat=1)
    # float32: a request's seeded samples are then the same batched and alone.
    cpu = {"model": tiny_model, "device": "cpu", "dtype": "float32"}
    generate = GenerateOptions(**cpu, n=2, max_new_tokens=4)
    score = ScoreOptions(**cpu, no_cache=True)
    server = ServeOptions(port=0, served_model_name=bench.NAME, max_request_bytes=LIMIT)
    with start(generate=generate, score=score, server=server) as running:
        result = asyncio.run(bench.load(running.url, good, bad))
        assert bench.check(result, good, bad) == []
        assert max(r["bon"]["batch_requests"] for r in result.replies) > 1  # batches formed
        # A request sent alone gets the answer it got in a batch.
        client = openai.OpenAI(base_url=running.url, api_key="unused", max_retries=0)
        for i in (0, 21, 63):
            alone = client.chat.completions.create(**good[i])
            assert alone.model_extra["bon"]["batch_requests"] == 1
            assert alone.choices[0].message.content == bench.answers(result)[i]
    refused = {(body.label, status) for body, status, _ in result.refused}
    assert refused == {(b.label, b.status) for b in bad}
