"""The error hierarchy: every public error is a :class:`FrysError`."""

from __future__ import annotations

__all__ = [
    "AlreadyClosed",
    "BadFrame",
    "ChainError",
    "ChecksumError",
    "ConcurrencyError",
    "ConfigError",
    "DecodeError",
    "DecompressionBomb",
    "DiscoveryError",
    "DuplicateNodeId",
    "EncodeError",
    "FrysError",
    "HandlerError",
    "InvalidTopic",
    "LimitExceeded",
    "MessageTooLarge",
    "NoResponders",
    "NotStarted",
    "Overloaded",
    "ProtocolError",
    "QueueFull",
    "RequestError",
    "RequestTimeout",
    "StorageError",
    "SyncTimeout",
    "TopicError",
    "TransportError",
    "UnknownProtocolVersion",
    "WrongThread",
]


class FrysError(Exception):
    """Root of every error frys_zmq raises."""


class ConfigError(FrysError, ValueError):
    """A configuration value is missing, malformed or out of range."""


class TopicError(FrysError, ValueError):
    """A topic or topic pattern breaks the topic grammar."""


class InvalidTopic(TopicError):
    """A topic or pattern is not valid; ``topic`` is what was given, ``reason`` why."""

    def __init__(self, topic: object, reason: str) -> None:
        super().__init__(f"invalid topic {topic!r}: {reason}")
        self.topic = topic
        self.reason = reason


class ProtocolError(FrysError):
    """A peer broke the wire protocol."""


class DecodeError(ProtocolError, ValueError):
    """Bytes from the wire (or the log) could not be decoded."""


class BadFrame(DecodeError):
    """A multipart message does not have the shape the protocol requires."""


class UnknownProtocolVersion(DecodeError):
    """A header carries a protocol major version this node does not speak."""

    def __init__(self, version: object) -> None:
        super().__init__(f"unknown protocol version {version!r}")
        self.version = version


class LimitExceeded(DecodeError):
    """A message breaks one of the configured size or shape limits."""


class MessageTooLarge(LimitExceeded):
    """A message (or part of it) is larger than the configured limit."""

    def __init__(self, size: int, limit: int, what: str = "message") -> None:
        super().__init__(f"{what} of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit
        self.what = what


class DecompressionBomb(LimitExceeded):
    """A compressed payload would expand past the decompressed-size cap."""

    def __init__(self, claimed: int, limit: int) -> None:
        super().__init__(f"payload would decompress to {claimed} bytes, cap is {limit}")
        self.claimed = claimed
        self.limit = limit


class EncodeError(FrysError, TypeError):
    """A value could not be encoded for the wire; the message names the offending type."""


class TransportError(FrysError):
    """A socket could not be bound, connected or used."""


class DiscoveryError(FrysError):
    """Peer discovery failed or found a conflict."""


class DuplicateNodeId(DiscoveryError):
    """Another live process already holds this node id in this cluster."""

    def __init__(self, node_id: str, cluster: str) -> None:
        super().__init__(f"node id {node_id!r} is already live in cluster {cluster!r}")
        self.node_id = node_id
        self.cluster = cluster


class RequestError(FrysError):
    """A request could not be answered."""


class NoResponders(RequestError):
    """No node serves the requested topic."""

    def __init__(self, topic: str) -> None:
        super().__init__(f"no node serves {topic!r}")
        self.topic = topic


class Overloaded(RequestError):
    """The serving node had ``max_pending_requests`` requests in progress and refused this one."""


class RequestTimeout(RequestError, TimeoutError):
    """No reply arrived within the timeout."""


class HandlerError(RequestError):
    """The remote (or local) request handler raised; ``remote_type`` names its exception."""

    def __init__(self, message: str, remote_type: str = "Exception") -> None:
        super().__init__(f"{remote_type}: {message}")
        self.remote_type = remote_type
        self.remote_message = message


class StorageError(FrysError):
    """The durable log or event store failed."""


class ChecksumError(StorageError):
    """A stored record's checksum does not match its contents."""


class ConcurrencyError(StorageError):
    """An optimistic-concurrency check failed (the stream moved on)."""


class ChainError(FrysError, TypeError):
    """A processing-chain step returned something other than an ``Event`` or ``None``."""


class QueueFull(FrysError):
    """A bounded queue is full and its overflow policy is to reject."""


class NotStarted(FrysError, RuntimeError):
    """The bus was used before ``start()`` / ``async with``."""


class AlreadyClosed(FrysError, RuntimeError):
    """The bus (or a subscription) was used after it was closed."""


class WrongThread(FrysError, RuntimeError):
    """A blocking call of the sync facade was made on the bus's own thread (in a handler),
    where it would wait for itself; use the asyncio API there (``bus.async_bus``)."""


class SyncTimeout(FrysError, TimeoutError):
    """A call through the synchronous facade did not finish within its timeout."""
