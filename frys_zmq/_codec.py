"""The payload codec: user data to MessagePack bytes (optionally lz4-framed) and back.

Type mapping on the wire (part of the protocol):

- nil, bool, int (-2**63 .. 2**64-1), float, str (UTF-8) and bin map to themselves; ``bytes``
  stay ``bytes`` on the way back. Tuples are sent as arrays and come back as lists; dict and
  list subclasses come back as plain dicts and lists.
- Map keys should be ``str`` or ``int`` (MessagePack also allows bytes, float, bool and None).
- Timezone-aware ``datetime``: the standard Timestamp extension (-1); it comes back as an equal
  instant with ``tzinfo=timezone.utc``. Years 1 and 9999 with an offset that leaves the datetime
  range in UTC cannot be decoded.
- Naive ``datetime``: extension 1 holding its ISO-8601 text; it comes back naive.
- ``date``: extension 2 holding its ISO-8601 text.

Every decode applies :class:`~frys_zmq._limits.Limits` before the sender can make us allocate,
and raises only :class:`~frys_zmq._errors.DecodeError` and its subclasses.
"""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime
from functools import reduce
from itertools import repeat
from operator import getitem
from typing import Any, Final

import lz4.frame
import msgpack
import msgspec

from ._errors import (
    ConfigError,
    DecodeError,
    DecompressionBomb,
    EncodeError,
    LimitExceeded,
    MessageTooLarge,
)
from ._limits import DEFAULT_LIMITS, Limits

__all__ = [
    "FLAG_COMPRESSED",
    "PayloadCodec",
    "ext_from_bytes",
    "ext_from_view",
    "packb",
    "unpack_limited",
]

#: Bit in the header's flags field: the payload is one lz4 frame that stores its content size.
FLAG_COMPRESSED: Final = 0x01

_KNOWN_FLAGS: Final = FLAG_COMPRESSED


class PayloadCodec:
    """Encodes payloads to ``(bytes, flags)`` and decodes them under the configured limits.

    Cheap to share: packing uses one reused Packer per thread.
    """

    __slots__ = ("_compression", "_depth", "_fast_max", "_limits", "_threshold")

    def __init__(
        self,
        *,
        limits: Limits = DEFAULT_LIMITS,
        compression: bool = True,
        compression_threshold: int = 4096,
    ) -> None:
        if not isinstance(limits, Limits):
            raise ConfigError(f"limits must be a Limits instance, got {limits!r}")
        if (
            not isinstance(compression_threshold, int)
            or isinstance(compression_threshold, bool)
            or compression_threshold < 0
        ):
            raise ConfigError(
                f"compression_threshold must be a non-negative int, got {compression_threshold!r}"
            )
        self._limits = limits
        self._compression = bool(compression)
        self._threshold = compression_threshold
        # Plain payloads up to this size take the short path in ``decode`` (see ``_unpack``).
        self._depth = limits.max_depth
        self._fast_max = (
            min(
                limits.max_blob_len,
                limits.max_container_len,
                limits.max_message_bytes,
                _COUNT_MAX_BYTES,
            )
            if limits.max_depth < _FAST_DEPTH_MAX
            else -1
        )

    @property
    def limits(self) -> Limits:
        """The limits applied when decoding."""
        return self._limits

    @property
    def compression(self) -> bool:
        """Whether payloads above the threshold are lz4-compressed."""
        return self._compression

    @property
    def compression_threshold(self) -> int:
        """Packed size in bytes above which compression is attempted."""
        return self._threshold

    def __repr__(self) -> str:
        return (
            f"PayloadCodec(limits={self._limits!r}, compression={self._compression!r}, "
            f"compression_threshold={self._threshold!r})"
        )

    def encode(self, obj: object) -> tuple[bytes, int]:
        """Return ``(payload, flags)`` for ``obj``; :class:`EncodeError` if it has no encoding.

        The payload is compressed only when compression is on, the packed size is above the
        threshold and the lz4 frame is actually smaller.
        """
        packed = packb(obj)
        size = len(packed)
        if size > self._depth:
            # Refuse here what every receiver would refuse: a silent drop there is worse.
            _check_encoded_depth(obj, packed, size, self._depth)
        if self._compression and size > self._threshold and _worth_compressing(packed, size):
            # store_size is the default, but the decoder depends on it: keep it explicit.
            compressed: bytes = lz4.frame.compress(packed, store_size=True)
            if len(compressed) < size:
                return compressed, FLAG_COMPRESSED
        return packed, 0

    def decode(self, data: bytes | memoryview, flags: int) -> Any:
        """Return the object in ``data``; raise only :class:`DecodeError` subclasses."""
        # Inlined short path of `_unpack` for the common small, uncompressed payload.
        if (
            flags == 0
            and type(data) is bytes
            and len(data) <= self._fast_max
            and (
                len(data) <= self._depth
                or len(data.translate(None, _NOT_CONTAINER_HEADERS)) <= self._depth
            )
        ):
            try:
                return _msgspec_decode(data)
            except Exception:
                pass  # `_fast_unpack` below says what is wrong
            return _fast_unpack(data)
        if not isinstance(flags, int) or flags & ~_KNOWN_FLAGS:
            raise DecodeError(f"unknown payload flags {flags!r}")
        limits = self._limits
        size = data.nbytes if isinstance(data, memoryview) else len(data)
        if size > limits.max_message_bytes:
            raise MessageTooLarge(size, limits.max_message_bytes, "payload")
        if flags & FLAG_COMPRESSED:
            data = _decompress(data, size, limits)
            size = len(data)
        return _unpack(data, size, limits)


def packb(obj: object) -> bytes:
    """Pack ``obj`` to MessagePack with the payload type mapping, reusing this thread's Packer.

    Raises :class:`EncodeError` for values MessagePack cannot represent.
    """
    try:
        packed: bytes = _PACKERS.pack(obj)
    except EncodeError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        # ValueError covers cycles ("recursion limit exceeded") and lone surrogates in str;
        # msgpack's pure-Python fallback reports cycles as RecursionError.
        raise EncodeError(f"cannot encode {type(obj).__qualname__} value: {exc}") from exc
    return packed


def unpack_limited(
    data: bytes | memoryview,
    limits: Limits,
    *,
    max_bytes: int | None = None,
    what: str = "message",
) -> Any:
    """Unpack exactly one MessagePack object from ``data`` under ``limits``.

    ``max_bytes`` (default ``limits.max_message_bytes``) caps ``len(data)``; a header decoder
    passes ``limits.max_header_bytes`` and ``what="header"``. Raises only :class:`DecodeError`
    subclasses: :class:`MessageTooLarge` for oversized input, :class:`LimitExceeded` for
    over-long or over-deep contents.
    """
    cap = limits.max_message_bytes if max_bytes is None else max_bytes
    size = data.nbytes if isinstance(data, memoryview) else len(data)
    if size > cap:
        raise MessageTooLarge(size, cap, what)
    return _unpack(data, size, limits)


# --- private helpers -----------------------------------------------------------------------

_EXT_NAIVE_DATETIME: Final = 1
_EXT_DATE: Final = 2
_EXT_ISO_MAX_LEN: Final = 32  # "YYYY-MM-DDTHH:MM:SS.ffffff" is 26; anything longer is junk
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

# LZ4 encodes a match length in 255-per-byte steps, so no frame expands more than ~255x; a
# declared size beyond that is a lie, refused before the decompressor allocates it.
_LZ4_MAX_RATIO: Final = 256

# Depth checking. msgpack's C unpacker has a fixed parse stack (1024 levels, probed at import),
# so very deep input raises StackError rather than crashing. For our smaller max_depth:
#  - a document with at most max_depth container-header bytes cannot be deeper: one C-speed
#    count (~0.5 ns/byte) clears almost every small payload;
#  - otherwise small documents are walked after decoding (cost grows with element count);
#  - large ones are decoded behind (stack - max_depth) one-element arrays, so the C stack
#    itself rejects excess depth before building it. That costs a fixed ~50 us, which beats
#    walking once the payload is past a few KiB.
_COUNT_MAX_BYTES: Final = 64 * 1024
# Payloads from this size on are sampled before lz4 is tried on all of them.
_SAMPLE_FROM: Final = 256 * 1024
_SAMPLE: Final = 16 * 1024
# msgspec's own guard is the interpreter's recursion limit; our depth limit must stay well
# below it for the msgspec route (deeper limits take msgpack's, with its fixed C stack).
_FAST_DEPTH_MAX: Final = 256
_WALK_MAX_BYTES: Final = 8 * 1024
_CONTAINER_HEADERS: Final = bytes([*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF])
_NOT_CONTAINER_HEADERS: Final = bytes(b for b in range(256) if b not in _CONTAINER_HEADERS)
_NESTING: Final = (dict, list, tuple)
_WRAP_BYTE: Final = b"\x91"  # fixarray holding one element
_msgpack_unpackb: Final = msgpack.unpackb


def _decompress(data: bytes | memoryview, size: int, limits: Limits) -> bytes:
    """Expand one lz4 frame, refusing it before allocation if it would break the cap."""
    try:
        info = lz4.frame.get_frame_info(data)
    except Exception as exc:
        raise DecodeError(f"malformed lz4 frame header: {exc}") from exc
    claimed = info["content_size"]
    if not claimed:
        raise DecodeError("lz4 frame does not declare its content size")
    cap = limits.max_decompressed_bytes
    if claimed > cap:
        raise DecompressionBomb(claimed, cap)
    if claimed > _LZ4_MAX_RATIO * size:
        raise DecompressionBomb(claimed, _LZ4_MAX_RATIO * size)
    decompressor = lz4.frame.LZ4FrameDecompressor()
    try:
        # max_length bounds the output even if the header lies about the content size.
        out: bytes = decompressor.decompress(data, max_length=claimed)
    except Exception as exc:
        raise DecodeError(f"corrupt lz4 frame: {exc}") from exc
    if not decompressor.eof or len(out) != claimed:
        raise DecodeError(
            f"lz4 frame is truncated or does not match its declared size of {claimed} bytes"
        )
    if decompressor.unused_data:
        raise DecodeError("trailing bytes after the lz4 frame")
    return out


def _unpack(data: bytes | memoryview, size: int, limits: Limits) -> Any:
    """Unpack one object of ``size`` bytes, enforcing length and depth limits."""
    max_depth = limits.max_depth
    if (
        size <= limits.max_blob_len
        and size <= limits.max_container_len
        and max_depth < _FAST_DEPTH_MAX
    ):
        # No string or container can be longer than the input, so the length limits hold
        # by themselves, and msgspec checks every length prefix against the bytes that are
        # left before it allocates. Its recursion guard stops hostile depth; our own limit
        # is checked by counting container headers (small input) or walking the result.
        if size <= max_depth or (
            size <= _COUNT_MAX_BYTES and _count_container_headers(data) <= max_depth
        ):
            return _fast_unpack(data)
        obj = _fast_unpack(data)
        _check_depth(obj, max_depth)
        return obj
    if _STACK_DEPTH and max_depth >= _STACK_DEPTH:
        return _unpackb(data, size, limits)  # the C stack is already the stricter bound
    if size <= max_depth or (
        size <= _COUNT_MAX_BYTES and _count_container_headers(data) <= max_depth
    ):
        return _unpackb(data, size, limits)
    if _STACK_DEPTH and size > _WALK_MAX_BYTES:
        wraps = _STACK_DEPTH - max_depth
        wrapped = _unpackb(b"".join((_WRAP_BYTE * wraps, data)), size + wraps, limits)
        return reduce(getitem, repeat(0, wraps), wrapped)
    obj = _unpackb(data, size, limits)
    _check_depth(obj, max_depth)
    return obj


def _fast_unpack(data: bytes | memoryview) -> Any:
    """msgspec's decoder, its errors translated."""
    try:
        return _msgspec_decode(data)
    except DecodeError:
        raise
    except RecursionError as exc:
        raise LimitExceeded("MessagePack nesting is too deep") from exc
    except Exception as exc:  # msgspec.DecodeError, and OverflowError for odd timestamps
        raise DecodeError(f"malformed MessagePack: {exc}") from exc


def _unpackb(data: bytes | memoryview, size: int, limits: Limits) -> Any:
    """Call msgpack with every limit set and translate whatever it raises.

    unpackb reads the caller's buffer in place (whose size the caller has capped), so the
    streaming Unpacker's ``max_buffer_size`` has no counterpart here.
    """
    blob = limits.max_blob_len
    # Arrays and maps are preallocated from their length prefix, so bound them by what the
    # input could hold (a byte per element, two per pair), not only by the configured limit.
    # (Conditionals rather than min(): this runs for every message.)
    arrays = limits.max_container_len
    maps = arrays
    if size < arrays:
        arrays = size
    if size >> 1 < maps:
        maps = size >> 1
    try:
        # raw=False and use_list=True are msgpack 1.x defaults: str stays str, arrays are lists.
        return _msgpack_unpackb(
            data,
            strict_map_key=False,
            timestamp=3,
            ext_hook=ext_from_bytes,
            max_str_len=blob,
            max_bin_len=blob,
            max_ext_len=blob,
            max_array_len=arrays,
            max_map_len=maps,
        )
    except DecodeError:
        raise
    except (msgpack.StackError, RecursionError) as exc:
        depth = min(limits.max_depth, _STACK_DEPTH or limits.max_depth)
        raise LimitExceeded(f"MessagePack nesting is deeper than {depth}") from exc
    except ValueError as exc:
        # msgpack reports length-prefix violations as "<n> exceeds max_<kind>_len(<limit>)".
        if "exceeds max_" in str(exc):
            raise LimitExceeded(f"MessagePack length prefix {exc}") from exc
        raise DecodeError(f"malformed MessagePack: {exc}") from exc
    except Exception as exc:
        raise DecodeError(f"malformed MessagePack: {type(exc).__name__}: {exc}") from exc


def _check_encoded_depth(obj: object, packed: bytes, size: int, max_depth: int) -> None:
    """Raise LimitExceeded if ``obj`` (packed as ``packed``) nests deeper than ``max_depth``."""
    if size <= _COUNT_MAX_BYTES and _count_container_headers(packed) <= max_depth:
        return
    _check_depth(obj, max_depth, what="the payload, deeper than the receivers' limit,")


def _worth_compressing(packed: bytes, size: int) -> bool:
    """For a big payload, whether a sample of it shrinks: lz4 costs ~0.3 ms per MB even on
    data it cannot compress, and a 16 KB sample from the middle says so for ~1% of that."""
    if size < _SAMPLE_FROM:
        return True
    mid = size // 2
    sample = packed[mid : mid + _SAMPLE]
    return len(lz4.frame.compress(sample)) < 0.9 * len(sample)


def _count_container_headers(data: bytes | memoryview) -> int:
    """Count bytes that could start an array or map: an upper bound on nesting depth."""
    raw = data if isinstance(data, bytes) else bytes(data)
    return len(raw.translate(None, _NOT_CONTAINER_HEADERS))


def _check_depth(obj: Any, max_depth: int, *, what: str = "MessagePack") -> None:
    """Raise LimitExceeded if maps and arrays nest deeper than ``max_depth`` (top level is 1).

    Dicts, lists and tuples count (and their subclasses: what the packer writes as maps and
    arrays), so it serves decoded documents and objects about to be encoded alike.
    """
    if not isinstance(obj, _NESTING):
        return
    # Iterative, so a deep document cannot exhaust the Python stack; keys are never containers.
    pending: list[tuple[Any, int]] = [(obj, 1)]
    pop, push = pending.pop, pending.append
    while pending:
        container, depth = pop()
        if depth > max_depth:
            raise LimitExceeded(f"{what} nests deeper than {max_depth}")
        depth += 1
        for value in container.values() if isinstance(container, dict) else container:
            if isinstance(value, _NESTING):
                push((value, depth))


def _default(obj: object) -> object:
    """Packer fallback for datetimes and dates; everything else is unencodable."""
    if isinstance(obj, datetime):
        if obj.utcoffset() is None:
            return msgpack.ExtType(_EXT_NAIVE_DATETIME, obj.isoformat().encode("ascii"))
        # Integer arithmetic: datetime.timestamp() is a float and loses microseconds.
        delta = obj - _EPOCH
        return msgpack.Timestamp(delta.days * 86400 + delta.seconds, delta.microseconds * 1000)
    if isinstance(obj, date):
        return msgpack.ExtType(_EXT_DATE, obj.isoformat().encode("ascii"))
    kind = type(obj)
    name = (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )
    raise EncodeError(f"cannot encode object of type {name}")


def ext_from_bytes(code: int, data: bytes) -> object:
    """Decode our extension types; any other code is a protocol error."""
    if code in (_EXT_NAIVE_DATETIME, _EXT_DATE):
        if len(data) > _EXT_ISO_MAX_LEN:
            raise DecodeError(f"extension {code} is {len(data)} bytes, too long for a date")
        text = data.decode("ascii")
        if code == _EXT_DATE:
            return date.fromisoformat(text)
        value = datetime.fromisoformat(text)
        if value.tzinfo is not None:
            raise DecodeError("naive-datetime extension carries a timezone")
        return value
    raise DecodeError(f"unknown MessagePack extension type {code}")


def ext_from_view(code: int, data: memoryview) -> object:
    """``ext_from_bytes`` for msgspec decoders, which hand extension data over as a view."""
    return ext_from_bytes(code, bytes(data))


def _probe_stack_depth() -> int:
    """Return the depth msgpack's unpacker caps nesting at, or 0 if it does not cap it cleanly."""
    depth = 1024
    try:
        msgpack.unpackb(_WRAP_BYTE * depth + b"\xc0")
    except Exception:
        return 0
    try:
        msgpack.unpackb(_WRAP_BYTE * (depth + 1) + b"\xc0")
    except msgpack.StackError:
        return depth
    except Exception:
        return 0
    return 0


class _PackerPerThread(threading.local):
    """A Packer per thread: reusing one saves ~1 us a call, sharing one across threads is unsafe."""

    def __init__(self) -> None:
        packer = msgpack.Packer(default=_default, use_bin_type=True, autoreset=True)
        self.pack = packer.pack


#: 1024 for msgpack's C extension; 0 (always walk instead) for the pure-Python fallback.
_STACK_DEPTH: Final = _probe_stack_depth()
_PACKERS: Final = _PackerPerThread()
# Thread-safe: a msgspec Decoder keeps no state between calls.
_msgspec_decode: Final = msgspec.msgpack.Decoder(ext_hook=ext_from_view).decode
