"""A synchronous facade for scripts and REPLs.

The asyncio ``EventBus`` runs on a private thread with its own loop; every call here hands
work to that loop and waits with a timeout (``call_timeout``), raising ``SyncTimeout`` when it
runs out. The caller's own event loop (if any) is never blocked by the bus's work. The methods
keep the names and arguments of ``frys_zmq.EventBus``, without ``await``.

Handlers (of ``subscribe`` and ``handle_request``) run on the bus's thread, one event at a
time per subscription, like the asyncio bus's handlers. A handler that blocks (``time.sleep``,
a slow file or network call, waiting on a lock) stalls the whole node meanwhile: its other
deliveries, requests, heartbeats and gap repair. Keep handlers quick, hand slow work to your
own thread (a ``queue.Queue``), or write them as ``async def``.

Inside a handler, use the asyncio API, ``bus.async_bus`` (``await bus.async_bus.publish(...)``
in an ``async def`` handler): a method of this facade called on the bus's own thread would wait
for the very thread it blocks, so it raises ``WrongThread`` at once instead of deadlocking.
(A handler may call another sync bus, but this bus stalls until that call returns, and two
buses whose handlers call each other wait for each other until ``call_timeout``.)

Waiting on a subscription without a handler (``for event in bus.subscribe(p)``) blocks until an
event arrives or the subscription is cancelled, with no time limit (Ctrl-C interrupts it);
``Subscription.get(timeout)`` waits a bounded time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import threading
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterable,
    Iterator,
    Mapping,
)
from typing import Any, TypeVar

from ._bus import EventBus as AsyncEventBus
from ._config import EventBusConfig
from ._dispatch import Handler
from ._dispatch import Subscription as AsyncSubscription
from ._errors import AlreadyClosed, FrysError, NotStarted, SyncTimeout, WrongThread
from ._event import Event, Reply, Request
from ._peers import PeerInfo
from ._processing import EventFilter, EventProcessingChain

__all__ = ["EventBus", "Publisher", "Subscription"]

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0

#: Seconds a blocking call gets on top of its own timeout (``request``, ``wait_for_peers``).
_GRACE = 5.0
#: ``_run`` waits for ever (a subscription iterated without a timeout).
_NO_LIMIT = math.inf


class EventBus:
    """Same names as ``frys_zmq.EventBus``, blocking; use as a context manager."""

    def __init__(
        self,
        config: EventBusConfig | None = None,
        *,
        call_timeout: float = DEFAULT_TIMEOUT,
        **overrides: Any,
    ) -> None:
        self._bus = AsyncEventBus(config, **overrides)
        self.config = self._bus.config
        self.node_id = self._bus.node_id
        self._timeout = call_timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"frys-sync-{self.node_id}", daemon=True
        )
        self._started = False
        self._closing = False  #: no call is handed to the loop any more
        self._closed = False
        # Held while a call is checked and handed to the loop, so that every call handed
        # over before close() is among the tasks that closing cancels: none waits for ever.
        self._lock = threading.Lock()

    @property
    def async_bus(self) -> AsyncEventBus:
        """The asyncio ``EventBus`` this facade drives: the API for code in handlers."""
        return self._bus

    # ------------------------------------------------------------------ the loop thread

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the bus's loop and wait for it, ``timeout`` or ``call_timeout``."""
        return self._wait(self._submit(coro), timeout)

    def _submit(
        self, coro: Coroutine[Any, Any, T], *, closing: bool = False
    ) -> concurrent.futures.Future[T]:
        with self._lock:
            try:
                self._check_caller(coro)
            except FrysError:
                coro.close()
                raise
            self._closing = self._closing or closing
            return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _wait(self, fut: concurrent.futures.Future[T], timeout: float | None) -> T:
        wait = self._timeout if timeout is None else timeout
        try:
            return fut.result(None if wait == _NO_LIMIT else wait)
        except TimeoutError:
            if not fut.done():
                fut.cancel()
                raise SyncTimeout(f"call did not finish within {wait:g}s") from None
            # Finished after all, or failed with a TimeoutError of its own (such as
            # PeerWaitTimeout), which is the caller's to see: fut.result() below.
        except concurrent.futures.CancelledError:
            raise AlreadyClosed("EventBus was closed while the call waited") from None
        except BaseException:  # Ctrl-C while waiting: the call must not go on without us
            fut.cancel()
            raise
        return fut.result()

    def _check_caller(self, coro: Coroutine[Any, Any, Any]) -> None:
        if self._closing or self._closed:
            raise AlreadyClosed("EventBus is closed")
        if not self._started:
            raise NotStarted("start the EventBus first (with EventBus(...) as bus: ...)")
        if threading.get_ident() == self._thread.ident:
            raise WrongThread(_on_bus_thread(_method_name(coro)))  # see _on_bus_thread

    def start(self) -> EventBus:
        if not self._started:
            self._thread.start()
            self._started = True
            try:
                self._run(self._bus.start())
            except BaseException:
                self.close()
                raise
        return self

    def close(self) -> None:
        """Leave the mesh and stop the loop thread. Idempotent."""
        if self._closing or self._closed:
            return
        if self._started:
            if threading.get_ident() == self._thread.ident:
                raise WrongThread(_on_bus_thread("EventBus.close()"))
            try:
                self._wait(self._submit(self._shutdown(), closing=True), None)
            finally:
                self._closed = True
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(self._timeout)
                self._loop.close()
        else:
            self._loop.close()  # never ran, but it holds a selector and its socket pair
        self._closed = True

    #: The asyncio bus's name for ``close``; here it blocks like every other method.
    aclose = close

    async def _shutdown(self) -> None:
        """Close the bus, then whatever else still runs on the private loop."""
        await self._bus.aclose()
        me = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not me]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
        loop = asyncio.get_running_loop()
        await loop.shutdown_asyncgens()
        # Its worker threads (asyncio_0...) would outlive the bus otherwise.
        await loop.shutdown_default_executor()

    def __enter__(self) -> EventBus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ publish

    def publish(
        self,
        topic: str,
        payload: Any = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        ack: bool | None = None,
    ) -> Event:
        """Publish to local subscribers and the mesh; see ``frys_zmq.EventBus.publish``."""
        return self._run(self._bus.publish(topic, payload, metadata=metadata, ack=ack))

    def publish_batch(
        self, events: Iterable[tuple[str, Any] | tuple[str, Any, Mapping[str, Any] | None]]
    ) -> list[Event]:
        return self._run(self._bus.publish_batch(list(events)))

    def publisher(self, topic: str) -> Publisher:
        """A callable bound to ``topic``: ``pub(payload)`` publishes."""
        self._bus.publisher(topic)  # validates the topic
        return Publisher(self, topic)

    # ------------------------------------------------------------------ subscribe

    def subscribe(
        self,
        pattern: str,
        handler: Handler | None = None,
        *,
        durable: str | None = None,
        filter: EventFilter | Callable[[Event], bool] | None = None,
        chain: EventProcessingChain | None = None,
    ) -> Subscription:
        """Subscribe to ``pattern``; the forms and keywords of ``frys_zmq.EventBus.subscribe``.

        ``subscribe(p, handler)`` runs ``handler`` on the bus thread; as a decorator,
        ``@bus.subscribe(p)`` makes the function the handler; ``for event in
        bus.subscribe(p)`` iterates in the caller's thread.
        """

        async def make() -> AsyncSubscription:
            return self._bus.subscribe(
                pattern, handler, durable=durable, filter=filter, chain=chain
            )

        return Subscription(self, self._run(make()))

    def subscribe_with_filter(
        self,
        pattern: str,
        event_filter: EventFilter | Callable[[Event], bool],
        handler: Handler | None = None,
        **options: Any,
    ) -> Subscription:
        """``subscribe(pattern, handler, filter=event_filter, ...)``."""
        return self.subscribe(pattern, handler, filter=event_filter, **options)

    def unsubscribe(self, subscription: Subscription | AsyncSubscription) -> None:
        """Cancel ``subscription`` and wait until its handler has stopped."""
        sub = subscription._sub if isinstance(subscription, Subscription) else subscription

        async def cancel() -> None:
            sub.cancel()
            await sub.wait_closed()

        self._run(cancel())

    def register_processing_chain(self, pattern: str, chain: EventProcessingChain) -> None:
        async def register() -> None:
            self._bus.register_processing_chain(pattern, chain)

        self._run(register())

    def remove_processing_chain(self, pattern: str, chain: EventProcessingChain) -> bool:
        async def remove() -> bool:
            return self._bus.remove_processing_chain(pattern, chain)

        return self._run(remove())

    # ------------------------------------------------------------------ request / reply

    def handle_request(self, topic: str, handler: Callable[[Request], Any]) -> None:
        """Serve requests on ``topic``; ``handler`` runs on the bus thread."""
        self._run(self._bus.handle_request(topic, handler))

    def remove_request_handler(self, topic: str) -> None:
        self._run(self._bus.remove_request_handler(topic))

    def request(
        self,
        topic: str,
        payload: Any = None,
        *,
        timeout: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Reply[Any]:
        t = self.config.request_timeout if timeout is None else timeout
        return self._run(
            self._bus.request(topic, payload, timeout=t, metadata=metadata), timeout=t + _GRACE
        )

    send_request = request

    # ------------------------------------------------------------------ the log

    def recover_events(self, topic: str | None = None, after_seq: int = 0) -> list[Event]:
        """Events this node published and still holds in its log (``enable_persistence``)."""
        return self._run(self._bus.recover_events(topic, after_seq))

    def iter_events(self, topic: str | None = None, after_seq: int = 0) -> Iterator[Event]:
        """Stream this node's logged events after ``after_seq``, one call to the loop each."""
        events: list[AsyncIterator[Event]] = []

        async def step() -> Event | None:
            # Made and advanced on the loop, so that its async-generator hooks are the loop's.
            if not events:
                events.append(self._bus.iter_events(topic, after_seq))
            try:
                return await anext(events[0])
            except StopAsyncIteration:
                return None

        async def finish() -> None:
            if events and isinstance(events[0], AsyncGenerator):
                await events[0].aclose()

        try:
            while (event := self._run(step())) is not None:
                yield event
        finally:
            if events and not self._closed:
                with contextlib.suppress(FrysError):
                    self._run(finish())

    # ------------------------------------------------------------------ membership

    def peers(self) -> list[PeerInfo]:
        async def get() -> list[PeerInfo]:
            return self._bus.peers()

        return self._run(get())

    def wait_for_peers(self, n: int = 1, timeout: float = 10.0) -> list[PeerInfo]:
        return self._run(self._bus.wait_for_peers(n, timeout), timeout=timeout + _GRACE)

    def connect(self, endpoint: str) -> None:
        """Add a peer by its ROUTER endpoint (``tcp://host:port``)."""

        async def connect() -> None:
            await self._bus.connect(endpoint)

        self._run(connect())

    @property
    def endpoints(self) -> dict[str, str]:
        """This node's PUB and ROUTER endpoints (fixed once it has started)."""
        return self._bus.endpoints

    def get_metrics(self) -> dict[str, Any]:
        async def get() -> dict[str, Any]:
            return self._bus.get_metrics()

        return self._run(get())


class Publisher:
    """A publisher bound to one topic: ``pub(payload)``, blocking."""

    __slots__ = ("_bus", "topic")

    def __init__(self, bus: EventBus, topic: str) -> None:
        self._bus = bus
        self.topic = topic

    def publish(self, payload: Any, *, metadata: Mapping[str, Any] | None = None) -> Event:
        return self._bus.publish(self.topic, payload, metadata=metadata)

    __call__ = publish


class Subscription:
    """A subscription of the sync bus: cancel it, read its counters, or iterate it.

    Without a handler, ``for event in sub`` (or ``sub.get(timeout)``) takes its events in the
    caller's thread; ``sub(func)`` (the decorator form) makes ``func`` its handler instead.
    """

    def __init__(self, bus: EventBus, subscription: AsyncSubscription) -> None:
        self._bus = bus
        self._sub = subscription

    @property
    def pattern(self) -> str:
        return self._sub.pattern

    @property
    def handler(self) -> Handler | None:
        return self._sub.handler

    @property
    def durable(self) -> str | None:
        return self._sub.durable

    @property
    def closed(self) -> bool:
        return self._sub.closed

    @property
    def delivered(self) -> int:
        return self._sub.delivered

    @property
    def pending(self) -> int:
        return self._sub.pending

    @property
    def errors(self) -> int:
        return self._sub.errors

    @property
    def dropped(self) -> int:
        return self._sub.dropped

    @property
    def filtered(self) -> int:
        return self._sub.filtered

    def __call__(self, arg: Any) -> Any:
        """Decorator use: ``sub(func)`` makes ``func`` the handler and returns ``self``.

        On a subscription that has a handler, ``sub(event)`` calls the handler directly.
        """
        if self._sub.handler is not None:
            return self._sub(arg)

        async def set_handler() -> None:
            self._sub(arg)  # starts the worker, which needs the loop

        self._bus._run(set_handler())
        return self

    def cancel(self) -> None:
        """Stop receiving and wait until the handler has stopped. Idempotent."""
        if not self._bus._closed:  # closing the bus cancelled it already
            self._bus.unsubscribe(self)

    def get(self, timeout: float | None = None) -> Event:
        """The next event, within ``timeout`` seconds (default: the bus's ``call_timeout``)."""
        limit = self._bus._timeout if timeout is None else timeout
        self._check_iterable()

        async def get() -> Event:
            try:
                return await self._sub.get(limit)
            except TimeoutError:
                raise SyncTimeout(f"no event on {self.pattern!r} within {limit:g}s") from None
            except StopAsyncIteration:
                raise AlreadyClosed("subscription is cancelled") from None

        return self._bus._run(get(), timeout=limit + _GRACE)

    def __iter__(self) -> Iterator[Event]:
        self._check_iterable()
        return self

    def __next__(self) -> Event:
        self._check_iterable()

        async def next_event() -> Event | None:
            try:
                return await anext(self._sub)
            except StopAsyncIteration:
                return None

        try:
            event = self._bus._run(next_event(), timeout=_NO_LIMIT)
        except AlreadyClosed:  # the bus closed: so did this subscription
            raise StopIteration from None
        if event is None:
            raise StopIteration
        return event

    def _check_iterable(self) -> None:
        if self._sub.handler is not None:
            raise TypeError("a subscription with a handler cannot also be iterated")

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()

    def __repr__(self) -> str:
        return repr(self._sub)


def _method_name(coro: Coroutine[Any, Any, Any]) -> str:
    """``EventBus.publish()`` for the coroutine of that method or of a helper it defined."""
    qualname: str = getattr(coro, "__qualname__", "")
    name = qualname.split(".<locals>")[0]
    if name.endswith(".__next__"):
        return "iterating a Subscription"
    return f"{name}()" if name else "a method"


def _on_bus_thread(what: str) -> str:
    return (
        f"frys_zmq.sync: {what} on the bus's own thread (in a handler?) would wait for "
        "itself until call_timeout; inside handlers use the asyncio API instead: an "
        "async def handler that awaits the methods of bus.async_bus"
    )
