"""Running means of the metrics a trainer's `train_step` returns, for `get_statistics()`."""

from __future__ import annotations

import math
from typing import Mapping


class RunningStatistics:
    """Means of every metric a Python-API trainer has returned since it was built.

    `record(metrics)` adds one step's metrics (Python floats; non-numbers and NaN are left
    out) and returns them unchanged, so a `train_step` can end with `return
    self.statistics.record(out)`. `get_statistics()` gives the mean of each metric over the steps
    that reported it, plus `steps`, the number of steps recorded.
    """

    def __init__(self) -> None:
        self.steps = 0
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def record(self, metrics: Mapping[str, float]) -> Mapping[str, float]:
        """Add one step's `metrics`; returns them as given."""
        self.steps += 1
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
                continue
            self._sums[key] = self._sums.get(key, 0.0) + float(value)
            self._counts[key] = self._counts.get(key, 0) + 1
        return metrics

    def get_statistics(self) -> dict[str, float]:
        """`{metric: mean since the start}` and `steps` (floats; `{"steps": 0.0}` before any step)."""
        out = {key: self._sums[key] / self._counts[key] for key in self._sums}
        out["steps"] = float(self.steps)
        return out


class ReportsStatistics:
    """Mixin of the Python-API trainers: `self.statistics` (a `RunningStatistics`, made on first
    use) records what each `train_step` returns, and `get_statistics()` gives its running means."""

    @property
    def statistics(self) -> RunningStatistics:
        """The running means of this trainer's step metrics."""
        stats = self.__dict__.get("_statistics")
        if stats is None:
            stats = self.__dict__["_statistics"] = RunningStatistics()
        return stats

    def get_statistics(self) -> dict[str, float]:
        """The mean of every metric `train_step` has returned since the trainer was built, and
        `steps` (the number of steps): a checkpoint can store it as the API guide does
        (`'stats': trainer.get_statistics()`)."""
        return self.statistics.get_statistics()


__all__ = ["ReportsStatistics", "RunningStatistics"]
