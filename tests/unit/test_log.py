"""The durable log: framing, segments, the sparse index, crash recovery, retention and fsync."""

from __future__ import annotations

import asyncio
import copy as copying
import dataclasses
import gc
import logging
import os
import pickle
import random
import signal
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frys_zmq._errors import AlreadyClosed, ConfigError, NotStarted, StorageError
from frys_zmq._log import FsyncPolicy, LogRecord, PersistentEventQueue, SegmentLog

pytestmark = pytest.mark.timeout(60)

REPO_ROOT = Path(__file__).resolve().parents[2]
HEADER_SIZE = 8  # b"FRYSLOG1"


def record(seq: int, topic: str = "orders.created", payload: bytes | None = None) -> LogRecord:
    return LogRecord(
        seq=seq,
        timestamp_ns=1_000_000 + seq,
        topic=topic,
        header=b"hdr-%d" % seq,
        payload=b"<%08d>" % seq if payload is None else payload,
    )


def seqs(records: Iterable[LogRecord]) -> list[int]:
    return [r.seq for r in records]


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def frame_offsets(path: Path) -> list[int]:
    """Start offsets of the frames in a healthy segment file."""
    data = path.read_bytes()
    offsets = []
    pos = HEADER_SIZE
    while pos < len(data):
        offsets.append(pos)
        (length,) = struct.unpack_from("<I", data, pos)
        pos += 8 + length
    return offsets


def write_log(directory: Path, records: Iterable[LogRecord], **options: object) -> None:
    with SegmentLog(directory, **options) as log:  # type: ignore[arg-type]
        for r in records:
            log.append(r)


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# -- the record type and the on-disk format --------------------------------------------


def test_a_log_record_is_a_frozen_dataclass_made_positionally_or_by_keyword() -> None:
    by_position = LogRecord(1, 2, "t", b"h", b"p")
    by_keyword = LogRecord(seq=1, timestamp_ns=2, topic="t", header=b"h", payload=b"p")
    assert by_position == by_keyword
    assert hash(by_position) == hash(by_keyword)
    assert type(by_position) is LogRecord
    assert repr(by_position) == (
        "LogRecord(seq=1, timestamp_ns=2, topic='t', header=b'h', payload=b'p')"
    )
    assert [f.name for f in dataclasses.fields(LogRecord)] == [
        "seq",
        "timestamp_ns",
        "topic",
        "header",
        "payload",
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        by_position.seq = 5  # type: ignore[misc]
    assert not hasattr(by_position, "__dict__")
    assert dataclasses.replace(by_position, seq=9) == LogRecord(9, 2, "t", b"h", b"p")
    assert pickle.loads(pickle.dumps(by_position)) == by_position
    assert copying.copy(by_position) == copying.deepcopy(by_position) == by_position
    with pytest.raises(TypeError):
        LogRecord(1, 2, "t", b"h")  # type: ignore[call-arg]


def test_a_subclass_of_log_record_gets_its_fields_and_its_own_slots() -> None:
    @dataclasses.dataclass(frozen=True, slots=True, init=False)
    class Tagged(LogRecord):
        tag: str = "x"

    tagged = Tagged(1, 2, "t", b"h", b"p")
    assert type(tagged) is Tagged
    assert (tagged.seq, tagged.topic, tagged.payload) == (1, "t", b"p")
    with pytest.raises(dataclasses.FrozenInstanceError):
        tagged.seq = 5  # type: ignore[misc]


#: A segment as the previous version of the log (before the append and replay speed-up)
#: wrote it for GOLDEN_RECORDS: the first two frames plain, the third lz4-compressed.
GOLDEN_SEGMENT = bytes.fromhex(
    "465259534c4f473137000000f15d060cc1f500010000000000000001002a36fe9c97170e00030000"
    "00090000006f72646572732e637265617465649301c47061796c6f61642d311d00000041c7c1c6c1"
    "f5000200000000000000fbffffffffffffff00000000000000000000380000001c3c570bc1f50107"
    "000000000000000300000000000000070014000000580200006772c3bcc39f651f680100003f6162"
    "630300ffff3f506263616263"
)
GOLDEN_RECORDS = [
    LogRecord(1, 1_700_000_000_000_000_001, "orders.created", b"\x93\x01\xc4", b"payload-1"),
    LogRecord(2, -5, "", b"", b""),
    LogRecord(7, 3, "grüße", b"h" * 20, b"abc" * 200),
]
GOLDEN_PLAIN_END = 8 + 63 + 37  # the header and the two uncompressed frames


def test_a_segment_written_by_the_previous_version_opens_and_reads_back(tmp_path: Path) -> None:
    (tmp_path / seg_name(1)).write_bytes(GOLDEN_SEGMENT)
    with SegmentLog(tmp_path) as log:
        assert (log.corrupt_records, log.truncated_bytes, log.skipped_files) == (0, 0, 0)
        assert list(log.read_from(0)) == GOLDEN_RECORDS
        assert list(log.read_from(1, topic="")) == GOLDEN_RECORDS[1:2]
        log.append(record(8))
    with SegmentLog(tmp_path) as log:
        assert list(log.read_from(0)) == [*GOLDEN_RECORDS, record(8)]


def test_frames_are_written_byte_for_byte_as_the_previous_version_wrote_them(
    tmp_path: Path,
) -> None:
    write_log(tmp_path / "plain", GOLDEN_RECORDS[:2])
    assert segment_files(tmp_path / "plain")[0].read_bytes() == GOLDEN_SEGMENT[:GOLDEN_PLAIN_END]
    # The lz4 block may differ between lz4 versions; everything else may not.
    write_log(tmp_path / "all", GOLDEN_RECORDS)
    written = segment_files(tmp_path / "all")[0].read_bytes()
    assert written[:GOLDEN_PLAIN_END] == GOLDEN_SEGMENT[:GOLDEN_PLAIN_END]
    # The third frame's magic, flags, seq, timestamp, lengths and topic.
    third = slice(GOLDEN_PLAIN_END + 8, GOLDEN_PLAIN_END + 8 + 29 + len("grüße".encode()))
    assert written[third] == GOLDEN_SEGMENT[third]


# -- SegmentLog: the synchronous core ---------------------------------------------------


@pytest.mark.parametrize("compression", [True, False])
def test_appended_records_read_back_identically_in_seq_order(
    tmp_path: Path, compression: bool
) -> None:
    records = [
        record(1),
        LogRecord(2, 5, "", b"", b""),
        LogRecord(3, -7, "grüße.ünïcode", b"\x00\xc1\xf5", b"\xff" * 3),
        LogRecord(4, 9, "big.compressible", b"h" * 300, b"abc" * 10_000),
        LogRecord(5, 9, "big.random", os.urandom(100), os.urandom(50_000)),
        record(7),
    ]
    with SegmentLog(tmp_path, compression=compression) as log:
        for r in records:
            log.append(r)
        log.flush()
        assert list(log.read_from(0)) == records
        assert (log.first_seq, log.last_seq) == (1, 7)
    with SegmentLog(tmp_path, compression=compression) as log:
        assert list(log.read_from(0)) == records
        assert log.corrupt_records == 0


def test_compression_shrinks_only_bodies_that_compress(tmp_path: Path) -> None:
    compressible = [record(i, payload=b"x" * 4000) for i in range(1, 11)]
    write_log(tmp_path / "on", compressible, compression=True)
    write_log(tmp_path / "off", compressible, compression=False)
    on_size = segment_files(tmp_path / "on")[0].stat().st_size
    off_size = segment_files(tmp_path / "off")[0].stat().st_size
    assert on_size < off_size / 10

    random_bodies = [record(i, payload=os.urandom(4000)) for i in range(1, 11)]
    write_log(tmp_path / "random", random_bodies, compression=True)
    assert segment_files(tmp_path / "random")[0].stat().st_size <= off_size


def test_an_empty_log_has_no_first_or_last_seq(tmp_path: Path) -> None:
    with SegmentLog(tmp_path / "new") as log:
        assert (log.first_seq, log.last_seq) == (None, None)
        assert list(log.read_from(0)) == []
    assert segment_files(tmp_path / "new") == []


def test_segments_rotate_at_max_file_size_and_reads_cross_them(tmp_path: Path) -> None:
    records = [record(i) for i in range(1, 501)]
    write_log(tmp_path, records, max_file_size=4096)

    files = segment_files(tmp_path)
    assert len(files) > 5
    assert all(f.stat().st_size <= 4096 for f in files)
    assert files[0].name == "00000000000000000001.seg"
    with SegmentLog(tmp_path, max_file_size=4096) as log:
        assert log.segment_count == len(files)
        for f in files:
            # Each segment is named after the first seq it holds.
            first_in_file = next(log.read_from(int(f.stem) - 1))
            assert first_in_file.seq == int(f.stem)
        assert list(log.read_from(0)) == records
        assert seqs(log.read_from(250)) == list(range(251, 501))
        assert seqs(log.read_from(500)) == []


def test_read_from_a_middle_seq_seeks_through_the_index_instead_of_scanning(
    tmp_path: Path,
) -> None:
    with SegmentLog(tmp_path, index_every_records=10, verify_reads=True) as log:
        for i in range(1, 1001):
            log.append(record(i))
        log.flush()
        # Corrupt record 5 on disk behind the open log's back: a reader that scanned from the
        # start of the file would trip over it.
        path = segment_files(tmp_path)[0]
        flip_byte(path, path.read_bytes().index(b"<00000005>"))

        assert seqs(log.read_from(500)) == list(range(501, 1001))
        assert seqs(log.read_from(12)) == list(range(13, 1001))
        assert log.corrupt_records == 0

        assert seqs(log.read_from(0)) == [*range(1, 5), *range(6, 1001)]
        assert log.corrupt_records == 1


def test_the_index_is_rebuilt_on_open(tmp_path: Path) -> None:
    write_log(tmp_path, [record(i) for i in range(1, 1001)], index_every_bytes=512)
    with SegmentLog(tmp_path, index_every_bytes=512, verify_reads=True) as log:
        path = segment_files(tmp_path)[0]
        flip_byte(path, path.read_bytes().index(b"<00000003>"))
        assert seqs(log.read_from(900)) == list(range(901, 1001))
        assert log.corrupt_records == 0


def segment_books(log: SegmentLog) -> list[tuple[object, ...]]:
    """What the log keeps about each segment (white-box: the writer keeps it up to date as it
    appends, recovery rebuilds it from the files, and the two must agree)."""
    return [
        (s.path.name, s.size, s.count, s.first_seq, s.last_seq, s.max_ts, s.index)
        for s in log._segments
    ]


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 40) | st.integers(0, 700), st.booleans(), st.integers(1, 3)),
        min_size=1,
        max_size=150,
    ),
    # (max_file_size, index_every_records, index_every_bytes)
    st.sampled_from(
        [(256, 3, 100), (4096, 10, 512), (8192, 4, 1 << 20), (64 * 1024, 1024, 64 * 1024)]
    ),
    st.integers(64, 2048),
)
def test_the_books_kept_while_appending_match_those_rebuilt_on_open(
    steps: list[tuple[int, bool, int]], sizes: tuple[int, int, int], flush_bytes: int
) -> None:
    max_file_size, every_records, every_bytes = sizes
    options = {
        "max_file_size": max_file_size,
        "index_every_records": every_records,
        "index_every_bytes": every_bytes,
    }
    with tempfile.TemporaryDirectory() as directory:
        records = []
        seq = 0
        with SegmentLog(directory, flush_bytes=flush_bytes, **options) as log:
            for size, flush, gap in steps:
                seq += gap
                # Odd seqs incompressible, even ones compressible once big enough.
                body = random.Random(seq).randbytes(size) if seq % 2 else b"ab" * (size // 2)
                records.append(LogRecord(seq, (seq * 7919) % 1000, "t", b"h", body))
                log.append(records[-1])
                if flush:
                    log.flush()
            log.flush()
            kept = segment_books(log)
            assert (log.first_seq, log.last_seq) == (records[0].seq, seq)
        for path in segment_files(Path(directory)):
            # Only a record bigger than a whole segment makes one bigger, all on its own.
            assert path.stat().st_size <= max_file_size or len(frame_offsets(path)) == 1
        with SegmentLog(directory, **options) as log:
            assert segment_books(log) == kept
            assert list(log.read_from(0)) == records
            for r in records[:: max(1, len(records) // 10)]:
                assert next(log.read_from(r.seq - 1)) == r


def test_a_segment_is_filled_up_to_max_file_size_and_never_past_it(tmp_path: Path) -> None:
    frame = 8 + 29 + len("orders.created") + len(b"hdr-1") + 10  # record(i) for one digit i
    # Room for three frames and most of a fourth: every segment must take exactly three.
    max_file_size = HEADER_SIZE + 4 * frame - 4
    write_log(tmp_path, [record(i) for i in range(1, 10)], max_file_size=max_file_size)
    files = segment_files(tmp_path)
    assert [f.stat().st_size for f in files] == [HEADER_SIZE + 3 * frame] * 3
    assert [f.name for f in files] == [seg_name(1), seg_name(4), seg_name(7)]


def test_an_append_after_close_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    log = SegmentLog(tmp_path)
    log.append(record(1))
    log.close()
    with pytest.raises(StorageError, match="closed"):
        log.append(record(2))
    with pytest.raises(StorageError, match="closed"):
        log.append(record(1))
    assert log.last_seq == 1
    with SegmentLog(tmp_path) as reopened:
        assert seqs(reopened.read_from(0)) == [1]


def test_a_record_that_cannot_be_framed_is_refused_and_the_log_goes_on(tmp_path: Path) -> None:
    with SegmentLog(tmp_path) as log:
        log.append(record(1))
        with pytest.raises(StorageError, match="cannot be framed"):
            log.append(LogRecord(2, 2**63, "t", b"", b""))  # the timestamp is an i64
        with pytest.raises(StorageError, match="cannot be framed"):
            log.append(LogRecord(2**64, 1, "t", b"", b"x" * 600))  # so is a compressible one
        with pytest.raises(StorageError, match="65535"):
            log.append(record(2, topic="t" * 70_000))
        log.append(record(2))
        assert log.last_seq == 2
    with SegmentLog(tmp_path) as log:
        assert seqs(log.read_from(0)) == [1, 2]


def test_topic_filter_yields_only_that_topic_in_seq_order(tmp_path: Path) -> None:
    topics = ["a.one", "b.two", "a.one.more", "a.on"]
    records = [record(i, topic=topics[i % 4]) for i in range(1, 401)]
    write_log(tmp_path, records, max_file_size=4096)
    with SegmentLog(tmp_path) as log:
        assert list(log.read_from(0, topic="a.one")) == [r for r in records if r.topic == "a.one"]
        assert seqs(log.read_from(300, topic="b.two")) == list(range(301, 401, 4))
        assert list(log.read_from(0, topic="nothing")) == []


def test_reopened_log_continues_in_the_last_segment_after_the_last_seq(tmp_path: Path) -> None:
    write_log(tmp_path, [record(i) for i in range(1, 11)])
    with SegmentLog(tmp_path) as log:
        assert (log.first_seq, log.last_seq) == (1, 10)
        log.append(record(11))
        log.append(record(15))  # a jump after a restart is fine
    assert len(segment_files(tmp_path)) == 1
    with SegmentLog(tmp_path) as log:
        assert seqs(log.read_from(0)) == [*range(1, 12), 15]


def test_appending_a_seq_that_does_not_increase_is_refused(tmp_path: Path) -> None:
    with SegmentLog(tmp_path) as log:
        log.append(record(5))
        with pytest.raises(StorageError):
            log.append(record(5))
        with pytest.raises(StorageError):
            log.append(record(4))
        log.flush()
        assert seqs(log.read_from(0)) == [5]


def test_reads_include_records_flushed_while_iterating(tmp_path: Path) -> None:
    with SegmentLog(tmp_path, max_file_size=4096) as log:
        for i in range(1, 11):
            log.append(record(i))
        log.flush()
        reader = log.read_from(0)
        first = next(reader)
        for i in range(11, 201):
            log.append(record(i))
        log.flush()
        assert [first.seq, *seqs(reader)] == list(range(1, 201))


def test_unflushed_records_are_not_visible_to_readers(tmp_path: Path) -> None:
    with SegmentLog(tmp_path) as log:
        log.append(record(1))
        log.flush()
        log.append(record(2))
        assert seqs(log.read_from(0)) == [1]
        assert log.last_seq == 2


def test_truncating_the_last_record_at_every_byte_offset_loses_only_that_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "source"
    write_log(source, [record(i) for i in range(1, 5)])
    last_start = segment_files(source)[0].stat().st_size
    write_log(source, [record(5, payload=b"the last one")])
    full = segment_files(source)[0].read_bytes()
    assert len(full) > last_start

    for cut in range(last_start, len(full)):
        directory = tmp_path / f"cut-{cut}"
        directory.mkdir()
        (directory / "00000000000000000001.seg").write_bytes(full[:cut])
        with caplog.at_level(logging.WARNING, logger="frys_zmq._log"):
            log = SegmentLog(directory)
        with log:
            assert seqs(log.read_from(0)) == [1, 2, 3, 4], cut
            assert log.corrupt_records == 0
            assert log.truncated_bytes == cut - last_start
            assert log.last_seq == 4
            log.append(record(5, payload=b"written again"))
        assert (directory / "00000000000000000001.seg").stat().st_size == len(full) + 1
        with SegmentLog(directory) as log:
            assert seqs(log.read_from(0)) == [1, 2, 3, 4, 5]
    assert any("torn tail" in r.getMessage() for r in caplog.records)


def test_a_corrupted_checksum_in_the_middle_is_reported_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_log(tmp_path, [record(i) for i in range(1, 11)])
    path = segment_files(tmp_path)[0]
    flip_byte(path, path.read_bytes().index(b"<00000005>"))
    size = path.stat().st_size

    with caplog.at_level(logging.WARNING, logger="frys_zmq._log"):
        log = SegmentLog(path.parent)
    with log:
        assert log.corrupt_records == 1
        assert log.truncated_bytes == 0
        assert seqs(log.read_from(0)) == [1, 2, 3, 4, 6, 7, 8, 9, 10]
        assert log.corrupt_records == 1  # reading skips the known region without recounting
        log.append(record(11))
        log.flush()
        assert seqs(log.read_from(9)) == [10, 11]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "corrupt" in warnings[0].getMessage()
    assert path.stat().st_size > size  # nothing was truncated, the append went after it


@pytest.mark.parametrize("garbage", [0, 3, 0xFFFF_FFF0, "one more"])
def test_a_garbage_length_field_is_skipped_by_resyncing_to_the_next_frame(
    tmp_path: Path, garbage: int | str
) -> None:
    write_log(tmp_path, [record(i) for i in range(1, 11)])
    path = segment_files(tmp_path)[0]
    data = bytearray(path.read_bytes())
    offset = frame_offsets(path)[4]  # record 5
    (length,) = struct.unpack_from("<I", data, offset)
    struct.pack_into("<I", data, offset, length + 1 if garbage == "one more" else garbage)
    path.write_bytes(bytes(data))

    with SegmentLog(tmp_path) as log:
        assert seqs(log.read_from(0)) == [1, 2, 3, 4, 6, 7, 8, 9, 10]
        assert log.corrupt_records == 1


def test_corruption_at_the_end_of_an_older_segment_is_reported_not_truncated(
    tmp_path: Path,
) -> None:
    write_log(tmp_path, [record(i) for i in range(1, 301)], max_file_size=4096)
    first = segment_files(tmp_path)[0]
    last_in_first = frame_offsets(first)[-1]
    flip_byte(first, first.stat().st_size - 1)
    size = first.stat().st_size

    with SegmentLog(tmp_path, max_file_size=4096) as log:
        assert log.corrupt_records == 1
        read = seqs(log.read_from(0))
    assert len(read) == 299
    assert read == sorted(read)
    assert first.stat().st_size == size
    assert last_in_first > HEADER_SIZE


def test_zeroed_bytes_after_the_last_record_are_truncated_as_a_torn_tail(tmp_path: Path) -> None:
    write_log(tmp_path, [record(i) for i in range(1, 6)])
    path = segment_files(tmp_path)[0]
    with path.open("ab") as f:
        f.write(bytes(10_000))  # the file grew but its data never reached the disk
    with SegmentLog(tmp_path) as log:
        assert seqs(log.read_from(0)) == [1, 2, 3, 4, 5]
        assert (log.corrupt_records, log.truncated_bytes) == (0, 10_000)


# -- damaged directories: no single bad file makes the log unreadable ------------------------

BIG = 300  # with max_file_size=256 every record of BIG bytes gets a segment of its own
ONE_PER_SEGMENT = {"max_file_size": 256}


def big(seq: int) -> LogRecord:
    return record(seq, payload=b"%08d" % seq * (BIG // 8))


def write_segments(directory: Path, last: int = 300) -> list[Path]:
    """Records 1..last in several segments of about 4 KiB; returns the segment files."""
    write_log(directory, [record(i) for i in range(1, last + 1)], max_file_size=4096)
    files = segment_files(directory)
    assert len(files) >= 3
    return files


def seg_name(number: int) -> str:
    return f"{number:020d}.seg"


def assert_appends_and_reopens(directory: Path, last: int, **options: object) -> None:
    """The log takes last + 1 and, reopened, still holds every seq up to it."""
    with SegmentLog(directory, **options) as log:  # type: ignore[arg-type]
        assert log.last_seq == last
        log.append(record(last + 1))
    with SegmentLog(directory, **options) as log:  # type: ignore[arg-type]
        assert seqs(log.read_from(0)) == list(range(1, last + 2))
        assert log.truncated_bytes == 0


@pytest.mark.parametrize("which", ["middle", "last"])
def test_a_damaged_segment_header_costs_no_record_and_the_file_is_never_written(
    tmp_path: Path, which: str, caplog: pytest.LogCaptureFixture
) -> None:
    files = write_segments(tmp_path)
    damaged = files[len(files) // 2] if which == "middle" else files[-1]
    flip_byte(damaged, 3)
    before = damaged.read_bytes()

    with caplog.at_level(logging.WARNING, logger="frys_zmq._log"):
        log = SegmentLog(tmp_path, max_file_size=4096)
    with log:
        assert seqs(log.read_from(0)) == list(range(1, 301))
        assert (log.corrupt_records, log.skipped_files, log.truncated_bytes) == (1, 0, 0)
    assert "damaged segment header" in caplog.text
    assert_appends_and_reopens(tmp_path, 300, max_file_size=4096)
    assert damaged.read_bytes() == before
    if which == "last":  # the new record went to a segment of its own
        assert len(segment_files(tmp_path)) == len(files) + 1


def test_a_damaged_header_on_a_torn_last_segment_leaves_the_tail_on_disk(tmp_path: Path) -> None:
    files = write_segments(tmp_path)
    with files[-1].open("ab") as f:
        f.write(b"\x07" * 50)
    flip_byte(files[-1], 0)
    before = files[-1].read_bytes()
    with SegmentLog(tmp_path, max_file_size=4096) as log:
        assert seqs(log.read_from(0)) == list(range(1, 301))
        assert (log.corrupt_records, log.truncated_bytes) == (2, 0)  # the header, the tail
    assert_appends_and_reopens(tmp_path, 300, max_file_size=4096)
    assert files[-1].read_bytes() == before


@pytest.mark.parametrize("name", [seg_name(0), seg_name(150), seg_name(99_999_999)])
def test_a_foreign_file_named_like_a_segment_is_left_out_and_never_touched(
    tmp_path: Path, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    write_segments(tmp_path)
    foreign = tmp_path / name
    content = os.urandom(5000)
    foreign.write_bytes(content)

    with caplog.at_level(logging.WARNING, logger="frys_zmq._log"):
        log = SegmentLog(tmp_path, max_file_size=4096)
    with log:
        assert seqs(log.read_from(0)) == list(range(1, 301))
        assert (log.skipped_files, log.corrupt_records, log.truncated_bytes) == (1, 0, 0)
        log.apply_retention(0, max_bytes=1)  # retention only ever deletes the log's own files
    assert f"{foreign} is left out of the log" in caplog.text
    assert foreign.read_bytes() == content
    with SegmentLog(tmp_path, max_file_size=4096) as log:
        assert log.last_seq == 300
        log.append(record(301))
    with SegmentLog(tmp_path, max_file_size=4096) as log:
        assert seqs(log.read_from(299)) == [300, 301]
    assert foreign.read_bytes() == content


def test_a_foreign_file_that_starts_with_a_segment_header_is_left_out(tmp_path: Path) -> None:
    write_segments(tmp_path)
    foreign = tmp_path / seg_name(99_999_999)
    foreign.write_bytes(b"FRYSLOG1" + os.urandom(1000))
    with SegmentLog(tmp_path, max_file_size=4096) as log:
        assert (log.skipped_files, log.truncated_bytes) == (1, 0)
    assert_appends_and_reopens(tmp_path, 300, max_file_size=4096)
    assert foreign.stat().st_size == 1008


def test_a_directory_named_like_a_segment_is_left_out(tmp_path: Path) -> None:
    write_segments(tmp_path)
    (tmp_path / seg_name(99_999_999)).mkdir()
    with SegmentLog(tmp_path, max_file_size=4096) as log:
        assert seqs(log.read_from(0)) == list(range(1, 301))
        assert log.skipped_files == 1
    assert_appends_and_reopens(tmp_path, 300, max_file_size=4096)
    assert (tmp_path / seg_name(99_999_999)).is_dir()


def test_a_fifo_named_like_a_segment_does_not_hang_the_open(tmp_path: Path) -> None:
    write_segments(tmp_path)
    os.mkfifo(tmp_path / seg_name(99_999_999))
    with SegmentLog(tmp_path, max_file_size=4096) as log:
        assert seqs(log.read_from(0)) == list(range(1, 301))
        assert log.skipped_files == 1


def test_names_that_are_not_ascii_digits_are_ignored(tmp_path: Path) -> None:
    write_segments(tmp_path)
    (tmp_path / "²³.seg").write_bytes(b"FRYSLOG1")  # "²".isdigit(), but int() rejects it
    (tmp_path / "x.seg").mkdir()
    (tmp_path / f"{'1' * 21}.seg").write_bytes(b"")
    with SegmentLog(tmp_path, max_file_size=4096) as log:
        assert seqs(log.read_from(0)) == list(range(1, 301))
        assert log.skipped_files == 0


def test_a_new_segment_passes_over_a_name_held_by_a_directory(tmp_path: Path) -> None:
    write_log(tmp_path, [big(i) for i in range(1, 4)], **ONE_PER_SEGMENT)
    (tmp_path / seg_name(4)).mkdir()
    with SegmentLog(tmp_path, **ONE_PER_SEGMENT) as log:
        for i in range(4, 7):
            log.append(big(i))
    names = [p.name for p in segment_files(tmp_path) if p.is_file()]
    assert names == [seg_name(n) for n in (1, 2, 3, 5, 6, 7)]  # never below a taken name
    with SegmentLog(tmp_path, **ONE_PER_SEGMENT) as log:
        assert seqs(log.read_from(0)) == [1, 2, 3, 4, 5, 6]
        log.append(big(7))
    with SegmentLog(tmp_path, **ONE_PER_SEGMENT) as log:
        assert seqs(log.read_from(0)) == list(range(1, 8))
        assert log.skipped_files == 1


@pytest.mark.parametrize("name", [seg_name(0), seg_name(99_999_999)])
def test_a_stray_empty_segment_never_takes_appends_and_costs_no_record(
    tmp_path: Path, name: str
) -> None:
    write_log(tmp_path, [record(i) for i in range(1, 51)], max_file_size=4096)
    stray = tmp_path / name
    stray.write_bytes(b"")
    with SegmentLog(tmp_path, max_file_size=4096) as log:
        assert log.skipped_files == 1
        for i in range(51, 501):
            log.append(record(i))
        log.sync()
    assert len(segment_files(tmp_path)) > 4
    with SegmentLog(tmp_path, max_file_size=4096) as log:
        assert seqs(log.read_from(0)) == list(range(1, 501))
        assert (log.last_seq, log.truncated_bytes, log.corrupt_records) == (500, 0, 0)
    assert stray.stat().st_size == 0


async def test_records_acknowledged_after_a_stray_empty_segment_survive_reopening(
    tmp_path: Path,
) -> None:
    async with PersistentEventQueue(tmp_path, max_file_size=1024, fsync="always") as queue:
        await asyncio.gather(*(queue.store_event(record(i)) for i in range(1, 11)))
    (tmp_path / seg_name(99_999_999)).write_bytes(b"")
    async with PersistentEventQueue(tmp_path, max_file_size=1024, fsync="always") as queue:
        assert queue.skipped_files == 1
        for first in range(11, 201, 10):
            await asyncio.gather(*(queue.store_event(record(i)) for i in range(first, first + 10)))
    async with PersistentEventQueue(tmp_path, max_file_size=1024, fsync="always") as queue:
        assert seqs(await queue.recover_events()) == list(range(1, 201))
        assert queue.last_seq == 200


def test_a_torn_header_is_reused_when_the_next_segment_needs_its_name(tmp_path: Path) -> None:
    write_log(tmp_path, [big(i) for i in range(1, 4)], **ONE_PER_SEGMENT)
    (tmp_path / seg_name(4)).write_bytes(b"FRY")  # a crash while segment 4 was created
    with SegmentLog(tmp_path, **ONE_PER_SEGMENT) as log:
        assert (log.last_seq, log.skipped_files) == (3, 1)
        log.append(big(4))
    assert [p.name for p in segment_files(tmp_path)] == [seg_name(n) for n in (1, 2, 3, 4)]
    with SegmentLog(tmp_path, **ONE_PER_SEGMENT) as log:
        assert seqs(log.read_from(0)) == [1, 2, 3, 4]
        assert log.skipped_files == 0


def test_a_zero_filled_last_segment_holds_no_data_and_is_reused(tmp_path: Path) -> None:
    write_log(tmp_path, [big(i) for i in range(1, 5)], **ONE_PER_SEGMENT)
    last = tmp_path / seg_name(4)
    last.write_bytes(bytes(last.stat().st_size))  # its pages never reached the disk
    with SegmentLog(tmp_path, **ONE_PER_SEGMENT) as log:
        assert (log.last_seq, log.skipped_files, log.corrupt_records) == (3, 1, 0)
        log.append(big(4))
    with SegmentLog(tmp_path, **ONE_PER_SEGMENT) as log:
        assert seqs(log.read_from(0)) == [1, 2, 3, 4]
    assert last.read_bytes().startswith(b"FRYSLOG1")


def test_segments_are_ordered_by_the_seqs_inside_not_by_their_names(tmp_path: Path) -> None:
    files = write_segments(tmp_path)
    # What an older version left behind: a segment whose name sorts after later ones.
    files[1].rename(tmp_path / seg_name(99_999_999))
    with SegmentLog(tmp_path, max_file_size=4096) as log:
        assert seqs(log.read_from(0)) == list(range(1, 301))
        assert seqs(log.read_from(150)) == list(range(151, 301))
        assert (log.truncated_bytes, log.corrupt_records, log.skipped_files) == (0, 0, 0)
    assert_appends_and_reopens(tmp_path, 300, max_file_size=4096)


def test_a_copy_of_a_segment_under_another_name_is_left_out_untouched(tmp_path: Path) -> None:
    files = write_segments(tmp_path)
    copies = [tmp_path / seg_name(0), tmp_path / seg_name(99_999_999)]
    for copy, original in zip(copies, (files[1], files[-1]), strict=True):
        copy.write_bytes(original.read_bytes() + b"\x00\x01torn")
    with SegmentLog(tmp_path, max_file_size=4096) as log:
        assert seqs(log.read_from(0)) == list(range(1, 301))
        assert (log.skipped_files, log.truncated_bytes) == (2, 0)
    assert_appends_and_reopens(tmp_path, 300, max_file_size=4096)
    assert copies[0].read_bytes() == files[1].read_bytes() + b"\x00\x01torn"
    assert copies[1].read_bytes().endswith(b"\x00\x01torn")


def test_a_segment_deleted_behind_the_log_is_reported_once_and_reading_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with SegmentLog(tmp_path, max_file_size=4096) as log:
        for i in range(1, 301):
            log.append(record(i))
        log.flush()
        files = segment_files(tmp_path)
        gone = range(int(files[1].stem), int(files[2].stem))  # names are first seqs
        files[1].unlink()
        with caplog.at_level(logging.ERROR, logger="frys_zmq._log"):
            assert seqs(log.read_from(0)) == [i for i in range(1, 301) if i not in gone]
            assert seqs(log.read_from(gone[0])) == list(range(gone[-1] + 1, 301))
        assert log.corrupt_records == 1
    assert caplog.text.count("disappeared") == 1


def test_os_errors_surface_as_storage_errors(tmp_path: Path) -> None:
    not_a_directory = tmp_path / "file"
    not_a_directory.write_bytes(b"")
    with pytest.raises(StorageError) as info:
        SegmentLog(not_a_directory)
    assert isinstance(info.value.__cause__, OSError)


def test_invalid_log_options_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        SegmentLog(tmp_path, max_file_size=10)
    with pytest.raises(ConfigError):
        SegmentLog(tmp_path, index_every_records=0)


def test_retention_by_age_removes_old_segments_but_never_the_active_one(tmp_path: Path) -> None:
    second = 1_000_000_000
    records = [LogRecord(i, i * second, "t", b"", b"p" * 100) for i in range(1, 301)]
    write_log(tmp_path, records, max_file_size=4096)
    with SegmentLog(tmp_path, max_file_size=4096) as log:
        files = segment_files(tmp_path)
        second_first = int(files[1].stem)
        # Only the first segment is entirely older than (now - max_age).
        now = (second_first + 100) * second
        removed = log.apply_retention(now, max_age_ns=100 * second)
        assert removed == second_first - 1
        assert log.first_seq == second_first
        assert segment_files(tmp_path) == files[1:]

        # Everything expired: all but the active segment go.
        before = log.first_seq
        removed = log.apply_retention(10**6 * second, max_age_ns=1)
        (active,) = segment_files(tmp_path)
        assert active == files[-1]
        assert log.first_seq == int(active.stem)
        assert removed == log.first_seq - before
        # A reader asking for the removed range sees it start at first_seq (a reportable gap).
        assert seqs(log.read_from(0))[0] == log.first_seq
        assert log.last_seq == 300


def test_retention_by_size_keeps_the_newest_segments_within_max_bytes(tmp_path: Path) -> None:
    write_log(tmp_path, [record(i) for i in range(1, 501)], max_file_size=4096)
    with SegmentLog(tmp_path, max_file_size=4096) as log:
        log.apply_retention(time.time_ns(), max_bytes=10_000)
        files = segment_files(tmp_path)
        assert sum(f.stat().st_size for f in files) <= 10_000
        assert len(files) >= 2
        assert seqs(log.read_from(0)) == list(range(log.first_seq or 0, 501))

        assert log.apply_retention(time.time_ns(), max_bytes=1) > 0
        assert len(segment_files(tmp_path)) == 1
        assert log.apply_retention(time.time_ns(), max_bytes=1) == 0


def test_a_reader_continues_at_first_seq_when_retention_removes_its_segment(
    tmp_path: Path,
) -> None:
    write_log(tmp_path, [record(i) for i in range(1, 501)], max_file_size=4096)
    with SegmentLog(tmp_path, max_file_size=4096) as log:
        reader = log.reader(0)
        first_batch = reader.read_batch()
        assert first_batch and first_batch[0].seq == 1
        log.apply_retention(time.time_ns(), max_bytes=1)
        rest = [r.seq for _ in range(100) for r in reader.read_batch()]
        assert reader.exhausted
        assert rest == list(range(log.first_seq or 0, 501))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(1, 1000),
            st.integers(-(2**63), 2**63 - 1),
            st.text(max_size=30),
            st.binary(max_size=200),
            st.binary(max_size=2000) | st.builds(lambda n: b"z" * n, st.integers(0, 5000)),
        ),
        max_size=40,
    ),
    st.booleans(),
)
def test_any_records_round_trip_through_a_reopened_log(
    rows: list[tuple[int, int, str, bytes, bytes]], compression: bool
) -> None:
    records = []
    seq = 0
    for step, ts, topic, header, payload in rows:
        seq += step
        records.append(LogRecord(seq, ts, topic, header, payload))
    with tempfile.TemporaryDirectory() as directory:
        write_log(Path(directory), records, compression=compression, max_file_size=8192)
        with SegmentLog(directory, max_file_size=8192, verify_reads=True) as log:
            assert list(log.read_from(0)) == records
            assert log.corrupt_records == 0


# -- PersistentEventQueue: the asyncio wrapper ------------------------------------------


@pytest.mark.parametrize("policy", [*FsyncPolicy, "interval"])
async def test_store_event_returns_and_the_record_survives_reopening(
    tmp_path: Path, policy: FsyncPolicy | str
) -> None:
    async with PersistentEventQueue(tmp_path, fsync=policy, fsync_interval=0.01) as queue:
        for i in range(1, 21):
            await queue.store_event(record(i))
        queue.append_nowait(record(21))
        assert queue.last_seq == 21
    async with PersistentEventQueue(tmp_path, fsync=policy) as queue:
        assert seqs(await queue.recover_events()) == list(range(1, 22))


async def test_store_event_under_always_fsyncs_before_returning(tmp_path: Path) -> None:
    async with PersistentEventQueue(tmp_path, fsync="always") as queue:
        for i in range(1, 6):
            await queue.store_event(record(i))
            assert queue.fsync_count == i


async def test_store_event_under_interval_waits_for_the_next_group_commit(
    tmp_path: Path,
) -> None:
    async with PersistentEventQueue(tmp_path, fsync="interval", fsync_interval=0.02) as queue:
        before = queue.fsync_count
        await queue.store_event(record(1))
        assert queue.fsync_count == before + 1
        results = await asyncio.gather(*(queue.store_event(record(i)) for i in range(2, 102)))
        assert len(results) == 100
        assert queue.fsync_count <= before + 3


async def test_store_event_under_never_does_not_fsync(tmp_path: Path) -> None:
    async with PersistentEventQueue(tmp_path, fsync="never", fsync_interval=0.01) as queue:
        for i in range(1, 11):
            await queue.store_event(record(i))
        assert queue.fsync_count == 0
        assert seqs(await queue.recover_events()) == list(range(1, 11))


async def test_concurrent_store_events_under_always_are_group_committed(tmp_path: Path) -> None:
    async with PersistentEventQueue(tmp_path, fsync=FsyncPolicy.ALWAYS) as queue:
        await asyncio.gather(*(queue.store_event(record(i)) for i in range(1, 201)))
        assert 1 <= queue.fsync_count < 200
        assert seqs(await queue.recover_events()) == list(range(1, 201))


async def test_append_nowait_is_made_durable_by_the_background_committer(
    tmp_path: Path,
) -> None:
    async with PersistentEventQueue(tmp_path, fsync="interval", fsync_interval=0.01) as queue:
        queue.append_nowait(record(1))
        deadline = time.monotonic() + 5
        while queue.fsync_count == 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)


async def test_iter_events_streams_a_large_backlog(tmp_path: Path) -> None:
    count = 100_000
    async with PersistentEventQueue(tmp_path, max_file_size=1024 * 1024) as queue:
        for i in range(1, count + 1):
            queue.append_nowait(record(i, topic="even" if i % 2 == 0 else "odd"))
    async with PersistentEventQueue(tmp_path, max_file_size=1024 * 1024) as queue:
        expected = 1
        async for r in queue.iter_events():
            assert r.seq == expected
            expected += 1
        assert expected == count + 1

        odd = [r.seq async for r in queue.iter_events(after_seq=count - 10, topic="odd")]
        assert odd == list(range(count - 9, count + 1, 2))
        assert seqs(await queue.recover_events("even", after_seq=count - 6)) == [
            count - 4,
            count - 2,
            count,
        ]


async def test_iter_events_parses_records_as_they_are_consumed_not_a_batch_ahead(
    tmp_path: Path,
) -> None:
    # Records parsed a ~1 MiB batch ahead outlive several GC passes and get promoted to the
    # old generations, whose collections then cost a fifth of a replay.
    async with PersistentEventQueue(tmp_path) as queue:
        for i in range(1, 20_001):
            queue.append_nowait(record(i))

    def records_alive() -> int:
        return sum(type(o) is LogRecord for o in gc.get_objects())

    async with PersistentEventQueue(tmp_path) as queue:
        before = records_alive()
        alive = []
        async for r in queue.iter_events():
            if r.seq in (10, 10_000):
                alive.append(records_alive() - before)
            del r
        assert max(alive) < 10


async def test_corruption_that_appears_while_open_is_skipped_once_by_iter_events(
    tmp_path: Path,
) -> None:
    async with PersistentEventQueue(tmp_path, verify_reads=True) as queue:
        for i in range(1, 101):
            queue.append_nowait(record(i))
        queue.flush()
        path = segment_files(tmp_path)[0]
        flip_byte(path, path.read_bytes().index(b"<00000050>"))
        assert [r.seq async for r in queue.iter_events()] == [*range(1, 50), *range(51, 101)]
        assert [r.seq async for r in queue.iter_events(after_seq=40)] == [
            *range(41, 50),
            *range(51, 101),
        ]
        assert queue.corrupt_records == 1


async def test_queue_retention_removes_expired_segments_and_moves_first_seq(
    tmp_path: Path,
) -> None:
    old = time.time_ns() - 3600 * 10**9
    async with PersistentEventQueue(tmp_path, max_file_size=4096, retention_period=60.0) as queue:
        for i in range(1, 301):
            queue.append_nowait(LogRecord(i, old, "t", b"", b"p" * 100))
        queue.append_nowait(LogRecord(301, time.time_ns(), "t", b"", b"new"))
        assert queue.first_seq == 1
        removed = await queue.apply_retention()
        assert removed > 0
        assert queue.first_seq == removed + 1
        assert (await queue.recover_events())[0].seq == queue.first_seq


async def test_retention_also_runs_periodically(tmp_path: Path) -> None:
    async with PersistentEventQueue(
        tmp_path, max_file_size=4096, retention_bytes=8192, retention_check_interval=0.01
    ) as queue:
        for i in range(1, 501):
            queue.append_nowait(record(i))
        deadline = time.monotonic() + 5
        while queue.first_seq == 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert len(segment_files(tmp_path)) <= 3


async def test_a_log_keeps_its_id_across_reopens_and_a_new_log_gets_a_new_one(
    tmp_path: Path,
) -> None:
    async with PersistentEventQueue(tmp_path / "a") as q:
        first = q.log_id
        await q.store_event(LogRecord(1, 1, "t", b"h", b"p"))
    async with PersistentEventQueue(tmp_path / "a") as q:
        assert q.log_id == first
    async with PersistentEventQueue(tmp_path / "b") as q:
        assert q.log_id not in (0, first)
    assert 0 < first < 2**63  # travels as a MessagePack int


async def test_a_malformed_log_id_file_is_replaced_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "LOG_ID").write_text("not hex at all")
    async with PersistentEventQueue(tmp_path) as q:
        assert q.log_id != 0
        kept = q.log_id
    async with PersistentEventQueue(tmp_path) as q:
        assert q.log_id == kept


async def test_aclose_is_idempotent_and_the_closed_queue_refuses_work(tmp_path: Path) -> None:
    queue = PersistentEventQueue(tmp_path)
    with pytest.raises(NotStarted):
        queue.append_nowait(record(1))
    await queue.open()
    await queue.open()
    await queue.store_event(record(1))
    await asyncio.gather(queue.aclose(), queue.aclose())
    await queue.aclose()
    with pytest.raises(AlreadyClosed):
        await queue.store_event(record(2))
    with pytest.raises(AlreadyClosed):
        await queue.recover_events()
    with pytest.raises(AlreadyClosed):
        await queue.open()


async def test_store_events_pending_at_aclose_are_committed(tmp_path: Path) -> None:
    queue = PersistentEventQueue(tmp_path, fsync="interval", fsync_interval=30.0)
    await queue.open()
    pending = [asyncio.ensure_future(queue.store_event(record(i))) for i in range(1, 11)]
    await asyncio.sleep(0)
    await queue.aclose()
    await asyncio.gather(*pending)
    async with PersistentEventQueue(tmp_path) as reopened:
        assert seqs(await reopened.recover_events()) == list(range(1, 11))


@pytest.mark.parametrize(
    "options",
    [
        {"fsync": "sometimes"},
        {"fsync_interval": 0},
        {"retention_period": -1.0},
        {"retention_bytes": 0},
        {"max_file_size": 1},
    ],
)
def test_invalid_queue_options_are_config_errors(
    tmp_path: Path, options: dict[str, object]
) -> None:
    with pytest.raises(ConfigError):
        PersistentEventQueue(tmp_path, **options)  # type: ignore[arg-type]


# -- crash safety -----------------------------------------------------------------------

CRASHING_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from frys_zmq._log import LogRecord, PersistentEventQueue

    async def main():
        queue = PersistentEventQueue(sys.argv[1], fsync="always", max_file_size=16384)
        await queue.open()
        seq = 0
        while True:
            batch = list(range(seq + 1, seq + 9))
            seq += 8
            await asyncio.gather(
                *(queue.store_event(LogRecord(s, s, "crash", b"h", b"p" * 100)) for s in batch)
            )
            sys.stdout.write("".join(f"{s}\\n" for s in batch))
            sys.stdout.flush()

    asyncio.run(main())
    """
)


def test_every_acknowledged_record_survives_a_sigkill(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER, str(tmp_path)],
        stdout=subprocess.PIPE,
        env=env,
    )
    assert child.stdout is not None
    acknowledged: list[int] = []
    try:
        while len(acknowledged) < 400:
            line = child.stdout.readline()
            assert line, f"writer exited early with {child.wait()}"
            acknowledged.append(int(line))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    tail = child.stdout.read()
    child.stdout.close()
    acknowledged += [int(line) for line in tail.split(b"\n")[:-1]]

    with SegmentLog(tmp_path) as log:
        stored = seqs(log.read_from(0))
        assert log.corrupt_records == 0
    assert len(segment_files(tmp_path)) > 1
    assert set(acknowledged) <= set(stored)
    assert stored == list(range(1, len(stored) + 1))
