"""Request/reply between two nodes: a success, a handler error, no responders, a timeout.

python examples/request_reply.py
"""

from __future__ import annotations

import asyncio
import secrets

import frys_zmq as frys

INTERFACE = "127.0.0.1"  # a local example: both nodes live in this process

PROFILES = {"u1": {"name": "Ada", "plan": "pro"}}


async def get_profile(request: frys.Request) -> dict[str, str]:
    user = request.payload["user_id"]
    if user not in PROFILES:
        raise LookupError(f"no user {user}")
    return PROFILES[user]


async def slow_report(request: frys.Request) -> str:
    await asyncio.sleep(2.0)
    return "too late"


def show(label: str, reply: frys.Reply[object]) -> None:
    match reply:
        case frys.Reply.Success(value=value, responder=who):
            print(f"{label}: success from {who}: {value}")
        case frys.Reply.Error(error=error):
            print(f"{label}: error {type(error).__name__}: {error}")
        case frys.Reply.Timeout(timeout=seconds):
            print(f"{label}: timeout after {seconds}s")


async def main() -> None:
    cluster = f"example-{secrets.token_hex(3)}"
    server_config = frys.EventBusConfig(node_id="profiles", cluster=cluster, interface=INTERFACE)
    client_config = frys.EventBusConfig(node_id="web", cluster=cluster, interface=INTERFACE)
    async with frys.EventBus(server_config) as server, frys.EventBus(client_config) as client:
        await server.handle_request("user.get_profile", get_profile)
        await server.handle_request("report.build", slow_report)
        await client.wait_for_peers(1, timeout=15)

        show("u1", await client.request("user.get_profile", {"user_id": "u1"}, timeout=5))
        show("u2", await client.request("user.get_profile", {"user_id": "u2"}, timeout=5))
        show("billing", await client.request("billing.charge", {"amount": 5}, timeout=5))
        show("report", await client.request("report.build", None, timeout=0.5))


if __name__ == "__main__":
    asyncio.run(main())
