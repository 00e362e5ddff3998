"""The names the loss functions accept, importable without torch: the algorithm configs check
their fields against them when the command line is parsed."""

#: Group advantage estimators (`minigpt.losses.advantages.group_advantages`).
ADVANTAGE_TYPES = ("normalized", "relative", "rank", "rloo")
#: Per-token KL estimators (`minigpt.losses.kl.kl_estimate`; Schulman 2020).
KL_ESTIMATORS = ("k1", "k2", "k3")
#: How a policy loss is averaged (`minigpt.losses.policy.aggregate`).
AGGREGATIONS = ("token", "sequence")

__all__ = ["ADVANTAGE_TYPES", "AGGREGATIONS", "KL_ESTIMATORS"]
