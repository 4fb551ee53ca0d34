"""Garbage from raw ZeroMQ peers is counted and dropped; the node keeps serving good peers."""

from __future__ import annotations

import asyncio
import os
import time

import lz4.frame
import msgpack
import pytest
import zmq
import zmq.asyncio

import frys_zmq as frys
from frys_zmq._wire import Kind, encode_header, pack_batch, pack_control, topic_frame
from frys_zmq.testing import NodeProcess

pytestmark = pytest.mark.timeout(90)

MiB = 1024 * 1024


def bomb() -> bytes:
    """An lz4 frame that claims (and would really produce) 80 MiB of zeros."""
    return lz4.frame.compress(b"\0" * (80 * MiB), store_size=True)


def garbage_messages(source: str = "evil") -> list[list[bytes]]:
    good_header = encode_header(Kind.REQUEST, source, 1, 0, time.time_ns(), correlation_id="c1")
    return [
        [os.urandom(64)],  # one random frame
        [os.urandom(10), os.urandom(10), os.urandom(10)],  # three random frames
        [
            topic_frame("a.b"),
            msgpack.packb([999, 1, source, 1, 1, 0, None, 0, None, None, None, None]),
            b"",
        ],
        [topic_frame("a.b"), good_header],  # truncated: payload frame missing
        [topic_frame("a.b"), b"\xdd\xff\xff\xff\xff", b""],  # array32 claiming 4 G elements
        [topic_frame("a.b"), b"\xdb\xff\xff\xff\xff" + b"x" * 16, b""],  # str32 claiming 4 GiB
        [topic_frame("a.b"), b"\x91" * 200_000, b""],  # nesting 200,000 deep
        [b"no-terminator", good_header, b""],
        [b"\xff\xfe\0", good_header, b""],  # topic not UTF-8
        [
            topic_frame("svc.echo"),
            encode_header(Kind.REQUEST, source, 1, 0, 0, None, 1, correlation_id="bomb"),
            bomb(),
        ],
        [
            topic_frame("svc.echo"),
            encode_header(Kind.REQUEST, source, 1, 0, 0, None, 0, correlation_id="junk"),
            b"\xc1",
        ],
        [
            topic_frame("svc.echo"),
            encode_header(Kind.REQUEST, source, 1, 0, 0, None, 0x80, correlation_id="flags"),
            b"\x90",
        ],
    ]


async def test_garbage_on_the_router_is_counted_and_good_peers_are_still_served(cluster):
    config = frys.EventBusConfig(
        node_id="victim",
        cluster=cluster,
        interface="127.0.0.1",
        limits=frys.Limits(max_message_bytes=4 * MiB),
    )
    async with frys.EventBus(config) as victim, NodeProcess("good", cluster=cluster) as good:
        await victim.handle_request("svc.echo", lambda req: {"echo": req.payload})
        got: list[frys.Event] = []
        victim.subscribe("chat.*", got.append)
        await victim.wait_for_peers(1)
        await good.call("wait_peers", n=1)

        ctx = zmq.asyncio.Context()
        raw = ctx.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(victim.endpoints["router"])
        try:
            for frames in garbage_messages():
                await raw.send_multipart(frames)
            # The node answered the decodable-but-bad requests with errors, never crashed.
            replies = []
            for _ in range(3):
                replies.append(await asyncio.wait_for(raw.recv_multipart(), 10))
            # Over max_message_bytes: libzmq drops the connection (ZMQ_MAXMSGSIZE).
            await raw.send_multipart([os.urandom(5 * MiB)])
        finally:
            raw.close()
            ctx.term()
        kinds = {msgpack.unpackb(r[1])[9]: msgpack.unpackb(r[1])[8] for r in replies}
        assert kinds == {"bomb": "frys/error", "junk": "frys/error", "flags": "frys/error"}

        # Still serving the good peer, both ways.
        reply = await good.call("request", topic="svc.echo", payload=[1, 2])
        assert reply["kind"] == "success" and reply["value"] == {"echo": [1, 2]}
        await good.call("publish", topic="chat.msg", payload={"n": 1})
        async with asyncio.timeout(10):
            while not got:
                await asyncio.sleep(0.01)
        assert got[0].payload == {"n": 1}

        m = victim.get_metrics()
        assert m["bad_messages"] >= 9
        assert m["bad_by_reason"].get("UnknownProtocolVersion") == 1
        assert m["bad_by_reason"].get("BadFrame", 0) >= 3
        assert m["decode_errors"] >= 3


async def test_garbage_on_a_peer_event_stream_is_counted_and_good_events_still_flow(cluster):
    """A fake peer answers HELLO properly, then publishes garbage on its PUB socket."""
    victim_cfg = frys.EventBusConfig(
        node_id="victim", cluster=cluster, interface="127.0.0.1", discovery_strategy="static"
    )
    ctx = zmq.asyncio.Context()
    fake_router = ctx.socket(zmq.ROUTER)
    fake_pub = ctx.socket(zmq.PUB)
    for s in (fake_router, fake_pub):
        s.setsockopt(zmq.LINGER, 0)
    rtr_port = fake_router.bind_to_random_port("tcp://127.0.0.1")
    pub_port = fake_pub.bind_to_random_port("tcp://127.0.0.1")
    inc = 7
    try:
        async with frys.EventBus(victim_cfg) as victim:
            got: list[frys.Event] = []
            victim.subscribe(">", got.append)
            await victim.connect(f"tcp://127.0.0.1:{rtr_port}")
            # Answer the victim's HELLO like a real node would.
            ident, _tframe, _header, _ = await asyncio.wait_for(fake_router.recv_multipart(), 10)
            reply = encode_header(Kind.HELLO_REPLY, "evil", inc, 0, time.time_ns())
            body = pack_control(
                {
                    "cluster": cluster,
                    "pub": pub_port,
                    "rtr": rtr_port,
                    "addr": "127.0.0.1",
                    "v": 100,
                    "served": [],
                }
            )
            await fake_router.send_multipart([ident, topic_frame("$frys.ctl"), reply, body])
            # Wait until the victim's SUB is connected: heartbeats reach it.
            hb = encode_header(Kind.HEARTBEAT, "evil", inc, 0, time.time_ns())
            async with asyncio.timeout(10):
                while not any(p.receiving for p in victim.peers()):
                    await fake_pub.send_multipart([topic_frame("$frys.hb"), hb, pack_control({})])
                    await asyncio.sleep(0.02)

            def event(seq: int, payload: bytes, flags: int = 0) -> list[bytes]:
                h = encode_header(Kind.EVENT, "evil", inc, seq, time.time_ns(), None, flags)
                return [topic_frame("evil.stuff"), h, payload]

            for frames in garbage_messages():
                await fake_pub.send_multipart(frames)
            await fake_pub.send_multipart(event(1, bomb(), flags=1))
            await fake_pub.send_multipart(event(2, b"\xc1"))
            await fake_pub.send_multipart(event(3, msgpack.packb({"ok": True})))
            # A BATCH whose middle payload does not decode: its neighbours still arrive.
            entries = [event(4, msgpack.packb(4)), event(5, b"\xc1"), event(6, msgpack.packb(6))]
            batch = encode_header(Kind.BATCH, "evil", inc, 4, time.time_ns())
            body = pack_batch([part for _, h, p in entries for part in (h, p)])
            await fake_pub.send_multipart([topic_frame("evil.stuff"), batch, body])
            async with asyncio.timeout(10):
                while len(got) < 3:
                    await asyncio.sleep(0.01)
            assert [e.payload for e in got] == [{"ok": True}, 4, 6]
            m = victim.get_metrics()
            assert m["decode_errors"] == 3
            assert m["bad_messages"] >= 10
    finally:
        fake_router.close()
        fake_pub.close()
        ctx.term()
