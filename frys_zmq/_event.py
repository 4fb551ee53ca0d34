"""Value types users hold: ``Event``, ``Request`` and the ``Reply`` outcomes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, ClassVar, Generic, TypeVar

import msgspec

from ._errors import FrysError, RequestTimeout

__all__ = ["EMPTY_METADATA", "Event", "PendingPayload", "Reply", "Request"]

T = TypeVar("T")

#: Metadata of an event that has none: shared, so read-only.
EMPTY_METADATA: Mapping[str, Any] = MappingProxyType({})


class PendingPayload:
    """A remote payload not decoded yet: what ``Event.payload`` holds until a worker needs it.

    Queued events keep their payload as bytes, so a backlog costs the garbage collector
    nothing; the first subscription worker to take the event decodes it, in place, for all.
    Internal: handlers, filters and chains never see one. ``data`` is None for a payload
    that failed to decode.
    """

    __slots__ = ("data", "flags")

    def __init__(self, data: bytes | None, flags: int) -> None:
        self.data = data
        self.flags = flags

    def __repr__(self) -> str:
        if self.data is None:
            return "<undecodable payload>"
        return f"<payload of {len(self.data)} bytes, not decoded yet>"


class Event(msgspec.Struct, gc=False):
    """One event as a handler sees it.

    ``(source, incarnation, seq)`` identifies the event on the bus; ``id`` spells that
    identity as a string that sorts by publish time. Events are not tracked by the cyclic
    garbage collector (a subscriber makes hundreds of thousands a second): a payload that
    refers back to its own event is never freed.
    """

    topic: str
    payload: Any = None
    metadata: Mapping[str, Any] = EMPTY_METADATA
    source: str = ""
    incarnation: int = 0
    seq: int = 0
    timestamp_ns: int = 0

    @property
    def id(self) -> str:
        """Unique, time-sortable id: publish time, publisher, incarnation and sequence."""
        return f"{self.timestamp_ns:020d}-{self.source}-{self.incarnation:x}-{self.seq}"

    @property
    def timestamp(self) -> datetime:
        """Publish time as an aware UTC datetime."""
        return datetime.fromtimestamp(self.timestamp_ns / 1e9, tz=UTC)

    def __repr__(self) -> str:
        return (
            f"Event(topic={self.topic!r}, payload={self.payload!r}, source={self.source!r}, "
            f"seq={self.seq})"
        )


@dataclass(frozen=True, slots=True)
class Request:
    """A request as its handler sees it."""

    topic: str
    payload: Any
    metadata: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""
    correlation_id: str = ""


class Reply(Generic[T]):
    """Outcome of ``EventBus.request``: ``Reply.Success``, ``Reply.Error`` or ``Reply.Timeout``.

    Use ``match`` on the three cases, or ``unwrap()`` to get the value or raise.
    """

    __slots__ = ()
    ok: ClassVar[bool] = False

    def unwrap(self) -> T:
        """The value of a success; raises the error of an ``Error`` or ``RequestTimeout``."""
        raise NotImplementedError

    # The three outcomes are defined below and attached as attributes, so users write
    # ``frys.Reply.Success(value=...)`` in ``match`` statements.
    Success: ClassVar[type[_Success[Any]]]
    Error: ClassVar[type[_Error]]
    Timeout: ClassVar[type[_Timeout]]


@dataclass(frozen=True, slots=True)
class _Success(Reply[T]):
    value: T
    responder: str = ""
    ok: ClassVar[bool] = True

    def unwrap(self) -> T:
        return self.value


@dataclass(frozen=True, slots=True)
class _Error(Reply[Any]):
    error: FrysError
    responder: str = ""

    def unwrap(self) -> Any:
        raise self.error


@dataclass(frozen=True, slots=True)
class _Timeout(Reply[Any]):
    timeout: float
    topic: str = ""

    def unwrap(self) -> Any:
        raise RequestTimeout(f"no reply to {self.topic!r} within {self.timeout:g}s")


for _cls, _name in ((_Success, "Success"), (_Error, "Error"), (_Timeout, "Timeout")):
    _cls.__name__ = _name
    _cls.__qualname__ = f"Reply.{_name}"
    setattr(Reply, _name, _cls)
