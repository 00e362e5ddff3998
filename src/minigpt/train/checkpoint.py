"""Resumable checkpoints, written atomically.

Layout under a run directory:

    OUT/checkpoints/step_00000500/   model (save_pretrained: config.json + model.safetensors)
                                     trainer_state.pt  optimizer, scheduler, RNG, step, data position
    OUT/checkpoints/latest           name of the newest complete checkpoint

A checkpoint is written into a hidden temporary directory and renamed into place only once
complete, then `latest` is replaced atomically; a crash at any moment leaves the previous
checkpoint and pointer intact. `trainer_state.pt` holds only tensors and plain containers and is
read with `torch.load(weights_only=True)`, which cannot run code (unlike a plain pickle).

The functions below write and read one checkpoint; `CheckpointedRun` is the trainer's side of
it (taking a run directory over, saving, resuming, writing the final model).
"""

from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minigpt.errors import DiskFullError, UserError, is_disk_full
from minigpt.train.distributed import barrier
from minigpt.train.rundir import RUN_MARKER, lock_run_dir, remove_partial_writes

STATE_FILE = "trainer_state.pt"
LATEST = "latest"

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


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and `os.replace` (never half-written)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    """Every RNG the loop touches: Python, NumPy, torch CPU and CUDA (as tensors/lists)."""
    state = {
        "python": torch.tensor(random.getstate()[1], dtype=torch.int64),
        "python_gauss": random.getstate()[2],
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    random.setstate((3, tuple(int(w) for w in state["python"].tolist()), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dirs(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints under `OUT/checkpoints`, oldest first."""
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step_*") if p.is_dir() and not p.is_symlink() and (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: p.name)


def save_checkpoint(out_dir: str | Path, step: int, model: torch.nn.Module, state: dict[str, Any], keep_last: int = 2, extra_files: dict[str, Path] | None = None) -> Path:
    """Write checkpoint `step` atomically and prune to the newest `keep_last`.

    Args:
        model: an unwrapped `PreTrainedModel` (saved with `save_pretrained`, safetensors).
        state: tensors / plain containers (optimizer, scheduler, RNG, step, sampler …).
        extra_files: small files to copy in (e.g. tokenizer files), name -> source path.

    Returns the checkpoint directory.

    Raises:
        DiskFullError: the device filled up while writing; the partial checkpoint is removed
            and every complete one is kept.
    """
    root = Path(out_dir) / "checkpoints"
    final = root / f"step_{step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        model.save_pretrained(tmp)
        torch.save(state, tmp / STATE_FILE)
        for name, src in (extra_files or {}).items():
            shutil.copy2(src, tmp / name)
        _fsync_dir(tmp)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)  # frees what it took; the complete checkpoints stay
        if not is_disk_full(e):
            raise
        kept = latest_checkpoint(out_dir)
        raise DiskFullError(
            errno.ENOSPC,
            f"no space left on the device of {root} while writing checkpoint {final.name}; "
            + (f"the last complete checkpoint, {kept.name}, is kept" if kept else "no earlier checkpoint exists")
            + ": free some space, then continue with --resume",
        ) from e
    return publish_checkpoint(out_dir, tmp, final, keep_last)


def publish_checkpoint(out_dir: str | Path, tmp: Path, final: Path, keep_last: int) -> Path:
    """Move a fully written checkpoint folder `tmp` to `final` (`OUT/checkpoints/step_N`), point
    `latest` at it and prune to the newest `keep_last`. A `final` already there (the same step
    saved twice, e.g. the final save right after a periodic one) is swapped out, not deleted
    first, so a complete `step_N` exists at every moment. Returns `final`."""
    root = final.parent
    if final.exists():
        old = root / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    atomic_write_text(root / LATEST, final.name + "\n")
    if keep_last > 0:
        for old in checkpoint_dirs(out_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint `latest` names if it is complete, else the newest complete one, else None.

    `latest` must name a `step_N` folder of this run's own `checkpoints/`: anything else (a
    path, `../other/step_N`, a link out of the run) is ignored, so a resume never loads a
    checkpoint from outside the run directory.
    """
    root = Path(out_dir) / "checkpoints"
    pointer = root / LATEST
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8", errors="replace").strip()
        cand = root / name
        if (
            re.fullmatch(r"step_\d+", name)
            and not cand.is_symlink()
            and cand.resolve().parent == root.resolve()
            and (cand / STATE_FILE).is_file()
        ):
            return cand
    dirs = checkpoint_dirs(out_dir)
    return dirs[-1] if dirs else None


def load_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read `(trainer_state, model_state_dict)` from a checkpoint directory.

    The state dict holds the tensors of every `*.safetensors` file at the top of `path` under
    their own names, and those of each immediate subdirectory's `*.safetensors` files with
    keys prefixed `<subdir>.`: a model saved with a sub-model beside it (PPO's
    `ActorCritic` writes the policy at the top and the critic in `value_model/`) comes back as
    one state dict with `value_model.*` keys.

    Raises:
        UserError: if the directory is missing or a file in it cannot be read (corrupt or
            truncated), naming the file.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_dir():
        raise UserError(f"checkpoint {path} does not exist")
    state_file = path / STATE_FILE
    weights = sorted(path.glob("*.safetensors"))
    if not state_file.is_file() or not weights:
        raise UserError(f"checkpoint {path} is incomplete (needs {STATE_FILE} and model safetensors)")
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 — any unpickling failure means a corrupt file
        raise UserError(f"checkpoint file {state_file} is corrupt or unreadable: {e}") from None
    tensors: dict[str, torch.Tensor] = {}
    subdirs = sorted(p for p in path.iterdir() if p.is_dir())
    for prefix, w in [("", w) for w in weights] + [(f"{d.name}.", w) for d in subdirs for w in sorted(d.glob("*.safetensors"))]:
        try:
            part = load_file(w)
        except Exception as e:  # noqa: BLE001
            raise UserError(f"checkpoint file {w} is corrupt or unreadable: {e}") from None
        tensors.update({prefix + k: v for k, v in part.items()})
    return state, tensors


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model under a DDP wrapper and/or `torch.compile`'s `_orig_mod` (the module whose
    weights are saved)."""
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


class CheckpointedRun:
    """The run-directory half of `minigpt.train.loop.Trainer`: taking OUT over (or refusing
    to), checkpoints, resume, and the final model. A mixin: it reads the trainer's attributes
    (`out_dir`, `is_main`, `model`, `optimizer`, `scheduler`, `scaler`, `sampler`, `objective`,
    `config`, `run_info`, `save_with_model`, `fsdp`, `step`, `elapsed`, `eval_elapsed`, `tokens_seen`, `total_steps`) and sets
    `last_checkpoint`.

    Raises:
        UserError: an OUT that holds another run or foreign checkpoints, a resume whose
            shape-defining settings changed, a checkpoint that does not fit the model or has an
            unusable trainer state.
    """

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
            atomic_write_text(run_file, json.dumps(self.run_info, indent=2, default=str) + "\n")
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
            "eval_elapsed": self.eval_elapsed,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": rng_state(),
            "tokens_seen": self.tokens_seen,
            # An objective with state of its own (PPO's adaptive KL coefficient) rides along.
            **({"objective": self.objective.state_dict()} if hasattr(self.objective, "state_dict") else {}),
        }

    def _resume(self) -> None:
        """Load the newest readable checkpoint; a corrupt one is skipped with a warning for the
        one before it, and with none at all the run starts from step 0 (a run interrupted
        before its first checkpoint)."""
        candidates = checkpoint_dirs(self.out_dir)[::-1]
        latest = latest_checkpoint(self.out_dir)
        if latest is not None:
            candidates = [latest] + [p for p in candidates if p != latest]
        for path in candidates:
            try:
                state, weights = load_checkpoint(path)
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
        model = unwrap_model(self.model)
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
        atomic_write_text(path, "".join(line + "\n" for line in kept))

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
            path = save_checkpoint(self.out_dir, self.step, unwrap_model(self.model), self.state_dict(), self.config.keep_last, extra)
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
            torch.save(state, tmp / STATE_FILE)
            unwrap_model(self.model).config.save_pretrained(tmp)
            if self.save_with_model is not None:
                self.save_with_model.save_pretrained(tmp)
            publish_checkpoint(self.out_dir, tmp, final, self.config.keep_last)
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
        self.eval_elapsed = float(state.get("eval_elapsed", 0.0))
        self.tokens_seen = int(state.get("tokens_seen", 0))
        # A time-budgeted run keeps the step count it fixed; otherwise the settings given now
        # win, so `--resume --train.max_steps N` can extend a finished run.
        if self.config.max_steps <= 0 and self.config.epochs is None:
            self.total_steps = state["total_steps"]
        set_rng_state(state["rng"])
        if "objective" in state and hasattr(self.objective, "load_state_dict"):
            self.objective.load_state_dict(state["objective"])

    def _resume_sharded(self) -> None:
        """Resume an FSDP run from the newest sharded checkpoint (every rank reads its shards)."""
        from minigpt.train.fsdp import load_sharded

        path = latest_checkpoint(self.out_dir) or (checkpoint_dirs(self.out_dir) or [None])[-1]
        if path is None:
            if self.is_main:
                warnings.warn(f"--resume: {self.out_dir} has no checkpoint yet; starting from step 0", RuntimeWarning, stacklevel=3)
                self._truncate_metrics(0)
            return
        if not (path / "sharded").is_dir():
            raise UserError(f"--resume with train.fsdp: {path} is not a sharded checkpoint (was the run started without --train.fsdp?)")
        state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
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
        model = unwrap_model(self.model)
        if self.fsdp:
            from minigpt.train.fsdp import full_state_dict

            full = full_state_dict(model)
            if not self.is_main:
                return
            model = self._model_class(model.config)
            model.load_state_dict(full, strict=False)
            if getattr(model.config, "tie_word_embeddings", False):
                model.tie_weights()
            model.generation_config = unwrap_model(self.model).generation_config
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
