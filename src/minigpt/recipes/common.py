"""Small pieces every training recipe shares."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from minigpt.errors import UserError
from minigpt.train.config import TrainConfig


def apply_shorthands(train: TrainConfig, epochs: float | None = None, batch_size: int | None = None) -> TrainConfig:
    """`train` with the original design's `--epochs` / `--batch_size` shorthands applied (None
    keeps the `--train.*` value)."""
    if epochs is None and batch_size is None:
        return train
    return dataclasses.replace(
        train,
        epochs=train.epochs if epochs is None else epochs,
        batch_size=train.batch_size if batch_size is None else batch_size,
    )


def refuse_existing_run(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Fail fast, before minutes of tokenization, when OUT already holds a run (the `Trainer`
    checks again when it starts).

    Raises:
        UserError: OUT holds `run.json` and neither `resume` nor `overwrite` is set.
    """
    if not resume and not overwrite and (Path(out_dir) / "run.json").exists():
        raise UserError(f"{out_dir} already holds a run; pass --resume to continue it, --overwrite to start over, or choose another --out")
