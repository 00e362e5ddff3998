"""Each training stage's defaults, defined once: the command and its Python API start from the
same values. Plain dataclass instances with no torch import, so the command line is parsed
without loading torch."""

from __future__ import annotations

from minigpt.train.config import TrainConfig

#: Supervised fine-tuning (`minigpt sft`, and `minigpt distill`, which fine-tunes a student on
#: the same records): 1000 steps of 8 conversations, cosine from 2e-4 down to 2e-5.
SFT_TRAIN_DEFAULTS = TrainConfig(
    max_steps=1000,
    batch_size=8,
    lr=2e-4,
    min_lr_ratio=0.1,
    warmup_steps=20,
    weight_decay=0.0,
    eval_interval=200,
    eval_batches=0,
    save_interval=500,
)


__all__ = ["SFT_TRAIN_DEFAULTS"]
