"""Two nodes in one process: one publishes orders, the other subscribes with wildcards.

    python examples/pubsub.py

Both nodes run on 127.0.0.1 and find each other by mDNS on loopback.
"""

from __future__ import annotations

import asyncio
import secrets

import frys_zmq as frys

INTERFACE = "127.0.0.1"  # a local example: both nodes live in this process


async def main() -> None:
    cluster = f"example-{secrets.token_hex(3)}"  # keeps concurrent runs apart
    shop_config = frys.EventBusConfig(node_id="shop", cluster=cluster, interface=INTERFACE)
    audit_config = frys.EventBusConfig(node_id="audit", cluster=cluster, interface=INTERFACE)
    async with frys.EventBus(shop_config) as shop, frys.EventBus(audit_config) as audit:
        got: list[str] = []
        all_in = asyncio.Event()

        def note(topic: str) -> None:
            got.append(topic)
            if len(got) == 5:  # order.* takes 2 of the 3 events below, order.> all 3
                all_in.set()

        @audit.subscribe("order.*")  # exactly one token after "order."
        async def on_order(event: frys.Event) -> None:
            print(f"order.*  got {event.topic} {event.payload} from {event.source} #{event.seq}")
            note(event.topic)

        @audit.subscribe("order.>")  # one or more tokens after "order."
        async def on_any_order(event: frys.Event) -> None:
            print(f"order.>  got {event.topic} {event.payload} meta {dict(event.metadata)}")
            note(event.topic)

        await shop.wait_for_peers(1, timeout=15)
        await shop.publish("order.placed", {"order": 1, "total": 9.5}, metadata={"via": "web"})
        await shop.publish("order.eu.shipped", {"order": 1})  # only order.> matches this
        await shop.publish("order.paid", {"order": 1})
        await asyncio.wait_for(all_in.wait(), 10)
        print(f"audit received {len(got)} deliveries for 3 events")


if __name__ == "__main__":
    asyncio.run(main())
