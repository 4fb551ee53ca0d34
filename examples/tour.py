"""The README's tour: one node that subscribes, serves a request, publishes and asks.

    python examples/tour.py                  # alone: it answers its own request
    python examples/tour.py orders-2 3 &     # or three of them in one cluster,
    python examples/tour.py orders-3 3 &     # each waiting for the other two
    python examples/tour.py orders-1 3

Pinned to 127.0.0.1: mDNS and every socket stay on this machine.
"""

from __future__ import annotations

import asyncio
import os
import sys

import frys_zmq as frys


async def get_profile(req: frys.Request) -> dict[str, str]:
    return {"user_id": req.payload["user_id"], "name": "Ada"}


async def main(node_id: str, mesh_size: int, cluster: str = "shop") -> None:
    config = frys.EventBusConfig(node_id=node_id, cluster=cluster, interface="127.0.0.1")
    async with frys.EventBus(config) as bus:
        seen = asyncio.Event()

        @bus.subscribe("user.*")  # decorator form ...
        async def on_user(event: frys.Event) -> None:
            print(event.topic, event.payload, dict(event.metadata), "from", event.source)
            if event.source == bus.node_id:
                seen.set()

        await bus.handle_request("user.get_profile", get_profile)  # ... and call form
        if mesh_size > 1:  # other processes of cluster "shop"
            peers = await bus.wait_for_peers(mesh_size - 1, timeout=10)
            print("peers:", sorted(p.node_id for p in peers))

        await bus.publish("user.created", {"user_id": "u1"}, metadata={"source": "web"})
        await asyncio.wait_for(seen.wait(), 5)

        reply = await bus.request("user.get_profile", {"user_id": "u1"}, timeout=1.0)
        match reply:
            case frys.Reply.Success(value=profile, responder=who):
                print("profile", profile, "from", who)
            case frys.Reply.Error(error=err):  # the handler raised, or nobody serves it
                print("failed:", err)
            case frys.Reply.Timeout():
                print("no answer in time")


if __name__ == "__main__":
    args = sys.argv[1:]
    node_id, size = args[0] if args else "orders-1", int(args[1]) if len(args) > 1 else 1
    asyncio.run(main(node_id, size, os.environ.get("TOUR_CLUSTER", "shop")))
