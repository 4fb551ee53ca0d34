"""The synchronous facade on a bus without sockets: its methods, forms and thread rules."""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import frys_zmq as frys
from frys_zmq import sync

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def bus() -> Iterator[sync.EventBus]:
    with sync.EventBus(node_id="local", enable_distributed=False, call_timeout=10) as bus:
        yield bus


def wait_until(condition, limit_s: float = 5.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


# ---------------------------------------------------------------------- life cycle


def test_a_call_before_start_raises_not_started_at_once() -> None:
    bus = sync.EventBus(node_id="local", enable_distributed=False, call_timeout=10)
    started = time.monotonic()
    with pytest.raises(frys.NotStarted, match="start the EventBus first"):
        bus.publish("a.b", 1)
    assert time.monotonic() - started < 1
    bus.close()


def test_a_call_after_close_raises_already_closed_and_close_is_idempotent() -> None:
    bus = sync.EventBus(node_id="local", enable_distributed=False).start()
    bus.close()
    bus.close()
    bus.aclose()  # the asyncio bus's name for it
    with pytest.raises(frys.AlreadyClosed):
        bus.publish("a.b", 1)


def test_closing_leaves_no_thread_behind_not_even_the_loops_default_executor() -> None:
    before = set(threading.enumerate())
    used_executor = threading.Event()

    async def on_event(event: frys.Event) -> None:
        await asyncio.get_running_loop().run_in_executor(None, used_executor.set)

    with sync.EventBus(node_id="local", enable_distributed=False) as bus:
        bus.subscribe("a.b", on_event)
        bus.publish("a.b", 1)
        assert used_executor.wait(5)
        assert any(t.name.startswith("asyncio_") for t in threading.enumerate())
    assert [t.name for t in set(threading.enumerate()) - before if t.is_alive()] == []


# ---------------------------------------------------------------------- publish and subscribe


def test_publish_reaches_a_handler_on_the_bus_thread_and_returns_the_event(bus) -> None:
    got: queue.Queue[tuple[frys.Event, str]] = queue.Queue()
    bus.subscribe("order.*", lambda e: got.put((e, threading.current_thread().name)))
    sent = bus.publish("order.placed", {"id": 1}, metadata={"via": "sync"})
    event, thread = got.get(timeout=5)
    assert event == sent
    assert event.metadata == {"via": "sync"}
    assert thread == "frys-sync-local"


def test_publish_passes_ack_through_so_an_ack_without_persistence_is_an_error(bus) -> None:
    with pytest.raises(frys.StorageError, match="enable_persistence"):
        bus.publish("a.b", 1, ack=True)


def test_a_publisher_publishes_on_its_topic(bus) -> None:
    sub = bus.subscribe("sensor.temp")
    pub = bus.publisher("sensor.temp")
    assert pub.topic == "sensor.temp"
    pub(21.5)
    pub.publish(22.0, metadata={"unit": "C"})
    assert [(e.payload, dict(e.metadata)) for e in itertools.islice(sub, 2)] == [
        (21.5, {}),
        (22.0, {"unit": "C"}),
    ]
    sub.cancel()


def test_a_publisher_for_an_invalid_topic_is_refused(bus) -> None:
    with pytest.raises(frys.InvalidTopic):
        bus.publisher("sensor.*")


def test_a_subscription_without_a_handler_is_a_blocking_iterator(bus) -> None:
    sub = bus.subscribe("tick")
    bus.publish_batch([("tick", i) for i in range(3)])
    assert [event.payload for event in itertools.islice(sub, 3)] == [0, 1, 2]
    assert sub.delivered == 3 and sub.pending == 0
    sub.cancel()


def test_iterating_a_subscription_ends_when_it_is_cancelled_from_another_thread(bus) -> None:
    sub = bus.subscribe("tick")
    seen: list[frys.Event] = []
    reader = threading.Thread(target=lambda: seen.extend(sub))
    reader.start()
    try:
        bus.publish("tick", 1)
        wait_until(lambda: len(seen) == 1)
        sub.cancel()
        reader.join(5)
        assert not reader.is_alive()
        assert [e.payload for e in seen] == [1]
        assert sub.closed
    finally:
        sub.cancel()
        reader.join(5)


def test_iterating_a_subscription_ends_when_the_bus_closes() -> None:
    bus = sync.EventBus(node_id="local", enable_distributed=False).start()
    sub = bus.subscribe("tick")
    outcome: list[object] = []

    def read() -> None:
        try:
            outcome.append(list(sub))
        except BaseException as exc:
            outcome.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        bus.publish("tick", 1)
        wait_until(lambda: sub.delivered == 1)
    finally:
        bus.close()
        reader.join(5)
    assert not reader.is_alive()
    assert [[e.payload for e in events] for events in outcome] == [[1]]  # type: ignore[attr-defined]
    sub.cancel()  # after the bus closed: nothing left to do


def test_get_waits_a_bounded_time_then_raises_sync_timeout(bus) -> None:
    with bus.subscribe("quiet") as sub:
        started = time.monotonic()
        with pytest.raises(frys.SyncTimeout, match=r"no event on 'quiet' within 0\.1s"):
            sub.get(0.1)
        assert time.monotonic() - started < 2
        bus.publish("quiet", "now")
        assert sub.get(5).payload == "now"
    with pytest.raises(frys.AlreadyClosed):
        sub.get(0.1)


def test_the_decorator_form_makes_the_function_the_handler(bus) -> None:
    got: queue.Queue[frys.Event] = queue.Queue()

    @bus.subscribe("user.>")
    def on_user(event: frys.Event) -> None:
        got.put(event)

    assert isinstance(on_user, sync.Subscription)
    assert on_user.handler is not None
    sent = bus.publish("user.created", {"id": 7})
    assert got.get(timeout=5) == sent
    on_user(sent)  # still callable directly
    assert got.get(timeout=5) == sent
    with pytest.raises(TypeError, match="cannot also be iterated"):
        iter(on_user)
    bus.unsubscribe(on_user)
    assert on_user.closed


def test_subscribe_passes_filter_and_chain_through(bus) -> None:
    got: list[int] = []
    chain = frys.EventProcessingChain(lambda e: None if e.payload == 4 else e)
    sub = bus.subscribe(
        "n", lambda e: got.append(e.payload), filter=lambda e: e.payload % 2 == 0, chain=chain
    )
    bus.publish_batch([("n", i) for i in range(6)])
    wait_until(lambda: sub.filtered == 4 and sub.delivered == 6)
    assert got == [0, 2]
    sub.cancel()


def test_subscribe_with_filter_is_subscribe_with_a_filter(bus) -> None:
    got: queue.Queue[frys.Event] = queue.Queue()
    bus.subscribe_with_filter("n", lambda e: e.payload > 1, got.put)
    bus.publish_batch([("n", i) for i in range(3)])
    assert got.get(timeout=5).payload == 2


def test_subscribe_passes_durable_through(tmp_path: Path) -> None:
    config = frys.EventBusConfig(node_id="local", enable_distributed=False, data_dir=str(tmp_path))
    with sync.EventBus(config) as bus:
        got: queue.Queue[frys.Event] = queue.Queue()
        sub = bus.subscribe("audit.>", got.put, durable="auditor")
        assert sub.durable == "auditor"
        bus.publish("audit.login", "u1")
        assert got.get(timeout=5).payload == "u1"
        with pytest.raises(frys.ConfigError, match="needs a handler"):
            bus.subscribe("audit.>", durable="other")


# ---------------------------------------------------------------------- requests and the rest


def test_a_request_handler_serves_until_it_is_removed(bus) -> None:
    bus.handle_request("echo", lambda req: {"echo": req.payload})
    assert bus.request("echo", 5, timeout=5).unwrap() == {"echo": 5}
    bus.remove_request_handler("echo")
    reply = bus.request("echo", 5, timeout=5)
    assert isinstance(reply, frys.Reply.Error)
    assert isinstance(reply.error, frys.NoResponders)


def test_a_local_bus_has_no_peers_and_no_endpoints_and_cannot_connect(bus) -> None:
    assert bus.peers() == []
    assert bus.endpoints == {}
    assert bus.get_metrics()["node_id"] == "local"
    with pytest.raises(frys.NotStarted, match="enable_distributed"):
        bus.connect("tcp://127.0.0.1:5555")


def test_the_async_bus_is_the_one_the_facade_drives(bus) -> None:
    assert isinstance(bus.async_bus, frys.EventBus)
    assert bus.async_bus.node_id == bus.node_id == "local"


# ---------------------------------------------------------------------- the bus's own thread


def test_a_sync_call_from_a_handler_fails_at_once_instead_of_deadlocking(bus) -> None:
    outcome: queue.Queue[BaseException | None] = queue.Queue()

    def on_event(event: frys.Event) -> None:
        try:
            bus.publish("echo.back", event.payload)
        except BaseException as exc:
            outcome.put(exc)
        else:
            outcome.put(None)

    bus.subscribe("ping", on_event)
    started = time.monotonic()
    bus.publish("ping", 1)
    error = outcome.get(timeout=5)
    assert time.monotonic() - started < 2  # call_timeout is 10 s
    assert isinstance(error, frys.WrongThread) and isinstance(error, RuntimeError)
    assert "EventBus.publish()" in str(error)
    assert "bus's own thread" in str(error) and "bus.async_bus" in str(error)


@pytest.mark.parametrize("call", ["close", "peers", "subscribe", "iterate"])
def test_every_blocking_call_from_the_bus_thread_is_refused(bus, call: str) -> None:
    outcome: queue.Queue[BaseException | None] = queue.Queue()
    other = bus.subscribe("other")
    calls = {
        "close": bus.close,
        "peers": bus.peers,
        "subscribe": lambda: bus.subscribe("x", print),
        "iterate": lambda: next(other),
    }

    def on_event(event: frys.Event) -> None:
        try:
            calls[call]()
        except BaseException as exc:
            outcome.put(exc)
        else:
            outcome.put(None)

    bus.subscribe("ping", on_event)
    bus.publish("ping", 1)
    error = outcome.get(timeout=5)
    assert isinstance(error, frys.WrongThread), error
    assert "bus's own thread" in str(error)
    other.cancel()


def test_an_async_handler_publishes_through_the_async_bus(bus) -> None:
    got: queue.Queue[frys.Event] = queue.Queue()

    async def relay(event: frys.Event) -> None:
        await bus.async_bus.publish("pong", event.payload + 1)

    bus.subscribe("ping", relay)
    bus.subscribe("pong", got.put)
    bus.publish("ping", 1)
    assert got.get(timeout=5).payload == 2
