"""frys_zmq: a brokerless event bus for Python over ZeroMQ, with mDNS discovery."""

from __future__ import annotations

from ._bus import EventBus, PeerWaitTimeout, Publisher
from ._config import DeliveryMode, DiscoveryStrategy, EventBusConfig
from ._dispatch import Subscription
from ._errors import (
    AlreadyClosed,
    BadFrame,
    ChainError,
    ChecksumError,
    ConcurrencyError,
    ConfigError,
    DecodeError,
    DecompressionBomb,
    DiscoveryError,
    DuplicateNodeId,
    EncodeError,
    FrysError,
    HandlerError,
    InvalidTopic,
    LimitExceeded,
    MessageTooLarge,
    NoResponders,
    NotStarted,
    Overloaded,
    ProtocolError,
    QueueFull,
    RequestError,
    RequestTimeout,
    StorageError,
    SyncTimeout,
    TopicError,
    TransportError,
    UnknownProtocolVersion,
    WrongThread,
)
from ._event import Event, Reply, Request
from ._limits import Limits
from ._log import FsyncPolicy, LogRecord, PersistentEventQueue
from ._peers import PeerInfo, PeerState
from ._processing import EventFilter, EventProcessingChain, MetadataFilter
from ._queue import MemoryEventQueue, OverflowPolicy
from ._topics import pattern_matches, validate_pattern, validate_topic

__version__ = "0.1.0"

__all__ = [
    "AlreadyClosed",
    "BadFrame",
    "ChainError",
    "ChecksumError",
    "ConcurrencyError",
    "ConfigError",
    "DecodeError",
    "DecompressionBomb",
    "DeliveryMode",
    "DiscoveryError",
    "DiscoveryStrategy",
    "DuplicateNodeId",
    "EncodeError",
    "Event",
    "EventBus",
    "EventBusConfig",
    "EventFilter",
    "EventProcessingChain",
    "FrysError",
    "FsyncPolicy",
    "HandlerError",
    "InvalidTopic",
    "LimitExceeded",
    "Limits",
    "LogRecord",
    "MemoryEventQueue",
    "MessageTooLarge",
    "MetadataFilter",
    "NoResponders",
    "NotStarted",
    "OverflowPolicy",
    "Overloaded",
    "PeerInfo",
    "PeerState",
    "PeerWaitTimeout",
    "PersistentEventQueue",
    "ProtocolError",
    "Publisher",
    "QueueFull",
    "Reply",
    "Request",
    "RequestError",
    "RequestTimeout",
    "StorageError",
    "Subscription",
    "SyncTimeout",
    "TopicError",
    "TransportError",
    "UnknownProtocolVersion",
    "WrongThread",
    "__version__",
    "pattern_matches",
    "validate_pattern",
    "validate_topic",
]

for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type) and _obj.__module__.startswith("frys_zmq."):
        _obj.__module__ = "frys_zmq"
del _name, _obj
