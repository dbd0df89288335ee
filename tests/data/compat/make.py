"""Regenerate the fixtures of tests/test_compat.py with an old checkout of bon.

    git worktree add --detach /tmp/compat-old 0a360ad
    python tests/data/compat/make.py /tmp/compat-old
    git worktree remove /tmp/compat-old

Run from this checkout's environment (torch, transformers, the packaged SmolLM2). The old code
runs in subprocesses with PYTHONPATH=OLD; this checkout only builds the model folders
(`tests.test_compat.tiny_model`, `reward_head`). Writes, beside this file:

- `<run>/scored.jsonl` and `<run>/scored.jsonl.manifest.json`: what the old `bon score` wrote
  over candidates.jsonl for each run of `tests.test_compat.RUNS`, less the record `LEFT_OUT`,
  which goes to `<run>/left_out.jsonl`;
- `keys.json`: the old code's score cache key of each scorer of each case of `CASES`, the flat
  options of `Reranker(ScoreOptions(**flat))`, for `MESSAGES` and `CANDIDATE`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

from tests.test_compat import (  # noqa: E402  (the repository root is on sys.path only now)
    LEFT_OUT,
    OUTPUT,
    RUNS,
    reward_head,
    score_command,
    tiny_model,
)

MODEL = "head"
MESSAGES = [{"role": "user", "content": "What is 2 + 2?"}]
CANDIDATE = "4"
CASES = [
    {"scorers": ["flip-tokens", "flip-likelihood"], "token_reduce": "gain", "length_weight": 0.25,
     "echo_penalty": 5.0},
    {"scorers": ["flip", "flip-k"], "prompt": "short", "max_new_tokens": 64, "k": 2,
     "temperature": 0.5, "seed": 7, "echo_guard": False},
    {"scorers": ["judge-pairwise", "judge-pointwise", "judge-listwise"], "pairwise": "knockout",
     "engine": "openai", "engine_args": {"base_url": "http://127.0.0.1:9/v1"}},
    {"scorers": ["rm", "prm"], "rm_label": 1, "step_sep": "\n", "step_tag": "<extra_0>",
     "prm_label": 0, "step_reduce": "last"},
    {"scorers": ["confidence", "relevance"]},
    {"scorers": ["vote", "mbr", "longest", "shortest", "random"], "answer": "regex",
     "answer_pattern": r"answer is (\S+)", "max_response_words": 64, "seed": 3},
]  # fmt: skip
"""Flat options (every case on the model folder `MODEL`): each scorer with options of its own
set away from their defaults."""

KEYS = """
import json, sys
from bon.cache import score_key
from bon.reranker import Reranker
from bon.scorers import ScoreOptions

job = json.load(sys.stdin)
make = getattr(ScoreOptions, "from_keywords", ScoreOptions)  # before the options classes: the class
for case in job["cases"]:
    flat = {**case["keywords"], "scorers": tuple(case["keywords"]["scorers"]), "no_cache": True}
    case["keys"] = {
        s.name: score_key(s.describe(), job["messages"], job["candidate"])
        for s in Reranker(make(**flat)).scorers
    }
json.dump(job, sys.stdout, indent=1)
"""


def main() -> None:
    old = Path(sys.argv[1]).resolve()
    from bon.models import resolve_model

    smollm2 = resolve_model("smollm2-135m")
    env = {**os.environ, "PYTHONPATH": str(old), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tiny_model(work / "tiny", smollm2)
        reward_head(work / MODEL, smollm2)
        for run in RUNS:
            (work / OUTPUT).unlink(missing_ok=True)
            shutil.copy(HERE / "candidates.jsonl", work)
            command = [sys.executable, "-m", "bon", *score_command(run)]
            subprocess.run(command, cwd=work, env=env, check=True)
            lines = (work / OUTPUT).read_bytes().splitlines(keepends=True)
            out = HERE / run
            out.mkdir(exist_ok=True)
            left_out = [line for line in lines if json.loads(line)["id"] == LEFT_OUT]
            (out / "left_out.jsonl").write_bytes(b"".join(left_out))
            (out / OUTPUT).write_bytes(b"".join(line for line in lines if line not in left_out))
            shutil.copy(work / f"{OUTPUT}.manifest.json", out)
        job = {
            "commit": subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=old, capture_output=True, text=True
            ).stdout.strip(),
            "model": MODEL,
            "messages": MESSAGES,
            "candidate": CANDIDATE,
            "cases": [{"keywords": {"model": MODEL, **case}} for case in CASES],
        }
        keys = subprocess.run(
            [sys.executable, "-c", KEYS],
            cwd=work,
            env=env,
            input=json.dumps(job),
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        ).stdout
        (HERE / "keys.json").write_text(keys + "\n")


if __name__ == "__main__":
    main()
