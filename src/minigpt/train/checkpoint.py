"""Resumable checkpoints, written atomically.

Layout under a run directory:

    OUT/checkpoints/step_00000500/   model (save_pretrained: config.json + model.safetensors)
                                     trainer_state.pt  optimizer, scheduler, RNG, step, data position
    OUT/checkpoints/latest           name of the newest complete checkpoint

A checkpoint is written into a hidden temporary directory and renamed into place only once
complete, then `latest` is replaced atomically; a crash at any moment leaves the previous
checkpoint and pointer intact. `trainer_state.pt` holds only tensors and plain containers and is
read with `torch.load(weights_only=True)`, which cannot run code (unlike a plain pickle).
"""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minigpt.errors import DiskFullError, UserError, is_disk_full

STATE_FILE = "trainer_state.pt"
LATEST = "latest"


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
