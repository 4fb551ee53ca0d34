"""Helpers for the hostile-peer tests: a raw ZeroMQ peer that completes HELLO, and a mesh.

``FakePeer`` is a ROUTER + PUB + DEALER speaking just enough of the protocol to become a
member; after that it may say anything in anyone's name. ``victim_and_good`` starts two real
in-process nodes linked to each other (no mDNS: the victim dials the good peer), the victim
serving ``svc.echo``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import zmq
import zmq.asyncio

import frys_zmq as frys
from frys_zmq._wire import Kind, encode_header, pack_control, topic_frame

CTL = topic_frame("$frys.ctl")
HB = topic_frame("$frys.hb")


def header(
    kind: int,
    source: str,
    incarnation: int,
    seq: int,
    *,
    correlation_id: str | None = None,
) -> bytes:
    return encode_header(
        kind, source, incarnation, seq, time.time_ns(), correlation_id=correlation_id
    )


def fields(header_frame: bytes) -> list[Any]:
    """A header's fields: [version, kind, source, incarnation, seq, ts, meta, flags,
    content_type, correlation_id, ...]."""
    return msgpack.unpackb(header_frame)


def config(node_id: str, cluster: str, **overrides: Any) -> frys.EventBusConfig:
    """A loopback node that finds no one by itself: peers come by ``connect`` or HELLO."""
    return frys.EventBusConfig(
        node_id=node_id,
        cluster=cluster,
        interface="127.0.0.1",
        discovery_strategy="none",
        **overrides,
    )


async def until(condition: Callable[[], object], timeout: float = 10.0) -> None:
    """Poll ``condition()`` until it is true; TimeoutError after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def ready(bus: frys.EventBus, node_id: str) -> frys.PeerInfo | None:
    """``bus``'s view of ``node_id`` if events flow both ways with it, else None."""
    return next((p for p in bus.peers() if p.node_id == node_id and p.ready), None)


@contextlib.asynccontextmanager
async def victim_and_good(
    cluster: str, **victim_overrides: Any
) -> AsyncIterator[tuple[frys.EventBus, frys.EventBus]]:
    """The victim (serving ``svc.echo``) and a good peer, linked both ways."""
    async with (
        frys.EventBus(config("victim", cluster, **victim_overrides)) as victim,
        frys.EventBus(config("good", cluster)) as good,
    ):
        await victim.handle_request("svc.echo", lambda req: {"echo": req.payload})
        await victim.connect(good.endpoints["router"])
        await victim.wait_for_peers(1)
        await good.wait_for_peers(1)
        yield victim, good


class FakePeer:
    """A raw ROUTER + PUB + DEALER that speaks just enough protocol to become a peer."""

    def __init__(self, node_id: str, cluster: str, incarnation: int = 7) -> None:
        self.node_id, self.cluster, self.incarnation = node_id, cluster, incarnation
        self.ctx = zmq.asyncio.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.pub = self.ctx.socket(zmq.PUB)
        self.dealer = self.ctx.socket(zmq.DEALER)
        for sock in (self.router, self.pub, self.dealer):
            sock.setsockopt(zmq.LINGER, 0)
        self.router_port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.pub_port = self.pub.bind_to_random_port("tcp://127.0.0.1")
        #: The victim's DEALER to our ROUTER, once it has said HELLO.
        self.victim_ident = b""

    def announcement(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "addr": "127.0.0.1",
            "pub": self.pub_port,
            "rtr": self.router_port,
            "v": 101,
        }

    async def join(self, victim: frys.EventBus, timeout: float = 10.0) -> None:
        """HELLO the victim, answer its HELLO, heartbeat until events flow both ways."""
        self.dealer.connect(victim.endpoints["router"])
        hello = header(Kind.HELLO, self.node_id, self.incarnation, 0)
        await self.dealer.send_multipart([CTL, hello, pack_control(self.announcement())])
        async with asyncio.timeout(timeout):
            while True:
                ident, _topic, hdr, _body = await self.router.recv_multipart()
                if fields(hdr)[1] == Kind.HELLO:
                    self.victim_ident = ident
                    break
            body = {**self.announcement(), "served": [], "durable": False, "inc_first": 1}
            reply = header(Kind.HELLO_REPLY, self.node_id, self.incarnation, 0)
            await self.router.send_multipart([ident, CTL, reply, pack_control(body)])
            # The victim's SUB connects a moment later; it is ready once it hears us.
            while ready(victim, self.node_id) is None:
                await self.heartbeat(0, hears=[victim.node_id])
                await asyncio.sleep(0.01)

    async def heartbeat(
        self,
        seq: int,
        *,
        source: str | None = None,
        incarnation: int | None = None,
        hears: list[str] | None = None,
    ) -> None:
        hdr = header(
            Kind.HEARTBEAT,
            source or self.node_id,
            self.incarnation if incarnation is None else incarnation,
            seq,
        )
        body = pack_control({"served": [], "load": 0.0, "hears": hears or []})
        await self.pub.send_multipart([HB, hdr, body])

    async def publish(
        self,
        topic: str,
        seq: int,
        payload: Any,
        *,
        source: str | None = None,
        incarnation: int | None = None,
    ) -> None:
        """An EVENT on our PUB, in our name or (``source``) another's."""
        hdr = header(
            Kind.EVENT,
            source or self.node_id,
            self.incarnation if incarnation is None else incarnation,
            seq,
        )
        await self.pub.send_multipart([topic_frame(topic), hdr, msgpack.packb(payload)])

    async def to_victim(self, topic: bytes, hdr: bytes, body: bytes) -> None:
        """A message on our ROUTER to the victim's link (where replies and replays go)."""
        await self.router.send_multipart([self.victim_ident, topic, hdr, body])

    @contextlib.asynccontextmanager
    async def answering_hellos(self, node_id: str, incarnation: int) -> AsyncIterator[None]:
        """While in the block, answer every HELLO on our ROUTER in ``node_id``'s name."""

        async def answer() -> None:
            body = pack_control({**self.announcement(), "served": [], "inc_first": 1})
            while True:
                ident, _topic, hdr, _body = await self.router.recv_multipart()
                if fields(hdr)[1] == Kind.HELLO:
                    reply = header(Kind.HELLO_REPLY, node_id, incarnation, 0)
                    await self.router.send_multipart([ident, CTL, reply, body])

        task = asyncio.create_task(answer())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def close(self) -> None:
        for sock in (self.router, self.pub, self.dealer):
            sock.close(linger=0)
        self.ctx.term()

    async def __aenter__(self) -> FakePeer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


@contextlib.asynccontextmanager
async def raw_dealer(endpoint: str, **options: int) -> AsyncIterator[zmq.asyncio.Socket]:
    """A bare DEALER connected to ``endpoint`` (no HELLO: a stranger)."""
    ctx = zmq.asyncio.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close(linger=0)
        ctx.term()
