"""Correct typed calls of bon's API, for the type checker: `mypy bon tests/typing_examples.py`
(CI, and tests/test_typing.py) must pass on them. Never run: pytest does not collect this file
and nothing calls these functions."""

from __future__ import annotations

from pathlib import Path

import bon
from bon import FileOptions, GenerateOptions, ScoreOptions, SelectOptions
from bon.scorers import VoteOptions


def run_flat() -> list[bon.Report]:
    return bon.run(
        "prompts.jsonl",
        Path("out"),
        n=4,
        temperature=0.7,
        engine_args={"sample_batching": "grouped"},
        scorers=["flip-tokens", "longest"],
        reranker_model="smollm2-135m",
        reranker_batch_size=8,
        k=4,
        by="flip-tokens",
        quiet=True,
        concurrent=False,
    )


def run_typed() -> list[bon.Report]:
    return bon.run(
        "prompts.jsonl",
        "out",
        generate=GenerateOptions(n=4, temperature=0.7),
        score=ScoreOptions(scorers=("flip-tokens",), batch_size=8),
        select=SelectOptions(keep_all=True),
        files=FileOptions(on_error="skip"),
        n=8,  # a flat keyword overrides the field of the object given
    )


def score_flat() -> bon.Report:
    return bon.score("candidates.jsonl", "scored.jsonl", scorers=["vote"], answer="text")


def score_typed() -> bon.Report:
    own = {"vote": VoteOptions(answer="text")}
    options = ScoreOptions(scorers=("vote",), scorer_options=own)
    return bon.score("candidates.jsonl", "scored.jsonl", score=options, files=FileOptions())


def generate_flat() -> bon.Report:
    return bon.generate("prompts.jsonl", "candidates.jsonl", n=8, seed=1, shard="1/2")


def generate_typed() -> bon.Report:
    return bon.generate(
        "prompts.jsonl", "candidates.jsonl", generate=GenerateOptions(model="smollm2-135m")
    )


def records() -> list[dict]:
    prompts = [{"prompt": "Name a prime number."}]
    chosen = bon.run_records(prompts, n=2, score=ScoreOptions(scorers=("longest",)))
    return bon.rerank_records(chosen, select=SelectOptions(by="longest"), keep_all=True)


def recipe(path: str) -> list[bon.Report]:
    return bon.run(**bon.load_recipe(path))


def serve_typed() -> None:
    from bon.entrypoints.serve import ServeOptions, start

    with start(
        generate=GenerateOptions(n=4),
        server=ServeOptions(port=0),
        scorers=["longest"],
        batch_wait_ms=10.0,
        reranker_batch_size=8,
    ) as running:
        print(running.url)
