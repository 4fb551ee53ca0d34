"""The node's durable log: append-only segment files, checksummed frames, group-committed fsync.

On-disk format (version 1). A log is a directory of segment files named by the first sequence
number written to them, zero-padded to 20 digits (``00000000000000000001.seg``); if that name is
held by a file that is not part of the log, or is not above the newest segment's name, the next
free number above is used instead. Recovery trusts only the seqs inside, never the names. Each
segment starts with the 8-byte header ``b"FRYSLOG1"`` followed by frames, all integers
little-endian::

    frame  = body_len:u32  crc32(body):u32  body
    body   = magic:u16(0xF5C1)  flags:u8  seq:u64  timestamp_ns:i64
             topic_len:u16  header_len:u32  payload_len:u32
             topic (UTF-8)  data
    data   = header + payload                       when flags == 0
           = lz4 block of (header + payload)        when flags & 0x01 (no size prefix; the size
                                                    is header_len + payload_len)

The magic lets recovery resynchronise after a garbage length field by searching for it (the
byte ``0xC1`` never occurs in MessagePack, so headers rarely contain it). Compression is tried
only for bodies of at least ``compress_min_bytes`` and kept only when it shrinks the data.

Recovery on open scans every file named ``<1 to 20 ASCII digits>.seg`` on its own, verifying
every frame, and orders the segments by the seqs found inside them: names are only a tie-break,
so a stray or copied file cannot reorder the log. No single damaged or foreign file makes the log
unopenable:

* Left out of the log, logged and counted in ``skipped_files``: anything that is not a regular
  file, a file that cannot be read, a file without a single intact frame (foreign, or wholly
  corrupt), a file whose seqs are all covered by segments ordered before it (a copy), and a blank
  file (empty, a header cut short, or zeroes where pages never reached the disk). Such files are
  never written, truncated or deleted; the one exception is that a blank file is reused when a
  new segment needs exactly its name, as after a crash while a segment was being created.
* A damaged header does not cost the records behind it: the frames carry their own magic and
  checksum, so they are read and the header is counted in ``corrupt_records``; the file is never
  appended to.
* A bad frame followed by valid frames is corruption: it is logged, counted in
  ``corrupt_records`` and skipped; reading resumes at the next frame that carries the magic, a
  plausible length, a later seq and a matching checksum. A bad region at the end of any segment
  but the newest is reported the same way and left on disk.
* Only the segment holding the newest record is appended to, and only if its header is intact.
  A bad region at its end, with nothing valid after it, is a torn write from a crash: it is
  truncated away (logged, ``truncated_bytes``). Otherwise new records go to a new segment.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import mmap
import os
import re
import stat
import struct
import threading
import time
import warnings
import zlib
from bisect import bisect_right
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import lz4.block

from ._errors import AlreadyClosed, ChecksumError, ConfigError, NotStarted, StorageError

__all__ = ["FsyncPolicy", "LogReader", "LogRecord", "PersistentEventQueue", "SegmentLog"]

logger = logging.getLogger(__name__)

MiB: Final = 1024 * 1024
#: The file in a log directory that holds the log's id (see ``_log_identity``).
_ID_FILE: Final = "LOG_ID"
#: How often a queue applies its retention policy, in seconds.
RETENTION_CHECK_INTERVAL: Final = 60.0


class FsyncPolicy(enum.StrEnum):
    """When an appended record is forced to stable storage."""

    #: fsync before ``store_event`` returns; concurrent callers share one fsync.
    ALWAYS = "always"
    #: fsync at most ``fsync_interval`` after the append, in a background group commit.
    INTERVAL = "interval"
    #: hand the bytes to the OS and let it decide.
    NEVER = "never"


@dataclass(frozen=True, slots=True, init=False)
class LogRecord:
    """One published event as the log stores it; header and payload are replayed verbatim."""

    seq: int
    timestamp_ns: int
    topic: str
    header: bytes
    payload: bytes

    def __new__(
        cls, seq: int, timestamp_ns: int, topic: str, header: bytes, payload: bytes
    ) -> Self:
        # One record is made per event appended and per event replayed. A frozen dataclass's
        # __init__ sets each field through object.__setattr__ and costs ~0.4 us, as much as
        # framing the record; setting them on a mutable twin with the same slots and then
        # making it a LogRecord costs half that.
        if cls is not LogRecord:
            # A subclass may add slots, which the twin lacks. (One that adds fields sets
            # them in its own __init__, so needs init=False.)
            self = object.__new__(cls)
            for name, value in zip(
                _RECORD_FIELDS, (seq, timestamp_ns, topic, header, payload), strict=True
            ):
                object.__setattr__(self, name, value)
            return self
        twin = _new_object(_MutableRecord)
        twin.seq = seq
        twin.timestamp_ns = timestamp_ns
        twin.topic = topic
        twin.header = header
        twin.payload = payload
        twin.__class__ = LogRecord
        return twin  # type: ignore[no-any-return]

    def __reduce__(self) -> tuple[type[Self], tuple[int, int, str, bytes, bytes]]:
        # Pickle and copy would otherwise call __new__ without the fields.
        return type(self), (self.seq, self.timestamp_ns, self.topic, self.header, self.payload)


_RECORD_FIELDS: Final = LogRecord.__slots__
_new_object: Final[Callable[[type], Any]] = object.__new__


class _MutableRecord:
    """Same slots as :class:`LogRecord`, not frozen: records are filled in as one of these."""

    __slots__ = _RECORD_FIELDS
    seq: int
    timestamp_ns: int
    topic: str
    header: bytes
    payload: bytes


class SegmentLog:
    """A synchronous append-only log in segment files, keyed by strictly increasing seq.

    One thread writes (``append``, ``flush``, ``sync``, ``close``); readers, ``sync_flushed`` and
    ``apply_retention`` may run in other threads at the same time.

    Every frame's checksum is verified when the log is opened, and frames this process writes
    are checksummed from memory, so reads check only the framing (magic, lengths) by default;
    ``verify_reads=True`` re-verifies each frame's CRC on every read, at about a third of the
    replay throughput, for media that may rot while the log is open.
    """

    # Slots: attribute access on the append path is a third faster than through a dict
    # (which an instance with this many attributes would get).
    __slots__ = (
        "_active",
        "_blank",
        "_broken",
        "_buf",
        "_closed",
        "_compress_at",
        "_dir_dirty",
        "_fd",
        "_flush_bytes",
        "_idx_offset",
        "_idx_records",
        "_index_every_bytes",
        "_index_every_records",
        "_last",
        "_limit",
        "_limit_records",
        "_lock",
        "_max_file_size",
        "_next_name",
        "_pending",
        "_pending_max_ts",
        "_segments",
        "_sync_lock",
        "_topics_in",
        "_topics_out",
        "_unsynced",
        "_verify_reads",
        "corrupt_records",
        "directory",
        "fsync_count",
        "skipped_files",
        "truncated_bytes",
    )

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_file_size: int = 64 * MiB,
        compression: bool = True,
        compress_min_bytes: int = 512,
        index_every_records: int = 1024,
        index_every_bytes: int = 64 * 1024,
        flush_bytes: int = 256 * 1024,
        verify_reads: bool = False,
    ) -> None:
        if max_file_size < 256:
            raise ConfigError(f"max_file_size must be at least 256 bytes, got {max_file_size}")
        for name, value in (
            ("compress_min_bytes", compress_min_bytes),
            ("index_every_records", index_every_records),
            ("index_every_bytes", index_every_bytes),
            ("flush_bytes", flush_bytes),
        ):
            if value < 1:
                raise ConfigError(f"{name} must be positive, got {value}")
        self.directory = Path(directory)
        self._max_file_size = max_file_size
        self._index_every_records = index_every_records
        self._index_every_bytes = index_every_bytes
        self._flush_bytes = flush_bytes
        self._verify_reads = verify_reads
        #: Corrupt frames found (and skipped) since open, by recovery or by readers.
        self.corrupt_records = 0
        #: Bytes of torn tail cut off the last segment when the log was opened.
        self.truncated_bytes = 0
        #: Files named like segments that recovery left out of the log (and never touches).
        self.skipped_files = 0
        #: Completed ``sync``/``sync_flushed`` calls (each is one group commit).
        self.fsync_count = 0

        # Guards the segment list, the active fd and the to-be-synced bookkeeping.
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._segments: list[_Segment] = []
        self._active: _Segment | None = None
        self._fd: int | None = None
        #: Frames appended since the last flush, and what they hold.
        self._buf = bytearray()
        self._pending = 0
        self._pending_max_ts = _MIN_TS
        self._last = 0
        #: Records (flushed ones, plus ``_pending``) and offset since the last index entry.
        self._idx_records = 0
        self._idx_offset = 0
        #: An append takes the fast path while the buffer stays within ``_limit`` bytes and
        #: holds fewer than ``_limit_records``: no rotation, flush or index entry is due.
        self._limit = -1
        self._limit_records = 0
        self._compress_at = compress_min_bytes if compression else _NEVER
        self._unsynced: list[Path] = []
        self._dir_dirty = False
        self._broken: OSError | None = None
        self._closed = False
        #: topic -> (UTF-8, its length)
        self._topics_out: dict[str, tuple[bytes, int]] = {}
        self._topics_in: dict[bytes, str] = {}
        #: Blank files recovery found (name -> identity), reusable when a new segment needs
        #: exactly that name.
        self._blank: dict[str, tuple[int, ...]] = {}
        #: Lowest number a new segment may be named; past the newest segment's name, which
        #: can exceed its first seq when a foreign file held that name.
        self._next_name = 0
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._recover()
        except OSError as exc:
            raise StorageError(f"cannot open log in {self.directory}: {exc}") from exc

    # -- public API ---------------------------------------------------------------------

    @property
    def first_seq(self) -> int | None:
        """Oldest seq still in the log (moves forward as retention removes segments)."""
        with self._lock:
            for seg in self._segments:
                if seg.first_seq is not None:
                    return seg.first_seq
        return None

    @property
    def last_seq(self) -> int | None:
        """Newest seq appended (flushed or still buffered); None for an empty log."""
        return self._last or None

    @property
    def segment_count(self) -> int:
        with self._lock:
            return len(self._segments)

    def append(self, record: LogRecord) -> None:
        """Frame ``record`` into the write buffer; it reaches the OS at the next flush."""
        # The hot path of every publish: one pack, one join and one CRC per record, and
        # two comparisons against precomputed limits. Everything that is due only now and
        # then (a new segment, an index entry, a flush) is in _append_slow, and the segment's
        # bookkeeping is brought up to date once per flush.
        seq = record.seq
        if seq <= self._last:
            raise self._refusal(seq)
        topic = record.topic
        encoded = self._topics_out.get(topic)
        if encoded is None:
            encoded = self._encode_topic(topic)
        topic_b, tlen = encoded
        header = record.header
        payload = record.payload
        ts = record.timestamp_ns
        hlen = len(header)
        plen = len(payload)
        try:
            if hlen + plen < self._compress_at:
                body = _join(
                    (_pack_prefix(_MAGIC, 0, seq, ts, tlen, hlen, plen), topic_b, header, payload)
                )
            else:
                body = _body_compressed(seq, ts, topic_b, tlen, header, payload)
            blen = len(body)
            head = _pack_frame(blen, _crc32(body))
        except struct.error as exc:
            raise StorageError(f"record {seq} cannot be framed: {exc}") from exc
        buf = self._buf
        if len(buf) + blen > self._limit or self._pending >= self._limit_records:
            self._append_slow(seq, ts, head, body)  # also refuses appends to a closed log
            return
        buf += head
        buf += body
        self._pending += 1
        if ts > self._pending_max_ts:
            self._pending_max_ts = ts
        self._last = seq

    def flush(self) -> None:
        """Write the buffered frames to the OS (one ``write`` for the whole buffer)."""
        if self._broken is not None:
            raise StorageError(f"the log is unusable after a failed write: {self._broken}")
        buf = self._buf
        seg = self._active
        if not buf or seg is None or self._fd is None:
            return
        total = len(buf)
        written = 0
        failure: OSError | None = None
        with memoryview(buf) as view:
            try:
                while written < total:
                    written += os.write(self._fd, view[written:])
            except OSError as exc:
                failure = exc
        if failure is not None:
            # Cut a partial frame off again so readers and later appends never see it; the
            # buffer is kept, so a later flush retries the whole thing.
            if written:
                try:
                    os.ftruncate(self._fd, seg.size)
                except OSError as exc:
                    self._broken = exc
            raise StorageError(f"cannot write to {seg.path}: {failure}") from failure
        buf.clear()
        # Readers only look below seg.size, which therefore only ever covers whole frames.
        seg.size += total
        seg.count += self._pending
        seg.last_seq = self._last
        if self._pending_max_ts > seg.max_ts:
            seg.max_ts = self._pending_max_ts
        self._idx_records += self._pending
        self._pending = 0
        self._pending_max_ts = _MIN_TS
        self._set_limits()

    def sync(self) -> None:
        """Flush, then fsync everything written so far."""
        self.flush()
        self.sync_flushed()

    def sync_flushed(self) -> None:
        """fsync what earlier ``flush`` calls wrote; safe to call from another thread."""
        with self._sync_lock:
            with self._lock:
                fd = os.dup(self._fd) if self._fd is not None else None
                paths, self._unsynced = self._unsynced, []
                dir_dirty, self._dir_dirty = self._dir_dirty, False
            try:
                # Segments rotated out since the last sync were closed by the writer; fsync
                # through a fresh descriptor flushes the same inode.
                for path in paths:
                    _fsync_path(path)
                if fd is not None:
                    os.fsync(fd)
                if dir_dirty:
                    _fsync_path(self.directory)
            except OSError as exc:
                with self._lock:
                    self._unsynced[:0] = paths
                    self._dir_dirty = self._dir_dirty or dir_dirty
                raise StorageError(f"cannot fsync the log in {self.directory}: {exc}") from exc
            finally:
                if fd is not None:
                    os.close(fd)
            self.fsync_count += 1

    def read_from(self, after_seq: int, *, topic: str | None = None) -> Iterator[LogRecord]:
        """Yield flushed records with seq > ``after_seq`` in seq order, optionally one topic only.

        Streams in chunks of about 1 MiB; records flushed while iterating are included.
        """
        reader = self.reader(after_seq, topic=topic)
        while (data := reader._read_chunk()) is not None:
            yield from reader._records(data)

    def reader(self, after_seq: int = 0, *, topic: str | None = None) -> LogReader:
        """A resumable cursor for reading in batches (each batch opens and closes its files)."""
        return LogReader(self, after_seq, topic)

    def apply_retention(
        self, now_ns: int, *, max_age_ns: int | None = None, max_bytes: int | None = None
    ) -> int:
        """Delete whole old segments, never the active one; return how many records went.

        A segment expires by age when its newest record is older than ``now_ns - max_age_ns``;
        by size, oldest first while the log is larger than ``max_bytes``. Only a prefix of the
        log is removed, so ``first_seq`` moves forward and the removed range is contiguous.
        """
        removed: list[_Segment] = []
        with self._lock:
            segs = self._segments
            total = sum(seg.size for seg in segs) + len(self._buf)
            while len(segs) > 1:
                seg = segs[0]
                expired = max_age_ns is not None and seg.max_ts <= now_ns - max_age_ns
                if not expired and (max_bytes is None or total <= max_bytes):
                    break
                segs.pop(0)
                seg.removed = True
                total -= seg.size
                removed.append(seg)
            if removed:
                gone = {seg.path for seg in removed}
                self._unsynced = [path for path in self._unsynced if path not in gone]
                self._dir_dirty = True
        failure: OSError | None = None
        for seg in removed:
            try:
                seg.path.unlink(missing_ok=True)
            except OSError as exc:
                failure = exc
        if failure is not None:
            raise StorageError(f"cannot delete old segments: {failure}") from failure
        if removed:
            logger.info(
                "log retention removed %d segment(s), seqs %s..%s",
                len(removed),
                removed[0].first_seq,
                removed[-1].last_seq,
            )
        return sum(seg.count for seg in removed)

    def close(self) -> None:
        """Flush and close; idempotent. Does not fsync: call ``sync`` first for that."""
        if self._closed:
            return
        try:
            if self._broken is None:
                self.flush()
        finally:
            self._closed = True
            self._limit = -1  # sends appends to _append_slow, which refuses them
            with self._lock:
                fd, self._fd = self._fd, None
            if fd is not None:
                os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- writer internals ---------------------------------------------------------------

    def _refusal(self, seq: int) -> StorageError:
        if self._closed:
            return StorageError("the log is closed")
        return StorageError(f"seq {seq} does not follow the last seq {self._last}")

    def _append_slow(self, seq: int, ts: int, head: bytes, body: bytes) -> None:
        """The rest of ``append`` when a segment, an index entry or a flush may be due."""
        if self._closed:
            raise self._refusal(seq)
        seg = self._active
        buf = self._buf
        if seg is None or (
            (seg.count or self._pending)
            and seg.size + len(buf) + 8 + len(body) > self._max_file_size
        ):
            seg = self._rotate(seq)
        offset = seg.size + len(buf)
        if (
            not (seg.count or self._pending)
            or self._idx_records + self._pending >= self._index_every_records
            or offset - self._idx_offset >= self._index_every_bytes
        ):
            seg.index.append((seq, offset))
            self._idx_records = -self._pending  # so that this record counts as the first
            self._idx_offset = offset
        buf += head
        buf += body
        self._pending += 1
        if ts > self._pending_max_ts:
            self._pending_max_ts = ts
        self._last = seq
        if len(buf) >= self._flush_bytes:
            self.flush()
        else:
            self._set_limits()

    def _set_limits(self) -> None:
        """Recompute what ``append`` compares with, after anything that moves them."""
        seg = self._active
        if seg is None or self._closed:
            self._limit = -1  # the first append starts a segment, or is refused
            return
        base = seg.size
        # Compared with the buffer's size plus the next frame's body (8 bytes less than the
        # frame), so 8 is taken off each limit.
        self._limit = (
            min(
                # A frame that would not fit in this segment.
                self._max_file_size - base,
                # An index entry due: that is when a frame starts at or past this offset, so the
                # check on its end leaves room for the smallest frame.
                self._idx_offset + self._index_every_bytes - base + _HEAD_SIZE - 1,
                # A full buffer, to be flushed.
                self._flush_bytes - 1,
            )
            - 8
        )
        self._limit_records = self._index_every_records - self._idx_records

    def _encode_topic(self, topic: str) -> tuple[bytes, int]:
        try:
            topic_b = topic.encode()
        except UnicodeEncodeError as exc:
            raise StorageError(f"topic {topic!r} is not encodable as UTF-8") from exc
        if len(topic_b) > 0xFFFF:
            raise StorageError(f"topic of {len(topic_b)} bytes is longer than 65535 bytes")
        if len(self._topics_out) >= _TOPIC_CACHE_SIZE:
            self._topics_out.clear()
        encoded = self._topics_out[topic] = (topic_b, len(topic_b))
        return encoded

    def _rotate(self, first_seq: int) -> _Segment:
        """Start a new segment for the record about to be appended."""
        self.flush()
        fd, path = self._create_segment(first_seq)
        seg = _Segment(path)
        seg.size = _SEGMENT_HEADER_SIZE
        seg.first_seq = first_seq
        with self._lock:
            old, self._fd = self._fd, fd
            if old is not None and self._active is not None:
                os.close(old)
                self._unsynced.append(self._active.path)
            self._segments.append(seg)
            self._active = seg
            self._dir_dirty = True
        self._idx_records = 0
        self._idx_offset = _SEGMENT_HEADER_SIZE
        self._set_limits()
        return seg

    def _create_segment(self, first_seq: int) -> tuple[int, Path]:
        """Create a segment file named after ``first_seq``, or the next number nobody holds.

        A name can be taken by a file that is not part of the log (a directory, a foreign or
        damaged file); writing into it could destroy someone's data, so it is passed over, and
        so are the names below the one taken last. Recovery orders segments by the seqs
        inside, so a name only has to be unused.
        """
        start = max(first_seq, self._next_name)
        for number in range(start, start + _NAME_ATTEMPTS):
            path = self.directory / _segment_name(number)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            except FileExistsError:
                reused = self._reuse_blank(path)
                if reused is None:
                    logger.warning(
                        "log segment name %s is taken by a file outside the log; using the next",
                        path.name,
                    )
                    continue
                fd = reused
            except OSError as exc:
                raise StorageError(f"cannot create segment {path}: {exc}") from exc
            try:
                os.write(fd, _SEGMENT_HEADER)
            except OSError as exc:
                os.close(fd)
                # An empty file left here would take the name from the retry.
                with contextlib.suppress(OSError):
                    path.unlink()
                raise StorageError(f"cannot create segment {path}: {exc}") from exc
            self._next_name = number + 1
            return fd, path
        raise StorageError(
            f"cannot create a segment for seq {first_seq}: the next {_NAME_ATTEMPTS} segment "
            f"names in {self.directory} are all taken"
        )

    def _reuse_blank(self, path: Path) -> int | None:
        """Open ``path`` emptied for writing if recovery found it blank and it is unchanged."""
        key = self._blank.get(path.name)
        if key is None:
            return None
        try:
            # O_NONBLOCK: should the file have been replaced by a FIFO, fail instead of hanging.
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            if _file_key(os.fstat(fd)) != key:
                os.close(fd)
                return None
            os.ftruncate(fd, 0)
        except OSError:
            os.close(fd)
            return None
        del self._blank[path.name]
        logger.info("log segment %s held no data; reusing it", path.name)
        return fd

    # -- recovery -----------------------------------------------------------------------

    def _recover(self) -> None:
        """Scan every file named like a segment, order them by content, pick the active one."""
        candidates: list[_Scan] = []
        for path in sorted(self.directory.iterdir()):
            if _SEGMENT_NAME.fullmatch(path.name) is None:
                continue
            scan = _Scan(path)
            try:
                self._scan(scan)
            except (OSError, ValueError) as exc:
                # ValueError: mmap refuses some special files. An unreadable file may hold the
                # newest records, so this is an error, but the rest of the log stays readable.
                self._skip(scan, f"it cannot be read ({exc})", level=logging.ERROR)
                continue
            if scan.blank:
                self._blank[path.name] = scan.key
                self._skip(scan, "it holds no data")
            elif scan.seg.count == 0:
                self._skip(scan, scan.reason or "it holds no intact record")
            else:
                candidates.append(scan)
        # Order by the seqs inside: names can lie (a stray or copied file, an older version's
        # naming). For equal ranges keep the file whose name matches its first seq.
        candidates.sort(
            key=lambda s: (
                s.seg.first_seq,
                -(s.seg.last_seq or 0),
                s.number != s.seg.first_seq,
                s.seg.path.name,
            )
        )
        chosen: list[_Scan] = []
        last = 0
        for scan in candidates:
            # Both are set: every candidate holds at least one record.
            first, newest = scan.seg.first_seq or 0, scan.seg.last_seq or 0
            if newest <= last:
                self._skip(scan, f"its seqs {first}..{newest} are all in other segments")
                continue
            if first <= last:
                logger.warning(
                    "log segment %s (seqs %d..%d) overlaps an earlier one up to seq %d; "
                    "those seqs are read from the earlier segment",
                    scan.path,
                    first,
                    newest,
                    last,
                )
            chosen.append(scan)
            last = newest
        if chosen:
            self._next_name = chosen[-1].number + 1
            self._open_active(chosen[-1])
        for scan in chosen:
            if not scan.header_ok:
                self._report_corrupt(scan.seg, 0, _SEGMENT_HEADER_SIZE, "damaged segment header")
            for start, end in sorted(scan.seg.bad.items()):
                self._report_corrupt(scan.seg, start, end)
        self._segments = [scan.seg for scan in chosen]
        self._last = last

    def _scan(self, scan: _Scan) -> None:
        """Classify ``scan.path`` and verify its frames; reads only, never writes."""
        if not stat.S_ISREG(os.stat(scan.path).st_mode):
            scan.reason = "it is not a regular file"
            return
        # O_NONBLOCK: a FIFO put in place after the stat must not hang the open.
        fd = os.open(scan.path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                scan.reason = "it is not a regular file"
                return
            scan.key = _file_key(st)
            size = st.st_size
            if size == 0:
                scan.blank = True
                return
            with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mm:
                scan.header_ok = mm[:_SEGMENT_HEADER_SIZE] == _SEGMENT_HEADER
                if _is_blank(mm, size):
                    scan.blank = True
                    return
                self._scan_frames(scan, mm, size)
        finally:
            os.close(fd)
        scan.seg.size = size

    def _scan_frames(self, scan: _Scan, mm: mmap.mmap, size: int) -> None:
        """Index the valid frames in ``mm`` and note the bad regions between them."""
        seg = scan.seg
        # The frames are scanned even behind a damaged header: each carries its own magic and
        # checksum, so a header bit flip costs no record.
        pos = _SEGMENT_HEADER_SIZE
        prev = 0
        every_records = self._index_every_records
        every_bytes = self._index_every_bytes
        since_index = 0
        index_offset = pos
        index = seg.index
        unpack = _HEAD.unpack_from
        crc32 = zlib.crc32
        head_size = _HEAD_SIZE
        prefix_size = _HEAD_SIZE - 8
        count = 0
        max_ts = seg.max_ts
        while pos < size:
            # The checks of _valid_frame_end, inline: this loop verifies every frame of the
            # log each time it is opened.
            if pos + head_size <= size:
                blen, crc, magic, flags, seq, ts, tlen, hlen, plen = unpack(mm, pos)
                fend = pos + 8 + blen
                data_len = blen - prefix_size - tlen
                if (
                    magic == _MAGIC
                    and fend <= size
                    and seq > prev
                    and not flags & ~_FLAG_LZ4
                    and data_len >= 0
                    and (flags or data_len == hlen + plen)
                    and crc32(mm[pos + 8 : fend]) == crc
                ):
                    if (
                        not count
                        or since_index >= every_records
                        or pos - index_offset >= every_bytes
                    ):
                        index.append((seq, pos))
                        since_index = 0
                        index_offset = pos
                    since_index += 1
                    if not count:
                        seg.first_seq = seq
                    count += 1
                    if ts > max_ts:
                        max_ts = ts
                    prev = seq
                    pos = fend
                    continue
            nxt = _resync(mm, pos + 1, size, prev)
            bad_end = size if nxt < 0 else nxt
            seg.bad[pos] = bad_end
            if nxt < 0:
                scan.tail = pos
            pos = bad_end
        if count:
            seg.last_seq = prev
        seg.count = count
        seg.max_ts = max_ts
        scan.since_index = since_index
        scan.index_offset = index_offset

    def _open_active(self, scan: _Scan) -> None:
        """Append to the segment holding the newest record, cutting a torn tail off it first.

        Only that segment may take new records: appending to an older one would interleave
        seqs across files. A damaged header leaves it read-only and new records go to a new
        segment, since whatever damaged the header may not be done with the file.
        """
        seg = scan.seg
        if not scan.header_ok:
            return
        try:
            fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            logger.warning("cannot append to log segment %s (%s); using a new one", seg.path, exc)
            return
        tail = scan.tail
        if tail is not None:
            # Nothing valid follows ``tail``: a write torn by a crash, not corruption.
            try:
                os.ftruncate(fd, tail)
                os.fsync(fd)
            except OSError as exc:
                os.close(fd)
                logger.warning(
                    "cannot truncate the torn tail of log segment %s (%s); using a new one",
                    seg.path,
                    exc,
                )
                return
            logger.warning(
                "log segment %s: truncating a torn tail of %d bytes at offset %d",
                seg.path,
                seg.size - tail,
                tail,
            )
            self.truncated_bytes += seg.size - tail
            del seg.bad[tail]
            seg.size = tail
        self._fd = fd
        self._active = seg
        self._idx_records = scan.since_index
        self._idx_offset = scan.index_offset
        self._set_limits()

    def _skip(self, scan: _Scan, reason: str, *, level: int = logging.WARNING) -> None:
        self.skipped_files += 1
        logger.log(level, "log segment %s is left out of the log: %s", scan.path, reason)

    def _report_corrupt(
        self, seg: _Segment, start: int, end: int, what: str = "checksum or framing"
    ) -> None:
        with self._lock:
            self.corrupt_records += 1
        logger.warning(
            "log segment %s: skipping %d corrupt bytes at offset %d (%s)",
            seg.path,
            end - start,
            start,
            what,
        )

    def _report_missing(self, seg: _Segment) -> None:
        """A segment file vanished while the log was open (not by retention): say so once."""
        with self._lock:
            if seg.missing:
                return
            seg.missing = True
            self.corrupt_records += 1
        logger.error(
            "log segment %s disappeared; its records %s..%s are lost",
            seg.path,
            seg.first_seq,
            seg.last_seq,
        )

    # -- reader internals ---------------------------------------------------------------

    def _locate(self, after_seq: int) -> tuple[_Segment, int] | None:
        """The segment and a frame offset at or before the first record with seq > after_seq."""
        with self._lock:
            segs = list(self._segments)
        if not segs:
            return None
        target = after_seq + 1
        chosen = segs[0]
        for seg in reversed(segs):
            if seg.first_seq is not None and seg.first_seq <= target:
                chosen = seg
                break
        index = chosen.index
        i = bisect_right(index, target, key=_first) - 1
        return chosen, (index[i][1] if i >= 0 else _SEGMENT_HEADER_SIZE)

    def _segment_after(self, seg: _Segment) -> _Segment | None:
        with self._lock:
            i = self._segments.index(seg)
            return self._segments[i + 1] if i + 1 < len(self._segments) else None

    def _decode_topic(self, raw: bytes) -> str:
        topic = raw.decode()
        if len(self._topics_in) >= _TOPIC_CACHE_SIZE:
            self._topics_in.clear()
        self._topics_in[raw] = topic
        return topic


class LogReader:
    """A cursor over a :class:`SegmentLog`; ``read_batch`` returns the next records in order.

    Holds no open files between batches, so it can be abandoned at any point, and it survives
    retention removing the segment it was in (it continues at the oldest remaining record).
    """

    def __init__(self, log: SegmentLog, after_seq: int, topic: str | None) -> None:
        self._log = log
        self._after = after_seq
        self._topic = None if topic is None else topic.encode()
        self._seg: _Segment | None = None
        self._pos = 0
        #: End of the range the last chunk was read from (the segment's end, or a known bad
        #: region's start).
        self._limit = 0
        #: Set when the last chunk ended in a frame that did not parse; handled by the next read.
        self._bad_at: tuple[_Segment, int, int] | None = None
        #: True once a batch reached the end of what was flushed.
        self.exhausted = False

    @property
    def position(self) -> int:
        """The last seq returned or passed over."""
        return self._after

    def read_batch(self, max_bytes: int = 8 * MiB) -> list[LogRecord]:
        """Read roughly ``max_bytes`` of log (may be empty if the topic filter matched nothing)."""
        out: list[LogRecord] = []
        budget = max_bytes
        while budget > 0 and not out:
            data = self._read_chunk()
            if data is None:
                break
            out.extend(self._records(data))
            budget -= max(len(data), 1)
        if self._bad_at is not None:
            self._skip_corrupt(*self._bad_at)
        return out

    def _read_chunk(self) -> bytes | None:
        """Up to ~1 MiB of frames from the current position, or None once exhausted.

        Only I/O and bookkeeping, no parsing: ``PersistentEventQueue`` runs this in a worker
        thread and parses the chunk with ``_records`` as the records are consumed.
        """
        log = self._log
        if self._bad_at is not None:
            self._skip_corrupt(*self._bad_at)
        while True:
            seg = self._seg
            if seg is None or seg.removed:
                located = log._locate(self._after)
                if located is None:
                    self.exhausted = True
                    return None
                seg, self._pos = located
                self._seg = seg
            try:
                nxt = log._segment_after(seg)
            except ValueError:  # removed by retention meanwhile
                self._seg = None
                continue
            end = seg.size  # read after nxt: once a successor exists this size is final
            pos = self._pos
            if pos >= end:
                if nxt is None:
                    self.exhausted = True
                    return None
                self._seg, self._pos = nxt, _SEGMENT_HEADER_SIZE
                continue
            bad_end = seg.bad.get(pos)
            if bad_end is not None:
                self._pos = bad_end
                continue
            # Stop short of known corrupt regions so that they are skipped, not re-reported.
            limit = min((start for start in seg.bad if pos < start < end), default=end)
            try:
                data = _pread(seg.path, pos, min(_READ_CHUNK, limit - pos))
                need = 8 + _FRAME.unpack_from(data, 0)[0] if len(data) >= 8 else 0
                if len(data) < need <= limit - pos:
                    # A frame bigger than a chunk: read exactly that frame.
                    data = _pread(seg.path, pos, need)
            except FileNotFoundError:
                if seg.removed:  # by retention: continue at the oldest remaining record
                    self._seg = None
                else:
                    # Deleted behind the log's back. Locating again would land in it again,
                    # forever, so pass over what it held.
                    log._report_missing(seg)
                    self._pos = end
                continue
            except OSError as exc:
                raise StorageError(f"cannot read {seg.path}: {exc}") from exc
            self._limit = limit
            return data

    def _records(self, data: bytes) -> Iterator[LogRecord]:
        """Yield the records framed in ``data`` (the last chunk read), then move past them.

        A chunk that ends in a frame that does not parse, or that holds no whole frame, is
        corrupt there; the next read resynchronises past it.
        """
        # The hot loop of replay: locals only, one unpack per frame, the topic compared with
        # the previous one (most runs repeat a topic), and each record filled in as a
        # _MutableRecord (see LogRecord.__new__). Yielding each record as it is parsed, rather
        # than a list of them, lets a consumer's records die young instead of reaching older
        # GC generations.
        seg = self._seg
        n = len(data)
        pos = 0
        after = self._after
        want = self._topic
        verify = self._log._verify_reads
        unpack = _HEAD_NO_CRC.unpack_from
        crc32 = zlib.crc32
        topics = self._log._topics_in
        decode_topic = self._log._decode_topic
        new = _new_object
        mutable = _MutableRecord
        record_type = LogRecord
        head_size = _HEAD_SIZE
        magic_ok = _MAGIC
        # With a topic filter, the previous topic is always the one wanted.
        last_raw = b"" if want is None else want
        last_len = len(last_raw)
        last_topic = last_raw.decode()
        bad = False
        while pos + head_size <= n:
            blen, magic, flags, seq, ts, tlen, hlen, plen = unpack(data, pos)
            fend = pos + 8 + blen
            if fend > n:
                break
            if magic != magic_ok:
                bad = True
                break
            if seq <= after:
                pos = fend
                continue
            t0 = pos + head_size
            t1 = t0 + tlen
            # A slice and == cost less than bytes.startswith with an offset.
            if tlen != last_len or data[t0:t1] != last_raw:
                if want is not None:  # another topic than the one wanted
                    after = seq
                    pos = fend
                    continue
                last_raw = data[t0:t1]
                last_len = tlen
                try:
                    last_topic = topics.get(last_raw) or decode_topic(last_raw)
                except UnicodeDecodeError:
                    bad = True
                    break
            if verify and crc32(data[pos + 8 : fend]) != _FRAME.unpack_from(data, pos)[1]:
                bad = True
                break
            try:
                if flags == 0:
                    h1 = t1 + hlen
                    if h1 + plen != fend:
                        raise ChecksumError("frame lengths disagree")
                    header = data[t1:h1]
                    payload = data[h1:fend]
                else:
                    header, payload = _unpack_compressed(data[t1:fend], flags, hlen, plen)
            except ChecksumError:
                bad = True
                break
            record = new(mutable)
            record.seq = seq
            record.timestamp_ns = ts
            record.topic = last_topic
            record.header = header
            record.payload = payload
            record.__class__ = record_type
            after = seq
            pos = fend
            yield record
        self._after = after
        self._pos += pos
        if (bad or pos == 0) and seg is not None and self._pos not in seg.bad:
            self._bad_at = (seg, self._pos, self._limit)

    def _skip_corrupt(self, seg: _Segment, pos: int, end: int) -> None:
        """Corruption that recovery did not see (it appeared later): resync past it, once."""
        self._bad_at = None
        try:
            data = _pread(seg.path, pos, end - pos)
        except FileNotFoundError:
            return  # removed meanwhile; the next read finds out how
        except OSError as exc:
            raise StorageError(f"cannot read {seg.path}: {exc}") from exc
        nxt = _resync(data, 1, len(data), self._after)
        bad_end = end if nxt < 0 else pos + nxt
        seg.bad[pos] = bad_end
        self._log._report_corrupt(seg, pos, bad_end)
        self._pos = bad_end


class PersistentEventQueue:
    """The node's durable log for asyncio: group-committed appends, streaming replay, retention.

    ``store_event`` returns once the record is durable under the fsync policy; ``append_nowait``
    only buffers it and leaves durability to the background committer. File I/O that can wait
    on the disk (opening, fsync, replay, retention) runs in worker threads; appends run on the
    event loop and write to the OS page cache in ~256 KiB chunks.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_file_size: int = 64 * MiB,
        fsync: FsyncPolicy | str = FsyncPolicy.INTERVAL,
        fsync_interval: float = 0.05,
        retention_period: float | None = None,
        retention_bytes: int | None = None,
        compression: bool = True,
        verify_reads: bool = False,
        retention_check_interval: float = RETENTION_CHECK_INTERVAL,
    ) -> None:
        try:
            self._policy = FsyncPolicy(fsync)
        except ValueError as exc:
            choices = ", ".join(p.value for p in FsyncPolicy)
            raise ConfigError(f"fsync must be one of {choices}, got {fsync!r}") from exc
        if max_file_size < 256:
            raise ConfigError(f"max_file_size must be at least 256 bytes, got {max_file_size}")
        if not fsync_interval > 0:
            raise ConfigError(f"fsync_interval must be positive, got {fsync_interval}")
        if retention_period is not None and not retention_period > 0:
            raise ConfigError(f"retention_period must be positive, got {retention_period}")
        if retention_bytes is not None and retention_bytes <= 0:
            raise ConfigError(f"retention_bytes must be positive, got {retention_bytes}")
        if not retention_check_interval > 0:
            raise ConfigError(
                f"retention_check_interval must be positive, got {retention_check_interval}"
            )
        self.directory = Path(directory)
        #: The id of this log's sequence space (known once open; see ``_log_identity``).
        self.log_id = 0
        self._max_file_size = max_file_size
        self._fsync_interval = fsync_interval
        self._retention_period = retention_period
        self._retention_bytes = retention_bytes
        self._compression = compression
        self._verify_reads = verify_reads
        self._retention_check_interval = retention_check_interval
        self._log: SegmentLog | None = None
        #: The log while the queue is open for appends (the fast path of ``append_nowait``).
        self._appendable: SegmentLog | None = None
        self._state = _NEW
        self._dirty = False
        self._commit_each = self._policy is FsyncPolicy.ALWAYS
        self._waiters: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._shutdown_task: asyncio.Task[None] | None = None

    @property
    def fsync_policy(self) -> FsyncPolicy:
        return self._policy

    @property
    def fsync_count(self) -> int:
        """Group commits (fsync rounds) completed since open."""
        return 0 if self._log is None else self._log.fsync_count

    @property
    def corrupt_records(self) -> int:
        return 0 if self._log is None else self._log.corrupt_records

    @property
    def skipped_files(self) -> int:
        """Files named like segments that recovery left out of the log."""
        return 0 if self._log is None else self._log.skipped_files

    @property
    def first_seq(self) -> int | None:
        return None if self._log is None else self._log.first_seq

    @property
    def last_seq(self) -> int | None:
        return None if self._log is None else self._log.last_seq

    async def open(self) -> None:
        """Open (recovering after a crash) and start the committer; idempotent."""
        if self._state == _OPEN:
            return
        if self._state != _NEW:
            raise AlreadyClosed("the event queue is closed")
        self._log = await asyncio.to_thread(
            SegmentLog,
            self.directory,
            max_file_size=self._max_file_size,
            compression=self._compression,
            verify_reads=self._verify_reads,
        )
        self.log_id = await asyncio.to_thread(_log_identity, self.directory)
        self._state = _OPEN
        self._appendable = self._log
        self._tasks.append(asyncio.create_task(self._run_committer(), name="frys-log-commit"))
        if self._retention_period is not None or self._retention_bytes is not None:
            self._tasks.append(
                asyncio.create_task(self._run_retention(), name="frys-log-retention")
            )

    async def aclose(self) -> None:
        """Commit what is buffered (fsync unless the policy is NEVER) and close; idempotent."""
        if self._state == _NEW:
            self._state = _CLOSED
            return
        if self._shutdown_task is None:
            self._state = _CLOSING
            self._appendable = None
            self._shutdown_task = asyncio.create_task(self._shutdown())
        # Shielded so that a cancelled caller cannot leave the log half closed.
        await asyncio.shield(self._shutdown_task)

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __del__(self, _warn: Callable[..., None] = warnings.warn) -> None:
        if getattr(self, "_state", None) == _OPEN:
            _warn(f"unclosed {self!r}", ResourceWarning, stacklevel=1, source=self)

    def __repr__(self) -> str:
        return f"<PersistentEventQueue {str(self.directory)!r} fsync={self._policy.value}>"

    async def store_event(self, record: LogRecord) -> None:
        """Append ``record`` and return once it is durable under the fsync policy."""
        log = self._writable()
        log.append(record)
        if self._policy is FsyncPolicy.NEVER:
            log.flush()
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._dirty = True
        if self._policy is FsyncPolicy.ALWAYS:
            self._wake.set()
        await waiter

    def append_nowait(self, record: LogRecord) -> None:
        """Append ``record`` without waiting; the background committer makes it durable."""
        log = self._appendable
        if log is None:
            log = self._writable()  # raises
        log.append(record)
        self._dirty = True
        if self._commit_each:
            self._wake.set()

    async def wait_durable(self) -> None:
        """Return once every record appended so far is durable under the fsync policy."""
        log = self._writable()
        if self._policy is FsyncPolicy.NEVER:
            log.flush()
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._dirty = True
        if self._policy is FsyncPolicy.ALWAYS:
            self._wake.set()
        await waiter

    def flush(self) -> None:
        """Hand buffered records to the OS now: they survive a killed process (not a power cut)."""
        self._writable().flush()

    def read_range(self, first: int, last: int) -> list[LogRecord]:
        """Stored records with ``first <= seq <= last``; synchronous, so keep ranges small."""
        log = self._readable()
        log.flush()
        out: list[LogRecord] = []
        for record in log.read_from(first - 1):
            if record.seq > last:
                break
            out.append(record)
        return out

    async def recover_events(self, topic: str | None = None, after_seq: int = 0) -> list[LogRecord]:
        """All stored records with seq > ``after_seq`` (of ``topic`` only, if given)."""
        log = self._readable()
        log.flush()
        return await asyncio.to_thread(lambda: list(log.read_from(after_seq, topic=topic)))

    async def iter_events(
        self, after_seq: int = 0, topic: str | None = None
    ) -> AsyncIterator[LogRecord]:
        """Stream stored records with seq > ``after_seq``, reading ~1 MiB per worker-thread hop."""
        log = self._readable()
        log.flush()
        reader = log.reader(after_seq, topic=topic)
        # Only the reading happens in the worker thread: the records are parsed here as they
        # are consumed, so that each one lives only as long as the caller keeps it (~4,000
        # records parsed ahead per hop would be promoted to older GC generations, and the
        # full collections that follow cost a fifth of the replay).
        while (data := await asyncio.to_thread(reader._read_chunk)) is not None:
            for record in reader._records(data):
                yield record

    async def apply_retention(self) -> int:
        """Apply the retention policy now; return how many records were removed."""
        log = self._readable()
        if self._retention_period is None and self._retention_bytes is None:
            return 0
        max_age_ns = None if self._retention_period is None else int(self._retention_period * 1e9)
        return await asyncio.to_thread(
            log.apply_retention,
            time.time_ns(),
            max_age_ns=max_age_ns,
            max_bytes=self._retention_bytes,
        )

    # -- internals ----------------------------------------------------------------------

    def _writable(self) -> SegmentLog:
        if self._state == _OPEN and self._log is not None:
            return self._log
        if self._state == _NEW:
            raise NotStarted("the event queue is not open")
        raise AlreadyClosed("the event queue is closed")

    def _readable(self) -> SegmentLog:
        if self._state == _CLOSING and self._log is not None:
            return self._log
        return self._writable()

    async def _run_committer(self) -> None:
        while self._state == _OPEN:
            if self._policy is FsyncPolicy.ALWAYS:
                await self._wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._fsync_interval):
                        await self._wake.wait()
            self._wake.clear()
            if self._state != _OPEN:
                return
            await self._commit()

    async def _commit(self) -> None:
        """One group commit: flush the buffer, fsync it in a thread, release the waiters."""
        log = self._log
        waiters, self._waiters = self._waiters, []
        if log is None or (not self._dirty and not waiters):
            return
        self._dirty = False
        try:
            log.flush()
            if self._policy is not FsyncPolicy.NEVER:
                await asyncio.to_thread(log.sync_flushed)
        except Exception as exc:
            self._dirty = True
            logger.error("log commit failed: %s", exc)
            for waiter in waiters:
                if not waiter.done():
                    error = StorageError(f"the record could not be made durable: {exc}")
                    error.__cause__ = exc
                    waiter.set_exception(error)
        except BaseException:
            # Cancelled mid-fsync: the final commit in aclose covers these waiters.
            self._waiters[:0] = waiters
            self._dirty = True
            raise
        else:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def _run_retention(self) -> None:
        while self._state == _OPEN:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._retention_check_interval):
                    await self._stop.wait()
            if self._state != _OPEN:
                return
            try:
                await self.apply_retention()
            except StorageError as exc:
                logger.error("log retention failed: %s", exc)

    async def _shutdown(self) -> None:
        self._wake.set()
        self._stop.set()
        try:
            for task in self._tasks:
                await task
        finally:
            self._tasks.clear()
            log = self._log
            try:
                await self._commit()
            finally:
                for waiter in self._waiters:
                    if not waiter.done():
                        waiter.set_exception(AlreadyClosed("the event queue was closed"))
                self._waiters.clear()
                self._state = _CLOSED
                if log is not None:
                    log.close()


# -- private helpers --------------------------------------------------------------------

_NEW, _OPEN, _CLOSING, _CLOSED = "new", "open", "closing", "closed"

_SUFFIX: Final = ".seg"
# ASCII digits only: str.isdigit() also accepts characters such as "²" that int() rejects.
_SEGMENT_NAME: Final = re.compile(r"[0-9]{1,20}\.seg")
#: Names tried past a taken one before creating a segment gives up.
_NAME_ATTEMPTS: Final = 1000
_SEGMENT_HEADER: Final = b"FRYSLOG1"
_SEGMENT_HEADER_SIZE: Final = len(_SEGMENT_HEADER)
_MAGIC: Final = 0xF5C1
_MAGIC_BYTES: Final = struct.pack("<H", _MAGIC)
_FLAG_LZ4: Final = 0x01
_FRAME: Final = struct.Struct("<II")
_PREFIX: Final = struct.Struct("<HBQqHII")
_HEAD: Final = struct.Struct("<IIHBQqHII")
_HEAD_SIZE: Final = _HEAD.size
#: The same, without the CRC (which replay reads only with verify_reads).
_HEAD_NO_CRC: Final = struct.Struct("<I4xHBQqHII")
_READ_CHUNK: Final = 1 * MiB
_MIN_TS: Final = -(2**63)
#: A body size no record reaches: compression off.
_NEVER: Final = 1 << 64
_pack_prefix: Final = _PREFIX.pack
_pack_frame: Final = _FRAME.pack
_crc32: Final = zlib.crc32
_join: Final = b"".join
_TOPIC_CACHE_SIZE: Final = 4096

_first = itemgetter(0)


class _Segment:
    """Bookkeeping for one segment file; ``size`` only ever covers whole, written frames."""

    __slots__ = (
        "bad",
        "count",
        "first_seq",
        "index",
        "last_seq",
        "max_ts",
        "missing",
        "path",
        "removed",
        "size",
    )

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self.count = 0
        self.first_seq: int | None = None
        self.last_seq: int | None = None
        self.max_ts = _MIN_TS
        #: Sparse (seq, offset) pairs in seq order.
        self.index: list[tuple[int, int]] = []
        #: Corrupt regions, start offset -> end offset.
        self.bad: dict[int, int] = {}
        self.removed = False
        #: The file vanished while the log was open (reported once).
        self.missing = False


class _Scan:
    """What recovery learnt about one file named like a segment."""

    __slots__ = (
        "blank",
        "header_ok",
        "index_offset",
        "key",
        "number",
        "path",
        "reason",
        "seg",
        "since_index",
        "tail",
    )

    def __init__(self, path: Path) -> None:
        self.path = path
        #: The number in the name; only a tie-break, the order comes from the seqs inside.
        self.number = int(path.name.removesuffix(_SUFFIX))
        self.seg = _Segment(path)
        self.header_ok = False
        #: No byte of data (see ``_is_blank``).
        self.blank = False
        self.key: tuple[int, ...] = ()
        #: Why the file holds no records, when that is not obvious from the rest.
        self.reason = ""
        #: Start of a bad region that runs to the end of the file, if any.
        self.tail: int | None = None
        self.since_index = 0
        self.index_offset = _SEGMENT_HEADER_SIZE


def _log_identity(directory: Path) -> int:
    """The id of the log in ``directory``, made (and made durable) on first use.

    A log's sequence numbers mean something only together with its id: a publisher whose
    log was lost starts a new sequence space under a new id, and readers that kept cursors
    in the old one can tell (instead of taking seq 1 of the new log for one they handled).
    """
    path = directory / _ID_FILE
    try:
        text = path.read_text(encoding="ascii").strip()
        if len(text) == 16:
            return int(text, 16)
        logger.warning("log id file %s is malformed; the log gets a new id", path)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        logger.warning("cannot read log id %s (%s); the log gets a new id", path, exc)
    log_id = int.from_bytes(os.urandom(8), "big") >> 1  # 63 bits: a MessagePack int
    tmp = path.with_suffix(".tmp")
    try:
        with open(tmp, "w", encoding="ascii") as f:
            f.write(f"{log_id:016x}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_path(directory)
    except OSError as exc:
        raise StorageError(f"cannot write the log id {path}: {exc}") from exc
    return log_id


def _body_compressed(
    seq: int, ts: int, topic_b: bytes, tlen: int, header: bytes, payload: bytes
) -> bytes:
    """The frame body of a record big enough to try lz4 on; compressed if that shrinks it."""
    hlen = len(header)
    plen = len(payload)
    prefix = _pack_prefix(_MAGIC, 0, seq, ts, tlen, hlen, plen)  # refuses bad fields first
    packed = _compress(header + payload)
    if len(packed) < hlen + plen:
        prefix = _pack_prefix(_MAGIC, _FLAG_LZ4, seq, ts, tlen, hlen, plen)
        return _join((prefix, topic_b, packed))
    return _join((prefix, topic_b, header, payload))


def _compress(data: bytes) -> bytes:
    packed: bytes = lz4.block.compress(data, store_size=False)
    return packed


def _unpack_compressed(data: bytes, flags: int, hlen: int, plen: int) -> tuple[bytes, bytes]:
    if flags != _FLAG_LZ4:
        raise ChecksumError(f"unknown frame flags {flags:#x}")
    try:
        raw: bytes = lz4.block.decompress(data, uncompressed_size=hlen + plen)
    except lz4.block.LZ4BlockError as exc:
        raise ChecksumError(f"undecodable lz4 block: {exc}") from exc
    if len(raw) != hlen + plen:
        raise ChecksumError("decompressed size disagrees with the frame")
    return raw[:hlen], raw[hlen:]


def _valid_frame_end(buf: bytes | mmap.mmap, pos: int, end: int, prev_seq: int) -> int:
    """End offset of a fully valid frame at ``pos`` whose seq follows ``prev_seq``, else -1."""
    if pos + _HEAD_SIZE > end:
        return -1
    blen, crc, magic, flags, seq, _, tlen, hlen, plen = _HEAD.unpack_from(buf, pos)
    fend: int = pos + 8 + blen
    if magic != _MAGIC or fend > end or seq <= prev_seq or flags & ~_FLAG_LZ4:
        return -1
    data_len = blen - (_HEAD_SIZE - 8) - tlen
    if data_len < 0 or (not flags and data_len != hlen + plen):
        return -1
    if zlib.crc32(buf[pos + 8 : fend]) != crc:
        return -1
    return fend


def _resync(buf: bytes | mmap.mmap, start: int, end: int, prev_seq: int) -> int:
    """Offset of the next valid frame at or after ``start``, found via the body magic; or -1."""
    search = start + 8
    while True:
        hit = buf.find(_MAGIC_BYTES, search, end)
        if hit < 0:
            return -1
        if _valid_frame_end(buf, hit - 8, end, prev_seq) >= 0:
            return hit - 8
        search = hit + 1


def _is_blank(buf: mmap.mmap, size: int) -> bool:
    """No byte of data: a header cut short by a crash, or zeroes where pages never reached disk."""
    head = buf[:_SEGMENT_HEADER_SIZE]
    if size <= _SEGMENT_HEADER_SIZE and _SEGMENT_HEADER.startswith(head):
        return True
    start = _SEGMENT_HEADER_SIZE if head == _SEGMENT_HEADER else 0
    zeroes = bytes(min(_READ_CHUNK, size))
    for pos in range(start, size, _READ_CHUNK):
        chunk = buf[pos : min(size, pos + _READ_CHUNK)]
        if chunk != zeroes[: len(chunk)]:
            return False
    return True


def _segment_name(number: int) -> str:
    return f"{number:020d}{_SUFFIX}"


def _file_key(st: os.stat_result) -> tuple[int, ...]:
    """Enough of a file's identity to notice that it changed between two looks."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _pread(path: Path, offset: int, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def _fsync_path(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # a rotated segment already removed by retention
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
