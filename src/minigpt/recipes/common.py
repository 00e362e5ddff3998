"""Small pieces every training recipe shares."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from minigpt.errors import UserError
from minigpt.train.callbacks import Callback
from minigpt.train.config import TrainConfig
from minigpt.train.rundir import LOCK_FILE, RUN_MARKER, lock_run_dir, unlock_run_dir


def apply_shorthands(train: TrainConfig, epochs: float | None = None, batch_size: int | None = None) -> TrainConfig:
    """`train` with the `--epochs` / `--batch_size` shorthands (the course's commands) applied (None
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


def check_online_rl_options(lora: Any, sampling: Any) -> None:
    """Refuse, before any work, what online RL (grpo, ppo) cannot use: a negative LoRA rank,
    LoRA dropout (the first pass's importance ratio must be exactly 1), DoRA and QLoRA
    (offered by sft/dpo only), and the sampling settings `check_rl_sampling` refuses (a
    repetition penalty, a temperature of 0).

    Raises:
        UserError: one of the refused settings, naming its option.
    """
    from minigpt.objectives.config import check_rl_sampling

    check_options(**{
        "lora.rank": (lora.rank, lora.rank >= 0, "≥ 0 (0 = train every weight)"),
        "lora.dropout": (lora.dropout, lora.dropout == 0, "0 in online RL (the first pass's ratio must be exactly 1)"),
        "lora.dora": (lora.dora, not lora.dora, "false: DoRA is offered by sft and dpo only"),
        "lora.qlora": (lora.qlora, lora.qlora is None, "unset: QLoRA is offered by sft only"),
    })
    check_rl_sampling(sampling, option="--sampling")


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
    from minigpt.errors import check_writable

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory; choose another --out")
    check_writable(out)
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
    from minigpt.data.kto import UnpairedPreferenceDataset
    from minigpt.data.preference import PreferenceDataset, split_preference

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
    if before:
        trainer.log({f"{k}_before": v for k, v in before.items()})  # beside the final evaluation: the report shows before → after
    if "val_loss" in metrics:
        say(f"done: {trainer.step} steps in {metrics['train_seconds']:.0f} s; held-out {describe(metrics)}")
    return metrics


class PolicyEvaluation(Callback):
    """Every `interval` steps: greedy held-out evaluation of the policy, logged as `val_*`."""

    def __init__(self, evaluate, interval: int, say=print) -> None:
        self.evaluate, self.interval, self.say = evaluate, interval, say

    def on_step_end(self, trainer, metrics) -> None:
        if self.interval > 0 and trainer.step % self.interval == 0 and trainer.step < trainer.total_steps:
            t0 = time.perf_counter()
            ev = {f"val_{k}": v for k, v in self.evaluate(trainer.model).items()}
            trainer.elapsed += time.perf_counter() - t0
            trainer.log(ev)
            self.say(f"step {trainer.step}: " + describe(ev))


def describe(ev: dict[str, float]) -> str:
    """One line of held-out figures (`val_reward`, each `val_reward/<name>`)."""
    keys = ["val_reward"] + sorted(k for k in ev if k.startswith("val_reward/")) + ["val_completion_length"]
    keys += ["val_sampled_reward"] + sorted(k for k in ev if k.startswith("val_sampled_reward/"))
    return ", ".join(f"{k[4:]} {ev[k]:.3f}" for k in keys if k in ev)


def load_prompt_data(data: Sequence[str] | Sequence[dict], tok, max_prompt_length: int, val_fraction: float, max_val: int | None, seed: int, system: str | None, say=print):
    """Prompt datasets of every source, split into train / held-out prompts.

    Returns `(train, val | None)` (`PromptDataset`-like: `len`, `[i]`).

    Raises:
        UserError: no data, a malformed record, nothing usable.
    """
    from minigpt.data.prompts import PromptDataset
    from minigpt.data.sft import pick_validation

    if not data:
        raise UserError('--data is required: JSONL files of {"prompt": ..., "answer": ...} records (GSM8K {"question","answer"} works too)')
    items, sources = [], [data] if isinstance(data[0], dict) else data
    for source in sources:
        ds = PromptDataset(source, tok, max_prompt_length=max_prompt_length, system=system)
        skipped = {k: v for k, v in ds.stats.items() if k.startswith("skipped_") and v}
        say(f"{source if isinstance(source, str) else 'prompts'}: {ds.stats['records']} records -> {len(ds)} prompts" + (f" (skipped: {skipped})" if skipped else ""))
        items += ds.items
    val_idx = pick_validation(len(items), val_fraction, seed, max_val, what="prompt(s)") if val_fraction > 0 else set()
    train = [it for i, it in enumerate(items) if i not in val_idx]
    val = [it for i, it in enumerate(items) if i in val_idx]
    if not train:
        raise UserError("no training prompts left after holding out the validation split; lower --val_fraction")
    say(f"prompts: {len(train)} train / {len(val)} held-out")
    return train, (val or None)


def fit_policy(model, objective, train_ds, train: TrainConfig, out_dir: Path, evaluate, val_ds, tok, run_info: dict, resume: bool, overwrite: bool, say) -> dict[str, Any]:
    """The online-RL recipes' shared tail: build the loop's `Trainer` over prompt batches, run
    `evaluate(model)` (greedy held-out rewards) before training, every `train.eval_interval`
    steps (as a callback) and after, and train.

    Returns the final training metrics plus `val_*` after training, `val_*_before` for the
    starting policy, `train_seconds` and `steps`.
    """
    from minigpt.data.prompts import collate_prompts
    from minigpt.train.loop import Trainer

    callbacks = [PolicyEvaluation(evaluate, train.eval_interval, say)] if val_ds else []
    quiet_train = dataclasses.replace(train, eval_interval=0)  # evaluation is the callback's
    trainer = Trainer(model, objective, train_ds, quiet_train, out_dir, collate_fn=collate_prompts, callbacks=callbacks, save_with_model=tok, run_info=run_info)
    before = {}
    if val_ds and not resume:
        before = {f"val_{k}": v for k, v in evaluate(trainer.model).items()}
        say(f"held-out before training ({len(val_ds)} prompts, greedy): {describe(before)}")
    t0 = time.time()
    metrics = trainer.fit(resume=resume, overwrite=overwrite)
    metrics["train_seconds"] = time.time() - t0
    metrics["steps"] = trainer.step
    if val_ds:
        after = {f"val_{k}": v for k, v in evaluate(trainer.model).items()}
        trainer.log({**after, **{f"{k}_before": v for k, v in before.items()}})  # the report shows before → after
        metrics.update(after)
        say(f"done: {trainer.step} steps in {metrics['train_seconds']:.0f} s; held-out {describe(after)}")
    metrics.update({f"{k}_before": v for k, v in before.items()})
    return metrics
