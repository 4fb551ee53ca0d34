"""The payload codec: MessagePack round trips, lz4 compression, and hostile input under limits."""

from __future__ import annotations

import contextlib
import math
import os
import sys
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import lz4.frame
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frys_zmq import _codec
from frys_zmq._codec import FLAG_COMPRESSED, PayloadCodec, packb, unpack_limited
from frys_zmq._errors import (
    ConfigError,
    DecodeError,
    DecompressionBomb,
    EncodeError,
    FrysError,
    LimitExceeded,
    MessageTooLarge,
)
from frys_zmq._limits import DEFAULT_LIMITS, Limits

pytestmark = pytest.mark.timeout(30)

# No example database: the suite must not leave files behind.
FAST = settings(max_examples=200, deadline=None, database=None)

MiB = 1024 * 1024
CODEC = PayloadCodec()


# --- helpers ------------------------------------------------------------------------------


def roundtrip(obj: object, codec: PayloadCodec = CODEC) -> Any:
    data, flags = codec.encode(obj)
    return codec.decode(data, flags)


def typed(obj: Any) -> Any:
    """``obj`` as nested (type, value) pairs, so comparisons also catch bytes/str/bool mix-ups."""
    if isinstance(obj, list):
        return ("list", [typed(item) for item in obj])
    if isinstance(obj, dict):
        return ("dict", {typed(key): typed(value) for key, value in obj.items()})
    if isinstance(obj, datetime):
        return ("datetime", obj, obj.tzinfo)
    if isinstance(obj, float) and math.isnan(obj):
        return ("float", "nan")
    return (type(obj).__name__, obj)


def expected(obj: Any) -> Any:
    """What the codec promises to give back: tuples as lists, aware datetimes in UTC."""
    if isinstance(obj, list | tuple):
        return [expected(item) for item in obj]
    if isinstance(obj, dict):
        return {key: expected(value) for key, value in obj.items()}
    if isinstance(obj, datetime) and obj.utcoffset() is not None:
        return obj.astimezone(UTC)
    return obj


def depth(obj: Any) -> int:
    """Nesting depth as the limit counts it: a scalar is 0, ``[1]`` is 1."""
    if isinstance(obj, list | tuple):
        return 1 + max(map(depth, obj), default=0)
    if isinstance(obj, dict):
        return 1 + max(map(depth, obj.values()), default=0)
    return 0


def nested_lists(levels: int, leaf: object = None) -> Any:
    for _ in range(levels):
        leaf = [leaf]
    return leaf


def nested_maps(levels: int, leaf: object = None) -> Any:
    for _ in range(levels):
        leaf = {"k": leaf}
    return leaf


def frame(content: bytes, declared: int) -> bytes:
    """A complete lz4 frame whose header declares ``declared`` bytes, whatever ``content`` is."""
    compressor = lz4.frame.LZ4FrameCompressor(block_linked=False, auto_flush=True)
    header = compressor.begin(source_size=declared)
    return header + compressor.compress(content) + b"\x00\x00\x00\x00"  # end mark


_ZERO_BLOCK: list[bytes] = []


def zeros_frame(declared: int, blocks: int) -> bytes:
    """A frame of ``blocks`` independent 4 MiB all-zero blocks (16 KiB each compressed).

    Built without ever holding the expanded data, so a genuine 1 GiB frame costs milliseconds.
    """
    compressor = lz4.frame.LZ4FrameCompressor(
        block_size=lz4.frame.BLOCKSIZE_MAX4MB, block_linked=False
    )
    header = compressor.begin(source_size=declared)
    if not _ZERO_BLOCK:
        _ZERO_BLOCK.append(compressor.compress(bytes(4 * MiB)))
    return header + _ZERO_BLOCK[0] * blocks + b"\x00\x00\x00\x00"


def raises_exactly(
    exc_type: type[BaseException],
    data: bytes | memoryview,
    flags: int = 0,
    codec: PayloadCodec = CODEC,
) -> BaseException:
    with pytest.raises(exc_type) as info:
        codec.decode(data, flags)
    assert type(info.value) is exc_type, repr(info.value)
    return info.value


INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
OFFSETS = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
)
SCALARS = (
    st.none()
    | st.booleans()
    | INT64
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary()
    | st.datetimes()
    | st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=OFFSETS)
    | st.dates()
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=8) | INT64, inner, max_size=5)
    ),
    max_leaves=30,
)


# --- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -1,
        2**63 - 1,
        -(2**63),
        2**64 - 1,
        1.5,
        -0.0,
        float("inf"),
        float("-inf"),
        "",
        "héllo wörld ✓ 𝄞 日本語",
        b"",
        b"\x00\xff\x80binary",
        [],
        {},
        {"a": [1, {"b": b"x", "c": [None, 2.5]}], "d": {}},
        {1: "one", -2: "minus two", 2**40: "big", "mixed": True},
    ],
    ids=repr,
)
def test_plain_values_come_back_with_the_same_type_and_value(value: object) -> None:
    assert typed(roundtrip(value)) == typed(value)


def test_nan_comes_back_as_nan() -> None:
    assert math.isnan(roundtrip(float("nan")))


def test_bytes_stay_bytes_and_str_stays_str_side_by_side() -> None:
    result = roundtrip({"raw": b"abc", "text": "abc"})
    assert type(result["raw"]) is bytes
    assert type(result["text"]) is str


def test_tuples_come_back_as_lists() -> None:
    assert roundtrip((1, (2, 3), [4])) == [1, [2, 3], [4]]


def test_aware_datetimes_come_back_as_the_same_instant_in_utc() -> None:
    india = timezone(timedelta(hours=5, minutes=30))
    for value in (
        datetime(2024, 2, 29, 12, 30, 45, 123456, tzinfo=UTC),
        datetime(2024, 2, 29, 18, 0, 45, 123456, tzinfo=india),
        datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
        datetime(1, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    ):
        result = roundtrip(value)
        assert result == value
        assert result.tzinfo is UTC
        assert result.utcoffset() == timedelta(0)


def test_naive_datetimes_come_back_naive() -> None:
    for value in (
        datetime(2024, 2, 29, 12, 30, 45, 123456),
        datetime(1, 1, 1),
        datetime(9999, 12, 31, 23, 59, 59, 999999),
    ):
        result = roundtrip(value)
        assert result == value
        assert result.tzinfo is None


def test_dates_come_back_as_dates() -> None:
    result = roundtrip({"when": date(2024, 2, 29)})
    assert typed(result) == typed({"when": date(2024, 2, 29)})


def test_none_payload_is_one_uncompressed_byte() -> None:
    assert CODEC.encode(None) == (b"\xc0", 0)
    assert CODEC.decode(b"\xc0", 0) is None


def test_one_megabyte_payloads_round_trip_compressible_or_not() -> None:
    compressible = {"blob": b"abc" * (MiB // 3), "text": "x" * MiB}
    incompressible = {"blob": os.urandom(MiB)}
    assert roundtrip(compressible) == compressible
    assert roundtrip(incompressible) == incompressible


def test_memoryview_input_decodes_like_bytes() -> None:
    for value in ({"a": 1}, "y" * 100_000):
        data, flags = CODEC.encode(value)
        assert CODEC.decode(memoryview(data), flags) == value


@FAST
@given(DOCUMENTS)
def test_any_nested_document_round_trips(value: Any) -> None:
    assert typed(roundtrip(value)) == typed(expected(value))


@FAST
@given(DOCUMENTS)
def test_any_nested_document_round_trips_through_compression(value: Any) -> None:
    codec = PayloadCodec(compression_threshold=0)
    assert typed(roundtrip(value, codec)) == typed(expected(value))


# --- compression --------------------------------------------------------------------------


def test_compressible_payloads_above_the_threshold_are_compressed() -> None:
    value = {"text": "hello " * 2000}
    data, flags = CODEC.encode(value)
    assert flags == FLAG_COMPRESSED
    assert len(data) < len(packb(value))
    assert CODEC.decode(data, flags) == value


def test_compressed_frames_always_declare_their_content_size() -> None:
    value = "z" * 50_000
    data, flags = CODEC.encode(value)
    assert flags == FLAG_COMPRESSED
    assert lz4.frame.get_frame_info(data)["content_size"] == len(packb(value))


def test_payloads_at_or_below_the_threshold_are_not_even_tried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fail(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("compression attempted below the threshold")

    monkeypatch.setattr(lz4.frame, "compress", fail)
    codec = PayloadCodec(compression_threshold=100)
    at_threshold = "a" * (100 - 2)  # str8 header is 2 bytes
    assert len(packb(at_threshold)) == 100
    assert codec.encode(at_threshold) == (packb(at_threshold), 0)
    assert codec.encode({"small": 1}) == (packb({"small": 1}), 0)


def test_incompressible_payloads_are_sent_uncompressed() -> None:
    value = os.urandom(64 * 1024)
    data, flags = CODEC.encode(value)
    assert flags == 0
    assert data == packb(value)


def test_compression_can_be_turned_off() -> None:
    value = "hello " * 10_000
    assert PayloadCodec(compression=False).encode(value) == (packb(value), 0)


@pytest.mark.parametrize("threshold", [-1, 1.5, "4096", True])
def test_a_bad_compression_threshold_is_a_config_error(threshold: Any) -> None:
    with pytest.raises(ConfigError):
        PayloadCodec(compression_threshold=threshold)


# --- encoding errors ----------------------------------------------------------------------


class Unencodable:
    pass


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (object(), "object"),
        ({1, 2}, "set"),
        ({"nested": [Unencodable()]}, "test_codec.Unencodable"),
    ],
)
def test_unencodable_values_raise_an_encode_error_naming_the_type(
    value: object, named: str
) -> None:
    with pytest.raises(EncodeError, match=named) as info:
        CODEC.encode(value)
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, FrysError)


def test_values_msgpack_cannot_represent_raise_encode_error() -> None:
    cycle: list[object] = []
    cycle.append(cycle)
    for value in (2**64, -(2**63) - 1, cycle, "lone \ud800 surrogate"):
        with pytest.raises(EncodeError):
            CODEC.encode(value)


def test_a_failed_encode_leaves_the_reused_packer_clean() -> None:
    with pytest.raises(EncodeError):
        CODEC.encode({"first": "half", "then": object()})
    assert CODEC.encode({"ok": 1}) == (msgpack.packb({"ok": 1}), 0)


def test_threads_encoding_at_once_never_mix_their_payloads() -> None:
    base = datetime(2020, 1, 1, tzinfo=UTC)
    values = [
        {"n": i, "at": base + timedelta(seconds=i), "naive": datetime(2020, 1, 1, 0, 0, i % 60)}
        for i in range(2000)
    ]
    # Datetimes make the Packer call back into Python, where threads can switch mid-pack;
    # switching as often as possible makes a shared Packer corrupt payloads reliably.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            encoded = list(pool.map(CODEC.encode, values))
    finally:
        sys.setswitchinterval(interval)
    assert [CODEC.decode(data, flags) for data, flags in encoded] == values


# --- limits and hostile input ---------------------------------------------------------------


def test_input_longer_than_max_message_bytes_is_too_large() -> None:
    codec = PayloadCodec(limits=Limits(max_message_bytes=100))
    exc = raises_exactly(MessageTooLarge, packb("x" * 200), codec=codec)
    assert (exc.size, exc.limit) == (len(packb("x" * 200)), 100)  # type: ignore[attr-defined]
    assert codec.decode(packb("x" * 90), 0) == "x" * 90


def test_compressed_input_longer_than_max_message_bytes_is_too_large() -> None:
    data, flags = CODEC.encode("q" * 1_000_000)
    assert flags == FLAG_COMPRESSED
    codec = PayloadCodec(limits=Limits(max_message_bytes=len(data) - 1))
    raises_exactly(MessageTooLarge, data, flags, codec=codec)


# A length prefix that claims more than the input holds is refused as truncated input before
# anything of that size is allocated (msgspec checks each prefix against the bytes left).
@pytest.mark.parametrize(
    "data",
    [
        b"\xdb\xff\xff\xff\xff",  # str 32 claiming 4 GiB
        b"\xc6\xff\xff\xff\xff",  # bin 32 claiming 4 GiB
        b"\xc9\xff\xff\xff\xff\x05",  # ext 32 claiming 4 GiB
        b"\xdd\xff\xff\xff\xff",  # array 32 claiming 2**32-1 elements
        b"\xdf\xff\xff\xff\xff",  # map 32 claiming 2**32-1 pairs
        b"\xdd\x00\x0f\x42\x40" + b"\xc0" * 10,  # a million, within the limit
        b"\x91\x91\xdf\x00\x01\x00\x00",  # a nested map of 65536 pairs
    ],
    ids=["str32", "bin32", "ext32", "array32", "map32", "array-longer-than-input", "nested-map"],
)
def test_huge_length_prefixes_are_refused_without_allocating(data: bytes) -> None:
    tracemalloc.start()
    try:
        raises_exactly(DecodeError, data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024


def test_strings_and_containers_longer_than_configured_are_refused() -> None:
    codec = PayloadCodec(limits=Limits(max_blob_len=10, max_container_len=3))
    assert codec.decode(packb(["x" * 10, b"y" * 10, 3]), 0) == ["x" * 10, b"y" * 10, 3]
    raises_exactly(LimitExceeded, packb("x" * 11), codec=codec)
    raises_exactly(LimitExceeded, packb(b"y" * 11), codec=codec)
    raises_exactly(LimitExceeded, packb([1, 2, 3, 4]), codec=codec)
    raises_exactly(LimitExceeded, packb({1: 1, 2: 2, 3: 3, 4: 4}), codec=codec)


# The depth guard takes different routes by size: a byte count clears most small payloads;
# those that fail it, and large ones that are not counted at all, are walked after decoding.
# Each case runs at the limit and one past it, on every route.
ROUTES = {
    "counted": 0,  # too few container bytes to be deep
    "walked": 2_000,  # container bytes > max_depth, small
    "walked-large": 20_000,  # container bytes > max_depth, large
    "walked-uncounted": 100_000,  # past the size where counting is skipped
}


def document(levels: int, route: str, nest: Any = nested_lists) -> Any:
    doc: dict[str, Any] = {"deep": nest(levels)}
    if route != "counted":
        doc["siblings"] = [[] for _ in range(100)]
        doc["pad"] = bytes(ROUTES[route])
    return doc


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("nest", [nested_lists, nested_maps])
def test_nesting_up_to_max_depth_is_accepted_and_one_more_is_refused(
    route: str, nest: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    walks: list[int] = []
    real_check = _codec._check_depth
    monkeypatch.setattr(
        _codec, "_check_depth", lambda obj, limit: walks.append(limit) or real_check(obj, limit)
    )
    limit = DEFAULT_LIMITS.max_depth
    if route == "counted":
        at_limit, past_limit = nest(limit), nest(limit + 1)
    else:  # the outer dict is one level
        at_limit, past_limit = document(limit - 1, route, nest), document(limit, route, nest)
    assert (depth(at_limit), depth(past_limit)) == (limit, limit + 1)

    assert CODEC.decode(packb(at_limit), 0) == at_limit
    assert bool(walks) == (route != "counted")
    raises_exactly(LimitExceeded, packb(past_limit))


@pytest.mark.parametrize("levels", [65, 1_000, 1_024, 1_025, 100_000, 10_000_000])
def test_absurdly_deep_nesting_is_refused_quickly(levels: int) -> None:
    raises_exactly(LimitExceeded, b"\x91" * levels + b"\xc0")
    raises_exactly(LimitExceeded, b"\x81\xa1k" * min(levels, 100_000) + b"\xc0")


def test_a_max_depth_beyond_msgpacks_own_cap_still_stops_at_1024() -> None:
    codec = PayloadCodec(limits=Limits(max_depth=5000))
    value = codec.decode(b"\x91" * 1024 + b"\xc0", 0)
    for _ in range(1024):  # not ==: comparing this deep would hit Python's recursion limit
        (value,) = value
    assert value is None
    raises_exactly(LimitExceeded, b"\x91" * 1025 + b"\xc0", codec=codec)


def test_deep_nesting_inside_a_compressed_payload_is_refused() -> None:
    data = lz4.frame.compress(b"\x91" * 1_000_000 + b"\xc0")
    raises_exactly(LimitExceeded, data, FLAG_COMPRESSED)


def test_depth_guard_relies_on_msgpacks_c_parse_stack_of_1024() -> None:
    uses_c_extension = msgpack.Unpacker.__module__ == "msgpack._cmsgpack"
    expected_depth = 1024 if uses_c_extension else 0
    assert expected_depth == _codec._STACK_DEPTH


@FAST
@given(
    value=DOCUMENTS,
    max_depth=st.integers(min_value=1, max_value=6),
    pad=st.sampled_from([0, 9_000, 70_000]),
)
def test_every_route_of_the_depth_guard_agrees_with_a_reference(
    value: Any, max_depth: int, pad: int
) -> None:
    codec = PayloadCodec(limits=Limits(max_depth=max_depth))
    doc = [value, bytes(pad)] if pad else value
    data = packb(doc)
    if depth(doc) <= max_depth:
        assert typed(codec.decode(data, 0)) == typed(expected(doc))
    else:
        raises_exactly(LimitExceeded, data, codec=codec)


def test_trailing_bytes_after_one_object_are_refused() -> None:
    raises_exactly(DecodeError, packb({"a": 1}) + b"\x00")
    raises_exactly(DecodeError, packb(1) + packb(2))


@pytest.mark.parametrize("cut", [1, 2, 5, 20])
def test_truncated_input_is_refused(cut: int) -> None:
    data = packb({"name": "truncated", "values": [1, 2, 3], "blob": b"0123456789"})
    raises_exactly(DecodeError, data[:-cut])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # the one byte MessagePack never uses
        b"\xa2\xff\xfe",  # str with invalid UTF-8
        b"\x81\x81\x01\x02\x03",  # map keyed by an (unhashable) map
        b"\xd4\x07\x00",  # fixext 1 of an unknown extension type
        b"\xd6\xff\x00\x00\x00",  # timestamp of a length msgpack does not define
        b"\xc7\x0c\xff" + b"\x00" * 4 + b"\x7f" + b"\xff" * 7,  # timestamp past year 9999
        b"\xc7\x04\x01abcd",  # naive datetime that is not ISO-8601
        b"\xc7\x19\x01" + b"2024-01-01T00:00:00+00:00",  # naive datetime carrying a zone
        b"\xc7\x28\x02" + b"2" * 40,  # date extension longer than any date
    ],
    ids=[
        "empty",
        "never-used",
        "bad-utf8",
        "unhashable-key",
        "unknown-ext",
        "bad-timestamp",
        "timestamp-overflow",
        "bad-naive-datetime",
        "zoned-naive-datetime",
        "long-date",
    ],
)
def test_malformed_messagepack_is_a_decode_error(data: bytes) -> None:
    raises_exactly(DecodeError, data)


@FAST
@given(data=st.binary(max_size=600), flags=st.sampled_from([0, FLAG_COMPRESSED]))
def test_random_bytes_raise_nothing_but_decode_errors(data: bytes, flags: int) -> None:
    with contextlib.suppress(DecodeError):
        CODEC.decode(data, flags)


MSGPACK_SHAPED = st.lists(
    st.sampled_from(
        [
            b"\x91",
            b"\x92",
            b"\x81",
            b"\xdc\xff\xff",
            b"\xdd\x7f\xff\xff\xff",
            b"\xde\x00\x10",
            b"\xdf\xff\xff\xff\xff",
            b"\xdb\xff\xff\xff\xff",
            b"\xc6\x00\x00\x00\x08",
            b"\xd9\x05",
            b"\xa3abc",
            b"\xc0",
            b"\x01",
            b"\xff",
            b"\xcb",
            b"\xd7\xff",
            b"\xc7\x0c\xff",
            b"\xd4\x01",
            b"\xd5\x02",
            b"\xc7\x1a\x01",
            b"\xc1",
            b"\x00" * 8,
            b"\xff" * 8,
        ]
    ),
    max_size=80,
).map(b"".join)


@FAST
@given(
    data=MSGPACK_SHAPED,
    limits=st.builds(
        Limits,
        max_depth=st.integers(1, 8),
        max_container_len=st.integers(1, 100),
        max_blob_len=st.integers(1, 100),
    )
    | st.just(DEFAULT_LIMITS),
)
def test_messagepack_shaped_garbage_raises_nothing_but_decode_errors(
    data: bytes, limits: Limits
) -> None:
    with contextlib.suppress(DecodeError):
        PayloadCodec(limits=limits).decode(data, 0)


@FAST
@given(value=DOCUMENTS, cut=st.integers(0, 50), flip=st.integers(0, 255), at=st.integers(0))
def test_corrupted_payloads_raise_nothing_but_decode_errors(
    value: Any, cut: int, flip: int, at: int
) -> None:
    for codec in (CODEC, PayloadCodec(compression_threshold=0)):
        data, flags = codec.encode(value)
        corrupted = bytearray(data[: max(len(data) - cut, 0)])
        if corrupted:
            corrupted[at % len(corrupted)] ^= flip
        with contextlib.suppress(DecodeError):
            codec.decode(bytes(corrupted), flags)


@pytest.mark.parametrize("flags", [0x02, 0x80, FLAG_COMPRESSED | 0x04, -1, 1 << 40, None, "1"])
def test_unknown_flag_bits_are_refused(flags: Any) -> None:
    raises_exactly(DecodeError, packb(1), flags)


# --- lz4 bombs and lying frames ---------------------------------------------------------------


def test_the_crafted_zero_frames_are_genuine_lz4() -> None:
    assert lz4.frame.decompress(zeros_frame(8 * MiB, 2)) == bytes(8 * MiB)


def test_a_genuine_one_gib_zero_bomb_is_refused_from_its_header() -> None:
    bomb = zeros_frame(1 << 30, 256)  # really expands to 1 GiB; ~4 MiB on the wire
    assert len(bomb) < DEFAULT_LIMITS.max_message_bytes
    exc = raises_exactly(DecompressionBomb, bomb, FLAG_COMPRESSED)
    assert exc.claimed == 1 << 30  # type: ignore[attr-defined]
    assert exc.limit == DEFAULT_LIMITS.max_decompressed_bytes  # type: ignore[attr-defined]


def test_a_genuine_payload_over_the_decompressed_cap_is_a_bomb() -> None:
    data, flags = CODEC.encode("0" * (2 * MiB))
    codec = PayloadCodec(limits=Limits(max_decompressed_bytes=MiB))
    raises_exactly(DecompressionBomb, data, flags, codec=codec)


def test_a_frame_claiming_more_than_lz4_can_expand_to_is_refused_before_allocating() -> None:
    lie = zeros_frame(60 * MiB, 1)  # ~16 KiB claiming 60 MiB: under the cap, over 255:1
    tracemalloc.start()
    try:
        exc = raises_exactly(DecompressionBomb, lie, FLAG_COMPRESSED)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert exc.claimed == 60 * MiB  # type: ignore[attr-defined]
    assert peak < MiB


def test_a_frame_expanding_past_its_declared_size_stops_at_that_size() -> None:
    lie = zeros_frame(1000, 256)  # declares 1000 bytes, holds 1 GiB of zeros
    tracemalloc.start()
    try:
        raises_exactly(DecodeError, lie, FLAG_COMPRESSED)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB


def test_a_frame_holding_less_than_its_declared_size_is_refused() -> None:
    content = packb("v" * 100_000)
    raises_exactly(DecodeError, frame(content, len(content) + 1), FLAG_COMPRESSED)
    assert CODEC.decode(frame(content, len(content)), FLAG_COMPRESSED) == "v" * 100_000


def test_a_frame_without_a_content_size_is_refused() -> None:
    data = lz4.frame.compress(packb("w" * 100_000), store_size=False)
    exc = raises_exactly(DecodeError, data, FLAG_COMPRESSED)
    assert "content size" in str(exc)


def test_truncated_or_padded_frames_are_refused() -> None:
    data, flags = CODEC.encode("t" * 100_000)
    assert flags == FLAG_COMPRESSED
    raises_exactly(DecodeError, data[:-10], flags)
    raises_exactly(DecodeError, data[:10], flags)
    raises_exactly(DecodeError, data + b"\x00", flags)
    raises_exactly(DecodeError, data + data, flags)


def test_uncompressed_bytes_flagged_as_compressed_are_refused() -> None:
    raises_exactly(DecodeError, packb({"not": "lz4"}), FLAG_COMPRESSED)


# --- the helpers the header codec shares ------------------------------------------------------


def test_unpack_limited_reads_what_packb_writes() -> None:
    header = [1, "event", b"\x01" * 16, "node-a", 3, 42, 1_700_000_000_000_000_000, {"k": "v"}]
    assert unpack_limited(packb(header), DEFAULT_LIMITS) == header


def test_unpack_limited_caps_input_at_the_given_size() -> None:
    data = packb({"meta": "m" * 100})
    with pytest.raises(MessageTooLarge, match="header") as info:
        unpack_limited(data, DEFAULT_LIMITS, max_bytes=50, what="header")
    assert (info.value.size, info.value.limit, info.value.what) == (len(data), 50, "header")


def test_unpack_limited_applies_the_same_shape_limits() -> None:
    limits = Limits(max_depth=2)
    assert unpack_limited(packb([[1]]), limits) == [[1]]
    with pytest.raises(LimitExceeded):
        unpack_limited(packb([[[1]]]), limits)
    with pytest.raises(DecodeError):  # claims more elements than the input holds
        unpack_limited(b"\xdd\xff\xff\xff\xff", limits)
    with pytest.raises(DecodeError):
        unpack_limited(packb(1) + b"\x00", limits)
