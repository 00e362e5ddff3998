"""Rewards for online RL: the reward functions (`functions`: rule rewards with TRL's signature,
a reward-model scorer, their weighted combination) and the one answer checker (`answers`).

The names are imported on first use (`minigpt._lazy`)."""

from minigpt._lazy import lazy_exports

_EXPORTS = {
    **dict.fromkeys(["answers_equal", "check_answer", "extract_answer"], "minigpt.rewards.answers"),
    **dict.fromkeys(["REWARD_FUNCTIONS", "CombinedReward", "RewardModelScorer", "make_reward", "parse_reward_spec"], "minigpt.rewards.functions"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted(_EXPORTS)
