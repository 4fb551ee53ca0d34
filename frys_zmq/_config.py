"""``EventBusConfig``: every knob of a node, loaded from arguments, environment and TOML."""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import os
import re
import secrets
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _timing
from ._errors import ConfigError
from ._limits import DEFAULT_LIMITS, Limits

__all__ = [
    "DeliveryMode",
    "DiscoveryStrategy",
    "EventBusConfig",
    "validate_endpoint",
    "validate_name",
]

_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,31}")
_ENDPOINT_RE = re.compile(r"tcp://(?P<host>[^:/\s]+):(?P<port>[0-9]{1,5})")
_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_ENV_PREFIX = "FRYS_"


class DiscoveryStrategy(enum.StrEnum):
    """How a node finds its peers."""

    MDNS = "mdns"  #: multicast DNS (zeroconf) only
    STATIC = "static"  #: only the ROUTER endpoints listed in ``cluster_peers``
    MDNS_AND_STATIC = "mdns+static"  #: both
    NONE = "none"  #: no discovery: peers are added with ``EventBus.connect``


class DeliveryMode(enum.StrEnum):
    """Delivery guarantee between nodes."""

    RELIABLE = "reliable"  #: sequence numbers, gap repair, ``$frys.gap`` on loss
    FAST = "fast"  #: raw PUB/SUB, no sequencing


def validate_name(value: object, what: str) -> str:
    """Return ``value`` if it is a valid node id or cluster name, else raise ConfigError."""
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ConfigError(f"{what} must be 1-31 letters, digits, '-' or '_', got {value!r}")
    return value


def validate_endpoint(value: object, what: str = "endpoint") -> str:
    """Return ``value`` if it is ``tcp://HOST:PORT``, else raise ConfigError.

    HOST is an IPv4 address or a host name, PORT 1-65535: what a peer's ROUTER endpoint
    (``cluster_peers``, ``EventBus.connect``) must look like.
    """
    expected = "tcp://HOST:PORT (HOST an IPv4 address or a host name, PORT 1-65535)"
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a string {expected}, got {value!r}")
    match = _ENDPOINT_RE.fullmatch(value)
    if match is None or not 1 <= int(match["port"]) <= 65535 or not _is_host(match["host"]):
        raise ConfigError(f"{what} must be {expected}, got {value!r}")
    return value


def _is_host(host: str) -> bool:
    """An IPv4 address in dotted decimal, or a host name of RFC 1123 labels."""
    labels = host.split(".")
    if all(label.isdigit() for label in labels):  # looks like an address: must be one
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
        return True
    return len(host) <= 253 and all(_HOST_LABEL_RE.fullmatch(label) for label in labels)


def default_node_id() -> str:
    """Host name, pid and a random suffix, squeezed into the node-id grammar."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:12] or "node"
    return f"{host}-{os.getpid()}-{secrets.token_hex(3)}"[:31]


@dataclass(frozen=True, slots=True, kw_only=True)
class EventBusConfig:
    """Configuration of one node. Keyword-only; see ``load`` for env and TOML."""

    node_id: str = field(default_factory=default_node_id)
    cluster: str = "default"
    #: Address to bind sockets and announce on; ``None`` binds every address. The default
    #: comes from ``FRYS_INTERFACE`` even without ``load``, so an environment that pins the
    #: interface (a test session, a container) cannot be escaped by forgetting the argument.
    interface: str | None = field(default_factory=lambda: os.environ.get("FRYS_INTERFACE") or None)
    pub_port: int = 0  #: 0 picks an ephemeral port
    router_port: int = 0
    discovery_strategy: DiscoveryStrategy = DiscoveryStrategy.MDNS
    #: ROUTER endpoints (``tcp://host:port``) for static discovery.
    cluster_peers: tuple[str, ...] = ()
    enable_distributed: bool = True
    delivery: DeliveryMode = DeliveryMode.RELIABLE
    heartbeat_interval: float = _timing.HEARTBEAT_INTERVAL
    peer_ttl: float = _timing.PEER_TTL
    max_concurrent_events: int = 1000
    #: A handler that raises is called again this many times (exponential backoff starting
    #: at ``handler_retry_backoff`` seconds), then the event goes to ``$frys.dlq.<topic>``.
    handler_retries: int = 3
    handler_retry_backoff: float = 0.05
    event_queue_size: int = 10_000
    #: Bytes of big events (those sent alone, not in batches) a subscription queues before
    #: the node stops reading: 10,000 events of 1 MB would otherwise be 10 GB.
    event_queue_bytes: int = 64 * 1024 * 1024
    #: Events the publisher keeps in memory to answer NACKs.
    retention_ring_size: int = 200_000
    #: Bytes it keeps. Holding many big events has a cost beyond memory: each new one then
    #: lands in fresh pages, which in the bench made 1 MB publishes ~4x slower at 256 MB.
    retention_ring_bytes: int = 32 * 1024 * 1024
    #: Write every published event to a durable log first; replay from it, also after a
    #: restart (the node's sequence numbers then continue across restarts).
    enable_persistence: bool = False
    #: This node's own directory (log, durable cursors). Default:
    #: ``$XDG_DATA_HOME/frys_zmq/<cluster>/<node_id>`` (``~/.local/share/...``).
    data_dir: str | None = None
    fsync_policy: str = "interval"  #: ``always`` | ``interval`` (group commit) | ``never``
    fsync_interval: float = 0.05
    max_file_size: int = 64 * 1024 * 1024  #: log segment size before rotation
    retention_period: float | None = None  #: seconds; older log segments are removed
    retention_bytes: int | None = None  #: total log size kept
    #: Default of ``publish(ack=...)``: wait until the event is in the log.
    publish_ack: bool = False
    compression_enabled: bool = True
    compression_threshold: int = 4096
    monitoring_enabled: bool = True
    request_timeout: float = _timing.REQUEST_TIMEOUT
    #: Remote requests this node handles at once; more are refused with ``Overloaded``.
    max_pending_requests: int = 10_000
    #: ZeroMQ high-water marks (messages) of the event stream (PUB and SUB sockets).
    send_hwm: int = 100_000
    recv_hwm: int = 100_000
    limits: Limits = DEFAULT_LIMITS

    def __post_init__(self) -> None:
        validate_name(self.node_id, "node_id")
        validate_name(self.cluster, "cluster")
        if self.interface is not None:
            try:
                ipaddress.IPv4Address(self.interface)
            except ValueError as exc:
                raise ConfigError(
                    f"interface must be an IPv4 address, got {self.interface!r}"
                ) from exc
        for name in ("pub_port", "router_port"):
            port = getattr(self, name)
            if not isinstance(port, int) or not 0 <= port <= 65535:
                raise ConfigError(f"{name} must be 0..65535, got {port!r}")
        for name in ("heartbeat_interval", "peer_ttl", "request_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.peer_ttl <= self.heartbeat_interval:
            raise ConfigError("peer_ttl must be longer than heartbeat_interval")
        for name in (
            "max_concurrent_events",
            "event_queue_size",
            "event_queue_bytes",
            "retention_ring_size",
            "retention_ring_bytes",
            "send_hwm",
            "recv_hwm",
            "max_pending_requests",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if self.fsync_policy not in ("always", "interval", "never"):
            raise ConfigError(
                f"fsync_policy must be always, interval or never, got {self.fsync_policy!r}"
            )
        if not self.fsync_interval > 0:
            raise ConfigError("fsync_interval must be > 0")
        if not isinstance(self.max_file_size, int) or self.max_file_size < 4096:
            raise ConfigError("max_file_size must be an int >= 4096")
        if self.retention_period is not None and not self.retention_period > 0:
            raise ConfigError("retention_period must be > 0 seconds")
        if self.retention_bytes is not None and self.retention_bytes <= 0:
            raise ConfigError("retention_bytes must be > 0")
        if not isinstance(self.handler_retries, int) or self.handler_retries < 0:
            raise ConfigError("handler_retries must be an int >= 0")
        if not self.handler_retry_backoff >= 0:
            raise ConfigError("handler_retry_backoff must be >= 0")
        if not isinstance(self.compression_threshold, int) or self.compression_threshold < 0:
            raise ConfigError("compression_threshold must be an int >= 0")
        # Enums accept their string values too, which is what env and TOML give.
        for name, kind in _ENUM_FIELDS.items():
            object.__setattr__(self, name, _enum_value(name, kind, getattr(self, name)))
        object.__setattr__(self, "cluster_peers", _endpoints(self.cluster_peers))

    @property
    def node_dir(self) -> Path:
        """Directory for this node's log and durable-subscription cursors."""
        if self.data_dir is not None:
            return Path(self.data_dir)
        base = os.environ.get("XDG_DATA_HOME") or os.path.join(
            os.path.expanduser("~"), ".local", "share"
        )
        return Path(base) / "frys_zmq" / self.cluster / self.node_id

    @property
    def bind_host(self) -> str:
        """Address the sockets bind to."""
        return self.interface or "0.0.0.0"

    def replace(self, **changes: Any) -> EventBusConfig:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> EventBusConfig:
        """Build a config: ``overrides`` beat ``FRYS_*`` environment variables beat the TOML file.

        The TOML file may hold the keys at top level or under ``[frys]``.
        """
        values: dict[str, Any] = {}
        if path is not None:
            try:
                data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"cannot read config file {path}: {exc}") from exc
            section = data.get("frys", data)
            if not isinstance(section, dict):
                raise ConfigError("[frys] in the config file must be a table")
            values.update(section)
        values.update(_from_env(os.environ if env is None else env))
        values.update(overrides)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**{k: _coerce(k, v) for k, v in values.items()})


_ENUM_FIELDS: dict[str, type[enum.StrEnum]] = {
    "discovery_strategy": DiscoveryStrategy,
    "delivery": DeliveryMode,
}


def _enum_value(name: str, kind: type[enum.StrEnum], value: object) -> enum.StrEnum:
    """``value`` as a member of ``kind`` (its string value will do), else a ConfigError."""
    try:
        return kind(value)  # type: ignore[arg-type]  # any value: the enum says if it is one
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in kind)
        raise ConfigError(f"{name} must be one of {allowed}, got {value!r}") from None


def _endpoints(value: object) -> tuple[str, ...]:
    """``cluster_peers`` as a tuple of valid endpoints; a string is a comma-separated list."""
    if isinstance(value, str):
        value = [p.strip() for p in value.split(",") if p.strip()]
    if not isinstance(value, list | tuple | set | frozenset):
        raise ConfigError(f"cluster_peers must be a list of endpoints, got {value!r}")
    return tuple(
        validate_endpoint(endpoint, f"cluster_peers[{i}]") for i, endpoint in enumerate(value)
    )


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(EventBusConfig):
        raw = env.get(_ENV_PREFIX + f.name.upper())
        if raw is not None and f.name != "limits":
            out[f.name] = raw
    return out


_BOOL = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


def _coerce(name: str, value: Any) -> Any:
    """Turn strings from env/TOML into the field's type."""
    fields = {f.name: f for f in dataclasses.fields(EventBusConfig)}
    default = fields[name].default
    if not isinstance(value, str):
        if name == "cluster_peers" and isinstance(value, list):
            return tuple(value)
        if name == "limits" and isinstance(value, dict):
            try:
                return Limits(**value)
            except TypeError as exc:
                raise ConfigError(f"bad limits: {exc}") from exc
        return value
    try:
        if isinstance(default, bool):
            return _BOOL[value.strip().lower()]
        if isinstance(default, int):
            return int(value)
        if isinstance(default, float):
            return float(value)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"cannot read {name}={value!r}") from exc
    if name == "cluster_peers":
        return tuple(p.strip() for p in value.split(",") if p.strip())
    if name in ("retention_period", "retention_bytes"):
        try:
            return (
                None
                if value == ""
                else (float(value) if name == "retention_period" else int(value))
            )
        except ValueError as exc:
            raise ConfigError(f"cannot read {name}={value!r}") from exc
    if name in ("interface", "data_dir") and value == "":
        return None
    return value
