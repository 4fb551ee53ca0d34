"""Size and shape limits applied to everything that arrives from the wire or the log."""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import ConfigError

__all__ = ["DEFAULT_LIMITS", "Limits"]

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Bounds checked before any allocation whose size a remote sender controls."""

    #: Largest whole multipart message accepted (also set as ZMQ_MAXMSGSIZE).
    max_message_bytes: int = 64 * MiB
    #: Largest payload after decompression.
    max_decompressed_bytes: int = 64 * MiB
    #: Deepest nesting of maps/lists in a MessagePack document.
    max_depth: int = 64
    #: Most elements in one MessagePack array or map (4 Mi elements cost 32 MiB of list).
    #: Documents no longer than this decode on the fast path (no container can be longer
    #: than its document), so it sits above the common payload sizes.
    max_container_len: int = 4 * MiB
    #: Longest str/bin/ext inside a MessagePack document.
    max_blob_len: int = 64 * MiB
    #: Largest header frame.
    max_header_bytes: int = 64 * 1024
    #: Most bytes of one publisher's events held back while an earlier gap is repaired; past
    #: it, later events are dropped and asked for again once the gap is filled.
    max_held_bytes: int = 64 * MiB

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"limit {name} must be a positive int, got {value!r}")


DEFAULT_LIMITS = Limits()
