"""Local delivery: subscriptions, their queues and the workers that run handlers."""

from __future__ import annotations

import asyncio
import inspect
import logging
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from ._errors import AlreadyClosed
from ._event import Event
from ._topics import TopicIndex, validate_pattern

__all__ = ["Dispatcher", "Handler", "Subscription"]

log = logging.getLogger("frys_zmq.dispatch")

Handler = Callable[[Event], Awaitable[None] | None]


class Subscription:
    """One subscription: a pattern, a bounded queue, counters, and a handler or an iterator.

    With a handler, a worker task calls it for each event, one at a time, in arrival order
    (so per-publisher order holds for the handler). Without one, iterate with ``async for``.
    Cancel with ``cancel()``; it also works as an async context manager.
    """

    def __init__(
        self,
        dispatcher: Dispatcher,
        pattern: str,
        handler: Handler | None,
        maxsize: int,
    ) -> None:
        self.pattern = pattern
        self.handler = handler
        self._dispatcher = dispatcher
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.delivered = 0  #: events handed to the handler or iterator
        self.errors = 0  #: handler calls that raised
        self.dropped = 0  #: events dropped because the subscription closed with them queued
        #: Name of a durable subscription (its cursors survive restarts), else None.
        self.durable: str | None = None
        #: Optional filter: events for which it returns True are skipped (durable replays).
        self.skip: Callable[[Event], bool] | None = None
        #: Called after the handler finished with an event (durable cursors).
        self.on_handled: Callable[[Event], None] | None = None

    @property
    def pending(self) -> int:
        """Events queued and not yet handled."""
        return self._queue.qsize()

    @property
    def closed(self) -> bool:
        return self._closed

    def __call__(self, arg: Any) -> Any:
        """Decorator use: ``sub(func)`` makes ``func`` the handler and returns ``self``.

        On a subscription that has a handler, ``sub(event)`` calls the handler directly,
        so a decorated function can still be called (in tests, say).
        """
        if self.handler is None:
            if isinstance(arg, Event) or not callable(arg):
                raise TypeError("pass a handler function to a subscription without one")
            if self._closed:
                raise AlreadyClosed("subscription is cancelled")
            self.handler = arg
            self._start()
            return self
        return self.handler(arg)

    def _start(self) -> None:
        if self.handler is not None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(self.handler), name=f"frys-sub-{self.pattern}"
            )

    async def _run(self, handler: Handler) -> None:
        queue = self._queue
        dispatcher = self._dispatcher
        while True:
            event = await queue.get()
            if event is None:
                return
            if self.skip is not None and self.skip(event):
                continue
            self.delivered += 1
            await self._handle(handler, event, dispatcher)
            if self.on_handled is not None:
                self.on_handled(event)

    async def _handle(self, handler: Handler, event: Event, dispatcher: Dispatcher) -> None:
        """Run ``handler``; retry with exponential backoff; then dead-letter the event."""
        attempts = dispatcher.retries + 1
        for attempt in range(attempts):
            try:
                async with dispatcher.concurrency:
                    result = handler(event)
                    if inspect.isawaitable(result):
                        await result
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors += 1
                dispatcher.handler_errors += 1
                if attempt + 1 < attempts:
                    await asyncio.sleep(dispatcher.retry_backoff * (2**attempt))
                    continue
                log.exception(
                    "handler for %r failed %d times on %r", self.pattern, attempts, event.topic
                )
                dispatcher.dead_letter(self, event, exc, attempts)

    def cancel(self) -> None:
        """Stop receiving. Idempotent; queued events are dropped and counted."""
        if self._closed:
            return
        self._closed = True
        self._dispatcher._remove(self)
        self.dropped += self._queue.qsize()
        while not self._queue.empty():
            self._queue.get_nowait()
        if self._task is not None:
            self._task.cancel()
        else:
            self._queue.put_nowait(None)  # wakes an iterator

    async def wait_closed(self) -> None:
        """Wait until the worker has stopped after ``cancel()``."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()
        await self.wait_closed()

    def __aiter__(self) -> AsyncIterator[Event]:
        if self.handler is not None:
            raise TypeError("a subscription with a handler cannot also be iterated")
        return self

    async def __anext__(self) -> Event:
        if self._closed and self._queue.empty():
            raise StopAsyncIteration
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        self.delivered += 1
        return event

    async def get(self, timeout: float | None = None) -> Event:
        """Next event (iterator form), waiting up to ``timeout`` seconds."""
        if self._closed:
            raise AlreadyClosed("subscription is cancelled")
        async with asyncio.timeout(timeout):
            return await self.__anext__()

    def __repr__(self) -> str:
        return (
            f"Subscription({self.pattern!r}, delivered={self.delivered}, "
            f"pending={self.pending}, errors={self.errors})"
        )

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if not self._closed and self._task is not None and not self._task.done():
            _warn(f"unclosed {self!r}", ResourceWarning, source=self, stacklevel=2)


class Dispatcher:
    """Matches events to subscriptions through the topic index and queues them."""

    def __init__(
        self,
        *,
        queue_size: int,
        max_concurrent: int = 1000,
        retries: int = 3,
        retry_backoff: float = 0.05,
        on_dead_letter: Callable[[Subscription, Event, BaseException, int], None] | None = None,
    ) -> None:
        self._index: TopicIndex[Subscription] = TopicIndex()
        self._subs: set[Subscription] = set()
        self._queue_size = queue_size
        #: Bounds how many handler calls run at once across all subscriptions.
        self.concurrency = asyncio.Semaphore(max_concurrent)
        self.retries = retries
        self.retry_backoff = retry_backoff
        self._on_dead_letter = on_dead_letter
        self.dead_letters = 0
        self.dispatched = 0  #: (event, subscription) deliveries queued
        self.unmatched = 0  #: events no subscription wanted
        self.handler_errors = 0

    def subscribe(self, pattern: str, handler: Handler | None) -> Subscription:
        validate_pattern(pattern)
        sub = Subscription(self, pattern, handler, self._queue_size)
        self._index.add(pattern, sub)
        self._subs.add(sub)
        sub._start()
        return sub

    def dead_letter(
        self, sub: Subscription, event: Event, exc: BaseException, attempts: int
    ) -> None:
        self.dead_letters += 1
        if self._on_dead_letter is not None:
            self._on_dead_letter(sub, event, exc, attempts)

    def _remove(self, sub: Subscription) -> None:
        self._index.remove(sub.pattern, sub)
        self._subs.discard(sub)

    def matches(self, topic: str) -> tuple[Subscription, ...]:
        return self._index.match(topic)

    def has_subscribers(self) -> bool:
        return bool(self._subs)

    def dispatch_nowait(
        self, event: Event, subs: tuple[Subscription, ...]
    ) -> list[Subscription] | None:
        """Queue ``event`` on ``subs``; return those that were full (caller awaits them)."""
        blocked: list[Subscription] | None = None
        for sub in subs:
            try:
                sub._queue.put_nowait(event)
            except asyncio.QueueFull:
                if blocked is None:
                    blocked = []
                blocked.append(sub)
        self.dispatched += len(subs) - (len(blocked) if blocked else 0)
        return blocked

    async def dispatch(self, event: Event) -> None:
        """Queue ``event`` on every matching subscription, waiting where a queue is full."""
        subs = self._index.match(event.topic)
        if not subs:
            self.unmatched += 1
            return
        blocked = self.dispatch_nowait(event, subs)
        if blocked:
            await self.wait_blocked(event, blocked)

    async def wait_blocked(self, event: Event, blocked: list[Subscription]) -> None:
        for sub in blocked:
            if not sub.closed:
                await sub._queue.put(event)
                self.dispatched += 1

    def subscriptions(self) -> list[Subscription]:
        return list(self._subs)

    def topic_counts(self) -> dict[str, int]:
        """Subscribers per pattern."""
        counts: dict[str, int] = {}
        for sub in self._subs:
            counts[sub.pattern] = counts.get(sub.pattern, 0) + 1
        return counts

    async def aclose(self) -> None:
        subs = list(self._subs)
        for sub in subs:
            sub.cancel()
        await asyncio.gather(*(s.wait_closed() for s in subs), return_exceptions=True)
