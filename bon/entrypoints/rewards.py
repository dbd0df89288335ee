"""bon's scorers as reward functions for RL trainers (TRL's GRPO signature).

    from bon.entrypoints.rewards import flip_reward
    trainer = trl.GRPOTrainer(model=..., reward_funcs=[flip_reward()], ...)

A `Reward` is called with `prompts` and `completions` (plain strings, or chat turns as TRL
gives them for conversational datasets) and returns one float per completion. Completions of
the same prompt form one record, so scorers that compare a record's candidates (flip-tokens,
pairwise judges) see the whole group; scores come through the reranker stage, with its
batching and its score cache. The options are validated when the reward is made; the model
loads on the first call. A higher reward is always better: scores of scorers where lower is
better are negated. A completion that cannot be scored (a prompt longer than the model's
context) gets None, which TRL skips.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from bon import records
from bon.errors import RecordError
from bon.online import finite, settle
from bon.records import RecordProblem
from bon.reranker import Reranker
from bon.scorers import ScoreOptions, scorers

log = logging.getLogger(__name__)


def _messages(prompt: Any) -> list[dict[str, str]]:
    """Chat turns from a plain prompt or from TRL's conversational one."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        return [{"role": m.get("role"), "content": _text(m.get("content"))} for m in prompt]
    raise RecordError(f"a prompt must be a string or a list of chat turns, got {prompt!r:.80}")


def _text(content: Any) -> Any:
    """A turn's text; TRL may give content as a list of {type: text, text} parts."""
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content


def _completion(completion: Any) -> str:
    """The text of a plain completion or of TRL's `[{"role": "assistant", "content": ...}]`."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        return str(_text(completion[-1].get("content")) or "")
    raise RecordError(f"a completion must be a string or chat turns, got {completion!r:.80}")


class Reward:
    """A reward function `fn(prompts, completions, **kwargs) -> list[float | None]` that
    scores with the scorer `scorer` and the reranker's options (`ScoreOptions` keywords:
    `model`, `engine`, `device`, `batch_size`, `token_reduce`, ...)."""

    def __init__(self, scorer: str = "flip-tokens", **options: Any) -> None:
        if "scorers" in options:
            raise TypeError("give one `scorer`; `scorers` is not an option of a reward")
        self.options = ScoreOptions.from_keywords(scorers=(scorer,), **options)
        self.scorer = scorer
        self.__name__ = f"bon_{scorer.replace('-', '_')}"
        self._sign = 1.0 if scorers.get(scorer).higher_is_better else -1.0
        self._reranker: Reranker | None = None
        self.calls = 0

    def __call__(
        self, prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float | None]:
        if len(prompts) != len(completions):
            raise RecordError(
                f"got {len(prompts)} prompts and {len(completions)} completions; "
                "they must pair up one to one"
            )
        self.calls += 1
        groups: dict[str, list[int]] = {}
        turns: dict[str, list[dict[str, str]]] = {}
        for i, prompt in enumerate(prompts):
            messages = _messages(prompt)
            key = json.dumps(messages, sort_keys=True)
            groups.setdefault(key, []).append(i)
            turns[key] = messages
        batch = [
            {
                "id": str(n),
                "messages": turns[key],
                "responses": [_completion(completions[i]) for i in members],
            }
            for n, (key, members) in enumerate(groups.items())
        ]
        rewards: list[float | None] = [None] * len(prompts)
        for record, members in zip(self._score(batch), groups.values(), strict=True):
            if isinstance(record, BaseException):
                if not isinstance(record, RecordError):
                    raise record
                log.warning(
                    "%s: %d completions got no reward: %s", self.__name__, len(members), record
                )
                continue
            for i, candidate in zip(members, record["candidates"], strict=True):
                value = finite(candidate["scores"][self.scorer])
                rewards[i] = None if value is None else self._sign * value
        return rewards

    def _score(self, batch: list[dict]) -> list[dict | BaseException]:
        """Each record scored, or why it could not be (records are checked first)."""
        if self._reranker is None:
            self._reranker = Reranker(self.options)
        out: list[dict | BaseException] = []
        for record in batch:
            try:
                records.check_candidates(record)
                self._reranker.check(record)
            except RecordProblem as problem:
                out.append(RecordError(str(problem)))
                continue
            out.append(record)
        ready = [r for r in out if isinstance(r, dict)]
        scored = iter(settle(self._reranker.process, ready) if ready else [])
        return [r if isinstance(r, BaseException) else next(scored) for r in out]

    def close(self) -> None:
        """Free the model and close the score cache."""
        if self._reranker is not None:
            self._reranker.close()
            self._reranker = None

    def __getstate__(self) -> dict[str, Any]:
        # Trainers may pickle reward functions (to worker processes): the model stays behind.
        return {**self.__dict__, "_reranker": None}


def flip_reward(**options: Any) -> Reward:
    """A `Reward` scoring with FLIP's default scorer, flip-tokens (see `Reward`)."""
    return Reward("flip-tokens", **options)


__all__ = ["Reward", "flip_reward"]
