"""Hostile members and strangers cannot kick peers out, lock new ones out or wear a node down.

Each test replays one attack of the hostile-peer trial against an in-process victim (a
``FakePeer`` that completed HELLO, or a bare DEALER that never did), then checks that the
good peer is still served.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time

import msgpack
import psutil
import pytest
import zmq
from hostile import (
    CTL,
    FakePeer,
    config,
    fields,
    header,
    raw_dealer,
    ready,
    until,
    victim_and_good,
)

import frys_zmq as frys
from frys_zmq import _timing
from frys_zmq._wire import Kind, pack_control, topic_frame
from frys_zmq.testing import NodeProcess

pytestmark = pytest.mark.timeout(30)


async def good_still_served(victim: frys.EventBus, good: frys.EventBus, got: list) -> None:
    """Good's events reach the victim, in order and complete, and the victim answers it."""
    before = len(got)
    for n in range(10):
        await good.publish("good.ev", {"n": n})
    await until(lambda: len(got) == before + 10)
    assert [e.payload["n"] for e in got[before:]] == list(range(10))
    reply = await good.request("svc.echo", "still there?", timeout=5)
    assert reply == frys.Reply.Success({"echo": "still there?"}, "victim")
    assert victim.get_metrics()["gaps"] == 0


def left_ids(events: list[frys.Event]) -> list[str]:
    return [e.payload["node_id"] for e in events]


@pytest.mark.parametrize("spoof", ["hello", "heartbeat", "bye"])
async def test_a_spoofed_hello_heartbeat_or_bye_in_a_peers_name_does_not_remove_it(cluster, spoof):
    async with victim_and_good(cluster) as (victim, good), FakePeer("evil", cluster) as fake:
        got: list[frys.Event] = []
        victim.subscribe("good.>", got.append)
        left: list[frys.Event] = []
        victim.subscribe("$frys.peer.left", left.append)
        good_inc = next(p.incarnation for p in victim.peers() if p.node_id == "good")
        bad = victim.get_metrics()["bad_messages"]

        if spoof == "hello":
            # "good restarted, and is now here": should the victim ask, our endpoint agrees.
            async with fake.answering_hellos("good", good_inc + 1):
                fake.dealer.connect(victim.endpoints["router"])
                hello = header(Kind.HELLO, "good", good_inc + 1, 0)
                await fake.dealer.send_multipart([CTL, hello, pack_control(fake.announcement())])
                async with asyncio.timeout(10):  # the victim answers it (a refusal, now)
                    while fields((await fake.dealer.recv_multipart())[1])[1] != Kind.HELLO_REPLY:
                        pass
                await good_still_served(victim, good, got)
        else:
            await fake.join(victim)
            if spoof == "heartbeat":
                await fake.heartbeat(0, source="good", incarnation=good_inc + 1)
            else:
                bye = header(Kind.BYE, "good", good_inc, 0)
                await fake.pub.send_multipart([topic_frame("$frys.hb"), bye, b""])
            await until(
                lambda: victim.get_metrics()["bad_messages"] > bad or not ready(victim, "good")
            )
            await good_still_served(victim, good, got)

        peer = ready(victim, "good")
        assert peer is not None and peer.incarnation == good_inc
        assert left_ids(left) == []


async def test_a_member_answering_a_probe_in_a_live_peers_name_neither_replaces_nor_replays_it(
    cluster,
):
    fast = {"heartbeat_interval": 0.2, "peer_ttl": 1.0}
    async with (
        victim_and_good(cluster, **fast) as (victim, good),
        FakePeer("evil", cluster) as fake,
    ):
        got: list[frys.Event] = []
        victim.subscribe("good.>", got.append)
        left: list[frys.Event] = []
        victim.subscribe("$frys.peer.left", left.append)
        good_inc = next(p.incarnation for p in victim.peers() if p.node_id == "good")
        await fake.join(victim)
        for n in range(5):
            await good.publish("good.ev", {"n": n})
        await until(lambda: len(got) == 5)

        # The fake falls silent; the victim expires it and probes its endpoint, which answers
        # in good's name.
        async with fake.answering_hellos("good", good_inc + 1):
            await until(lambda: "evil" in left_ids(left), timeout=5)
            with contextlib.suppress(TimeoutError):
                await until(lambda: "good" in left_ids(left), timeout=1.0)
            # Good is the victim's peer, as itself (again, if it was replaced meanwhile).
            await until(lambda: getattr(ready(victim, "good"), "incarnation", 0) == good_inc)
            for n in range(5, 10):
                await good.publish("good.ev", {"n": n})
            await until(lambda: len(got) >= 10)
        assert [e.payload["n"] for e in got[:10]] == list(range(10))
        assert left_ids(left) == ["evil"]


HOSTILE_HELLOS = {
    "pub=inf": {"pub": float("inf")},
    "addr='a b'": {"addr": "a b"},
    "rtr=-1": {"rtr": -1},
}


@pytest.mark.parametrize("fields_", HOSTILE_HELLOS.values(), ids=HOSTILE_HELLOS.keys())
async def test_a_hello_with_hostile_fields_is_counted_and_the_rest_of_its_batch_is_served(
    cluster, fields_
):
    async with (
        frys.EventBus(config("victim", cluster)) as victim,
        raw_dealer(victim.endpoints["router"]) as dealer,
    ):
        await victim.handle_request("svc.echo", lambda req: req.payload)
        announcement = {"cluster": cluster, "addr": "127.0.0.1", "pub": 1, "rtr": 1, "v": 101}
        hostile = [
            CTL,
            header(Kind.HELLO, "evil", 5, 0),
            pack_control({**announcement, **fields_}),
        ]

        def request(corr: str) -> list[bytes]:
            hdr = header(Kind.REQUEST, "evil", 1, 0, correlation_id=corr)
            return [topic_frame("svc.echo"), hdr, msgpack.packb(corr)]

        asked = [f"b{i}" for i in range(5)] + [f"a{i}" for i in range(5)]
        messages = [request(c) for c in asked[:5]] + [hostile] + [request(c) for c in asked[5:]]
        # Back to back, without yielding to the loop: the victim reads them as one batch.
        for frames in messages:
            await dealer.send_multipart(frames)
        answered = []
        async with asyncio.timeout(10):
            while len(answered) < len(asked):
                _topic, hdr, body = await dealer.recv_multipart()
                if fields(hdr)[1] == Kind.REPLY:  # not the HELLO reply the victim sends first
                    answered.append(msgpack.unpackb(body))
        assert sorted(answered) == sorted(asked)
        metrics = victim.get_metrics()
        assert metrics["bad_messages"] == 1
        assert metrics["peers"] == 0


def flood(endpoint: str, frames: list[bytes], stop: threading.Event, sent: list[int]) -> None:
    """Send ``frames`` to ``endpoint`` in bursts of 100 5 ms apart, until ``stop`` (or 10,000).

    A thread of its own, so that the victim's reads always find some among other messages.
    """
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        while not stop.is_set() and sent[0] < 10_000:
            for _ in range(100):
                sock.send_multipart(frames)
                sent[0] += 1
            time.sleep(0.005)
    finally:
        sock.close()
        ctx.term()


async def test_a_flood_of_hostile_hellos_costs_a_good_peer_none_of_its_requests(cluster):
    async with victim_and_good(cluster) as (victim, good):
        body = {"cluster": cluster, "addr": "127.0.0.1", "pub": float("inf"), "rtr": 1, "v": 101}
        hostile = [CTL, header(Kind.HELLO, "evil", 5, 0), pack_control(body)]
        bad = victim.get_metrics()["bad_messages"]
        stop, sent = threading.Event(), [0]
        flooder = threading.Thread(
            target=flood, args=(victim.endpoints["router"], hostile, stop, sent)
        )
        flooder.start()
        try:
            await until(lambda: victim.get_metrics()["bad_messages"] > bad)
            n = 0
            while n < 20 or sent[0] < 2000:  # at least 20 requests, all through the flood
                reply = await good.request("svc.echo", n, timeout=2)
                assert reply == frys.Reply.Success({"echo": n}, "victim")
                n += 1
        finally:
            stop.set()
            await asyncio.to_thread(flooder.join)
        await until(lambda: victim.get_metrics()["bad_messages"] == bad + sent[0])


async def test_many_fake_hellos_keep_file_descriptors_bounded_and_a_late_node_still_joins(
    cluster, monkeypatch
):
    # Room for 32 endpoints that never answered (instead of 256), so that a few hundred
    # HELLOs show the bound.
    monkeypatch.setattr(_timing, "MAX_UNKNOWN_LINKS", 32)
    me = psutil.Process()
    async with (
        frys.EventBus(config("victim", cluster)) as victim,
        raw_dealer(victim.endpoints["router"]) as dealer,
    ):
        fds = me.num_fds()

        async def fds_settle_within(bound: int) -> None:
            """Each link is a socket (an fd) and, while it reconnects, a TCP attempt (another);
            the sockets closed to make room are reaped by libzmq's thread, a moment later."""
            with contextlib.suppress(TimeoutError):
                await until(lambda: me.num_fds() - fds <= bound, timeout=5)
            assert me.num_fds() - fds <= bound

        for i in range(300):
            # Half announce an endpoint no socket can connect to, half distinct closed ports.
            addr, rtr = ("a b", 1) if i % 2 else ("127.0.0.1", 20000 + i)
            body = {"cluster": cluster, "addr": addr, "pub": 1, "rtr": rtr, "v": 101}
            await dealer.send_multipart(
                [CTL, header(Kind.HELLO, f"ghost{i}", 5, 0), pack_control(body)]
            )
        # Every bad one counted, and every good one past the 32nd made room for itself.
        await until(lambda: victim.get_metrics()["bad_messages"] == 150 + 150 - 32)
        await fds_settle_within(3 * 32)

        async with frys.EventBus(config("late", cluster)) as late:
            await late.connect(victim.endpoints["router"])
            await late.wait_for_peers(1, timeout=10)
            await victim.wait_for_peers(1, timeout=10)
            assert [p.node_id for p in victim.peers() if p.ready] == ["late"]
        await fds_settle_within(3 * 32)


async def test_requests_past_max_pending_requests_are_refused_as_overloaded_at_once(cluster):
    async with (
        victim_and_good(cluster, max_pending_requests=20) as (victim, good),
        raw_dealer(victim.endpoints["router"]) as dealer,
    ):
        release = asyncio.Event()

        async def slow(req: frys.Request) -> str:
            await release.wait()
            return "done"

        await victim.handle_request("svc.slow", slow)
        tasks = len(asyncio.all_tasks())
        asked = [f"r{i}" for i in range(2000)]
        for corr in asked:
            hdr = header(Kind.REQUEST, "evil", 1, 0, correlation_id=corr)
            await dealer.send_multipart([topic_frame("svc.slow"), hdr, msgpack.packb(corr)])

        async def replies(n: int) -> dict[str, tuple[str | None, object]]:
            out = {}
            async with asyncio.timeout(10):
                while len(out) < n:
                    _topic, hdr, body = await dealer.recv_multipart()
                    content_type, corr = fields(hdr)[8:10]
                    out[corr] = (content_type, msgpack.unpackb(body))
            return out

        refused = await replies(2000 - 20)
        assert {body["type"] for _, body in refused.values()} == {"Overloaded"}
        # What waits is the 20 requests in progress, not a task per request asked.
        assert len(asyncio.all_tasks()) - tasks <= 20 + 5
        reply = await good.request("svc.echo", 1, timeout=5)
        assert isinstance(reply, frys.Reply.Error) and isinstance(reply.error, frys.Overloaded)

        release.set()
        served = await replies(20)
        assert set(served.values()) == {(None, "done")}
        assert sorted(refused.keys() | served.keys()) == sorted(asked)
        assert victim.get_metrics()["requests_shed"] == 2000 - 20 + 1
        reply = await good.request("svc.echo", 1, timeout=5)
        assert reply == frys.Reply.Success({"echo": 1}, "victim")


async def test_bad_messages_under_made_up_names_log_a_few_lines_and_keep_no_entry_per_name(
    cluster, caplog
):
    async with (
        victim_and_good(cluster) as (victim, good),
        raw_dealer(victim.endpoints["router"]) as dealer,
    ):
        bad = victim.get_metrics()["bad_messages"]
        caplog.clear()
        n = 20_000
        for i in range(n):
            # A well-formed header of a kind that has no business on a ROUTER.
            hdr = header(Kind.HEARTBEAT, f"s{i:030d}", 1, 0)
            await dealer.send_multipart([CTL, hdr, b""])
        await until(lambda: victim.get_metrics()["bad_messages"] == bad + n)
        lines = [r for r in caplog.records if r.name == "frys_zmq.node"]
        assert 1 <= len(lines) <= 3, [r.getMessage() for r in lines[:5]]
        # The rate limiter's table is what grew by one entry per name before.
        assert len(victim._node._log_limiter) <= 8
        reply = await good.request("svc.echo", "still there?", timeout=5)
        assert reply == frys.Reply.Success({"echo": "still there?"}, "victim")


FAST = ["--heartbeat", "0.2", "--ttl", "1.0"]


async def test_a_peer_stopped_for_longer_than_its_ttl_comes_back_by_itself_both_ways(cluster):
    victim = NodeProcess("victim", cluster=cluster, extra_args=FAST)
    good = NodeProcess("good", cluster=cluster, extra_args=FAST)
    try:
        await asyncio.gather(victim.start(), good.start())
        await victim.call("handle", topic="svc.echo")
        await victim.call("subscribe", pattern="good.>", quiet=True)
        await good.call("subscribe", pattern="vic.>", quiet=True)
        await asyncio.gather(victim.call("wait_peers", n=1), good.call("wait_peers", n=1))

        async def peers_of(node: NodeProcess) -> list[str]:
            return [p["node_id"] for p in await node.call("peers") if p["ready"]]

        os.kill(good.proc.pid, signal.SIGSTOP)
        try:
            # Past the ttl, the victim lets it go...
            async with asyncio.timeout(10):
                while await peers_of(victim):
                    await asyncio.sleep(0.05)
        finally:
            os.kill(good.proc.pid, signal.SIGCONT)
        # ... and finds it again by itself: mDNS announced it only once, long ago.
        async with asyncio.timeout(15):
            while await peers_of(victim) != ["good"] or await peers_of(good) != ["victim"]:
                await asyncio.sleep(0.05)

        for n in range(5):
            await good.call("publish", topic="good.ev", payload={"n": n})
            await victim.call("publish", topic="vic.ev", payload={"n": n})
        async with asyncio.timeout(10):
            while len(await victim.call("received")) < 5 or len(await good.call("received")) < 5:
                await asyncio.sleep(0.05)
        assert await victim.call("received") == list(range(5))
        assert await good.call("received") == list(range(5))
        reply = await good.call("request", topic="svc.echo", payload=1, timeout=5.0)
        assert reply["kind"] == "success"
    finally:
        await asyncio.gather(good.aclose(), victim.aclose())
