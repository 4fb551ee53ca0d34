"""A synchronous facade for scripts and REPLs.

The asyncio ``EventBus`` runs on a private thread with its own loop; every call here hands
work to that loop and waits with a timeout, raising ``SyncTimeout`` when it runs out. The
caller's own event loop (if any) is never blocked by the bus's work.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any, TypeVar

from ._bus import EventBus as AsyncEventBus
from ._config import EventBusConfig
from ._dispatch import Subscription
from ._errors import AlreadyClosed, SyncTimeout
from ._event import Event, Reply
from ._peers import PeerInfo

__all__ = ["EventBus"]

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0


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
        self._closed = False

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if self._closed:
            coro.close()
            raise AlreadyClosed("EventBus is closed")
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        wait = self._timeout if timeout is None else timeout
        try:
            return fut.result(wait)
        except TimeoutError:
            fut.cancel()
            raise SyncTimeout(f"call did not finish within {wait:g}s") from None

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
        if self._closed:
            return
        if self._started:
            try:
                self._run(self._shutdown())
            finally:
                self._closed = True
                self._loop.call_soon_threadsafe(self._loop.stop)
                self._thread.join(self._timeout)
                self._loop.close()
        self._closed = True

    async def _shutdown(self) -> None:
        """Close the bus, then whatever else still runs on the private loop."""
        await self._bus.aclose()
        me = asyncio.current_task()
        rest = [t for t in asyncio.all_tasks() if t is not me]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)
        await asyncio.get_running_loop().shutdown_asyncgens()

    def __enter__(self) -> EventBus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def publish(
        self, topic: str, payload: Any = None, *, metadata: Mapping[str, Any] | None = None
    ) -> Event:
        return self._run(self._bus.publish(topic, payload, metadata=metadata))

    def publish_batch(self, events: Iterable[tuple[Any, ...]]) -> list[Event]:
        return self._run(self._bus.publish_batch(list(events)))

    def subscribe(self, pattern: str, handler: Callable[[Event], Any]) -> Subscription:
        """Subscribe; ``handler`` runs on the bus thread, so it should be quick."""

        async def make() -> Subscription:
            return self._bus.subscribe(pattern, handler)

        return self._run(make())

    def unsubscribe(self, subscription: Subscription) -> None:
        async def cancel() -> None:
            subscription.cancel()
            await subscription.wait_closed()

        self._run(cancel())

    def handle_request(self, topic: str, handler: Callable[..., Any]) -> None:
        self._run(self._bus.handle_request(topic, handler))

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
            self._bus.request(topic, payload, timeout=t, metadata=metadata), timeout=t + 5.0
        )

    send_request = request

    def peers(self) -> list[PeerInfo]:
        async def get() -> list[PeerInfo]:
            return self._bus.peers()

        return self._run(get())

    def wait_for_peers(self, n: int = 1, timeout: float = 10.0) -> list[PeerInfo]:
        return self._run(self._bus.wait_for_peers(n, timeout), timeout=timeout + 5.0)

    def get_metrics(self) -> dict[str, Any]:
        async def get() -> dict[str, Any]:
            return self._bus.get_metrics()

        return self._run(get())
