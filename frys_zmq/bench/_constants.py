"""The benchmark's fixed knobs, shared by the coordinator and the child processes."""

from __future__ import annotations

__all__ = ["BATCH", "HEARTBEAT", "IN_FLIGHT", "LATENCY_RATE", "LOOPBACK", "TICK"]

#: Every socket of the benchmark binds here: it measures the library, not a network.
LOOPBACK = "127.0.0.1"

#: Heartbeats of the benchmark's frys nodes: faster than the 1 s default so that peers are
#: ready sooner (a run spends less time in set-up); they are too few to matter to throughput.
HEARTBEAT = 0.2
#: Events per ``publish_batch`` call.
BATCH = 1000
#: Requests kept in flight by the concurrent request scenario.
IN_FLIGHT = 100
#: Pace of the latency scenario, events per second, and the pacer's tick.
LATENCY_RATE = 10_000
TICK = 0.001
