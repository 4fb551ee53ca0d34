"""The peer table: sign-of-life bookkeeping, suspicion and expiry, driven by explicit clocks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frys_zmq._peers import PeerInfo, PeerState, PeerTable

pytestmark = pytest.mark.timeout(30)

# No example database: the suite must not leave files behind.
FAST = settings(max_examples=200, deadline=None, database=None)

HEARTBEAT = 1.0
TTL = 5.0
SUSPECT_AFTER = 3


def table() -> PeerTable:
    return PeerTable(heartbeat_interval=HEARTBEAT, ttl=TTL, suspect_after=SUSPECT_AFTER)


def peer(
    node_id: str = "a",
    *,
    state: PeerState = PeerState.ALIVE,
    last_seen: float = 0.0,
    incarnation: int = 1,
) -> PeerInfo:
    return PeerInfo(
        node_id=node_id,
        cluster="c",
        address="127.0.0.1",
        pub_port=5000,
        router_port=5001,
        incarnation=incarnation,
        state=state,
        first_seen=last_seen,
        last_seen=last_seen,
    )


def test_an_empty_table_knows_no_one() -> None:
    peers = table()
    assert len(peers) == 0
    assert "a" not in peers
    assert peers.get("a") is None
    assert list(peers) == []
    assert peers.remove("a") is None
    assert peers.sweep(100.0) == ([], [])


def test_added_peers_can_be_found_iterated_and_removed() -> None:
    peers = table()
    a, b = peer("a"), peer("b")
    assert peers.add(a) is None
    assert peers.add(b) is None
    assert len(peers) == 2
    assert "a" in peers
    assert peers.get("b") is b
    assert {p.node_id for p in peers} == {"a", "b"}
    assert peers.remove("a") is a
    assert "a" not in peers
    assert len(peers) == 1


def test_adding_a_peer_with_a_known_id_replaces_it_and_returns_the_old_entry() -> None:
    peers = table()
    old, new = peer("a", incarnation=1), peer("a", incarnation=2)
    peers.add(old)
    assert peers.add(new) is old
    assert peers.get("a") is new
    assert len(peers) == 1


def test_iterating_the_table_while_removing_peers_is_safe() -> None:
    peers = table()
    for name in "abc":
        peers.add(peer(name))
    for p in peers:
        peers.remove(p.node_id)
    assert len(peers) == 0


def test_hearing_from_an_unknown_peer_returns_none() -> None:
    assert table().heard("ghost", 1.0) is None


def test_hearing_from_a_peer_records_the_time() -> None:
    peers = table()
    peers.add(peer("a", last_seen=0.0))
    heard = peers.heard("a", 2.5)
    assert heard is not None
    assert heard.last_seen == 2.5
    assert heard.age(4.0) == 1.5
    assert heard.state is PeerState.ALIVE


def test_hearing_from_a_suspect_peer_makes_it_alive_again() -> None:
    peers = table()
    peers.add(peer("a", state=PeerState.SUSPECT))
    heard = peers.heard("a", 1.0)
    assert heard is not None
    assert heard.state is PeerState.ALIVE


def test_hearing_from_a_connecting_peer_does_not_make_it_alive() -> None:
    peers = table()
    peers.add(peer("a", state=PeerState.CONNECTING))
    heard = peers.heard("a", 1.0)
    assert heard is not None
    assert heard.state is PeerState.CONNECTING


def test_a_peer_is_suspect_only_after_missing_suspect_after_heartbeats() -> None:
    peers = table()
    a = peer("a", last_seen=10.0)
    peers.add(a)
    suspect_age = HEARTBEAT * SUSPECT_AFTER
    assert peers.sweep(10.0 + suspect_age) == ([], [])
    assert a.state is PeerState.ALIVE
    assert peers.sweep(10.0 + suspect_age + 0.01) == ([a], [])
    assert a.state is PeerState.SUSPECT
    assert "a" in peers


def test_a_suspect_peer_is_reported_suspect_only_once() -> None:
    peers = table()
    a = peer("a")
    peers.add(a)
    assert peers.sweep(3.5) == ([a], [])
    assert peers.sweep(4.0) == ([], [])
    assert a.state is PeerState.SUSPECT


def test_a_peer_silent_past_the_ttl_expires_and_leaves_the_table() -> None:
    peers = table()
    a = peer("a", last_seen=10.0)
    peers.add(a)
    assert peers.sweep(10.0 + TTL) == ([a], [])
    assert peers.sweep(10.0 + TTL + 0.01) == ([], [a])
    assert "a" not in peers
    assert len(peers) == 0


def test_a_peer_can_expire_without_being_suspected_first() -> None:
    peers = table()
    a = peer("a")
    peers.add(a)
    assert peers.sweep(TTL + 1.0) == ([], [a])
    assert a.state is PeerState.ALIVE


def test_a_connecting_peer_is_never_suspected_but_does_expire() -> None:
    peers = table()
    a = peer("a", state=PeerState.CONNECTING)
    peers.add(a)
    assert peers.sweep(4.0) == ([], [])
    assert a.state is PeerState.CONNECTING
    assert peers.sweep(TTL + 0.01) == ([], [a])


def test_a_heartbeat_in_time_keeps_a_peer_alive() -> None:
    peers = table()
    a = peer("a")
    peers.add(a)
    for now in range(1, 100):
        peers.heard("a", float(now))
        assert peers.sweep(now + HEARTBEAT * SUSPECT_AFTER) == ([], [])
    assert a.state is PeerState.ALIVE


def test_a_suspect_peer_heard_again_is_not_expired() -> None:
    peers = table()
    a = peer("a")
    peers.add(a)
    peers.sweep(4.0)
    peers.heard("a", 4.5)
    assert peers.sweep(6.0) == ([], [])
    assert a.state is PeerState.ALIVE


def test_sweep_sorts_each_peer_by_its_own_age() -> None:
    peers = table()
    fresh, quiet, gone = peer("fresh", last_seen=9.5), peer("quiet", last_seen=6.0), peer("gone")
    for p in (fresh, quiet, gone):
        peers.add(p)
    assert peers.sweep(10.0) == ([quiet], [gone])
    assert {p.node_id for p in peers} == {"fresh", "quiet"}


@FAST
@given(st.floats(0.0, 1_000.0), st.floats(0.0, 20.0))
def test_sweep_agrees_with_the_age_rules(last_seen: float, age: float) -> None:
    peers = table()
    a = peer("a", last_seen=last_seen)
    peers.add(a)
    now = last_seen + age
    suspect, expired = peers.sweep(now)
    real_age = now - last_seen  # floating point: the age the table actually sees
    assert (expired == [a]) == (real_age > TTL)
    assert (suspect == [a]) == (HEARTBEAT * SUSPECT_AFTER < real_age <= TTL)
    assert ("a" in peers) == (real_age <= TTL)


@pytest.mark.parametrize(
    ("state", "receiving", "sending", "ready"),
    [
        (PeerState.CONNECTING, True, True, False),
        (PeerState.ALIVE, True, True, True),
        (PeerState.SUSPECT, True, True, True),
        (PeerState.ALIVE, False, True, False),
        (PeerState.ALIVE, True, False, False),
        (PeerState.ALIVE, False, False, False),
    ],
)
def test_a_peer_is_ready_only_once_answered_and_events_flow_both_ways(
    state: PeerState, receiving: bool, sending: bool, ready: bool
) -> None:
    p = peer(state=state)
    p.receiving = receiving
    p.sending = sending
    assert p.ready is ready


def test_a_peer_new_from_an_announcement_is_connecting_and_not_ready() -> None:
    p = PeerInfo(node_id="a", cluster="c", address="10.0.0.1", pub_port=1, router_port=2)
    assert p.state is PeerState.CONNECTING
    assert not p.ready
    assert not p.durable
    assert p.extra == {}


def test_peer_endpoints_are_tcp_urls_of_its_address_and_ports() -> None:
    p = PeerInfo(node_id="a", cluster="c", address="10.0.0.1", pub_port=7001, router_port=7002)
    assert p.pub_endpoint == "tcp://10.0.0.1:7001"
    assert p.router_endpoint == "tcp://10.0.0.1:7002"


def test_peer_states_compare_equal_to_their_names() -> None:
    assert PeerState("suspect") is PeerState.SUSPECT
    assert PeerState.ALIVE == "alive"
    assert [s.value for s in PeerState] == ["connecting", "alive", "suspect"]


def test_each_peer_gets_its_own_extra_dict() -> None:
    a, b = peer("a"), peer("b")
    a.extra["k"] = 1
    assert b.extra == {}
