"""Local delivery: subscriptions, their queues and the workers that run handlers."""

from __future__ import annotations

import asyncio
import collections
import inspect
import itertools
import logging
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from ._errors import AlreadyClosed
from ._event import Event, PendingPayload
from ._processing import EventFilter, EventProcessingChain, compose
from ._topics import TopicIndex, validate_pattern

__all__ = ["Dispatcher", "Handler", "Subscription"]

log = logging.getLogger("frys_zmq.dispatch")

Handler = Callable[[Event], Awaitable[None] | None]
T = TypeVar("T")


class _Fifo(Generic[T]):
    """A FIFO with one consumer, bounded in items and bytes, cheaper than ``asyncio.Queue``.

    Futures are made only when the consumer waits on an empty queue or a producer waits on
    a full one; the common case is a deque append and popleft. Items put with a size (big
    single events) count against ``max_bytes`` too; a queue always takes one item.
    """

    __slots__ = ("_bytes", "_getter", "_items", "_max_bytes", "_maxsize", "_putters", "_sizes")

    def __init__(self, maxsize: int, max_bytes: int = 0) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._sizes: collections.deque[int] = collections.deque()  # one per item
        self._maxsize = maxsize
        self._max_bytes = max_bytes
        self._bytes = 0
        self._getter: asyncio.Future[None] | None = None
        self._putters: collections.deque[asyncio.Future[None]] = collections.deque()

    def qsize(self) -> int:
        return len(self._items)

    def put_nowait(self, item: T, size: int = 0) -> bool:
        """Append ``item``; False (and nothing appended) when the queue is full."""
        if 0 < self._maxsize <= len(self._items):
            return False
        if size and 0 < self._max_bytes < self._bytes + size and self._items:
            return False
        self._items.append(item)
        self._sizes.append(size)
        self._bytes += size
        if self._getter is not None:
            self._wake_getter()
        return True

    def put_many(self, items: Sequence[T], start: int = 0) -> int:
        """Append ``items[start:]`` while there is room; return the index of the first left out."""
        room = len(items) - start
        if self._maxsize > 0:
            room = min(room, self._maxsize - len(self._items))
        if room <= 0:
            return start
        end = start + room
        self._items.extend(items[start:end] if start or end < len(items) else items)
        self._sizes.extend(itertools.repeat(0, room))
        if self._getter is not None:
            self._wake_getter()
        return end

    def _wake_getter(self) -> None:
        getter, self._getter = self._getter, None
        if getter is not None and not getter.done():
            getter.set_result(None)

    async def put(self, item: T, size: int = 0) -> None:
        """Append ``item``, waiting while the queue is full."""
        while not self.put_nowait(item, size):
            fut = asyncio.get_running_loop().create_future()
            self._putters.append(fut)
            try:
                await fut
            finally:
                if not fut.done():
                    fut.cancel()

    def get_nowait(self) -> T:
        """Pop the oldest item (IndexError when empty) and let one waiting producer in."""
        item = self._items.popleft()
        self._bytes -= self._sizes.popleft()
        if self._putters:
            self.wake_putter()
        return item

    def wake_putter(self) -> None:
        """Room was made: let the first waiting producer try again."""
        putters = self._putters
        while putters:
            fut = putters.popleft()
            if not fut.done():
                fut.set_result(None)
                break

    async def wait(self) -> None:
        """Return once the queue holds an item."""
        while not self._items:
            fut = asyncio.get_running_loop().create_future()
            self._getter = fut
            try:
                await fut
            finally:
                if self._getter is fut:
                    self._getter = None

    async def get(self) -> T:
        await self.wait()
        return self.get_nowait()

    def clear(self) -> int:
        """Drop every item; return how many there were."""
        n = len(self._items)
        self._items.clear()
        self._sizes.clear()
        self._bytes = 0
        for fut in self._putters:
            if not fut.done():
                fut.set_result(None)  # they find room now
        self._putters.clear()
        return n


class _Limiter:
    """At most ``n`` holders at once; taking a free slot costs no await."""

    __slots__ = ("_waiters", "free")

    def __init__(self, n: int) -> None:
        self.free = n
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self) -> None:
        if self.free > 0:
            self.free -= 1
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # the slot was handed to us as we were cancelled
            raise

    def release(self) -> None:
        """Hand the slot to the first waiter, or free it."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1


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
        event_filter: EventFilter | None = None,
        chain: EventProcessingChain | None = None,
        max_bytes: int = 0,
    ) -> None:
        self.pattern = pattern
        self.handler = handler
        #: Events that fail it are skipped (counted in ``filtered``), before ``chain``.
        self.filter = event_filter
        #: Steps applied to each event before the handler sees it.
        self.chain = chain
        self._dispatcher = dispatcher
        self._queue: _Fifo[Event | None] = _Fifo(maxsize, max_bytes)
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.delivered = 0  #: events handed to the handler or iterator
        self.errors = 0  #: handler calls that raised
        self.dropped = 0  #: events dropped because the subscription closed with them queued
        self.filtered = 0  #: events stopped by a filter or a chain step before the handler
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

    def _pipeline(self, handler: Handler) -> Handler:
        """``handler`` behind the bus's chains, this subscription's filter and its chain."""
        process = compose(self._dispatcher.chains_for(), self.filter, self.chain)
        if process is None:
            return handler

        async def run(event: Event) -> None:
            out = await process(event)
            if out is None:
                self.filtered += 1
                return
            result = handler(out)
            if result is not None and inspect.isawaitable(result):
                await result

        return run

    async def _run(self, user_handler: Handler) -> None:
        # One loop per subscription, no coroutine or future per event: the common case
        # (a free slot, a handler that finishes without waiting) costs a call and a popleft.
        queue = self._queue
        items = queue._items
        popleft = items.popleft
        popsize = queue._sizes.popleft
        putters = queue._putters
        dispatcher = self._dispatcher
        limiter = dispatcher.limiter
        waiters = limiter._waiters
        skip, on_handled = self.skip, self.on_handled  # set before the worker starts
        resolve = dispatcher.resolve
        isawaitable = inspect.isawaitable
        version = dispatcher.chains_version
        handler = self._pipeline(user_handler)
        is_async = inspect.iscoroutinefunction(handler)
        while True:
            if not items:
                await queue.wait()
            event = popleft()
            size = popsize()
            if size:
                queue._bytes -= size
            if putters:
                queue.wake_putter()
            if event is None:
                return
            if version != dispatcher.chains_version:  # a chain came or went
                version = dispatcher.chains_version
                handler = self._pipeline(user_handler)
                is_async = inspect.iscoroutinefunction(handler)
            if skip is not None and skip(event):
                continue
            if type(event.payload) is PendingPayload and not resolve(event):
                if on_handled is not None:
                    on_handled(event)  # dropped for good: a durable cursor moves past it
                continue
            self.delivered += 1
            if limiter.free > 0:
                limiter.free -= 1
            else:
                await limiter.acquire()
            failed: Exception | None = None
            try:
                if is_async:
                    await handler(event)  # type: ignore[misc]
                else:
                    result = handler(event)
                    if result is not None and isawaitable(result):
                        await result
            except Exception as exc:  # CancelledError is a BaseException: it propagates
                failed = exc
            finally:
                if waiters:
                    limiter.release()
                else:
                    limiter.free += 1
            if failed is not None:
                await self._retry(handler, event, failed)
            if on_handled is not None:
                on_handled(event)

    async def _retry(self, handler: Handler, event: Event, exc: Exception) -> None:
        """After a failed call: retry with exponential backoff, then dead-letter the event."""
        dispatcher = self._dispatcher
        attempts = dispatcher.retries + 1
        for attempt in range(1, attempts + 1):
            self.errors += 1
            dispatcher.handler_errors += 1
            if attempt == attempts:
                break
            await asyncio.sleep(dispatcher.retry_backoff * (2 ** (attempt - 1)))
            await dispatcher.limiter.acquire()
            try:
                result = handler(event)
                if inspect.isawaitable(result):
                    await result
                return
            except Exception as again:
                exc = again
            finally:
                dispatcher.limiter.release()
        log.error(
            "handler for %r failed %d times on %r",
            self.pattern,
            attempts,
            event.topic,
            exc_info=exc,
        )
        dispatcher.dead_letter(self, event, exc, attempts)

    def cancel(self) -> None:
        """Stop receiving. Idempotent; queued events are dropped and counted."""
        if self._closed:
            return
        self._closed = True
        self._dispatcher._remove(self)
        self.dropped += self._queue.clear()
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
        while True:
            if self._closed and not self._queue.qsize():
                raise StopAsyncIteration
            event = await self._queue.get()
            if event is None:
                raise StopAsyncIteration
            if type(event.payload) is PendingPayload and not self._dispatcher.resolve(event):
                continue
            self.delivered += 1
            process = compose(self._dispatcher.chains_for(), self.filter, self.chain)
            if process is None:
                return event
            out = await process(event)
            if out is not None:
                return out
            self.filtered += 1

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
        queue_bytes: int = 0,
        max_concurrent: int = 1000,
        retries: int = 3,
        retry_backoff: float = 0.05,
        on_dead_letter: Callable[[Subscription, Event, BaseException, int], None] | None = None,
        resolve: Callable[[Event], bool] | None = None,
    ) -> None:
        self._index: TopicIndex[Subscription] = TopicIndex()
        #: The subscriptions whose pattern matches a topic (the index's cached lookup).
        self.matches: Callable[[str], tuple[Subscription, ...]] = self._index.match
        self._chains: TopicIndex[EventProcessingChain] = TopicIndex()
        #: Bumped whenever a chain is registered or removed: workers rebuild their pipeline.
        self.chains_version = 0
        self._subs: set[Subscription] = set()
        self._queue_size = queue_size
        self._queue_bytes = queue_bytes
        #: Bounds how many handler calls run at once across all subscriptions.
        self.limiter = _Limiter(max_concurrent)
        self.retries = retries
        self.retry_backoff = retry_backoff
        self._on_dead_letter = on_dead_letter
        #: Decodes an event's ``PendingPayload`` in place; False if it cannot be.
        self.resolve: Callable[[Event], bool] = resolve or (lambda event: True)
        self.dead_letters = 0
        self.dispatched = 0  #: (event, subscription) deliveries queued
        self.unmatched = 0  #: events no subscription wanted
        self.handler_errors = 0

    def subscribe(
        self,
        pattern: str,
        handler: Handler | None,
        *,
        event_filter: EventFilter | None = None,
        chain: EventProcessingChain | None = None,
    ) -> Subscription:
        validate_pattern(pattern)
        sub = Subscription(
            self, pattern, handler, self._queue_size, event_filter, chain, self._queue_bytes
        )
        self._index.add(pattern, sub)
        self._subs.add(sub)
        sub._start()
        return sub

    def register_chain(self, pattern: str, chain: EventProcessingChain) -> None:
        """Run ``chain`` on every event of a topic matching ``pattern``, for every subscription."""
        self._chains.add(pattern, chain)
        self.chains_version += 1

    def remove_chain(self, pattern: str, chain: EventProcessingChain) -> bool:
        removed = self._chains.remove(pattern, chain)
        if removed:
            self.chains_version += 1
        return removed

    def chains_for(self) -> Callable[[str], tuple[EventProcessingChain, ...]] | None:
        """The lookup of registered chains by topic, or None while there are none."""
        return self._chains.match if self._chains else None

    def dead_letter(
        self, sub: Subscription, event: Event, exc: BaseException, attempts: int
    ) -> None:
        self.dead_letters += 1
        if self._on_dead_letter is not None:
            self._on_dead_letter(sub, event, exc, attempts)

    def _remove(self, sub: Subscription) -> None:
        self._index.remove(sub.pattern, sub)
        self._subs.discard(sub)

    def has_subscribers(self) -> bool:
        return bool(self._subs)

    def dispatch_nowait(
        self, event: Event, subs: tuple[Subscription, ...], size: int = 0
    ) -> list[Subscription] | None:
        """Queue ``event`` (``size`` bytes of payload) on ``subs``; return those that were
        full (the caller awaits them with ``wait_blocked``)."""
        blocked: list[Subscription] | None = None
        for sub in subs:
            if not sub._queue.put_nowait(event, size):
                if blocked is None:
                    blocked = []
                blocked.append(sub)
        self.dispatched += len(subs) - (len(blocked) if blocked else 0)
        return blocked

    def dispatch_many(
        self, events: list[Event], subs: tuple[Subscription, ...]
    ) -> list[tuple[Subscription, int]] | None:
        """Queue ``events`` on each of ``subs``, in order, as far as their queues have room.

        Returns the subscriptions that were full, each with the index of its first event
        left out (the caller passes them to ``wait_blocked_many``), or None.
        """
        blocked: list[tuple[Subscription, int]] | None = None
        n = len(events)
        queued = 0
        for sub in subs:
            taken = sub._queue.put_many(events)
            queued += taken
            if taken < n:
                if blocked is None:
                    blocked = []
                blocked.append((sub, taken))
        self.dispatched += queued
        return blocked

    async def wait_blocked_many(
        self, events: list[Event], blocked: list[tuple[Subscription, int]]
    ) -> None:
        """Queue the rest of ``events`` on the full subscriptions, waiting for room."""
        n = len(events)
        for sub, start in blocked:
            queue = sub._queue
            while start < n and not sub.closed:
                taken = queue.put_many(events, start)
                self.dispatched += taken - start
                start = taken
                if start < n:
                    await queue.put(events[start])
                    self.dispatched += 1
                    start += 1

    async def dispatch(self, event: Event) -> None:
        """Queue ``event`` on every matching subscription, waiting where a queue is full."""
        subs = self._index.match(event.topic)
        if not subs:
            self.unmatched += 1
            return
        blocked = self.dispatch_nowait(event, subs)
        if blocked:
            await self.wait_blocked(event, blocked)

    async def wait_blocked(self, event: Event, blocked: list[Subscription], size: int = 0) -> None:
        for sub in blocked:
            if not sub.closed:
                await sub._queue.put(event, size)
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
