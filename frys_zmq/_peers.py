"""The peer table: who is in the mesh, how recently heard, and in what state. No I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PeerInfo", "PeerState", "PeerTable"]


class PeerState(enum.StrEnum):
    """Life cycle of a peer as one node sees it."""

    CONNECTING = "connecting"  #: announced, HELLO not answered yet
    ALIVE = "alive"  #: HELLO answered and heard from recently
    SUSPECT = "suspect"  #: missed a few heartbeats


@dataclass(slots=True)
class PeerInfo:
    """What this node knows about one peer (``EventBus.peers()`` returns copies)."""

    node_id: str
    cluster: str
    address: str
    pub_port: int
    router_port: int
    version: int = 0
    incarnation: int = 0
    state: PeerState = PeerState.CONNECTING
    first_seen: float = 0.0  #: monotonic seconds
    last_seen: float = 0.0  #: monotonic seconds
    served: frozenset[str] = frozenset()
    load: float = 0.0
    last_seq: int = 0
    #: The peer keeps a durable log (its events replay across its restarts).
    durable: bool = False
    #: Our SUB has heard this peer's PUB (its events reach us).
    receiving: bool = False
    #: The peer told us its SUB hears our PUB (our events reach it).
    sending: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def router_endpoint(self) -> str:
        return f"tcp://{self.address}:{self.router_port}"

    @property
    def pub_endpoint(self) -> str:
        return f"tcp://{self.address}:{self.pub_port}"

    @property
    def ready(self) -> bool:
        """Events flow both ways with this peer."""
        return self.state is not PeerState.CONNECTING and self.receiving and self.sending

    def age(self, now: float) -> float:
        return now - self.last_seen


class PeerTable:
    """Peers by node id, with heartbeat-driven suspicion and expiry."""

    def __init__(self, *, heartbeat_interval: float, ttl: float, suspect_after: int) -> None:
        self._peers: dict[str, PeerInfo] = {}
        self.heartbeat_interval = heartbeat_interval
        self.ttl = ttl
        self.suspect_after = suspect_after

    def get(self, node_id: str) -> PeerInfo | None:
        return self._peers.get(node_id)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._peers

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._peers.values()))

    def __len__(self) -> int:
        return len(self._peers)

    def add(self, peer: PeerInfo) -> PeerInfo | None:
        """Insert or replace ``peer``; return the entry it replaced, if any."""
        old = self._peers.get(peer.node_id)
        self._peers[peer.node_id] = peer
        return old

    def remove(self, node_id: str) -> PeerInfo | None:
        return self._peers.pop(node_id, None)

    def heard(self, node_id: str, now: float) -> PeerInfo | None:
        """Record a sign of life; a suspect peer becomes alive again."""
        peer = self._peers.get(node_id)
        if peer is not None:
            peer.last_seen = now
            if peer.state is PeerState.SUSPECT:
                peer.state = PeerState.ALIVE
        return peer

    def sweep(self, now: float) -> tuple[list[PeerInfo], list[PeerInfo]]:
        """Mark quiet peers suspect; remove and return those past the ttl.

        Returns ``(newly_suspect, expired)``.
        """
        suspect: list[PeerInfo] = []
        expired: list[PeerInfo] = []
        suspect_age = self.heartbeat_interval * self.suspect_after
        for peer in list(self._peers.values()):
            age = now - peer.last_seen
            if age > self.ttl:
                expired.append(peer)
                del self._peers[peer.node_id]
            elif age > suspect_age and peer.state is PeerState.ALIVE:
                peer.state = PeerState.SUSPECT
                suspect.append(peer)
        return suspect, expired
