"""A work queue, and gathering values from all ranks, through a torch.distributed store.

Every rank holds the same ordered list of pending items; `store.add` on one counter key hands
out their positions, each exactly once, so a rank that finishes early takes the next item.
Keys live under a namespace that includes the torchrun restart count, because the rendezvous
store outlives the workers of a failed attempt.
"""

import json
from collections.abc import Iterator
from datetime import timedelta

import torch.distributed as dist

WAIT_TIMEOUT = timedelta(days=1)


class WorkQueue:
    """Positions 0..size-1, each claimed by exactly one caller of `claim`."""

    def __init__(self, store: dist.Store, namespace: str, size: int) -> None:
        self.store = store
        self.namespace = namespace
        self.size = size

    def claim(self) -> int | None:
        """The next unclaimed position, or None once every position is taken."""
        position = self.store.add(f"{self.namespace}/next", 1) - 1
        return position if position < self.size else None

    def __iter__(self) -> Iterator[int]:
        while (position := self.claim()) is not None:
            yield position


def publish(store: dist.Store, key: str, rank: int, value: object) -> None:
    """Publish `value` (JSON) under `key/rank` for `collect` on another rank."""
    store.set(f"{key}/{rank}", json.dumps(value))


def collect(store: dist.Store, key: str, world_size: int) -> list:
    """Wait until every rank has published under `key`; return the values in rank order."""
    keys = [f"{key}/{rank}" for rank in range(world_size)]
    store.wait(keys, WAIT_TIMEOUT)
    return [json.loads(store.get(k)) for k in keys]


def exchange(store: dist.Store, key: str, rank: int, world_size: int, value: object) -> list:
    """All-gather through the store: publish `value` as `rank`, return every rank's value."""
    publish(store, key, rank, value)
    return collect(store, key, world_size)
