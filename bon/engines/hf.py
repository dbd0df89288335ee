"""The embedded default engine: Hugging Face transformers, on CPU or GPU.

By default (`sample_batching=prompt`) sampling runs each conversation's `n` samples as one
`generate` call seeded with that conversation's own seed (under a forked RNG, so the caller's
random state is untouched): a record's samples then depend on its seed alone, not on which
records share its batch or where a killed run resumed. transformers draws from the global RNG,
so samples of several conversations in one batch cannot be seeded apart. Greedy decoding, which
draws nothing, is always length-sorted into left-padded micro-batches of `batch_size` sequences.

Two opt-in engine args trade that reproducibility for throughput (benchmarks/gen_throughput.py
measures them): `sample_batching=grouped` samples several conversations in one length-sorted
`generate` call of up to `batch_size` sequences, seeded once per call; `sample_batching=continuous`
hands every conversation to transformers' continuous batching (`generate_batch`), which
refills a finished row with a waiting one. With either, a record's samples depend on the
other records of the call.

A prompt with no room in the model's context gets `finish_reason="error"` completions, and
`max_new_tokens` is capped so that every prompt and its completion fit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

from bon.chat import Message, merge_system
from bon.engines.base import (
    Completion,
    Engine,
    EngineArg,
    EngineOptions,
    SamplingOptions,
    check_fits,
    decode_each,
    too_long,
)
from bon.errors import ConfigError, EngineError
from bon.models import resolve_model

log = logging.getLogger(__name__)


class HFEngine(Engine):
    """transformers `generate` over a causal LM with a chat template."""

    name = "hf"
    args: ClassVar[dict[str, EngineArg]] = {
        "sample_batching": EngineArg(
            str,
            "prompt",
            "how sampled conversations share `generate` calls: prompt (one call per "
            "conversation, its samples depend on its own seed alone), grouped (length-sorted "
            "calls of up to batch_size sequences, one seed per call) or continuous "
            "(transformers' continuous batching); grouped and continuous are faster, but a "
            "record's samples then depend on the other records generated with it",
        )
    }

    @classmethod
    def check_args(cls, given: Mapping[str, Any]) -> dict[str, Any]:
        """`given` converted, with `sample_batching` one of `SAMPLE_BATCHING`."""
        out = super().check_args(given)
        mode = out.get("sample_batching", "prompt")
        if mode not in SAMPLE_BATCHING:
            raise ConfigError(
                f"`sample_batching` must be one of {', '.join(SAMPLE_BATCHING)}, got {mode!r}"
            )
        return out

    def __init__(self, options: EngineOptions) -> None:
        super().__init__(options)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self._torch = torch
        self.device = _pick_device(torch, options.device)
        dtype = _pick_dtype(torch, options.dtype)
        path = resolve_model(options.model)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise EngineError(
                f"cannot load model {options.model!r} with transformers: {exc}. "
                "Give a model alias, a local folder or a Hub id reachable from this machine."
            ) from exc
        self.model.to(self.device).eval()
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self._stop_ids = _stop_token_ids(self.model, self.tokenizer)
        self._system_role = _accepts_system_role(self.tokenizer)
        self.context_length = _context_length(self.model.config)
        """Most tokens (prompt and completion) the model takes; None when its config says not."""
        self._dtype = str(self.model.dtype).removeprefix("torch.")
        self._vocab_size = self.model.get_output_embeddings().weight.shape[0]

    def describe(self) -> dict[str, Any]:
        """The model, device and dtype: what changes this engine's outputs."""
        return {**super().describe(), "device": str(self.device), "dtype": self._dtype}

    def render(self, conversation: list[Message]) -> str:
        """The conversation as the model's chat template formats it, ready for the reply."""
        if not self._system_role:
            conversation = merge_system(conversation)
        return self.tokenizer.apply_chat_template(
            conversation, add_generation_prompt=True, tokenize=False
        )

    def generate(
        self,
        conversations: Sequence[list[Message]],
        sampling: SamplingOptions,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        """Sampled conversations run one `generate` call each, seeded with their own seed, so a
        conversation's samples do not depend on the others in the call (unless the engine arg
        `sample_batching` says otherwise); greedy ones are batched. A prompt with no room left
        in the context gets error completions."""
        ids = [self._encode(self.render(c)) for c in conversations]
        seeds = list(seeds) if seeds is not None else [sampling.seed] * len(ids)
        results: list[list[Completion]] = [[] for _ in ids]
        fitting = []
        for i, prompt in enumerate(ids):
            if self.context_length is not None and len(prompt) >= self.context_length:
                results[i] = [too_long(len(prompt), self.context_length)] * sampling.n
            else:
                fitting.append(i)
        mode = self.engine_args["sample_batching"]
        if sampling.greedy:
            self._generate_grouped(ids, fitting, sampling, results)
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
    ) -> None:
        """Rows in length-sorted micro-batches of `batch_size` sequences; a row whose completion
        would overrun the context runs alone with a capped length, so no row is capped by its
        neighbours."""
        batched = []
        for i in fitting:
            if self._room(ids[i], sampling) < sampling.max_new_tokens:
                results[i] = self._generate_one(ids[i], sampling)
            else:
                batched.append(i)
        batched.sort(key=lambda i: len(ids[i]), reverse=True)
        per_batch = max(1, self.options.batch_size // sampling.n)
        for start in range(0, len(batched), per_batch):
            chunk = batched[start : start + per_batch]
            outputs = self._generate_batch(
                [ids[i] for i in chunk], sampling, sampling.max_new_tokens
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

    def _generate_one(self, prompt: list[int], sampling: SamplingOptions) -> list[Completion]:
        return self._generate_batch([prompt], sampling, self._room(prompt, sampling))[0]

    def _room(self, prompt: list[int], sampling: SamplingOptions) -> int:
        """`max_new_tokens`, capped so that the prompt and its completion fit the context."""
        if self.context_length is None:
            return sampling.max_new_tokens
        return min(sampling.max_new_tokens, self.context_length - len(prompt))

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def token_pieces(self, texts: Sequence[str]) -> list[list[str]]:
        return [decode_each(self.tokenizer, self._encode(text)) for text in texts]

    def continuation_logprobs(
        self, conversations: Sequence[list[Message]], continuations: Sequence[str]
    ) -> list[list[float]]:
        """Teacher-forced log-probabilities of each continuation's tokens, in input order.

        Pairs are length-sorted into micro-batches of at most `batch_size`, cut where padding
        would pass `PAD_SHARE` of a batch's cells, left-padded (so every continuation ends at
        the last position and only the last logits are computed), with position ids counted
        from each sequence's first real token.
        """
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
        self, batch: list[list[int]], sampling: SamplingOptions, max_new_tokens: int
    ) -> list[list[Completion]]:
        torch = self._torch
        padded = self.tokenizer.pad({"input_ids": batch}, return_tensors="pt").to(self.device)
        kwargs: dict[str, Any] = {"do_sample": not sampling.greedy}
        if not sampling.greedy:
            kwargs.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        with torch.inference_mode():
            out = self.model.generate(
                **padded,
                max_new_tokens=max_new_tokens,
                num_return_sequences=sampling.n,
                eos_token_id=self._stop_ids,
                pad_token_id=self.tokenizer.pad_token_id,
                **kwargs,
            )
        new = out[:, padded["input_ids"].shape[1] :].tolist()
        completions = [self._completion(row) for row in new]
        return [completions[i : i + sampling.n] for i in range(0, len(completions), sampling.n)]

    def _completion(self, token_ids: list[int]) -> Completion:
        end = next((i for i, t in enumerate(token_ids) if t in self._stop_ids), None)
        if end is None:
            text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
            return Completion(text=text, finish_reason="length", tokens=len(token_ids))
        text = self.tokenizer.decode(token_ids[:end], skip_special_tokens=True)
        return Completion(text=text, finish_reason="stop", tokens=end + 1)


SAMPLE_BATCHING = ("prompt", "grouped", "continuous")
"""Values of the `sample_batching` engine arg."""
CB_PAGE_TOKENS = 128
"""Tokens per KV-cache page under continuous batching."""
LOGITS_BYTES = {"cpu": 32 * 2**20, "cuda": 2**30}
"""Most bytes of logits one teacher-forced forward pass returns, by device type (others: the
CPU's); longer targets, fewer rows. On a CPU a forward pass is compute-bound even at batch 1,
so smaller batches cost little speed (`benchmarks/results/perf_scoring.md`); on a GPU they
leave the card idle."""
LOGSOFTMAX_BYTES = 16 * 2**20
"""Most float32 logits bytes normalised at once when reading log-probabilities."""


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


def _pick_dtype(torch: Any, dtype: str) -> Any:
    return torch.bfloat16 if dtype == "auto" else getattr(torch, dtype)


def _stop_token_ids(model: Any, tokenizer: Any) -> list[int]:
    eos = model.generation_config.eos_token_id
    ids = eos if isinstance(eos, list) else [eos]
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted({i for i in ids if i is not None})


def _accepts_system_role(tokenizer: Any) -> bool:
    probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    try:
        tokenizer.apply_chat_template(probe, tokenize=False)
    except Exception:  # jinja raises its own TemplateError for "system role not supported"
        return False
    return True
