"""The synchronous facade with real sockets on 127.0.0.1: connect, endpoints, the log."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import frys_zmq as frys
from frys_zmq import sync

pytestmark = pytest.mark.timeout(60)


def config(node_id: str, cluster: str, **kw) -> frys.EventBusConfig:
    # No mDNS: the nodes meet through connect(), so nothing leaves loopback.
    return frys.EventBusConfig(
        node_id=node_id, cluster=cluster, interface="127.0.0.1", discovery_strategy="none", **kw
    )


@pytest.fixture
def logged(cluster: str, tmp_path: Path) -> Iterator[sync.EventBus]:
    cfg = config("logger", cluster, enable_persistence=True, data_dir=str(tmp_path))
    with sync.EventBus(cfg) as bus:
        yield bus


def test_two_sync_buses_meet_through_connect_and_exchange_events(cluster: str) -> None:
    with (
        sync.EventBus(config("a", cluster)) as a,
        sync.EventBus(config("b", cluster)) as b,
    ):
        assert a.endpoints["pub"].startswith("tcp://127.0.0.1:")
        assert a.endpoints["router"].startswith("tcp://127.0.0.1:")
        sub = b.subscribe("greeting.*")
        b.connect(a.endpoints["router"])
        assert [p.node_id for p in a.wait_for_peers(1, timeout=20)] == ["b"]
        a.publish("greeting.hello", "world")
        event = sub.get(10)
        assert (event.topic, event.payload, event.source) == ("greeting.hello", "world", "a")
        sub.cancel()


def test_connect_refuses_an_endpoint_that_is_not_tcp_host_port(cluster: str) -> None:
    with (
        sync.EventBus(config("a", cluster)) as bus,
        pytest.raises(frys.ConfigError, match=r"must be tcp://HOST:PORT .*got 'garbage'"),
    ):
        bus.connect("garbage")


def test_waiting_for_absent_peers_raises_peer_wait_timeout_not_sync_timeout(
    cluster: str,
) -> None:
    with sync.EventBus(config("alone", cluster)) as bus:
        started = time.monotonic()
        with pytest.raises(frys.PeerWaitTimeout, match="0 of 1 peers ready"):
            bus.wait_for_peers(1, timeout=0.3)
        assert time.monotonic() - started < 5


def test_recover_events_reads_back_what_the_node_logged(logged: sync.EventBus) -> None:
    for i in range(5):
        logged.publish("audit.a" if i % 2 else "audit.b", i, ack=True)
    assert [e.payload for e in logged.recover_events()] == [0, 1, 2, 3, 4]
    assert [e.payload for e in logged.recover_events("audit.b")] == [0, 2, 4]
    assert [e.seq for e in logged.recover_events(after_seq=3)] == [4, 5]


def test_iter_events_streams_the_log_and_may_be_left_early(logged: sync.EventBus) -> None:
    logged.publish_batch([("audit.x", i) for i in range(10)])
    logged.publish("audit.x", 10, ack=True)
    assert [e.seq for e in logged.iter_events(after_seq=8)] == [9, 10, 11]
    events = logged.iter_events()
    assert [e.payload for e in itertools.islice(events, 2)] == [0, 1]
    events.close()  # the async generator on the bus's loop is closed too
    assert len(logged.recover_events()) == 11


def test_the_log_needs_persistence(cluster: str) -> None:
    with sync.EventBus(config("plain", cluster)) as bus:
        with pytest.raises(frys.StorageError, match="enable_persistence"):
            bus.recover_events()
        with pytest.raises(frys.StorageError, match="enable_persistence"):
            next(bus.iter_events())
