"""lm-evaluation-harness model `bon`: each generation request is answered by best-of-N.

lm-eval 0.4 has no plugin entry points, so a model must be registered in the process before
lm-eval looks its name up: importing this module registers `bon`. Use it from Python with

    import bon.entrypoints.lmeval, lm_eval
    lm_eval.simple_evaluate(model="bon", model_args="n=4,scorer=flip-tokens", tasks=[...])

or from the command line with `bon lm-eval --model bon --model_args n=4 --tasks ...`, which
registers it and hands every argument to lm-eval's own CLI. Without lm-eval (the `lmeval`
extra), importing this module raises `ConfigError` saying what to install. `model_args` are
`bon run`'s options (`n`, `temperature`, `model`, `reranker_model`, ...; `scorer` names one
scorer).
lm-eval's `batch_size` is the number of prompts handed to best-of-N at once ("auto": all);
its `device` applies to both models unless `device` is in `model_args` (its CLI default,
cuda:0, is left to bon's `auto`).

The task's `until` strings end each candidate before it is scored, and its `max_gen_toks` caps
it; the task's other generation settings (temperature, do_sample, ...) are ignored, because
best-of-N samples with bon's own. Tasks that need log-likelihoods (multiple choice,
perplexity) cannot run on this model.

The other route needs no registration: `bon serve --n 4` and lm-eval's own API model,

    lm-eval --model local-chat-completions --apply_chat_template \
        --model_args model=bon,base_url=http://127.0.0.1:8000/v1/chat/completions \
        --gen_kwargs temperature=0.8 --tasks ...

(lm-eval sends temperature 0 unless told otherwise, which the server refuses for N > 1, and
sends `--gen_kwargs` fields such as `best_of` or `scorer` in each request's body.)
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from bon import api
from bon.errors import ConfigError, RecordError
from bon.online import Answer, BestOfN, Job
from bon.options import unaliased
from bon.scorers import ScoreOptions

try:
    import lm_eval.models  # noqa: F401  (lm-eval's own models register first)
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
    from lm_eval.models.api_models import JsonChatStr
except ModuleNotFoundError as exc:  # only lm-eval itself missing is the extra's to name
    if exc.name is None or exc.name.partition(".")[0] != "lm_eval":
        raise
    raise ConfigError(
        f"bon lm-eval needs the lmeval extra ({exc.name} is not installed): "
        'pip install "bon[lmeval]"'
    ) from None

log = logging.getLogger(__name__)

LIKELIHOOD = (
    "the bon model only generates: best-of-N selects among sampled answers and has no "
    "likelihood of a given continuation; run generate_until tasks with it, or log-likelihood "
    "tasks with lm-eval's hf model"
)
HONOURED = ("until", "max_gen_toks")
LM_EVAL_DEFAULT_DEVICE = "cuda:0"


def _prompts_per_call(batch_size: Any) -> int | None:
    if batch_size is None or (isinstance(batch_size, str) and batch_size.startswith("auto")):
        return None
    try:
        size = int(batch_size)
    except (TypeError, ValueError):
        size = 0
    if size < 1:
        raise ConfigError(f"`batch_size` must be an integer >= 1 or auto, got {batch_size!r}")
    return size


@register_model("bon")
class BonLM(LM):
    """Best-of-N behind lm-eval's `LM` interface (`generate_until` only)."""

    def __init__(
        self,
        batch_size: Any = None,
        max_batch_size: Any = None,
        device: str | None = None,
        **model_args: Any,
    ) -> None:
        super().__init__()
        options = unaliased(model_args, ScoreOptions)
        # lm-eval's CLI always sends its default, cuda:0; bon's own default (auto) already
        # takes CUDA when there is one, and a machine without it still runs.
        if device is not None and device != LM_EVAL_DEFAULT_DEVICE:
            options.setdefault("device", device)
        generate, score, select = api.split_options("run", options, files=False)
        self.bon = BestOfN(generate, score, select)
        self.prompts_per_call = _prompts_per_call(batch_size)
        self._warned: set[str] = set()

    @property
    def tokenizer_name(self) -> str:
        """The generator's model: its chat template formats the prompts."""
        return self.bon.generate.model

    def apply_chat_template(
        self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> JsonChatStr:
        """The turns themselves (as JSON): bon's engines apply the model's chat template."""
        return JsonChatStr(json.dumps(chat_history, ensure_ascii=False))

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """The selected answer of each request, cut at its `until` strings. A request the
        models cannot take (a prompt longer than the context) answers "" with a warning."""
        texts = [""] * len(requests)
        jobs: list[tuple[int, Job]] = []
        for i, request in enumerate(requests):
            try:
                jobs.append((i, self._job(*request.args)))
            except RecordError as exc:
                log.warning("request %d answered with an empty string: %s", i, exc)
        size = self.prompts_per_call or max(1, len(jobs))
        chunks = [jobs[start : start + size] for start in range(0, len(jobs), size)]
        for chunk in tqdm(chunks, desc="bon best-of-N", disable=disable_tqdm):
            answers = self.bon.answer([job for _, job in chunk])
            for (i, _), answer in zip(chunk, answers, strict=True):
                if isinstance(answer, Answer):
                    texts[i] = answer.text
                    self.cache_hook.add_partial("generate_until", requests[i].args, answer.text)
                elif isinstance(answer, RecordError):
                    log.warning("request %d answered with an empty string: %s", i, answer)
                else:
                    raise answer
        return texts

    def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list:
        raise NotImplementedError(LIKELIHOOD)

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list:
        raise NotImplementedError(LIKELIHOOD)

    def close(self) -> None:
        """Free the models."""
        self.bon.close()

    def _job(self, context: Any, gen_kwargs: dict[str, Any]) -> Job:
        if isinstance(context, JsonChatStr):
            messages = json.loads(context.prompt)
        else:
            messages = [{"role": "user", "content": str(context)}]
        ignored = sorted(set(gen_kwargs) - set(HONOURED) - self._warned)
        if ignored:
            self._warned.update(ignored)
            log.warning(
                "the bon model ignores the task's %s: best-of-N samples with bon's options",
                ", ".join(ignored),
            )
        until = gen_kwargs.get("until") or []
        return self.bon.job(
            messages,
            max_new_tokens=gen_kwargs.get("max_gen_toks"),
            stop=[until] if isinstance(until, str) else list(until),
        )


def cli_evaluate(args: Sequence[str]) -> None:
    """lm-eval's command line, with the `bon` model registered; `args` as `lm-eval` takes them."""
    from lm_eval.__main__ import cli_evaluate as run

    saved = sys.argv
    sys.argv = ["lm-eval", *args]
    try:
        run()
    finally:
        sys.argv = saved
