"""Value types users hold: ``Event``, ``Request`` and the ``Reply`` outcomes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, TypeVar

from ._errors import FrysError, RequestTimeout

__all__ = ["Event", "Reply", "Request"]

T = TypeVar("T")

_EMPTY: Mapping[str, Any] = {}


class Event:
    """One event as a handler sees it.

    ``(source, incarnation, seq)`` identifies the event on the bus; ``id`` spells that
    identity as a string that sorts by publish time.
    """

    __slots__ = ("incarnation", "metadata", "payload", "seq", "source", "timestamp_ns", "topic")

    def __init__(
        self,
        topic: str,
        payload: Any,
        *,
        metadata: Mapping[str, Any] | None = None,
        source: str = "",
        incarnation: int = 0,
        seq: int = 0,
        timestamp_ns: int = 0,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.metadata: Mapping[str, Any] = metadata if metadata is not None else _EMPTY
        self.source = source
        self.incarnation = incarnation
        self.seq = seq
        self.timestamp_ns = timestamp_ns

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

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return (
            self.topic == other.topic
            and self.payload == other.payload
            and dict(self.metadata) == dict(other.metadata)
            and self.source == other.source
            and self.incarnation == other.incarnation
            and self.seq == other.seq
        )

    __hash__ = None  # type: ignore[assignment]  # mutable payloads: not hashable


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
