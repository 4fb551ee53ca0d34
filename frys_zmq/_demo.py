"""``frys-zmq demo``: replay a real event log through a local mesh of node processes.

The demo spawns N agents (``python -m frys_zmq._demo_agent``), each an ``EventBus`` in its
own process, all on one interface (127.0.0.1 unless told otherwise) so they find each
other by mDNS on loopback. The log is split round-robin between the publishing nodes; every
node subscribes with its own patterns (exact, ``*`` and ``>``), and the demo computes from
those patterns, with ``pattern_matches``, how many events each subscription must receive.
Agents check exactly-once and per-publisher order themselves and report counters and
latency samples; the demo prints a summary and fails if anything was lost or duplicated.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import secrets
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, TextIO

from ._config import validate_name
from ._demo_input import DemoEvent, DemoInput, default_patterns, load_input
from ._errors import ConfigError, FrysError
from ._topics import pattern_matches, validate_pattern

__all__ = ["DemoError", "DemoOptions", "format_summary", "run_demo"]

#: Events per ``events`` command sent to an agent.
CHUNK = 500
#: Seconds an agent gets to quit politely before it is killed.
QUIT_GRACE = 3.0
#: Seconds between progress lines when stderr is not a terminal.
PLAIN_PROGRESS_INTERVAL = 2.0
#: Node ids are this prefix and the node's index (``demo-0``, ``demo-1``...).
NODE_PREFIX = "demo-"


class DemoError(FrysError):
    """The demo could not run: a node failed to start or the mesh did not form."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(slots=True, kw_only=True)
class DemoOptions:
    nodes: int = 3
    input: str | None = None
    limit: int | None = None
    interface: str | None = "127.0.0.1"
    cluster: str | None = None
    publishers: int | None = None  #: None: every node publishes a share
    rate: float = 0.0  #: events per second, all publishers together; 0 is as fast as possible
    timeout: float = 60.0  #: seconds to wait for every delivery
    peer_timeout: float = 30.0  #: seconds for the nodes to start and find each other
    subscribe: dict[int, list[str]] = field(default_factory=dict)  #: overrides per node
    progress: bool = True


@dataclass(slots=True)
class _Plan:
    input: DemoInput
    topics: Counter[str]
    patterns: list[list[str]]
    expected: list[dict[str, int]]  #: per node: pattern -> events it must receive
    shares: list[list[DemoEvent]]  #: per node: events it publishes
    publishers: int


def make_plan(opts: DemoOptions) -> _Plan:
    """Read the input and decide who publishes what and who must receive how much."""
    if not 1 <= opts.nodes <= 32:
        raise ConfigError(f"--nodes must be 1..32, got {opts.nodes}")
    publishers = opts.nodes if opts.publishers is None else opts.publishers
    if not 1 <= publishers <= opts.nodes:
        raise ConfigError(f"--publishers must be 1..{opts.nodes}, got {publishers}")
    if opts.limit is not None and opts.limit < 1:
        raise ConfigError(f"--limit must be positive, got {opts.limit}")
    data = load_input(opts.input, opts.limit)
    if not data.events:
        raise ConfigError(f"no events in {data.source}")
    topics = Counter(topic for topic, _, _ in data.events)
    patterns = default_patterns(opts.nodes, topics)
    for index, override in opts.subscribe.items():
        if not 0 <= index < opts.nodes:
            raise ConfigError(
                f"--subscribe names node {index} ({NODE_PREFIX}{index}), but there are only "
                f"{opts.nodes}: {NODE_PREFIX}0..{NODE_PREFIX}{opts.nodes - 1}"
            )
        for pattern in override:
            validate_pattern(pattern, allow_system=False)
        patterns[index] = list(override)
    expected = [
        {p: sum(n for t, n in topics.items() if pattern_matches(p, t)) for p in dict.fromkeys(row)}
        for row in patterns
    ]
    shares: list[list[DemoEvent]] = [[] for _ in range(opts.nodes)]
    for i, event in enumerate(data.events):
        shares[i % publishers].append(event)
    return _Plan(data, topics, patterns, expected, shares, publishers)


class _Agent:
    """One agent process and what it has told us."""

    def __init__(self, index: int, node_id: str, changed: asyncio.Event) -> None:
        self.index = index
        self.node_id = node_id
        self.proc: asyncio.subprocess.Process | None = None
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.received = 0
        self.published = 0
        self.complete = False
        self.published_all = False
        self.failed: str | None = None
        self.stderr: collections.deque[str] = collections.deque(maxlen=20)
        self._changed = changed
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, cluster: str, interface: str | None) -> None:
        args = [
            sys.executable,
            "-m",
            "frys_zmq._demo_agent",
            "--node-id",
            self.node_id,
            "--cluster",
            cluster,
            "--interface",
            interface or "all",
        ]
        # A session of its own: Ctrl-C reaches only the demo, which then stops the agents
        # in order. If the demo dies hard, an agent sees its stdin close and quits.
        self.proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            limit=64 * 1024 * 1024,
        )
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._read()), loop.create_task(self._read_err())]

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                self.stderr.append(line.decode(errors="replace").rstrip())
                continue
            kind = msg.get("t")
            if kind == "progress":
                self.received = msg["received"]
                self.published = msg["published"]
            elif kind == "complete":
                self.received = max(self.received, msg["received"])
                self.complete = True
            elif kind == "published":
                self.published = msg["count"]
                self.published_all = True
            elif kind == "failed":
                self.failed = str(msg.get("error"))
            else:
                self.replies.put_nowait(msg)
            self._changed.set()
        self.replies.put_nowait({"t": "error", "error": "exited"})
        self._changed.set()

    async def _read_err(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.stderr.append(line.decode(errors="replace").rstrip())

    async def send(self, obj: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(obj).encode() + b"\n")
        await self.proc.stdin.drain()

    async def expect(self, kind: str, limit_s: float) -> dict[str, Any]:
        """The next reply, which must be ``kind``; raise DemoError on an error or timeout."""
        try:
            msg = await asyncio.wait_for(self.replies.get(), limit_s)
        except TimeoutError:
            raise DemoError(f"{self.node_id}: no {kind!r} within {limit_s:g}s", 3) from None
        if msg.get("t") != kind:
            detail = msg.get("error") or msg
            tail = f" ({self.stderr[-1]})" if self.stderr else ""
            code = 3 if "PeerWaitTimeout" in str(detail) else 1
            raise DemoError(f"{self.node_id}: {detail}{tail}", code)
        return msg

    async def stop(self) -> None:
        """Ask the agent to quit; kill it if it does not within the grace period."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.send({"cmd": "quit"})
            try:
                await asyncio.wait_for(proc.wait(), QUIT_GRACE)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if proc.stdin is not None:
            proc.stdin.close()
            with contextlib.suppress(ConnectionError):
                await proc.stdin.wait_closed()

    def kill_now(self) -> None:
        """Last resort, synchronous: used when the event loop cannot run cleanup."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()


class _Progress:
    """One line on stderr: rewritten in place on a terminal, every few seconds otherwise."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream
        self._tty = stream is not None and stream.isatty()
        self._last_plain = 0.0
        self._width = 0

    def show(self, text: str, *, force: bool = False) -> None:
        if self._stream is None:
            return
        if self._tty:
            pad = max(0, self._width - len(text))
            self._stream.write("\r" + text + " " * pad)
            self._width = len(text)
        else:
            now = time.monotonic()
            if not force and now - self._last_plain < PLAIN_PROGRESS_INTERVAL:
                return
            self._last_plain = now
            self._stream.write(text + "\n")
        self._stream.flush()

    def done(self) -> None:
        if self._stream is not None and self._tty and self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0


async def run_demo(opts: DemoOptions, *, progress: TextIO | None = None) -> dict[str, Any]:
    """Run the demo; return its summary (``summary["ok"]`` says whether nothing was lost)."""
    plan = make_plan(opts)
    cluster = opts.cluster or f"demo-{secrets.token_hex(4)}"
    validate_name(cluster, "cluster")
    show = _Progress(progress if opts.progress else None)
    changed = asyncio.Event()
    agents = [_Agent(i, f"{NODE_PREFIX}{i}", changed) for i in range(opts.nodes)]
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        show.show(
            f"starting {opts.nodes} nodes on {opts.interface or 'all interfaces'}...", force=True
        )
        await asyncio.gather(*(a.start(cluster, opts.interface) for a in agents))
        await asyncio.gather(*(a.expect("started", opts.peer_timeout) for a in agents))
        timings["start_s"] = time.monotonic() - t0
        for agent in agents:
            await agent.send({"cmd": "subscribe", "patterns": plan.expected[agent.index]})
            share = plan.shares[agent.index]
            for i in range(0, len(share), CHUNK):
                await agent.send({"cmd": "events", "events": share[i : i + CHUNK]})
        for agent in agents:
            await agent.expect("ok", opts.peer_timeout)
            for _ in range(0, len(plan.shares[agent.index]), CHUNK):
                await agent.expect("ok", opts.peer_timeout)
        show.show("nodes started; waiting for mDNS discovery and HELLOs...", force=True)
        for agent in agents:
            await agent.send(
                {"cmd": "wait_peers", "n": opts.nodes - 1, "timeout": opts.peer_timeout}
            )
        await asyncio.gather(*(a.expect("peers", opts.peer_timeout + 5) for a in agents))
        timings["mesh_s"] = time.monotonic() - t0
        t_go = time.monotonic()
        for agent in agents:
            await agent.send({"cmd": "go", "rate": opts.rate / plan.publishers})
        timed_out = not await _wait_delivered(agents, plan, opts.timeout, changed, show)
        timings["replay_s"] = time.monotonic() - t_go
        show.done()
        for agent in agents:
            await agent.send({"cmd": "report"})
        reports = await asyncio.gather(*(a.expect("report", 30) for a in agents))
    except BaseException:
        show.done()
        raise
    finally:
        try:
            await asyncio.shield(
                asyncio.gather(*(a.stop() for a in agents), return_exceptions=True)
            )
        finally:
            for agent in agents:
                agent.kill_now()
    timings["total_s"] = time.monotonic() - t0
    return _summary(opts, plan, cluster, reports, timings, timed_out)


async def _wait_delivered(
    agents: list[_Agent],
    plan: _Plan,
    limit_s: float,
    changed: asyncio.Event,
    show: _Progress,
) -> bool:
    """Wait until every agent published its share and received what it must; False on timeout."""
    to_publish = len(plan.input.events)
    to_deliver = sum(sum(e.values()) for e in plan.expected)
    start = time.monotonic()
    deadline = start + limit_s
    while True:
        published = sum(a.published for a in agents)
        delivered = sum(a.received for a in agents)
        pct = 100.0 * delivered / to_deliver if to_deliver else 100.0
        show.show(
            f"published {published}/{to_publish}  delivered {delivered}/{to_deliver} "
            f"({pct:.0f}%)  {time.monotonic() - start:.1f}s"
        )
        if all(a.complete and a.published_all for a in agents):
            return True
        for agent in agents:
            if agent.failed:
                raise DemoError(f"{agent.node_id}: {agent.failed}")
        if any(a.proc is not None and a.proc.returncode is not None for a in agents):
            dead = [a.node_id for a in agents if a.proc and a.proc.returncode is not None]
            raise DemoError(f"node process(es) {', '.join(dead)} exited during the replay")
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), min(left, 0.25))


def _percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return 0.0
    return float(sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))])


def _summary(
    opts: DemoOptions,
    plan: _Plan,
    cluster: str,
    reports: list[dict[str, Any]],
    timings: dict[str, float],
    timed_out: bool,
) -> dict[str, Any]:
    nodes: list[dict[str, Any]] = []
    delivered_by_topic: Counter[str] = Counter()
    latency: list[int] = []
    totals = Counter[str]()
    for index, report in enumerate(reports):
        subs = report["subscriptions"]
        for sub in subs:
            sub["lost"] = max(0, sub["expected"] - sub["received"])
            delivered_by_topic.update(sub["topics"])
        node = {
            "node_id": report["node_id"],
            "published": report["published"],
            "publish_share": len(plan.shares[index]),
            "subscriptions": subs,
            **{
                k: sum(s[k] for s in subs)
                for k in ("expected", "received", "lost", "duplicates", "out_of_order")
            },
            "gaps_reported": len(report["gaps"]),
            "metrics": report["metrics"],
        }
        for k in (
            "expected",
            "received",
            "lost",
            "duplicates",
            "out_of_order",
            "gaps_reported",
            "published",
        ):
            totals[k] += node[k]
        nodes.append(node)
        latency.extend(report["latency_us"])
    latency.sort()
    starts = [r["publish_start_ns"] for r in reports if r["publish_start_ns"]]
    ends = [s["last_ns"] for r in reports for s in r["subscriptions"] if s["last_ns"]]
    span = (max(ends) - min(starts)) / 1e9 if starts and ends else 0.0
    times = [t for _, _, m in plan.input.events if isinstance(t := m.get("time"), str)]
    ok = (
        not timed_out
        and totals["lost"] == 0
        and totals["duplicates"] == 0
        and totals["out_of_order"] == 0
        and totals["gaps_reported"] == 0
        and totals["published"] == len(plan.input.events)
    )
    return {
        "ok": ok,
        "timed_out": timed_out,
        "nodes": len(reports),
        "cluster": cluster,
        "interface": opts.interface or "all",
        "input": {
            "source": plan.input.source,
            "kind": plan.input.kind,
            "lines": plan.input.lines,
            "events": len(plan.input.events),
            "skipped_lines": plan.input.skipped,
            "first_time": min(times) if times else None,
            "last_time": max(times) if times else None,
        },
        "published": totals["published"],
        "expected": totals["expected"],
        "delivered": totals["received"],
        "lost": totals["lost"],
        "duplicates": totals["duplicates"],
        "out_of_order": totals["out_of_order"],
        "gaps_reported": totals["gaps_reported"],
        "per_node": nodes,
        "topics": {
            t: {"published": n, "delivered": delivered_by_topic.get(t, 0)}
            for t, n in sorted(plan.topics.items(), key=lambda kv: (-kv[1], kv[0]))
        },
        "rate": opts.rate,
        "replay_seconds": round(span, 6),
        "throughput_eps": round(totals["received"] / span, 1) if span > 0 else 0.0,
        "latency_ms": {
            "samples": len(latency),
            "p50": round(_percentile(latency, 0.50) / 1000, 3),
            "p99": round(_percentile(latency, 0.99) / 1000, 3),
            "max": round(latency[-1] / 1000, 3) if latency else 0.0,
        },
        "timings": {k: round(v, 3) for k, v in timings.items()},
    }


def _table(rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
    return out


def format_summary(s: dict[str, Any]) -> str:
    """The summary as the human-readable report ``frys-zmq demo`` prints."""
    inp = s["input"]
    lines = [
        f"frys-zmq demo: {s['nodes']} node processes on {s['interface']}, "
        f"cluster {s['cluster']}, discovery by mDNS",
        f"input: {inp['source']} ({inp['kind']}, {inp['lines']} lines -> {inp['events']} events"
        + (f", {inp['skipped_lines']} lines skipped" if inp["skipped_lines"] else "")
        + ")",
    ]
    if inp["first_time"]:
        lines.append(f"log time span: {inp['first_time']} .. {inp['last_time']}")
    t = s["timings"]
    lines.append(
        f"nodes up in {t.get('start_s', 0):.2f}s, mesh formed after "
        f"{t.get('mesh_s', 0):.2f}s, replay took {t.get('replay_s', 0):.2f}s"
    )
    lines.append("")
    rows = [["node", "published", "subscription", "expected", "received", "lost", "dup", "order"]]
    for node in s["per_node"]:
        for i, sub in enumerate(
            node["subscriptions"]
            or [
                {
                    "pattern": "-",
                    "expected": 0,
                    "received": 0,
                    "lost": 0,
                    "duplicates": 0,
                    "out_of_order": 0,
                }
            ]
        ):
            rows.append(
                [
                    node["node_id"] if i == 0 else "",
                    str(node["published"]) if i == 0 else "",
                    sub["pattern"],
                    str(sub["expected"]),
                    str(sub["received"]),
                    str(sub["lost"]),
                    str(sub["duplicates"]),
                    str(sub["out_of_order"]),
                ]
            )
    rows.append(
        [
            "total",
            str(s["published"]),
            "",
            str(s["expected"]),
            str(s["delivered"]),
            str(s["lost"]),
            str(s["duplicates"]),
            str(s["out_of_order"]),
        ]
    )
    lines += _table(rows, {1, 3, 4, 5, 6, 7})
    lines.append("")
    trows = [["topic", "published", "delivered"]]
    trows += [[topic, str(c["published"]), str(c["delivered"])] for topic, c in s["topics"].items()]
    lines += _table(trows, {1, 2})
    lines.append("")
    lat = s["latency_ms"]
    lines.append(
        f"delivered {s['delivered']} events in {s['replay_seconds']:.2f}s: "
        f"{s['throughput_eps']:,.0f} events/s"
    )
    lines.append(
        f"latency publish -> handler: p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, "
        f"max {lat['max']:.2f} ms ({lat['samples']} samples)"
    )
    if not s["rate"]:
        lines.append(
            "  (an unpaced burst: latency includes the wait behind earlier events; "
            "--rate N paces the replay)"
        )
    verdict = "OK: every event delivered exactly once, in order" if s["ok"] else "FAILED"
    lines.append(
        f"lost {s['lost']}, duplicates {s['duplicates']}, out of order "
        f"{s['out_of_order']}, gaps reported {s['gaps_reported']}"
        + (", timed out" if s["timed_out"] else "")
        + f" -> {verdict}"
    )
    return "\n".join(lines)


def parse_subscribe_overrides(items: list[str]) -> dict[int, list[str]]:
    """``["1=dpkg.>", "demo-1=x.*", "2=>"]`` -> ``{1: ["dpkg.>", "x.*"], 2: [">"]}``.

    NODE is a node's index or its name in the summary (``demo-<index>``).
    """
    out: dict[int, list[str]] = {}
    for item in items:
        node, sep, pattern = item.partition("=")
        index = _node_index(node.strip())
        if not sep or index is None or not pattern:
            raise ConfigError(
                f"--subscribe takes NODE=PATTERN, NODE a node's index or name "
                f"(0 or demo-0), got {item!r}"
            )
        out.setdefault(index, []).append(pattern)
    return out


def _node_index(node: str) -> int | None:
    """The index that ``node`` (``"1"`` or ``"demo-1"``) names, or None."""
    digits = node.removeprefix(NODE_PREFIX)
    if not digits.isascii() or not digits.isdigit():
        return None
    return int(digits)
