"""The rollout engine, where users of `minigpt.rl` find it; it lives in
`minigpt.inference.rollout`, below the objectives that consume its rollouts."""

from minigpt.inference.rollout import Rollout, RolloutEngine, completion_logprobs

__all__ = ["Rollout", "RolloutEngine", "completion_logprobs"]
