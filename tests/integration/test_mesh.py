"""A real mesh: nodes in separate processes, mDNS on 127.0.0.1, ZeroMQ over loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

import frys_zmq as frys
from frys_zmq.testing import NodeProcess

pytestmark = pytest.mark.timeout(90)


@contextlib.asynccontextmanager
async def mesh(
    cluster: str, *ids: str, args: list[str] | None = None
) -> AsyncIterator[list[NodeProcess]]:
    nodes = [NodeProcess(i, cluster=cluster, extra_args=args) for i in ids]
    try:
        await asyncio.gather(*(n.start() for n in nodes))
        yield nodes
    finally:
        await asyncio.gather(*(n.aclose() for n in nodes), return_exceptions=True)


def seqs(events: list[dict]) -> list[int]:
    return [e["payload"]["n"] for e in events]


async def test_three_processes_find_each_other_and_carry_wildcard_events_both_ways(cluster):
    async with mesh(cluster, "a", "b", "c") as (a, b, c):
        await a.call("subscribe", pattern="order.*")
        await b.call("subscribe", pattern="user.>")
        await c.call("subscribe", pattern="user.*")
        await c.call("subscribe", pattern="order.>")
        peers = await asyncio.gather(*(n.call("wait_peers", n=2, timeout=10) for n in (a, b, c)))
        assert peers == [["b", "c"], ["a", "c"], ["a", "b"]]

        await a.call("publish_many", topic="user.created", count=200)
        await b.call("publish_many", topic="order.placed", count=100)
        await c.call("publish_many", topic="order.eu.placed", count=100)

        # a: order.* matches order.placed only (from b); not order.eu.placed.
        got_a = await a.collect(100)
        assert {e["topic"] for e in got_a} == {"order.placed"}
        assert seqs(got_a) == list(range(100))
        # b: user.> matches user.created.
        got_b = await b.collect(200)
        assert seqs(got_b) == list(range(200))
        # c: user.created (200 from a) and order.placed (100 from b); its own order.eu.placed
        # (100) reaches its local order.> subscription too.
        got_c = await c.collect(400)
        by_source = {}
        for e in got_c:
            by_source.setdefault((e["source"], e["topic"]), []).append(e["payload"]["n"])
        assert by_source == {
            ("a", "user.created"): list(range(200)),
            ("b", "order.placed"): list(range(100)),
            ("c", "order.eu.placed"): list(range(100)),
        }
        # Exactly once: nothing more is pending anywhere.
        for node in (a, b, c):
            m = await node.call("metrics")
            assert m["duplicates"] == 0 or node is c
            assert m["gaps"] == 0
        assert a.events.empty() and b.events.empty() and c.events.empty()


async def test_requests_across_processes_succeed_fail_time_out_and_find_no_responders(cluster):
    async with mesh(cluster, "srv", "cli") as (srv, cli):
        await srv.call("handle", topic="math.sum", mode="sum")
        await srv.call("handle", topic="math.fail", mode="error")
        await srv.call("handle", topic="math.slow", mode="slow", delay=2.0)
        await cli.call("wait_peers", n=1)
        await srv.call("wait_peers", n=1)

        ok = await cli.call("request", topic="math.sum", payload=[1, 2, 3])
        assert ok == {"kind": "success", "value": 6, "responder": "srv"}

        err = await cli.call("request", topic="math.fail", payload="x")
        assert err["kind"] == "error" and err["type"] == "HandlerError"
        assert "ValueError" in err["error"] and "refused" in err["error"]

        slow = await cli.call("request", topic="math.slow", payload=None, timeout=0.3)
        assert slow == {"kind": "timeout"}

        loop = asyncio.get_running_loop()
        t0 = loop.time()
        none = await cli.call("request", topic="math.nobody", payload=None, timeout=5.0)
        assert none["kind"] == "error" and none["type"] == "NoResponders"
        assert loop.time() - t0 < 2.0  # at once, not after the 5 s timeout


async def test_hundreds_of_concurrent_requests_to_another_process_are_all_answered(cluster):
    # Replies sent on the server's ROUTER must not swallow its wake-up for requests that are
    # still queued (ZeroMQ's FD is edge-triggered): every request here must be answered.
    async with mesh(cluster, "srv") as (srv,):
        await srv.call("handle", topic="math.sum", mode="sum")
        config = frys.EventBusConfig(cluster=cluster, interface="127.0.0.1", node_id="cli")
        async with frys.EventBus(config) as bus:
            await bus.wait_for_peers(1, timeout=10)
            replies = await asyncio.gather(
                *(bus.request("math.sum", [i, 1], timeout=20.0) for i in range(500))
            )
    assert [r.unwrap() for r in replies] == [i + 1 for i in range(500)]


async def test_a_killed_node_leaves_the_peer_table_within_the_ttl(cluster):
    args = ["--heartbeat", "0.2", "--ttl", "1.0"]
    async with mesh(cluster, "stay", "victim", args=args) as (stay, victim):
        await stay.call("subscribe", pattern="$frys.peer.>")
        # The two may have met before the subscription existed: ask, rather than wait for
        # a $frys.peer.joined that came first.
        await stay.call("wait_peers", n=1)
        assert [p["node_id"] for p in await stay.call("peers")] == ["victim"]

        loop = asyncio.get_running_loop()
        await victim.kill()
        t0 = loop.time()
        left = await stay.collect(1, timeout=10, where=lambda e: e["topic"] == "$frys.peer.left")
        assert left[0]["payload"]["node_id"] == "victim"
        assert left[0]["payload"]["reason"] == "expired"
        assert loop.time() - t0 < 1.0 + 1.0  # ttl plus one maintenance period and slack
        assert await stay.call("peers") == []


async def test_two_clusters_on_one_machine_stay_apart(cluster):
    other = cluster + "x"
    async with mesh(cluster, "a1", "a2") as (a1, a2), mesh(other, "b1") as (b1,):
        await a1.call("subscribe", pattern=">")
        await b1.call("subscribe", pattern=">")
        assert await a1.call("wait_peers", n=1) == ["a2"]
        await a2.call("wait_peers", n=1)
        await a2.call("publish", topic="hello.world", payload={"n": 0})
        got = await a1.collect(1)
        assert got[0]["source"] == "a2"
        # b1 never hears of the other cluster.
        assert await b1.call("peers") == []
        assert b1.events.empty()


async def test_a_restarted_node_with_the_same_id_is_a_new_incarnation(cluster):
    args = ["--heartbeat", "0.2", "--ttl", "1.0"]
    async with mesh(cluster, "watcher", args=args) as (watcher,):
        await watcher.call("subscribe", pattern="job.*")
        first = NodeProcess("worker", cluster=cluster, extra_args=args)
        await first.start()
        try:
            await first.call("wait_peers", n=1)
            await first.call("publish_many", topic="job.done", count=5)
            assert seqs(await watcher.collect(5)) == list(range(5))
            old_inc = (await watcher.call("peers"))[0]["incarnation"]
        finally:
            await first.kill()
        second = NodeProcess("worker", cluster=cluster, extra_args=args)
        await second.start()  # takes over the id at once: the old process is gone
        try:
            await second.call("wait_peers", n=1)
            await second.call("publish_many", topic="job.done", count=5, start=100)
            assert seqs(await watcher.collect(5)) == list(range(100, 105))
            peers = await watcher.call("peers")
            assert [p["node_id"] for p in peers] == ["worker"]
            assert peers[0]["incarnation"] != old_inc
        finally:
            await second.aclose()


async def test_a_subscriber_with_a_tiny_receive_queue_still_gets_every_event_in_order(cluster):
    async with (
        mesh(cluster, "fast") as (fast,),
        mesh(cluster, "slow", args=["--recv-hwm", "10"]) as (slow,),
    ):
        await slow.call("subscribe", pattern="tick")
        await slow.call("wait_peers", n=1)
        await fast.call("wait_peers", n=1)
        await fast.call("publish_many", topic="tick", count=20_000, call_timeout=60)
        got = await slow.collect(20_000, timeout=60)
        assert seqs(got) == list(range(20_000))
        m = await slow.call("metrics")
        assert m["gaps"] == 0


async def test_with_static_discovery_a_second_live_process_of_an_id_fails_to_start(cluster):
    # No mDNS probing to catch it: the peer it greets checks the id's old endpoint.
    args = ["--heartbeat", "0.2", "--ttl", "1.0"]
    async with mesh(cluster, "hub", args=args) as (hub,):
        static = [*args, "--static", hub.info["router"]]
        first = NodeProcess("dup", cluster=cluster, extra_args=static)
        await first.start()
        try:
            await first.call("wait_peers", n=1)
            second = NodeProcess("dup", cluster=cluster, extra_args=static)
            with pytest.raises(RuntimeError, match="DuplicateNodeId"):
                await second.start()
            await second.aclose()
            # The first one is untouched: still the hub's only "dup".
            peers = await hub.call("peers")
            assert [(p["node_id"], p["ready"]) for p in peers] == [("dup", True)]
            metrics = await hub.call("metrics")
            assert metrics["bad_by_reason"].get("duplicate node id") == 1
        finally:
            await first.aclose()


async def test_with_static_discovery_a_restarted_process_takes_its_id_over_at_once(cluster):
    args = ["--heartbeat", "0.2", "--ttl", "5.0"]  # the old one is not expired yet
    async with mesh(cluster, "hub", args=args) as (hub,):
        static = [*args, "--static", hub.info["router"]]
        await hub.call("subscribe", pattern="job.*")
        first = NodeProcess("worker", cluster=cluster, extra_args=static)
        await first.start()
        try:
            await first.call("wait_peers", n=1)
            old_inc = (await hub.call("peers"))[0]["incarnation"]
        finally:
            await first.kill()
        second = NodeProcess("worker", cluster=cluster, extra_args=static)
        await second.start()  # its old endpoint does not answer: a restart, not a twin
        try:
            await second.call("wait_peers", n=1)
            await second.call("publish_many", topic="job.done", count=3)
            assert seqs(await hub.collect(3)) == [0, 1, 2]
            peers = await hub.call("peers")
            assert [p["node_id"] for p in peers] == ["worker"]
            assert peers[0]["incarnation"] != old_inc
        finally:
            await second.aclose()
