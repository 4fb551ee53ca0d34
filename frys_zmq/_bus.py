"""``EventBus``: the facade users hold. Owns the dispatcher, the codec and the node."""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

from ._codec import PayloadCodec
from ._config import EventBusConfig, validate_endpoint
from ._cursors import CursorStore
from ._dispatch import Dispatcher, Handler, Subscription
from ._errors import (
    AlreadyClosed,
    BadFrame,
    ConfigError,
    DecodeError,
    EncodeError,
    FrysError,
    HandlerError,
    MessageTooLarge,
    NoResponders,
    NotStarted,
    Overloaded,
    StorageError,
    TopicError,
    TransportError,
)
from ._event import EMPTY_METADATA, Event, PendingPayload, Reply, Request
from ._node import Node, NodeCallbacks
from ._peers import PeerInfo
from ._processing import EventFilter, EventProcessingChain
from ._topics import is_system_topic, validate_pattern, validate_topic
from ._wire import (
    Header,
    Kind,
    decode_header,
    encode_header,
    pack_control,
    plain_metadata,
    topic_frame,
    unpack_control,
)

__all__ = ["EventBus", "Publisher"]

log = logging.getLogger("frys_zmq.bus")

RequestHandler = Callable[[Request], Any]


class Publisher:
    """A publisher bound to one topic: ``await pub(payload)``."""

    __slots__ = ("_bus", "topic")

    def __init__(self, bus: EventBus, topic: str) -> None:
        self._bus = bus
        self.topic = topic

    async def publish(self, payload: Any, *, metadata: Mapping[str, Any] | None = None) -> Event:
        return await self._bus.publish(self.topic, payload, metadata=metadata)

    __call__ = publish


class EventBus:
    """A node of the frys mesh. Use as ``async with EventBus(config) as bus:``."""

    def __init__(self, config: EventBusConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = EventBusConfig.load(**overrides)
        elif overrides:
            config = config.replace(**overrides)
        self.config = config
        self.node_id = config.node_id
        self._codec = PayloadCodec(
            limits=config.limits,
            compression=config.compression_enabled,
            compression_threshold=config.compression_threshold,
        )
        self._dispatcher = Dispatcher(
            queue_size=config.event_queue_size,
            queue_bytes=config.event_queue_bytes,
            max_concurrent=config.max_concurrent_events,
            retries=config.handler_retries,
            retry_backoff=config.handler_retry_backoff,
            on_dead_letter=self._dead_letter,
            resolve=self._resolve,
        )
        self._handlers: dict[str, RequestHandler] = {}
        self._request_sem: asyncio.Semaphore | None = None
        self._node: Node | None = None
        self._started = False
        self._closed = False
        self._open = False  #: started and not closed
        self._match = self._dispatcher.matches
        self._topic_ok: dict[str, bytes] = {}
        self._durable: dict[str, tuple[Subscription, CursorStore]] = {}
        self._remote_topic_ok: set[str] = set()
        self._rr = itertools.count()
        self._local_seq = 0
        self._incarnation = 0
        self._latency = _Latency()
        self.published = 0
        self.decode_errors = 0
        self._serving = 0  #: remote requests being handled now
        self.requests_shed = 0  #: remote requests refused as Overloaded

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> EventBus:
        """Bind sockets, start discovery and heartbeats. ``async with`` calls this."""
        if self._closed:
            raise AlreadyClosed("this EventBus was closed; make a new one")
        if self._started:
            return self
        self._request_sem = asyncio.Semaphore(self.config.max_concurrent_events)
        self._incarnation = time.time_ns() // 1000
        if self.config.enable_distributed:
            node = Node(
                self.config,
                NodeCallbacks(
                    deliver=self._deliver_remote,
                    deliver_batch=self._deliver_batch,
                    serve=self._serve_remote,
                    system=self._system_event,
                    durable_floor=self._durable_floor,
                ),
            )
            await node.start()
            self._node = node
            self._incarnation = node.incarnation
            node.set_served(set(self._handlers))
        self._started = True
        self._open = True
        return self

    async def aclose(self) -> None:
        """Leave the mesh and stop every subscription. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._open = False
        try:
            if self._node is not None:
                await asyncio.shield(self._node.aclose())
        finally:
            await self._dispatcher.aclose()
            for _, store in self._durable.values():
                store.close()

    close = aclose

    async def __aenter__(self) -> EventBus:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self, _warn: Any = warnings.warn) -> None:
        if getattr(self, "_started", False) and not getattr(self, "_closed", True):
            _warn(f"EventBus {self.node_id!r} was not closed", ResourceWarning, stacklevel=2)

    def _check_open(self) -> None:
        if self._closed:
            raise AlreadyClosed("EventBus is closed")
        if not self._started:
            raise NotStarted("start the EventBus first (async with EventBus(...) as bus)")

    # ------------------------------------------------------------------ publish

    def _topic_frame(self, topic: str, *, system: bool = False) -> bytes:
        frame = self._topic_ok.get(topic)
        if frame is None:
            validate_topic(topic, allow_system=system)
            frame = topic_frame(topic)
            # Only user topics are remembered as valid: a system topic the bus published
            # itself ($frys.dlq...) must not become publishable by users.
            if len(self._topic_ok) < 65536 and not is_system_topic(topic):
                self._topic_ok[topic] = frame
        return frame

    async def publish(
        self,
        topic: str,
        payload: Any = None,
        *,
        metadata: Mapping[str, Any] | None = None,
        ack: bool | None = None,
    ) -> Event:
        """Publish to local subscribers and the mesh; returns the event as sent.

        Waits when a local subscriber's queue is full (back-pressure), and with ``ack=True``
        (default: ``config.publish_ack``) until the event is in this node's log under its
        fsync policy; without persistence that is a ``StorageError``, never a silent no-op.
        """
        if ack is None:
            ack = self.config.publish_ack
        if ack and (self._node is None or self._node.log is None):
            raise StorageError("publish(ack=True) needs enable_persistence=True")
        event, blocked = self._publish_nowait(topic, payload, metadata)
        if blocked:
            await self._dispatcher.wait_blocked(event, blocked)
        if ack:
            assert self._node is not None
            await self._node.wait_durable()
        return event

    def _publish_nowait(
        self,
        topic: str,
        payload: Any,
        metadata: Mapping[str, Any] | None,
        *,
        system: bool = False,
    ) -> tuple[Event, list[Subscription] | None]:
        # The publisher's hot path: every step here runs once per event.
        if not self._open:
            self._check_open()
        tframe = self._topic_ok.get(topic)
        if tframe is None:
            tframe = self._topic_frame(topic, system=system)
        meta = _metadata(metadata) if metadata else None
        ts = time.time_ns()
        node = self._node
        if node is not None:
            # Encode and check first: what cannot be encoded, or what receivers would refuse,
            # must not use up a seq, or every subscriber would wait for it in vain.
            seq = node.seq + 1
            data, flags = self._codec.encode(payload)
            header = encode_header(_EVENT, self.node_id, node.incarnation, seq, ts, meta, flags)
            self._check_outgoing(tframe, header, data, meta)
            node.send_event(topic, tframe, header, data, seq, ts)
        else:
            self._local_seq += 1
            seq = self._local_seq
        self.published += 1
        event = Event(
            topic, payload, meta or EMPTY_METADATA, self.node_id, self._incarnation, seq, ts
        )
        subs = self._match(topic)
        if not subs:
            return event, None
        return event, self._dispatcher.dispatch_nowait(event, subs)

    async def publish_batch(
        self, events: Iterable[tuple[str, Any] | tuple[str, Any, Mapping[str, Any] | None]]
    ) -> list[Event]:
        """Publish many ``(topic, payload[, metadata])`` in order; returns the events."""
        out: list[Event] = []
        append = out.append
        publish = self._publish_nowait
        for item in events:
            event, blocked = publish(item[0], item[1], item[2] if len(item) > 2 else None)
            if blocked:
                await self._dispatcher.wait_blocked(event, blocked)
            append(event)
            if len(out) % _BATCH_YIELD == 0:
                # A huge batch must not starve heartbeats and NACK answers of this node.
                await asyncio.sleep(0)
        return out

    def _check_outgoing(
        self, tframe: bytes, header: bytes, data: bytes, meta: Mapping[str, Any] | None
    ) -> None:
        """Raise if peers would drop this message: their limits are this node's limits."""
        limits = self.config.limits
        if len(header) > limits.max_header_bytes:
            raise MessageTooLarge(len(header), limits.max_header_bytes, "header (metadata)")
        size = len(tframe) + len(header) + len(data)
        if size > limits.max_message_bytes:
            raise MessageTooLarge(size, limits.max_message_bytes)
        if meta is not None and not plain_metadata(meta):
            try:
                decode_header(header, limits)  # exactly what a receiver will do with it
            except DecodeError as exc:
                raise EncodeError(f"peers would refuse this metadata: {exc}") from exc

    def publisher(self, topic: str) -> Publisher:
        """A callable bound to ``topic``."""
        validate_topic(topic)
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
        """Subscribe to ``pattern`` (``*`` one token, ``>`` the rest).

        ``bus.subscribe(p, handler)`` and ``sub = bus.subscribe(p)`` (then ``async for``)
        return a ``Subscription``; as a decorator, ``@bus.subscribe(p)`` replaces the
        function with its ``Subscription``, which stays callable. ``filter`` (an
        ``EventFilter`` or a predicate) skips events before the handler, ``chain`` runs its
        steps on each event that passes; see ``register_processing_chain`` for chains that
        apply to every subscription.
        """
        if self._closed:
            raise AlreadyClosed("EventBus is closed")
        validate_pattern(pattern)
        if filter is not None and not isinstance(filter, EventFilter):
            filter = EventFilter(filter)
        if chain is not None and not isinstance(chain, EventProcessingChain):
            raise ConfigError(f"chain must be an EventProcessingChain, got {chain!r}")
        if durable is None:
            return self._dispatcher.subscribe(pattern, handler, event_filter=filter, chain=chain)
        return self._subscribe_durable(pattern, handler, durable, filter, chain)

    def subscribe_with_filter(
        self,
        pattern: str,
        event_filter: EventFilter | Callable[[Event], bool],
        handler: Handler | None = None,
        **options: Any,
    ) -> Subscription:
        """``subscribe(pattern, handler, filter=event_filter, ...)``."""
        return self.subscribe(pattern, handler, filter=event_filter, **options)

    def register_processing_chain(self, pattern: str, chain: EventProcessingChain) -> None:
        """Run ``chain`` on the events of topics matching ``pattern`` before any handler.

        It applies to every subscription of this bus, present and future, before the
        subscription's own filter and chain; several chains run in registration order. Like
        middleware, it runs in each subscription's worker (so per-publisher order holds), once
        per subscription that receives the event: keep its steps free of side effects that
        must happen once.
        """
        validate_pattern(pattern)
        if not isinstance(chain, EventProcessingChain):
            raise ConfigError(f"chain must be an EventProcessingChain, got {chain!r}")
        self._dispatcher.register_chain(pattern, chain)

    def remove_processing_chain(self, pattern: str, chain: EventProcessingChain) -> bool:
        """Undo ``register_processing_chain``; returns whether it was registered."""
        return self._dispatcher.remove_chain(pattern, chain)

    def _subscribe_durable(
        self,
        pattern: str,
        handler: Handler | None,
        name: str,
        event_filter: EventFilter | None,
        chain: EventProcessingChain | None,
    ) -> Subscription:
        """A subscription whose progress per publisher survives this process.

        After each handled event its ``(sequence space, seq)`` is written to a cursor file; on
        a restart the node replays what came after the cursor from the publishers' logs.
        """
        if handler is None:
            raise ConfigError("a durable subscription needs a handler")
        if name in self._durable:
            raise ConfigError(f"durable subscription {name!r} exists already")
        store = CursorStore(self.config.node_dir, name)
        sub = self._dispatcher.subscribe(pattern, None, event_filter=event_filter, chain=chain)
        sub.durable = name
        node_id = self.node_id

        def space(source: str) -> int | None:
            return None if self._node is None else self._node.space_of(source)

        def skip(event: Event) -> bool:
            # Handled before: a cursor in the same sequence space at or past this seq.
            if event.source == node_id:
                return False
            cursor = store.get(event.source)
            return (
                cursor is not None and event.seq <= cursor[1] and cursor[0] == space(event.source)
            )

        def on_handled(event: Event) -> None:
            where = space(event.source)
            if event.source != node_id and where is not None:
                store.set(event.source, where, event.seq)

        sub.skip = skip
        sub.on_handled = on_handled
        self._durable[name] = (sub, store)
        sub(handler)  # start the worker only now that skip/on_handled are in place
        node = self._node
        if node is not None:
            # Publishers met before this subscription existed: read them again from its cursor.
            for publisher, (where, seq) in store.all().items():
                current = node.space_of(publisher)
                if current is None:
                    continue
                if where != current and node.keeps_log(publisher):
                    self._log_replaced(sub, store, publisher, current, seq)
                    node.rewind(publisher, 1)
                elif where == current:
                    node.rewind(publisher, seq + 1)
        return sub

    def _log_replaced(
        self, sub: Subscription, store: CursorStore, publisher: str, space: int, seq: int
    ) -> None:
        """``sub`` handled ``publisher`` up to ``seq`` of a log that is gone: say so, and
        move its cursor to the start of the publisher's new log."""
        self._system_event(
            "$frys.gap",
            {
                "publisher": publisher,
                "first": seq + 1,
                "last": None,
                "count": None,
                "reason": "the publisher's log was replaced: its later events are lost",
                "subscription": sub.durable,
            },
        )
        if self._node is not None:
            self._node.stats.gap_events += 1
        store.set(publisher, space, 0)

    def _durable_floor(self, publisher: str, space: int, durable: bool) -> int | None:
        """Lowest seq of ``publisher`` handled by any durable subscription, if any has one.

        Only cursors in the publisher's current sequence space count (its log id if it keeps
        a log, else its incarnation). A cursor in another log of a publisher that keeps one
        means that log was lost: what came after the cursor is gone (a ``$frys.gap``), and
        the subscription reads the new log from its start.
        """
        seqs: list[int] = []
        for sub, store in self._durable.values():
            cursor = store.get(publisher)
            if sub.closed or cursor is None:
                continue
            if cursor[0] != space and durable:
                self._log_replaced(sub, store, publisher, space, cursor[1])
                cursor = (space, 0)
            if cursor[0] == space:
                seqs.append(cursor[1])
        return min(seqs) if seqs else None

    # ------------------------------------------------------------------ request / reply

    async def handle_request(self, topic: str, handler: RequestHandler) -> None:
        """Serve requests on ``topic`` (a topic or a pattern) with ``handler(Request)``."""
        validate_pattern(topic, allow_system=False)
        self._handlers[topic] = handler
        if self._node is not None:
            self._node.set_served(set(self._handlers))

    async def remove_request_handler(self, topic: str) -> None:
        self._handlers.pop(topic, None)
        if self._node is not None:
            self._node.set_served(set(self._handlers))

    def _local_handler(self, topic: str) -> RequestHandler | None:
        handler = self._handlers.get(topic)
        if handler is not None:
            return handler
        from ._topics import pattern_matches

        for pattern, h in self._handlers.items():
            if pattern_matches(pattern, topic):
                return h
        return None

    async def request(
        self,
        topic: str,
        payload: Any = None,
        *,
        timeout: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Reply[Any]:
        """Ask one serving node; returns ``Reply.Success``, ``Reply.Error`` or ``Reply.Timeout``.

        With no node serving ``topic`` the answer is ``Reply.Error(NoResponders)`` at once.
        """
        self._check_open()
        if topic not in self._topic_ok:
            self._topic_frame(topic)  # validates (and remembers) the topic
        timeout = self.config.request_timeout if timeout is None else timeout
        meta = _metadata(metadata) if metadata else None
        local = self._local_handler(topic)
        remote = self._node.servers_of(topic) if self._node is not None else []
        n = len(remote) + (1 if local is not None else 0)
        if n == 0:
            return Reply.Error(NoResponders(topic))
        pick = next(self._rr) % n
        if local is not None and pick == len(remote):
            req = Request(topic, payload, meta or {}, self.node_id, "")
            try:
                async with asyncio.timeout(timeout):
                    value = await self._call(local, req)
            except TimeoutError:
                return Reply.Timeout(timeout, topic)
            except Exception as exc:
                return Reply.Error(_as_handler_error(exc), self.node_id)
            return Reply.Success(value, self.node_id)
        node = self._node
        assert node is not None
        peer = remote[pick]
        data, flags = self._codec.encode(payload)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        tried: set[str] = set()
        backoff = 0.01
        while True:
            tried.add(peer.node_id)
            try:
                left = max(0.0, deadline - loop.time())
                header, body = await node.request(peer, topic, data, flags, meta, left)
                break
            except TimeoutError:
                return Reply.Timeout(timeout, topic)
            except TransportError as exc:
                # The node left (or cannot be reached): try another one that serves the
                # topic, with exponential backoff, within the same deadline. Handlers that
                # may run twice this way should be idempotent.
                others = [p for p in node.servers_of(topic) if p.node_id not in tried]
                if not others or loop.time() + backoff >= deadline:
                    return Reply.Error(exc, peer.node_id)
                await asyncio.sleep(backoff)
                backoff *= 2
                peer = others[next(self._rr) % len(others)]
        if header.content_type == "frys/error":
            err: FrysError
            try:
                info = unpack_control(body, self.config.limits)
                kind, message = str(info.get("type", "Exception")), str(info.get("message", ""))
                err = Overloaded(message) if kind == "Overloaded" else HandlerError(message, kind)
            except (DecodeError, AttributeError):
                err = HandlerError("undecodable error reply")
            return Reply.Error(err, header.source)
        try:
            value = self._codec.decode(body, header.flags)
        except DecodeError as exc:
            return Reply.Error(exc, header.source)
        return Reply.Success(value, header.source)

    send_request = request

    async def _call(self, handler: RequestHandler, req: Request) -> Any:
        result = handler(req)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _serve_remote(
        self, topic: str, header: Header, payload: bytes
    ) -> tuple[bool, bytes, int]:
        handler = self._local_handler(topic)
        if handler is None:
            return (
                False,
                pack_control({"type": "NoResponders", "message": f"{topic} not served"}),
                0,
            )
        assert self._request_sem is not None
        if self._serving >= self.config.max_pending_requests:
            # Shed load rather than queue without bound: the caller hears it at once.
            self.requests_shed += 1
            message = f"{self.node_id} has {self._serving} requests in progress"
            return False, pack_control({"type": "Overloaded", "message": message}), 0
        try:
            value = self._codec.decode(payload, header.flags)
        except DecodeError as exc:
            self._count_decode_error(header.source, exc)
            return False, pack_control({"type": type(exc).__name__, "message": str(exc)}), 0
        self._serving += 1
        try:
            async with self._request_sem:
                req = Request(
                    topic, value, header.metadata or {}, header.source, header.correlation_id or ""
                )
                result = await self._call(handler, req)
                data, flags = self._codec.encode(result)
                return True, data, flags
        except Exception as exc:
            log.debug("request handler for %s raised", topic, exc_info=True)
            return False, pack_control({"type": type(exc).__name__, "message": str(exc)}), 0
        finally:
            self._serving -= 1

    # ------------------------------------------------------------------ remote delivery

    def _deliver_remote(
        self, topic: str, header: Header, payload: bytes, history: bool
    ) -> Awaitable[None] | None:
        if topic not in self._remote_topic_ok and not self._check_remote_topic(
            topic, header.source
        ):
            return None
        subs = self._dispatcher.matches(topic)
        if history:
            subs = tuple(s for s in subs if s.durable is not None)
        if not subs:
            self._dispatcher.unmatched += 1
            return None
        event = Event(
            topic,
            PendingPayload(payload, header.flags),
            metadata=header.metadata or EMPTY_METADATA,
            source=header.source,
            incarnation=header.incarnation,
            seq=header.seq,
            timestamp_ns=header.timestamp_ns,
        )
        self._latency.add(time.time_ns() - header.timestamp_ns)
        # A single event can be big (batches carry only small ones): its bytes count against
        # the subscriptions' event_queue_bytes, so a backlog of them stays bounded.
        blocked = self._dispatcher.dispatch_nowait(event, subs, len(payload))
        if blocked:
            return self._dispatcher.wait_blocked(event, blocked, len(payload))
        return None

    def _resolve(self, event: Event) -> bool:
        """Decode a remote event's payload in place; False (counted) if it cannot be."""
        pending = event.payload
        if type(pending) is not PendingPayload:
            return True
        if pending.data is None:
            return False  # another subscription found it undecodable and counted it
        try:
            event.payload = self._codec.decode(pending.data, pending.flags)
        except DecodeError as exc:
            event.payload = PendingPayload(None, pending.flags)
            self._count_decode_error(event.source, exc)
            return False
        return True

    def _check_remote_topic(self, topic: str, source: str, events: int = 1) -> bool:
        """Whether a peer may send ``topic``; counts the ``events`` dropped if not.

        The seqs are used up (the tracker moved on), so such events are dropped here.
        """
        try:
            validate_topic(topic, allow_system=topic.startswith(_REMOTE_SYSTEM_PREFIX))
        except TopicError as exc:
            for _ in range(events):
                self._count_decode_error(source, exc)
            return False
        if len(self._remote_topic_ok) < 65536:
            self._remote_topic_ok.add(topic)
        return True

    def _deliver_batch(
        self, topic: str, source: str, incarnation: int, first: int, parts: list[bytes]
    ) -> Awaitable[None] | None:
        """Deliver the events of one BATCH (see ``NodeCallbacks.deliver_batch``).

        The hot path of a subscriber: the topic is checked and matched once for the batch,
        each event costs a header decode and an ``Event``, and the events go to each matching
        subscription in one queue extend. Payloads stay bytes until a worker takes them.
        """
        n = len(parts) >> 1
        if topic not in self._remote_topic_ok and not self._check_remote_topic(topic, source, n):
            return None
        subs = self._dispatcher.matches(topic)
        if not subs:
            self._dispatcher.unmatched += n
            return None
        limits = self.config.limits
        events: list[Event] = []
        append = events.append
        seq = first
        for k in range(0, len(parts), 2):
            try:
                header = decode_header(parts[k], limits)
                if (
                    header.kind != _EVENT
                    or header.source != source
                    or header.incarnation != incarnation
                    or header.seq != seq
                ):
                    raise BadFrame("an entry of the batch is not its next event")
            except DecodeError as exc:
                self._count_decode_error(source, exc)
                continue
            finally:
                seq += 1
            # The payload stays bytes until a subscription worker takes the event.
            append(
                Event(
                    topic,
                    PendingPayload(parts[k + 1], header.flags),
                    header.metadata or EMPTY_METADATA,
                    source,
                    incarnation,
                    header.seq,
                    header.timestamp_ns,
                )
            )
        self._latency.add_events(time.time_ns(), events)
        blocked = self._dispatcher.dispatch_many(events, subs)
        if blocked:
            return self._dispatcher.wait_blocked_many(events, blocked)
        return None

    def _dead_letter(
        self, sub: Subscription, event: Event, exc: BaseException, attempts: int
    ) -> None:
        """Publish an event whose handler kept failing on ``$frys.dlq.<topic>``."""
        if is_system_topic(event.topic) or self._closed:
            return  # never dead-letter system events: a failing DLQ handler would loop
        topic = "$frys.dlq." + event.topic
        if len(topic.encode()) > 255:
            topic = "$frys.dlq"
        body = {
            "topic": event.topic,
            "payload": event.payload,
            "metadata": dict(event.metadata),
            "source": event.source,
            "seq": event.seq,
            "pattern": sub.pattern,
            "error": f"{type(exc).__name__}: {exc}",
            "attempts": attempts,
        }
        try:
            _, blocked = self._publish_nowait(topic, body, None, system=True)
        except FrysError:
            log.exception("could not dead-letter an event of %r", event.topic)
            return
        for other in blocked or ():
            other.dropped += 1

    def _count_decode_error(self, source: str, exc: DecodeError | TopicError) -> None:
        self.decode_errors += 1
        if self._node is not None:
            self._node._bad(source, type(exc).__name__, exc)

    def _system_event(self, topic: str, payload: dict[str, Any]) -> None:
        if self._closed:
            return
        event = Event(
            topic,
            payload,
            source=self.node_id,
            incarnation=self._incarnation,
            timestamp_ns=time.time_ns(),
        )
        subs = self._dispatcher.matches(topic)
        if subs:
            # System events never block the node: a full queue drops them (counted).
            blocked = self._dispatcher.dispatch_nowait(event, subs)
            for sub in blocked or ():
                sub.dropped += 1

    # ------------------------------------------------------------------ the log

    async def recover_events(self, topic: str | None = None, after_seq: int = 0) -> list[Event]:
        """Events this node published and still holds in its log (``enable_persistence``)."""
        return [event async for event in self.iter_events(topic, after_seq)]

    async def iter_events(
        self, topic: str | None = None, after_seq: int = 0
    ) -> AsyncIterator[Event]:
        """Stream this node's logged events after ``after_seq`` without loading them all."""
        self._check_open()
        if self._node is None or self._node.log is None:
            raise StorageError("this node keeps no log: set enable_persistence=True")
        limits = self.config.limits
        async for record in self._node.log.iter_events(after_seq, topic):
            header = decode_header(record.header, limits)
            yield Event(
                record.topic,
                self._codec.decode(record.payload, header.flags),
                metadata=header.metadata or EMPTY_METADATA,
                source=header.source,
                incarnation=header.incarnation,
                seq=record.seq,
                timestamp_ns=record.timestamp_ns,
            )

    # ------------------------------------------------------------------ membership

    def peers(self) -> list[PeerInfo]:
        """The peers this node knows, as snapshots."""
        if self._node is None:
            return []
        return [replace(p) for p in self._node.peers]

    async def wait_for_peers(self, n: int = 1, timeout: float = 10.0) -> list[PeerInfo]:
        """Wait until ``n`` peers exchange events with this node both ways.

        Raises ``TimeoutError`` (a ``FrysError``) if they do not appear in time.
        """
        self._check_open()
        if self._node is None:
            raise NotStarted("wait_for_peers needs enable_distributed=True")
        try:
            ready = await self._node.wait_for_peers(n, timeout)
        except TimeoutError:
            have = len(self._node.ready_peers())
            raise PeerWaitTimeout(f"{have} of {n} peers ready after {timeout:g}s") from None
        return [replace(p) for p in ready]

    async def connect(self, endpoint: str) -> None:
        """Add a peer by its ROUTER endpoint (``tcp://host:port``); ConfigError if malformed."""
        self._check_open()
        validate_endpoint(endpoint)
        if self._node is None:
            raise NotStarted("connect needs enable_distributed=True")
        self._node.connect(endpoint)

    @property
    def endpoints(self) -> dict[str, str]:
        """This node's PUB and ROUTER endpoints."""
        if self._node is None:
            return {}
        n = self._node
        return {
            "pub": f"tcp://{n.address}:{n.pub_port}",
            "router": f"tcp://{n.address}:{n.router_port}",
        }

    # ------------------------------------------------------------------ metrics

    def get_metrics(self) -> dict[str, Any]:
        """Counters and gauges of this node (see README for their meaning)."""
        d = self._dispatcher
        subs = d.subscriptions()
        metrics: dict[str, Any] = {
            "node_id": self.node_id,
            "events_published": self.published,
            "events_dispatched": d.dispatched,
            "events_delivered": sum(s.delivered for s in subs),
            "events_filtered": sum(s.filtered for s in subs),
            "events_unmatched": d.unmatched,
            "handler_errors": d.handler_errors,
            "dead_letters": d.dead_letters,
            "decode_errors": self.decode_errors,
            "requests_shed": self.requests_shed,
            "queue_depth": sum(s.pending for s in subs),
            "subscriptions": d.topic_counts(),
            "latency_ms": self._latency.summary(),
        }
        if self._node is not None:
            st = self._node.stats
            metrics.update(
                peers=len(self._node.peers),
                peers_ready=len(self._node.ready_peers()),
                received=st.received,
                duplicates=st.duplicates
                + sum(s.tracker.duplicates for s in self._node._streams.values()),
                repaired=sum(s.tracker.repaired for s in self._node._streams.values()),
                gaps=st.gaps,
                gap_events=st.gap_events,
                nacks_sent=st.nacks_sent,
                replays_served=st.replays_served,
                send_dropped=st.send_dropped,
                late_replies=st.late_replies,
                unknown_source=st.unknown_source,
                bad_messages=st.bad_messages,
                bad_by_reason=dict(st.bad_by_reason),
                seq=self._node.seq,
            )
        return metrics


#: The only system topics a peer may send us: dead letters. Peers cannot fake
#: ``$frys.peer.*`` or ``$frys.gap`` on this node.
_REMOTE_SYSTEM_PREFIX = "$frys.dlq"

_EVENT = int(Kind.EVENT)

#: ``publish_batch`` lets the event loop run after this many events.
_BATCH_YIELD = 1024


class PeerWaitTimeout(FrysError, TimeoutError):
    """``wait_for_peers`` ran out of time."""


def _metadata(metadata: Any) -> dict[str, Any]:
    """A private copy of ``metadata``, which must be a mapping with str keys."""
    if not isinstance(metadata, Mapping):
        raise EncodeError(f"metadata must be a mapping, got {type(metadata).__name__}")
    meta = dict(metadata)
    for key in meta:
        if type(key) is not str:
            raise EncodeError(f"metadata keys must be str, got {key!r}")
    return meta


def _as_handler_error(exc: BaseException) -> FrysError:
    if isinstance(exc, FrysError):
        return exc
    return HandlerError(str(exc), type(exc).__name__)


class _Latency:
    """Bounded reservoir of delivery latencies (ns) for p50/p99."""

    #: Batches are sampled: the latencies of neighbours in one batch hardly differ.
    _STRIDE = 8

    def __init__(self, size: int = 4096) -> None:
        self._buf: list[int] = []
        self._size = size
        self._i = 0
        self.count = 0
        self.total = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.total += ns
        if len(self._buf) < self._size:
            self._buf.append(ns)
        else:
            self._buf[self._i] = ns
            self._i = (self._i + 1) % self._size

    def add_events(self, now_ns: int, events: list[Event]) -> None:
        """Add the latency of events delivered at ``now_ns``: every ``_STRIDE``-th one."""
        add = self.add
        for event in events[:: self._STRIDE]:
            add(now_ns - event.timestamp_ns)

    def summary(self) -> dict[str, float]:
        if not self._buf:
            return {"avg": 0.0, "p50": 0.0, "p99": 0.0}
        s = sorted(self._buf)
        return {
            "avg": self.total / self.count / 1e6,
            "p50": s[len(s) // 2] / 1e6,
            "p99": s[min(len(s) - 1, int(len(s) * 0.99))] / 1e6,
        }
