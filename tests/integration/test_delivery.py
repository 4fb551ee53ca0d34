"""Delivery that loses nothing: real processes, tiny queues, SIGKILL and restarts."""

from __future__ import annotations

import asyncio

import pytest
from spawned import FAST, node, wait_until

import frys_zmq as frys
from frys_zmq._cursors import CursorStore
from frys_zmq.testing import NodeProcess

pytestmark = pytest.mark.timeout(180)


def persistent_publisher(cluster: str, tmp_path, **kw) -> frys.EventBusConfig:
    """A persistent publisher in this process, found by its subscribers' static endpoint."""
    return frys.EventBusConfig(
        node_id="pub",
        cluster=cluster,
        interface="127.0.0.1",
        enable_persistence=True,
        data_dir=str(tmp_path / "pub"),
        discovery_strategy="static",
        **kw,
    )


def subscriber_of(pub: frys.EventBus, cluster: str, data_dir) -> frys.EventBusConfig:
    return frys.EventBusConfig(
        node_id="sub",
        cluster=cluster,
        interface="127.0.0.1",
        data_dir=str(data_dir),
        discovery_strategy="static",
        cluster_peers=(pub.endpoints["router"],),
    )


@pytest.mark.parametrize(
    "topics",
    [
        pytest.param(["n.a"], id="one topic, batched frames"),
        # Alternating topics never share a BATCH: one message per event, so the tiny queues
        # drop most of them and the repair path carries the load.
        pytest.param(["n.a", "n.b"], id="alternating topics, one message per event"),
    ],
)
async def test_100k_events_reach_a_subscriber_with_a_tiny_receive_queue_in_order_once(
    cluster, topics
):
    async with (
        node("sub", cluster=cluster, extra_args=["--recv-hwm", "10"]) as sub,
        node("pub", cluster=cluster, extra_args=["--send-hwm", "50"]) as pub,
    ):
        await sub.call("subscribe", pattern="n.*", quiet=True)
        await pub.call("wait_peers", n=1)
        await pub.call("publish_many", topic=topics, count=100_000, batch=True, call_timeout=120)
        got = await wait_until(lambda: sub.call("received"), lambda r: len(r) >= 100_000, 120)
        assert got == list(range(100_000))
        metrics = await sub.call("metrics")
        assert metrics["gaps"] == 0
        if len(topics) > 1:
            # 100,000 messages in one go through queues of 50 and 10: most were dropped on
            # the way and replayed on request.
            assert metrics["repaired"] > 10_000, metrics


async def test_a_subscriber_up_before_the_publisher_misses_nothing_without_any_waiting(cluster):
    async with node("early", cluster=cluster) as early:
        await early.call("subscribe", pattern="boot.>", quiet=True)
        # The publisher publishes the moment it is up: before it has met anyone.
        async with node("late", cluster=cluster) as late:
            await late.call("publish_many", topic="boot.step", count=500)
            got = await wait_until(lambda: early.call("received"), lambda r: len(r) >= 500)
            assert got == list(range(500))


async def test_a_killed_persistent_publisher_restarts_and_the_durable_subscriber_loses_nothing(
    cluster, tmp_path
):
    pub_args = [*FAST, "--persist", "--data-dir", str(tmp_path / "pub")]
    sub_args = [*FAST, "--data-dir", str(tmp_path / "sub")]
    async with node("sub", cluster=cluster, extra_args=sub_args) as sub:
        await sub.call("subscribe", pattern="orders.>", durable="audit", quiet=True)
        first = NodeProcess("pub", cluster=cluster, extra_args=pub_args)
        await first.start()
        try:
            await first.call("wait_peers", n=1)
            await first.call("publish_many", topic="orders.new", count=200_000, background=True)
            await wait_until(lambda: sub.call("received"), lambda r: len(r) >= 3000)
        finally:
            await first.kill()  # mid-stream, no goodbye
        async with node("pub", cluster=cluster, extra_args=pub_args) as second:
            await second.call("wait_peers", n=1)
            await second.call("publish_many", topic="orders.new", count=1000, start=1_000_000)
            got = await wait_until(
                lambda: sub.call("received"), lambda r: r and r[-1] == 1_000_999, 60
            )
            metrics = await sub.call("metrics")
            published_before_kill = got.index(1_000_000)
            # Exactly once and in order: every event the first process published (and logged)
            # before it died, then the second process's events.
            assert got == list(range(published_before_kill)) + list(range(1_000_000, 1_001_000))
            assert published_before_kill >= 3000
            assert metrics["gaps"] == 0


async def test_a_killed_durable_subscriber_resumes_from_its_cursor(cluster, tmp_path):
    sub_args = [*FAST, "--data-dir", str(tmp_path / "sub")]
    pub_args = [*FAST, "--persist", "--data-dir", str(tmp_path / "pub")]
    async with node("pub", cluster=cluster, extra_args=pub_args) as pub:
        first = NodeProcess("sub", cluster=cluster, extra_args=sub_args)
        await first.start()
        try:
            await first.call("subscribe", pattern="feed", durable="reader")
            await first.call("wait_peers", n=1)
            await pub.call("wait_peers", n=1)
            await pub.call("publish_many", topic="feed", count=30_000, background=True)
            await first.collect(2000, timeout=60)
        finally:
            await first.kill()
        before = [e["payload"]["n"] async for e in _drain(first)]
        async with node("sub", cluster=cluster, extra_args=sub_args) as second:
            await second.call("subscribe", pattern="feed", durable="reader")
            await wait_until(lambda: pub.call("published"), lambda n: n >= 30_000, 120)
            after: list[int] = []
            async with asyncio.timeout(120):
                while not after or after[-1] != 29_999:
                    after.append((await second.next_event(timeout=60))["payload"]["n"])
        handled_before = 2000 + len(before)
        # At-least-once across the kill: at most the one event being handled when the process
        # died comes again; nothing is missing and the rest arrives once, in order.
        assert after[0] in (handled_before - 1, handled_before)
        assert after == list(range(after[0], 30_000))


async def _drain(proc: NodeProcess):
    while not proc.events.empty():
        yield proc.events.get_nowait()


async def test_events_removed_by_retention_are_reported_as_a_gap_not_lost_silently(
    cluster, tmp_path
):
    pub_cfg = persistent_publisher(
        cluster, tmp_path, max_file_size=4096, retention_bytes=16384, retention_ring_size=10
    )
    async with frys.EventBus(pub_cfg) as pub:
        for i in range(2000):
            await pub.publish("old.news", {"n": i, "pad": "x" * 50})
        removed = await pub._node.log.apply_retention()
        first_kept = pub._node.log.first_seq
        assert removed > 0 and first_kept > 100
        # A durable subscriber whose cursor says it handled up to seq 5 comes to read on.
        sub_dir = tmp_path / "sub"
        store = CursorStore(sub_dir, "archive")
        store.set("pub", pub._node.log.log_id, 5)  # a cursor in this publisher's log
        store.close()
        async with frys.EventBus(subscriber_of(pub, cluster, sub_dir)) as sub:
            gaps: list[frys.Event] = []
            sub.subscribe("$frys.gap", gaps.append)
            got: list[int] = []
            sub.subscribe("old.news", lambda e: got.append(e.payload["n"]), durable="archive")
            await sub.wait_for_peers(1)
            async with asyncio.timeout(30):
                while len(got) < 2000 - (first_kept - 1):
                    await asyncio.sleep(0.01)
            assert got == list(range(first_kept - 1, 2000))
            assert [(g.payload["first"], g.payload["last"]) for g in gaps] == [(6, first_kept - 1)]
            assert "retained" in gaps[0].payload["reason"]
            assert sub.get_metrics()["gaps"] == first_kept - 6


async def test_a_cursor_in_a_publishers_lost_log_is_reported_and_the_new_log_read_from_its_start(
    cluster, tmp_path
):
    async with frys.EventBus(persistent_publisher(cluster, tmp_path)) as pub:
        # The publisher's disk was replaced: its new log numbers events from 1 again.
        await pub.publish_batch([("orders.new", {"n": i}) for i in range(600)])
        sub_dir = tmp_path / "sub"
        store = CursorStore(sub_dir, "audit")
        store.set("pub", pub._node.log.log_id ^ 1, 500)  # handled up to 500 of the old log
        store.close()
        async with frys.EventBus(subscriber_of(pub, cluster, sub_dir)) as sub:
            gaps: list[frys.Event] = []
            sub.subscribe("$frys.gap", gaps.append)
            got: list[int] = []
            sub.subscribe("orders.>", lambda e: got.append(e.payload["n"]), durable="audit")
            await sub.wait_for_peers(1)
            async with asyncio.timeout(30):
                while len(got) < 600:
                    await asyncio.sleep(0.01)
            assert got == list(range(600))  # seq 1..500 of the new log were not skipped
            [gap] = gaps
            assert gap.payload["first"] == 501 and "replaced" in gap.payload["reason"]


async def test_acknowledged_publish_needs_persistence_and_returns_after_the_log_has_it(
    cluster, tmp_path
):
    plain = frys.EventBusConfig(node_id="p", cluster=cluster, enable_distributed=False)
    async with frys.EventBus(plain) as bus:
        with pytest.raises(frys.StorageError):
            await bus.publish("a", 1, ack=True)
    cfg = frys.EventBusConfig(
        node_id="p",
        cluster=cluster,
        interface="127.0.0.1",
        enable_persistence=True,
        data_dir=str(tmp_path),
        fsync_policy="always",
        discovery_strategy="static",
    )
    async with frys.EventBus(cfg) as bus:
        ev = await bus.publish("a.b", {"x": 1}, ack=True)
        records = await bus._node.log.recover_events()
        assert [r.seq for r in records] == [ev.seq]
        await bus.publish("c.d", [1, 2])
        assert [(e.topic, e.payload) for e in await bus.recover_events()] == [
            ("a.b", {"x": 1}),
            ("c.d", [1, 2]),
        ]
        assert [e.seq for e in await bus.recover_events("c.d", after_seq=ev.seq)] == [ev.seq + 1]
