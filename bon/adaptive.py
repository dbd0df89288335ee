"""Adaptive best-of-N (`bon run --adaptive`): sample each prompt in waves, stop once its pick is
settled, so easy prompts cost fewer candidates.

A record is sampled in waves until it holds 2, 4, 8, ... candidates (the last wave stops at
`n`; with `n` 1 there is one wave of 1). After each wave the record's whole candidate list is
scored and the stopping rule of the selection score (`by`, else the first scorer) is asked
whether more samples could still change the pick:

- **vote** (self-consistency): the leading answer's count minus the runner-up's exceeds the
  samples still to come (`n` minus those drawn). Then no later candidate can overtake or tie the
  leading answer, and since the pick is the first candidate giving it (earlier candidates never
  change), the pick is exactly the one full best-of-N would make. This is the exact form of the
  early stopping of self-consistency in Adaptive-Consistency (Aggarwal et al., EMNLP 2023,
  "Let's Sample Step by Step: Adaptive-Consistency for Efficient Reasoning and Coding with
  LLMs") and Early-Stopping Self-Consistency (Li et al., ICLR 2024), whose criteria stop once
  the majority is (likely) decided; here it is certain. Weighted votes (`weight_by`)
  renormalise every weight when a candidate comes, so they have no such bound and are refused.
- **any other score**: the expected gain of the samples still to come. The record's current
  scores are taken as normal draws (their mean and sample standard deviation, in the score's
  direction), and the rule asks how far the best of the r = `n` - k samples to come is expected
  to rise above the best so far: sd x the integral from z to infinity of 1 - Phi(u)^r, z the
  best score's standard score. This is the expected improvement of Bayesian optimisation
  (Jones, Schonlau and Welch, 1998, "Efficient Global Optimization of Expensive Black-Box
  Functions") for a batch of r draws, used as a stopping rule as adaptive best-of-N allocation
  does (spending samples on the prompts whose reward spread leaves the best uncertain, e.g.
  Damani et al., 2024, "Learning How Hard to Think: Input-Adaptive Allocation of LM
  Computation"). The record stops once that gain, in its own standard deviations, is below
  `settle`: a clear outlier, or few samples left, stops it; a wide spread with many samples to
  come does not. It is not a guarantee: a later candidate may still score higher, which is what
  `benchmarks/efficient.py` measures. On the dev prompts of `benchmarks/efficient_dev.py` it
  kept the pick closer to full best-of-N than the best-over-second margin it replaced at the
  same tokens (`benchmarks/results/efficient_dev.md`). Scores all equal (no spread) never
  settle.
- `random` and the judges that compare candidates (`judge-pairwise`, `judge-listwise`) have no
  rule: a random score says nothing about the candidates to come, and a tournament's scores are
  re-drawn for the whole list with each wave. `--adaptive` with them is a `ConfigError`.

Reproducibility: wave k draws samples [N_{k-1}, N_k) of the record through
`SamplingOptions.first_sample`, which the hf engine's seeded sampling honours (sample j of a
record draws from the stream of (record seed, j) whatever the call), so a record's first N'
candidates are a plain run's first N' under the same seed, and adaptive picks compare with full
best-of-N. Other engines and sampling modes draw a record's samples from one stream per call,
so `--adaptive` refuses them.

Scoring: each wave rescores the record's whole candidate list, because scorers that compare
candidates (vote, mbr, mix, flip-tokens) give old candidates new scores as new ones come. Old
candidates' scores from scorers that read a candidate alone come from the score cache (no model
call; counted as `cached` in `cost`); under `--no-cache`, from an in-memory cache that lives as
long as the run (so nothing is written to disk, and nothing computed twice).

Cost: a record's `cost` sums its waves (`cost.generate`: each wave reads the prompt again, so
its prompt tokens count once per wave; `cost.score`: each scorer's tokens and seconds over every
wave). The record carries `adaptive`: `n_used` (candidates drawn), `waves` (the candidate count
after each wave), `settled` (whether the rule stopped it, rather than `n`), `rule` (vote or
gain) and, for gain, the last expected `gain` (in standard deviations).

Files: the waves run as one stage from the prompts to scored.jsonl (resumed per record: a
record is written once settled or full); candidates.jsonl is scored.jsonl without the scores,
and selected.jsonl is selected from scored.jsonl as in a plain run.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bon import cost, records
from bon.cost import GENERATE, SCORE
from bon.errors import ConfigError
from bon.generator import GenerateOptions, Generator
from bon.records import COST, RecordProblem
from bon.reranker import Reranker
from bon.scorers import ScoreOptions, higher_is_better
from bon.select import SelectOptions
from bon.stages import Stage

if TYPE_CHECKING:
    from bon.engines import Engine
    from bon.progress import Progress

ADAPTIVE = "adaptive"
"""The record field: how the waves went."""
NO_RULE = ("random", "judge-pairwise", "judge-listwise")
"""Selection scores with no stopping rule (module docstring)."""
VOTE, GAIN = "vote", "gain"
IN_MEMORY = ":memory:"
"""The score cache of a run under `no_cache`: SQLite's in-memory database, gone with the run."""


def wave_ends(n: int) -> list[int]:
    """The candidate count after each wave: 2, 4, 8, ... and `n` last (`[1]` for `n` 1)."""
    ends, size = [], 2
    while size < n:
        ends.append(size)
        size *= 2
    return [*ends, n]


def selection_score(score: ScoreOptions, select: SelectOptions) -> str:
    """The score a run selects by: `by`, else the first scorer run."""
    return select.by or score.scorers[0]


def check(
    generate: GenerateOptions, score: ScoreOptions, select: SelectOptions, *, where: str = ""
) -> str:
    """The stopping rule (vote or gain) of an adaptive run; `ConfigError`, before any model
    loads, for a selection with no rule or a generator whose waves could not reproduce a full
    run's samples. `where` names a front end that cannot run adaptively at all."""
    if where:
        raise ConfigError(f"`adaptive` is for `bon run` (and its API), not {where}: drop it")
    by = selection_score(score, select)
    if by in NO_RULE:
        raise ConfigError(
            f"`adaptive` has no stopping rule for selection by {by!r} (random scores say nothing "
            "of later candidates; judges comparing candidates rescore the whole list): select "
            "by vote or by a score of each candidate (e.g. --by flip), or drop --adaptive"
        )
    if by == "vote" and score.of("vote").weight_by is not None:
        raise ConfigError(
            "`adaptive` with vote needs unweighted votes (a weighted vote's weights change "
            "with every new candidate, so no lead is safe): drop --weight-by or --adaptive"
        )
    if generate.prune_at:
        raise ConfigError(
            "`adaptive` and `prune_at` do not go together (a wave would prune among its own "
            "candidates only): choose one"
        )
    mode = (generate.engine_args or {}).get("sample_batching", "seeded")
    if generate.temperature > 0 and (generate.engine != "hf" or mode != "seeded"):
        raise ConfigError(
            "`adaptive` needs the hf engine's seeded sampling (each sample drawn from its own "
            f"stream, so waves reproduce a full run's samples), got engine {generate.engine!r} "
            f"with sample_batching={mode}: use --engine hf without --engine-arg sample_batching"
        )
    return VOTE if by == "vote" else GAIN


def expected_gain(values: Sequence[float], remaining: int, higher: bool = True) -> float | None:
    """How far the best of `remaining` more samples is expected to rise above the best of
    `values`, in sample standard deviations of `values` (non-finite ones left out), with the
    scores taken as normal with the mean and deviation of `values`: the integral from z to
    infinity of 1 - Phi(u)^remaining, z the best value's standard score (the expected
    improvement of Jones, Schonlau and Welch, 1998, for a batch of `remaining` draws). None
    with fewer than two finite values or no spread."""
    finite = [v if higher else -v for v in values if math.isfinite(v)]
    if len(finite) < 2:
        return None
    mean = math.fsum(finite) / len(finite)
    spread = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (len(finite) - 1))
    if spread == 0:
        return None
    return _beyond((max(finite) - mean) / spread, remaining)


def _beyond(z: float, remaining: int, step: float = 0.005, width: float = 9.0) -> float:
    """The integral from z (>= 0, a best value's standard score) to z + width of
    1 - Phi(u)^remaining, by trapezoids of `step`; the tail beyond is below 1e-17 x remaining."""

    def tail(u: float) -> float:
        return 1.0 - (0.5 * (1.0 + math.erf(u / math.sqrt(2.0)))) ** remaining

    points = int(width / step)
    inner = math.fsum(tail(z + i * step) for i in range(1, points))
    return step * (inner + 0.5 * (tail(z) + tail(z + width)))


def vote_lead(answers: Sequence[str | None]) -> int:
    """The leading answer's count minus the runner-up's (answers None left out)."""
    counts = sorted(Counter(a for a in answers if a is not None).values(), reverse=True)
    return (counts[0] if counts else 0) - (counts[1] if len(counts) > 1 else 0)


def settled(
    candidates: Sequence[dict], by: str, rule: str, remaining: int, settle: float
) -> tuple[bool, float | None]:
    """Whether scored `candidates` settle their record with `remaining` samples still to come
    (module docstring), and the expected gain the gain rule saw (None for vote)."""
    if rule == VOTE:
        answers = [_answer(c.get("vote")) for c in candidates]
        return vote_lead(answers) > remaining, None
    values = [_finite(c["scores"].get(by)) for c in candidates]
    seen = expected_gain(values, remaining, higher_is_better(by))
    return seen is not None and seen < settle, seen


def _answer(evidence: Any) -> str | None:
    return evidence.get("answer") if isinstance(evidence, dict) else None


def _finite(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return math.nan


def summed(a: Any, b: Any) -> Any:
    """Two costs added field by field (integers as integers, seconds rounded as stored)."""
    if a is None:
        return b
    if b is None:
        return a
    if isinstance(a, dict) and isinstance(b, dict):
        return {key: summed(a.get(key), b.get(key)) for key in {**a, **b}}
    if isinstance(a, bool) or isinstance(b, bool):
        return b
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return cost.seconds(a + b)
    return b


class _Record:
    """One record's waves so far."""

    def __init__(self, record: dict) -> None:
        self.prompt = record
        self.candidates: list[dict] = []
        self.meta: dict[str, Any] | None = None
        self.spent: dict[str, Any] = {}
        self.waves: list[int] = []
        self.seen: float | None = None
        """The stopping rule's last reading (the expected gain; None for vote)."""

    def add(self, generated: dict) -> None:
        """The candidates and cost of a wave (the generator's output record)."""
        self.candidates.extend(generated["candidates"])
        if self.meta is None:
            self.meta = dict(generated["generator"])
        self.spent = summed(self.spent, {GENERATE: generated.get(COST, {}).get(GENERATE)})
        self.waves.append(len(self.candidates))

    def to_score(self) -> dict:
        """The record with every candidate so far, unscored."""
        meta = {k: v for k, v in (self.meta or {}).items() if k != "first_sample"}
        return {**self.prompt, "candidates": list(self.candidates), "generator": meta}

    def paid(self, record: dict) -> None:
        """Add what scoring a wave (`record`, the reranker's output) cost."""
        self.spent = summed(self.spent, {SCORE: record.get(COST, {}).get(SCORE)})

    def scored(self, record: dict, rule: str, is_settled: bool) -> dict:
        """The output record: `record` (the last wave, scored) with every wave's cost summed
        and `adaptive`."""
        out = {**record, COST: self.spent}
        out["generator"] = {**out["generator"], "n": len(self.candidates)}
        out[ADAPTIVE] = {
            "n_used": len(self.candidates),
            "waves": list(self.waves),
            "settled": is_settled,
            "rule": rule,
        }
        if rule == GAIN:
            out[ADAPTIVE]["gain"] = self.seen
        return out


def adaptive_stage(
    generate: GenerateOptions,
    score: ScoreOptions,
    select: SelectOptions,
    engine: Engine | None = None,
) -> Stage:
    """The stage from prompt records to scored records, sampling each in waves until settled
    (module docstring); `engine`, when given, serves generation and scoring (left open)."""
    rule = check(generate, score, select)
    by = selection_score(score, select)
    generator = Generator(generate, engine)
    scoring_engine = None if engine is None else engine.with_batch_size(score.batch_size)
    if score.no_cache:  # old candidates' scores are still reused, from a cache of this run's
        score = dataclasses.replace(score, no_cache=False, cache_path=IN_MEMORY)
    reranker = Reranker(score, scoring_engine)
    ends = wave_ends(generate.n)

    def process(batch: list[dict]) -> list[dict | RecordProblem]:
        states = [_Record(r) for r in batch]
        outcomes: list[dict | RecordProblem | None] = [None] * len(batch)
        start = 0
        for end in ends:
            active = [i for i, o in enumerate(outcomes) if o is None]
            if not active:
                break
            made = generator.wave(start, end - start).process([batch[i] for i in active])
            generated = []
            for i, out in zip(active, made, strict=True):
                if isinstance(out, RecordProblem):
                    outcomes[i] = out
                else:
                    states[i].add(out)
                    generated.append(i)
            results = reranker.process([states[i].to_score() for i in generated])
            for i, result in zip(generated, results, strict=True):
                if isinstance(result, RecordProblem):
                    outcomes[i] = result
                    continue
                states[i].paid(result)
                remaining = generate.n - end
                done = False
                if remaining:  # the last wave has nothing left to stop
                    done, states[i].seen = settled(
                        result["candidates"], by, rule, remaining, select.settle
                    )
                if done or not remaining:
                    outcomes[i] = states[i].scored(result, rule, done)
            start = end
        return [o for o in outcomes if o is not None]

    def watch(progress: Progress | None) -> None:
        generator.progress = progress

    def close() -> None:
        generator.close()
        reranker.close()

    config: dict[str, Any] = {
        "stage": ADAPTIVE,
        "generate": generator.config(),
        "score": reranker.config(),
        "by": by,
        "rule": rule,
    }
    if rule == GAIN:
        config["settle"] = select.settle
    return Stage(
        ADAPTIVE,
        records.check_prompt,
        process,
        config,
        cost=lambda record: generate.n,
        budget=generate.batch_size,
        close=close,
        summary=reranker.summary,
        watch=watch,
        cost_parts=(GENERATE, SCORE),
    )


def unscored(record: dict, scorers: Sequence[str]) -> dict:
    """A scored record as the generator wrote it: no `scoring`, no scores or scorer evidence on
    its candidates, only the generation part of its `cost`."""
    out = {k: v for k, v in record.items() if k != "scoring"}
    out["candidates"] = [
        {k: v for k, v in c.items() if k != "scores" and k not in scorers}
        for c in record["candidates"]
    ]
    spent = record.get(COST)
    if isinstance(spent, dict):
        out[COST] = {k: v for k, v in spent.items() if k == GENERATE}
    return out


def candidates_stage(score: ScoreOptions) -> Stage:
    """The stage from the adaptive scored records to candidates.jsonl (`unscored`)."""
    names = tuple(score.scorers)

    def process(batch: list[dict]) -> list[dict]:
        return [unscored(r, names) for r in batch]

    return Stage(
        "candidates",
        records.check_candidates,
        process,
        {"stage": "candidates", "from": ADAPTIVE, "scorers": list(names)},
        budget=64,
    )


def mean_n(rows: Sequence[dict]) -> float | None:
    """The mean `adaptive.n_used` of `rows`; None when none records it."""
    used = [
        r[ADAPTIVE]["n_used"]
        for r in rows
        if isinstance(r.get(ADAPTIVE), dict) and isinstance(r[ADAPTIVE].get("n_used"), int)
    ]
    return sum(used) / len(used) if used else None
