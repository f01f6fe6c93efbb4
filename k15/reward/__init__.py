"""Rewards: verifiers, shaping terms, and the RewardModule that combines them."""

from k15.reward.answer import FinalAnswerMatch, Verdict, Verifier
from k15.reward.rewards import RewardModule, Rewards
from k15.reward.terms import FormatReward, LengthPenalty, RepetitionPenalty, Responses, Scores, Shaping

__all__ = [
    "FinalAnswerMatch",
    "FormatReward",
    "LengthPenalty",
    "RepetitionPenalty",
    "Responses",
    "RewardModule",
    "Rewards",
    "Scores",
    "Shaping",
    "Verdict",
    "Verifier",
]
