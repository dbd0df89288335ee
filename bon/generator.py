"""The generator stage: N sampled candidates per prompt record."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bon import cost, prune, records
from bon.chat import Message
from bon.engines import Completion, Engine, EngineOptions, SamplingOptions, load_engine
from bon.engines.base import RecordedArgs
from bon.errors import ConfigError
from bon.options import checked_as, option, positive
from bon.records import COST, RecordProblem

if TYPE_CHECKING:
    from bon.progress import Progress


@dataclass(frozen=True)
class GenerateOptions(EngineOptions):
    """Options of the generator stage: the model and engine (`EngineOptions`) and sampling."""

    batch_size: int = option(
        32,
        "Sequences decoded at once (a prompt counts N times). The hf engine batches "
        "length-sorted prompts, each candidate drawn from its own random stream (seeded by "
        "its record's seed and its index, whatever the batch: --engine-arg "
        "sample_batching=seeded, the default); --engine-arg sample_batching=prompt samples "
        "each prompt's N in a call of their own, grouped and continuous batch prompts under "
        "one seed per call.",
        check=positive,
        constraint="an integer >= 1",
    )
    n: int = option(8, "Candidates per prompt.", short="-n", **checked_as(SamplingOptions, "n"))
    temperature: float = option(
        0.8, "Sampling temperature; 0 is greedy.", **checked_as(SamplingOptions, "temperature")
    )
    top_p: float = option(0.95, "Nucleus sampling mass.", **checked_as(SamplingOptions, "top_p"))
    max_new_tokens: int = option(
        256, "Cap on tokens per candidate.", **checked_as(SamplingOptions, "max_new_tokens")
    )
    seed: int = option(
        0,
        "Base seed; each record's seed derives from it and the record's id (bon serve: "
        "requests without a seed draw theirs from a generator seeded with it).",
        **checked_as(SamplingOptions, "seed"),
    )
    record_logprobs: bool = option(
        False,
        "Record each candidate's mean token log-probability under the generator "
        "(`logprob_mean`) and, with the hf engine, its self-certainty (`self_certainty`), "
        "which the confidence scorer reads.",
    )

    prune_at: tuple[int, ...] = option(
        (),
        "Pruned best-of-N: token counts at which to score the partial candidates with "
        "--prune-by and keep only the best --keep share of them (at least one), e.g. "
        "--prune-at 32,64; survivors decode on to --max-new-tokens. Each must be below "
        "--max-new-tokens, in increasing order. The hf engine (with its default seeded "
        "sampling) continues survivors from their KV cache, exactly as unpruned; vllm and "
        "openai continue each as a new request on prompt and partial (openai: a server that "
        "continues an open assistant turn, as vLLM's does).",
        check=lambda v: isinstance(v, tuple) and all(positive(t) for t in v),
        constraint="token counts >= 1",
    )
    keep: float = option(
        0.5,
        "With --prune-at: the share of the candidates still standing kept at each checkpoint "
        "(rounded up, at least one).",
        check=lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1,
        constraint="a number in (0, 1]",
    )
    prune_by: str | None = option(
        None,
        "With --prune-at: the scorer that scores the partial candidates; it must read prefixes "
        "(flip-tokens, flip-likelihood, rm, relevance). Unset: bon run's first --scorer; "
        "required in bon generate.",
        check=lambda v: v is None or (isinstance(v, str) and bool(v)),
        constraint="a scorer name",
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "prune_at", _checkpoints(self.prune_at))
        super().__post_init__()
        self.sampling()
        if self.prune_at:
            self._check_pruning()

    def _check_pruning(self) -> None:
        """Pruning's options against each other, the engine and the scorer, before any model
        loads (`bon.prune`)."""
        from bon.engines import engines
        from bon.scorers import scorers

        at = self.prune_at
        if any(b <= a for a, b in itertools.pairwise(at)):
            raise ConfigError(f"`prune_at` must be increasing token counts, got {list(at)}")
        if at[-1] >= self.max_new_tokens:
            raise ConfigError(
                f"`prune_at` must be below `max_new_tokens` ({self.max_new_tokens}), got "
                f"{list(at)}: prune earlier or raise --max-new-tokens"
            )
        if self.record_logprobs:
            raise ConfigError(
                "`record_logprobs` cannot be combined with `prune_at` yet: the log-probabilities "
                "of a pruned run's segments are not joined; drop one of them"
            )
        if self.temperature > 0 and not engines.get(self.engine).resumes(self.engine_args or {}):
            raise ConfigError(
                f"`prune_at` needs an engine that continues partial candidates: the "
                f"{self.engine} engine with these engine args does not; use --engine hf with "
                "its default --engine-arg sample_batching=seeded, vllm or openai"
            )
        if self.prune_by is not None:
            prune.check_scorer(self.prune_by, scorers.names())

    def pruning(self) -> bool:
        """Whether candidates are pruned while they decode (`prune_at` is set)."""
        return bool(self.prune_at)

    def samples_alone(self) -> bool:
        """Whether the engine samples each prompt in a call of its own: batching records would
        then only delay writing them and showing progress."""
        from bon.engines import engines

        alone = engines.get(self.engine).samples_alone(self.engine_args or {})
        return alone and self.temperature > 0

    def sampling(self) -> SamplingOptions:
        return SamplingOptions(
            n=self.n,
            temperature=self.temperature,
            top_p=self.top_p,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed,
            record_logprobs=self.record_logprobs,
        )


def _checkpoints(value: Any) -> Any:
    """`prune_at` as a tuple of ints: the command line gives "32,64" (or the flag repeated),
    a recipe a list; anything else is left for the option's check to refuse."""
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (tuple, list)):
        return value
    out: list[Any] = []
    for item in value:
        if isinstance(item, str):
            try:
                out.extend(int(part) for part in item.split(",") if part.strip())
            except ValueError:
                raise ConfigError(
                    f"`prune_at` must be token counts >= 1, got {item!r}: give e.g. 32,64"
                ) from None
        else:
            out.append(item)
    return tuple(out)


def _with_candidates(
    record: dict,
    completions: list[Completion],
    meta: dict[str, Any],
    spent: tuple[dict[str, Any], list[dict[str, Any]]],
) -> dict | RecordProblem:
    errors = [c.error for c in completions if c.error]
    if errors:
        return RecordProblem(f"the generator could not answer this prompt: {errors[0]}")
    part, shares = spent
    candidates = [{**c.to_record(), COST: s} for c, s in zip(completions, shares, strict=True)]
    out = {**record, "candidates": candidates, "generator": meta}
    return cost.with_part(out, cost.GENERATE, part)


def _with_pruning(done: list[dict | RecordProblem], decoded: prune.Decoded) -> list:
    """Each record with its candidates' pruning fields and its `cost.prune` part, or the
    problem its pruning scorer met."""
    out: list[dict | RecordProblem] = []
    for record, fields, part, problem in zip(
        done, decoded.fields, decoded.prune_costs, decoded.problems, strict=True
    ):
        if problem is not None or isinstance(record, RecordProblem):
            out.append(problem or record)
            continue
        candidates = [{**c, **f} for c, f in zip(record["candidates"], fields, strict=True)]
        out.append(cost.with_part({**record, "candidates": candidates}, cost.PRUNE, part))
    return out


def request_seed(seed: int, record_id: str) -> int:
    """The seed of one record's request: a hash of the base seed and the record id."""
    digest = hashlib.sha256(f"{seed}:{record_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def seed_key(record: dict) -> str:
    """What a record's request seed derives from: its id, and for turn k > 1 of a multi-turn
    record (see `bon.turns`) also k, so that each turn draws samples of its own."""
    key = str(record["id"])
    if isinstance(record.get("turns"), list) and "messages" in record:
        turn = sum(m["role"] == "user" for m in record["messages"])
        return key if turn == 1 else f"{key}#turn-{turn}"
    return key


class Generator:
    """Adds `candidates` and `generator` to prompt records; loads its engine on first use."""

    def __init__(
        self,
        options: GenerateOptions,
        engine: Engine | None = None,
        pruner: prune.Pruner | None = None,
    ) -> None:
        """`engine`, when given, is used instead of loading one and is left open by `close`
        (a server shares one engine among generators of different sampling options);
        `pruner` scores partial candidates when `options.prune_at` is set (`bon.prune`), and
        is closed by `close`."""
        if options.pruning() and pruner is None:
            raise ConfigError(
                "`prune_at` needs a scorer to prune by: give `prune_by` (bon run prunes by its "
                "first scorer); this front end cannot prune"
            )
        self.options = options
        self.pruner = pruner if options.pruning() else None
        self._sampling = options.sampling()
        self._engine: Engine | None = engine
        self._owns_engine = engine is None
        self.progress: Progress | None = None
        """Where to report decoded tokens while a batch runs (set by the runner's bar)."""

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = load_engine(self.options)
        return self._engine

    def config(self) -> dict[str, Any]:
        """What determines the candidates (the resume manifest's configuration), with the
        engine args as the engine records them (`Engine.recorded_args`). Device and batch size
        are left out: each record is sampled from its own seed."""
        return self._config(self._recorded_args().args)

    def older_configs(self) -> list[dict[str, Any]]:
        """Configurations that earlier versions recorded for the candidates `config` makes:
        an output recorded with one resumes as this run."""
        return [self._config(args) for args in self._recorded_args().older]

    def config_advice(self) -> list[tuple[dict[str, Any], str]]:
        """(configuration, how to resume): outputs recorded with such a configuration were made
        some other way (e.g. under an engine's earlier default) and are refused with the advice."""
        return [(self._config(args), advice) for args, advice in self._recorded_args().advice]

    def _recorded_args(self) -> RecordedArgs:
        from bon.engines import engines

        engine = engines.get(self.options.engine)
        return engine.recorded_args(self.options.engine_args or {}, not self._sampling.greedy)

    def _config(self, engine_args: dict[str, Any]) -> dict[str, Any]:
        identity = self.options.identity()
        identity.pop("engine_args", None)
        if engine_args:
            identity["engine_args"] = dict(sorted(engine_args.items()))
        out = {"stage": "generate", **identity, **self._sampling.to_dict()}
        if self.pruner is not None:
            out["prune"] = self._pruning(self.pruner.describe())
        return out

    def _pruning(self, by: Any) -> dict[str, Any]:
        """How candidates are pruned, pruned `by` a scorer's name or configuration."""
        return {"at": list(self.options.prune_at), "keep": self.options.keep, "by": by}

    def process(
        self,
        batch: list[dict],
        base_seeds: Sequence[int] | None = None,
        follow: Callable[[int, str], None] | None = None,
    ) -> list[dict | RecordProblem]:
        """Each record with its candidates and what they cost (`bon.cost`), or a
        `RecordProblem` when the engine refused it. `base_seeds` gives each record a base seed
        of its own (a server batching requests of different seeds); by default every record's
        is the options' `seed`. When pruning, `follow(i, text)` is called as the answer of
        record i grows once a single candidate of it stands and decodes on (`bon.prune.decode`):
        a server streams it."""
        bases = list(base_seeds) if base_seeds is not None else [self.options.seed] * len(batch)
        seeds = [request_seed(base, seed_key(r)) for base, r in zip(bases, batch, strict=True)]
        conversations = [records.conversation(r) for r in batch]
        engine = self.engine  # loaded before the clock starts
        prompts = [engine.prompt_tokens(c) for c in conversations]
        progress = self.progress
        watching = engine.decoding(progress.decoding) if progress else nullcontext()
        if progress:
            progress.clock()
        started = time.perf_counter()
        decoded = None
        with watching:
            if self.pruner is None:
                outputs = engine.generate(conversations, self._sampling, seeds)
            else:
                decoded = self._decode_pruned(
                    self.pruner, batch, engine, conversations, seeds, follow
                )
                outputs = decoded.completions
        elapsed = time.perf_counter() - started if decoded is None else decoded.seconds
        if progress:
            progress.spent(sum(c.tokens for row in outputs for c in row))
        meta = {**engine.describe(), **self._sampling.to_dict()}
        meta["batch_size"] = self.options.batch_size
        if self.pruner is not None:
            meta["prune"] = self._pruning(self.pruner.name)
        spent = cost.generation_costs(prompts, outputs, elapsed)
        done = [
            _with_candidates(record, completions, {**meta, "seed": base, "request_seed": seed}, one)
            for record, completions, base, seed, one in zip(
                batch, outputs, bases, seeds, spent, strict=True
            )
        ]
        return done if decoded is None else _with_pruning(done, decoded)

    def _decode_pruned(
        self,
        pruner: prune.Pruner,
        batch: list[dict],
        engine: Engine,
        conversations: list[list[Message]],
        seeds: list[int],
        follow: Callable[[int, str], None] | None,
    ) -> prune.Decoded:
        def score(indices: list[int], texts: list[list[str]]) -> Any:
            return pruner.score([batch[i] for i in indices], texts)

        return prune.decode(
            engine,
            conversations,
            self._sampling,
            seeds,
            self.options.prune_at,
            self.options.keep,
            score,
            pruner.higher_is_better,
            follow,
        )

    def wave(self, first: int, count: int) -> Generator:
        """A generator sharing this one's engine (left open by its `close`) that draws samples
        `first` .. `first + count - 1` of each record: a wave of adaptive best-of-N
        (`bon.adaptive`)."""
        out = Generator(self.options, self.engine)
        out._sampling = dataclasses.replace(self._sampling, n=count, first_sample=first)
        out.progress = self.progress
        return out

    def close(self) -> None:
        if self.pruner is not None:
            self.pruner.close()
        if self._engine is not None and self._owns_engine:
            self._engine.close()
        self._engine = None
