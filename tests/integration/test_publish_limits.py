"""What peers would refuse is refused at publish time: a clear error, and no seq used up."""

from __future__ import annotations

import asyncio
import contextlib
import os

import pytest
from spawned import FAST, node, wait_until

import frys_zmq as frys

pytestmark = pytest.mark.timeout(60)


@contextlib.asynccontextmanager
async def subscriber(cluster: str):
    async with node("sub", cluster=cluster, extra_args=FAST) as proc:
        await proc.call("subscribe", pattern="x.>", quiet=True)
        yield proc


def publisher(cluster: str, **kw) -> frys.EventBus:
    return frys.EventBus(
        frys.EventBusConfig(
            node_id="pub",
            cluster=cluster,
            interface="127.0.0.1",
            heartbeat_interval=0.2,
            peer_ttl=1.0,
            **kw,
        )
    )


REFUSED = [
    pytest.param({"metadata": {1: "x"}}, frys.EncodeError, id="int metadata key"),
    pytest.param({"metadata": {1.5: "x"}}, frys.EncodeError, id="float metadata key"),
    pytest.param({"metadata": 5}, frys.EncodeError, id="metadata not a mapping"),
    pytest.param({"metadata": "ab"}, frys.EncodeError, id="metadata a string"),
    pytest.param({"metadata": {"big": "x" * 70_000}}, frys.MessageTooLarge, id="huge header"),
    pytest.param({"payload": os.urandom(300_000)}, frys.MessageTooLarge, id="over the size"),
    pytest.param({"payload": [[[[[[[[[[1]]]]]]]]]]}, frys.LimitExceeded, id="too deep"),
    pytest.param({"payload": object()}, frys.EncodeError, id="not encodable"),
]


async def test_events_peers_would_refuse_are_refused_and_the_stream_goes_on(cluster):
    limits = frys.Limits(max_message_bytes=256 * 1024, max_depth=8)
    async with subscriber(cluster) as sub, publisher(cluster, limits=limits) as bus:
        await bus.wait_for_peers(1, timeout=10)
        await bus.publish("x.ok", {"n": 0})
        for param in REFUSED:
            kw, error = param.values
            with pytest.raises(error):
                await bus.publish("x.bad", kw.get("payload", 1), metadata=kw.get("metadata"))
        # A list of 5,000 metadata values is fine for publisher and receiver alike.
        await bus.publish("x.ok", {"n": 1}, metadata={"ids": list(range(5000))})
        await bus.publish("x.ok", {"n": 2})
        got = await wait_until(lambda: sub.call("received"), lambda r: len(r) >= 3, 20)
        assert got == [0, 1, 2]
        assert bus.get_metrics()["seq"] == 3  # nothing refused used up a seq
        metrics = await sub.call("metrics")
        assert metrics["gaps"] == 0
        assert metrics["nacks_sent"] == 0
        assert metrics["bad_messages"] == 0


async def test_a_request_too_large_for_peers_is_refused_and_so_is_a_reply(cluster):
    limits = frys.Limits(max_message_bytes=64 * 1024)
    async with (
        publisher(cluster, limits=limits) as server,
        frys.EventBus(
            frys.EventBusConfig(
                node_id="cli", cluster=cluster, interface="127.0.0.1", limits=limits
            )
        ) as client,
    ):
        await server.handle_request("big.reply", lambda req: os.urandom(100_000))
        await server.handle_request("echo", lambda req: req.payload)
        await client.wait_for_peers(1, timeout=10)
        with pytest.raises(frys.MessageTooLarge):
            await client.request("echo", os.urandom(100_000), timeout=5)
        reply = await client.request("big.reply", None, timeout=5)
        assert isinstance(reply, frys.Reply.Error)
        assert "MessageTooLarge" in str(reply.error)
        assert (await client.request("echo", "fine", timeout=5)).unwrap() == "fine"


async def test_a_node_with_too_many_requests_in_progress_sheds_the_rest_at_once(cluster):
    async with (
        publisher(cluster, max_pending_requests=5) as server,
        frys.EventBus(
            frys.EventBusConfig(node_id="cli", cluster=cluster, interface="127.0.0.1")
        ) as client,
    ):
        release = asyncio.Event()

        async def slow(req: frys.Request) -> str:
            await release.wait()
            return "done"

        await server.handle_request("slow", slow)
        await client.wait_for_peers(1, timeout=10)
        calls = [asyncio.ensure_future(client.request("slow", i, timeout=10)) for i in range(8)]
        async with asyncio.timeout(10):
            while server.get_metrics()["requests_shed"] < 3:
                await asyncio.sleep(0.01)
        release.set()
        replies = await asyncio.gather(*calls)
        shed = [r for r in replies if isinstance(r, frys.Reply.Error)]
        assert len(shed) == 3 and all(isinstance(r.error, frys.Overloaded) for r in shed)
        assert [r.unwrap() for r in replies if r.ok] == ["done"] * 5
