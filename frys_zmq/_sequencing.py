"""Per-publisher sequencing: order, duplicates, gaps and their repair. No I/O.

A subscriber node keeps one ``StreamTracker`` per live publisher incarnation. Events are
offered as they arrive (from SUB or from a replay); the tracker hands back the ones that
may be delivered now, in sequence order, and says which range to NACK or give up on.
The publisher side keeps a ``RetentionRing`` of its recent messages to answer NACKs.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Generic, TypeVar

from . import _timing

__all__ = ["Gap", "Nack", "RetentionRing", "StreamTracker"]

#: Replays that sent a seq which still did not arrive whole before it is declared a gap.
_UNDELIVERABLE_AFTER = 2

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Nack:
    """Ask the publisher to replay the ``missing`` runs (inclusive) of ``first..last``."""

    first: int
    last: int
    missing: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class Gap:
    """``first..last`` (inclusive) cannot be recovered."""

    first: int
    last: int
    reason: str


class StreamTracker(Generic[T]):
    """Sequence state of one publisher incarnation as seen by one subscriber node."""

    __slots__ = (
        "_attempts",
        "_max_pending",
        "_max_pending_bytes",
        "_max_range",
        "_nack_deadline",
        "_outstanding",
        "_pending",
        "_pending_bytes",
        "_sent_missing",
        "_sizes",
        "duplicates",
        "gaps",
        "known_last",
        "next_seq",
        "repaired",
    )

    def __init__(
        self,
        next_seq: int,
        *,
        max_pending: int = 100_000,
        max_pending_bytes: int = 64 * 1024 * 1024,
        max_range: int = _timing.NACK_MAX_RANGE,
    ) -> None:
        #: The next sequence number that may be delivered.
        self.next_seq = next_seq
        #: Highest sequence number the publisher is known to have sent.
        self.known_last = next_seq - 1
        self._pending: dict[int, T] = {}
        self._sizes: dict[int, int] = {}  # bytes of each held event, for the byte bound
        self._pending_bytes = 0
        self._max_pending = max_pending
        self._max_pending_bytes = max_pending_bytes
        self._max_range = max_range
        self._outstanding: Nack | None = None
        self._nack_deadline = 0.0
        self._attempts = 0
        # (seq, rounds): the first missing seq and how many replays said it was sent.
        self._sent_missing = (0, 0)
        self.duplicates = 0
        self.gaps = 0
        self.repaired = 0

    @property
    def pending(self) -> int:
        """Events held back because an earlier one is missing."""
        return len(self._pending)

    @property
    def in_gap(self) -> bool:
        return self.known_last >= self.next_seq

    @property
    def repairing(self) -> bool:
        """A NACK is out and not yet answered."""
        return self._outstanding is not None

    def offer(self, seq: int, item: T, *, replayed: bool = False, size: int = 0) -> list[T]:
        """Take one event (of ``size`` bytes); return the events now deliverable, in order."""
        if seq == self.next_seq and not self._pending:
            # The common case: in order, nothing held back.
            self.next_seq = seq + 1
            if seq > self.known_last:
                self.known_last = seq
            if replayed:
                self.repaired += 1
            return [item]
        if seq < self.next_seq or seq in self._pending:
            self.duplicates += 1
            return []
        if seq > self.known_last:
            self.known_last = seq
        if replayed:
            self.repaired += 1
        if seq != self.next_seq:
            # Out of order: hold it if there is room; otherwise it is asked for again later.
            if (
                len(self._pending) < self._max_pending
                and self._pending_bytes + size <= self._max_pending_bytes
            ):
                self._pending[seq] = item
                self._sizes[seq] = size
                self._pending_bytes += size
            return []
        self.next_seq = seq + 1
        return [item, *self._drain()]

    def take_run(self, first: int, n: int) -> bool:
        """Take ``first .. first + n - 1`` at once if they are next and nothing is held back.

        Returns False (and changes nothing) otherwise; offer them one by one then.
        """
        if first != self.next_seq or self._pending:
            return False
        self.next_seq = first + n
        if first + n - 1 > self.known_last:
            self.known_last = first + n - 1
        return True

    def progress(self, now: float, timeout: float = _timing.NACK_TIMEOUT) -> None:
        """A replayed event arrived: the outstanding NACK is being answered, so wait on."""
        if self._outstanding is not None:
            self._nack_deadline = now + timeout

    def observe_last(self, last_seq: int) -> None:
        """The publisher says it has sent up to ``last_seq`` (heartbeats, replay ends)."""
        if last_seq > self.known_last:
            self.known_last = last_seq

    def poll(self, now: float, timeout: float = _timing.NACK_TIMEOUT) -> Nack | None:
        """The NACK to send now for the stream's gap, if one is due.

        An unanswered NACK is repeated with exponential backoff (``timeout``, doubling, up
        to ``NACK_MAX_BACKOFF`` times it). It is never given up on here: a publisher that is
        alive but busy answers late, and giving up would turn a delay into a loss. Ranges
        become gaps when the publisher says it no longer has them (``replay_done``) or when
        it is gone (``abandon``).
        """
        if not self.in_gap:
            self._outstanding = None
            self._attempts = 0
            return None
        first = self.next_seq
        if self._outstanding is not None:
            if self._outstanding.first == first and now < self._nack_deadline:
                return None
            if self._outstanding.first == first:
                self._attempts += 1
            else:
                self._attempts = 0
        # One NACK covers a whole window and lists every missing run in it: under heavy loss
        # the runs are short and many, and one round trip per run would crawl.
        last = min(self.known_last, first + self._max_range - 1)
        nack = Nack(first, last, self._missing_runs(first, last))
        self._outstanding = nack
        self._nack_deadline = now + timeout * min(2**self._attempts, _timing.NACK_MAX_BACKOFF)
        return nack

    def replay_done(
        self, first: int, last: int, oldest_available: int, sent_upto: int | None = None
    ) -> Gap | None:
        """The publisher has answered a NACK for ``first..last``.

        Sequence numbers below ``oldest_available`` are gone from its ring and log; if the
        stream still waits for one of them, that range is a gap. ``sent_upto`` says the
        publisher did send every asked-for seq up to there: one still missing after it was
        sent twice arrived in a form this node cannot take (it does not decode here, say),
        and waiting for it would stall the stream for good, so it becomes a gap too.
        """
        if self._outstanding is not None and self._outstanding.first == first:
            self._outstanding = None
            self._attempts = 0
        if self.next_seq < oldest_available and self.next_seq <= last:
            return Gap(
                self.next_seq,
                min(oldest_available - 1, self._missing_end()),
                "no longer retained by the publisher",
            )
        if sent_upto is not None and first <= self.next_seq <= sent_upto:
            if self._sent_missing[0] == self.next_seq:
                self._sent_missing = (self.next_seq, self._sent_missing[1] + 1)
            else:
                self._sent_missing = (self.next_seq, 1)
            if self._sent_missing[1] >= _UNDELIVERABLE_AFTER:
                seq = self.next_seq
                return Gap(seq, seq, "sent by the publisher, undeliverable here")
        return None

    def cap_last(self, last_seq: int) -> int:
        """The publisher's own word is that it has sent nothing after ``last_seq``.

        Forget claims beyond it (held events, a higher ``known_last``); returns how many held
        events were dropped.
        """
        if self.known_last <= last_seq:
            return 0
        self.known_last = max(last_seq, self.next_seq - 1)
        beyond = [seq for seq in self._pending if seq > last_seq]
        for seq in beyond:
            self._take(seq)
        return len(beyond)

    def skip(self, gap: Gap) -> list[T]:
        """Give up on ``gap``: move past it and return what became deliverable."""
        if gap.last < self.next_seq:
            return []
        end = gap.last + 1
        # Events held back inside the gap did arrive: release them, do not drop them.
        held = sorted(s for s in self._pending if s < end)
        self.gaps += end - self.next_seq - len(held)
        out = [self._take(s) for s in held]
        self.next_seq = end
        out.extend(self._drain())
        return out

    def abandon(self) -> Gap | None:
        """The publisher is gone: whatever is still missing is a gap."""
        if not self.in_gap:
            return None
        return Gap(self.next_seq, self.known_last, "publisher expired")

    def _missing_runs(self, first: int, last: int) -> tuple[tuple[int, int], ...]:
        pending = self._pending
        runs: list[tuple[int, int]] = []
        start: int | None = None
        for seq in range(first, last + 1):
            if seq in pending:
                if start is not None:
                    runs.append((start, seq - 1))
                    start = None
            elif start is None:
                start = seq
        if start is not None:
            runs.append((start, last))
        return tuple(runs)

    def _missing_end(self) -> int:
        """Last seq of the first missing run."""
        if self._pending:
            nxt = min(self._pending)
            if nxt > self.next_seq:
                return nxt - 1
        return self.known_last

    def _take(self, seq: int) -> T:
        """Remove and return the held event ``seq``."""
        self._pending_bytes -= self._sizes.pop(seq)
        return self._pending.pop(seq)

    def _drain(self) -> list[T]:
        out: list[T] = []
        pending = self._pending
        seq = self.next_seq
        while seq in pending:
            out.append(self._take(seq))
            seq += 1
        self.next_seq = seq
        return out


class RetentionRing(Generic[T]):
    """The publisher's recent messages by (consecutive) seq, bounded by count and bytes."""

    __slots__ = ("_bytes", "_first", "_items", "_sizes", "max_bytes", "max_items")

    def __init__(self, max_items: int, max_bytes: int) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: deque[T] = deque()
        self._sizes: deque[int] = deque()
        self._first = 0  # seq of _items[0]
        self._bytes = 0

    def add(self, seq: int, item: T, size: int) -> None:
        """Keep ``item`` as ``seq``, the next seq; a seq out of turn starts the ring over."""
        items = self._items
        n = len(items)
        if n and seq != self._first + n:
            items.clear()
            self._sizes.clear()
            self._bytes = 0
            n = 0
        if not n:
            self._first = seq
        items.append(item)
        self._sizes.append(size)
        self._bytes += size
        if n >= self.max_items or self._bytes > self.max_bytes:
            self._evict()

    def _evict(self) -> None:
        items, sizes = self._items, self._sizes
        while len(items) > self.max_items or (self._bytes > self.max_bytes and len(items) > 1):
            items.popleft()
            self._bytes -= sizes.popleft()
            self._first += 1

    def get(self, seq: int) -> T | None:
        i = seq - self._first
        if 0 <= i < len(self._items):
            return self._items[i]
        return None

    @property
    def oldest(self) -> int | None:
        return self._first if self._items else None

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)
