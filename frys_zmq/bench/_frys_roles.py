"""The child roles that run frys nodes: subscriber, publisher, mesh node, server and client.

Each node binds 127.0.0.1 and finds its peers through ``EventBus.connect`` on the endpoints
the coordinator hands it (no mDNS), so set-up time stays out of the figures.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any

from ._child import Pipe, Role, Stop, rss_mb
from ._constants import BATCH, HEARTBEAT, LOOPBACK
from ._report import percentiles
from ._workloads import WORKLOADS, Complex, Tally, Workload, paced

__all__ = ["ROLES"]


async def _frys_sub(p: dict[str, Any], pipe: Pipe) -> None:
    wl = WORKLOADS[p["workload"]]()
    tally = Tally(p["count"])
    done = asyncio.Event()
    gaps: list[Any] = []
    async with _frys_bus(p) as bus:
        if isinstance(wl, Complex):
            _subscribe_complex(bus, wl, tally, done)
        else:
            handle = wl.handle

            async def on_event(event: Any) -> None:
                # Latency from the payload's stamp, taken before publish as in the baseline.
                if tally.add(handle(event.payload, event.metadata), event.payload["ts"]):
                    done.set()

            bus.subscribe("bench.>", on_event)
        bus.subscribe("$frys.gap", lambda event: gaps.append(dict(event.payload)))
        churn = _count_peer_events(bus)
        pipe.emit("ready", endpoint=bus.endpoints["router"])
        await pipe.arecv("go")
        await _wait_tally(done, [tally], p["idle_s"], p["max_s"])
        metrics = _bench_metrics(bus)
    result: dict[str, Any] = {
        "tally": tally.summary(),
        "metrics": metrics,
        "peer_events": dict(churn),
        "rss_mb": rss_mb(),
    }
    if gaps:
        result["gaps"] = gaps[:10]
    if isinstance(wl, Complex):
        result["passed_filter"] = wl.passed
    pipe.emit("result", **result)
    pipe.wait_stop()


async def _frys_pub(p: dict[str, Any], pipe: Pipe) -> None:
    wl = WORKLOADS[p["workload"]]()
    async with _frys_bus(p) as bus:
        churn = _count_peer_events(bus)
        pipe.emit("ready", endpoint=bus.endpoints["router"])
        await _join(bus, pipe)
        pipe.emit("peered")
        await pipe.arecv("go")
        t0 = time.perf_counter()
        await _frys_publish(bus, wl, f"bench.{wl.name}", p["count"], p["mode"], p.get("rate"))
        seconds = time.perf_counter() - t0
        pipe.emit("published", count=p["count"], seconds=seconds)
        with contextlib.suppress(Stop):
            await pipe.arecv("stop")  # keep serving NACKs until the subscriber is done
        metrics = _bench_metrics(bus)
    pipe.emit("result", metrics=metrics, peer_events=dict(churn), rss_mb=rss_mb())


async def _frys_mesh(p: dict[str, Any], pipe: Pipe) -> None:
    wl = Workload()
    me = p["node_id"]
    others = [i for i in p["ids"] if i != me]
    count = p["count"]
    tallies = {i: Tally(count) for i in others}
    local = Tally(count)
    done = asyncio.Event()
    async with _frys_bus(p) as bus:

        async def on_event(event: Any) -> None:
            if event.source == me:
                local.add(event.payload["n"], event.payload["ts"])
                return
            tally = tallies[event.source]
            if tally.add(event.payload["n"], event.payload["ts"]) and all(
                t.complete for t in tallies.values()
            ):
                done.set()

        bus.subscribe("mesh.>", on_event)
        pipe.emit("ready", endpoint=bus.endpoints["router"])
        await _join(bus, pipe)
        pipe.emit("peered")
        await pipe.arecv("go")
        t0 = time.perf_counter()
        await _frys_publish(bus, wl, f"mesh.{me}", count, "batch", None)
        publish_s = time.perf_counter() - t0
        await _wait_tally(done, list(tallies.values()), p["idle_s"], p["max_s"])
        metrics = _bench_metrics(bus)
        pipe.emit(
            "result",
            tallies=[t.summary() for t in tallies.values()],
            latency_ms=percentiles([x for t in tallies.values() for x in t.lat]),
            local=local.unique,
            published=count,
            publish_s=publish_s,
            metrics=metrics,
            rss_mb=rss_mb(),
        )
        await pipe.await_stop()


async def _frys_server(p: dict[str, Any], pipe: Pipe) -> None:
    async with _frys_bus(p) as bus:

        async def echo(request: Any) -> Any:
            return request.payload

        await bus.handle_request("bench.echo", echo)
        pipe.emit("ready", endpoint=bus.endpoints["router"])
        await pipe.await_stop()
        metrics = _bench_metrics(bus)
    pipe.emit("result", metrics=metrics, rss_mb=rss_mb())


async def _frys_client(p: dict[str, Any], pipe: Pipe) -> None:
    wl = Workload()
    count = p["count"]
    async with _frys_bus(p) as bus:
        pipe.emit("ready", endpoint=bus.endpoints["router"])
        await _join(bus, pipe)
        deadline = time.monotonic() + 20
        while not (await bus.request("bench.echo", {"n": -1}, timeout=2.0)).ok:
            if time.monotonic() > deadline:
                raise RuntimeError("the server never answered")
            await asyncio.sleep(0.05)
        pipe.emit("peered")
        await pipe.arecv("go")
        lat: array.array[int] = array.array("q")
        errors: collections.Counter[str] = collections.Counter()
        numbers = iter(range(count))
        ok = 0
        attempted = 0
        timeout = p["timeout_s"]
        deadline = time.monotonic() + p["max_s"]

        async def worker() -> None:
            nonlocal ok, attempted
            for i in numbers:
                if time.monotonic() > deadline:
                    return
                attempted += 1
                payload, _ = wl.make(i)
                t = time.perf_counter_ns()
                reply = await bus.request("bench.echo", payload, timeout=timeout)
                lat.append(time.perf_counter_ns() - t)
                if reply.ok and reply.value["n"] == i:
                    ok += 1
                else:
                    errors[type(reply).__name__] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(p["in_flight"])))
        seconds = time.perf_counter() - t0
        pipe.emit(
            "result",
            ok=ok,
            attempted=attempted,
            seconds=seconds,
            latency_ms=percentiles(lat),
            errors=dict(errors),
            metrics=_bench_metrics(bus),
            rss_mb=rss_mb(),
        )
        await pipe.await_stop()


def _blocking(role: Callable[[dict[str, Any], Pipe], Coroutine[Any, Any, None]]) -> Role:
    """A coroutine role as a plain role: each child process runs one event loop."""

    def run(p: dict[str, Any], pipe: Pipe) -> None:
        asyncio.run(role(p, pipe))

    return run


#: The frys roles by name (the coordinator's ``--role`` argument).
ROLES: dict[str, Role] = {
    "frys_sub": _blocking(_frys_sub),
    "frys_pub": _blocking(_frys_pub),
    "frys_mesh": _blocking(_frys_mesh),
    "frys_server": _blocking(_frys_server),
    "frys_client": _blocking(_frys_client),
}


# ---------------------------------------------------------------------------------- helpers


def _subscribe_complex(bus: Any, wl: Complex, tally: Tally, done: asyncio.Event) -> None:
    """The complex workload through frys's own API: a chain whose first step counts every
    event (so loss is still detected), then a MetadataFilter and the three steps."""
    import frys_zmq as frys

    def count(event: Any) -> Any:
        if tally.add(event.payload["n"], event.payload["ts"]):
            done.set()
        return event

    def validate(event: Any) -> Any:
        wl.validate(event.payload)
        return event

    def enrich(event: Any) -> Any:
        event.metadata = {**event.metadata, **wl.enrich(event.payload)}
        return event

    def transform(event: Any) -> Any:
        event.payload = wl.transform(event.payload, event.metadata, event.metadata)
        return event

    chain = frys.EventProcessingChain(
        count,
        frys.MetadataFilter(region={"eu", "us"}, priority=lambda p: p >= 3),
        validate,
        enrich,
        transform,
        name="complex",
    )

    async def on_summary(event: Any) -> None:
        wl.done(event.payload)

    bus.subscribe("bench.>", on_summary, chain=chain)


def _frys_bus(params: dict[str, Any]) -> Any:
    import frys_zmq as frys

    config = frys.EventBusConfig(
        node_id=params["node_id"],
        cluster=params["cluster"],
        interface=LOOPBACK,
        discovery_strategy=frys.DiscoveryStrategy.NONE,
        heartbeat_interval=HEARTBEAT,
    )
    return frys.EventBus(config)


async def _join(bus: Any, pipe: Pipe) -> None:
    """Connect to the endpoints the coordinator sends and wait until they are all peers."""
    endpoints = (await pipe.arecv("connect"))["endpoints"]
    for endpoint in endpoints:
        await bus.connect(endpoint)
    await bus.wait_for_peers(len(endpoints), timeout=30)


async def _frys_publish(
    bus: Any, wl: Workload, topic: str, count: int, mode: str, rate: int | None, start: int = 0
) -> None:
    make = wl.make
    if rate:
        publish = bus.publish

        async def send(i: int) -> None:
            payload, metadata = make(i)
            await publish(topic, payload, metadata=metadata)

        await paced(count, rate, send, asyncio.sleep)
    elif mode == "per_event":
        publish = bus.publish
        for i in range(start, start + count):
            payload, metadata = make(i)
            await publish(topic, payload, metadata=metadata)
    else:
        end = start + count
        for lo in range(start, end, BATCH):
            await bus.publish_batch([(topic, *make(i)) for i in range(lo, min(end, lo + BATCH))])


async def _wait_tally(
    done: asyncio.Event, tallies: list[Tally], idle_s: float, max_s: float
) -> None:
    """Until ``done``, or nothing arrived for ``idle_s``, or ``max_s`` passed."""
    start = time.time_ns()
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 0.1)
        now = time.time_ns()
        last = max([t.last_ns for t in tallies] + [start])
        if now - last > idle_s * 1e9 or now - start > max_s * 1e9:
            return


def _count_peer_events(bus: Any) -> collections.Counter[str]:
    """Count the node's peer up/down events (by topic and reason) into a Counter."""
    churn: collections.Counter[str] = collections.Counter()
    bus.subscribe("$frys.peer.*", lambda event: churn.update([_churn_key(event)]))
    return churn


def _churn_key(event: Any) -> str:
    reason = event.payload.get("reason") if isinstance(event.payload, dict) else None
    return event.topic if reason is None else f"{event.topic}:{reason}"


def _bench_metrics(bus: Any) -> dict[str, Any]:
    m = bus.get_metrics()
    keys = (
        "events_published",
        "events_delivered",
        "received",
        "duplicates",
        "repaired",
        "gaps",
        "nacks_sent",
        "replays_served",
        "send_dropped",
        "bad_messages",
        "handler_errors",
    )
    return {k: m[k] for k in keys if k in m}
