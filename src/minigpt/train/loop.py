"""THE training loop. Every stage (pretrain, SFT, DPO, RL …) runs through `Trainer.fit`.

The loop knows nothing about the algorithm: an `Objective` turns `(model, batch)` into a summed
loss (see `minigpt.train.objective`). The loop owns everything else: accumulation, mixed
precision, clipping, the schedule, evaluation, checkpoints and resume, logging, callbacks and
data parallelism. The run directory (checkpoints, resume, the final model) is the
`CheckpointedRun` half, in `minigpt.train.checkpoint`.
"""

from __future__ import annotations

import json
import math
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
from minigpt.train.checkpoint import CheckpointedRun, atomic_write_text, unwrap_model
from minigpt.train.allocator import keep_freed_memory
from minigpt.train.callbacks import Callback, CallbackList
from minigpt.train.config import TrainConfig
from minigpt.train.distributed import all_reduce_sum, barrier, init_distributed, pick_device, pick_precision
from minigpt.train.optim import lr_schedule, make_optimizer
from minigpt.train.rundir import unlock_run_dir
from minigpt.train.sampler import BlockSampler
from minigpt.train.errors import TrainingDivergedError, TrainingInterrupted
from minigpt.train.step import OptimizerStep, autocast, to_device







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


class Trainer(CheckpointedRun):
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
            if config.optimizer == "muon":
                raise UserError("train.fsdp with train.optimizer muon is not supported (Muon needs whole matrices); use DDP or adamw")
            if hasattr(objective, "make_batches"):
                raise UserError("train.fsdp is for objectives that train on given data; online RL runs under DDP")
            self._model_class = type(model)
            shard_model(self.model)
        self.optimizer = make_optimizer(model, config, fused=self.device.type in ("cuda", "cpu") and not self.fsdp)
        self.total_steps = self._planned_steps()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_schedule(config, lambda: self.total_steps)
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.sampler = BlockSampler(len(train_dataset), seed=config.seed, rank=self.rank, world_size=self.world_size)
        self.step = 0
        self.elapsed = 0.0  # training seconds across resumes (for max_time)
        self.eval_elapsed = 0.0  # the part of `elapsed` spent in evaluations between steps
        self.tokens_seen = 0  # real tokens trained on across resumes, all ranks (`train/tokens`)
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
        """A context manager running the forwards in the run's precision on its device (bf16 /
        fp16 autocast, or nothing in fp32); objectives and callbacks that run the model outside
        the optimizer step (evaluation, sampling) enter it."""
        return autocast(self.precision, self.device)

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
                    produced = produce(unwrap_model(self.model), to_device(batch, self.device))
                yield from produced
            if self.sampler.epoch != epoch:
                self.callbacks.fire("on_epoch_end", self, epoch)

    def _warmup_shape(self, batch: dict[str, Any]) -> dict[str, Any]:
        """A pretraining batch `{"input_ids", "targets"}` of `(B, T)` cut to this step's shape under
        `train.batch_size_warmup_steps` (the first `ceil(B · (1/4 + 3/4 · step / N))` rows) and
        `train.seq_len_warmup_steps` (rows re-cut to length `T / 8`, `T / 4`, `T / 2` in the
        four quarters of the warmup, `T` after; a length that does not divide `T` is skipped), so
        that every row still starts a sequence at position 0. Other batches pass unchanged.

        Raises:
            UserError: a warmup is on but the batches are not plain `(B, T)` token blocks.
        """
        c, step = self.config, self.step
        if step >= c.batch_size_warmup_steps and step >= c.seq_len_warmup_steps:
            return batch
        x, y = batch.get("input_ids"), batch.get("targets")
        if set(batch) != {"input_ids", "targets"} or not isinstance(x, torch.Tensor) or x.ndim != 2 or y.shape != x.shape:
            raise UserError("train.seq_len_warmup_steps and train.batch_size_warmup_steps are for pretraining blocks "
                            f"(input_ids and targets of one shape); this stage's batches hold {', '.join(sorted(batch))}")
        if step < c.batch_size_warmup_steps:
            rows = math.ceil(x.shape[0] * (0.25 + 0.75 * step / c.batch_size_warmup_steps))
            x, y = x[:rows], y[:rows]
        if step < c.seq_len_warmup_steps:
            length = x.shape[1] >> (3 - 4 * step // c.seq_len_warmup_steps)
            if length >= 1 and x.shape[1] % length == 0:
                x, y = x.reshape(-1, length), y.reshape(-1, length)
        return {"input_ids": x, "targets": y}

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
                out = self.objective.compute_loss(unwrap_model(model), batch)
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
        """Append one row `{"step", "time_s", **metrics}` to `OUT/metrics.jsonl` (and TensorBoard)
        on the main rank. `time_s` is the run's seconds so far (training and the evaluations
        between steps, summed over resumes); once such an evaluation has run, rows also carry
        `eval_time_s`, the part of `time_s` it took (so training alone is the difference). Both
        are wall-clock figures, the fields of a row that differ between runs."""
        if not self.is_main:
            return
        row = {"step": self.step, "time_s": round(self.elapsed, 3)}
        if self.eval_elapsed:
            row["eval_time_s"] = round(self.eval_elapsed, 3)
        with open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({**row, **metrics}) + "\n")
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
        if self.is_main:
            from minigpt.train.hardware import ENVIRONMENT_FILE, environment

            env = environment(self.device, self.precision, self.world_size)
            atomic_write_text(self.out_dir / ENVIRONMENT_FILE, json.dumps(env, indent=2) + "\n")
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
            micro = [self._warmup_shape(next(batches)) for _ in range(c.grad_accum)]
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
            self.tokens_seen += result.num_tokens * self.world_size
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
                self.log({**{f"train/{k}": v for k, v in metrics.items()}, "train/tokens": self.tokens_seen})
            self.callbacks.fire("on_step_end", self, metrics)
            done = self.step >= self.total_steps or self.should_stop or (c.max_time and self.elapsed >= c.max_time)
            if c.eval_interval > 0 and (self.step % c.eval_interval == 0) and not done:
                t_eval = time.perf_counter()
                ev = self.evaluate()
                t_eval = time.perf_counter() - t_eval
                self.elapsed += t_eval
                self.eval_elapsed += t_eval
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
