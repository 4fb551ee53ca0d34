"""One node of ``frys-zmq demo``: ``python -m frys_zmq._demo_agent``.

The agent embeds an ``EventBus`` and talks to the demo over JSON lines: commands on stdin,
reports on stdout. It never forwards events one by one; it checks them itself (exactly once,
per-publisher order, latency) and sends counters, so a large log replays at bus speed.

Commands: ``subscribe {patterns: {pattern: expected}}``, ``events {events: [[t, p, m]...]}``
(appends to this node's share), ``wait_peers {n, timeout}``, ``go {rate}``, ``report``, ``quit``.
Messages out (key ``t``): ``started``, ``ok``, ``peers``, ``progress``, ``published``,
``complete``, ``report``, ``error``, ``failed`` (publishing broke off).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections import Counter
from typing import Any

from ._bus import EventBus
from ._config import EventBusConfig
from ._errors import FrysError
from ._event import Event

__all__ = ["main"]

#: Latency samples a node reports at most (evenly strided), to keep reports small.
MAX_SAMPLES = 20_000
#: Seconds between progress reports.
PROGRESS_INTERVAL = 0.2
#: Publishes between yields to the event loop, so sockets and progress keep moving.
YIELD_EVERY = 64
#: Longest JSON line the agent accepts (the demo sends events in chunks well below this).
LINE_LIMIT = 64 * 1024 * 1024


class Tally:
    """Checks and counts what one subscription receives."""

    def __init__(self, agent: Agent, pattern: str, expected: int) -> None:
        self.agent = agent
        self.pattern = pattern
        self.expected = expected
        self.received = 0  #: distinct events
        self.duplicates = 0  #: an event (source, incarnation, seq) seen again
        self.out_of_order = 0  #: an event older than one already seen from its publisher
        self.topics: Counter[str] = Counter()
        self.latency_ns: list[int] = []
        self.first_ns = 0
        self.last_ns = 0
        self._seen: dict[tuple[str, int], set[int]] = {}
        self._last: dict[tuple[str, int], int] = {}

    def __call__(self, event: Event) -> None:
        now = time.time_ns()
        stream = (event.source, event.incarnation)
        seen = self._seen.get(stream)
        if seen is None:
            seen = self._seen[stream] = set()
        if event.seq in seen:
            self.duplicates += 1
            return
        seen.add(event.seq)
        if event.seq < self._last.get(stream, 0):
            self.out_of_order += 1
        else:
            self._last[stream] = event.seq
        self.received += 1
        self.topics[event.topic] += 1
        self.latency_ns.append(now - event.timestamp_ns)
        if not self.first_ns:
            self.first_ns = now
        self.last_ns = now
        self.agent.on_receipt()

    def report(self) -> dict[str, Any]:
        return {
            "pattern": self.pattern,
            "expected": self.expected,
            "received": self.received,
            "duplicates": self.duplicates,
            "out_of_order": self.out_of_order,
            "topics": dict(self.topics),
            "publishers": len(self._seen),
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
        }


class Agent:
    """The node's side of the demo protocol."""

    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.tallies: list[Tally] = []
        self.events: list[tuple[str, Any, dict[str, Any]]] = []
        self.expected = 0
        self.received = 0
        self.published = 0
        self.publish_start_ns = 0
        self.publish_end_ns = 0
        self.gaps: list[dict[str, Any]] = []
        self._complete_sent = False
        self._publisher: asyncio.Task[None] | None = None

    @staticmethod
    def emit(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
        sys.stdout.flush()

    def on_receipt(self) -> None:
        self.received += 1
        if self.received == self.expected and not self._complete_sent:
            self._complete_sent = True
            self.emit({"t": "complete", "received": self.received})

    def on_gap(self, event: Event) -> None:
        self.gaps.append(dict(event.payload))

    async def progress(self) -> None:
        last: tuple[int, int] = (-1, -1)
        while True:
            now = (self.received, self.published)
            if now != last:
                self.emit({"t": "progress", "received": now[0], "published": now[1]})
                last = now
            await asyncio.sleep(PROGRESS_INTERVAL)

    async def publish_all(self, rate: float) -> None:
        bus = self.bus
        self.publish_start_ns = time.time_ns()
        start = time.monotonic()
        for i, (topic, payload, metadata) in enumerate(self.events):
            await bus.publish(topic, payload, metadata=metadata)
            self.published += 1
            if rate > 0:
                ahead = start + (i + 1) / rate - time.monotonic()
                if ahead > 0:
                    await asyncio.sleep(ahead)
            elif i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
        self.publish_end_ns = time.time_ns()
        self.emit({"t": "published", "count": self.published})

    def report(self) -> dict[str, Any]:
        latency: list[int] = []
        for tally in self.tallies:
            latency.extend(tally.latency_ns)
        if len(latency) > MAX_SAMPLES:
            latency.sort()
            step = len(latency) / MAX_SAMPLES
            latency = [latency[int(i * step)] for i in range(MAX_SAMPLES)]
        metrics = self.bus.get_metrics()
        keys = (
            "received",
            "duplicates",
            "repaired",
            "gaps",
            "gap_events",
            "nacks_sent",
            "replays_served",
            "send_dropped",
            "bad_messages",
            "handler_errors",
        )
        return {
            "t": "report",
            "node_id": self.bus.node_id,
            "subscriptions": [t.report() for t in self.tallies],
            "latency_us": [ns // 1000 for ns in latency],
            "published": self.published,
            "publish_start_ns": self.publish_start_ns,
            "publish_end_ns": self.publish_end_ns,
            "gaps": self.gaps,
            "metrics": {k: metrics[k] for k in keys if k in metrics},
        }

    async def command(self, msg: dict[str, Any]) -> bool:
        """Run one command; False means quit."""
        cmd = msg.get("cmd")
        if cmd == "subscribe":
            for pattern, expected in msg["patterns"].items():
                tally = Tally(self, pattern, int(expected))
                self.tallies.append(tally)
                self.bus.subscribe(pattern, tally)
                self.expected += tally.expected
            self.emit({"t": "ok", "cmd": cmd})
        elif cmd == "events":
            self.events.extend((t, p, m) for t, p, m in msg["events"])
            self.emit({"t": "ok", "cmd": cmd, "count": len(self.events)})
        elif cmd == "wait_peers":
            peers = await self.bus.wait_for_peers(int(msg["n"]), float(msg["timeout"]))
            self.emit({"t": "peers", "peers": sorted(p.node_id for p in peers)})
        elif cmd == "go":
            if self.expected == 0 and not self._complete_sent:
                self._complete_sent = True
                self.emit({"t": "complete", "received": 0})
            self._publisher = asyncio.get_running_loop().create_task(
                self.publish_all(float(msg.get("rate") or 0))
            )
            self._publisher.add_done_callback(self._published)
        elif cmd == "report":
            self.emit(self.report())
        elif cmd == "quit":
            return False
        else:
            raise ValueError(f"unknown command {cmd!r}")
        return True

    def _published(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.emit({"t": "failed", "error": f"publishing failed: {type(exc).__name__}: {exc}"})

    async def aclose(self) -> None:
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._publisher


async def _run(ns: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    interface = None if ns.interface in (None, "", "all") else ns.interface
    config = EventBusConfig.load(node_id=ns.node_id, cluster=ns.cluster, interface=interface)
    async with EventBus(config) as bus:
        agent = Agent(bus)
        bus.subscribe("$frys.gap", agent.on_gap)
        agent.emit({"t": "started", "node_id": bus.node_id, **bus.endpoints})
        progress = loop.create_task(agent.progress())
        stopped = loop.create_task(stop.wait())
        try:
            while True:
                line_task = loop.create_task(reader.readline())
                await asyncio.wait({line_task, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not line_task.done():
                    line_task.cancel()
                    return 0
                line = line_task.result()
                if not line:  # the demo went away: stdin closed
                    return 0
                msg = json.loads(line)
                try:
                    if not await agent.command(msg):
                        return 0
                except (FrysError, ValueError, KeyError, TypeError) as exc:
                    agent.emit(
                        {
                            "t": "error",
                            "cmd": msg.get("cmd"),
                            "error": f"{type(exc).__name__}: {exc}",
                        }
                    )
        finally:
            for task in (progress, stopped):
                task.cancel()
            await asyncio.gather(progress, stopped, return_exceptions=True)
            await agent.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m frys_zmq._demo_agent")
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--interface", default="127.0.0.1")
    ns = parser.parse_args(argv)
    try:
        code = asyncio.run(_run(ns))
    except FrysError as exc:
        Agent.emit({"t": "error", "cmd": "start", "error": f"{type(exc).__name__}: {exc}"})
        code = 1
    raise SystemExit(code)


if __name__ == "__main__":
    main()
