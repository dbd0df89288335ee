"""Pruned best-of-N (speculative rejection): stop decoding the candidates that score worst early.

With `prune_at` = (T1, T2, ...) and `keep` = F, the generate stage decodes all N candidates of
a record to T1 tokens, scores the partial texts of the candidates still decoding with one
scorer that can read prefixes (`Scorer.reads_prefix`: flip-tokens, flip-likelihood, rm,
relevance), keeps the best ceil(F x decoding) of them (at least one; ties to the lower index, a
NaN score ranks last) and decodes only those on to T2, and so on; the survivors finish at
`max_new_tokens`. A candidate that ended before a checkpoint is never pruned or scored there:
keeping it costs nothing, and it may be the pick. Every candidate stays in the record: a
pruned one holds its partial text, `pruned_at` (the checkpoint it was dropped at) and
`partial_scores` ({"T": score} at each checkpoint it was scored at); a survivor holds
`partial_scores` and no `pruned_at`. The score stage gives pruned candidates null scores
without scoring them, and the selector never picks a candidate with `pruned_at`
(`bon.select`). A checkpoint where nothing can be pruned (no more candidates decoding than
would be kept, so always with keep = 1) scores nothing.

Continuation (`Engine.start`, `Engine.resume`): the hf engine keeps each call's KV cache and
continues the survivors from it (reading nothing again; re-reading prompt and partial when the
cache is gone), each resuming its own random stream (`bon.engines.hf.RowSampler`) at the step
it stopped, so a survivor's tokens are those of an unpruned run with the same seed (at
float32; at bfloat16 the batch shape changes the logits' rounding, as it does for `seeded`
sampling itself). vllm and openai continue each survivor as a new request on prompt and
partial, drawn from a seed of its own (`bon.engines.base.continuation_seed`): reproducible, but
not the unpruned run's tokens; vLLM's prefix cache spares re-reading most of it. Once a
record's single standing candidate decodes on, its text is its answer: `decode`'s `follow`
passes it on as it grows (a server streams it).

Accounting (`bon.cost`): `cost.generate` counts the tokens decoded (a pruned candidate's
partial tokens, a survivor's all) and the decoding seconds; `cost.prune` holds what pruning
spent beyond that: the prune scorer's `read_tokens`, `generated_tokens` and `seconds`, and
`prefill_tokens`, the prompt and partial tokens the engine read again to continue
(`Completion.prefill_tokens`: none from a kept cache). `cost.total`
adds them. Resume is per record, as for every stage: a killed run redoes the record in
progress from its start.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bon import cost
from bon.chat import Message
from bon.engines import Completion, Engine, SamplingOptions
from bon.errors import ConfigError
from bon.records import COST, RecordProblem
from bon.reranker import Reranker
from bon.scorers import ScoreOptions, higher_is_better, scorers

PRUNED_AT, PARTIAL_SCORES = "pruned_at", "partial_scores"
"""The candidate fields pruning adds."""

ScoreFn = Callable[
    [list[int], list[list[str]]],
    tuple[list["list[float] | RecordProblem"], list[dict[str, Any]]],
]
"""Scores partial texts: (indices of the batch's records, each one's partial texts) -> each
record's scores in the same order (or a `RecordProblem` when the scorer refused it) and each
record's scoring cost (`read_tokens`, `generated_tokens`, `seconds`)."""


def kept_count(standing: int, keep: float) -> int:
    """How many of `standing` candidates a checkpoint keeps: ceil(keep x standing), at least 1."""
    return max(1, math.ceil(keep * standing - 1e-9))


class Pruner:
    """The scoring callback of pruned generation: one scorer over partial candidates, through a
    `Reranker` of its own (score cache, cost meter) on its own engine or a shared one."""

    def __init__(self, options: ScoreOptions, engine: Engine | None = None) -> None:
        self.options = options
        self.name = options.scorers[0]
        self.higher_is_better = higher_is_better(self.name)
        self.reranker = Reranker(options, engine)

    def describe(self) -> dict[str, Any]:
        """The scorer's configuration (as a scored record's `scoring` block holds it)."""
        return self.reranker.scorers[0].describe()

    def score(
        self, batch: Sequence[dict], texts: Sequence[Sequence[str]]
    ) -> tuple[list[list[float] | RecordProblem], list[dict[str, Any]]]:
        """Scores of each record's partial `texts` (None scores as NaN), and each record's
        scoring cost part (`read_tokens`, `generated_tokens`, `seconds`)."""
        views = [
            {
                **{k: v for k, v in r.items() if k in ("id", "prompt", "messages")},
                "candidates": [{"text": t} for t in row],
            }
            for r, row in zip(batch, texts, strict=True)
        ]
        scored = self.reranker.process(views)
        values: list[list[float] | RecordProblem] = []
        parts: list[dict[str, Any]] = []
        for out in scored:
            if isinstance(out, RecordProblem):
                values.append(RecordProblem(f"pruning by {self.name}: {out}"))
                parts.append({})
                continue
            values.append([_number(c["scores"][self.name]) for c in out["candidates"]])
            parts.append(out[COST][cost.SCORE][self.name])
        return values, parts

    def close(self) -> None:
        self.reranker.close()


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


@dataclass
class Decoded:
    """What pruned decoding made of a batch: each record's N completions (a pruned one as it
    stood when dropped), each candidate's pruning fields, the seconds spent decoding, each
    record's `cost.prune` part, and a problem for records whose pruning scorer failed."""

    completions: list[list[Completion]]
    fields: list[list[dict[str, Any]]]
    seconds: float = 0.0
    prune_costs: list[dict[str, Any]] = field(default_factory=list)
    problems: list[RecordProblem | None] = field(default_factory=list)


def decode(
    engine: Engine,
    conversations: Sequence[list[Message]],
    sampling: SamplingOptions,
    seeds: Sequence[int],
    prune_at: Sequence[int],
    keep: float,
    score: ScoreFn,
    higher_is_better: bool,
    follow: Callable[[int, str], None] | None = None,
) -> Decoded:
    """Decode `sampling.n` candidates per conversation in segments ending at each of
    `prune_at` and at `sampling.max_new_tokens`, pruning between segments (module docstring).
    `follow(i, text)` is called as conversation i's answer grows once a single candidate of
    it stands and goes on decoding (its whole text so far each time)."""
    n = len(conversations)
    started = time.perf_counter()
    first = dataclasses.replace(sampling, max_new_tokens=prune_at[0])
    current = [list(row) for row in engine.start(conversations, first, seeds)]
    out = Decoded(
        current,
        [[{} for _ in row] for row in current],
        time.perf_counter() - started,
        [_zero_cost() for _ in range(n)],
        [None] * n,
    )
    standing = [
        [j for j, c in enumerate(row) if c.finish_reason != "error"] if _fine(row) else []
        for row in current
    ]
    for step, at in enumerate(prune_at):
        _prune(out, standing, at, keep, score, higher_is_better)
        _let_go(current, standing)
        end = prune_at[step + 1] if step + 1 < len(prune_at) else sampling.max_new_tokens
        going = [
            [j for j in standing[i] if current[i][j].finish_reason == "length"] for i in range(n)
        ]
        rows = [i for i in range(n) if going[i]]
        if not rows:
            continue
        started = time.perf_counter()
        resumed = engine.resume(
            [conversations[i] for i in rows],
            dataclasses.replace(sampling, max_new_tokens=end),
            [seeds[i] for i in rows],
            [[(j, current[i][j]) for j in going[i]] for i in rows],
            _followed(rows, going, standing, follow),
        )
        out.seconds += time.perf_counter() - started
        for i, done in zip(rows, resumed, strict=True):
            out.prune_costs[i]["prefill_tokens"] += sum(c.prefill_tokens for c in done)
            for j, completion in zip(going[i], done, strict=True):
                current[i][j] = completion
    _let_go(current, [[] for _ in current])
    return out


def _let_go(current: list[list[Completion]], standing: list[list[int]]) -> None:
    """Drop what the engine kept (`Completion.state`, a KV cache) for candidates no longer
    standing, so that it is freed while the others decode on."""
    for row, live in zip(current, standing, strict=True):
        for j, completion in enumerate(row):
            if j not in live and completion.state is not None:
                row[j] = dataclasses.replace(completion, state=None)


def _followed(
    rows: list[int],
    going: list[list[int]],
    standing: list[list[int]],
    follow: Callable[[int, str], None] | None,
) -> dict[tuple[int, int], Callable[[str], None]] | None:
    """The `Engine.resume` watchers of the conversations (by their place in `rows`) whose one
    candidate standing decodes on: its text is then the answer."""
    if follow is None:
        return None
    return {
        (place, 0): functools.partial(follow, i)
        for place, i in enumerate(rows)
        if len(standing[i]) == 1 and going[i] == standing[i]
    }


def _fine(row: Sequence[Completion]) -> bool:
    return all(c.finish_reason != "error" for c in row)


def _zero_cost() -> dict[str, Any]:
    return {"read_tokens": 0, "generated_tokens": 0, "seconds": 0.0, "prefill_tokens": 0}


def _prune(
    out: Decoded,
    standing: list[list[int]],
    at: int,
    keep: float,
    score: ScoreFn,
    higher_is_better: bool,
) -> None:
    """Score the candidates still decoding at checkpoint `at` where some would be pruned, and
    drop all but the best `kept_count` of them (in `standing`, in place); candidates that
    already ended stay, unscored: they cost nothing more and may be the pick."""
    decoding = [
        [j for j in live if out.completions[i][j].finish_reason == "length"]
        for i, live in enumerate(standing)
    ]
    rows = [
        i
        for i, live in enumerate(decoding)
        if kept_count(len(live), keep) < len(live) and out.problems[i] is None
    ]
    if not rows:
        return
    texts = [[out.completions[i][j].text for j in decoding[i]] for i in rows]
    values, parts = score(rows, texts)
    sign = 1.0 if higher_is_better else -1.0
    for i, scored, part in zip(rows, values, parts, strict=True):
        spent = out.prune_costs[i]
        for key in ("read_tokens", "generated_tokens"):
            spent[key] += int(part.get(key, 0))
        spent["seconds"] = cost.seconds(spent["seconds"] + float(part.get("seconds", 0.0)))
        if isinstance(scored, RecordProblem):
            out.problems[i] = scored
            standing[i] = []
            continue
        live = decoding[i]
        for j, value in zip(live, scored, strict=True):
            fields = out.fields[i][j]
            fields.setdefault(PARTIAL_SCORES, {})[str(at)] = None if math.isnan(value) else value

        def rank(k: int, scored: list[float] = scored) -> tuple[bool, float, int]:
            value = scored[k]
            return (False, 0.0, -k) if math.isnan(value) else (True, sign * value, -k)

        best = sorted(range(len(live)), key=rank, reverse=True)[: kept_count(len(live), keep)]
        dropped = {j for k, j in enumerate(live) if k not in best}
        for j in dropped:
            out.fields[i][j][PRUNED_AT] = at
        standing[i] = [j for j in standing[i] if j not in dropped]


def check_scorer(name: str, known: Sequence[str]) -> None:
    """Raise `ConfigError` unless `name` is a scorer that can score partial candidates."""
    if name not in known:
        raise ConfigError(f"`prune_by` must be one of {', '.join(sorted(known))}, got {name!r}")
    if not scorers.get(name).reads_prefix:
        readers = sorted(n for n in known if scorers.get(n).reads_prefix)
        raise ConfigError(
            f"`prune_by` must be a scorer that reads partial responses ({', '.join(readers)}), "
            f"got {name!r}: it decodes from the response or compares whole candidates"
        )


def score_options(generate: Any, score: ScoreOptions | None = None) -> ScoreOptions | None:
    """The options of the scorer that prunes `generate`'s candidates (a `GenerateOptions`),
    None when it prunes nothing: `prune_by` (else `score`'s first scorer, as `bon run` gives
    it) with `score`'s model and options (else the reranker's defaults). Raises `ConfigError`
    before any model loads when there is no such scorer or it cannot read partial responses."""
    if not generate.pruning():
        return None
    name = generate.prune_by or (score.scorers[0] if score is not None else None)
    if name is None:
        raise ConfigError(
            "`prune_by` must name the scorer to prune with when `prune_at` is set, got None: "
            "give e.g. --prune-by flip-tokens"
        )
    check_scorer(name, scorers.names())
    return dataclasses.replace(score if score is not None else ScoreOptions(), scorers=(name,))
