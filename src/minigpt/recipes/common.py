"""Small pieces every training recipe shares."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

from minigpt.errors import UserError
from minigpt.train.config import TrainConfig
from minigpt.train.rundir import LOCK_FILE, RUN_MARKER, lock_run_dir, unlock_run_dir


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


def check_options(**rules: tuple[Any, bool, str]) -> None:
    """Refuse option values that would crash later or silently train something else.

    Each keyword is an option name mapped to `(value, ok, rule)`; the first with `ok` false
    raises `UserError("--name: must be RULE, got VALUE")`.
    """
    for name, (value, ok, rule) in rules.items():
        if not ok:
            raise UserError(f"--{name}: must be {rule}, got {value!r}")


def refuse_existing_run(out_dir: Path, resume: bool, overwrite: bool, inputs: dict[str, Any] | None = None) -> None:
    """Check OUT before minutes of data preparation (the `Trainer` checks again when it starts).

    It first takes OUT's lock (`train.rundir.lock_run_dir`) for the rest of the process, so a
    second command on the same OUT is refused before either prepares any data. Then:
    - OUT must not be one of the command's inputs (`inputs`: option name -> path or list of
      paths, e.g. `{"model": "runs/sft"}`), not even with `overwrite`: training into the model
      it starts from would replace or delete that model.
    - OUT holding a run (`run.json`) needs `resume` or `overwrite`.
    - OUT holding anything else (a model, a tokenizer, the user's files) needs `overwrite`,
      and even then only files of the names the run writes are replaced; nothing is deleted
      (see `Trainer`).

    Raises:
        UserError: one of the above, another process is using OUT, or OUT cannot be created
            or written.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory; choose another --out")
    for name, value in (inputs or {}).items():
        for path in value if isinstance(value, (list, tuple)) else [value]:
            if path and out.exists() and Path(path).exists() and Path(path).resolve() == out.resolve():
                raise UserError(f"--out {out} is also the --{name} input; training into it would destroy it: choose another --out")
    took = lock_run_dir(out)
    try:
        _check_out_contents(out, resume, overwrite)
    except UserError:
        if took:
            unlock_run_dir(out)
        raise


def _check_out_contents(out: Path, resume: bool, overwrite: bool) -> None:
    if resume:
        return
    if (out / "run.json").exists():
        if not overwrite:
            raise UserError(f"{out} already holds a run; pass --resume to continue it, --overwrite to start over, or choose another --out")
        return
    if (out / RUN_MARKER).exists():
        return  # a run of ours that stopped before training (e.g. during data preparation)
    foreign = sorted(p.name for p in out.iterdir() if p.name != LOCK_FILE)
    if foreign and not overwrite:
        raise UserError(
            f"--out {out} already holds files that no minigpt run wrote ({', '.join(foreign[:4])}{', …' if len(foreign) > 4 else ''}); "
            "choose another --out, or pass --overwrite to write into it (files of the same names are replaced, no other file is deleted)"
        )
    if not foreign:
        # An empty or new OUT is this run's: mark it, so that a run stopped before `run.json`
        # exists (during data preparation) can simply be started again.
        (out / RUN_MARKER).touch()


def load_preference_data(
    data: list[str],
    tok,
    max_length: int,
    max_prompt_length: int | None,
    val_fraction: float,
    max_val: int | None,
    seed: int,
    say=print,
    unpaired: bool = False,
):
    """Tokenize every preference file of `data` and split whole records into train / held-out.

    Paired data (`PreferenceDataset`): `{"prompt","chosen","rejected"}` (strings or message
    lists) and HH-RLHF transcripts. `unpaired=True` (KTO, `UnpairedPreferenceDataset`):
    `{"prompt","completion","label"}` records, and paired ones split into a desirable and an
    undesirable example. Each source's record, skip and truncation counts go through `say`.

    Returns `(train_dataset, val_dataset | None)`.

    Raises:
        UserError: no data, a malformed record (naming file:line and field), nothing usable.
    """
    from minigpt.data.preference import PreferenceDataset, UnpairedPreferenceDataset, split_preference

    if not data:
        raise UserError('--data is required: JSONL files of {"prompt", "chosen", "rejected"} or HH-RLHF {"chosen", "rejected"} records')
    kind = UnpairedPreferenceDataset if unpaired else PreferenceDataset
    parts = []
    for source in data:
        ds = kind(source, tok, max_length=max_length, max_prompt_length=max_prompt_length)
        say(f"{source}: {ds.summary()}")
        parts.append(ds)
    if len(parts) == 1:
        full = parts[0]
    else:  # already tokenized and truncated: re-adding the examples changes nothing
        full = kind([ex for ds in parts for ex in ds.examples], tok, max_length=max_length, max_prompt_length=max_prompt_length)
    train_ds, val_ds = split_preference(full, val_fraction, seed=seed, max_val=max_val)
    say(f"preference data: {len(train_ds)} train / {len(val_ds)} held-out {'examples' if unpaired else 'pairs'}")
    return train_ds, (val_ds if len(val_ds) else None)


def fit_from_start(trainer, resume: bool, overwrite: bool, say: Callable[[str], Any], describe: Callable[[dict], str]) -> dict:
    """Evaluate the starting model on the held-out split (fresh runs only), train, and report.

    `describe(metrics)` renders the held-out figures of one evaluation (`val_*` keys) for the
    two log lines. Returns the trainer's final metrics plus `train_seconds`, `steps` and, for
    every held-out metric `val_x` of the starting model, `val_x_before`.
    """
    before = trainer.evaluate() if trainer.val_dataset is not None and not resume else {}
    if before:
        say(f"held-out before training: {describe(before)}")
    t0 = time.time()
    metrics = trainer.fit(resume=resume, overwrite=overwrite)
    metrics["train_seconds"] = time.time() - t0
    metrics["steps"] = trainer.step
    metrics.update({f"{k}_before": v for k, v in before.items()})
    if "val_loss" in metrics:
        say(f"done: {trainer.step} steps in {metrics['train_seconds']:.0f} s; held-out {describe(metrics)}")
    return metrics
