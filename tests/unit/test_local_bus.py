"""The bus without sockets: local delivery, handlers, retries, dead letters, queues."""

from __future__ import annotations

import asyncio

import pytest

import frys_zmq as frys
from frys_zmq._queue import MemoryEventQueue, OverflowPolicy

pytestmark = pytest.mark.timeout(30)


def local_bus(**kw) -> frys.EventBus:
    return frys.EventBus(frys.EventBusConfig(node_id="local", enable_distributed=False, **kw))


async def drain(sub: frys.Subscription, n: int) -> None:
    async with asyncio.timeout(5):
        while sub.delivered < n or sub.pending:
            await asyncio.sleep(0.001)


async def test_local_subscribers_get_matching_events_in_publish_order():
    async with local_bus() as bus:
        got: list[tuple[str, int]] = []
        sub = bus.subscribe("order.*", lambda e: got.append((e.topic, e.payload)))
        for i in range(100):
            await bus.publish("order.placed" if i % 2 else "order.paid", i)
        await bus.publish("order.eu.placed", -1)
        await bus.publish("order", -2)
        await drain(sub, 100)
        assert [p for _, p in got] == list(range(100))
        sub.cancel()


async def test_the_decorator_form_returns_a_callable_subscription():
    async with local_bus() as bus:
        seen: list[frys.Event] = []

        @bus.subscribe("user.>")
        async def on_user(event: frys.Event) -> None:
            seen.append(event)

        assert isinstance(on_user, frys.Subscription)
        ev = await bus.publish("user.created.v2", {"id": 1}, metadata={"source": "web"})
        await drain(on_user, 1)
        assert seen == [ev]
        assert seen[0].metadata == {"source": "web"} and seen[0].source == "local"
        await on_user(ev)  # still callable directly
        assert len(seen) == 2


async def test_an_iterator_subscription_yields_events_and_stops_when_cancelled():
    async with local_bus() as bus:
        sub = bus.subscribe("tick")
        await bus.publish_batch([("tick", i) for i in range(3)])
        assert [(await sub.get(1)).payload for _ in range(3)] == [0, 1, 2]
        sub.cancel()
        assert [e async for e in sub] == []


async def test_a_failing_handler_is_retried_then_the_event_is_dead_lettered():
    async with local_bus(handler_retries=2, handler_retry_backoff=0.001) as bus:
        calls: list[int] = []
        dead: list[frys.Event] = []

        def flaky(event: frys.Event) -> None:
            calls.append(event.payload)
            raise RuntimeError("boom")

        sub = bus.subscribe("job.run", flaky)
        dlq = bus.subscribe("$frys.dlq.>", dead.append)
        await bus.publish("job.run", 7)
        await drain(dlq, 1)
        assert calls == [7, 7, 7]
        assert sub.errors == 3
        body = dead[0].payload
        assert dead[0].topic == "$frys.dlq.job.run"
        assert body["payload"] == 7 and body["attempts"] == 3 and "boom" in body["error"]
        assert bus.get_metrics()["dead_letters"] == 1


async def test_a_handler_that_recovers_on_retry_is_not_dead_lettered():
    async with local_bus(handler_retries=3, handler_retry_backoff=0.001) as bus:
        attempts = 0

        def once_bad(event: frys.Event) -> None:
            nonlocal attempts
            attempts += 1
            if attempts == 1:
                raise RuntimeError("transient")

        sub = bus.subscribe("x", once_bad)
        await bus.publish("x", 1)
        async with asyncio.timeout(5):
            while attempts < 2:
                await asyncio.sleep(0.001)
        await bus.publish("x", 2)  # handled after the retried one: the worker moved on
        await drain(sub, 2)
        assert attempts == 3 and sub.errors == 1 and bus.get_metrics()["dead_letters"] == 0


async def test_a_full_subscriber_queue_makes_publish_wait_instead_of_dropping():
    async with local_bus(event_queue_size=4) as bus:
        release = asyncio.Event()
        got: list[int] = []

        async def slow(event: frys.Event) -> None:
            await release.wait()
            got.append(event.payload)

        bus.subscribe("s", slow)
        for i in range(5):  # one in the handler, four queued
            await bus.publish("s", i)
        blocked = asyncio.create_task(bus.publish("s", 5))
        await asyncio.sleep(0.05)
        assert not blocked.done()
        release.set()
        await asyncio.wait_for(blocked, 5)
        async with asyncio.timeout(5):
            while len(got) < 6:
                await asyncio.sleep(0.001)
        assert got == list(range(6))


async def test_publish_rejects_bad_and_reserved_topics_with_a_clear_error():
    async with local_bus() as bus:
        for bad in ("", "a..b", "a b", "a.*", "$frys.x", "x" * 256):
            with pytest.raises(frys.InvalidTopic):
                await bus.publish(bad, 1)


async def test_using_a_bus_before_start_or_after_close_is_a_named_error():
    bus = local_bus()
    with pytest.raises(frys.NotStarted):
        await bus.publish("a", 1)
    await bus.start()
    await bus.aclose()
    await bus.aclose()  # idempotent
    with pytest.raises(frys.AlreadyClosed):
        await bus.publish("a", 1)


async def test_requests_are_served_locally_with_success_error_and_no_responders():
    async with local_bus() as bus:
        await bus.handle_request("math.double", lambda req: req.payload * 2)

        async def bad(req: frys.Request) -> None:
            raise KeyError("nope")

        await bus.handle_request("math.bad", bad)
        assert (await bus.request("math.double", 21)).unwrap() == 42
        err = await bus.request("math.bad", 1)
        assert isinstance(err, frys.Reply.Error) and isinstance(err.error, frys.HandlerError)
        none = await bus.request("math.none", 1)
        assert isinstance(none.error, frys.NoResponders)  # type: ignore[union-attr]
        with pytest.raises(frys.NoResponders):
            none.unwrap()


@pytest.mark.parametrize(
    ("policy", "kept", "dropped", "rejected"),
    [("drop_oldest", [2, 3, 4], 2, 0), ("reject", [0, 1, 2], 0, 2)],
)
async def test_memory_queue_overflow_policies_are_counted(policy, kept, dropped, rejected):
    q: MemoryEventQueue[int] = MemoryEventQueue(3, overflow=policy)
    assert await q.publish_batch(range(5)) == (5 if policy == "drop_oldest" else 3)
    assert await q.consume_batch(10) == kept
    assert (q.dropped, q.rejected) == (dropped, rejected)


async def test_memory_queue_block_policy_waits_for_room():
    q: MemoryEventQueue[int] = MemoryEventQueue(2, overflow=OverflowPolicy.BLOCK)
    await q.publish_batch([1, 2])
    waiting = asyncio.create_task(q.put(3))
    await asyncio.sleep(0.01)
    assert not waiting.done() and q.blocked == 1
    assert await q.get() == 1
    await asyncio.wait_for(waiting, 1)
    assert await q.consume_batch(5, timeout=0.1) == [2, 3]
    assert await q.consume_batch(5, timeout=0.01) == []


async def test_a_subscription_queue_is_bounded_in_bytes_of_big_events_too():
    from frys_zmq._dispatch import Dispatcher

    dispatcher = Dispatcher(queue_size=100, queue_bytes=1000)
    sub = dispatcher.subscribe("big", None)
    first, second = frys.Event("big", 1), frys.Event("big", 2)
    subs = dispatcher.matches("big")
    assert dispatcher.dispatch_nowait(first, subs, 600) is None  # an empty queue takes one
    assert dispatcher.dispatch_nowait(second, subs, 600) == [sub]  # 1,200 bytes: full
    waiting = asyncio.ensure_future(dispatcher.wait_blocked(second, [sub], 600))
    await asyncio.sleep(0)
    assert not waiting.done()
    assert (await sub.get(1)).payload == 1  # room again: the blocked one goes in
    async with asyncio.timeout(5):
        await waiting
    assert (await sub.get(1)).payload == 2
    assert dispatcher.dispatch_nowait(frys.Event("big", 3), subs) is None  # small: no bytes
    sub.cancel()
    await dispatcher.aclose()
