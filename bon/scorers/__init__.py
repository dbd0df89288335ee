"""Scorers: map (conversation, candidates) to one score per candidate, plus evidence."""

from __future__ import annotations

from bon.registry import Registry
from bon.scorers.base import Query, Scored, ScoreOptions, Scorer
from bon.scorers.flip import FlipScorer

scorers: Registry[type[Scorer]] = Registry("scorer", "bon.scorers")
register = scorers.register
register("flip")(FlipScorer)


def higher_is_better(name: str) -> bool:
    """The direction of the score called `name`; scores from elsewhere count as higher-better."""
    return scorers.get(name).higher_is_better if name in scorers.names() else True


__all__ = [
    "FlipScorer",
    "Query",
    "ScoreOptions",
    "Scored",
    "Scorer",
    "higher_is_better",
    "scorers",
]
