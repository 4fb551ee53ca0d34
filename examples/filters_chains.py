"""Filters and processing chains: what a subscription does before its handler sees an event.

    python examples/filters_chains.py

A warehouse node publishes orders; a billing node takes only European ones of priority 3
and up (a MetadataFilter), and runs each through a chain (validate, enrich, transform).
A chain registered on the bus tags every event of "order.>" for every subscription.
"""

from __future__ import annotations

import asyncio
import secrets

import frys_zmq as frys

INTERFACE = "127.0.0.1"  # a local example: both nodes live in this process


def validate(event: frys.Event) -> frys.Event:
    if not event.payload["lines"]:
        raise ValueError("an order without lines")  # retried, then dead-lettered
    return event


def enrich(event: frys.Event) -> frys.Event:
    total = sum(qty * price for qty, price in event.payload["lines"])
    event.metadata = {**event.metadata, "total": round(total, 2)}  # this subscription only
    return event


def transform(event: frys.Event) -> frys.Event:
    summary = {"order": event.payload["id"], "total": event.metadata["total"]}
    return frys.Event(event.topic, summary, event.metadata, event.source, seq=event.seq)


def stamp(event: frys.Event) -> frys.Event:
    event.metadata = {**event.metadata, "seen_by": "billing-node"}
    return event


async def main() -> None:
    cluster = f"example-{secrets.token_hex(3)}"
    depot = frys.EventBusConfig(node_id="depot", cluster=cluster, interface=INTERFACE)
    billing_config = frys.EventBusConfig(node_id="billing", cluster=cluster, interface=INTERFACE)
    async with frys.EventBus(depot) as shop, frys.EventBus(billing_config) as billing:
        billed: list[frys.Event] = []
        done = asyncio.Event()

        async def invoice(event: frys.Event) -> None:
            billed.append(event)
            print(f"invoice {event.payload} ({event.metadata['seen_by']})")
            if len(billed) == 2:
                done.set()

        billing.register_processing_chain("order.>", frys.EventProcessingChain(stamp))
        sub = billing.subscribe(
            "order.placed",
            invoice,
            filter=frys.MetadataFilter(region={"eu"}, priority=lambda p: p >= 3),
            chain=frys.EventProcessingChain(validate, enrich, transform, name="billing"),
        )
        await shop.wait_for_peers(1, timeout=15)
        orders = [
            (1, "eu", 5, [(2, 9.5)]),
            (2, "us", 9, [(1, 100.0)]),  # not European
            (3, "eu", 1, [(1, 5.0)]),  # priority too low
            (4, "eu", 3, [(3, 2.25), (1, 4.0)]),
        ]
        for number, region, priority, lines in orders:
            await shop.publish(
                "order.placed",
                {"id": number, "lines": lines},
                metadata={"region": region, "priority": priority},
            )
        await asyncio.wait_for(done.wait(), 10)
        print(f"billed {len(billed)} of {len(orders)} orders; {sub.filtered} filtered out")


if __name__ == "__main__":
    asyncio.run(main())
