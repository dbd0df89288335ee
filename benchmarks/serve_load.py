"""`bon serve` under load (issue 20, item 6): concurrent requests mixed with bad ones.

A real `bon serve` on 127.0.0.1, with the tests' tiny random Llama as generator and reranker
(flip-tokens scoring, no score cache), takes `--requests` well-formed chat requests at once from
the async OpenAI client (`AsyncOpenAI` + `asyncio.gather`), each with a prompt and a seed of its
own, while a raw HTTP client (httpx) sends, at the same time, bodies it must refuse: broken
JSON, an unknown field, a bad temperature, a body over `max_request_bytes` and a wrong model
name. Two servers are measured in the same run, one after the other, on the same load:

- **batched**: the default batching: the first request of a batch waits `batch_wait_ms` (50)
  for others until their candidates fill the generator's `batch_size` (32, so 8 requests of
  best-of-4), and the batch runs as one `BestOfN.answer` call;
- **one-at-a-time**: each `BestOfN.answer` call takes one request (`batch_wait_ms` 0 and the
  generator's `batch_size` equal to best_of, so one request fills a batch's candidate budget);
  the other requests wait in the server's queue. Same concurrent load, same models.

Checks, under both: every good request is answered once, 200, with its own seed in `bon.seed`,
and with the generator prompt tokens of its own prompt (prompt i has i more words than prompt
0, so the counts are distinct); its answer is the same under both servers, i.e. the answer it
gets in a best-of-N call of its own (each request samples from its own seed, so batching must
not change an answer); every bad body gets its 4xx, and the good ones do not notice them.
Latency is per good request, from sending it to its whole response (p50: the median; p99:
nearest rank); requests/s is the good requests over the wall time of the whole load. A few
sequential requests warm each server up first (not counted).

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/serve_load.py

writes benchmarks/results/serve_load.md and .json. `load` and `check` are also what
tests/test_serve_load.py runs.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NAME = "bon-load"


@dataclass(frozen=True)
class Bad:
    """A body the server must refuse, and the status it must refuse it with."""

    label: str
    body: bytes
    status: int


def good_requests(count: int, max_tokens: int, seed: int = 1000) -> list[dict[str, Any]]:
    """`count` chat requests, each with a prompt and a seed of its own (prompt i is prompt 0
    with i more words, so its token count tells it apart)."""
    return [
        {
            "model": NAME,
            "messages": [{"role": "user", "content": f"Request {i}: name a colour." + " and" * i}],
            "seed": seed + i,
            "max_tokens": max_tokens,
        }
        for i in range(count)
    ]


def bad_bodies(limit: int, repeat: int) -> list[Bad]:
    """Bodies to refuse, each `repeat` times; `limit` is the server's `max_request_bytes`."""
    hi = [{"role": "user", "content": "hi"}]
    kinds = [
        Bad("broken JSON", b'{"model": "bon-load", "messages": [', 400),
        Bad(
            "unknown field", json.dumps({"model": NAME, "messages": hi, "colour": 1}).encode(), 400
        ),
        Bad(
            "temperature -1",
            json.dumps({"model": NAME, "messages": hi, "temperature": -1}).encode(),
            400,
        ),
        Bad(
            "oversized",
            json.dumps(
                {"model": NAME, "messages": [{"role": "user", "content": "x" * limit}]}
            ).encode(),
            413,
        ),
        Bad("wrong model", json.dumps({"model": "gpt-4", "messages": hi}).encode(), 404),
    ]
    return [kind for _ in range(repeat) for kind in kinds]


@dataclass
class Load:
    """What came back from one load: each good request's reply (a dict) and latency, each bad
    body's status and error message, and the wall time of the whole load."""

    replies: list[dict[str, Any]] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    refused: list[tuple[Bad, int, str]] = field(default_factory=list)
    wall_s: float = 0.0


async def load(url: str, good: list[dict[str, Any]], bad: list[Bad]) -> Load:
    """Send every good request (OpenAI's async client) and every bad body (raw HTTP) at once,
    interleaved; wait for all of them."""
    import httpx2 as httpx  # the httpx that the openai client uses here
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=900)
    raw = httpx.AsyncClient(timeout=900)

    async def ask(request: dict[str, Any]) -> tuple[dict[str, Any], float]:
        start = time.perf_counter()
        reply = await client.chat.completions.create(**request)
        return reply.model_dump(), time.perf_counter() - start

    async def refuse(body: Bad) -> tuple[Bad, int, str]:
        headers = {"content-type": "application/json"}
        reply = await raw.post(f"{url}/chat/completions", content=body.body, headers=headers)
        return body, reply.status_code, reply.json()["error"]["message"]

    jobs: list[Any] = [ask(request) for request in good]
    step = len(good) // (len(bad) + 1) + 1
    for k, body in enumerate(bad):  # spread among the good ones
        jobs.insert((k + 1) * step, refuse(body))
    try:
        start = time.perf_counter()
        results = await asyncio.gather(*jobs)
        wall = time.perf_counter() - start
    finally:
        await raw.aclose()
        await client.close()
    out = Load(wall_s=wall)
    for result in results:
        if isinstance(result[0], Bad):
            out.refused.append(result)
        else:
            out.replies.append(result[0])
            out.latencies.append(result[1])
    return out


def check(result: Load, good: list[dict[str, Any]], bad: list[Bad]) -> list[str]:
    """Everything wrong with a load's result (empty when all is well): a good request not
    answered exactly once with its own seed and its own prompt's token count (increasing with
    its index), a bad body without its status."""
    problems = []
    if len(result.replies) != len(good):
        problems.append(f"{len(result.replies)} replies to {len(good)} requests")
    ids = Counter(reply["id"] for reply in result.replies)
    if any(count > 1 for count in ids.values()):
        problems.append("a reply id came back twice")
    counts = []
    for request, reply in zip(good, result.replies, strict=False):
        extra = reply["bon"]
        if extra["seed"] != request["seed"]:
            problems.append(f"request with seed {request['seed']} got seed {extra['seed']}")
        if len(reply["choices"]) != 1 or reply["choices"][0]["message"]["content"] is None:
            problems.append(f"request with seed {request['seed']}: not one answer")
        counts.append(extra["usage"]["generator"]["prompt_tokens"])
    if any(b <= a for a, b in itertools.pairwise(counts)):
        problems.append(f"prompt token counts do not follow the prompts: {counts}")
    for body, status, message in result.refused:
        if status != body.status:
            problems.append(f"{body.label}: {status}, not {body.status} ({message})")
    if len(result.refused) != len(bad):
        problems.append(f"{len(result.refused)} refusals of {len(bad)} bad bodies")
    return problems


def answers(result: Load) -> list[str]:
    return [reply["choices"][0]["message"]["content"] for reply in result.replies]


def nearest_rank(values: list[float], percent: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]


def summary(result: Load) -> dict[str, Any]:
    batches = [reply["bon"]["batch_requests"] for reply in result.replies]
    return {
        "p50_s": round(statistics.median(result.latencies), 3),
        "p99_s": round(nearest_rank(result.latencies, 99), 3),
        "mean_s": round(statistics.fmean(result.latencies), 3),
        "wall_s": round(result.wall_s, 3),
        "requests_per_s": round(len(result.replies) / result.wall_s, 2),
        "batch_requests_mean": round(statistics.fmean(batches), 2),
        "batch_requests_max": max(batches),
        "refused": dict(Counter(f"{b.label}: {status}" for b, status, _ in result.refused)),
    }


MODES = {
    "batched": "batch_wait_ms 50 (default), generator batch_size 32 (default)",
    "one-at-a-time": "batch_wait_ms 0, generator batch_size = best_of (one request per call)",
}


def serve_and_load(model: str, args: argparse.Namespace, mode: str) -> tuple[Load, dict]:
    """Start a server in `mode`, warm it up, fire the load, stop it."""
    import openai

    from bon import GenerateOptions, ScoreOptions
    from bon.entrypoints.serve import ServeOptions, start

    batched = mode == "batched"
    # float32: seeded batched sampling gives each request the samples it gets alone (bf16
    # kernels round differently by batch shape), so the answers can be compared.
    generate = GenerateOptions(
        model=model,
        device="cpu",
        dtype="float32",
        n=args.best_of,
        max_new_tokens=args.max_tokens,
        **({} if batched else {"batch_size": args.best_of}),
    )
    score = ScoreOptions(model=model, device="cpu", dtype="float32", no_cache=True)
    server = ServeOptions(
        port=0,
        served_model_name=NAME,
        max_request_bytes=args.max_request_bytes,
        **({} if batched else {"batch_wait_ms": 0.0}),
    )
    good = good_requests(args.requests, args.max_tokens)
    bad = bad_bodies(args.max_request_bytes, args.bad_repeat)
    with start(generate=generate, score=score, server=server) as running:
        warm = openai.OpenAI(base_url=running.url, api_key="unused", max_retries=0)
        for request in good_requests(3, args.max_tokens, seed=1):
            warm.chat.completions.create(**request)
        result = asyncio.run(load(running.url, good, bad))
    settings = {
        "generate": {"n": generate.n, "max_new_tokens": generate.max_new_tokens,
                     "batch_size": generate.batch_size, "temperature": generate.temperature,
                     "dtype": generate.dtype},
        "score": {"scorers": list(score.scorers), "no_cache": True},
        "server": {"batch_wait_ms": server.batch_wait_ms,
                   "max_request_bytes": server.max_request_bytes},
    }  # fmt: skip
    return result, settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--best-of", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--max-request-bytes", type=int, default=20_000)
    parser.add_argument("--bad-repeat", type=int, default=2, help="each bad body this often")
    parser.add_argument(
        "--model",
        default="tiny",
        help="tiny (tests/tiny_llama.py's random Llama) or any model bon takes (smollm2-135m)",
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "serve_load.md"))
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from revisions import command_line, load_average, machine, revision, versions

    import bon
    from bon.models import resolve_model
    from tests.tiny_llama import build_tiny_llama

    with tempfile.TemporaryDirectory() as folder:
        model = (
            build_tiny_llama(Path(folder) / "tiny", resolve_model("smollm2-135m"))
            if args.model == "tiny"
            else args.model
        )
        results, settings = {}, {}
        for mode in MODES:
            results[mode], settings[mode] = serve_and_load(model, args, mode)
            print(mode, json.dumps(summary(results[mode])), file=sys.stderr, flush=True)
    good = good_requests(args.requests, args.max_tokens)
    bad = bad_bodies(args.max_request_bytes, args.bad_repeat)
    problems = {mode: check(result, good, bad) for mode, result in results.items()}
    same = answers(results["batched"]) == answers(results["one-at-a-time"])
    report = {
        "command": command_line(),
        "revision": revision(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "load_average_after": load_average(),
        "versions": versions(("torch", "transformers", "fastapi", "uvicorn", "pydantic", "openai"))
        + f", bon {bon.__version__}",
        "model": (
            "tests/tiny_llama.py: random Llama, 2 layers, hidden 64, SmolLM2 tokenizer"
            if args.model == "tiny"
            else args.model
        )
        + ", float32",
        "requests": args.requests,
        "bad_bodies": len(bad),
        "modes": {
            mode: {"meaning": MODES[mode], "settings": settings[mode], **summary(result)}
            for mode, result in results.items()
        },
        "checks": {"problems": problems, "same_answers_batched_and_alone": same},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    out.write_text(markdown(report), encoding="utf-8")
    print(f"wrote {out} and {out.with_suffix('.json')}", file=sys.stderr)
    if any(problems.values()) or not same:
        raise SystemExit(f"checks failed: {json.dumps(report['checks'])}")


def markdown(report: dict[str, Any]) -> str:
    modes = report["modes"]
    lines = [
        "# `bon serve` under load (issue 20, item 6)",
        "",
        f"Written by `benchmarks/serve_load.py` (see its docstring for what is measured): "
        f"{report['requests']} well-formed chat requests sent at once with `AsyncOpenAI` + "
        f"`asyncio.gather`, each with a prompt and a seed of its own, mixed with "
        f"{report['bad_bodies']} bodies the server must refuse, sent with httpx at the same "
        "time. Latency: per request, sending to whole response; requests/s: good requests over "
        "the wall time of the whole load.",
        "",
        f"- Command: `{report['command']}` (revision {report['revision']}, working tree)",
        f"- Model: {report['model']}; generator and reranker share it; scorer flip-tokens",
        f"- Machine: {report['machine']}; load average after the run {report['load_average_after']}"
        " (the machine is shared with other jobs)",
        f"- Versions: {report['versions']}",
        f"- Date: {report['date']}",
        "",
        "| mode | what it means | p50 s | p99 s | mean s | wall s | requests/s | requests per "
        "best-of-N call (mean / max) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for mode, row in modes.items():
        lines.append(
            f"| {mode} | {row['meaning']} | {row['p50_s']:.3f} | {row['p99_s']:.3f} | "
            f"{row['mean_s']:.3f} | {row['wall_s']:.2f} | {row['requests_per_s']:.2f} | "
            f"{row['batch_requests_mean']:.2f} / {row['batch_requests_max']} |"
        )
    first = next(iter(modes.values()))
    settings = first["settings"]
    lines += [
        "",
        f"Settings (both modes): best_of {settings['generate']['n']}, max_tokens "
        f"{settings['generate']['max_new_tokens']}, temperature "
        f"{settings['generate']['temperature']}, max_request_bytes "
        f"{settings['server']['max_request_bytes']}; per mode: "
        + "; ".join(
            f"{mode}: batch_wait_ms {row['settings']['server']['batch_wait_ms']:g}, batch_size "
            f"{row['settings']['generate']['batch_size']}"
            for mode, row in modes.items()
        )
        + ".",
        "",
        "Refused bodies (label: status, count): "
        + "; ".join(f"{mode}: {json.dumps(row['refused'])}" for mode, row in modes.items()),
        "",
        "Checks: every good request answered once with its own seed and its own prompt's token "
        f"count, every bad body its 4xx: problems {json.dumps(report['checks']['problems'])}; "
        "each answer the same batched as in a call of its own: "
        f"{report['checks']['same_answers_batched_and_alone']}.",
        "",
        "A batch of requests is sampled in one generator call (the hf engine's seeded mode: "
        "each request's candidates drawn from its own seed's streams) and scored in one "
        "reranker call; one-at-a-time runs each request alone. Models at float32, where a "
        "request's answer is the same batched and alone.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
