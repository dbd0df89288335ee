"""Similarities between an inferred and an original instruction, in [0, 1].

Each similarity is a batch function `(predictions, references) -> scores`, so ones backed by a
model (embeddings) can batch; the plain ones map a pairwise function.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

from bon.errors import ConfigError

Similarity = Callable[[Sequence[str], Sequence[str]], list[float]]

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


def _pairwise(fn: Callable[[str, str], float]) -> Similarity:
    def batch(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
        return [fn(p, r) for p, r in zip(predictions, references, strict=True)]

    return batch


SIMILARITIES: dict[str, Callable[[], Similarity]] = {
    "f1": lambda: _pairwise(token_f1),
}


def load_similarity(name: str) -> Similarity:
    """The batch similarity registered as `name`."""
    if name not in SIMILARITIES:
        raise ConfigError(
            f"unknown similarity {name!r}; available: {', '.join(sorted(SIMILARITIES))}"
        )
    return SIMILARITIES[name]()
