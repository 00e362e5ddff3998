"""The loop's resumable sampler: which training block each step draws, on every rank."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from minigpt.errors import UserError

__all__ = ["BlockSampler"]


class BlockSampler(Sampler[int]):
    """Infinite, seeded, resumable sampler of block indices, sharded for DDP.

    Epoch ``e`` uses the permutation ``torch.randperm(num_blocks)`` drawn from a
    ``torch.Generator`` seeded with ``seed + e``, so every rank computes the same permutation
    without communicating. The permutation is truncated to a multiple of ``world_size`` (the
    few dropped blocks change every epoch) and rank ``r`` takes positions
    ``r, r + world_size, ...``: ranks partition the epoch and all take the same number of steps,
    so no rank waits at an epoch edge. After the last index of an epoch the next epoch begins.

    ``state_dict()`` is ``{"epoch", "position", "seed"}`` where ``position`` counts indices
    this rank has handed out in the current epoch. Restoring it with ``load_state_dict`` makes
    the next index exactly the one an uninterrupted run would have produced. Note that a
    ``DataLoader`` with workers prefetches indices, so its sampler runs ahead of the batches
    the loop has consumed; save the state from a loop that draws indices itself, or account
    for the prefetch.

    Args:
        num_blocks: number of blocks in the dataset (e.g. ``len(PackedDataset)``), or the
            dataset itself.
        seed: base seed.
        rank: this process's rank, ``0 <= rank < world_size``.
        world_size: number of data-parallel processes.

    Raises:
        UserError: ``num_blocks < world_size`` (some rank would get nothing) or a bad
            ``rank``/``world_size``.
    """

    def __init__(
        self, num_blocks: int | Dataset, seed: int = 0, rank: int = 0, world_size: int = 1
    ) -> None:
        if not isinstance(num_blocks, (int, np.integer)):
            num_blocks = len(num_blocks)  # type: ignore[arg-type]
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        if num_blocks < world_size:
            raise UserError(
                f"{num_blocks} block(s) cannot be shared by {world_size} rank(s); "
                "add data or lower block_size"
            )
        self.num_blocks = int(num_blocks)
        self.seed = int(seed)
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.position = 0
        self._perm_epoch: int | None = None
        self._perm: torch.Tensor | None = None

    @property
    def epoch_length(self) -> int:
        """Indices this rank gets per epoch: ``num_blocks // world_size``."""
        return self.num_blocks // self.world_size

    def _epoch_indices(self, epoch: int) -> torch.Tensor:
        if self._perm_epoch != epoch:
            g = torch.Generator()
            g.manual_seed(self.seed + epoch)
            perm = torch.randperm(self.num_blocks, generator=g)
            usable = self.epoch_length * self.world_size
            self._perm = perm[:usable][self.rank :: self.world_size]
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm

    def __iter__(self) -> Iterator[int]:
        # State lives on the sampler, not the generator, so a new iterator (or a restored
        # sampler) continues where the last one stopped.
        while True:
            if self.position >= self.epoch_length:
                self.epoch += 1
                self.position = 0
            idx = int(self._epoch_indices(self.epoch)[self.position])
            self.position += 1
            yield idx

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": e, "position": p, "seed": s}``: everything needed to resume exactly."""
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore a :meth:`state_dict`; ``num_blocks``/``rank``/``world_size`` come from init.

        Raises:
            UserError: a key is missing or ``position`` exceeds this sampler's epoch length.
        """
        try:
            epoch, position, seed = int(state["epoch"]), int(state["position"]), int(state["seed"])
        except KeyError as exc:
            raise UserError(f"sampler state is missing {exc.args[0]!r}") from None
        if not 0 <= position <= self.epoch_length or epoch < 0:
            raise UserError(
                f"sampler state epoch={epoch} position={position} does not fit "
                f"an epoch of {self.epoch_length} indices; was the data or world_size changed?"
            )
        self.epoch, self.position, self.seed = epoch, position, seed
        self._perm_epoch = None
