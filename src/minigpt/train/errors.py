"""The training loop's own exceptions (no torch import: the CLI catches them before loading torch)."""

from __future__ import annotations

import signal
from pathlib import Path


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the update was not applied and nothing was saved after
    the last good checkpoint.

    Attributes:
        loss: the non-finite loss (None when raised with a message only).
    """

    def __init__(self, message: str, loss: float | None = None) -> None:
        super().__init__(message)
        self.loss = loss


class TrainingInterrupted(Exception):
    """SIGINT (Ctrl-C) or SIGTERM stopped `Trainer.fit` between two steps, after it saved a
    checkpoint. The CLI exits with 128 + `signum` (130 for SIGINT, 143 for SIGTERM).

    Attributes:
        signum: the signal's number.
        step: the optimizer steps done, all of them in the checkpoint.
        checkpoint: the checkpoint directory written (None on ranks other than 0).
    """

    def __init__(self, signum: int, step: int, checkpoint: Path | None):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        super().__init__(f"{name} at step {step}; checkpoint saved in {checkpoint}")


__all__ = ["TrainingDivergedError", "TrainingInterrupted"]
