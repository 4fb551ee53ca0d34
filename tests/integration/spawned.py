"""Helpers for tests that drive spawned node processes (``frys_zmq.testing.NodeProcess``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from frys_zmq.testing import NodeProcess

#: Short heartbeats and ttl, so membership changes show within a second.
FAST = ["--heartbeat", "0.2", "--ttl", "1.0"]


async def wait_until(
    probe: Callable[[], Awaitable[Any]], done: Callable[[Any], bool], timeout: float = 60.0
) -> Any:
    """Poll ``probe()`` (a coroutine) until ``done(result)``; return the result."""
    async with asyncio.timeout(timeout):
        while True:
            result = await probe()
            if done(result):
                return result
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def node(*args: Any, **kw: Any) -> AsyncIterator[NodeProcess]:
    """A started ``NodeProcess``, closed (or killed) on the way out."""
    proc = NodeProcess(*args, **kw)
    try:
        await proc.start()
        yield proc
    finally:
        await proc.aclose()
