"""The node driver: ZeroMQ sockets, discovery, heartbeats, repair and requests.

Protocol decisions live in the I/O-free modules (``_wire``, ``_sequencing``, ``_peers``);
this module moves bytes between them and the sockets. Everything runs on one event loop;
the sockets are plain (non-blocking) ZeroMQ sockets read by ``SocketReader``s and are only
touched from that loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import itertools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass, field
from typing import Any, Final

import psutil
import zmq

from . import _timing
from ._config import DeliveryMode, DiscoveryStrategy, EventBusConfig, validate_name
from ._discovery import Announcement, MdnsDiscovery, _primary_address
from ._errors import (
    ConfigError,
    DecodeError,
    DuplicateNodeId,
    MessageTooLarge,
    StorageError,
    TransportError,
)
from ._log import LogRecord, PersistentEventQueue
from ._peers import PeerInfo, PeerState, PeerTable
from ._sequencing import Gap, Nack, RetentionRing, StreamTracker
from ._sockets import SocketReader, send_frames
from ._wire import (
    CONTROL_TOPIC,
    HEARTBEAT_TOPIC,
    MAX_BATCH_EVENTS,
    PROTOCOL_VERSION,
    Header,
    Kind,
    check_frames,
    decode_header,
    encode_header,
    pack_batch,
    pack_control,
    split_topic,
    topic_frame,
    unpack_batch,
    unpack_control,
)

__all__ = ["Node", "NodeCallbacks"]

log = logging.getLogger("frys_zmq.node")

_HB_FRAME = topic_frame(HEARTBEAT_TOPIC)
_CTL_FRAME = topic_frame(CONTROL_TOPIC)
# Messages kept for replay: the three frames as sent.
Frames = tuple[bytes, bytes, bytes]
# Payloads from this size on are sent zero-copy (pyzmq's own advice is ~64 KB) and alone.
_BIG: Final = 65536
# Room for a REPLY's header when checking a reply's size (its correlation id is the asker's).
_REPLY_HEADER_ROOM: Final = 1024
# Bounds of the bad-message bookkeeping (reasons counted, log rate-limiter entries).
_MAX_REASONS: Final = 256


@dataclass(slots=True)
class NodeCallbacks:
    """How the node hands work up to the bus."""

    #: A remote event is ready for local delivery, in per-publisher order. May return an
    #: awaitable when local queues are full (back-pressure on the socket reader). The flag
    #: marks history: events from before this node met the publisher, replayed for durable
    #: subscriptions only.
    deliver: Callable[[str, Header, bytes, bool], Awaitable[None] | None]
    #: A BATCH of events of one topic and publisher, in order and new to this node: their
    #: header and payload frames alternating, the first with seq ``first``. Same contract.
    deliver_batch: Callable[[str, str, int, int, list[bytes]], Awaitable[None] | None]
    #: Serve a request; returns (ok, payload bytes, flags).
    serve: Callable[[str, Header, bytes], Awaitable[tuple[bool, bytes, int]]]
    #: Publish a system event locally (``$frys.peer.joined`` ...).
    system: Callable[[str, dict[str, Any]], None]
    #: Lowest seq of a publisher (id, sequence space, keeps a log) that a durable
    #: subscription has handled, or None.
    durable_floor: Callable[[str, int, bool], int | None]


@dataclass(slots=True)
class _Link:
    """A DEALER to one peer's ROUTER."""

    endpoint: str
    socket: zmq.Socket[bytes]
    node_id: str | None = None
    hello_at: float = 0.0
    static: bool = False
    reader: SocketReader | None = None
    guarded: Callable[[list[bytes]], Awaitable[None] | None] | None = None
    #: HELLOs sent since the link last had a node; they back off, up to HELLO_RETRY_MAX.
    hellos: int = 0
    #: When the link last had a node (or was made): a found link that has gone unanswered
    #: for LINK_GIVE_UP is closed; a static one is probed for ever.
    answered_at: float = 0.0
    #: The node this endpoint belonged to last, while it is probed for that node's return.
    last_node: str | None = None
    #: Resolved when the node answers a HELLO as the same process (see _still_answers).
    probe: asyncio.Future[None] | None = None


@dataclass(slots=True)
class _Stream:
    incarnation: int
    tracker: StreamTracker[Frames]
    #: The publisher keeps a log: its seq space survives restarts and old ranges replay.
    durable: bool = False
    #: Events up to this seq are history (replayed for durable subscriptions only).
    history_until: int = 0
    #: What its seqs are numbers in: the publisher's log id if it keeps a log (the space
    #: outlives its restarts), else its incarnation.
    space: int = 0


@dataclass
class NodeStats:
    """Counters the node keeps; ``EventBus.get_metrics`` reports them."""

    received: int = 0
    duplicates: int = 0
    repaired: int = 0
    gaps: int = 0
    gap_events: int = 0
    nacks_sent: int = 0
    replays_served: int = 0
    send_dropped: int = 0
    late_replies: int = 0
    unknown_source: int = 0
    bad_messages: int = 0
    bad_by_reason: dict[str, int] = field(default_factory=dict)


class Node:
    """One mesh node. Created and driven by ``EventBus``."""

    def __init__(self, config: EventBusConfig, callbacks: NodeCallbacks) -> None:
        self.config = config
        self.node_id = config.node_id
        self.incarnation = time.time_ns() // 1000
        self._cb = callbacks
        self._limits = config.limits
        self._reliable = config.delivery is DeliveryMode.RELIABLE
        self.seq = 0  #: last sequence number given out
        self.first_seq = 1  #: first sequence number of this incarnation
        self.sent_seq = 0  #: last sequence number handed to the PUB socket
        self.stats = NodeStats()
        self.log: PersistentEventQueue | None = None
        self._unsent: list[Frames] = []
        self._unsent_sizes: list[int] = []  # header + payload bytes of each unsent event
        self._unsent_bytes = 0
        self._flush_scheduled = False
        # A batch must fit the receivers' message limit with room to spare.
        self._batch_bytes = min(_timing.BATCH_BYTES, self._limits.max_message_bytes // 2)
        self._batch_single_max = min(_timing.BATCH_SINGLE_MAX, self._batch_bytes)
        #: Where to resume a peer's stream in a sequence space, should it come back: by
        #: (node id, space), so an impostor's stream cannot overwrite the real one's place.
        self._resume: dict[tuple[str, int], int] = {}
        #: Streams of expired peers, kept whole until their grace ends (see DEPARTED_GRACE).
        self._departed: dict[str, tuple[_Stream, float]] = {}
        self.peers = PeerTable(
            heartbeat_interval=config.heartbeat_interval,
            ttl=config.peer_ttl,
            suspect_after=_timing.SUSPECT_AFTER_MISSED,
        )
        self._ring: RetentionRing[Frames] = RetentionRing(
            config.retention_ring_size, config.retention_ring_bytes
        )
        self._streams: dict[str, _Stream] = {}
        self._links: dict[str, _Link] = {}  # by ROUTER endpoint
        #: A SUB socket and its reader per peer whose stream we read, by node id.
        self._subs: dict[str, tuple[zmq.Socket[bytes], SocketReader]] = {}
        self._served: set[str] = set()
        self._pending: dict[str, asyncio.Future[tuple[Header, bytes]]] = {}
        self._pending_peer: dict[str, str] = {}  # correlation id -> node asked
        self._corr = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._peer_change = asyncio.Event()
        self._hurried = False  #: extra heartbeats for a joining peer are scheduled
        #: Why a peer refused this node as a second live process of its id, if one did.
        self.refused_as_duplicate: str | None = None
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._discovery: MdnsDiscovery | None = None
        self._log_limiter: dict[tuple[str, str], float] = {}
        self._process = psutil.Process(os.getpid())
        self._closed = False
        self.address = config.interface or "127.0.0.1"
        self.pub_port = 0
        self.router_port = 0

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        cfg = self.config
        if cfg.enable_persistence:
            self.log = PersistentEventQueue(
                cfg.node_dir / "log",
                max_file_size=cfg.max_file_size,
                fsync=cfg.fsync_policy,
                fsync_interval=cfg.fsync_interval,
                retention_period=cfg.retention_period,
                retention_bytes=cfg.retention_bytes,
            )
            await self.log.open()
            # The sequence space of a persistent node outlives its process: go on from the log.
            self.seq = self.sent_seq = self.log.last_seq or 0
        self.first_seq = self.seq + 1  # first seq of this incarnation
        self._loop = asyncio.get_running_loop()
        self._ctx = zmq.Context()
        try:
            self._pub = self._socket(zmq.PUB)
            self._pub.setsockopt(zmq.LINGER, 200)
            self.pub_port = self._bind(self._pub, cfg.pub_port)
            self._router = self._socket(zmq.ROUTER)
            self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self._router.setsockopt(zmq.LINGER, 200)
            self.router_port = self._bind(self._router, cfg.router_port)
        except zmq.ZMQError as exc:
            self._ctx.destroy(linger=0)
            self._ctx = None
            if self.log is not None:
                await self.log.aclose()
            raise TransportError(f"cannot bind sockets on {cfg.bind_host}: {exc}") from exc
        if cfg.interface is None:
            self.address = _primary_address()
        self._router_one = self._guard("router", self._on_router_message)
        self._router_reader = SocketReader(self._router, self._on_router_batch, 256)
        try:
            self._spawn(self._heartbeat_loop(), "heartbeat")
            self._spawn(self._maintenance_loop(), "maintenance")
            strategy = cfg.discovery_strategy
            if strategy in (DiscoveryStrategy.STATIC, DiscoveryStrategy.MDNS_AND_STATIC):
                links = [self._link(endpoint, static=True) for endpoint in cfg.cluster_peers]
                await self._first_answers(links)
            if strategy in (DiscoveryStrategy.MDNS, DiscoveryStrategy.MDNS_AND_STATIC):
                self._discovery = MdnsDiscovery(
                    interface=cfg.interface,
                    on_found=self.consider,
                    on_removed=lambda node_id, cluster: self.forget_link_of(node_id),
                    cluster=cfg.cluster,
                )
                await self._discovery.start(self.announcement())
        except BaseException:
            await self.aclose()  # nothing of a failed start may outlive it
            raise

    async def _first_answers(self, links: list[_Link]) -> None:
        """Give static peers a moment to answer the first HELLO; fail if one says our id is
        taken by a live process (what mDNS probing tells a node that announces itself)."""
        started = time.monotonic()
        deadline = started + _timing.STATIC_START_WAIT
        while time.monotonic() < deadline and any(
            link.node_id is None and link.answered_at <= started for link in links
        ):
            if self.refused_as_duplicate is not None:
                break
            await asyncio.sleep(_timing.MAINTENANCE_INTERVAL / 5)
        if self.refused_as_duplicate is not None:
            raise DuplicateNodeId(self.node_id, self.config.cluster)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._ctx is None:
            return
        try:
            self._flush_unsent()
            self._send_pub(
                _HB_FRAME,
                encode_header(
                    Kind.BYE, self.node_id, self.incarnation, self.sent_seq, time.time_ns()
                ),
                b"",
            )
        except Exception:
            log.debug("BYE not sent", exc_info=True)
        if self._discovery is not None:
            await self._discovery.aclose()
        for node_id in list(self._subs):
            self._close_sub(node_id)
        self._router_reader.close()
        for link in self._links.values():
            if link.reader is not None:
                link.reader.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for fut in self._pending.values():
            if not fut.done():
                fut.cancel()
        for link in self._links.values():
            link.socket.close(linger=0)
        self._links.clear()
        for sock in (self._router, self._pub):
            sock.close()
        if self.log is not None:
            await self.log.aclose()
        ctx, self._ctx = self._ctx, None
        # term() waits for LINGER so queued BYEs and replies leave; keep it off the loop.
        await asyncio.to_thread(ctx.term)

    # ------------------------------------------------------------------ public surface

    def announcement(self) -> Announcement:
        return Announcement(
            self.node_id,
            self.config.cluster,
            self.address,
            self.pub_port,
            self.router_port,
            PROTOCOL_VERSION,
            self.incarnation,
        )

    def send_event(
        self, topic: str, tframe: bytes, header: bytes, payload: bytes, seq: int, ts: int
    ) -> None:
        """Queue one encoded event (``seq`` must be ``self.seq + 1``) for PUB, replay and log.

        The first event of a loop iteration leaves at once; those published after it in the
        same iteration leave at its end (or when a batch is full), sharing messages: see
        ``_flush_unsent``.
        """
        if seq != self.seq + 1:
            raise AssertionError(f"seq {seq} out of turn (last {self.seq})")
        self.seq = seq
        frames = (tframe, header, payload)
        size = len(header) + len(payload)
        if self._reliable:
            self._ring.add(seq, frames, size)
        if self.log is not None:
            # Logged before sent: the record reaches the OS before the event reaches the
            # wire, so a killed publisher never comes back without an event a subscriber has.
            self.log.append_nowait(LogRecord(seq, ts, topic, header, payload))
        if not self._flush_scheduled:
            # The first event of a loop iteration leaves at once: a lone event (the usual
            # case at modest rates) then waits for nothing. Those that follow it in the same
            # iteration are coalesced into batches at its end.
            if self.log is not None:
                self.log.flush()
            self._send_pub(tframe, header, payload)
            self.sent_seq += 1
            self._flush_scheduled = True
            self._loop.call_soon(self._flush_unsent)
            return
        unsent = self._unsent
        unsent.append(frames)
        self._unsent_sizes.append(size)
        self._unsent_bytes += size
        if len(unsent) >= MAX_BATCH_EVENTS or self._unsent_bytes >= self._batch_bytes:
            self._flush_unsent(scheduled=False)

    def _flush_unsent(self, *, scheduled: bool = True) -> None:
        """Write queued events to the log (one write), then send them.

        Consecutive events of one topic go out as one BATCH message: one ZeroMQ message
        instead of hundreds, and prefix filters on the topic frame still hold. The call at
        the end of the loop iteration (``scheduled``) also ends the iteration's "first event
        goes at once" (see ``send_event``).
        """
        if scheduled:
            self._flush_scheduled = False
        if not self._unsent:
            return
        unsent, self._unsent = self._unsent, []
        sizes, self._unsent_sizes = self._unsent_sizes, []
        self._unsent_bytes = 0
        if self.log is not None:
            self.log.flush()
        send, n, i = self._send_pub, len(unsent), 0
        single_max, batch_bytes = self._batch_single_max, self._batch_bytes
        while i < n:
            tframe, header, payload = unsent[i]
            end = i + 1
            size = sizes[i]
            if size < single_max:
                while end < n:
                    more = sizes[end]
                    size += more
                    if size > batch_bytes or more >= _BIG or unsent[end][0] != tframe:
                        break
                    end += 1
            if end == i + 1:
                send(tframe, header, payload)
            else:
                parts = [part for _, h, p in unsent[i:end] for part in (h, p)]
                batch = encode_header(
                    Kind.BATCH,
                    self.node_id,
                    self.incarnation,
                    self.sent_seq + i + 1,
                    time.time_ns(),
                )
                send(tframe, batch, pack_batch(parts), copy=True)
            i = end
        self.sent_seq += n

    async def wait_durable(self) -> None:
        """Return once every event published so far is in the log under its fsync policy."""
        if self.log is None:
            raise StorageError("acknowledged publish needs enable_persistence=True")
        await self.log.wait_durable()

    def set_served(self, topics: set[str]) -> None:
        """Topics this node answers requests for; peers learn them at once."""
        self._served = set(topics)
        if self._ctx is not None and not self._closed:
            self._send_heartbeat()

    def ready_peers(self) -> list[PeerInfo]:
        return [p for p in self.peers if p.ready]

    async def wait_for_peers(self, n: int, timeout: float) -> list[PeerInfo]:
        async with asyncio.timeout(timeout):
            while True:
                ready = self.ready_peers()
                if len(ready) >= n:
                    return ready
                self._peer_change.clear()
                await self._peer_change.wait()

    def connect(self, endpoint: str) -> None:
        """Add a peer by its ROUTER endpoint (static discovery at run time)."""
        self._link(endpoint, static=True)

    def servers_of(self, topic: str) -> list[PeerInfo]:
        from ._topics import pattern_matches

        return [
            p
            for p in self.peers
            if p.state is not PeerState.CONNECTING
            and (topic in p.served or any(pattern_matches(s, topic) for s in p.served))
        ]

    async def request(
        self,
        peer: PeerInfo,
        topic: str,
        payload: bytes,
        flags: int,
        metadata: dict[str, Any] | None,
        timeout: float,
    ) -> tuple[Header, bytes]:
        """Send a request to ``peer``; wait for its reply (raises TimeoutError)."""
        link = self._link_of(peer.node_id)
        if link is None:
            raise TransportError(f"no link to {peer.node_id}")
        corr = f"{self.incarnation:x}.{next(self._corr)}"
        header = encode_header(
            Kind.REQUEST,
            self.node_id,
            self.incarnation,
            0,
            time.time_ns(),
            metadata,
            flags,
            correlation_id=corr,
        )
        size = len(topic) + 1 + len(header) + len(payload)
        if size > self._limits.max_message_bytes:
            raise MessageTooLarge(size, self._limits.max_message_bytes, "request")
        fut: asyncio.Future[tuple[Header, bytes]] = self._loop.create_future()
        self._pending[corr] = fut
        self._pending_peer[corr] = peer.node_id
        # A timer handle rather than asyncio.timeout(): cheaper, and it fails only `fut`.
        timer = self._loop.call_later(timeout, _expire, fut)
        try:
            self._send_link(link, topic_frame(topic), header, payload)
            return await fut
        finally:
            timer.cancel()
            self._pending.pop(corr, None)
            self._pending_peer.pop(corr, None)

    def load(self) -> float:
        return float(self._process.cpu_percent(None))

    # ------------------------------------------------------------------ sockets

    def _socket(self, kind: int) -> zmq.Socket[bytes]:
        assert self._ctx is not None
        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if kind in (zmq.PUB, zmq.SUB):
            sock.setsockopt(zmq.SNDHWM, self.config.send_hwm)
            sock.setsockopt(zmq.RCVHWM, self.config.recv_hwm)
        else:
            # Requests, HELLOs and replays: room for several full NACK replays, whatever the
            # event stream's own marks are.
            hwm = max(self.config.send_hwm, self.config.recv_hwm, 8 * _timing.NACK_MAX_RANGE)
            sock.setsockopt(zmq.SNDHWM, hwm)
            sock.setsockopt(zmq.RCVHWM, hwm)
        if kind != zmq.PUB:
            sock.setsockopt(zmq.MAXMSGSIZE, self._limits.max_message_bytes)
        return sock

    def _bind(self, sock: zmq.Socket[bytes], port: int) -> int:
        host = self.config.bind_host
        if port:
            sock.bind(f"tcp://{host}:{port}")
            return port
        return int(sock.bind_to_random_port(f"tcp://{host}"))

    def _send_pub(
        self, tframe: bytes, header: bytes, payload: bytes, *, copy: bool | None = None
    ) -> None:
        # A big user payload goes zero-copy; a batch we just built is copied, which is cheap
        # next to the zero-copy bookkeeping (pyzmq's garbage-collector thread) it would need.
        try:
            send_frames(
                self._pub,
                (tframe, header, payload),
                len(payload) < _BIG if copy is None else copy,
            )
        except zmq.Again:
            # PUB never blocks; EAGAIN only with XPUB_NODROP-like setups. Count it.
            self.stats.send_dropped += 1

    def _send_link(self, link: _Link, tframe: bytes, header: bytes, payload: bytes) -> None:
        try:
            send_frames(link.socket, (tframe, header, payload), len(payload) < _BIG)
        except zmq.Again:
            self.stats.send_dropped += 1
            raise TransportError(f"send queue to {link.node_id or link.endpoint} is full") from None
        finally:
            if link.reader is not None:
                link.reader.touch()  # the send may have eaten the FD's read signal

    def _reply(self, ident: bytes, tframe: bytes, header: bytes, payload: bytes) -> bool:
        try:
            send_frames(self._router, (ident, tframe, header, payload), len(payload) < _BIG)
            return True
        except zmq.ZMQError as exc:  # EAGAIN (full) or EHOSTUNREACH (gone)
            self.stats.send_dropped += 1
            log.debug("reply dropped: %s", exc)
            return False
        finally:
            self._router_reader.touch()  # the send may have eaten the FD's read signal

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        loop = asyncio.get_running_loop()
        task: asyncio.Task[Any] = loop.create_task(coro, name=f"frys-{self.node_id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _start_eagerly(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        """Run ``coro`` now, up to its first suspension; only then does it become a task.

        Most request handlers finish without waiting for anything: they then cost no task,
        no trip through the loop, and the reply leaves before the next message is read.
        """
        try:
            yielded = coro.send(None)
        except StopIteration:
            return
        except Exception:
            log.exception("node task %s failed", name)
            return
        self._spawn(_resume(coro, yielded), name)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("node task %s died", task.get_name(), exc_info=task.exception())

    def _bad(self, who: str, reason: str, exc: BaseException | None = None) -> None:
        """Count and (rate-limited) log a message we had to drop."""
        stats = self.stats
        stats.bad_messages += 1
        if reason in stats.bad_by_reason or len(stats.bad_by_reason) < _MAX_REASONS:
            stats.bad_by_reason[reason] = stats.bad_by_reason.get(reason, 0) + 1
        # Rate-limit per known peer and reason; names a sender made up share one bucket, or
        # a flood of invented ids would log every message and grow this table.
        key = (who if self.peers.get(who) is not None else "?", reason)
        now = time.monotonic()
        if now - self._log_limiter.get(key, -1e9) >= _timing.BAD_LOG_INTERVAL:
            if len(self._log_limiter) >= _MAX_REASONS:
                self._log_limiter.clear()
            self._log_limiter[key] = now
            log.warning("dropped bad message from %s: %s (%s)", who, reason, exc)

    def _guard(
        self, who: str, handle: Callable[[list[bytes]], Awaitable[None] | None]
    ) -> Callable[[list[bytes]], Awaitable[None] | None]:
        """``handle`` for one message, turning any error into a counted bad message.

        Whatever a message does, the rest of its batch (other peers' messages) is handled.
        """

        def guarded(frames: list[bytes]) -> Awaitable[None] | None:
            try:
                return handle(frames)
            except DecodeError as exc:
                self._bad(who, type(exc).__name__, exc)
            except Exception as exc:  # a bug or an input we did not foresee: drop, count, go on
                self._bad(who, f"unhandled {type(exc).__name__}", exc)
                if self._log_limiter.get(("?", "traceback"), -1e9) < time.monotonic() - 5:
                    self._log_limiter[("?", "traceback")] = time.monotonic()
                    log.error("error handling a message from %s", who, exc_info=exc)
            return None

        return guarded

    def _handle_batch(
        self, batch: list[list[bytes]], one: Callable[[list[bytes]], Awaitable[None] | None]
    ) -> Awaitable[None] | None:
        """Handle messages in order; once one must wait, the rest wait behind it."""
        for i, frames in enumerate(batch):
            pending = one(frames)
            if pending is not None:
                return _finish_batch(pending, batch, i + 1, one)
        return None

    # ------------------------------------------------------------------ SUB: events and heartbeats

    def _open_sub(self, peer: PeerInfo) -> None:
        """A SUB socket of our own for ``peer``'s PUB: what arrives on it is ``peer``'s.

        One socket per publisher is what lets a node tell who sent an event or heartbeat:
        on a shared SUB, any peer could publish in another's name (events with its next
        seq, heartbeats of another incarnation, a BYE).
        """
        self._close_sub(peer.node_id)
        node_id = peer.node_id
        sock = self._socket(zmq.SUB)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(peer.pub_endpoint)
        one = self._guard(f"sub {node_id}", lambda frames: self._on_sub_message(frames, node_id))
        reader = SocketReader(sock, lambda batch: self._handle_batch(batch, one))
        self._subs[node_id] = (sock, reader)

    def _close_sub(self, node_id: str) -> None:
        entry = self._subs.pop(node_id, None)
        if entry is not None:
            sock, reader = entry
            reader.close()
            sock.close(linger=0)

    def _on_sub_message(self, frames: list[bytes], publisher: str) -> Awaitable[None] | None:
        check_frames(frames, self._limits)
        topic = split_topic(frames[0])
        header = decode_header(frames[1], self._limits)
        if header.source != publisher:
            self._bad(publisher, "source does not match its stream")
            return None
        kind = header.kind
        if kind == Kind.EVENT:
            return self._on_event(topic, header, frames, replayed=False)
        if kind == Kind.BATCH:
            return self._on_batch(topic, header, frames)
        if kind == Kind.HEARTBEAT:
            self._on_heartbeat(header, frames[2])
        elif kind == Kind.BYE:
            self._on_bye(header)
        else:
            self._bad(header.source, f"kind {kind} on SUB")
        return None

    def _on_batch(self, topic: str, header: Header, frames: list[bytes]) -> Awaitable[None] | None:
        """Take a BATCH: as a whole when it is next in its stream, else event by event."""
        try:
            parts = unpack_batch(frames[2], self._limits)
        except DecodeError as exc:
            self._bad(header.source, type(exc).__name__, exc)
            return None
        source, first, n = header.source, header.seq, len(parts) >> 1
        stream = self._streams.get(source)
        if stream is None or (stream.incarnation != header.incarnation and not stream.durable):
            self.stats.received += n
            self.stats.unknown_source += n
            return None
        # The common case costs one check for the whole batch: its events are the next ones
        # of the stream and none is history. The bus checks each entry's own header.
        if first > stream.history_until and (
            not self._reliable or stream.tracker.take_run(first, n)
        ):
            self.stats.received += n
            self.peers.heard(source, time.monotonic())
            return self._cb.deliver_batch(topic, source, header.incarnation, first, parts)
        tframe = frames[0]
        events = [[tframe, parts[k], parts[k + 1]] for k in range(0, len(parts), 2)]

        def one(event: list[bytes]) -> Awaitable[None] | None:
            try:
                inner = decode_header(event[1], self._limits)
            except DecodeError as exc:
                self._bad(source, type(exc).__name__, exc)
                return None
            if inner.kind != Kind.EVENT or inner.source != source:
                self._bad(source, "foreign entry in batch")
                return None
            return self._on_event(topic, inner, event, replayed=False)

        for i, event in enumerate(events):
            pending = one(event)
            if pending is not None:
                return _finish_batch(pending, events, i + 1, one)
        return None

    def _on_event(
        self, topic: str, header: Header, frames: list[bytes] | Frames, *, replayed: bool
    ) -> Awaitable[None] | None:
        """Sequence one event and deliver what became deliverable."""
        self.stats.received += 1
        stream = self._streams.get(header.source)
        if stream is None or (stream.incarnation != header.incarnation and not stream.durable):
            self.stats.unknown_source += 1
            return None
        self.peers.heard(header.source, time.monotonic())
        if not self._reliable:
            return self._cb.deliver(topic, header, frames[2], False)
        tracker = stream.tracker
        if replayed:
            tracker.progress(time.monotonic())
        ready = tracker.offer(
            header.seq,
            (frames[0], frames[1], frames[2]),
            replayed=replayed,
            size=len(frames[1]) + len(frames[2]),
        )
        if not ready:
            if not tracker.repairing and tracker.in_gap:
                self._repair(header.source, stream)  # ask at once, not at the next tick
            return None
        if len(ready) == 1 and ready[0][1] is frames[1]:
            return self._cb.deliver(topic, header, frames[2], header.seq <= stream.history_until)
        return self._deliver_many(stream, ready)

    def _deliver_many(self, stream: _Stream, ready: list[Frames]) -> Awaitable[None] | None:
        waits: list[Awaitable[None]] = []
        for tframe, hbytes, payload in ready:
            try:
                header = decode_header(hbytes, self._limits)
                topic = split_topic(tframe)
            except DecodeError:  # already decoded once; cannot fail, but stay safe
                continue
            history = header.seq <= stream.history_until
            if waits:
                # Keep order: once one delivery must wait, the rest wait behind it.
                waits.append(self._deliver_later(topic, header, payload, history))
                continue
            pending = self._cb.deliver(topic, header, payload, history)
            if pending is not None:
                waits.append(pending)
        if not waits:
            return None
        return self._await_all(waits)

    async def _deliver_later(
        self, topic: str, header: Header, payload: bytes, history: bool
    ) -> None:
        pending = self._cb.deliver(topic, header, payload, history)
        if pending is not None:
            await pending

    @staticmethod
    async def _await_all(waits: list[Awaitable[None]]) -> None:
        for w in waits:
            await w

    def _on_heartbeat(self, header: Header, payload: bytes) -> None:
        peer = self.peers.heard(header.source, time.monotonic())
        if peer is None:
            return
        if peer.incarnation != header.incarnation:
            # Same id, new process on the same endpoint (fixed ports), or someone pretending:
            # ask the endpoint. Its HELLO reply replaces the peer if it really restarted.
            link = self._link_of(peer.node_id)
            if link is not None and time.monotonic() - link.hello_at > _timing.HELLO_RETRY:
                self._send_hello(link)
            return
        try:
            body = unpack_control(payload, self._limits)
            served = body.get("served", [])
            peer.served = frozenset(s for s in served if isinstance(s, str))
            peer.load = float(body.get("load", 0.0))
            hears = body.get("hears", [])
            if not peer.sending and isinstance(hears, list) and self.node_id in hears:
                peer.sending = True
                self._peer_change.set()
        except (DecodeError, AttributeError, TypeError, ValueError) as exc:
            self._bad(header.source, "heartbeat body", exc)
        peer.last_seq = header.seq
        if not peer.receiving:
            peer.receiving = True
            self._send_ready(peer)
            self._peer_change.set()
        stream = self._streams.get(header.source)
        if stream is not None and stream.incarnation == header.incarnation:
            stream.tracker.observe_last(header.seq)

    def _on_bye(self, header: Header) -> None:
        peer = self.peers.get(header.source)
        if peer is not None and peer.incarnation == header.incarnation:
            stream = self._streams.get(header.source)
            if stream is not None:
                stream.tracker.observe_last(header.seq)
            self._drop_peer(peer, "left")

    # ------------------------------------------------------------------ ROUTER: requests, HELLO

    def _on_router_batch(self, batch: list[list[bytes]]) -> None:
        for frames in batch:
            self._router_one(frames)

    def _on_router_message(self, frames: list[bytes]) -> None:
        ident = frames[0]
        body = frames[1:]
        check_frames(body, self._limits)
        topic = split_topic(body[0])
        header = decode_header(body[1], self._limits)
        self._on_router(ident, topic, header, body)

    def _on_router(self, ident: bytes, topic: str, header: Header, body: list[bytes]) -> None:
        kind = header.kind
        if kind == Kind.REQUEST:
            self._start_eagerly(self._serve(ident, topic, header, body[2]), "request")
        elif kind == Kind.NACK:
            self._serve_nack(ident, header, body[2])
        elif kind == Kind.HELLO:
            self._serve_hello(ident, header, body[2])
        elif kind == Kind.READY:
            peer = self.peers.get(header.source)
            if peer is not None and peer.incarnation == header.incarnation and not peer.sending:
                peer.sending = True
                self._peer_change.set()
        else:
            self._bad(header.source, f"kind {kind} on ROUTER")

    async def _serve(self, ident: bytes, topic: str, header: Header, payload: bytes) -> None:
        ok, data, flags = await self._cb.serve(topic, header, payload)
        tframe = topic_frame(topic)
        limit = self._limits.max_message_bytes - len(tframe) - _REPLY_HEADER_ROOM
        if len(data) > limit:
            # The asker would drop it unread (and lose its connection): tell it instead.
            why = f"the reply of {len(data)} bytes is over the {limit} bytes peers accept"
            ok, flags = False, 0
            data = pack_control({"type": "MessageTooLarge", "message": why})
        reply = encode_header(
            Kind.REPLY,
            self.node_id,
            self.incarnation,
            0,
            time.time_ns(),
            None,
            flags,
            content_type=None if ok else "frys/error",
            correlation_id=header.correlation_id,
        )
        self._reply(ident, tframe, reply, data)

    def _serve_hello(self, ident: bytes, header: Header, payload: bytes) -> None:
        body = unpack_control(payload, self._limits)
        if not isinstance(body, dict):
            raise DecodeError("HELLO body must be a map")
        error: str | None = None
        if body.get("cluster") != self.config.cluster:
            error = f"cluster mismatch: this node is in {self.config.cluster!r}"
        elif header.source == self.node_id:
            error = "node id in use"
        else:
            known = self.peers.get(header.source)
            if (
                known is not None
                and known.state is PeerState.ALIVE
                and known.incarnation != header.incarnation
            ):
                # Another process with a live peer's id: restarted, or a second one? Only
                # the old endpoint can say; the answer waits for it (a short while).
                self._start_eagerly(self._serve_hello_probed(ident, header, body), "hello")
                return
        self._answer_hello(ident, header, body, error)

    async def _serve_hello_probed(self, ident: bytes, header: Header, body: dict[str, Any]) -> None:
        link = self._link_of(header.source)
        error = None
        if link is not None and await self._still_answers(link):
            error = f"node id {header.source!r} is in use by a live process at {link.endpoint}"
            self._bad(header.source, "duplicate node id")
            log.error("refused a second live process with node id %s", header.source)
        self._answer_hello(ident, header, body, error)

    async def _take_over_if_gone(
        self, link: _Link, old_link: _Link, header: Header, payload: bytes
    ) -> None:
        """Let the node answering on ``link`` replace the one of ``old_link`` (same id) only
        if that one no longer answers there; else count it as a second live process."""
        if await self._still_answers(old_link):
            self._bad(header.source, "duplicate node id")
            log.error(
                "%s answers at %s, but is still live at %s: ignored",
                header.source,
                link.endpoint,
                old_link.endpoint,
            )
            return
        old = self.peers.get(header.source)
        if old is not None and old.incarnation != header.incarnation:
            self._drop_peer(old, "restarted", keep_link=link)
        if not self._closed and self._links.get(link.endpoint) is link:
            self._on_hello_reply(link, header, payload)

    async def _still_answers(self, link: _Link) -> bool:
        """Whether the node behind ``link`` answers a HELLO as the same process, soon."""
        probe: asyncio.Future[None] = self._loop.create_future()
        link.probe = probe
        self._send_hello(link)
        try:
            await asyncio.wait_for(probe, _timing.DUPLICATE_PROBE)
            return True
        except TimeoutError:
            return False
        finally:
            link.probe = None

    def _answer_hello(
        self, ident: bytes, header: Header, body: dict[str, Any], error: str | None
    ) -> None:
        reply_body: dict[str, Any] = {
            "cluster": self.config.cluster,
            "pub": self.pub_port,
            "rtr": self.router_port,
            "addr": self.address,
            "v": PROTOCOL_VERSION,
            "served": sorted(self._served),
            "durable": self.log is not None,
            "log": self.log.log_id if self.log is not None else None,
            "first": self.oldest_available(),
            "inc_first": self.first_seq,
        }
        if error is not None:
            reply_body["error"] = error
        hdr = encode_header(
            Kind.HELLO_REPLY,
            self.node_id,
            self.incarnation,
            self.sent_seq,
            time.time_ns(),
            correlation_id=header.correlation_id,
        )
        self._reply(ident, _CTL_FRAME, hdr, pack_control(reply_body))
        if error is not None or self._closed:
            return
        # The asker subscribes to our PUB next and is ready once it hears our heartbeat:
        # a few early ones make that a matter of milliseconds, not of a heartbeat interval.
        self._hurry_heartbeats()
        # A peer that found us first (static discovery) tells us where it is.
        self.consider(_announced(header, body, "HELLO"))

    def oldest_available(self) -> int:
        """Lowest seq this node can still replay."""
        if self.log is not None:
            return self.log.first_seq or (self.sent_seq + 1)
        return self._ring.oldest or (self.sent_seq + 1)

    def _serve_nack(self, ident: bytes, header: Header, payload: bytes) -> None:
        first, last, runs = _parse_nack(unpack_control(payload, self._limits))
        last = min(last, self.sent_seq, first + _timing.NACK_MAX_RANGE - 1)
        oldest = self.oldest_available()
        # Clipped and merged, so one NACK replays each seq of one window at most once, however
        # its runs overlap: a NACK can never ask for more than NACK_MAX_RANGE events.
        wanted = [(first, last)] if runs is None else runs
        sent_upto = first - 1  # every asked-for seq up to here went out
        for lo, hi in _merge_runs(wanted, max(first, oldest), last):
            if not self._replay(ident, lo, hi):
                break  # the peer's queue is full; it will ask again
            sent_upto = hi
        end = encode_header(
            Kind.REPLAY_END, self.node_id, self.incarnation, self.sent_seq, time.time_ns()
        )
        self._reply(ident, _CTL_FRAME, end, pack_control([first, last, oldest, sent_upto]))

    def _replay(self, ident: bytes, seq: int, last: int) -> bool:
        """Send ``seq..last`` from the ring, or the log when the ring is past them."""
        ring_oldest = self._ring.oldest or (self.sent_seq + 1)
        if self.log is not None and seq < ring_oldest and seq <= last:
            # A bounded range, read from the page cache.
            for record in self.log.read_range(seq, min(last, ring_oldest - 1)):
                if not self._reply(ident, topic_frame(record.topic), record.header, record.payload):
                    return False
                self.stats.replays_served += 1
            seq = ring_oldest
        while seq <= last:
            frames = self._ring.get(seq)
            seq += 1
            if frames is None:
                return False  # not held after all (the ring started over): not sent
            if not self._reply(ident, *frames):
                return False
            self.stats.replays_served += 1
        return True

    # ------------------------------------------------------------------ DEALER links

    def _link(self, endpoint: str, *, static: bool = False, node_id: str | None = None) -> _Link:
        link = self._links.get(endpoint)
        if link is not None:
            return link
        sock = self._socket(zmq.DEALER)
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise TransportError(f"cannot connect to {endpoint!r}: {exc}") from exc
        link = _Link(endpoint, sock, node_id=node_id, static=static)
        link.answered_at = time.monotonic()
        self._links[endpoint] = link
        link.reader = SocketReader(sock, lambda batch: self._on_link_batch(link, batch), 256)
        self._send_hello(link)
        return link

    def _close_link(self, link: _Link) -> None:
        self._links.pop(link.endpoint, None)
        if link.reader is not None:
            link.reader.close()
        link.socket.close(linger=0)

    def _link_of(self, node_id: str) -> _Link | None:
        for link in self._links.values():
            if link.node_id == node_id:
                return link
        return None

    def _send_hello(self, link: _Link) -> None:
        link.hello_at = time.monotonic()
        link.hellos += 1
        hdr = encode_header(Kind.HELLO, self.node_id, self.incarnation, self.seq, time.time_ns())
        body = pack_control(
            {
                "cluster": self.config.cluster,
                "pub": self.pub_port,
                "rtr": self.router_port,
                "addr": self.address,
                "v": PROTOCOL_VERSION,
            }
        )
        with contextlib.suppress(TransportError):  # retried by the maintenance loop
            self._send_link(link, _CTL_FRAME, hdr, body)

    def _send_ready(self, peer: PeerInfo) -> None:
        link = self._link_of(peer.node_id)
        if link is None:
            return
        hdr = encode_header(Kind.READY, self.node_id, self.incarnation, self.seq, time.time_ns())
        with contextlib.suppress(TransportError):  # our heartbeats' "hears" list backs it up
            self._send_link(link, _CTL_FRAME, hdr, b"")

    def _on_link_batch(self, link: _Link, batch: list[list[bytes]]) -> Awaitable[None] | None:
        if link.guarded is None:
            link.guarded = self._guard(
                f"link {link.endpoint}", lambda frames: self._on_link_message(link, frames)
            )
        return self._handle_batch(batch, link.guarded)

    def _on_link_message(self, link: _Link, frames: list[bytes]) -> Awaitable[None] | None:
        check_frames(frames, self._limits)
        topic = split_topic(frames[0])
        header = decode_header(frames[1], self._limits)
        kind = header.kind
        if kind == Kind.HELLO_REPLY:
            if link.node_id is not None and header.source != link.node_id:
                self._bad(header.source, "HELLO reply for another node's link")
                return None
            self._on_hello_reply(link, header, frames[2])
            return None
        # We dialled this endpoint and its HELLO reply named the node: whatever else comes
        # back on the link must be that node's. Another peer cannot answer in its name.
        if link.node_id is None or header.source != link.node_id:
            self._bad(header.source, "source does not match its link")
            return None
        if kind == Kind.EVENT:  # a replayed event
            return self._on_event(topic, header, frames, replayed=True)
        if kind == Kind.REPLAY_END:
            self._on_replay_end(header, frames[2])
        elif kind == Kind.REPLY:
            self._on_reply(header, frames[2])
        else:
            self._bad(header.source, f"kind {kind} on DEALER")
        return None

    def _on_reply(self, header: Header, payload: bytes) -> None:
        corr = header.correlation_id or ""
        fut = self._pending.get(corr)
        if fut is None or fut.done():
            self.stats.late_replies += 1
            return
        if self._pending_peer.get(corr) != header.source:
            self._bad(header.source, "reply from a node that was not asked")
            return
        fut.set_result((header, payload))

    def _on_hello_reply(self, link: _Link, header: Header, payload: bytes) -> None:
        body = unpack_control(payload, self._limits)
        if not isinstance(body, dict):
            raise DecodeError("HELLO reply must be a map")
        if "error" in body:
            error = str(body["error"])
            if error.startswith("node id"):
                self.refused_as_duplicate = error
                log.error("%s at %s refused us: %s", header.source, link.endpoint, error)
            else:
                log.warning("peer %s at %s refused us: %s", header.source, link.endpoint, error)
            link.answered_at = time.monotonic()
            return
        if body.get("cluster") != self.config.cluster or header.source == self.node_id:
            return
        ann = _announced(header, body, "HELLO reply")
        served_list = body.get("served", [])
        if not isinstance(served_list, list):
            raise DecodeError("HELLO reply: served must be a list")
        served = frozenset(s for s in served_list if isinstance(s, str))
        if ann.version // 100 != PROTOCOL_VERSION // 100:
            return
        old = self.peers.get(ann.node_id)
        if old is not None:
            if old.incarnation == ann.incarnation and old.state is not PeerState.CONNECTING:
                link.answered_at = time.monotonic()
                if link.probe is not None and not link.probe.done():
                    link.probe.set_result(None)  # still the same process (_still_answers)
                return  # a repeated reply
            if old.incarnation != ann.incarnation:
                old_link = self._link_of(old.node_id)
                if old_link is not None and old_link is not link:
                    # A live peer's id answers from another endpoint: restarted there, or
                    # someone in its name? Its old endpoint decides, as for a HELLO.
                    self._start_eagerly(
                        self._take_over_if_gone(link, old_link, header, payload), "takeover"
                    )
                    return
                self._drop_peer(old, "restarted", keep_link=link)
        link.node_id = ann.node_id
        now = time.monotonic()
        link.answered_at, link.hellos, link.last_node = now, 0, None
        peer = PeerInfo(
            node_id=ann.node_id,
            cluster=ann.cluster,
            address=ann.address,
            pub_port=ann.pub_port,
            router_port=ann.router_port,
            version=ann.version,
            incarnation=ann.incarnation,
            state=PeerState.ALIVE,
            first_seen=now,
            last_seen=now,
            served=served,
            last_seq=header.seq,
        )
        peer.durable = bool(body.get("durable", False))
        inc_first, log_id = body.get("inc_first"), body.get("log")
        space = (log_id if type(log_id) is int else 0) if peer.durable else peer.incarnation
        self.peers.add(peer)
        self._streams[ann.node_id] = self._new_stream(
            peer, header.seq, inc_first if type(inc_first) is int else None, space
        )
        self._open_sub(peer)
        self._peer_change.set()
        self._cb.system("$frys.peer.joined", _peer_dict(peer))

    def _new_stream(
        self, peer: PeerInfo, hello_seq: int, inc_first: int | None, space: int
    ) -> _Stream:
        """Where to start reading a publisher we just met (HELLO answered at ``hello_seq``).

        Just after ``hello_seq`` when the publisher was running before this node started.
        A publisher that started after this node is read from the first event of its
        incarnation (``inc_first``), so nothing it published before the two met is missed.
        A publisher this node was reading before it left is read on from where it was
        (``_resume``): a durable one (any incarnation: its seqs survive restarts, and the gap
        is replayed from its log) or the same process back after a stall. A durable publisher
        is also read from earlier when a durable subscription has handled it only up to some
        seq: that range is replayed from its log.
        """
        departed = self._departed.pop(peer.node_id, None)
        if departed is not None:
            stream = departed[0]
            if stream.space == space:  # the same process, back within the grace
                stream.tracker.observe_last(hello_seq)
                return stream
            self._give_up_stream(peer.node_id, stream)  # another one: the old one is gone
        start = hello_seq + 1
        history_until = hello_seq
        resume = self._resume.pop((peer.node_id, space), None)
        if resume is not None:
            # The same sequence space as before it left: read on from where we were, and
            # only from there (what came before was delivered, or reported lost).
            if resume <= start:
                start = resume
                history_until = resume - 1
            elif peer.durable:
                log.warning(
                    "%s came back at seq %d, behind the %d we had: its log lost records",
                    peer.node_id,
                    hello_seq,
                    resume - 1,
                )
        elif inc_first is not None and peer.incarnation > self.incarnation and inc_first < start:
            start = inc_first
            history_until = inc_first - 1
        floor = self._cb.durable_floor(peer.node_id, space, peer.durable)
        if floor is not None and floor + 1 < start:
            start = floor + 1
        tracker = self._tracker(start)
        tracker.observe_last(hello_seq)
        return _Stream(peer.incarnation, tracker, peer.durable, history_until, space)

    def _tracker(self, next_seq: int) -> StreamTracker[Frames]:
        return StreamTracker(next_seq, max_pending_bytes=self._limits.max_held_bytes)

    def rewind(self, source: str, next_seq: int) -> None:
        """Re-read ``source`` from ``next_seq`` for a durable subscription created late.

        What this node has already delivered becomes history: only durable subscriptions
        see it again (and skip what their cursor says they handled).
        """
        stream = self._streams.get(source)
        if stream is None or next_seq >= stream.tracker.next_seq:
            return
        old = stream.tracker
        stream.history_until = max(stream.history_until, old.next_seq - 1)
        stream.tracker = self._tracker(next_seq)
        stream.tracker.observe_last(old.known_last)

    def keeps_log(self, source: str) -> bool:
        """Whether ``source`` is a peer with a durable log (its seqs outlive its restarts)."""
        stream = self._streams.get(source)
        return stream is not None and stream.durable

    def space_of(self, source: str) -> int | None:
        """The sequence space of ``source``'s events (see ``_Stream.space``), if known."""
        stream = self._streams.get(source) or self._departed.get(source, (None, 0.0))[0]
        return stream.space if stream is not None else None

    def _on_replay_end(self, header: Header, payload: bytes) -> None:
        body = unpack_control(payload, self._limits)
        if not (
            isinstance(body, list) and len(body) in (3, 4) and all(type(x) is int for x in body)
        ):
            raise DecodeError("REPLAY_END body must be [first, last, oldest, sent_upto?]")
        stream = self._streams.get(header.source)
        if stream is None or stream.incarnation != header.incarnation:
            return
        tracker = stream.tracker
        # The publisher itself says how far its stream goes: seqs claimed beyond that (a
        # forged event or heartbeat) never existed, and must not be waited for.
        dropped = tracker.cap_last(header.seq)
        if dropped:
            self._bad(header.source, "seq beyond the publisher's own last seq")
        tracker.observe_last(header.seq)
        sent_upto = body[3] if len(body) == 4 else None
        gap = tracker.replay_done(body[0], body[1], body[2], sent_upto)
        if gap is not None:
            self._report_gap(header.source, stream, gap)
        self._repair(header.source, stream)  # the next window, if there is one

    # ------------------------------------------------------------------ membership

    def consider(self, ann: Announcement) -> None:
        """A node was announced (mDNS or HELLO): connect if it is new to us."""
        if self._closed or ann.node_id == self.node_id or ann.cluster != self.config.cluster:
            return
        peer = self.peers.get(ann.node_id)
        endpoint = f"tcp://{ann.address}:{ann.router_port}"
        if peer is not None:
            if peer.incarnation == ann.incarnation:
                return
            if ann.incarnation < peer.incarnation:
                return  # a stale announcement of an older process
            # A new incarnation, or someone claiming one: the HELLO reply from the announced
            # endpoint decides (_on_hello_reply replaces the peer), not the claim itself.
        link = self._links.get(endpoint)
        if link is not None and link.node_id not in (None, ann.node_id):
            if self.peers.get(link.node_id) is not None:
                return  # a live peer answers there: the announcement is stale or false
            self._close_link(link)  # the endpoint now belongs to someone else
            link = None
        if link is None:
            unknown = [
                other
                for other in self._links.values()
                if other.node_id is None and not other.static
            ]
            if len(unknown) >= _timing.MAX_UNKNOWN_LINKS:
                # A flood of announcements (true or not) must not lock real peers out: the
                # one that has waited longest for an answer makes room.
                self._bad(ann.node_id, "too many unanswered peers")
                self._close_link(min(unknown, key=lambda other: other.answered_at))
            self._link(endpoint, node_id=None)
        else:
            self._send_hello(link)

    def _drop_peer(self, peer: PeerInfo, reason: str, keep_link: _Link | None = None) -> None:
        self.peers.remove(peer.node_id)
        stream = self._streams.pop(peer.node_id, None)
        if stream is not None and stream.durable:
            # Nothing is lost yet: it is in the publisher's log. Resume there if it returns.
            self._remember_resume(peer.node_id, stream.space, stream.tracker.next_seq)
        elif stream is not None and reason == "expired":
            # Not lost yet: a peer that only stalled (paused, swapping, a long GC) comes back
            # within the grace and its stream goes on where it was, repaired from its ring.
            self._departed[peer.node_id] = (stream, time.monotonic() + _timing.DEPARTED_GRACE)
        elif stream is not None:
            self._give_up_stream(peer.node_id, stream)  # it said goodbye, or restarted
        self._close_sub(peer.node_id)
        link = self._link_of(peer.node_id)
        if link is not None and link is not keep_link:
            # Keep asking: a peer that stalled past its ttl (or was falsely said to leave)
            # answers again when it can, and nothing else would tell us it is back.
            link.node_id = None
            link.last_node = peer.node_id
            link.hellos = 0
            link.answered_at = time.monotonic()
        # Requests waiting on this peer will not be answered: fail them now, not at timeout.
        for corr, target in list(self._pending_peer.items()):
            fut = self._pending.get(corr)
            if target == peer.node_id and fut is not None and not fut.done():
                fut.set_exception(TransportError(f"{peer.node_id} left ({reason})"))
        self._peer_change.set()
        info = _peer_dict(peer)
        info["reason"] = reason
        self._cb.system("$frys.peer.left", info)

    def _give_up_stream(self, node_id: str, stream: _Stream) -> None:
        """The publisher is gone: what it still owed us is lost (a ``$frys.gap``).

        Should the same process come back after all, its stream resumes after that point.
        """
        gap = stream.tracker.abandon()
        if gap is not None:
            self._report_gap(node_id, stream, gap)
        tracker = stream.tracker
        self._remember_resume(node_id, stream.space, max(tracker.next_seq, tracker.known_last + 1))

    def _remember_resume(self, node_id: str, space: int, next_seq: int) -> None:
        if len(self._resume) >= _timing.MAX_REMEMBERED_STREAMS:
            self._resume.pop(next(iter(self._resume)))  # the oldest
        self._resume[(node_id, space)] = next_seq

    def forget_link_of(self, node_id: str) -> None:
        """mDNS says ``node_id`` is gone: stop probing its old endpoint (unless static)."""
        if self.peers.get(node_id) is not None:
            return
        for link in list(self._links.values()):
            if link.node_id is None and link.last_node == node_id and not link.static:
                self._close_link(link)

    def _report_gap(self, source: str, stream: _Stream, gap: Gap) -> None:
        lost_before = stream.tracker.gaps
        released = stream.tracker.skip(gap)
        # Events held back inside the gap arrived and are released: they are not lost.
        count = stream.tracker.gaps - lost_before
        self.stats.gaps += count
        self.stats.gap_events += 1
        log.warning("lost events %d..%d from %s: %s", gap.first, gap.last, source, gap.reason)
        self._cb.system(
            "$frys.gap",
            {
                "publisher": source,
                "incarnation": stream.incarnation,
                "first": gap.first,
                "last": gap.last,
                "count": count,
                "reason": gap.reason,
            },
        )
        if released:
            pending = self._deliver_many(stream, released)
            if pending is not None:
                self._spawn(_awaited(pending), "deliver-after-gap")

    # ------------------------------------------------------------------ timers

    def _send_heartbeat(self) -> None:
        hdr = encode_header(
            Kind.HEARTBEAT, self.node_id, self.incarnation, self.sent_seq, time.time_ns()
        )
        # "hears": whose event streams reach us. A peer that finds itself listed knows its
        # events flow to us, even if our READY to it was lost.
        hears = [p.node_id for p in self.peers if p.receiving]
        body = pack_control({"served": sorted(self._served), "load": self.load(), "hears": hears})
        self._send_pub(_HB_FRAME, hdr, body)

    def _hurry_heartbeats(self) -> None:
        """Send extra heartbeats soon (a new subscriber's SUB takes a moment to connect)."""
        if self._hurried or self._closed:
            return
        self._hurried = True
        for delay in _timing.JOIN_HEARTBEATS:
            self._loop.call_later(delay, self._extra_heartbeat)
        self._loop.call_later(_timing.JOIN_HEARTBEATS[-1], self._hurry_done)

    def _extra_heartbeat(self) -> None:
        if not self._closed:
            self._send_heartbeat()

    def _hurry_done(self) -> None:
        self._hurried = False

    async def _heartbeat_loop(self) -> None:
        self.load()  # prime psutil's cpu_percent
        while True:
            self._send_heartbeat()
            await asyncio.sleep(self.config.heartbeat_interval)

    async def _maintenance_loop(self) -> None:
        interval = min(_timing.MAINTENANCE_INTERVAL, self.config.heartbeat_interval / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            _, expired = self.peers.sweep(now)
            for peer in expired:
                self.peers.add(peer)  # _drop_peer removes it again, with bookkeeping
                self._drop_peer(peer, "expired")
            for node_id, (stream, due) in list(self._departed.items()):
                if now >= due:
                    del self._departed[node_id]
                    self._give_up_stream(node_id, stream)
            if self._reliable:
                for source, stream in list(self._streams.items()):
                    self._repair(source, stream, now)
            for link in list(self._links.values()):
                if link.node_id is not None:
                    continue
                # An endpoint we knew a node at is probed long (it may only have stalled);
                # one that never answered (a stale or false announcement) only briefly.
                give_up = _timing.LINK_GIVE_UP if link.last_node else _timing.NEW_LINK_GIVE_UP
                if not link.static and now - link.answered_at > give_up:
                    self._close_link(link)
                    continue
                backoff = _timing.HELLO_RETRY * 2 ** min(max(link.hellos - 1, 0), 8)
                wait = min(backoff, _timing.HELLO_RETRY_MAX)
                if now - link.hello_at > wait:
                    self._send_hello(link)

    def _repair(self, source: str, stream: _Stream, now: float | None = None) -> None:
        """Act on the stream's gap, if any: NACK it, or report what cannot be had."""
        nack = stream.tracker.poll(time.monotonic() if now is None else now)
        if nack is not None:
            self._send_nack(source, stream, nack)

    def _send_nack(self, source: str, stream: _Stream, nack: Nack) -> None:
        link = self._link_of(source)
        if link is None:
            return
        hdr = encode_header(Kind.NACK, self.node_id, self.incarnation, 0, time.time_ns())
        try:
            body = [nack.first, nack.last, [list(run) for run in nack.missing]]
            self._send_link(link, _CTL_FRAME, hdr, pack_control(body))
            self.stats.nacks_sent += 1
        except TransportError:
            pass  # asked again after the NACK timeout


async def _finish_batch(
    pending: Awaitable[None],
    batch: list[list[bytes]],
    start: int,
    one: Callable[[list[bytes]], Awaitable[None] | None],
) -> None:
    """Handle the rest of a batch, in order, after a message had to wait."""
    await pending
    for frames in batch[start:]:
        more = one(frames)
        if more is not None:
            await more


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


async def _awaited(aw: Awaitable[None]) -> None:
    await aw


class _Started:
    """Awaits a coroutine that was started by hand and is suspended, having yielded ``value``.

    It passes what the driving task sends or throws on to the coroutine, the way ``await``
    would have, had the task started it.
    """

    __slots__ = ("_coro", "_value")

    def __init__(self, coro: Coroutine[Any, Any, Any], value: Any) -> None:
        self._coro = coro
        self._value = value

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self._coro, self._value
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _resume(coro: Coroutine[Any, Any, Any], value: Any) -> Any:
    return await _Started(coro, value)


def _announced(header: Header, body: dict[str, Any], what: str) -> Announcement:
    """The announcement in a HELLO (or its reply) body, checked; raises DecodeError."""
    addr, pub, rtr, version = body.get("addr"), body.get("pub"), body.get("rtr"), body.get("v")
    cluster = body.get("cluster")
    if not (isinstance(addr, str) and isinstance(cluster, str) and type(version) is int):
        raise DecodeError(f"{what}: addr, cluster and v must be a str, a str and an int")
    if not (type(pub) is int and type(rtr) is int and 0 < pub < 65536 and 0 < rtr < 65536):
        raise DecodeError(f"{what}: ports must be integers 1..65535, got {pub!r} and {rtr!r}")
    try:
        ipaddress.IPv4Address(addr)
        validate_name(cluster, "cluster")
    except (ValueError, ConfigError) as exc:
        raise DecodeError(f"{what}: {exc}") from exc
    return Announcement(header.source, cluster, addr, pub, rtr, version, header.incarnation)


def _merge_runs(runs: list[tuple[int, int]], lo: int, hi: int) -> list[tuple[int, int]]:
    """``runs`` clipped to ``lo..hi``, sorted and merged: each seq at most once."""
    merged: list[tuple[int, int]] = []
    for a, b in sorted((max(a, lo), min(b, hi)) for a, b in runs):
        if a > b:
            continue
        if merged and a <= merged[-1][1] + 1:
            if b > merged[-1][1]:
                merged[-1] = (merged[-1][0], b)
        else:
            merged.append((a, b))
    return merged


def _parse_nack(body: Any) -> tuple[int, int, list[tuple[int, int]] | None]:
    """``[first, last]`` or ``[first, last, [[lo, hi], ...]]``; raises DecodeError."""
    if not (isinstance(body, list) and len(body) in (2, 3)):
        raise DecodeError("NACK body must be [first, last, runs?]")
    first, last = body[0], body[1]
    if type(first) is not int or type(last) is not int:
        raise DecodeError("NACK first/last must be integers")
    if len(body) == 2:
        return first, last, None
    runs: list[tuple[int, int]] = []
    if not isinstance(body[2], list) or len(body[2]) > _timing.NACK_MAX_RANGE:
        raise DecodeError("NACK runs must be a short list")
    for run in body[2]:
        if not (isinstance(run, list) and len(run) == 2 and all(type(x) is int for x in run)):
            raise DecodeError("a NACK run must be [lo, hi]")
        runs.append((run[0], run[1]))
    return first, last, runs


def _peer_dict(peer: PeerInfo) -> dict[str, Any]:
    return {
        "node_id": peer.node_id,
        "cluster": peer.cluster,
        "address": peer.address,
        "pub_port": peer.pub_port,
        "router_port": peer.router_port,
        "incarnation": peer.incarnation,
    }
