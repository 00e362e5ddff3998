"""A seeded, resumable, shardable sampler of dataset indices."""

from __future__ import annotations

from typing import Iterator

import torch


class ResumableSampler:
    """Yields indices `0..n-1` in a fresh random order each epoch, forever.

    The order of epoch `e` is `randperm(n)` from a generator seeded with `seed + e`, so it is
    reproducible; `state_dict()` records (epoch, position) and a restored sampler continues
    with exactly the indices an uninterrupted one would have produced. Under data parallelism
    rank r takes positions r, r + world_size, … of the same permutation (disjoint shards).

    Raises:
        ValueError: if `n < world_size` (some rank would get nothing).
    """

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if n < world_size:
            raise ValueError(f"{n} items cannot be sharded over {world_size} ranks")
        self.n, self.seed, self.rank, self.world_size = n, seed, rank, world_size
        self.epoch = 0
        self.position = 0  # next position within this rank's shard

    def _order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.n, generator=g)[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        while True:
            order = self._order(self.epoch)
            while self.position < len(order):
                i = int(order[self.position])
                self.position += 1
                yield i
            self.epoch += 1
            self.position = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self.seed = int(state["epoch"]), int(state["position"]), int(state["seed"])
