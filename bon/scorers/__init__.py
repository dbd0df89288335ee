"""Scorers: map (conversation, candidates) to one score per candidate, plus evidence.

Built-ins: `flip`, `flip-k`, `flip-likelihood` (bon.scorers.flip); `flip-tokens`
(bon.scorers.tokens); `judge-pointwise`,
`judge-pairwise`, `judge-listwise` (bon.scorers.judges); `random`, `longest`, `shortest`
(bon.scorers.controls); `mbr`, `vote` (bon.scorers.consensus); `relevance`
(bon.scorers.relevance); `mix`, a fitted combination of others (bon.scorers.mix); `rm`,
`prm` (bon.scorers.reward_models); `confidence` (bon.scorers.confidence).
"""

from __future__ import annotations

from bon.registry import Registry
from bon.scorers.base import Query, Scored, ScoreOptions, Scorer, ScorerOptions
from bon.scorers.confidence import ConfidenceScorer
from bon.scorers.consensus import MbrScorer, VoteOptions, VoteScorer
from bon.scorers.controls import LongestScorer, RandomScorer, ShortestScorer
from bon.scorers.flip import FlipKOptions, FlipKScorer, FlipLikelihoodScorer, FlipScorer
from bon.scorers.judges import ListwiseJudge, PairwiseJudge, PairwiseOptions, PointwiseJudge
from bon.scorers.mix import MixOptions, MixScorer
from bon.scorers.relevance import RelevanceScorer
from bon.scorers.reward_models import (
    ProcessRewardOptions,
    ProcessRewardScorer,
    RewardModelOptions,
    RewardModelScorer,
)
from bon.scorers.tokens import FlipTokensOptions, FlipTokensScorer

scorers: Registry[type[Scorer]] = Registry("scorer", "bon.scorers")
register = scorers.register
for _cls in (
    FlipScorer,
    FlipKScorer,
    FlipLikelihoodScorer,
    FlipTokensScorer,
    PointwiseJudge,
    PairwiseJudge,
    ListwiseJudge,
    RandomScorer,
    LongestScorer,
    ShortestScorer,
    MbrScorer,
    VoteScorer,
    RelevanceScorer,
    MixScorer,
    RewardModelScorer,
    ProcessRewardScorer,
    ConfidenceScorer,
):
    register(_cls.name)(_cls)


def higher_is_better(name: str) -> bool:
    """The direction of the score called `name`; scores from elsewhere count as higher-better."""
    return scorers.get(name).higher_is_better if name in scorers.names() else True


__all__ = [
    "ConfidenceScorer",
    "FlipKOptions",
    "FlipKScorer",
    "FlipLikelihoodScorer",
    "FlipScorer",
    "FlipTokensOptions",
    "FlipTokensScorer",
    "ListwiseJudge",
    "MbrScorer",
    "MixOptions",
    "MixScorer",
    "PairwiseJudge",
    "PairwiseOptions",
    "PointwiseJudge",
    "ProcessRewardOptions",
    "ProcessRewardScorer",
    "Query",
    "RelevanceScorer",
    "RewardModelOptions",
    "RewardModelScorer",
    "ScoreOptions",
    "Scored",
    "Scorer",
    "ScorerOptions",
    "VoteOptions",
    "VoteScorer",
    "higher_is_better",
    "scorers",
]
