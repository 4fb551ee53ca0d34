"""Filters and processing chains: what a subscription does to events before its handler."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import frys_zmq as frys

pytestmark = pytest.mark.timeout(30)


def local_bus(**kw: Any) -> frys.EventBus:
    return frys.EventBus(
        frys.EventBusConfig(
            node_id="local", enable_distributed=False, handler_retry_backoff=0.001, **kw
        )
    )


def event(**metadata: Any) -> frys.Event:
    return frys.Event("t", None, metadata)


class Collector:
    """A handler that records what it got and says when it has ``n`` events."""

    def __init__(self, n: int) -> None:
        self.events: list[frys.Event] = []
        self.n = n
        self.done = asyncio.Event()

    async def __call__(self, ev: frys.Event) -> None:
        self.events.append(ev)
        if len(self.events) >= self.n:
            self.done.set()

    async def wait(self) -> list[frys.Event]:
        async with asyncio.timeout(5):
            await self.done.wait()
        return self.events


# ---------------------------------------------------------------- filters on their own


def test_a_metadata_filter_matches_values_sets_and_predicates() -> None:
    f = frys.MetadataFilter(region={"eu", "us"}, priority=lambda p: p >= 3, tenant="acme")
    assert f(event(region="eu", priority=3, tenant="acme"))
    assert not f(event(region="apac", priority=9, tenant="acme"))
    assert not f(event(region="us", priority=2, tenant="acme"))
    assert not f(event(region="us", priority=5, tenant="other"))
    assert not f(event(region="us", priority=5))  # a missing key never matches


def test_a_metadata_filter_takes_a_mapping_for_keys_that_are_not_identifiers() -> None:
    f = frys.MetadataFilter({"x-trace": "on", "class": ["a", "b"]})
    assert f(event(**{"x-trace": "on", "class": "b"}))
    assert not f(event(**{"x-trace": "off", "class": "b"}))


def test_a_membership_condition_is_false_for_an_unhashable_value() -> None:
    f = frys.MetadataFilter(tags=frozenset({"a"}))
    assert not f(event(tags=["a"]))


def test_filters_combine_with_and_or_not() -> None:
    eu = frys.MetadataFilter(region="eu")
    urgent = frys.EventFilter(lambda e: e.metadata.get("priority", 0) > 5)
    assert (eu & urgent)(event(region="eu", priority=9))
    assert not (eu & urgent)(event(region="eu", priority=1))
    assert (eu | urgent)(event(region="us", priority=9))
    assert (~eu)(event(region="us"))
    assert not (~eu)(event(region="eu"))


@pytest.mark.parametrize(
    "make",
    [
        lambda: frys.MetadataFilter(),
        lambda: frys.EventFilter("not callable"),  # type: ignore[arg-type]
        lambda: frys.EventProcessingChain(42),  # type: ignore[arg-type]
    ],
)
def test_a_filter_or_chain_that_cannot_work_is_a_config_error(make: Any) -> None:
    with pytest.raises(frys.ConfigError):
        make()


# ---------------------------------------------------------------- on subscriptions


async def test_a_filtered_subscription_sees_only_matching_events_and_counts_the_rest() -> None:
    async with local_bus() as bus:
        got = Collector(3)
        sub = bus.subscribe("order.*", got, filter=frys.MetadataFilter(region="eu"))
        for i, region in enumerate(["eu", "us", "eu", "apac", "eu"]):
            await bus.publish("order.placed", i, metadata={"region": region})
        assert [e.payload for e in await got.wait()] == [0, 2, 4]
        assert sub.filtered == 2  # in order: both were skipped before the last one came
        sub.cancel()


async def test_subscribe_with_filter_accepts_a_plain_predicate() -> None:
    async with local_bus() as bus:
        got = Collector(1)
        bus.subscribe_with_filter("n", lambda e: e.payload % 2 == 1, got)
        await bus.publish_batch([("n", i) for i in range(2)])
        assert [e.payload for e in await got.wait()] == [1]


async def test_a_chain_runs_its_steps_in_order_sync_and_async_and_the_handler_sees_the_result():
    async with local_bus() as bus:
        trail: list[str] = []

        def validate(ev: frys.Event) -> frys.Event:
            trail.append("validate")
            if ev.payload["qty"] <= 0:
                raise ValueError("bad quantity")
            return ev

        async def enrich(ev: frys.Event) -> frys.Event:
            trail.append("enrich")
            ev.metadata = {**ev.metadata, "total": ev.payload["qty"] * 2}
            return ev

        def transform(ev: frys.Event) -> frys.Event:
            trail.append("transform")
            return frys.Event(ev.topic, {"summary": ev.metadata["total"]}, ev.metadata)

        chain = frys.EventProcessingChain(validate, enrich, transform, name="orders")
        got = Collector(1)
        bus.subscribe("order.placed", got, chain=chain)
        await bus.publish("order.placed", {"qty": 21})
        [seen] = await got.wait()
        assert seen.payload == {"summary": 42}
        assert trail == ["validate", "enrich", "transform"]


async def test_a_step_that_returns_none_stops_the_event_and_a_filter_can_be_a_step() -> None:
    async with local_bus() as bus:
        chain = frys.EventProcessingChain(
            frys.MetadataFilter(ok=True), lambda ev: None if ev.payload < 0 else ev
        )
        got = Collector(1)
        sub = bus.subscribe("x", got, chain=chain)
        await bus.publish("x", 1, metadata={"ok": False})
        await bus.publish("x", -1, metadata={"ok": True})
        await bus.publish("x", 7, metadata={"ok": True})
        assert [e.payload for e in await got.wait()] == [7]
        assert sub.filtered == 2


async def test_a_failing_step_is_retried_then_dead_lettered_like_a_failing_handler() -> None:
    async with local_bus(handler_retries=2) as bus:
        calls: list[int] = []

        def explode(ev: frys.Event) -> frys.Event:
            calls.append(ev.payload)
            raise RuntimeError("step broke")

        dead = Collector(1)
        bus.subscribe("$frys.dlq.>", dead)
        handler_calls: list[Any] = []
        sub = bus.subscribe("job", handler_calls.append, chain=frys.EventProcessingChain(explode))
        await bus.publish("job", 5)
        [letter] = await dead.wait()
        assert letter.topic == "$frys.dlq.job"
        assert "step broke" in letter.payload["error"]
        assert calls == [5, 5, 5] and handler_calls == []
        assert sub.errors == 3


async def test_a_step_that_returns_something_else_is_a_chain_error_in_the_dead_letter() -> None:
    async with local_bus(handler_retries=0) as bus:
        dead = Collector(1)
        bus.subscribe("$frys.dlq.>", dead)
        bus.subscribe("job", lambda ev: None, chain=frys.EventProcessingChain(lambda ev: 42))
        await bus.publish("job", 1)
        [letter] = await dead.wait()
        assert letter.payload["error"].startswith("ChainError")


async def test_registered_chains_apply_to_every_subscription_of_matching_topics_in_order():
    async with local_bus() as bus:

        def tag(name: str) -> Any:
            def step(ev: frys.Event) -> frys.Event:
                ev.metadata = {**ev.metadata, "trail": [*ev.metadata.get("trail", []), name]}
                return ev

            return step

        a, b = Collector(2), Collector(1)
        bus.subscribe("order.>", a)  # before the chains exist
        bus.register_processing_chain("order.>", frys.EventProcessingChain(tag("first")))
        bus.register_processing_chain("order.eu.*", frys.EventProcessingChain(tag("second")))
        bus.subscribe("order.eu.placed", b, filter=lambda ev: "first" in ev.metadata["trail"])
        await bus.publish("order.eu.placed", 1)
        await bus.publish("order.us.placed", 2)
        first, second = await a.wait()
        assert first.metadata["trail"] == ["first", "second"]
        assert second.metadata["trail"] == ["first"]
        [only] = await b.wait()
        assert only.metadata["trail"] == ["first", "second"]


async def test_each_subscription_processes_its_own_copy_of_the_event() -> None:
    async with local_bus() as bus:

        def rename(ev: frys.Event) -> frys.Event:
            ev.topic, ev.metadata = "renamed", {"by": "chain"}
            return ev

        plain, chained = Collector(1), Collector(1)
        bus.subscribe("x", plain)
        bus.subscribe("x", chained, chain=frys.EventProcessingChain(rename))
        sent = await bus.publish("x", 1, metadata={"by": "publisher"})
        [a], [b] = await plain.wait(), await chained.wait()
        assert (a.topic, dict(a.metadata)) == ("x", {"by": "publisher"})
        assert (b.topic, dict(b.metadata)) == ("renamed", {"by": "chain"})
        assert (sent.topic, dict(sent.metadata)) == ("x", {"by": "publisher"})


async def test_a_removed_chain_no_longer_runs() -> None:
    async with local_bus() as bus:
        stopped = asyncio.Event()

        def stop(ev: frys.Event) -> None:
            stopped.set()

        chain = frys.EventProcessingChain(stop)
        bus.register_processing_chain("x", chain)
        got = Collector(1)
        bus.subscribe("x", got)
        await bus.publish("x", "dropped")
        async with asyncio.timeout(5):
            await stopped.wait()
        assert bus.remove_processing_chain("x", chain)
        assert not bus.remove_processing_chain("x", chain)
        await bus.publish("x", "kept")
        assert [e.payload for e in await got.wait()] == ["kept"]


async def test_an_iterator_subscription_applies_its_filter_and_chain() -> None:
    async with local_bus() as bus:
        chain = frys.EventProcessingChain(lambda ev: frys.Event(ev.topic, ev.payload * 10))
        sub = bus.subscribe("n", filter=lambda ev: ev.payload > 1, chain=chain)
        await bus.publish_batch([("n", i) for i in range(4)])
        assert [(await sub.get(1)).payload for _ in range(2)] == [20, 30]
        assert sub.filtered == 2
        sub.cancel()


async def test_a_chain_that_is_not_a_chain_is_refused() -> None:
    async with local_bus() as bus:
        with pytest.raises(frys.ConfigError):
            bus.subscribe("x", print, chain=[print])  # type: ignore[arg-type]
        with pytest.raises(frys.ConfigError):
            bus.register_processing_chain("x", print)  # type: ignore[arg-type]
