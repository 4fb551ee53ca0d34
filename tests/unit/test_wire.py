"""The wire format: header codec, topic frames, frame checks, control payloads and NACK bodies."""

from __future__ import annotations

import contextlib
import itertools
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frys_zmq import _timing
from frys_zmq._errors import (
    BadFrame,
    DecodeError,
    EncodeError,
    LimitExceeded,
    MessageTooLarge,
    UnknownProtocolVersion,
)
from frys_zmq._limits import DEFAULT_LIMITS, Limits
from frys_zmq._node import _merge_runs, _parse_nack
from frys_zmq._topics import MAX_TOPIC_BYTES
from frys_zmq._wire import (
    PROTOCOL_MAJOR,
    PROTOCOL_VERSION,
    Header,
    Kind,
    check_frames,
    decode_header,
    encode_header,
    pack_control,
    split_topic,
    topic_frame,
    unpack_control,
)

pytestmark = pytest.mark.timeout(30)

# No example database: the suite must not leave files behind.
FAST = settings(max_examples=300, deadline=None, database=None)

SMALL = Limits(max_header_bytes=256, max_message_bytes=100)

# A header with every field set, as the list that goes on the wire.
FULL = [
    PROTOCOL_VERSION,
    int(Kind.EVENT),
    "node-1",
    7,
    42,
    1_700_000_000_000_000_000,
    {"k": "v", "n": [1, 2]},
    3,
    "application/json",
    "corr-1",
    "reply.to",
    "trace-1",
]


def packed(fields: list[Any]) -> bytes:
    return msgpack.packb(fields, use_bin_type=True)


def with_field(index: int, value: Any) -> bytes:
    fields = list(FULL)
    fields[index] = value
    return packed(fields)


# ---------------------------------------------------------------- header round trips


@pytest.mark.parametrize("kind", list(Kind))
def test_every_kind_round_trips_with_every_field_set(kind: Kind) -> None:
    data = encode_header(
        kind,
        "node_A-1",
        2**63,
        2**64 - 1,
        -(2**63),
        {"a": 1, "nested": {"b": [True, None, 1.5, b"\x00"]}},
        flags=0xFF,
        content_type="text/plain",
        correlation_id="c" * 40,
        reply_to="$frys.reply.x",
        trace="00-abc-01",
    )
    assert decode_header(data, DEFAULT_LIMITS) == Header(
        PROTOCOL_VERSION,
        kind,
        "node_A-1",
        2**63,
        2**64 - 1,
        -(2**63),
        {"a": 1, "nested": {"b": [True, None, 1.5, b"\x00"]}},
        0xFF,
        "text/plain",
        "c" * 40,
        "$frys.reply.x",
        "00-abc-01",
    )


def test_optional_fields_default_to_none_and_zero() -> None:
    header = decode_header(encode_header(Kind.HEARTBEAT, "n", 0, 0, 0), DEFAULT_LIMITS)
    assert header == Header(
        PROTOCOL_VERSION, int(Kind.HEARTBEAT), "n", 0, 0, 0, None, 0, None, None, None, None
    )
    assert header.metadata is None
    assert header.flags == 0
    assert header.content_type is header.correlation_id is header.reply_to is None
    assert header.trace is None


def test_the_header_starts_with_the_protocol_version() -> None:
    fields = msgpack.unpackb(encode_header(Kind.EVENT, "n", 1, 2, 3))
    assert fields[0] == PROTOCOL_VERSION
    assert PROTOCOL_VERSION // 100 == PROTOCOL_MAJOR
    assert len(fields) == 12


@FAST
@given(
    kind=st.sampled_from(list(Kind)),
    source=st.from_regex(r"[A-Za-z0-9_-]{1,31}", fullmatch=True),
    incarnation=st.integers(0, 2**64 - 1),
    seq=st.integers(0, 2**64 - 1),
    timestamp_ns=st.integers(-(2**63), 2**64 - 1),
    metadata=st.none()
    | st.dictionaries(st.text(max_size=10), st.integers(-(2**63), 2**64 - 1) | st.text()),
    flags=st.integers(-(2**63), 2**64 - 1),
    strings=st.lists(st.none() | st.text(max_size=50), min_size=4, max_size=4),
)
def test_any_header_round_trips(
    kind: Kind,
    source: str,
    incarnation: int,
    seq: int,
    timestamp_ns: int,
    metadata: dict[str, Any] | None,
    flags: int,
    strings: list[str | None],
) -> None:
    data = encode_header(kind, source, incarnation, seq, timestamp_ns, metadata, flags, *strings)
    expected = Header(
        PROTOCOL_VERSION, kind, source, incarnation, seq, timestamp_ns, metadata, flags, *strings
    )
    assert decode_header(data, DEFAULT_LIMITS) == expected


def test_metadata_that_msgpack_cannot_hold_is_an_encode_error() -> None:
    with pytest.raises(EncodeError):
        encode_header(Kind.EVENT, "n", 0, 0, 0, {"x": object()})
    with pytest.raises(EncodeError):
        encode_header(Kind.EVENT, "n", 0, 2**64, 0)
    # A failed pack leaves nothing behind in the reused packer: the next header is whole.
    assert decode_header(encode_header(Kind.EVENT, "n", 0, 1, 0), DEFAULT_LIMITS).seq == 1


# ---------------------------------------------------------------- versions


@pytest.mark.parametrize("version", [0, 99, 200, 201, -1, -100, 10_000])
def test_a_header_of_another_major_version_is_refused(version: int) -> None:
    with pytest.raises(UnknownProtocolVersion) as info:
        decode_header(with_field(0, version), DEFAULT_LIMITS)
    assert info.value.version == version


@pytest.mark.parametrize("version", ["100", 100.0, None, True, [1], {"v": 1}])
def test_a_version_that_is_not_an_int_is_refused(version: Any) -> None:
    with pytest.raises(UnknownProtocolVersion):
        decode_header(with_field(0, version), DEFAULT_LIMITS)


def test_a_newer_minor_with_extra_trailing_fields_is_accepted() -> None:
    data = packed([PROTOCOL_MAJOR * 100 + 99, *FULL[1:], "future", {"x": 1}, [1, 2, 3]])
    header = decode_header(data, DEFAULT_LIMITS)
    assert header == Header(PROTOCOL_MAJOR * 100 + 99, *FULL[1:])


def test_an_unknown_version_is_reported_before_a_short_header() -> None:
    # A future major may have a different shape; its version is what to report.
    with pytest.raises(UnknownProtocolVersion):
        decode_header(packed([200, 1]), DEFAULT_LIMITS)


# ---------------------------------------------------------------- malformed headers


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(packed([]), id="empty array"),
        pytest.param(packed({"v": 100}), id="map"),
        pytest.param(packed(100), id="int"),
        pytest.param(packed("header"), id="str"),
        pytest.param(packed(FULL[:11]), id="11 fields"),
        pytest.param(packed(FULL[:1]), id="version only"),
    ],
)
def test_a_header_that_is_not_a_full_array_is_a_bad_frame(data: bytes) -> None:
    with pytest.raises(BadFrame):
        decode_header(data, DEFAULT_LIMITS)


@pytest.mark.parametrize(
    ("index", "value"),
    [
        pytest.param(1, "1", id="kind str"),
        pytest.param(1, 0, id="kind 0"),
        pytest.param(1, 99, id="kind unknown"),
        pytest.param(1, True, id="kind bool"),
        pytest.param(1, 1.0, id="kind float"),
        pytest.param(2, 5, id="source int"),
        pytest.param(2, "", id="source empty"),
        pytest.param(2, "x" * 32, id="source too long"),
        pytest.param(2, b"node", id="source bytes"),
        pytest.param(2, None, id="source none"),
        pytest.param(3, "1", id="incarnation str"),
        pytest.param(3, -1, id="incarnation negative"),
        pytest.param(3, False, id="incarnation bool"),
        pytest.param(4, 1.0, id="seq float"),
        pytest.param(4, -1, id="seq negative"),
        pytest.param(4, None, id="seq none"),
        pytest.param(5, "now", id="timestamp str"),
        pytest.param(6, [1, 2], id="metadata list"),
        pytest.param(6, "meta", id="metadata str"),
        pytest.param(7, "0", id="flags str"),
        pytest.param(7, None, id="flags none"),
        pytest.param(8, 5, id="content_type int"),
        pytest.param(9, b"corr", id="correlation_id bytes"),
        pytest.param(10, ["r"], id="reply_to list"),
        pytest.param(11, {"t": 1}, id="trace map"),
    ],
)
def test_a_field_of_the_wrong_type_is_a_bad_frame(index: int, value: Any) -> None:
    with pytest.raises(BadFrame):
        decode_header(with_field(index, value), DEFAULT_LIMITS)


def test_metadata_with_non_string_keys_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode_header(with_field(6, {1: "x"}), DEFAULT_LIMITS)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc1", id="never used byte"),
        pytest.param(packed(FULL)[:-3], id="truncated"),
        pytest.param(packed(FULL) + b"\x00", id="trailing data"),
        pytest.param(b"\x91" * 5000 + b"\xc0", id="deep nesting"),
    ],
)
def test_bytes_that_are_not_one_msgpack_document_are_a_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_header(data, DEFAULT_LIMITS)


def test_an_oversized_header_is_refused_before_it_is_unpacked() -> None:
    data = encode_header(Kind.EVENT, "n", 0, 0, 0, {"blob": "x" * 300})
    with pytest.raises(MessageTooLarge) as info:
        decode_header(data, SMALL)
    assert isinstance(info.value, LimitExceeded)
    assert info.value.size == len(data)
    assert info.value.limit == SMALL.max_header_bytes
    assert info.value.what == "header"


def test_a_header_exactly_at_the_limit_is_accepted() -> None:
    base = encode_header(Kind.EVENT, "n", 0, 0, 0, {"b": ""})
    filler = "x" * (SMALL.max_header_bytes - len(base) - 1)  # str8 adds one length byte
    data = encode_header(Kind.EVENT, "n", 0, 0, 0, {"b": filler})
    assert len(data) == SMALL.max_header_bytes
    assert decode_header(data, SMALL).metadata == {"b": filler}


@pytest.mark.parametrize("source", ["../../../tmp/x", "a b", "a/b", "ünïcode", "a.b"])
def test_a_source_that_is_not_a_node_id_is_a_bad_frame(source: str) -> None:
    with pytest.raises(BadFrame):
        decode_header(with_field(2, source), DEFAULT_LIMITS)


@FAST
@given(st.binary(max_size=400))
def test_decoding_arbitrary_bytes_raises_only_decode_errors(data: bytes) -> None:
    try:
        header = decode_header(data, SMALL)
    except DecodeError:
        return
    assert isinstance(header, Header)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=40)
    | st.binary(max_size=40),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.text(max_size=5) | st.integers(-(2**63), 2**64 - 1), children, max_size=5
        )
    ),
    max_leaves=20,
)


@FAST
@given(
    st.sampled_from([PROTOCOL_VERSION, PROTOCOL_VERSION + 1, 200, "x"]),
    st.lists(msgpack_values, max_size=14),
)
def test_decoding_arbitrary_msgpack_arrays_raises_only_decode_errors(
    version: Any, rest: list[Any]
) -> None:
    # Mostly well-typed fields with a few wrong ones reach the checks past the version.
    try:
        header = decode_header(packed([version, *rest]), DEFAULT_LIMITS)
    except DecodeError:
        return
    assert header.kind in set(Kind)
    assert isinstance(header.source, str)
    assert header.seq >= 0


@FAST
@given(st.lists(st.sampled_from(list(range(len(FULL)))), max_size=3), st.data())
def test_mutating_a_valid_header_raises_only_decode_errors(
    indexes: list[int], data: st.DataObject
) -> None:
    fields = list(FULL)
    for index in indexes:
        fields[index] = data.draw(msgpack_values)
    with contextlib.suppress(DecodeError):
        decode_header(packed(fields), DEFAULT_LIMITS)


# ---------------------------------------------------------------- topic frames


@FAST
@given(st.text(min_size=1).filter(lambda t: len(t.encode()) <= MAX_TOPIC_BYTES))
def test_topic_frames_round_trip(topic: str) -> None:
    frame = topic_frame(topic)
    assert frame.endswith(b"\0")
    assert split_topic(frame) == topic


def test_a_topic_frame_is_the_utf8_topic_and_a_nul() -> None:
    assert topic_frame("orders.créé") == "orders.créé".encode() + b"\0"


def test_the_longest_topic_fits_in_a_topic_frame() -> None:
    topic = "é" * (MAX_TOPIC_BYTES // 2) + "x"
    assert len(topic.encode()) == MAX_TOPIC_BYTES
    assert split_topic(topic_frame(topic)) == topic


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"orders", id="no terminator"),
        pytest.param(b"orders\0x", id="terminator not last"),
        pytest.param(b"x" * 256 + b"\0", id="topic too long"),
        pytest.param(b"\xff\xfe\0", id="not utf-8"),
        pytest.param(b"\xed\xa0\x80\0", id="encoded surrogate"),
    ],
)
def test_a_malformed_topic_frame_is_a_bad_frame(frame: bytes) -> None:
    with pytest.raises(BadFrame):
        split_topic(frame)


def test_an_empty_topic_frame_is_a_bad_frame() -> None:
    with pytest.raises(BadFrame):
        split_topic(b"\0")


@FAST
@given(st.binary(max_size=300))
def test_splitting_arbitrary_bytes_raises_only_bad_frame(frame: bytes) -> None:
    try:
        topic = split_topic(frame)
    except BadFrame:
        return
    assert topic_frame(topic) == frame


# ---------------------------------------------------------------- frame checks


def test_a_message_of_three_frames_within_the_limit_passes() -> None:
    check_frames([b"t\0", b"h" * 48, b"p" * 50], SMALL)
    check_frames([b"a", b"b"], SMALL, expected=2)


@pytest.mark.parametrize("count", [0, 1, 2, 4, 10])
def test_a_message_with_the_wrong_number_of_frames_is_a_bad_frame(count: int) -> None:
    with pytest.raises(BadFrame, match=f"got {count}"):
        check_frames([b"x"] * count, SMALL)


def test_a_message_over_the_size_limit_is_too_large() -> None:
    with pytest.raises(MessageTooLarge) as info:
        check_frames([b"t\0", b"h" * 49, b"p" * 50], SMALL)
    assert info.value.size == 101
    assert info.value.limit == SMALL.max_message_bytes


# ---------------------------------------------------------------- control payloads


@pytest.mark.parametrize(
    "value",
    [
        {"cluster": "c", "pub": 1, "rtr": 2, "served": ["a", "b"]},
        [1, 10, [[1, 2], [4, 10]]],
        None,
        {1: "int keys are fine in control payloads"},
    ],
)
def test_control_payloads_round_trip(value: Any) -> None:
    assert unpack_control(pack_control(value), DEFAULT_LIMITS) == value


def test_a_control_payload_over_sixteen_headers_is_too_large() -> None:
    limit = SMALL.max_header_bytes * 16
    ok = pack_control("x" * (limit - 3))  # str16: three bytes of prefix
    assert len(ok) == limit
    assert unpack_control(ok, SMALL) == "x" * (limit - 3)
    with pytest.raises(MessageTooLarge) as info:
        unpack_control(pack_control("x" * (limit - 2)), SMALL)
    assert info.value.limit == limit
    assert info.value.what == "control payload"


def test_a_control_array_longer_than_65536_is_refused() -> None:
    assert len(unpack_control(pack_control([None] * 65536), DEFAULT_LIMITS)) == 65536
    with pytest.raises(DecodeError):
        unpack_control(pack_control([None] * 65537), DEFAULT_LIMITS)


def test_a_control_map_larger_than_65536_is_refused() -> None:
    with pytest.raises(DecodeError):
        unpack_control(pack_control({i: None for i in range(65537)}), DEFAULT_LIMITS)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"\xc1", id="never used byte"),
        pytest.param(b"\x92\x01", id="truncated"),
        pytest.param(b"\x01\x02", id="trailing data"),
        pytest.param(b"\x81\x91\x01\x02", id="unhashable key"),
        pytest.param(b"\xdd\xff\xff\xff\xff", id="array claims 4G elements"),
        pytest.param(b"\xdb\xff\xff\xff\xff", id="str claims 4G bytes"),
        pytest.param(b"\x91" * 5000 + b"\xc0", id="deep nesting"),
    ],
)
def test_a_malformed_control_payload_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(DecodeError):
        unpack_control(data, DEFAULT_LIMITS)


@FAST
@given(st.binary(max_size=400))
def test_unpacking_arbitrary_control_bytes_raises_only_decode_errors(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        unpack_control(data, SMALL)


# ---------------------------------------------------------------- NACK bodies


@pytest.mark.parametrize(
    ("body", "parsed"),
    [
        ([1, 10], (1, 10, None)),
        ([1, 10, []], (1, 10, [])),
        ([1, 10, [[1, 2], [5, 10]]], (1, 10, [(1, 2), (5, 10)])),
        ([0, 2**64 - 1], (0, 2**64 - 1, None)),
    ],
)
def test_a_well_formed_nack_body_is_parsed(body: Any, parsed: Any) -> None:
    assert _parse_nack(body) == parsed


def test_a_nack_body_survives_the_control_codec() -> None:
    body = unpack_control(pack_control([3, 9, [[3, 4], [7, 9]]]), DEFAULT_LIMITS)
    assert _parse_nack(body) == (3, 9, [(3, 4), (7, 9)])


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(None, id="none"),
        pytest.param({"first": 1, "last": 2}, id="map"),
        pytest.param((1, 2), id="tuple"),
        pytest.param([], id="empty"),
        pytest.param([1], id="one element"),
        pytest.param([1, 2, [], 4], id="four elements"),
        pytest.param(["1", 2], id="first str"),
        pytest.param([1, 2.0], id="last float"),
        pytest.param([True, 2], id="first bool"),
        pytest.param([1, 2, None], id="runs none"),
        pytest.param([1, 2, {"a": 1}], id="runs map"),
        pytest.param([1, 2, [[1]]], id="run of one"),
        pytest.param([1, 2, [[1, 2, 3]]], id="run of three"),
        pytest.param([1, 2, [(1, 2)]], id="run tuple"),
        pytest.param([1, 2, [[1, "2"]]], id="run with str"),
        pytest.param([1, 2, [[False, 2]]], id="run with bool"),
        pytest.param([1, 2, [3]], id="run not a list"),
        pytest.param([1, 2, [[1, 1]] * (_timing.NACK_MAX_RANGE + 1)], id="more runs than a window"),
    ],
)
def test_a_malformed_nack_body_is_a_decode_error(body: Any) -> None:
    with pytest.raises(DecodeError):
        _parse_nack(body)


def test_a_nack_may_list_as_many_runs_as_a_window_holds() -> None:
    runs = [[i, i] for i in range(_timing.NACK_MAX_RANGE)]
    assert len(_parse_nack([0, 10, runs])[2] or []) == _timing.NACK_MAX_RANGE


@FAST
@given(msgpack_values)
def test_parsing_any_control_value_as_a_nack_raises_only_decode_errors(body: Any) -> None:
    try:
        first, last, runs = _parse_nack(body)
    except DecodeError:
        return
    assert type(first) is int
    assert type(last) is int
    assert runs is None or all(type(lo) is int and type(hi) is int for lo, hi in runs)


# ---------------------------------------------------------------- NACK runs as served


def test_overlapping_nack_runs_are_merged_so_each_seq_is_replayed_once() -> None:
    # 2,048 copies of the whole window must not make 2,048 replays of it.
    runs = [(1, 2048)] * 2048
    assert _merge_runs(runs, 1, 2048) == [(1, 2048)]


def test_nack_runs_are_clipped_to_the_window_sorted_and_joined() -> None:
    runs = [(9, 12), (-5, 2), (4, 4), (5, 6), (30, 40), (11, 20)]
    assert _merge_runs(runs, 1, 25) == [(1, 2), (4, 6), (9, 20)]
    assert _merge_runs([(7, 3), (50, 60)], 1, 25) == []


@FAST
@given(st.lists(st.tuples(st.integers(-10, 60), st.integers(-10, 60)), max_size=30))
def test_merged_nack_runs_cover_exactly_the_asked_seqs_in_the_window(
    runs: list[tuple[int, int]],
) -> None:
    merged = _merge_runs(runs, 1, 50)
    covered = [seq for lo, hi in merged for seq in range(lo, hi + 1)]
    asked = sorted({seq for lo, hi in runs for seq in range(max(lo, 1), min(hi, 50) + 1)})
    assert covered == asked
    assert all(b[0] > a[1] + 1 for a, b in itertools.pairwise(merged))
