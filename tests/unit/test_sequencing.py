"""Per-publisher sequencing: order, duplicates, gaps, NACK windows, and the retention ring."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from frys_zmq import _timing
from frys_zmq._sequencing import Gap, Nack, RetentionRing, StreamTracker

pytestmark = pytest.mark.timeout(30)

# No example database: the suite must not leave files behind.
FAST = settings(max_examples=200, deadline=None, database=None)

TIMEOUT = 1.0


def offer_all(tracker: StreamTracker[int], seqs: list[int], *, replayed: bool = False) -> list[int]:
    out: list[int] = []
    for seq in seqs:
        out += tracker.offer(seq, seq, replayed=replayed)
    return out


# ---------------------------------------------------------------- delivery and duplicates


def test_events_in_order_are_delivered_at_once() -> None:
    tracker: StreamTracker[int] = StreamTracker(1)
    assert [tracker.offer(seq, seq) for seq in (1, 2, 3)] == [[1], [2], [3]]
    assert tracker.next_seq == 4
    assert tracker.known_last == 3
    assert not tracker.in_gap
    assert tracker.pending == 0
    assert tracker.duplicates == tracker.gaps == tracker.repaired == 0


def test_a_stream_may_start_at_any_sequence_number() -> None:
    tracker: StreamTracker[str] = StreamTracker(41)
    assert tracker.known_last == 40
    assert tracker.offer(41, "a") == ["a"]
    assert tracker.offer(40, "old") == []
    assert tracker.duplicates == 1


def test_a_duplicate_of_a_delivered_event_is_dropped_and_counted() -> None:
    tracker: StreamTracker[int] = StreamTracker(1)
    offer_all(tracker, [1, 2])
    assert tracker.offer(1, 1) == []
    assert tracker.offer(2, 2) == []
    assert tracker.duplicates == 2
    assert tracker.next_seq == 3


def test_a_duplicate_of_a_held_back_event_is_dropped_and_counted() -> None:
    tracker: StreamTracker[str] = StreamTracker(1)
    assert tracker.offer(3, "first copy") == []
    assert tracker.offer(3, "second copy") == []
    assert tracker.duplicates == 1
    assert tracker.pending == 1
    assert offer_all(tracker, [1]) == [1]
    assert tracker.offer(2, "two") == ["two", "first copy"]


def test_out_of_order_events_are_held_back_until_the_gap_fills() -> None:
    tracker: StreamTracker[int] = StreamTracker(1)
    assert offer_all(tracker, [1, 4, 3, 6]) == [1]
    assert tracker.pending == 3
    assert tracker.in_gap
    assert tracker.known_last == 6
    assert tracker.offer(2, 2) == [2, 3, 4]
    assert tracker.pending == 1
    assert tracker.offer(5, 5) == [5, 6]
    assert tracker.pending == 0
    assert not tracker.in_gap


def test_replayed_events_are_counted_as_repaired() -> None:
    tracker: StreamTracker[int] = StreamTracker(1)
    tracker.offer(1, 1)
    tracker.offer(4, 4)
    assert offer_all(tracker, [3, 2], replayed=True) == [2, 3, 4]
    assert tracker.repaired == 2
    tracker.offer(3, 3, replayed=True)  # a duplicate replay is not a repair
    assert tracker.repaired == 2
    assert tracker.duplicates == 1


def test_held_back_events_beyond_max_pending_are_dropped_and_asked_for_again() -> None:
    tracker: StreamTracker[int] = StreamTracker(1, max_pending=2)
    assert offer_all(tracker, [3, 4, 5, 6]) == []
    assert tracker.pending == 2
    assert tracker.known_last == 6
    nack = tracker.poll(0.0)
    assert nack == Nack(1, 6, ((1, 2), (5, 6)))
    assert offer_all(tracker, [1, 2], replayed=True) == [1, 2, 3, 4]
    assert offer_all(tracker, [5, 6], replayed=True) == [5, 6]
    assert tracker.duplicates == 0


# ---------------------------------------------------------------- NACKs, timeouts and gaps


def test_no_gap_means_no_nack() -> None:
    tracker: StreamTracker[int] = StreamTracker(1)
    assert tracker.poll(0.0) is None
    tracker.offer(1, 1)
    assert tracker.poll(100.0) is None
    assert not tracker.repairing


def test_a_nack_lists_exactly_the_missing_runs() -> None:
    tracker: StreamTracker[int] = StreamTracker(1)
    offer_all(tracker, [1, 4, 5, 8])
    tracker.observe_last(10)
    nack = tracker.poll(0.0, TIMEOUT)
    assert nack == Nack(2, 10, ((2, 3), (6, 7), (9, 10)))
    assert tracker.repairing


def test_a_nack_window_is_capped_at_max_range() -> None:
    tracker: StreamTracker[int] = StreamTracker(1, max_range=4)
    offer_all(tracker, [1, 4, 5, 8])
    tracker.observe_last(10)
    assert tracker.poll(0.0) == Nack(2, 5, ((2, 3),))


def test_a_nack_is_not_repeated_before_its_timeout() -> None:
    tracker: StreamTracker[int] = StreamTracker(1)
    offer_all(tracker, [1, 3])
    assert isinstance(tracker.poll(0.0, TIMEOUT), Nack)
    assert tracker.poll(0.5, TIMEOUT) is None
    assert tracker.poll(0.999, TIMEOUT) is None
    assert tracker.poll(1.0, TIMEOUT) == Nack(2, 3, ((2, 2),))


def test_an_unanswered_nack_is_repeated_with_doubling_backoff_up_to_a_cap() -> None:
    tracker: StreamTracker[int] = StreamTracker(1)
    offer_all(tracker, [1, 4, 6])
    nack = Nack(2, 6, ((2, 3), (5, 5)))
    assert tracker.poll(0.0, TIMEOUT) == nack
    now, wait = 0.0, TIMEOUT
    for _ in range(12):
        now += wait
        assert tracker.poll(now - 0.001, TIMEOUT) is None
        assert tracker.poll(now, TIMEOUT) == nack
        wait = min(wait * 2, TIMEOUT * _timing.NACK_MAX_BACKOFF)
    assert wait == TIMEOUT * _timing.NACK_MAX_BACKOFF


def test_an_unanswered_nack_is_never_given_up_on() -> None:
    # A busy publisher answers late; only replay_done() and abandon() turn waits into gaps.
    tracker: StreamTracker[int] = StreamTracker(1)
    offer_all(tracker, [1, 3])
    for hour in range(1, 200):
        assert tracker.poll(hour * 3600.0, TIMEOUT) == Nack(2, 3, ((2, 2),))
    assert tracker.gaps == 0
    assert tracker.repairing


def test_progress_on_a_gap_sends_the_next_nack_at_once_without_backoff() -> None:
    tracker: StreamTracker[int] = StreamTracker(1)
    offer_all(tracker, [1, 4])
    assert tracker.poll(0.0, TIMEOUT) == Nack(2, 4, ((2, 3),))
    assert tracker.poll(1.0, TIMEOUT) == Nack(2, 4, ((2, 3),))  # backoff now 2 s
    tracker.offer(2, 2, replayed=True)
    # The outstanding NACK starts below next_seq now: ask for the rest without waiting.
    assert tracker.poll(1.1, TIMEOUT) == Nack(3, 4, ((3, 3),))
    assert tracker.poll(2.0, TIMEOUT) is None
    assert tracker.poll(2.1, TIMEOUT) == Nack(3, 4, ((3, 3),))


def test_a_replay_in_progress_postpones_the_repeat_nack() -> None:
    tracker: StreamTracker[int] = StreamTracker(1)
    offer_all(tracker, [1, 5])
    assert tracker.poll(0.0, TIMEOUT) == Nack(2, 5, ((2, 4),))
    tracker.offer(3, 3, replayed=True)
    tracker.progress(0.9, TIMEOUT)
    assert tracker.poll(1.5, TIMEOUT) is None
    assert tracker.poll(1.9, TIMEOUT) == Nack(2, 5, ((2, 2), (4, 4)))


def test_progress_without_an_outstanding_nack_changes_nothing() -> None:
    tracker: StreamTracker[int] = StreamTracker(1)
    offer_all(tracker, [1, 3])
    tracker.progress(100.0, TIMEOUT)
    assert not tracker.repairing
    assert tracker.poll(0.0, TIMEOUT) == Nack(2, 3, ((2, 2),))


def test_a_filled_gap_clears_the_outstanding_nack() -> None:
    tracker: StreamTracker[int] = StreamTracker(1)
    offer_all(tracker, [1, 3])
    tracker.poll(0.0)
    assert tracker.repairing
    tracker.offer(2, 2, replayed=True)
    assert tracker.poll(0.1) is None
    assert not tracker.repairing


def test_heartbeat_beyond_the_last_event_reveals_tail_loss() -> None:
    tracker: StreamTracker[int] = StreamTracker(1)
    offer_all(tracker, [1, 2])
    assert not tracker.in_gap
    tracker.observe_last(4)
    assert tracker.in_gap
    assert tracker.poll(0.0) == Nack(3, 4, ((3, 4),))


def test_an_older_heartbeat_does_not_lower_the_known_last() -> None:
    tracker: StreamTracker[int] = StreamTracker(1)
    offer_all(tracker, [1, 2, 3])
    tracker.observe_last(1)
    assert tracker.known_last == 3
    assert not tracker.in_gap


def test_replay_done_reports_what_the_publisher_no_longer_retains() -> None:
    tracker: StreamTracker[int] = StreamTracker(1)
    offer_all(tracker, [1, 6])
    nack = tracker.poll(0.0)
    assert nack == Nack(2, 6, ((2, 5),))
    gap = tracker.replay_done(2, 6, oldest_available=4)
    assert gap == Gap(2, 3, "no longer retained by the publisher")
    assert not tracker.repairing
    assert tracker.skip(gap) == []
    assert tracker.next_seq == 4
    assert offer_all(tracker, [4, 5], replayed=True) == [4, 5, 6]
    assert tracker.gaps == 2


def test_replay_done_gap_stops_at_the_first_event_that_did_arrive() -> None:
    tracker: StreamTracker[int] = StreamTracker(1)
    offer_all(tracker, [1, 3, 6])
    tracker.poll(0.0)
    gap = tracker.replay_done(2, 6, oldest_available=100)
    assert gap == Gap(2, 2, "no longer retained by the publisher")
    assert tracker.skip(gap) == [3]


def test_replay_done_with_everything_retained_is_not_a_gap() -> None:
    tracker: StreamTracker[int] = StreamTracker(1)
    offer_all(tracker, [1, 4])
    tracker.poll(0.0)
    assert tracker.replay_done(2, 4, oldest_available=1) is None
    assert tracker.replay_done(2, 4, oldest_available=2) is None
    assert not tracker.repairing


def test_replay_done_for_a_range_below_next_seq_is_not_a_gap() -> None:
    tracker: StreamTracker[int] = StreamTracker(10)
    tracker.offer(12, 12)
    assert tracker.replay_done(1, 5, oldest_available=50) is None


def test_a_seq_the_publisher_sent_twice_without_it_arriving_becomes_a_gap() -> None:
    # E.g. an event whose header this node cannot decode: waiting for it would stall the
    # stream for good, every NACK answered with the same undeliverable copy.
    tracker: StreamTracker[int] = StreamTracker(1)
    offer_all(tracker, [1, 3, 4])
    assert tracker.replay_done(2, 4, oldest_available=1, sent_upto=2) is None
    gap = tracker.replay_done(2, 4, oldest_available=1, sent_upto=2)
    assert gap == Gap(2, 2, "sent by the publisher, undeliverable here")
    assert tracker.skip(gap) == [3, 4]


def test_a_replay_that_did_not_reach_the_missing_seq_is_not_a_gap() -> None:
    tracker: StreamTracker[int] = StreamTracker(1)
    offer_all(tracker, [1, 5])
    for _ in range(5):  # the publisher's queue was full: it stopped before seq 2
        assert tracker.replay_done(2, 4, oldest_available=1, sent_upto=1) is None
    assert tracker.replay_done(2, 4, oldest_available=1) is None  # an older publisher


def test_progress_between_replays_restarts_the_undeliverable_count() -> None:
    tracker: StreamTracker[int] = StreamTracker(1)
    offer_all(tracker, [1, 4])
    assert tracker.replay_done(2, 3, oldest_available=1, sent_upto=3) is None
    tracker.offer(2, 2, replayed=True)
    assert tracker.replay_done(3, 3, oldest_available=1, sent_upto=3) is None
    assert tracker.replay_done(3, 3, oldest_available=1, sent_upto=3) == Gap(
        3, 3, "sent by the publisher, undeliverable here"
    )


def test_the_publishers_own_last_seq_caps_claims_beyond_it() -> None:
    # A forged event or heartbeat from "the publisher" claimed a far later seq.
    tracker: StreamTracker[int] = StreamTracker(1)
    offer_all(tracker, [1, 2**63])
    tracker.observe_last(2**63 + 5)
    assert tracker.in_gap
    assert tracker.cap_last(1) == 1  # the held forgery is dropped
    assert not tracker.in_gap
    assert tracker.poll(0.0) is None
    assert tracker.offer(2, 2) == [2]


def test_capping_at_or_above_the_known_last_changes_nothing() -> None:
    tracker: StreamTracker[int] = StreamTracker(1)
    offer_all(tracker, [1, 3])
    assert tracker.cap_last(3) == 0
    assert tracker.known_last == 3 and tracker.pending == 1


def test_skip_releases_the_events_held_behind_the_gap() -> None:
    tracker: StreamTracker[int] = StreamTracker(1)
    offer_all(tracker, [1, 4, 5, 7])
    assert tracker.skip(Gap(2, 3, "test")) == [4, 5]
    assert tracker.next_seq == 6
    assert tracker.gaps == 2
    assert tracker.pending == 1


def test_skipping_a_gap_that_is_already_behind_changes_nothing() -> None:
    tracker: StreamTracker[int] = StreamTracker(1)
    offer_all(tracker, [1, 2, 3])
    assert tracker.skip(Gap(1, 2, "stale")) == []
    assert tracker.gaps == 0
    assert tracker.next_seq == 4


def test_skipping_a_gap_partly_behind_counts_only_the_part_ahead() -> None:
    tracker: StreamTracker[int] = StreamTracker(1)
    offer_all(tracker, [1, 2, 6])
    assert tracker.skip(Gap(1, 5, "test")) == [6]
    assert tracker.gaps == 3


def test_abandoning_a_stream_without_a_gap_loses_nothing() -> None:
    tracker: StreamTracker[int] = StreamTracker(1)
    offer_all(tracker, [1, 2])
    assert tracker.abandon() is None


def test_abandoning_a_stream_reports_what_is_still_missing() -> None:
    tracker: StreamTracker[int] = StreamTracker(1)
    offer_all(tracker, [1, 2])
    tracker.observe_last(5)
    assert tracker.abandon() == Gap(3, 5, "publisher expired")


def test_publisher_expiring_still_delivers_the_events_that_did_arrive() -> None:
    tracker: StreamTracker[int] = StreamTracker(1)
    offer_all(tracker, [1, 3])
    tracker.observe_last(4)
    gap = tracker.abandon()
    assert gap is not None
    # 3 arrived and is held back; only 2 and 4 are lost.
    assert tracker.skip(gap) == [3]
    assert tracker.gaps == 2


# ---------------------------------------------------------------- properties


def repair_until_done(
    tracker: StreamTracker[int],
    *,
    oldest_available: int = 1,
    now: float = 0.0,
    rounds: int = 10_000,
) -> tuple[list[int], list[int]]:
    """Play a publisher that answers every NACK at once; return (delivered, lost).

    ``now`` must be past the deadline of any NACK already outstanding.
    """
    delivered: list[int] = []
    lost: list[int] = []
    for _ in range(rounds):
        nack = tracker.poll(now, TIMEOUT)
        if nack is None:
            assert not tracker.in_gap, "poll() waits although every NACK was answered"
            return delivered, lost
        for lo, hi in nack.missing:
            assert nack.first <= lo <= hi <= nack.last
            for seq in range(max(lo, oldest_available), hi + 1):
                delivered += tracker.offer(seq, seq, replayed=True)
        gap = tracker.replay_done(nack.first, nack.last, oldest_available)
        if gap is not None:
            lost += range(gap.first, gap.last + 1)
            delivered += tracker.skip(gap)
        now += 0.01
    raise AssertionError("repair did not finish")


@st.composite
def lossy_arrivals(draw: st.DrawFn) -> tuple[int, list[int]]:
    """1..n, each sent 0, 1 or 2 times, in any order."""
    n = draw(st.integers(1, 60))
    copies = draw(st.lists(st.integers(0, 2), min_size=n, max_size=n))
    arrivals = [seq for seq, k in zip(range(1, n + 1), copies, strict=True) for _ in range(k)]
    return n, draw(st.permutations(arrivals))


@FAST
@given(lossy_arrivals(), st.integers(1, 8), st.integers(1, 100))
def test_any_lossy_reordered_stream_is_repaired_into_exact_order(
    case: tuple[int, list[int]], max_range: int, max_pending: int
) -> None:
    n, arrivals = case
    tracker: StreamTracker[int] = StreamTracker(1, max_range=max_range, max_pending=max_pending)
    delivered = offer_all(tracker, arrivals)
    tracker.observe_last(n)  # the heartbeat after the last event
    assert tracker.pending <= max_pending
    more, lost = repair_until_done(tracker)
    assert lost == []
    assert delivered + more == list(range(1, n + 1))
    assert tracker.gaps == 0
    assert tracker.pending == 0


@FAST
@given(lossy_arrivals(), st.integers(1, 8), st.integers(1, 70))
def test_a_publisher_that_forgot_old_events_yields_order_plus_exact_gaps(
    case: tuple[int, list[int]], max_range: int, oldest_available: int
) -> None:
    n, arrivals = case
    tracker: StreamTracker[int] = StreamTracker(1, max_range=max_range)
    delivered = offer_all(tracker, arrivals)
    tracker.observe_last(n)
    more, lost = repair_until_done(tracker, oldest_available=oldest_available)
    delivered += more
    assert delivered == sorted(set(delivered)), "out of order or duplicated"
    assert sorted(delivered + lost) == list(range(1, n + 1))
    # Only events that never arrived and can no longer be replayed are lost.
    assert all(seq not in arrivals and seq < oldest_available for seq in lost)
    assert tracker.gaps == len(lost)


class LossyLink(RuleBasedStateMachine):
    """A publisher, a lossy reordering network, and a subscriber's tracker."""

    @initialize(max_range=st.integers(1, 6), max_pending=st.integers(1, 20))
    def start(self, max_range: int, max_pending: int) -> None:
        self.tracker: StreamTracker[int] = StreamTracker(
            1, max_range=max_range, max_pending=max_pending
        )
        self.max_pending = max_pending
        self.sent = 0
        self.in_flight: list[tuple[int, bool]] = []
        self.delivered: list[int] = []
        self.now = 0.0

    @rule(copies=st.integers(0, 2))
    def publish(self, copies: int) -> None:
        self.sent += 1
        self.in_flight += [(self.sent, False)] * copies

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def deliver_one(self, data: st.DataObject) -> None:
        index = data.draw(st.integers(0, len(self.in_flight) - 1))
        seq, replayed = self.in_flight.pop(index)
        self.delivered += self.tracker.offer(seq, seq, replayed=replayed)

    @rule()
    def heartbeat(self) -> None:
        self.tracker.observe_last(self.sent)

    @rule(dt=st.sampled_from([0.0, 0.3, TIMEOUT]), data=st.data())
    def tick(self, dt: float, data: st.DataObject) -> None:
        """Time passes; a NACK's replays go out on the lossy network too."""
        self.now += dt
        action = self.tracker.poll(self.now, TIMEOUT)
        if action is not None:
            assert action.first == self.tracker.next_seq
            for lo, hi in action.missing:
                for seq in range(lo, hi + 1):
                    if data.draw(st.booleans(), label=f"replay {seq} arrives"):
                        self.in_flight.append((seq, True))

    @invariant()
    def delivered_is_an_exact_prefix(self) -> None:
        assert self.delivered == list(range(1, len(self.delivered) + 1))
        assert self.tracker.next_seq == len(self.delivered) + 1
        assert self.tracker.pending <= self.max_pending

    def teardown(self) -> None:
        if not hasattr(self, "tracker"):
            return
        # The network heals: everything in flight arrives, then every NACK is answered.
        for seq, replayed in self.in_flight:
            self.delivered += self.tracker.offer(seq, seq, replayed=replayed)
        self.tracker.observe_last(self.sent)
        # A NACK whose replays were lost is repeated once its (backed-off) timeout has passed.
        more, lost = repair_until_done(
            self.tracker, now=self.now + TIMEOUT * _timing.NACK_MAX_BACKOFF
        )
        assert lost == []
        assert self.delivered + more == list(range(1, self.sent + 1))


TestLossyLink = LossyLink.TestCase
TestLossyLink.settings = settings(
    max_examples=100, stateful_step_count=60, deadline=None, database=None
)


# ---------------------------------------------------------------- retention ring


def test_an_empty_ring_has_no_oldest() -> None:
    ring: RetentionRing[str] = RetentionRing(10, 100)
    assert ring.oldest is None
    assert len(ring) == 0
    assert ring.nbytes == 0
    assert ring.get(1) is None


def test_the_ring_is_bounded_by_count() -> None:
    ring: RetentionRing[str] = RetentionRing(3, 1_000)
    for seq in range(1, 6):
        ring.add(seq, f"e{seq}", 10)
    assert len(ring) == 3
    assert ring.oldest == 3
    assert ring.nbytes == 30
    assert ring.get(2) is None
    assert [ring.get(seq) for seq in (3, 4, 5)] == ["e3", "e4", "e5"]


def test_the_ring_is_bounded_by_bytes() -> None:
    ring: RetentionRing[str] = RetentionRing(100, 10)
    ring.add(1, "a", 4)
    ring.add(2, "b", 4)
    assert ring.oldest == 1
    ring.add(3, "c", 4)
    assert ring.oldest == 2
    assert ring.nbytes == 8
    ring.add(4, "d", 9)
    assert ring.oldest == 4
    assert ring.nbytes == 9


def test_the_ring_keeps_the_newest_event_even_when_it_alone_is_over_the_byte_bound() -> None:
    ring: RetentionRing[str] = RetentionRing(100, 10)
    ring.add(1, "small", 2)
    ring.add(2, "huge", 50)
    assert len(ring) == 1
    assert ring.oldest == 2
    assert ring.get(2) == "huge"
    assert ring.nbytes == 50


@FAST
@given(
    st.integers(1, 20),
    st.integers(1, 200),
    st.lists(st.integers(0, 60), max_size=80),
)
def test_the_ring_always_holds_the_newest_events_within_its_bounds(
    max_items: int, max_bytes: int, sizes: list[int]
) -> None:
    ring: RetentionRing[int] = RetentionRing(max_items, max_bytes)
    for seq, size in enumerate(sizes, start=1):
        ring.add(seq, seq, size)
        assert len(ring) <= max_items
        assert ring.nbytes <= max_bytes or len(ring) == 1
    if not sizes:
        return
    oldest = ring.oldest
    assert oldest is not None
    kept = range(oldest, len(sizes) + 1)
    assert len(ring) == len(kept)
    assert [ring.get(seq) for seq in kept] == list(kept)
    assert ring.get(oldest - 1) is None
    assert ring.nbytes == sum(sizes[oldest - 1 :])
    # Greedy: the ring dropped nothing it had room for.
    if oldest > 1:
        too_many = len(kept) + 1 > max_items
        too_big = ring.nbytes + sizes[oldest - 2] > max_bytes
        assert too_many or too_big
