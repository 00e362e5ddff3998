"""THE training loop. Every stage (pretrain, SFT, DPO, RL …) runs through `Trainer.fit`.

The loop knows nothing about the algorithm: an `Objective` turns `(model, batch)` into a summed
loss (see `minigpt.train.objective`). The loop owns everything else: accumulation, mixed
precision, clipping, the schedule, evaluation, checkpoints and resume, logging, callbacks and
data parallelism.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch.utils.data import default_collate

from minigpt.errors import UserError
from minigpt.train.objective import Objective
from minigpt.train import checkpoint as ckpt
from minigpt.train.allocator import keep_freed_memory
from minigpt.train.callbacks import Callback, CallbackList
from minigpt.train.config import TrainConfig
from minigpt.train.distributed import all_reduce_sum, barrier, init_distributed, pick_device, pick_precision
from minigpt.train.optim import make_adamw, warmup_cosine
from minigpt.train.rundir import RUN_MARKER, lock_run_dir, remove_partial_writes, unlock_run_dir
from minigpt.train.sampler import BlockSampler
from minigpt.train.errors import TrainingDivergedError, TrainingInterrupted
from minigpt.train.step import OptimizerStep, autocast, to_device


#: Files of a saved model or adapter at the top of a run directory.
MODEL_FILE_PATTERNS = (
    "config.json",
    "generation_config.json",
    "model*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model*.bin",
    "adapter_model.safetensors",
    "adapter_config.json",
    "adapter_base.json",
)





def enable_activation_checkpointing(model: torch.nn.Module) -> None:
    """Turn on activation checkpointing in a `transformers` model (its
    `activation_checkpointing_enable`, or the older `gradient_checkpointing_enable`), with
    non-reentrant `torch.utils.checkpoint`.

    Raises:
        UserError: the model has neither method, or says it does not support checkpointing.
    """
    enable = getattr(model, "activation_checkpointing_enable", None) or getattr(model, "gradient_checkpointing_enable", None)
    if enable is None or not getattr(model, "supports_gradient_checkpointing", True):
        raise UserError(f"{type(model).__name__} does not support activation checkpointing (--train.gradient_checkpointing)")
    try:
        enable()
    except ValueError as e:  # transformers: "... does not support activation checkpointing"
        raise UserError(str(e)) from None


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


class Trainer:
    """Optimise `model` on `objective` over `train_dataset`.

    Args:
        model: a `transformers` `PreTrainedModel` (saved with `save_pretrained`).
        objective: see `minigpt.train.objective.Objective`.
        train_dataset: map-style dataset of dicts; batches are built with `collate_fn`.
        config: `TrainConfig`.
        out_dir: run directory (metrics.jsonl, tensorboard/, checkpoints/, final model).
        val_dataset: optional; evaluated every `config.eval_interval` steps.
        collate_fn: list of items -> batch dict (default: `torch.utils.data.default_collate`).
        callbacks: user `Callback`s (priorities and conflicts checked here).
        save_with_model: object with `save_pretrained(dir)` (e.g. the tokenizer) saved beside
            every checkpoint and the final model, so each is loadable on its own.
        run_info: JSON-able description of the run, written to OUT/run.json; a different
            run already in OUT is refused.

    Raises:
        UserError: bad settings, an OUT that holds a different run, `resume` with no
            checkpoint, a corrupt checkpoint.
        TrainingDivergedError: NaN/inf loss (the last good checkpoint is left untouched).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        objective: Objective,
        train_dataset: Sequence,
        config: TrainConfig,
        out_dir: str | Path,
        val_dataset: Sequence | None = None,
        collate_fn: Callable[[list], dict] | None = None,
        callbacks: Iterable[Callback] = (),
        save_with_model: Any = None,
        run_info: dict | None = None,
    ) -> None:
        if config.batch_size < 1 or config.grad_accum < 1:
            raise UserError("train.batch_size and train.grad_accum must be >= 1")
        if config.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise UserError(f"train.precision must be auto, bf16, fp16 or fp32, not {config.precision!r}")
        if len(train_dataset) == 0:
            raise UserError("the training set is empty")
        self.config = config
        self.out_dir = Path(out_dir)
        self.objective = objective
        self.train_dataset = train_dataset
        self.val_dataset = val_dataset
        self.collate_fn = collate_fn or default_collate
        self.callbacks = CallbackList(callbacks)
        self.save_with_model = save_with_model
        self.run_info = run_info or {}

        self.rank, self.world_size, self.device = init_distributed(pick_device(config.device))
        if self.device.type == "cpu":
            keep_freed_memory()
        self.is_main = self.rank == 0
        self.precision = pick_precision(config.precision, self.device)  # "auto" resolved
        if self.precision == "fp16" and self.device.type != "cuda":
            raise UserError("train.precision=fp16 needs CUDA; use bf16 on CPU/MPS")
        self.model = model.to(self.device)
        self.fsdp = bool(getattr(config, "fsdp", False)) and self.world_size > 1
        if self.fsdp:
            # FSDP2 swaps every parameter for a sharded DTensor: before the optimizer sees them.
            from minigpt.train.fsdp import shard_model

            if config.compile:
                raise UserError("train.fsdp with train.compile is not supported; drop one of them")
            if hasattr(objective, "make_batches"):
                raise UserError("train.fsdp is for objectives that train on given data; online RL runs under DDP")
            self._model_class = type(model)
            shard_model(self.model)
        self.optimizer = make_adamw(model, config, fused=self.device.type in ("cuda", "cpu") and not self.fsdp)
        self.total_steps = self._planned_steps()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(config.warmup_steps, lambda: self.total_steps, config.min_lr_ratio)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.sampler = BlockSampler(len(train_dataset), seed=config.seed, rank=self.rank, world_size=self.world_size)
        self.step = 0
        self.elapsed = 0.0  # training seconds across resumes (for max_time)
        self.should_stop = False
        self.last_checkpoint: Path | None = None
        self.history: list[dict[str, float]] = []  # every step's metrics, for tests and recipes
        self.last_eval: dict[str, float] = {}
        self._ddp_model: torch.nn.Module | None = None
        self._tb = None

    # ------------------------------------------------------------------ setup helpers
    def _planned_steps(self) -> int:
        c = self.config
        if c.epochs is not None:
            per_step = c.batch_size * c.grad_accum * self.world_size
            return max(1, math.ceil(c.epochs * len(self.train_dataset) / per_step))
        if c.max_steps <= 0:
            if not c.max_time:
                raise UserError("train.max_steps must be > 0 unless train.max_time is set")
            return 1_000_000  # fixed after the first timed steps (see _calibrate)
        return c.max_steps

    def autocast(self):
        return autocast(self.precision, self.device)

    def _prepare_out_dir(self, resume: bool, overwrite: bool) -> None:
        if self.is_main:
            # Held until `fit` ends if taken here, else by the recipe that took it (train.rundir).
            self._own_lock = lock_run_dir(self.out_dir)
            for p in remove_partial_writes(self.out_dir):
                warnings.warn(f"removed {p}, left by an interrupted write", RuntimeWarning, stacklevel=3)
        run_file = self.out_dir / "run.json"
        has_run = run_file.is_file()
        # Files in OUT that a minigpt run recorded as its own (its run.json is there) may be
        # replaced or deleted; anything else in OUT is the user's, and stays.
        self._out_is_ours = has_run or resume or (self.out_dir / RUN_MARKER).exists()
        if not has_run and not resume and (self.out_dir / "checkpoints").is_dir():
            raise UserError(
                f"{self.out_dir} holds a checkpoints/ folder that no minigpt run recorded as its own (no run.json); "
                "move it or choose another --out"
            )
        if has_run and not resume:
            if not overwrite:
                previous = run_file.read_text(encoding="utf-8") if run_file.is_file() else "{}"
                same = json.loads(previous) == json.loads(json.dumps(self.run_info, default=str))
                what = "this run" if same else "a different run"
                raise UserError(
                    f"{self.out_dir} already holds {what}; pass --resume to continue it, "
                    "--overwrite to start over, or choose another --out"
                )
        if has_run and resume:
            self._check_resume_settings(run_file)
        barrier()  # every rank has looked at OUT before rank 0 changes it
        if has_run and not resume:
            if self.is_main:
                shutil.rmtree(self.out_dir / "checkpoints", ignore_errors=True)
                for name in ("metrics.jsonl", "tensorboard"):
                    p = self.out_dir / name
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            ckpt.atomic_write_text(run_file, json.dumps(self.run_info, indent=2, default=str) + "\n")
        barrier()

    # Settings that decide the model's shape or the data's blocks: a resume must keep them.
    _RESUME_FIXED = ("block_size", "max_length", "model")

    def _check_resume_settings(self, run_file: Path) -> None:
        """Refuse a resume whose shape-defining settings differ from those in OUT/run.json
        (another block size reorders the data; another model cannot take the weights)."""
        try:
            previous = json.loads(run_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return
        now = json.loads(json.dumps(self.run_info, default=str))
        changed = [
            f"{key}: {previous[key]!r} -> {now[key]!r}"
            for key in self._RESUME_FIXED
            if key in previous and key in now and (key != "model" or isinstance(now[key], dict)) and previous[key] != now[key]
        ]
        if changed:
            raise UserError(
                f"--resume with settings that differ from the run in {self.out_dir} ({'; '.join(changed)}); "
                "resume with the settings it started with, or start a new run"
            )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything besides the weights that an exact resume needs."""
        return {
            "step": self.step,
            "total_steps": self.total_steps,
            "elapsed": self.elapsed,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": ckpt.rng_state(),
            # An objective with state of its own (PPO's adaptive KL coefficient) rides along.
            **({"objective": self.objective.state_dict()} if hasattr(self.objective, "state_dict") else {}),
        }

    def _resume(self) -> None:
        """Load the newest readable checkpoint; a corrupt one is skipped with a warning for the
        one before it, and with none at all the run starts from step 0 (a run interrupted
        before its first checkpoint)."""
        candidates = ckpt.checkpoint_dirs(self.out_dir)[::-1]
        latest = ckpt.latest_checkpoint(self.out_dir)
        if latest is not None:
            candidates = [latest] + [p for p in candidates if p != latest]
        for path in candidates:
            try:
                state, weights = ckpt.load_checkpoint(path)
                break
            except UserError as e:
                warnings.warn(f"--resume: skipping checkpoint {path}: {e}", RuntimeWarning, stacklevel=3)
        else:
            if candidates:
                raise UserError(f"--resume: no readable checkpoint under {self.out_dir / 'checkpoints'}; pass --overwrite to start over")
            if self.is_main:
                warnings.warn(f"--resume: {self.out_dir} has no checkpoint yet; starting from step 0", RuntimeWarning, stacklevel=3)
            self._truncate_metrics(0)
            return
        model = _unwrap(self.model)
        if hasattr(model, "peft_config"):
            # Adapter training (LoRA …; peft marks a model it injected adapters into with
            # `peft_config`): checkpoints hold the adapter only (PEFT key names, prefixed
            # `base_model.model.`); the frozen base was rebuilt from its own directory.
            from peft import set_peft_model_state_dict

            adapter = {k.removeprefix("base_model.model."): v for k, v in weights.items()}
            result = set_peft_model_state_dict(model, adapter)
            if result.unexpected_keys:
                raise UserError(f"checkpoint {path} does not match the adapters (unexpected {result.unexpected_keys[:5]})")
        elif model.__dict__.get("bottleneck_adapter_config"):
            # Bottleneck adapters (minigpt.model.adapters): the checkpoint holds them alone.
            missing, unexpected = model.load_state_dict(weights, strict=False)
            lacking = [k for k in missing if ".adapter.adapter_" in k]
            if unexpected or lacking:
                raise UserError(f"checkpoint {path} does not match the adapters (missing {lacking[:5]}, unexpected {unexpected[:5]})")
        else:
            try:
                missing, unexpected = model.load_state_dict(weights, strict=False)
            except RuntimeError as e:  # size mismatch: another preset, vocabulary or width
                first = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e).splitlines()[0])
                raise UserError(
                    f"checkpoint {path} was written for a model of another shape ({first}); resume with the "
                    f"model settings the run started with (they are in {self.out_dir / 'run.json'})"
                ) from None
            tied = set(getattr(model, "_tied_weights_keys", None) or {})
            if unexpected or set(missing) - tied:
                raise UserError(f"checkpoint {path} does not match the model (missing {missing}, unexpected {unexpected})")
        if getattr(model.config, "tie_word_embeddings", False) and hasattr(model, "tie_weights"):
            model.tie_weights()
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self._restore_state(state)
        except (KeyError, ValueError, RuntimeError) as e:
            raise UserError(f"checkpoint {path} has an unusable trainer state: {e}") from None
        self.last_checkpoint = path
        self._truncate_metrics(self.step)
        self._say_resumed(path)

    def _say_resumed(self, path: Path) -> None:
        """One line on rank 0: which checkpoint a resumed run continues, and from which step."""
        if self.is_main:
            print(f"resumed from {path} at step {self.step}", flush=True)

    def _truncate_metrics(self, step: int) -> None:
        """Drop `metrics.jsonl` rows logged after `step`: the resumed run logs those steps again."""
        path = self.out_dir / "metrics.jsonl"
        if not self.is_main or not path.is_file():
            return
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row_step = json.loads(line).get("step", 0)
            except (json.JSONDecodeError, AttributeError):
                continue  # a row cut short by a kill
            if isinstance(row_step, (int, float)) and row_step <= step:
                kept.append(line)
        ckpt.atomic_write_text(path, "".join(line + "\n" for line in kept))

    def save(self) -> Path | None:
        """Write a resumable checkpoint now (main rank only; with FSDP every rank writes its
        shards); returns its directory."""
        if self.fsdp:
            return self._save_sharded()
        if not self.is_main:
            return None
        extra = {}
        tmp = self.out_dir / ".tok-tmp"
        try:
            if self.save_with_model is not None:
                shutil.rmtree(tmp, ignore_errors=True)
                self.save_with_model.save_pretrained(tmp)
                extra = {p.name: p for p in tmp.iterdir() if p.is_file()}
            path = ckpt.save_checkpoint(self.out_dir, self.step, _unwrap(self.model), self.state_dict(), self.config.keep_last, extra)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.last_checkpoint = path
        return path

    def _save_sharded(self) -> Path:
        """FSDP checkpoint: every rank writes its shards of the model and optimizer
        (`minigpt.train.fsdp.save_sharded`) into a temporary directory; rank 0 adds the trainer
        state (without the optimizer), the model config and the tokenizer, then renames it into
        place, so a crash never leaves a half-written `step_N`."""
        from minigpt.train.fsdp import save_sharded

        root = self.out_dir / "checkpoints"
        final = root / f"step_{self.step:08d}"
        tmp = root / f".tmp-{final.name}"
        if self.is_main:
            root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        barrier()
        save_sharded(self.model, self.optimizer, tmp)
        barrier()
        if self.is_main:
            state = {k: v for k, v in self.state_dict().items() if k != "optimizer"}
            torch.save(state, tmp / ckpt.STATE_FILE)
            _unwrap(self.model).config.save_pretrained(tmp)
            if self.save_with_model is not None:
                self.save_with_model.save_pretrained(tmp)
            ckpt.publish_checkpoint(self.out_dir, tmp, final, self.config.keep_last)
        barrier()
        self.last_checkpoint = final
        return final

    def _restore_state(self, state: dict[str, Any]) -> None:
        """Scheduler, scaler, sampler, step counters, RNG and the objective's own state from a
        checkpoint's trainer state (the optimizer is restored by the caller)."""
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.sampler.load_state_dict(state["sampler"])
        self.step, self.elapsed = state["step"], state["elapsed"]
        # A time-budgeted run keeps the step count it fixed; otherwise the settings given now
        # win, so `--resume --train.max_steps N` can extend a finished run.
        if self.config.max_steps <= 0 and self.config.epochs is None:
            self.total_steps = state["total_steps"]
        ckpt.set_rng_state(state["rng"])
        if "objective" in state and hasattr(self.objective, "load_state_dict"):
            self.objective.load_state_dict(state["objective"])

    def _resume_sharded(self) -> None:
        """Resume an FSDP run from the newest sharded checkpoint (every rank reads its shards)."""
        from minigpt.train.fsdp import load_sharded

        path = ckpt.latest_checkpoint(self.out_dir) or (ckpt.checkpoint_dirs(self.out_dir) or [None])[-1]
        if path is None:
            if self.is_main:
                warnings.warn(f"--resume: {self.out_dir} has no checkpoint yet; starting from step 0", RuntimeWarning, stacklevel=3)
                self._truncate_metrics(0)
            return
        if not (path / "sharded").is_dir():
            raise UserError(f"--resume with train.fsdp: {path} is not a sharded checkpoint (was the run started without --train.fsdp?)")
        state = torch.load(path / ckpt.STATE_FILE, map_location="cpu", weights_only=True)
        load_sharded(self.model, self.optimizer, path)
        try:
            self._restore_state(state)
        except (KeyError, ValueError, RuntimeError) as e:
            raise UserError(f"checkpoint {path} has an unusable trainer state: {e}") from None
        self.last_checkpoint = path
        if self.is_main:
            self._truncate_metrics(self.step)
        self._say_resumed(path)

    def save_final(self) -> None:
        """Save the trained model (and tokenizer) at the top of OUT: a directory that
        `AutoModelForCausalLM.from_pretrained(OUT)` loads. Files are written to a temporary
        directory first and moved in one by one, so a crash never leaves a half-written file.
        With FSDP the full weights are gathered from every rank first (a collective)."""
        model = _unwrap(self.model)
        if self.fsdp:
            from minigpt.train.fsdp import full_state_dict

            full = full_state_dict(model)
            if not self.is_main:
                return
            model = self._model_class(model.config)
            model.load_state_dict(full, strict=False)
            if getattr(model.config, "tie_word_embeddings", False):
                model.tie_weights()
            model.generation_config = _unwrap(self.model).generation_config
        if not self.is_main:
            return
        tmp = self.out_dir / ".final-tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        if (isinstance(getattr(model, "peft_config", None), dict) and not hasattr(model, "get_base_model")) or model.__dict__.get(
            "bottleneck_adapter_config"
        ):
            # adapters injected in place (not a peft wrapper): their base path is recorded relative to OUT
            model.save_pretrained(tmp, adapter_final_dir=self.out_dir)
        else:
            model.save_pretrained(tmp)
        if self.save_with_model is not None:
            self.save_with_model.save_pretrained(tmp)
        # Weights of another kind left by an earlier run in OUT (a full model where an adapter
        # is now saved, or the reverse) would be picked up by `from_pretrained`: remove them.
        written = {p.name for p in tmp.iterdir()}
        stale = [old for pattern in MODEL_FILE_PATTERNS for old in self.out_dir.glob(pattern) if old.name not in written]
        if stale and getattr(self, "_out_is_ours", True):
            for old in stale:
                old.unlink()
        elif stale:
            warnings.warn(
                f"{self.out_dir} also holds model files this run did not write ({', '.join(sorted(p.name for p in stale)[:4])}); "
                "they were left in place, and loaders may pick them up",
                RuntimeWarning,
                stacklevel=2,
            )
        for p in tmp.iterdir():
            target = self.out_dir / p.name
            if p.is_dir() and target.is_dir():  # a sub-model saved beside the main one (PPO's critic)
                shutil.rmtree(target)
            os.replace(p, target)
        tmp.rmdir()

    # ------------------------------------------------------------------ data
    def _batches(self) -> Iterator[dict[str, Any]]:
        """Micro-batches forever, drawn from the resumable sampler; fires on_epoch_end.

        An objective with `make_batches` (online RL, see `train.objective.BatchProducer`)
        turns each drawn batch into its own micro-batches, with the current model."""
        it = iter(self.sampler)
        produce = getattr(self.objective, "make_batches", None)
        while True:
            epoch = self.sampler.epoch
            idx = [next(it) for _ in range(self.config.batch_size)]
            batch = self.collate_fn([self.train_dataset[i] for i in idx])
            if produce is None:
                yield batch
            else:
                with torch.no_grad(), self.autocast():
                    produced = produce(_unwrap(self.model), to_device(batch, self.device))
                yield from produced
            if self.sampler.epoch != epoch:
                self.callbacks.fire("on_epoch_end", self, epoch)

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation metrics: `val_loss` (nats per unit), `val_ppl` for objectives whose loss is
        a next-token NLL (`token_nll`), when the objective
        reports bytes `val_bpb` (bits per UTF-8 byte), and `val_<k>` per unit for its other sums. Each rank takes every world_size-th batch."""
        if self.val_dataset is None or len(self.val_dataset) == 0:
            return {}
        model = self._ddp_model if self._ddp_model is not None else self.model
        was_training = model.training
        model.eval()
        bs = self.config.batch_size
        n_batches = math.ceil(len(self.val_dataset) / bs)
        if self.config.eval_batches > 0:
            n_batches = min(n_batches, self.config.eval_batches)
        loss_sum, units, extra, means, n_seen = 0.0, 0, {}, {}, 0
        # With FSDP every forward is a collective: all ranks run as many batches (the extra
        # ones, past the end, repeat batch 0 and are not counted).
        rounds = math.ceil(n_batches / self.world_size) * self.world_size if self.fsdp else n_batches
        for b in range(self.rank, rounds, self.world_size):
            counted = b < n_batches
            first = b * bs if counted else 0
            items = [self.val_dataset[i] for i in range(first, min(first + bs, len(self.val_dataset)))]
            batch = to_device(self.collate_fn(items), self.device)
            with self.autocast():
                out = self.objective.compute_loss(_unwrap(model), batch)
            if not counted:
                continue
            loss_sum += float(out.loss_sum)
            units += out.num_units
            for k, v in out.sums.items():
                extra[k] = extra.get(k, 0.0) + v
            for k, v in out.metrics.items():  # already means per batch (e.g. next-sentence accuracy)
                means[k] = means.get(k, 0.0) + float(v)
            n_seen += 1
        keys, mean_keys = sorted(extra), sorted(means)
        totals = all_reduce_sum([loss_sum, float(units), float(n_seen)] + [extra[k] for k in keys] + [means[k] for k in mean_keys], self.device)
        loss_sum, units, n_seen = totals[0], totals[1], totals[2]
        extra = dict(zip(keys, totals[3 : 3 + len(keys)]))
        means = dict(zip(mean_keys, totals[3 + len(keys) :]))
        model.train(was_training)
        metrics = {"val_loss": loss_sum / max(units, 1)}
        if getattr(self.objective, "token_nll", False):  # a perplexity only where the loss is a token NLL
            metrics["val_ppl"] = math.exp(min(metrics["val_loss"], 50.0))
        if extra.get("bytes"):
            metrics["val_bpb"] = extra.get("nats", loss_sum) / (math.log(2) * extra["bytes"])
        for k in keys:  # other sums an objective reports (e.g. distillation's kl / ce), per unit
            if k not in ("nats", "bytes"):
                metrics[f"val_{k}"] = extra[k] / max(units, 1)
        for k in mean_keys:  # its per-batch means, averaged over the batches
            metrics.setdefault(f"val_{k}", means[k] / max(n_seen, 1))
        self.last_eval = metrics
        return metrics

    # ------------------------------------------------------------------ logging
    def log(self, metrics: dict[str, float]) -> None:
        if not self.is_main:
            return
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": self.step, **metrics}) + "\n")
        if self.config.tensorboard:
            if self._tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out_dir / "tensorboard"))
            for k, v in metrics.items():
                self._tb.add_scalar(k, v, self.step)

    def _calibrate(self, step_times: list[float]) -> None:
        """For `max_steps=0, max_time=T`: fix the step count from measured step times so the
        cosine schedule ends when the budget does (5 % kept back for evaluation).

        Called after 6 timed steps and again each time their number doubles (12, 24, …) while
        steps remain, from the median of the latest half of the step times (the first step
        excluded): the first steps of a stage are often slower (warm caches, allocator), and RL
        steps change speed as completions grow. Ranks average their figures, so all agree."""
        recent = step_times[1:][-max(len(step_times) // 2, 5):]
        per_step, elapsed = sorted(recent)[len(recent) // 2], self.elapsed
        if self.world_size > 1:  # every rank must settle on the same step count
            per_step, elapsed = (v / self.world_size for v in all_reduce_sum([per_step, elapsed], self.device))
        remaining = 0.95 * self.config.max_time - elapsed
        self.total_steps = max(self.step + 1, self.step + int(remaining / per_step))

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False, overwrite: bool = False) -> dict[str, float]:
        """Train until `total_steps`, `max_time` or a callback's `should_stop`.

        SIGINT (Ctrl-C) or SIGTERM during training lets the current step finish, saves a
        checkpoint and raises `TrainingInterrupted`; `fit(resume=True)` then continues exactly
        where it stopped. A second signal stops at once (KeyboardInterrupt), which loses only
        the steps since the last checkpoint. Handlers are installed only when `fit` runs in the
        main thread, and the previous ones are restored when it returns.

        Returns the last step's training metrics merged with the last evaluation.

        Raises:
            TrainingInterrupted: after saving, on SIGINT or SIGTERM.
            TrainingDivergedError: the loss became NaN or infinite.
            UserError: OUT is in use by another process or holds another run, or a resumed
                checkpoint does not match.
        """
        self._stop_signal: int | None = None
        self._finishing = False  # set once the training loop is done: a signal then lets the final save complete
        self._own_lock = False
        try:
            if threading.current_thread() is not threading.main_thread():
                return self._fit(resume, overwrite)
            return self._fit_catching_signals(resume, overwrite)
        finally:
            if self._own_lock:
                unlock_run_dir(self.out_dir)

    def _fit_catching_signals(self, resume: bool, overwrite: bool) -> dict[str, float]:
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

        def on_signal(signum, frame):
            if self._stop_signal is not None:  # the second one: stop now
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
                raise KeyboardInterrupt
            self._stop_signal = signum
            if self.is_main and self._finishing:
                print(
                    f"\n{signal.Signals(signum).name} received as the run finishes: completing its final evaluation and save "
                    "(send it again to stop at once)",
                    file=sys.stderr,
                    flush=True,
                )
            elif self.is_main:
                print(
                    f"\n{signal.Signals(signum).name} received: finishing step {self.step + 1}, then saving a checkpoint "
                    "(send it again to stop at once)",
                    file=sys.stderr,
                    flush=True,
                )

        try:
            for sig in previous:
                signal.signal(sig, on_signal)
            return self._fit(resume, overwrite)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _stop_requested(self) -> int | None:
        """The stop signal's number if any rank received SIGINT/SIGTERM, else None (all ranks
        agree, so they stop after the same step)."""
        local = getattr(self, "_stop_signal", None)
        if self.world_size == 1:
            return local
        if all_reduce_sum([float(local or 0)], self.device)[0] > 0:
            return local or signal.SIGTERM
        return None

    def _fit(self, resume: bool, overwrite: bool) -> dict[str, float]:
        c = self.config
        self._prepare_out_dir(resume, overwrite)
        if resume:
            self._resume_sharded() if self.fsdp else self._resume()
        model = self.model
        if c.gradient_checkpointing:
            enable_activation_checkpointing(model)
        if c.compile:
            model = torch.compile(model)
        if self.world_size > 1 and not self.fsdp:
            from torch.nn.parallel import DistributedDataParallel as DDP

            model = DDP(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self._ddp_model = model
        model.train()
        stepper = OptimizerStep(
            model, self.objective, self.optimizer, self.scheduler, self.precision, self.device, c.grad_clip,
            self.scaler, self.world_size, on_batch=lambda m: self.callbacks.fire("on_batch_end", self, m),
        )
        self.callbacks.fire("on_train_start", self)
        calibrating = c.max_steps <= 0 and c.epochs is None and c.max_time
        step_times: list[float] = []
        next_calibration = 6  # timed steps before the step count is (re)fixed; see _calibrate
        batches = self._batches()
        from tqdm.auto import tqdm

        bar = tqdm(
            total=None if calibrating else self.total_steps,
            initial=self.step,
            disable=not (c.progress and self.is_main),
            desc="train",
            dynamic_ncols=True,
        )
        metrics: dict[str, float] = {}
        interrupted = None
        while self.step < self.total_steps and not self.should_stop:
            interrupted = self._stop_requested()
            if interrupted:
                break
            t0 = time.perf_counter()
            micro = [next(batches) for _ in range(c.grad_accum)]
            try:
                result = stepper(micro)
            except TrainingDivergedError as e:
                where = self.last_checkpoint or "none written yet"
                raise TrainingDivergedError(
                    f"loss is {e.loss} at step {self.step + 1}; stopped before the update, nothing saved. "
                    f"Last good checkpoint: {where}. Try a lower train.lr, train.grad_clip > 0, or bf16 instead of fp16.",
                    loss=e.loss,
                ) from None
            step_loss, lr = result.loss, result.lr
            self.step += 1
            dt = time.perf_counter() - t0
            self.elapsed += dt
            step_times.append(dt)
            rest = {k: v for k, v in result.metrics.items() if k not in ("loss", "lr", "grad_norm")}
            metrics = {"loss": step_loss, "lr": lr, "grad_norm": result.grad_norm, "tokens_per_s": result.num_tokens * self.world_size / dt, **rest}
            self.history.append(metrics)
            if calibrating and len(step_times) == next_calibration:
                self._calibrate(step_times)
                bar.total = self.total_steps
                next_calibration *= 2
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{metrics['tokens_per_s']:.0f}", refresh=False)
            if self.step % c.log_interval == 0 or self.step == self.total_steps:
                self.log({f"train/{k}": v for k, v in metrics.items()})
            self.callbacks.fire("on_step_end", self, metrics)
            done = self.step >= self.total_steps or self.should_stop or (c.max_time and self.elapsed >= c.max_time)
            if c.eval_interval > 0 and (self.step % c.eval_interval == 0) and not done:
                t_eval = time.perf_counter()
                ev = self.evaluate()
                self.elapsed += time.perf_counter() - t_eval
                if ev:
                    self.log(ev)
                    self.callbacks.fire("on_evaluate", self, ev)
                    if self.is_main:
                        bar.write(f"step {self.step}: " + ", ".join(f"{k} {v:.4f}" for k, v in ev.items()))
            if c.save_interval > 0 and self.step % c.save_interval == 0 and not done:
                self.save()
            if c.max_time and self.elapsed >= c.max_time:
                if not calibrating and self.step < self.total_steps and self.is_main:
                    # A fixed step count is the run's contract; the wall-clock cap is a safety net.
                    warnings.warn(
                        f"train.max_time ({c.max_time:.0f} s) stopped the run at step {self.step} of "
                        f"{self.total_steps}: results are those of a shorter run than asked for",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                break
        bar.close()
        self._finishing = not interrupted  # a signal from here on lets the final evaluation and save complete
        if interrupted:
            path = self.save()
            barrier()
            raise TrainingInterrupted(interrupted, self.step, path)
        ev = self.evaluate()
        if ev:
            self.log(ev)
            self.callbacks.fire("on_evaluate", self, ev)
        self.save()
        self.save_final()
        barrier()  # ranks leave together: none tears down the process group while rank 0 saves
        self.callbacks.fire("on_train_end", self)
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        return {**metrics, **ev}
