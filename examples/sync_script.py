"""The synchronous facade, for scripts and REPLs: no asyncio in sight.

python examples/sync_script.py
"""

from __future__ import annotations

import queue
import secrets

import frys_zmq as frys
from frys_zmq.sync import EventBus

INTERFACE = "127.0.0.1"  # a local example: both nodes live in this process


def main() -> None:
    cluster = f"example-{secrets.token_hex(3)}"
    sensor_config = frys.EventBusConfig(node_id="sensor", cluster=cluster, interface=INTERFACE)
    panel_config = frys.EventBusConfig(node_id="panel", cluster=cluster, interface=INTERFACE)
    with EventBus(sensor_config) as sensor, EventBus(panel_config) as panel:
        readings: queue.Queue[frys.Event] = queue.Queue()
        panel.subscribe("sensor.*.temperature", readings.put)  # runs on the bus thread
        panel.handle_request("panel.status", lambda request: {"ok": True, "asked": request.source})
        sensor.wait_for_peers(1, timeout=15)

        for room, celsius in [("kitchen", 21.5), ("garage", 9.0), ("attic", 27.25)]:
            sensor.publish(f"sensor.{room}.temperature", {"celsius": celsius})
        for _ in range(3):
            event = readings.get(timeout=10)
            print(f"{event.topic}: {event.payload['celsius']} C")
        print("status:", sensor.request("panel.status", timeout=5).unwrap())


if __name__ == "__main__":
    main()
