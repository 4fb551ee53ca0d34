"""Wire format: multipart ``[topic\\0, header, payload]`` and the MessagePack header.

No I/O here: plain functions from values to frames and back, so they are tested without
sockets. The header is a MessagePack array whose first element is the protocol version.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import msgpack
import msgspec

from ._codec import ext_from_bytes, ext_from_view, packb
from ._errors import BadFrame, DecodeError, MessageTooLarge, UnknownProtocolVersion
from ._limits import Limits

__all__ = [
    "PROTOCOL_MAJOR",
    "PROTOCOL_VERSION",
    "Header",
    "Kind",
    "decode_header",
    "encode_header",
    "split_topic",
    "topic_frame",
]

#: Protocol version in every header: major * 100 + minor. Majors do not interoperate.
#: 1.1 added BATCH; a 1.0 node drops batches as an unknown kind and repairs the gap by NACK.
PROTOCOL_VERSION: Final = 101
PROTOCOL_MAJOR: Final = PROTOCOL_VERSION // 100

HEARTBEAT_TOPIC: Final = "$frys.hb"
CONTROL_TOPIC: Final = "$frys.ctl"


class Kind(enum.IntEnum):
    """What a message is."""

    EVENT = 1
    HEARTBEAT = 2
    HELLO = 3
    HELLO_REPLY = 4
    REQUEST = 5
    REPLY = 6
    NACK = 7
    REPLAY = 8
    REPLAY_END = 9
    READY = 10
    BYE = 11
    #: Consecutive events of one publisher and one topic in one message: the header gives the
    #: source, the body is ``pack_batch`` of each event's own header and payload.
    BATCH = 12


# The node-id grammar of _config.validate_name: a source names a file on disk (cursors).
_NODE_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,31}")
_KINDS = frozenset(int(k) for k in Kind)
_FIELDS: Final = 12
#: Most events one BATCH may carry.
MAX_BATCH_EVENTS: Final = 4096
# Sources that passed the node-id check: a stream's every header names the same few nodes.
_good_sources: set[str] = set()


class Header(msgspec.Struct, array_like=True, gc=False):
    """Decoded header of one message, in wire order (a MessagePack array)."""

    version: int
    kind: int
    source: str
    incarnation: int
    seq: int
    timestamp_ns: int
    metadata: dict[str, Any] | None
    flags: int
    content_type: str | None
    correlation_id: str | None
    reply_to: str | None
    trace: str | None


# Everything msgpack raises on hostile input: its own errors and limit breaches are
# ValueErrors; unhashable or odd map keys give TypeError; huge ints OverflowError.
_MSGPACK_ERRORS = (ValueError, TypeError, OverflowError)


def encode_header(
    kind: int,
    source: str,
    incarnation: int,
    seq: int,
    timestamp_ns: int,
    metadata: Mapping[str, Any] | None = None,
    flags: int = 0,
    content_type: str | None = None,
    correlation_id: str | None = None,
    reply_to: str | None = None,
    trace: str | None = None,
) -> bytes:
    """Pack one header. Metadata must be MessagePack-able (str keys recommended)."""
    fields = (
        PROTOCOL_VERSION,
        kind,
        source,
        incarnation,
        seq,
        timestamp_ns,
        metadata,
        flags,
        content_type,
        correlation_id,
        reply_to,
        trace,
    )
    if metadata is None or plain_metadata(metadata):
        # msgspec packs plain values the same way as the codec, about three times faster.
        try:
            return _encode_fast(fields)
        except (TypeError, OverflowError, UnicodeEncodeError):
            pass  # the codec's packer says what is wrong
    # The codec's packer: one per thread (sync facades run buses on their own threads), and
    # it maps datetimes in metadata the same way as in payloads.
    return packb(fields)


_PLAIN_TYPES: Final = frozenset((str, int, float, bool, type(None), bytes))


def plain_metadata(metadata: Mapping[str, Any]) -> bool:
    """Whether every key is a str and every value a plain scalar (no datetime, no container)."""
    plain = _PLAIN_TYPES
    for key, value in metadata.items():
        if type(key) is not str or type(value) not in plain:
            return False
    return True


def decode_header(data: bytes, limits: Limits) -> Header:
    """Unpack and check one header; raises only ``DecodeError`` subclasses."""
    if len(data) > limits.max_header_bytes:
        raise MessageTooLarge(len(data), limits.max_header_bytes, "header")
    try:
        # One typed decode checks every field's type in C; it runs once per event.
        header = _decode_typed(data)
    except Exception:
        # Not a well-typed header: the field-by-field path says exactly what is wrong (or
        # accepts what the typed one is stricter about, e.g. bytes keys in metadata).
        return _decode_header_checked(data, limits)
    if (
        header.version // 100 != PROTOCOL_MAJOR
        or header.kind not in _KINDS
        or header.source not in _good_sources
        or header.seq < 0
        or header.incarnation < 0
    ):
        return _decode_header_checked(data, limits)
    return header


def _decode_header_checked(data: bytes, limits: Limits) -> Header:
    """The slow path of ``decode_header``: field by field, with a precise error."""
    try:
        fields = msgpack.unpackb(
            data,
            use_list=True,
            raw=False,
            strict_map_key=True,
            # As loose as the typed path: the header's size bounds every length in it.
            max_str_len=limits.max_header_bytes,
            max_bin_len=limits.max_header_bytes,
            max_array_len=limits.max_header_bytes,
            max_map_len=limits.max_header_bytes // 2,
            max_ext_len=limits.max_header_bytes,
            ext_hook=ext_from_bytes,
            timestamp=3,
        )
    except _MSGPACK_ERRORS as exc:  # ExtraData, FormatError, StackError, limits: ValueErrors
        raise DecodeError(f"header is not valid MessagePack: {exc!r}") from exc
    if type(fields) is not list or not fields:
        raise BadFrame("header must be a non-empty MessagePack array")
    version = fields[0]
    if type(version) is not int or version // 100 != PROTOCOL_MAJOR:
        raise UnknownProtocolVersion(version)
    if len(fields) < _FIELDS:
        raise BadFrame(f"header has {len(fields)} fields, expected {_FIELDS}")
    # Newer minors may append fields; we read the ones we know. This runs once per event,
    # so the checks are plain comparisons rather than a loop over the fields.
    (
        _,
        kind,
        source,
        incarnation,
        seq,
        timestamp_ns,
        metadata,
        flags,
        content_type,
        correlation_id,
        reply_to,
        trace,
    ) = fields if len(fields) == _FIELDS else fields[:_FIELDS]
    if type(kind) is not int or kind not in _KINDS:
        raise BadFrame(f"unknown message kind {kind!r}")
    if type(source) is not str or source not in _good_sources:
        if type(source) is not str or not _NODE_ID_RE.fullmatch(source):
            raise BadFrame("header source must be a node id")
        if len(_good_sources) < 4096:
            _good_sources.add(source)
    if type(incarnation) is not int or type(seq) is not int or type(timestamp_ns) is not int:
        raise BadFrame("incarnation, seq and timestamp must be integers")
    if seq < 0 or incarnation < 0:
        raise BadFrame("seq and incarnation must be >= 0")
    if metadata is not None and type(metadata) is not dict:
        raise BadFrame("metadata must be a map")
    if type(flags) is not int:
        raise BadFrame("flags must be an integer")
    if not (
        (content_type is None or type(content_type) is str)
        and (correlation_id is None or type(correlation_id) is str)
        and (reply_to is None or type(reply_to) is str)
        and (trace is None or type(trace) is str)
    ):
        raise BadFrame("content_type, correlation_id, reply_to and trace must be strings")
    return Header(
        version,
        kind,
        source,
        incarnation,
        seq,
        timestamp_ns,
        metadata,
        flags,
        content_type,
        correlation_id,
        reply_to,
        trace,
    )


_decode_typed = msgspec.msgpack.Decoder(Header, ext_hook=ext_from_view).decode
_encode_fast = msgspec.msgpack.Encoder().encode


def pack_batch(parts: Sequence[bytes]) -> bytes:
    """Body of a BATCH: the events' header and payload frames, alternating."""
    return packb(parts)


def unpack_batch(data: bytes, limits: Limits) -> list[bytes]:
    """Inverse of ``pack_batch``, checked; raises only ``DecodeError`` subclasses."""
    try:
        parts = msgpack.unpackb(
            data,
            use_list=True,
            max_bin_len=limits.max_message_bytes,
            max_str_len=0,
            max_array_len=2 * MAX_BATCH_EVENTS,
            max_map_len=0,
            max_ext_len=0,
        )
    except _MSGPACK_ERRORS as exc:
        raise DecodeError(f"batch is not valid MessagePack: {exc!r}") from exc
    if type(parts) is not list or not parts or len(parts) % 2:
        raise BadFrame("batch must be a non-empty array of header/payload pairs")
    for part in parts:
        if type(part) is not bytes:
            raise BadFrame("batch entries must be binary")
    return parts


def topic_frame(topic: str) -> bytes:
    """First frame of a message: the topic and a NUL, so prefix filters match whole topics."""
    return topic.encode() + b"\0"


def split_topic(frame: bytes) -> str:
    """Inverse of ``topic_frame``; raises ``BadFrame`` on a frame without the terminator."""
    if not frame.endswith(b"\0") or not 2 <= len(frame) <= 256:
        raise BadFrame("topic frame must be 1-255 bytes followed by NUL")
    try:
        return frame[:-1].decode()
    except UnicodeDecodeError as exc:
        raise BadFrame("topic is not UTF-8") from exc


def check_frames(frames: Sequence[bytes], limits: Limits, expected: int = 3) -> None:
    """Check the shape and total size of a multipart message."""
    if len(frames) != expected:
        raise BadFrame(f"expected {expected} frames, got {len(frames)}")
    total = sum(len(f) for f in frames)
    if total > limits.max_message_bytes:
        raise MessageTooLarge(total, limits.max_message_bytes)


def pack_control(obj: Any) -> bytes:
    """Pack a small control payload (HELLO, NACK ...) with MessagePack."""
    return packb(obj)


def unpack_control(data: bytes, limits: Limits) -> Any:
    """Unpack a control payload under tight limits; raises only ``DecodeError``."""
    if len(data) > limits.max_header_bytes * 16:
        raise MessageTooLarge(len(data), limits.max_header_bytes * 16, "control payload")
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,
            max_array_len=65536,
            max_map_len=65536,
        )
    except _MSGPACK_ERRORS as exc:
        raise DecodeError(f"control payload is not valid MessagePack: {exc!r}") from exc


__all__ += [
    "CONTROL_TOPIC",
    "HEARTBEAT_TOPIC",
    "MAX_BATCH_EVENTS",
    "check_frames",
    "pack_batch",
    "pack_control",
    "plain_metadata",
    "unpack_batch",
    "unpack_control",
]
