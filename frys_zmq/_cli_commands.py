"""The ``frys-zmq`` commands: what each subcommand does once its arguments are parsed.

``_cli`` builds the parser and maps errors to exit codes; the functions here run one command
on the event loop and return its exit code (or raise ``CliError`` / a ``FrysError``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import ipaddress
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable
from typing import Any

from ._bus import EventBus
from ._config import EventBusConfig, validate_name
from ._discovery import Announcement, MdnsDiscovery
from ._errors import ConfigError
from ._event import Event, Reply, Request
from ._topics import pattern_matches, validate_pattern, validate_topic

__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "PROG",
    "CliError",
    "Signals",
    "cmd_demo",
    "cmd_discover",
    "cmd_node",
    "cmd_pub",
    "cmd_request",
    "cmd_sub",
    "error_line",
    "with_signals",
]

PROG = "frys-zmq"

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143


class CliError(Exception):
    """A failure the CLI reports as one line with a given exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def error_line(message: str) -> None:
    """Report ``message`` (its first line) as the one error line on stderr."""
    first = message.strip().splitlines()[0] if message.strip() else "error"
    sys.stderr.write(f"{PROG}: error: {first}\n")
    sys.stderr.flush()


class Signals:
    """SIGTERM stops a command the way Ctrl-C does, so its cleanup runs either way."""

    main: asyncio.Task[Any] | None = None
    terminated = False

    @classmethod
    def on_term(cls) -> None:
        cls.terminated = True
        if cls.main is not None:
            cls.main.cancel()

    @classmethod
    def install_term(cls) -> None:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, cls.on_term)


async def with_signals(coro: Awaitable[int]) -> int:
    Signals.terminated = False
    Signals.main = asyncio.current_task()
    Signals.install_term()
    return await coro


async def _until_interrupted(ready: str | None = None) -> int:
    """Wait for SIGINT or SIGTERM and return its exit code (130 or 143).

    The long-running commands stop cleanly on both, then exit with that code, as a command
    interrupted in the middle of its work does. ``ready`` is noted on stderr once the
    signals are caught here, so whoever waits for it may signal at once.
    """
    stop = asyncio.Event()
    code = EXIT_INTERRUPTED
    loop = asyncio.get_running_loop()

    def on_signal(exit_code: int) -> None:
        nonlocal code
        code = exit_code
        stop.set()

    loop.add_signal_handler(signal.SIGINT, on_signal, EXIT_INTERRUPTED)
    loop.add_signal_handler(signal.SIGTERM, on_signal, EXIT_TERMINATED)
    try:
        if ready is not None:
            _note(ready)
        await stop.wait()
        return code
    finally:
        loop.remove_signal_handler(signal.SIGINT)  # back to KeyboardInterrupt
        Signals.install_term()


def _interface(value: str | None) -> str | None:
    """``--interface``: an IPv4 address, or None (``all`` or empty) for every interface."""
    if value in (None, "", "all"):
        return None
    assert value is not None
    try:
        ipaddress.IPv4Address(value)
    except ValueError:
        raise ConfigError(f"--interface must be an IPv4 address or 'all', got {value!r}") from None
    return value


def _config(ns: argparse.Namespace) -> EventBusConfig:
    """The node's config: flags beat ``FRYS_*`` environment variables beat ``--config``."""
    overrides: dict[str, Any] = {}
    overrides["interface"] = _interface(ns.interface)
    if ns.cluster is not None:
        overrides["cluster"] = ns.cluster
    if getattr(ns, "node_id", None) is not None:
        overrides["node_id"] = ns.node_id
    return EventBusConfig.load(ns.config, **overrides)


# ---------------------------------------------------------------------- output


def _jsonable(obj: object) -> Any:
    if isinstance(obj, bytes | bytearray | memoryview):
        return {"$bytes": bytes(obj).hex()}
    if isinstance(obj, dt.datetime | dt.date | dt.time):
        return obj.isoformat()
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    return str(obj)


def _dumps(obj: object) -> str:
    return json.dumps(obj, default=_jsonable, ensure_ascii=False)


def _print(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _note(text: str) -> None:
    sys.stderr.write(f"{PROG}: {text}\n")
    sys.stderr.flush()


class _Once:
    """Lets each event through once, though overlapping patterns deliver it to each of them."""

    def __init__(self, size: int = 65536) -> None:
        self._seen: collections.OrderedDict[tuple[str, int, int], None] = collections.OrderedDict()
        self._size = size

    def first(self, event: Event) -> bool:
        key = (event.source, event.incarnation, event.seq)
        if key in self._seen:
            return False
        self._seen[key] = None
        if len(self._seen) > self._size:
            self._seen.popitem(last=False)
        return True


def event_json(event: Event) -> str:
    """One event as the JSON line ``node`` and ``sub`` print."""
    return _dumps(
        {
            "topic": event.topic,
            "payload": event.payload,
            "metadata": dict(event.metadata),
            "source": event.source,
            "seq": event.seq,
        }
    )


# ---------------------------------------------------------------------- node


async def cmd_node(ns: argparse.Namespace) -> int:
    for pattern in ns.subscribe:
        validate_pattern(pattern, allow_system=False)
    for topic in ns.serve:
        validate_pattern(topic, allow_system=False)
    once = _Once()

    def on_event(event: Event) -> None:
        if once.first(event):
            _print(event_json(event))

    async with EventBus(_config(ns)) as bus:
        for pattern in ns.subscribe:
            bus.subscribe(pattern, on_event)

        async def echo(req: Request) -> Any:
            return req.payload

        for topic in ns.serve:
            await bus.handle_request(topic, echo)
        bus.subscribe("$frys.peer.>", _peer_note)
        bus.subscribe("$frys.gap", lambda e: _note(f"lost events: {_dumps(e.payload)}"))
        ep = bus.endpoints
        code = await _until_interrupted(
            f"node {bus.node_id} in cluster {bus.config.cluster}: pub {ep.get('pub')}, "
            f"router {ep.get('router')}"
            + (f", serving {', '.join(ns.serve)}" if ns.serve else "")
            + "; Ctrl-C to stop"
        )
        _note(f"node {bus.node_id} leaving")
    return code


def _peer_note(event: Event) -> None:
    p = event.payload if isinstance(event.payload, dict) else {}
    what = "joined" if event.topic.endswith("joined") else f"left ({p.get('reason', '?')})"
    _note(f"peer {p.get('node_id')} {what} at {p.get('address')}:{p.get('router_port')}")


# ---------------------------------------------------------------------- discover


class _Seen:
    """Nodes found by ``discover`` with the time each was first seen."""

    def __init__(self) -> None:
        self.nodes: dict[tuple[str, str], tuple[Announcement, float]] = {}
        self.changed = asyncio.Event()

    def found(self, ann: Announcement) -> str | None:
        key = (ann.node_id, ann.cluster)
        old = self.nodes.get(key)
        if old is not None and old[0] == ann:
            return None
        self.nodes[key] = (ann, old[1] if old is not None else time.monotonic())
        self.changed.set()
        return "found" if old is None else "updated"

    def removed(self, node_id: str, cluster: str) -> bool:
        gone = self.nodes.pop((node_id, cluster), None) is not None
        if gone:
            self.changed.set()
        return gone

    def rows(self, now: float) -> list[dict[str, Any]]:
        return [
            _node_dict(ann, now - first)
            for ann, first in sorted(
                self.nodes.values(), key=lambda v: (v[0].cluster, v[0].node_id)
            )
        ]


def _node_dict(ann: Announcement, age: float) -> dict[str, Any]:
    return {
        "node_id": ann.node_id,
        "cluster": ann.cluster,
        "address": ann.address,
        "pub_port": ann.pub_port,
        "router_port": ann.router_port,
        "version": ann.version,
        "incarnation": ann.incarnation,
        "age_s": round(age, 3),
    }


def format_nodes(rows: list[dict[str, Any]]) -> str:
    """The ``discover`` table."""
    if not rows:
        return "no frys nodes found"
    head = ["NODE", "CLUSTER", "ADDRESS", "PUB", "ROUTER", "VERSION", "AGE"]
    body = [
        [
            r["node_id"],
            r["cluster"],
            r["address"],
            str(r["pub_port"]),
            str(r["router_port"]),
            _version_text(r["version"]),
            f"{r['age_s']:.1f}s",
        ]
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in [head, *body]
    )


def _version_text(version: int) -> str:
    return f"{version // 100}.{version % 100}"


async def cmd_discover(ns: argparse.Namespace) -> int:
    interface = _interface(ns.interface)
    cluster: str | None = None
    if not ns.all_clusters:
        cluster = validate_name(
            ns.cluster or os.environ.get("FRYS_CLUSTER") or "default", "cluster"
        )
    timeout = ns.timeout if ns.timeout is not None else (None if ns.watch else 3.0)
    seen = _Seen()
    # Nodes of the other clusters: the browser sees them anyway, and when --cluster finds
    # too few they tell the user where the nodes are.
    elsewhere = _Seen()

    def on_found(ann: Announcement) -> None:
        if cluster is not None and ann.cluster != cluster:
            elsewhere.found(ann)
            return
        change = seen.found(ann)
        if ns.watch and change is not None:
            _watch_line(ns.json, change, _node_dict(ann, 0.0))

    def on_removed(node_id: str, cluster_name: str) -> None:
        if cluster is not None and cluster_name != cluster:
            elsewhere.removed(node_id, cluster_name)
        elif seen.removed(node_id, cluster_name) and ns.watch:
            _watch_line(ns.json, "removed", {"node_id": node_id, "cluster": cluster_name})

    discovery = MdnsDiscovery(interface=interface, on_found=on_found, on_removed=on_removed)
    await discovery.start(own=None)
    code = EXIT_OK  # --watch: unless a signal stopped it before --timeout ran out
    try:
        if ns.watch:
            if not ns.json:
                _note(
                    f"watching for frys nodes in {cluster or 'all clusters'} on "
                    f"{interface or 'all interfaces'}; Ctrl-C to stop"
                )
            if timeout is None:
                code = await _until_interrupted()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        code = await _until_interrupted()
        else:
            await _wait_seen(seen, ns.expect, timeout)
    finally:
        await discovery.aclose()
    if ns.watch:
        return code
    rows = seen.rows(time.monotonic())
    short = len(rows) < (ns.expect or 1)
    hint = _elsewhere_hint(elsewhere) if cluster is not None and short else None
    if ns.json:
        _print(_dumps(rows))
    elif rows:
        _print(format_nodes(rows))
    else:
        _print(f"no frys nodes found in cluster {cluster!r}" if cluster else format_nodes(rows))
    if ns.expect is not None and len(rows) < ns.expect:
        where = f" in cluster {cluster!r}" if cluster else ""
        raise CliError(
            f"found {len(rows)} of {ns.expect} nodes{where} within {timeout:g}s"
            + (f"; {hint}" if hint else ""),
            EXIT_TIMEOUT,
        )
    if hint:
        _note(hint)
    return EXIT_OK


def _elsewhere_hint(elsewhere: _Seen) -> str | None:
    """Where the nodes are when ``--cluster`` found none: a hint at the flags, or None."""
    if not elsewhere.nodes:
        return None
    clusters = sorted({c for _, c in elsewhere.nodes})
    names = ", ".join(clusters[:5]) + (
        f" and {len(clusters) - 5} more" if len(clusters) > 5 else ""
    )
    one = clusters[0] if len(clusters) == 1 else "NAME"
    return (
        f"{len(elsewhere.nodes)} node(s) found in other clusters ({names}): "
        f"try --cluster {one} or --all-clusters"
    )


async def _wait_seen(seen: _Seen, expect: int | None, limit_s: float | None) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(limit_s):
            while expect is None or len(seen.nodes) < expect:
                seen.changed.clear()
                await seen.changed.wait()


def _watch_line(as_json: bool, change: str, row: dict[str, Any]) -> None:
    if as_json:
        _print(_dumps({"change": change, **row}))
        return
    stamp = time.strftime("%H:%M:%S")
    if change == "removed":
        _print(f"{stamp} - {row['node_id']}@{row['cluster']} left")
        return
    mark = "+" if change == "found" else "~"
    _print(
        f"{stamp} {mark} {row['node_id']}@{row['cluster']} {row['address']} "
        f"pub {row['pub_port']} router {row['router_port']} "
        f"v{_version_text(row['version'])}"
    )


# ---------------------------------------------------------------------- pub / sub / request


async def _wait_peers(bus: EventBus, n: int, limit_s: float) -> list[str]:
    if n <= 0:
        return []
    peers = await bus.wait_for_peers(n, limit_s)
    return sorted(p.node_id for p in peers)


async def cmd_pub(ns: argparse.Namespace) -> int:
    validate_topic(ns.topic)
    async with EventBus(_config(ns)) as bus:
        peers = await _wait_peers(bus, ns.wait_peers, ns.wait_timeout)
        if not peers:  # --wait-peers 0: whoever happens to be ready already
            peers = sorted(p.node_id for p in bus.peers() if p.ready)
        first = last = 0
        for i in range(ns.count):
            event = await bus.publish(ns.topic, ns.payload, metadata=ns.metadata)
            last = event.seq
            if i == 0:
                first = event.seq
        # Peers that missed an event ask for it again (NACK) while we are still here;
        # closing then sends BYE with our last seq, so a loss is reported, never silent.
        if ns.linger > 0 and ns.wait_peers > 0:
            await asyncio.sleep(ns.linger)
        if ns.json:
            _print(
                _dumps(
                    {
                        "topic": ns.topic,
                        "count": ns.count,
                        "first_seq": first,
                        "last_seq": last,
                        "node_id": bus.node_id,
                        "peers": peers,
                    }
                )
            )
        else:
            # Ready peers, not receivers: which of them subscribe only they know, and peers
            # that meet this node while it is still up get the events too.
            waited = "" if ns.wait_peers > 0 else "without waiting for peers; "
            _note(
                f"published {ns.count} event(s) on {ns.topic} (seq {first}..{last}), "
                f"{waited}{len(peers)} peer(s) ready when publishing"
                + (f": {', '.join(peers)}" if peers else "")
            )
    return EXIT_OK


async def cmd_sub(ns: argparse.Namespace) -> int:
    for pattern in ns.patterns:
        validate_pattern(pattern, allow_system=False)
    done = asyncio.Event()
    once = _Once()
    count = 0

    def on_event(event: Event) -> None:
        nonlocal count
        if done.is_set() or not once.first(event):
            return
        count += 1
        _print(event_json(event))
        if ns.count is not None and count >= ns.count:
            done.set()

    bus = EventBus(_config(ns))
    # Subscribe before start, so no event that reaches the node can be missed.
    for pattern in ns.patterns:
        bus.subscribe(pattern, on_event)
    async with bus:
        waiter = asyncio.ensure_future(done.wait())
        stopper = asyncio.ensure_future(
            _until_interrupted(
                f"node {bus.node_id} in cluster {bus.config.cluster} subscribed to "
                f"{' '.join(ns.patterns)}"
            )
        )
        try:
            await asyncio.wait(
                {waiter, stopper}, timeout=ns.timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (waiter, stopper):
                task.cancel()
            await asyncio.gather(waiter, stopper, return_exceptions=True)
    if stopper.done() and not stopper.cancelled():
        return stopper.result()  # stopped by a signal: 130 or 143
    if ns.count is not None and count < ns.count:
        raise CliError(f"received {count} of {ns.count} events", EXIT_TIMEOUT)
    return EXIT_OK


async def cmd_request(ns: argparse.Namespace) -> int:
    validate_topic(ns.topic)
    async with EventBus(_config(ns)) as bus:
        await _wait_peers(bus, ns.wait_peers, ns.wait_timeout)
        if ns.wait_peers > 0:
            await _wait_server(bus, ns.topic, ns.wait_timeout)
        reply = await bus.request(ns.topic, ns.payload, timeout=ns.timeout, metadata=ns.metadata)
    match reply:
        case Reply.Success(value=value, responder=responder):
            _print(
                _dumps({"ok": True, "value": value, "responder": responder})
                if ns.json
                else _dumps(value)
            )
            return EXIT_OK
        case Reply.Error(error=error, responder=responder):
            if ns.json:
                _print(
                    _dumps(
                        {
                            "ok": False,
                            "error": str(error),
                            "type": type(error).__name__,
                            "responder": responder,
                        }
                    )
                )
            raise CliError(f"request {ns.topic} failed: {error}", EXIT_FAILURE)
        case _:
            if ns.json:
                _print(_dumps({"ok": False, "error": "timeout", "timeout": ns.timeout}))
            raise CliError(f"no reply to {ns.topic} within {ns.timeout:g}s", EXIT_TIMEOUT)


async def _wait_server(bus: EventBus, topic: str, limit_s: float) -> None:
    """Give peers' HELLOs and heartbeats a moment to tell us who serves ``topic``."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if any(
            topic in p.served or any(pattern_matches(s, topic) for s in p.served)
            for p in bus.peers()
        ):
            return
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------------- demo


async def cmd_demo(ns: argparse.Namespace) -> int:
    from ._demo import DemoOptions, format_summary, parse_subscribe_overrides, run_demo

    interface = _interface(ns.interface)
    opts = DemoOptions(
        nodes=ns.nodes,
        input=ns.input,
        limit=ns.limit,
        interface=interface,
        cluster=ns.cluster,
        publishers=ns.publishers,
        rate=ns.rate,
        timeout=ns.timeout,
        peer_timeout=ns.peer_timeout,
        subscribe=parse_subscribe_overrides(ns.subscribe),
        progress=not ns.quiet,
    )
    summary = await run_demo(opts, progress=sys.stderr)
    _print(json.dumps(summary, indent=2) if ns.json else format_summary(summary))
    if not summary["ok"]:
        what = "timed out" if summary["timed_out"] else "failed"
        error_line(
            f"demo {what}: lost {summary['lost']}, duplicates {summary['duplicates']}, "
            f"out of order {summary['out_of_order']}"
        )
        return EXIT_FAILURE
    return EXIT_OK
