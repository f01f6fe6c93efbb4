"""Rewards: verifiers, shaping, and the RewardModule that combines them."""

from k15.reward.answer import FinalAnswerMatch, Verifier
from k15.reward.module import RewardModule, Rewards

__all__ = ["FinalAnswerMatch", "RewardModule", "Rewards", "Verifier"]
