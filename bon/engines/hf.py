"""The embedded default engine: Hugging Face transformers, on CPU or GPU.

Sampling (`sample_batching`, an engine arg) runs by default as `seeded`: the rows of many
conversations decode together in one `generate` call (length-sorted, left-padded micro-batches
of `batch_size` sequences, as `grouped` does), but every row draws from a random stream of its
own. Row j of a conversation seeded s (its j-th sample) draws from a `torch.Generator` seeded
with a hash of (s, j): at each step, one uniform per vocabulary entry, turned into Gumbel noise
and added to that step's temperature- and top-p-warped scores (the warpers transformers applies
in the other modes, top_k=0); the argmax is a draw from their softmax. transformers decodes
greedily over the one-hot scores this leaves (`RowSampler`), so its stop tokens, padding of
finished rows and raw logits (`record_logprobs`) work unchanged. A sample then depends on its
conversation's seed and its index alone: not on the batch it lands in, the batch size, `n`
(sample j is the same at n=4 and n=8) or where a killed run resumed, as far as the logits
themselves do not change with the batch. At float32 they differ in the last bits at most, which
flips a pick only when two noisy scores tie that closely (no sample changed in the tests or
the benchmark). At bfloat16 they do change: the kernels round differently for other batch
shapes and padding, and half of the samples of records generated alone differed from those
of the same records in a batch of 32 (`benchmarks/results/seeded_sampling.md`): there,
`prompt` is the bit-exact mode.

`sample_batching=prompt` runs each conversation's `n` samples as one `generate` call seeded
with that conversation's own seed (under a forked RNG, so the caller's random state is
untouched): bit-exact at any precision, since no call ever holds another conversation, and
slower. It was the default before `seeded`; outputs made then record no `sample_batching` and
resume with `--engine-arg sample_batching=prompt` (`HFEngine.recorded_args`). Two more opt-in
modes draw from transformers' global RNG, seeded once per call, so a record's samples depend on
the other records of the call: `grouped` (length-sorted calls of up to `batch_size` sequences)
and `continuous` (transformers' continuous batching, `generate_batch`, which refills a finished
row with a waiting one). benchmarks/gen_throughput.py and benchmarks/seeded_sampling.py measure
them. Greedy decoding, which draws nothing, is always length-sorted into left-padded
micro-batches of `batch_size` sequences.

A prompt with no room in the model's context gets `finish_reason="error"` completions, and
`max_new_tokens` is capped so that every prompt and its completion fit.

Which head loads is the checkpoint's to say: a config whose `architectures` name a
`...ForSequenceClassification` (reward models) or `...ForTokenClassification` model loads with
that Auto class, anything else as a causal LM. A classifier serves `sequence_scores` and
`tag_logits` (the rm and prm scorers) and refuses to generate; a causal LM the reverse. The
classification logits are read from the head applied at every position (`score`, as
transformers' decoder classifiers name it) at the positions bon picks, whichever side the
batch is padded on (`tokenizer.padding_side`), never through the model's own pooling, which
finds the last token by `pad_token_id` and misreads a conversation that ends with its pad token.

`record_logprobs` asks `generate` for each step's raw logits (`output_logits`): every step's
vocabulary-wide float32 logits are held until the call ends (sequences x new tokens x
vocabulary x 4 bytes: 400 MB for 8 samples of 256 tokens over a 49k vocabulary).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

from bon.chat import Message, merge_system
from bon.engines.base import (
    CAUSAL_LM,
    SEQUENCE_CLASSIFIER,
    TOKEN_CLASSIFIER,
    Completion,
    Engine,
    EngineArgs,
    EngineOptions,
    RecordedArgs,
    SamplingOptions,
    check_fits,
    check_lengths,
    decode_each,
    require_classifier,
    too_long,
)
from bon.errors import ConfigError, EngineError
from bon.models import resolve_model
from bon.options import option

log = logging.getLogger(__name__)


SAMPLE_BATCHING = ("seeded", "prompt", "grouped", "continuous")
"""Values of the `sample_batching` engine arg."""


@dataclass(frozen=True)
class HFArgs(EngineArgs):
    """The hf engine's own options (`--engine-arg KEY=VALUE`)."""

    sample_batching: str = option(
        "seeded",
        "how sampled conversations share `generate` calls: seeded (length-sorted calls of up to "
        "batch_size sequences, each sample drawing from its own random stream, seeded by its "
        "record's seed and its index: it depends on them alone as far as the batch leaves the "
        "logits alone, as at float32, not at bfloat16), prompt (one call per conversation, "
        "bit-exact at any precision, slower; the default before seeded), grouped "
        "(length-sorted calls, one seed per call) or continuous (transformers' continuous "
        "batching); with grouped and continuous a record's samples depend on the other "
        "records generated with it",
        choices=SAMPLE_BATCHING,
    )


class HFEngine(Engine):
    """transformers `generate` over a causal LM with a chat template."""

    name = "hf"
    Args = HFArgs

    @classmethod
    def samples_alone(cls, engine_args: Mapping[str, Any]) -> bool:
        return _mode(engine_args) == "prompt"

    @classmethod
    def resumes(cls, engine_args: Mapping[str, Any]) -> bool:
        """`seeded` sampling continues a partial completion exactly (`resume`); the other
        modes draw from streams shared by the rows of a call, which no later call can
        resume."""
        return _mode(engine_args) == "seeded"

    @classmethod
    def recorded_args(cls, engine_args: Mapping[str, Any], sampled: bool) -> RecordedArgs:
        """Sampled runs record the mode they sample with, `prompt` excepted: outputs made while
        `prompt` was the default (and not given) record none, so a run in `prompt` mode
        records none either (whether it was given or not) and resumes those outputs byte for
        byte, and one that recorded `sample_batching=prompt` as given resumes as it. A `seeded`
        run records its mode even when defaulted: it refuses to extend an output sampled in
        `prompt` mode under the old default, saying how to resume it. Greedy runs record the
        args as given: the mode changes nothing there."""
        given = dict(engine_args)
        if not sampled:
            return RecordedArgs(given)
        mode = _mode(given)
        rest = {key: value for key, value in given.items() if key != "sample_batching"}
        if mode == "prompt":
            return RecordedArgs(rest, older=({**rest, "sample_batching": "prompt"},))
        recorded = {**given, "sample_batching": mode}
        if mode != "seeded":
            return RecordedArgs(recorded)
        advice = (
            "It was sampled in sample_batching=prompt mode, the hf engine's default before "
            "seeded: pass --engine-arg sample_batching=prompt (engine_args="
            "{'sample_batching': 'prompt'} in Python) to resume it, or --overwrite to start over"
        )
        return RecordedArgs(recorded, advice=((rest, advice),))

    @classmethod
    def model_head(cls, model: str) -> str:
        return model_head(resolve_model(model))

    @classmethod
    def token_count(cls, model: str, text: str) -> int:
        return len(local_tokenizer(resolve_model(model)).encode(text, add_special_tokens=False))

    def __init__(self, options: EngineOptions) -> None:
        super().__init__(options)
        import torch
        from transformers import AutoTokenizer

        self._torch = torch
        self.device = _pick_device(torch, options.device)
        dtype = _pick_dtype(torch, options.dtype, self.device)
        if self.device.type == "cpu":
            _pick_threads(torch)
        path = resolve_model(options.model)
        self.head = model_head(path)
        """Which head the checkpoint carries (`bon.engines.base.HEADS`), from its config."""
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = _auto_class(self.head).from_pretrained(path, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise EngineError(
                f"cannot load model {options.model!r} with transformers: {exc}. "
                "Give a model alias, a local folder or a Hub id reachable from this machine."
            ) from exc
        self.model.to(self.device).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._system_role = accepts_system_role(self.tokenizer)
        self.context_length = _context_length(self.model.config)
        """Most tokens (prompt and completion) the model takes; None when its config says not."""
        self._dtype = str(self.model.dtype).removeprefix("torch.")
        if self.head == CAUSAL_LM:
            self._stop_ids = _stop_token_ids(self.model, self.tokenizer)
            self._vocab_size = self.model.get_output_embeddings().weight.shape[0]
            unapplied = checkpoint_warpers(self.model.generation_config)
            if unapplied and self.engine_args["sample_batching"] == "seeded":
                log.warning(
                    "model %r's generation config sets %s, which sample_batching=seeded does "
                    "not apply (it warps by temperature and top_p alone); pass --engine-arg "
                    "sample_batching=prompt to sample with them",
                    options.model,
                    ", ".join(unapplied),
                )

    def describe(self) -> dict[str, Any]:
        """The model, device and dtype: what changes this engine's outputs."""
        return {**super().describe(), "device": str(self.device), "dtype": self._dtype}

    def _need_lm(self, job: str) -> None:
        """Raise `EngineError` unless the model is a causal LM (one that can `job`)."""
        if self.head != CAUSAL_LM:
            raise EngineError(
                f"model {self.options.model!r} is a {self.head} model (a reward model): it "
                f"scores conversations but cannot {job}; give a causal LM for generation and "
                "for the log-probability scorers"
            )

    def render(self, conversation: list[Message]) -> str:
        """The conversation as the model's chat template formats it, ready for the reply."""
        if not self._system_role:
            conversation = merge_system(conversation)
        text = self.tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False
        )
        return cast(str, text)  # the text itself, with tokenize=False

    def generate(
        self,
        conversations: Sequence[list[Message]],
        sampling: SamplingOptions,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """Sampled conversations run as the engine arg `sample_batching` says (module
        docstring): by default in length-sorted batches where each sample draws from its own
        seeded stream, so that a conversation's samples do not depend on the others in the
        call; greedy ones are batched. A prompt with no room left in the context gets error
        completions."""
        return self._generate(conversations, sampling, seeds)

    def start(
        self,
        conversations: Sequence[list[Message]],
        sampling: SamplingOptions,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """`generate`, each completion holding its batch's KV cache (`_Kept`) for `resume`."""
        return self._generate(conversations, sampling, seeds, keep=True)

    def _generate(
        self,
        conversations: Sequence[list[Message]],
        sampling: SamplingOptions,
        seeds: Sequence[int] | None = None,
        keep: bool = False,
    ) -> list[list[Completion]]:
        self._need_lm("generate")
        mode = self.engine_args["sample_batching"]
        if sampling.record_logprobs and mode == "continuous" and not sampling.greedy:
            raise EngineError(
                "record_logprobs is not available with sample_batching=continuous (transformers' "
                "continuous batching does not return raw logits): use sample_batching=seeded, "
                "prompt or grouped"
            )
        if sampling.first_sample and not sampling.greedy and mode != "seeded":
            raise EngineError(
                f"first_sample (samples drawn from index {sampling.first_sample} on) needs "
                f"sample_batching=seeded, got {mode}: drop --engine-arg sample_batching"
            )
        ids = [self._encode(self.render(c)) for c in conversations]
        seeds = list(seeds) if seeds is not None else [sampling.seed] * len(ids)
        results: list[list[Completion]] = [[] for _ in ids]
        fitting = []
        for i, prompt in enumerate(ids):
            if self.context_length is not None and len(prompt) >= self.context_length:
                results[i] = [too_long(len(prompt), self.context_length)] * sampling.n
            else:
                fitting.append(i)
        if sampling.greedy:
            self._generate_grouped(ids, fitting, sampling, results, keep=keep)
            return results
        if mode == "seeded":
            self._generate_grouped(ids, fitting, sampling, results, seeds, keep)
            return results
        if mode != "prompt" and fitting:
            with _seeded(self._torch, self.device, seeds[fitting[0]]):
                if mode == "grouped":
                    self._generate_grouped(ids, fitting, sampling, results)
                else:
                    self._generate_continuous(ids, fitting, sampling, results)
            return results
        for i in fitting:
            with _seeded(self._torch, self.device, seeds[i]):
                results[i] = self._generate_one(ids[i], sampling)
        return results

    def _generate_grouped(
        self,
        ids: list[list[int]],
        fitting: list[int],
        sampling: SamplingOptions,
        results: list[list[Completion]],
        seeds: list[int] | None = None,
        keep: bool = False,
    ) -> None:
        """Rows in length-sorted micro-batches of `batch_size` sequences; a row whose completion
        would overrun the context runs alone with a capped length, so no row is capped by its
        neighbours. With `seeds` (one per conversation), each sample draws from its own stream
        (`RowSampler`); without, sampling draws from torch's global RNG. `keep`: each
        completion holds its batch's KV cache (`_Kept`)."""
        batched = []
        for i in fitting:
            if self._room(ids[i], sampling) < sampling.max_new_tokens:
                results[i] = self._generate_one(
                    ids[i], sampling, None if seeds is None else seeds[i], keep
                )
            else:
                batched.append(i)
        batched.sort(key=lambda i: len(ids[i]), reverse=True)
        per_batch = max(1, self.options.batch_size // sampling.n)
        for start in range(0, len(batched), per_batch):
            chunk = batched[start : start + per_batch]
            outputs = self._generate_batch(
                [ids[i] for i in chunk],
                sampling,
                sampling.max_new_tokens,
                None if seeds is None else [seeds[i] for i in chunk],
                keep,
            )
            for i, completions in zip(chunk, outputs, strict=True):
                results[i] = completions

    def _generate_continuous(
        self,
        ids: list[list[int]],
        fitting: list[int],
        sampling: SamplingOptions,
        results: list[list[Completion]],
    ) -> None:
        """Every fitting row through transformers' continuous batching, with a KV cache sized
        for `batch_size` sequences (left to itself it sizes the cache from free memory)."""
        from transformers import GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig

        longest = max(len(ids[i]) + self._room(ids[i], sampling) for i in fitting)
        pages = -(-longest // CB_PAGE_TOKENS)
        try:
            cache = ContinuousBatchingConfig(
                page_size=CB_PAGE_TOKENS,
                num_blocks=pages * self.options.batch_size + 1,
                max_batch_tokens=max(longest, CB_PAGE_TOKENS),
                max_requests_per_batch=self.options.batch_size,
                max_blocks_per_request=pages,
            )
        except TypeError as exc:  # older transformers name the cache settings differently
            raise EngineError(
                f"sample_batching=continuous needs a newer transformers ({exc}); it was tested "
                "with transformers 5.19: use sample_batching=grouped or upgrade"
            ) from None
        config = GenerationConfig(
            do_sample=True,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=0,
            num_return_sequences=sampling.n,
            eos_token_id=self._stop_ids,
            pad_token_id=self.tokenizer.pad_token_id,
        )
        # Rows are grouped by room so that one generate_batch call has one max_new_tokens.
        by_room: dict[int, list[int]] = {}
        for i in fitting:
            by_room.setdefault(self._room(ids[i], sampling), []).append(i)
        for room, rows in by_room.items():
            out = self.model.generate_batch(
                [ids[i] for i in rows],
                generation_config=config,
                continuous_batching_config=cache,
                max_new_tokens=room,
                warmup=False,
            )
            failed = [r.error for r in out.values() if r.error is not None]
            if len(out) != len(rows) * sampling.n or failed:
                raise EngineError(f"continuous batching failed: {failed[:1] or 'lost requests'}")
            outputs = [self._completion(r.generated_tokens) for r in out.values()]
            for k, i in enumerate(rows):
                results[i] = outputs[k * sampling.n : (k + 1) * sampling.n]

    def _generate_one(
        self,
        prompt: list[int],
        sampling: SamplingOptions,
        seed: int | None = None,
        keep: bool = False,
    ) -> list[Completion]:
        seeds = None if seed is None else [seed]
        room = self._room(prompt, sampling)
        return self._generate_batch([prompt], sampling, room, seeds, keep)[0]

    def _room(self, prompt: list[int], sampling: SamplingOptions) -> int:
        """`max_new_tokens`, capped so that the prompt and its completion fit the context."""
        if self.context_length is None:
            return sampling.max_new_tokens
        return min(sampling.max_new_tokens, self.context_length - len(prompt))

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def token_pieces(self, texts: Sequence[str]) -> list[list[str]]:
        return [decode_each(self.tokenizer, self._encode(text)) for text in texts]

    def prompt_tokens(self, conversation: list[Message]) -> int:
        return len(self.tokenizer(self.render(conversation), add_special_tokens=False)["input_ids"])

    def continuation_logprobs(
        self, conversations: Sequence[list[Message]], continuations: Sequence[str]
    ) -> list[list[float]]:
        """Teacher-forced log-probabilities of each continuation's tokens, in input order.

        Pairs are length-sorted into micro-batches of at most `batch_size`, cut where padding
        would pass `PAD_SHARE` of a batch's cells, left-padded (so every continuation ends at
        the last position and only the last logits are computed), with position ids counted
        from each sequence's first real token.
        """
        self._need_lm("give token log-probabilities")
        if len(conversations) != len(continuations):
            raise EngineError("conversations and continuations differ in length")
        prompts = [self._encode(self.render(c)) for c in conversations]
        targets = [self._encode(t) for t in continuations]
        if self.context_length is not None:
            check_fits(prompts, targets, self.context_length)
        lengths = [len(p) + len(t) if t else 0 for p, t in zip(prompts, targets, strict=True)]
        results: list[list[float]] = [[] for _ in prompts]
        for chunk in length_groups(lengths, self.options.batch_size):
            for part in self._within_logits_budget(chunk, targets):
                rows = self._logprob_batch([prompts[i] for i in part], [targets[i] for i in part])
                for i, row in zip(part, rows, strict=True):
                    results[i] = row
        return results

    def _within_logits_budget(self, chunk: list[int], targets: list[list[int]]) -> list[list[int]]:
        """`chunk` cut into consecutive parts whose vocabulary-wide logits (rows x the longest
        target x vocabulary) fit the device's `LOGITS_BYTES`: one long instruction must not
        multiply a whole batch's logits."""
        budget = LOGITS_BYTES.get(self.device.type, LOGITS_BYTES["cpu"])
        per_position = self._vocab_size * self.model.dtype.itemsize
        parts: list[list[int]] = []
        longest = 0
        for i in chunk:
            wider = max(longest, len(targets[i]) + 1)
            if parts and (len(parts[-1]) + 1) * wider * per_position <= budget:
                parts[-1].append(i)
                longest = wider
            else:
                parts.append([i])
                longest = len(targets[i]) + 1
        return parts

    def _logprob_batch(
        self, prompts: list[list[int]], targets: list[list[int]]
    ) -> list[list[float]]:
        torch = self._torch
        sequences = [p + t for p, t in zip(prompts, targets, strict=True)]
        width = max(len(s) for s in sequences)
        keep = max(len(t) for t in targets)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):
            input_ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        inputs = {
            "input_ids": input_ids.to(self.device),
            "attention_mask": mask.to(self.device),
            "position_ids": positions.to(self.device),
        }
        with torch.inference_mode():
            try:
                out = self.model(**inputs, use_cache=False, logits_to_keep=keep + 1)
            except TypeError:  # a model without `logits_to_keep` returns every position's logits
                out = self.model(**inputs, use_cache=False)
            logits = out.logits[:, -(keep + 1) : -1]
            del out
            wanted = input_ids[:, width - keep :].to(self.device)
            picked = _target_logprobs(torch, logits, wanted).cpu()
        return [picked[row, keep - len(t) :].tolist() for row, t in enumerate(targets)]

    def close(self) -> None:
        del self.model
        if self.device.type == "cuda":
            self._torch.cuda.empty_cache()

    def _generate_batch(
        self,
        batch: list[list[int]],
        sampling: SamplingOptions,
        max_new_tokens: int,
        seeds: list[int] | None = None,
        keep: bool = False,
    ) -> list[list[Completion]]:
        """One left-padded `generate` call over `batch`, `sampling.n` rows per prompt. Sampled
        with `seeds` (one per prompt): greedy decoding over the one-hot choices of a
        `RowSampler` whose row k*n + j draws from the stream of (seeds[k], j); without: the
        sampling of `generate` itself, from torch's global RNG. `keep`: each completion holds
        the call's KV cache and its row (`_Kept`)."""
        from transformers import LogitsProcessorList

        torch = self._torch
        padded = self.tokenizer.pad({"input_ids": batch}, return_tensors="pt").to(self.device)
        inputs: dict[str, Any] = dict(padded)
        width = inputs["input_ids"].shape[1]
        kwargs: dict[str, Any] = {"do_sample": not sampling.greedy}
        copies = sampling.n
        if not sampling.greedy and seeds is not None:
            # Greedy search returns one sequence per input row: the rows are copied here.
            inputs = {key: value.repeat_interleave(copies, dim=0) for key, value in inputs.items()}
            first = sampling.first_sample  # a later wave of adaptive best-of-N starts there
            streams = [row_seed(seed, first + j) for seed in seeds for j in range(copies)]
            sampler = RowSampler(torch, streams, width, sampling, self.device)
            kwargs.update(do_sample=False, logits_processor=LogitsProcessorList([sampler]))
            copies = 1
        elif not sampling.greedy:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        if sampling.record_logprobs:
            kwargs.update(output_logits=True)
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                num_return_sequences=copies,
                eos_token_id=self._stop_ids,
                pad_token_id=self.tokenizer.pad_token_id,
                return_dict_in_generate=True,
                **kwargs,
            )
            new_ids = out.sequences[:, width:]
            stats = _step_stats(torch, out.logits, new_ids) if sampling.record_logprobs else None
        new = new_ids.tolist()
        mask = inputs["attention_mask"].repeat_interleave(copies, 0)
        kept = _Kept.of(torch, out, mask) if keep else None
        completions = [
            self._completion(
                row,
                None if stats is None else (stats[0][i], stats[1][i]),
                None if kept is None else (kept, i),
            )
            for i, row in enumerate(new)
        ]
        return [completions[i : i + sampling.n] for i in range(0, len(completions), sampling.n)]

    def _completion(
        self,
        token_ids: list[int],
        stats: tuple[list[float], list[float]] | None = None,
        state: tuple[_Kept, int] | None = None,
        prefill_tokens: int = 0,
    ) -> Completion:
        """The completion of one row of new tokens; `stats`, when given, holds each step's
        log-probability of its token and its self-certainty (`_step_stats`); `state`, the KV
        cache of its call and its row there, is kept when it can go on (it ended by length)."""
        end = next((i for i, t in enumerate(token_ids) if t in self._stop_ids), None)
        kept = len(token_ids) if end is None else end
        text = cast(str, self.tokenizer.decode(token_ids[:kept], skip_special_tokens=True))
        logprob_mean = self_certainty = None
        if stats is not None:
            logprob_mean, self_certainty = _mean(stats[0][:kept]), _mean(stats[1][:kept])
        finish_reason, tokens = ("length", len(token_ids)) if end is None else ("stop", end + 1)
        return Completion(
            text=text,
            finish_reason=finish_reason,
            tokens=tokens,
            logprob_mean=logprob_mean,
            self_certainty=self_certainty,
            token_ids=tuple(token_ids[:tokens]),
            state=state if end is None else None,
            prefill_tokens=prefill_tokens,
        )

    # Pruned best-of-N (bon.prune): continuing partial completions.
    def resume(
        self,
        conversations: Sequence[list[Message]],
        sampling: SamplingOptions,
        seeds: Sequence[int] | None,
        partials: Sequence[Sequence[tuple[int, Completion]]],
        follow: Mapping[tuple[int, int], Callable[[str], None]] | None = None,
    ) -> list[list[Completion]]:
        """Continue partial completions (see `Engine.resume`). Those from `start` or `resume`
        whose call's KV cache is still there (`_Kept`) go on from it, reading nothing again;
        the others are re-read (prompt and partial token ids) in a new `generate` call, grouped
        by how many tokens they hold and how much room the context leaves them, and batched by
        `batch_size` sequences, longest prompts first. Sampled, sample j of a conversation
        seeded s draws from the stream of `row_seed(s, j)` advanced past the steps its first
        tokens drew (`RowSampler`'s `skip`), so it goes on with the very draws an
        uninterrupted `seeded` call would have made. A followed row's text is passed on at
        every step (`_Follower`)."""
        self._need_lm("generate")
        if not sampling.greedy and (seeds is None or not self.resumes(self.engine_args)):
            raise EngineError(
                "the hf engine continues partial candidates only with sample_batching=seeded "
                "and per-conversation seeds"
            )
        streams_of = None if sampling.greedy else seeds
        follow = follow or {}
        prompts = [self._encode(self.render(c)) for c in conversations]
        results: list[list[Completion | None]] = [[None] * len(p) for p in partials]
        kept: dict[tuple[int, int], list[_Row]] = {}
        groups: dict[tuple[int, int], list[_Row]] = {}
        for i, rows in enumerate(partials):
            room = self._room(prompts[i], sampling)
            for k, (j, partial) in enumerate(rows):
                ids = list(partial.token_ids or ())
                if room - len(ids) <= 0:  # nothing left to decode
                    results[i][k] = self._completion(ids)
                    continue
                source, place = partial.state or (None, 0)
                row = _Row(i, k, j, ids, follow.get((i, k)), source, place)
                if source is not None and source.cache is not None:
                    kept.setdefault((id(source), room), []).append(row)
                else:
                    groups.setdefault((len(ids), room), []).append(row)
        for (_, room), group in kept.items():
            source = group[0].source
            if source is None or source.cache is None:  # taken by a group of another room
                groups.setdefault((len(group[0].ids), room), []).extend(group)
                continue
            inputs, cache = source.take([row.place for row in group])
            left = room - len(group[0].ids)
            read = [0] * len(group)  # all of it is in the cache
            self._continue(group, inputs, cache, sampling, left, streams_of, results, read)
        for (done, room), group in groups.items():
            group.sort(key=lambda row: len(prompts[row.i]), reverse=True)
            size = max(1, self.options.batch_size)
            for start in range(0, len(group), size):
                chunk = group[start : start + size]
                sequences = [prompts[row.i] + row.ids for row in chunk]
                inputs = dict(self.tokenizer.pad({"input_ids": sequences}, return_tensors="pt"))
                read = [len(seq) for seq in sequences]
                self._continue(
                    chunk, inputs, None, sampling, room - done, streams_of, results, read
                )
        return [[c for c in row if c is not None] for row in results]

    def _continue(
        self,
        rows: list[_Row],
        inputs: dict[str, Any],
        cache: Any,
        sampling: SamplingOptions,
        max_new_tokens: int,
        seeds: Sequence[int] | None,
        results: list[list[Completion | None]],
        read: list[int],
    ) -> None:
        """One greedy `generate` call over left-padded `inputs` (prompts with the partial
        completions of `rows`), from `cache` when given; each row sampled from its stream
        advanced past its partial when `seeds` are given. Fills `results`, each completion
        holding this call's cache for the next segment and `read` (per row) as its
        `prefill_tokens`."""
        from transformers import LogitsProcessorList, StoppingCriteriaList

        torch = self._torch
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        width = inputs["input_ids"].shape[1]
        kwargs: dict[str, Any] = {"do_sample": False}
        if seeds is not None:
            streams = [row_seed(seeds[row.i], row.j) for row in rows]
            skip = len(rows[0].ids)
            sampler = RowSampler(torch, streams, width, sampling, self.device, skip=skip)
            kwargs["logits_processor"] = LogitsProcessorList([sampler])
        watched = {r: row for r, row in enumerate(rows) if row.follow is not None}
        if watched:
            follower = _Follower(self, width, watched)
            kwargs["stopping_criteria"] = StoppingCriteriaList([follower])
        if cache is not None:
            kwargs["past_key_values"] = cache
        with torch.inference_mode():
            out = self.model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                eos_token_id=self._stop_ids,
                pad_token_id=self.tokenizer.pad_token_id,
                return_dict_in_generate=True,
                **kwargs,
            )
        kept = _Kept.of(torch, out, inputs["attention_mask"])
        for r, (row, new) in enumerate(zip(rows, out.sequences[:, width:].tolist(), strict=True)):
            done = self._completion(row.ids + new, state=(kept, r), prefill_tokens=read[r])
            results[row.i][row.k] = done
            if row.follow is not None:
                row.follow(done.text)

    def sequence_scores(self, conversations: Sequence[list[Message]]) -> list[list[float]]:
        """The head's logits at each conversation's last token, in length-sorted micro-batches
        of `batch_size` (see the module docstring for how the last real token is found)."""
        sequences = self._classifier_inputs(conversations, "score conversations (rm)")
        rows = self._classify(sequences, [[len(s) - 1] for s in sequences])
        return [row[0] for row in rows]

    def tag_logits(
        self, conversations: Sequence[list[Message]], tag: str
    ) -> list[list[list[float]]]:
        """The head's logits at each position of the token `tag`, batched as `sequence_scores`."""
        sequences = self._classifier_inputs(conversations, "score steps (prm)")
        tag_id = self._tag_id(tag)
        return self._classify(
            sequences, [[k for k, t in enumerate(s) if t == tag_id] for s in sequences]
        )

    def _tag_id(self, tag: str) -> int:
        ids = self._encode(tag)
        if len(ids) != 1:
            raise ConfigError(
                f"step tag {tag!r} is {len(ids)} tokens in model {self.options.model!r}'s "
                "tokenizer, not one: give a tag the tokenizer holds as one token (e.g. a special "
                "token the process reward model was trained with)"
            )
        return ids[0]

    def _classifier_inputs(
        self, conversations: Sequence[list[Message]], job: str
    ) -> list[list[int]]:
        """Each whole conversation's token ids, checked against the context."""
        require_classifier(self.head, self.options.model, job)
        sequences = [
            self._encode(render_whole(self.tokenizer, c, self._system_role, self.options.model))
            for c in conversations
        ]
        if self.context_length is not None:
            check_lengths(sequences, self.context_length)
        return sequences

    def _classify(
        self, sequences: list[list[int]], positions: list[list[int]]
    ) -> list[list[list[float]]]:
        """The head's logits at `positions[i]` of `sequences[i]`, in length-sorted batches."""
        results: list[list[list[float]]] = [[] for _ in sequences]
        lengths = [len(s) if p else 0 for s, p in zip(sequences, positions, strict=True)]
        for chunk in length_groups(lengths, self.options.batch_size):
            rows = self._classify_batch(
                [sequences[i] for i in chunk], [positions[i] for i in chunk]
            )
            for i, row in zip(chunk, rows, strict=True):
                results[i] = row
        return results

    def _classify_batch(
        self, sequences: list[list[int]], positions: list[list[int]]
    ) -> list[list[list[float]]]:
        """One padded forward pass (on the tokenizer's padding side, position ids counted from
        each sequence's first real token); the head's float32 logits at the wanted positions."""
        torch = self._torch
        width = max(len(s) for s in sequences)
        input_ids = torch.full(
            (len(sequences), width), self.tokenizer.pad_token_id, dtype=torch.long
        )
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        starts = []
        for row, seq in enumerate(sequences):
            start = width - len(seq) if self.tokenizer.padding_side == "left" else 0
            input_ids[row, start : start + len(seq)] = torch.tensor(seq)
            mask[row, start : start + len(seq)] = 1
            starts.append(start)
        inputs = {
            "input_ids": input_ids.to(self.device),
            "attention_mask": mask.to(self.device),
            "position_ids": (mask.cumsum(-1) - 1).clamp(min=0).to(self.device),
        }
        with torch.inference_mode():
            logits = self._head_logits(inputs).float().cpu()
        if logits.dim() == 2:  # the model pooled inside its head: one row per sequence
            return [
                self._pooled_row(logits[row], seq, wanted)
                for row, (seq, wanted) in enumerate(zip(sequences, positions, strict=True))
            ]
        return [
            logits[row, [start + p for p in wanted]].tolist()
            for row, (start, wanted) in enumerate(zip(starts, positions, strict=True))
        ]

    def _head_logits(self, inputs: dict[str, Any]) -> Any:
        """The head's logits at every position (batch x tokens x labels) when the head is the
        decoder classifiers' `score` layer or a token classifier's; else the model's own
        pooled logits (batch x labels)."""
        head = getattr(self.model, "score", None)
        if isinstance(head, self._torch.nn.Module):
            hidden = self.model.base_model(**inputs, use_cache=False).last_hidden_state
            return head(hidden)
        return self.model(**inputs).logits

    def _pooled_row(self, logits: Any, sequence: list[int], wanted: list[int]) -> list[list[float]]:
        """A model's own pooled logits, which serve only a call for the last position."""
        if wanted != [len(sequence) - 1]:
            raise EngineError(
                f"model {self.options.model!r} pools inside its classification head, so it gives "
                "one score per conversation, not one per token: the prm scorer needs a model "
                "whose head scores every token"
            )
        return [logits.tolist()]

    # Progress (bon.cost, the runner's bar): kept apart from the sampling code on purpose.
    @contextmanager
    def decoding(self, on_tokens: Callable[[int], None]) -> Iterator[None]:
        """Calls `on_tokens(rows)` on each forward pass of the model while inside: every
        decoding step of a batch gives each of its rows one token (finished rows included)."""

        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is None:
                ids = kwargs.get("inputs_embeds")
            rows = ids.shape[0] if ids is not None and getattr(ids, "ndim", 0) >= 2 else 1
            on_tokens(int(rows))

        handle = self.model.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()


CB_PAGE_TOKENS = 128
"""Tokens per KV-cache page under continuous batching."""
LOGITS_BYTES = {"cpu": 32 * 2**20, "cuda": 2**30}
"""Most bytes of logits one teacher-forced forward pass returns, by device type (others: the
CPU's); longer targets, fewer rows. On a CPU a forward pass is compute-bound even at batch 1,
so smaller batches cost little speed (`benchmarks/results/perf_scoring.md`); on a GPU they
leave the card idle."""
LOGSOFTMAX_BYTES = 16 * 2**20
"""Most float32 logits bytes normalised at once when reading log-probabilities."""


def _mode(engine_args: Mapping[str, Any]) -> str:
    """The `sample_batching` mode that `engine_args` (as given) ask for."""
    return str(engine_args.get("sample_batching", HFArgs().sample_batching))


def checkpoint_warpers(config: Any) -> list[str]:
    """The sampling warpers beyond temperature and top-p that a checkpoint's generation config
    turns on (transformers applies them when `generate` samples; `RowSampler` does not)."""
    found = []
    for name in ("min_p", "top_h"):
        if getattr(config, name, None) is not None:
            found.append(name)
    typical = getattr(config, "typical_p", None)
    if typical is not None and typical < 1.0:
        found.append("typical_p")
    for name in ("epsilon_cutoff", "eta_cutoff"):
        value = getattr(config, name, None)
        if value is not None and 0.0 < value < 1.0:
            found.append(name)
    return found


def row_seed(seed: int, sample: int) -> int:
    """The seed of sample `sample`'s random stream in a conversation seeded `seed`: a hash of
    both, so that neighbouring seeds and indices give unrelated streams."""
    digest = hashlib.sha256(f"bon-row:{seed}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class RowSampler:
    """A logits processor that samples each row from its own random stream and returns scores
    whose argmax is the sampled token (0 there, -inf elsewhere), for a greedy `generate`.

    Row r's stream is a `torch.Generator` seeded with `row_seed` of its conversation's seed and
    its sample index. Each step warps the scores as `generate` does when it samples (temperature
    when it is not 1, then top-p when it is below 1, with transformers' own warpers), draws one
    float64 uniform u per vocabulary entry from the row's generator, and picks the argmax of
    the warped scores plus Gumbel noise -log(-log u): a draw from the softmax of the warped
    scores (the Gumbel-max trick). Unlike inverting the cumulative distribution, whose sum over
    the vocabulary gathers every rounding difference, the pick changes with the logits only
    when the two best noisy scores lie within that difference of each other. Tokens the warpers
    removed are never picked. Processors that transformers runs before this one (a
    checkpoint's repetition penalty, say) act as they do when `generate` samples.
    """

    def __init__(
        self,
        torch: Any,
        seeds: Sequence[int],
        prompt_width: int,
        sampling: SamplingOptions,
        device: Any,
        skip: int = 0,
    ) -> None:
        """`seeds`: each row's stream seed (`row_seed`), in row order; `prompt_width`: the
        padded prompt's length, from which the steps are counted; `skip`: steps each stream
        has already drawn (a row continuing a partial completion of that many tokens): before
        the first step, each stream draws and drops that many steps' noise."""
        from transformers import TemperatureLogitsWarper, TopPLogitsWarper

        self._torch = torch
        self._device = torch.device(device)
        self._generators = [
            torch.Generator(device=self._device).manual_seed(seed) for seed in seeds
        ]
        self._step = prompt_width
        self._skip = skip
        self._noise: Any = None
        self._warpers: list[Any] = []
        if sampling.temperature != 1.0:
            self._warpers.append(TemperatureLogitsWarper(sampling.temperature))
        if sampling.top_p < 1.0:
            self._warpers.append(TopPLogitsWarper(top_p=sampling.top_p, min_tokens_to_keep=1))

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        torch = self._torch
        if scores.shape[0] != len(self._generators) or input_ids.shape[1] != self._step:
            raise EngineError(
                f"sampling step {input_ids.shape[1]} of {scores.shape[0]} rows, but "
                f"{len(self._generators)} random streams at step {self._step}: transformers "
                "called the sampler out of order; use --engine-arg sample_batching=prompt"
            )
        self._step += 1
        for warper in self._warpers:
            scores = warper(input_ids, scores)
        if self._noise is None:
            self._noise = torch.empty(scores.shape, dtype=torch.float64, device=scores.device)
            for row, generator in enumerate(self._generators):
                for _ in range(self._skip):  # the same draws, one step at a time, as decoding
                    self._noise[row].uniform_(generator=generator)
        noise = self._noise
        for row, generator in enumerate(self._generators):
            noise[row].uniform_(generator=generator)
        noise.log_().neg_().log_().neg_()  # Gumbel(0, 1); u = 0 gives -inf, never picked
        chosen = (scores.to(torch.float64) + noise).argmax(dim=-1, keepdim=True)
        return torch.full_like(scores, -math.inf).scatter_(1, chosen, 0.0)


@dataclass
class _Kept:
    """The KV cache of one `generate` call with its sequences and attention mask, for
    continuing rows of it (`HFEngine.resume`). The cache is taken once: `take` selects the
    continuing rows from it in place."""

    cache: Any
    sequences: Any
    mask: Any

    @classmethod
    def of(cls, torch: Any, out: Any, prompt_mask: Any) -> _Kept:
        """What `generate`'s output `out` keeps; `prompt_mask` is its input's attention mask
        (finished rows are padded with the mask at 1, as `generate` extends it)."""
        grown = out.sequences.shape[1] - prompt_mask.shape[1]
        ones = prompt_mask.new_ones((prompt_mask.shape[0], grown))
        return cls(out.past_key_values, out.sequences, torch.cat([prompt_mask, ones], dim=-1))

    def take(self, rows: list[int]) -> tuple[dict[str, Any], Any]:
        """The inputs and cache of `rows` (in that order); the cache is gone afterwards."""
        index = self.sequences.new_tensor(rows)
        cache, self.cache = self.cache, None
        cache.batch_select_indices(index)
        inputs = {"input_ids": self.sequences[index], "attention_mask": self.mask[index]}
        return inputs, cache


@dataclass
class _Row:
    """A partial completion to continue: conversation i, its k-th partial, sample j, its
    token ids, who follows its text, and the call whose cache it can go on from (`source`,
    None when there is none) with its row there (`place`)."""

    i: int
    k: int
    j: int
    ids: list[int]
    follow: Callable[[str], None] | None
    source: _Kept | None
    place: int


class _Follower:
    """A stopping criterion that stops nothing: at each step it passes each watched row's
    text so far (its partial and its new tokens up to a stop token) to the row's `follow`
    when it grew by whole characters."""

    def __init__(self, engine: HFEngine, width: int, rows: dict[int, _Row]) -> None:
        self._engine = engine
        self._width = width
        self._rows = rows
        self._sent = {r: "" for r in rows}

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        for r, row in self._rows.items():
            text = self._engine._completion(row.ids + input_ids[r, self._width :].tolist()).text
            if len(text) > len(self._sent[r]) and not text.endswith("\ufffd"):
                self._sent[r] = text
                assert row.follow is not None
                row.follow(text)
        return input_ids.new_zeros(input_ids.shape[0], dtype=self._engine._torch.bool)


PAD_SHARE = 0.2
"""Most share of a teacher-forced batch's cells that may be padding (length-aware batches)."""


def length_groups(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices of the non-zero `lengths`, longest first, in runs of at most `batch_size` whose
    padding to the run's longest stays within `PAD_SHARE` of the run's cells."""
    order = sorted((i for i, n in enumerate(lengths) if n), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    real = 0
    for i in order:
        group = groups[-1] if groups else []
        cells = (len(group) + 1) * (lengths[group[0]] if group else lengths[i])
        if group and len(group) < batch_size and real + lengths[i] >= (1 - PAD_SHARE) * cells:
            group.append(i)
            real += lengths[i]
        else:
            groups.append([i])
            real = lengths[i]
    return groups


def model_head(path: str) -> str:
    """The head of the checkpoint at `path` (`bon.engines.base.HEADS`), from the architectures
    its config names: a sequence or token classifier, else a causal LM."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise EngineError(
            f"cannot load model {path!r} with transformers (its config: {exc}). Give a model "
            "alias, a local folder or a Hub id reachable from this machine."
        ) from None
    for name in getattr(config, "architectures", None) or ():
        if name.endswith("ForSequenceClassification"):
            return SEQUENCE_CLASSIFIER
        if name.endswith("ForTokenClassification"):
            return TOKEN_CLASSIFIER
    return CAUSAL_LM


@functools.lru_cache(maxsize=4)
def local_tokenizer(path: str) -> Any:
    """The tokenizer of the checkpoint at `path`, loaded once per process (no weights)."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise EngineError(
            f"cannot load the tokenizer of model {path!r} ({exc}). Give a model alias, a local "
            "folder or a Hub id reachable from this machine."
        ) from None


def render_whole(tokenizer: Any, conversation: list[Message], system_role: bool, model: str) -> str:
    """The whole conversation (ending with the assistant's turn) in the model's chat template,
    a system turn folded into the first user turn when the template has no system role."""
    if not system_role:
        conversation = merge_system(conversation)
    try:
        return tokenizer.apply_chat_template(conversation, tokenize=False)
    except ValueError as exc:  # no chat template
        raise EngineError(
            f"model {model!r} cannot render a conversation ({exc}): reward models read "
            "conversations in their own chat template; give a checkpoint that has one"
        ) from None


def _auto_class(head: str) -> Any:
    """The transformers Auto class that loads a checkpoint with `head`."""
    import transformers

    return {
        CAUSAL_LM: transformers.AutoModelForCausalLM,
        SEQUENCE_CLASSIFIER: transformers.AutoModelForSequenceClassification,
        TOKEN_CLASSIFIER: transformers.AutoModelForTokenClassification,
    }[head]


def _step_stats(torch: Any, logits: Sequence[Any], tokens: Any) -> tuple[list, list]:
    """From `generate`'s raw logits (one rows x vocabulary tensor per step) and the new tokens
    (rows x steps): each row's log-probability of its token at each step, and each step's
    self-certainty KL(uniform || p) = -log V - mean_v log p_v (in nats)."""
    chosen, certainty = [], []
    for step, step_logits in enumerate(logits):
        logp = torch.log_softmax(step_logits.float(), dim=-1)
        chosen.append(logp.gather(-1, tokens[:, step : step + 1].to(logp.device)).squeeze(-1))
        certainty.append(-logp.mean(dim=-1) - math.log(logp.shape[-1]))
    return (
        torch.stack(chosen, dim=1).cpu().tolist(),
        torch.stack(certainty, dim=1).cpu().tolist(),
    )


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _target_logprobs(torch: Any, logits: Any, targets: Any) -> Any:
    """`log_softmax(logits.float())` at the `targets` indices, a few rows at a time: the
    float copy (and its log-softmax) of a whole batch's vocabulary-wide logits is never made."""
    rows, positions, vocab = logits.shape
    step = max(1, LOGSOFTMAX_BYTES // max(1, positions * vocab * 4))
    out = torch.empty(targets.shape, dtype=torch.float32, device=logits.device)
    for start in range(0, rows, step):
        chunk = logits[start : start + step].float()
        picked = chunk.gather(-1, targets[start : start + step].unsqueeze(-1)).squeeze(-1)
        out[start : start + step] = picked - torch.logsumexp(chunk, dim=-1)
    return out


@contextmanager
def _seeded(torch: Any, device: Any, seed: int) -> Iterator[None]:
    """Seed the RNG that sampling on `device` draws from; restore every RNG state afterwards."""
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            yield
        return
    count = torch.get_device_module(device.type).device_count()
    with torch.random.fork_rng(devices=range(count), device_type=device.type):
        torch.manual_seed(seed)
        yield


def _context_length(config: Any) -> int | None:
    """The model's context length from its config (the text model's, for multimodal ones)."""
    config = getattr(config, "text_config", None) or config
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if value else None


def _pick_device(torch: Any, device: str) -> Any:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError(f"device {device!r} was asked for but CUDA is not available here")
    return torch.device(device)


def _pick_dtype(torch: Any, dtype: str, device: Any) -> Any:
    """`dtype` as torch's; auto is bfloat16, except on a CPU without bf16 instructions, where
    torch only emulates bfloat16: float32 there is as fast or faster and keeps full precision
    (`benchmarks/results/cpu_defaults.md`)."""
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cpu" and not cpu_has_bf16():
        return torch.float32
    return torch.bfloat16


BF16_FLAGS = ("avx512_bf16", "amx_bf16")
"""CPU flags (as /proc/cpuinfo names them) of native bfloat16 arithmetic."""


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU does bfloat16 arithmetic natively (False where it cannot be told)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return any(flag in line.split() for flag in BF16_FLAGS)
    except OSError:
        pass
    return False


def _pick_threads(torch: Any) -> None:
    """Give torch one thread per core that other processes leave free (at least one), unless
    OMP_NUM_THREADS says how many: on a machine shared with other jobs, a thread that waits
    for a busy core holds every step up (`benchmarks/results/cpu_defaults.md`)."""
    if os.environ.get("OMP_NUM_THREADS"):
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    threads = max(1, cores - others_running())
    if threads < cores:
        log.info(
            "torch uses %d of %d cores: the others are busy (OMP_NUM_THREADS sets it)",
            threads,
            cores,
        )
    torch.set_num_threads(threads)


def others_running(samples: int = 10, interval: float = 0.01) -> int:
    """How many threads of other processes are running right now: the median over a few
    readings of the kernel's count of runnable threads, less this process's own (0 where the
    counts cannot be read, as outside Linux)."""
    counts = []
    for _ in range(samples):
        try:
            with open("/proc/stat", encoding="ascii") as handle:
                found = next((line for line in handle if line.startswith("procs_running")), "")
            mine = _own_running()
        except OSError:
            return 0
        if not found:
            return 0
        counts.append(int(found.split()[1]) - mine)
        time.sleep(interval)
    return max(0, sorted(counts)[len(counts) // 2])


def _own_running() -> int:
    """This process's threads in the running state (the reader among them)."""
    running = 1
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat", encoding="ascii") as handle:
                state = handle.read().rpartition(")")[2].split()[0]
        except (OSError, IndexError):
            continue
        running += state == "R" and task != str(threading.get_native_id())
    return running


def _stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    eos = model.generation_config.eos_token_id
    ids = eos if isinstance(eos, list) else [eos]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted({i for i in ids if i is not None})


def accepts_system_role(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template takes a system turn (some refuse one); when it does
    not, the system text is merged into the first user turn (`bon.chat.merge_system`)."""
    probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    try:
        tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:  # jinja raises its own TemplateError for "system role not supported"
        return False
    return True
