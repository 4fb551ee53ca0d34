"""mDNS discovery with python-zeroconf's asyncio API.

Only announcements live here: who is out there and on which ports. Whether a peer is alive
is decided by heartbeats in the node, not by mDNS caches.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from zeroconf import (
    BadTypeInNameException,
    IPVersion,
    NonUniqueNameException,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from . import _timing
from ._config import validate_name
from ._errors import ConfigError, DiscoveryError, DuplicateNodeId
from ._wire import PROTOCOL_MAJOR

__all__ = ["SERVICE_TYPE", "Announcement", "MdnsDiscovery"]

log = logging.getLogger("frys_zmq.discovery")

SERVICE_TYPE = "_frys._tcp.local."


@dataclass(frozen=True, slots=True)
class Announcement:
    """One node as it announces itself over mDNS (or a HELLO)."""

    node_id: str
    cluster: str
    address: str
    pub_port: int
    router_port: int
    version: int
    incarnation: int
    gateway_port: int | None = None

    @property
    def instance_name(self) -> str:
        return f"{self.node_id}@{self.cluster}.{SERVICE_TYPE}"


def _txt(announcement: Announcement) -> dict[str, str]:
    txt = {
        "v": str(announcement.version),
        "id": announcement.node_id,
        "cluster": announcement.cluster,
        "pub": str(announcement.pub_port),
        "rtr": str(announcement.router_port),
        "inc": str(announcement.incarnation),
    }
    if announcement.gateway_port is not None:
        txt["gw"] = str(announcement.gateway_port)
    return txt


def parse_service_info(info: AsyncServiceInfo) -> Announcement | None:
    """Read an announcement from a resolved service, or None if it is not a frys node."""
    props = {
        (k.decode(errors="replace") if isinstance(k, bytes) else str(k)): (
            v.decode(errors="replace") if isinstance(v, bytes) else ""
        )
        for k, v in (info.properties or {}).items()
    }
    try:
        node_id = validate_name(props.get("id"), "node id")
        cluster = validate_name(props.get("cluster"), "cluster")
        version = int(props["v"])
        pub = int(props["pub"])
        rtr = int(props["rtr"])
        inc = int(props.get("inc", "0"))
        gw = int(props["gw"]) if props.get("gw") else None
    except (KeyError, ValueError, ConfigError):
        return None
    if not (0 < pub < 65536 and 0 < rtr < 65536):
        return None
    addresses = info.parsed_addresses(IPVersion.V4Only)
    if not addresses:
        return None
    # Prefer a routable address; loopback only when that is all there is.
    address = next((a for a in addresses if not a.startswith("127.")), addresses[0])
    return Announcement(node_id, cluster, address, pub, rtr, version, inc, gw)


class MdnsDiscovery:
    """Announce this node (optional) and report the frys nodes found on the link.

    ``interface=None`` uses every interface (zeroconf's default for real users); tests and
    demos pass ``"127.0.0.1"``.
    """

    def __init__(
        self,
        *,
        interface: str | None,
        on_found: Callable[[Announcement], None],
        on_removed: Callable[[str, str], None] | None = None,
        cluster: str | None = None,
    ) -> None:
        self._interface = interface
        self._on_found = on_found
        self._on_removed = on_removed
        self._cluster = cluster
        self._azc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._announce: asyncio.Future[Any] | None = None
        #: Set once our own name is registered (at once when there is none to register).
        self._registered = asyncio.Event()
        self._lookups: set[asyncio.Task[None]] = set()
        self._closed = False

    async def start(self, own: Announcement | None = None) -> None:
        """Register ``own`` (if given; fails if its name is taken) and start browsing."""
        if own is None:
            self._registered.set()
        interfaces: list[str] | object
        interfaces = [self._interface] if self._interface else None
        try:
            if interfaces is None:
                self._azc = AsyncZeroconf(ip_version=IPVersion.V4Only)
            else:
                self._azc = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
        except OSError as exc:
            raise DiscoveryError(f"cannot start mDNS on {self._interface or 'all'}: {exc}") from exc
        # Browse first: peers are looked up while our own name is being probed (half a
        # second or more); they are reported once the name is ours, so a duplicate node id
        # never greets anyone.
        self._browser = AsyncServiceBrowser(
            self._azc.zeroconf, SERVICE_TYPE, handlers=[self._on_state_change]
        )
        if own is not None:
            address = self._interface or _primary_address()
            self._info = AsyncServiceInfo(
                SERVICE_TYPE,
                own.instance_name,
                addresses=[socket.inet_aton(address)],
                port=own.router_port,
                properties=_txt(own),
                server=f"{own.node_id}-{own.cluster}.local.",
            )
            try:
                # Probing happens here (a taken name raises); the announcements follow in a
                # task we keep, so closing soon after start leaves nothing pending.
                announce = await self._azc.async_register_service(self._info)
                self._announce = asyncio.ensure_future(announce)
                self._registered.set()
            except NonUniqueNameException as exc:
                await self.aclose()
                raise DuplicateNodeId(own.node_id, own.cluster) from exc
            except BadTypeInNameException as exc:
                await self.aclose()
                raise DiscoveryError(f"bad mDNS name: {exc}") from exc

    async def aclose(self) -> None:
        """Unregister (sending goodbyes), stop browsing and close zeroconf. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._lookups):
            task.cancel()
        if self._lookups:
            await asyncio.gather(*self._lookups, return_exceptions=True)
        azc, self._azc = self._azc, None
        if azc is None:
            return
        try:
            if self._browser is not None:
                await self._browser.async_cancel()
            if self._info is not None:
                if self._announce is not None and not self._announce.done():
                    self._announce.cancel()
                # unregister only schedules the goodbye; async_close() would stop it unsent.
                goodbye = await azc.async_unregister_service(self._info)
                await goodbye
        except Exception:  # closing must go on whatever zeroconf thinks
            log.debug("mDNS unregister failed", exc_info=True)
        finally:
            await azc.async_close()

    def _on_state_change(
        self,
        zeroconf: Zeroconf,
        service_type: str,
        name: str,
        state_change: ServiceStateChange,
    ) -> None:
        if self._closed:
            return
        if self._cluster is not None and not name.endswith(f"@{self._cluster}.{SERVICE_TYPE}"):
            return
        if state_change is ServiceStateChange.Removed:
            if self._on_removed is not None:
                node, _, rest = name.partition("@")
                self._on_removed(node, rest.split(".", 1)[0])
            return
        task = asyncio.get_running_loop().create_task(self._lookup(service_type, name))
        self._lookups.add(task)
        task.add_done_callback(self._lookups.discard)

    async def _lookup(self, service_type: str, name: str) -> None:
        azc = self._azc
        if azc is None:
            return
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(azc.zeroconf, int(_timing.MDNS_LOOKUP_TIMEOUT * 1000)):
            log.debug("mDNS lookup of %s timed out", name)
            return
        found = parse_service_info(info)
        if found is None:
            log.debug("ignoring malformed frys announcement %s", name)
            return
        if found.version // 100 != PROTOCOL_MAJOR:
            log.info("ignoring %s: protocol version %s", name, found.version)
            return
        if self._cluster is not None and found.cluster != self._cluster:
            return
        await self._registered.wait()
        if not self._closed:
            self._on_found(found)


def _primary_address() -> str:
    """Best guess at this host's LAN address (no packet is sent: UDP connect only)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: routing lookup only, nothing is sent
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"
