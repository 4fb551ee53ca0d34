"""The workloads: what a publisher sends and what a subscriber does with it, how it is paced
and how a receiver counts it. Shared by the frys roles and the baselines, so that both sides of
a comparison do exactly the same work.
"""

from __future__ import annotations

import array
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgpack

from ._constants import TICK
from ._report import percentiles

__all__ = ["WORKLOADS", "Complex", "Tally", "Workload", "paced", "paced_sync"]


class Workload:
    """What a publisher sends and what a subscriber does with it, shared by frys and raw."""

    name = "simple"
    #: True when the payload travels with metadata (frys: in the header; raw: in the message).
    has_metadata = False

    def __init__(self) -> None:
        self._template = self.template()

    def template(self) -> dict[str, Any]:
        return {
            "n": 0,
            "ts": 0,
            "user": "user-000042",
            "action": "page_view",
            "path": "/catalog/widgets/blue-widget",
            "session": "9f1c2e7a5b3d4f60",
            "ok": True,
            "score": 0.875,
            "tags": ["web", "eu", "beta"],
        }

    @classmethod
    def payload_bytes(cls) -> int:
        """Packed size of one payload (what MB/s counts)."""
        wl = cls()
        if isinstance(wl, _Large):
            return len(wl.blob)
        payload, _ = wl.make(123_456)
        return len(msgpack.packb(payload))

    def make(self, i: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
        payload = self._template.copy()
        payload["n"] = i
        payload["ts"] = time.time_ns()
        return payload, None

    def handle(self, payload: Any, metadata: Any) -> int:
        """The subscriber's work on one event; returns the event's number."""
        n: int = payload["n"]
        return n

    # The raw baseline ships metadata inside its one message.
    def wrap(self, payload: dict[str, Any], metadata: dict[str, Any] | None) -> Any:
        return payload if metadata is None else {"meta": metadata, "payload": payload}

    def unwrap(self, obj: Any) -> tuple[Any, Any]:
        return (obj, None) if not self.has_metadata else (obj["payload"], obj["meta"])


class Complex(Workload):
    name = "complex"
    has_metadata = True
    _REGIONS = ("eu", "us", "apac", "latam")

    def __init__(self) -> None:
        super().__init__()
        self._metas = [
            {
                "region": region,
                "priority": priority,
                "tenant": "acme-retail",
                "schema": "order.v3",
                "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            }
            for priority in range(10)
            for region in self._REGIONS
        ]
        self.passed = 0
        self.checksum = 0.0

    def template(self) -> dict[str, Any]:
        items = [
            {
                "sku": f"SKU-{k:05d}",
                "name": f"Widget model {k}",
                "qty": 1 + k % 3,
                "price": 9.99 + k,
                "attrs": {"color": ("red", "blue", "green")[k % 3], "size": "M", "weight_g": 120},
            }
            for k in range(6)
        ]
        return {
            "n": 0,
            "ts": 0,
            "order": {
                "id": "ord-2024-000000",
                "created": "2024-05-01T12:00:00Z",
                "customer": {
                    "id": "cust-88231",
                    "name": "Ada Lovelace",
                    "tier": "gold",
                    "address": {
                        "street": "12 Analytical Engine Way",
                        "city": "London",
                        "zip": "N1 9GU",
                        "country": "GB",
                    },
                },
                "items": items,
                "currency": "EUR",
                "channel": "web",
            },
            "audit": {"ip": "203.0.113.7", "agent": "Mozilla/5.0", "session": "9f1c2e7a5b3d"},
        }

    def make(self, i: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
        payload = self._template.copy()
        payload["n"] = i
        payload["ts"] = time.time_ns()
        return payload, self._metas[i % len(self._metas)]

    # The subscriber's work, as steps that both sides run: the baseline calls them in a
    # row, frys runs them as a MetadataFilter and an EventProcessingChain (see _frys_roles).

    @staticmethod
    def wanted(metadata: Any) -> bool:
        """The filter: only European and American orders of priority 3 and up."""
        return metadata.get("region") in ("eu", "us") and metadata.get("priority", 0) >= 3

    @staticmethod
    def validate(payload: Any) -> None:
        """Step 1: every line has a positive quantity and a price."""
        items = payload["order"]["items"]
        if not items or any(item["qty"] <= 0 or item["price"] < 0 for item in items):
            raise ValueError(f"bad order {payload['order']['id']}")

    @staticmethod
    def enrich(payload: Any) -> dict[str, float]:
        """Step 2: totals."""
        subtotal = sum(item["qty"] * item["price"] for item in payload["order"]["items"])
        return {"subtotal": subtotal, "tax": round(subtotal * 0.2, 2)}

    @staticmethod
    def transform(payload: Any, metadata: Any, totals: dict[str, float]) -> dict[str, Any]:
        """Step 3: the summary a downstream service wants."""
        order = payload["order"]
        return {
            "order_id": order["id"],
            "customer": order["customer"]["id"],
            "tier": order["customer"]["tier"],
            "country": order["customer"]["address"]["country"],
            "lines": len(order["items"]),
            "total": round(totals["subtotal"] + totals["tax"], 2),
            "region": metadata["region"],
        }

    def done(self, summary: dict[str, Any]) -> None:
        self.passed += 1
        self.checksum += float(summary["total"])

    def handle(self, payload: Any, metadata: Any) -> int:
        n: int = payload["n"]
        if not self.wanted(metadata):
            return n
        self.validate(payload)
        totals = self.enrich(payload)
        self.done(self.transform(payload, metadata, totals))
        return n


class _Large(Workload):
    name = "large"
    compressible = False

    def __init__(self) -> None:
        super().__init__()
        size = 1 << 20
        if self.compressible:
            rng = random.Random(7)
            rows = []
            total = 0
            while total < size:
                row = (
                    f'{{"sensor":"s-{rng.randrange(64):03d}","t":{1714560000 + total},'
                    f'"v":{rng.random():.4f},"unit":"degC","ok":true}}\n'
                ).encode()
                rows.append(row)
                total += len(row)
            self.blob = b"".join(rows)[:size]
        else:
            self.blob = random.Random(7).randbytes(size)

    def template(self) -> dict[str, Any]:
        return {"n": 0, "ts": 0, "blob": b""}

    def make(self, i: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
        return {"n": i, "ts": time.time_ns(), "blob": self.blob}, None

    def handle(self, payload: Any, metadata: Any) -> int:
        n: int = payload["n"]
        if len(payload["blob"]) != len(self.blob):
            raise ValueError("blob of the wrong size")
        return n


class _LargeCompressible(_Large):
    name = "large.compressible"
    compressible = True


class _LargeIncompressible(_Large):
    name = "large.incompressible"


WORKLOADS: dict[str, type[Workload]] = {
    "simple": Workload,
    "complex": Complex,
    "large.incompressible": _LargeIncompressible,
    "large.compressible": _LargeCompressible,
}


class Tally:
    """Counts events by number: exactly once, in order, one-way latency, first and last."""

    __slots__ = (
        "dup",
        "expected",
        "first_ns",
        "first_sent_ns",
        "high",
        "last_ns",
        "lat",
        "ooo",
        "seen",
        "unique",
    )

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.seen = bytearray(expected)
        self.unique = 0
        self.dup = 0
        self.ooo = 0
        self.high = -1
        self.first_ns = 0
        self.first_sent_ns = 0
        self.last_ns = 0
        self.lat = array.array("q")

    @property
    def complete(self) -> bool:
        return self.unique >= self.expected

    def add(self, n: int, sent_ns: int) -> bool:
        """Count event ``n`` published at ``sent_ns``; True once every event has arrived."""
        now = time.time_ns()
        if not self.first_ns:
            self.first_ns = now
            self.first_sent_ns = sent_ns
        self.last_ns = now
        if self.seen[n]:
            self.dup += 1
            return False
        self.seen[n] = 1
        self.unique += 1
        if n < self.high:
            self.ooo += 1
        else:
            self.high = n
        self.lat.append(now - sent_ns)
        return self.unique >= self.expected

    def summary(self) -> dict[str, Any]:
        return {
            "expected": self.expected,
            "received": self.unique,
            "dup": self.dup,
            "out_of_order": self.ooo,
            "first_ns": self.first_ns,
            "first_sent_ns": self.first_sent_ns,
            "last_ns": self.last_ns,
            "latency_ms": percentiles(self.lat),
        }


async def paced(
    count: int,
    rate: int,
    send: Callable[[int], Awaitable[Any]],
    sleep: Callable[[float], Awaitable[Any]],
) -> None:
    """Send ``count`` events at ``rate``/s: each tick sends what is due, then sleeps."""
    t0 = time.perf_counter()
    i = 0
    while i < count:
        due = min(count, int((time.perf_counter() - t0) * rate) + 1)
        while i < due:
            await send(i)
            i += 1
        await sleep(TICK)


def paced_sync(count: int, rate: int, send: Callable[[int], Any]) -> None:
    """``paced`` for a synchronous sender (the baseline), with the same ticks."""
    t0 = time.perf_counter()
    i = 0
    while i < count:
        due = min(count, int((time.perf_counter() - t0) * rate) + 1)
        while i < due:
            send(i)
            i += 1
        time.sleep(TICK)
