"""The names the loss functions accept, importable without torch: the algorithm configs check
their fields against them when the command line is parsed."""

#: Group advantage estimators (`minigpt.losses.advantages.group_advantages`).
ADVANTAGE_TYPES = ("normalized", "relative", "rank", "rloo")
#: Per-token KL estimators (`minigpt.losses.kl.kl_estimate`; Schulman 2020).
KL_ESTIMATORS = ("k1", "k2", "k3")
#: How a policy loss is averaged (`minigpt.losses.policy.aggregate`).
AGGREGATIONS = ("token", "sequence")

#: Preference losses on pairs (`minigpt.losses.preference`), and all of them with KTO's.
PAIRED_LOSSES = ("sigmoid", "ipo", "hinge", "simpo", "orpo")
PREFERENCE_LOSSES = PAIRED_LOSSES + ("kto",)
#: The preference losses that need no reference policy.
REFERENCE_FREE_LOSSES = ("simpo", "orpo")
#: β of each loss when none is given, the one default of the CLI and the Python API: 0.1 (DPO,
#: Rafailov et al. 2023; IPO, hinge, KTO, ORPO's λ), 2.0 for SimPO, whose reward is a length-
#: normalised log-probability and needs a larger scale (Meng et al. 2024 use 2–2.5).
DEFAULT_BETA = {"sigmoid": 0.1, "ipo": 0.1, "hinge": 0.1, "kto": 0.1, "orpo": 0.1, "simpo": 2.0}

__all__ = ["ADVANTAGE_TYPES", "AGGREGATIONS", "DEFAULT_BETA", "KL_ESTIMATORS", "PAIRED_LOSSES", "PREFERENCE_LOSSES", "REFERENCE_FREE_LOSSES"]
