"""``MemoryEventQueue``: a bounded in-memory queue whose overflow is a policy, never a surprise."""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Iterable
from typing import Generic, TypeVar

from ._errors import ConfigError, QueueFull

__all__ = ["MemoryEventQueue", "OverflowPolicy"]

T = TypeVar("T")


class OverflowPolicy(enum.StrEnum):
    """What ``put`` does when the queue is full."""

    BLOCK = "block"  #: wait for room (back-pressure on the producer)
    DROP_OLDEST = "drop_oldest"  #: make room by discarding the oldest item (counted)
    REJECT = "reject"  #: raise ``QueueFull`` (counted)


class MemoryEventQueue(Generic[T]):
    """Bounded FIFO for events (or anything). Single event loop; not thread-safe.

    Counters: ``enqueued``, ``dequeued``, ``dropped`` (drop-oldest), ``rejected`` (reject),
    ``blocked`` (puts that had to wait).
    """

    def __init__(
        self, maxsize: int = 10_000, *, overflow: OverflowPolicy | str = OverflowPolicy.BLOCK
    ) -> None:
        if not isinstance(maxsize, int) or maxsize <= 0:
            raise ConfigError(f"maxsize must be a positive int, got {maxsize!r}")
        try:
            self.overflow = OverflowPolicy(overflow)
        except ValueError as exc:
            raise ConfigError(f"unknown overflow policy {overflow!r}") from exc
        self.maxsize = maxsize
        self._items: deque[T] = deque()
        self._not_empty = asyncio.Event()
        self._not_full = asyncio.Event()
        self._not_full.set()
        self.enqueued = 0
        self.dequeued = 0
        self.dropped = 0
        self.rejected = 0
        self.blocked = 0

    def __len__(self) -> int:
        return len(self._items)

    def full(self) -> bool:
        return len(self._items) >= self.maxsize

    def put_nowait(self, item: T) -> None:
        """Add ``item``; on a full queue drop the oldest or raise ``QueueFull`` by policy."""
        if self.full():
            if self.overflow is OverflowPolicy.DROP_OLDEST:
                self._items.popleft()
                self.dropped += 1
            else:
                if self.overflow is OverflowPolicy.REJECT:
                    self.rejected += 1
                raise QueueFull(f"queue is full ({self.maxsize} items)")
        self._items.append(item)
        self.enqueued += 1
        self._not_empty.set()
        if self.full():
            self._not_full.clear()

    async def put(self, item: T) -> None:
        """Add ``item``, waiting for room under the ``block`` policy."""
        if self.overflow is OverflowPolicy.BLOCK and self.full():
            self.blocked += 1
            while self.full():
                await self._not_full.wait()
        self.put_nowait(item)

    async def publish_batch(self, items: Iterable[T]) -> int:
        """Put many items in order; returns how many were accepted."""
        accepted = 0
        for item in items:
            try:
                await self.put(item)
            except QueueFull:
                continue
            accepted += 1
        return accepted

    def get_nowait(self) -> T:
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._items.popleft()
        self._taken(1)
        return item

    async def get(self) -> T:
        while not self._items:
            await self._not_empty.wait()
        return self.get_nowait()

    async def consume_batch(self, max_items: int = 100, timeout: float | None = None) -> list[T]:
        """Wait (up to ``timeout``) for at least one item; return up to ``max_items``."""
        if not self._items:
            try:
                async with asyncio.timeout(timeout):
                    while not self._items:
                        await self._not_empty.wait()
            except TimeoutError:
                return []
        n = min(max_items, len(self._items))
        batch = [self._items.popleft() for _ in range(n)]
        self._taken(n)
        return batch

    def _taken(self, n: int) -> None:
        self.dequeued += n
        if not self._items:
            self._not_empty.clear()
        if not self.full():
            self._not_full.set()

    def stats(self) -> dict[str, int]:
        return {
            "depth": len(self._items),
            "maxsize": self.maxsize,
            "enqueued": self.enqueued,
            "dequeued": self.dequeued,
            "dropped": self.dropped,
            "rejected": self.rejected,
            "blocked": self.blocked,
        }
