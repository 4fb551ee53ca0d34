"""Soak test: a local mesh of node processes publishing to each other, with stalls injected.

    python tools/soak.py --nodes 3 --events 20000 --stall 1.5 --stall-every 4

Every node publishes ``--events`` numbered events (node k numbers from k * 10**7) while it
subscribes to all of them. Every ``--stall-every`` seconds one node, chosen in turn, is
stopped with SIGSTOP for ``--stall`` seconds and continued. At the end each node must have
received every other node's events exactly once and in order, or have reported what it lost
as gaps. Prints one JSON summary and exits 1 if anything was lost silently, duplicated or
reordered. Everything runs on 127.0.0.1 and finds itself by mDNS on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import sys
import time
import uuid
from typing import Any

from frys_zmq.testing import NodeProcess

SPAN = 10**7  # node k's events are numbered k * SPAN + i


async def soak(ns: argparse.Namespace) -> dict[str, Any]:
    cluster = f"soak-{uuid.uuid4().hex[:8]}"
    fast = ["--heartbeat", str(ns.heartbeat), "--ttl", str(ns.ttl)]
    nodes = [NodeProcess(f"n{k}", cluster=cluster, extra_args=fast) for k in range(ns.nodes)]
    started = time.monotonic()
    try:
        for node in nodes:
            await node.start()
            await node.call("subscribe", pattern="soak.>", quiet=True)
        for node in nodes:
            await node.call("wait_peers", n=ns.nodes - 1, timeout=20)
        for k, node in enumerate(nodes):
            await node.call(
                "publish_many",
                topic=f"soak.n{k}",
                count=ns.events,
                start=k * SPAN,
                background=True,
            )
        stalls = 0
        deadline = time.monotonic() + ns.max_seconds
        while time.monotonic() < deadline:
            got = [await node.call("received") for node in nodes]
            counts = [len(set(r)) for r in got]
            print(f"{time.monotonic() - started:6.1f}s received {counts}", file=sys.stderr)
            if all(c >= ns.nodes * ns.events for c in counts):  # its own ones too
                break
            if ns.stall > 0 and time.monotonic() - started > (stalls + 1) * ns.stall_every:
                victim = nodes[stalls % len(nodes)]
                assert victim.proc is not None
                os.kill(victim.proc.pid, signal.SIGSTOP)
                await asyncio.sleep(ns.stall)
                os.kill(victim.proc.pid, signal.SIGCONT)
                stalls += 1
            await asyncio.sleep(0.5)
        report: dict[str, Any] = {"nodes": ns.nodes, "events_each": ns.events, "stalls": stalls}
        report["seconds"] = round(time.monotonic() - started, 1)
        report["per_node"] = []
        for k, node in enumerate(nodes):
            received = await node.call("received")
            metrics = await node.call("metrics")
            report["per_node"].append(_check(k, ns, received, metrics))
        report["ok"] = all(n["ok"] for n in report["per_node"])
        return report
    finally:
        for node in nodes:
            await node.aclose()


def _check(k: int, ns: argparse.Namespace, received: list[int], metrics: dict[str, Any]) -> dict:
    by_source: dict[int, list[int]] = {}
    for n in received:
        by_source.setdefault(n // SPAN, []).append(n % SPAN)
    missing = dup = disorder = 0
    for source in range(ns.nodes):
        if source == k:
            continue  # its own events reach it locally
        seqs = by_source.get(source, [])
        dup += len(seqs) - len(set(seqs))
        disorder += sum(1 for a, b in itertools.pairwise(seqs) if b <= a)
        missing += ns.events - len(set(seqs))
    gaps = metrics.get("gaps", 0)
    return {
        "node": f"n{k}",
        "missing": missing,
        "reported_lost": gaps,
        "duplicates": dup,
        "out_of_order": disorder,
        "repaired": metrics.get("repaired", 0),
        "ok": dup == 0 and disorder == 0 and missing <= gaps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--events", type=int, default=20_000, help="per node")
    parser.add_argument("--stall", type=float, default=1.5, help="seconds a node is stopped")
    parser.add_argument("--stall-every", type=float, default=4.0)
    parser.add_argument("--heartbeat", type=float, default=0.2)
    parser.add_argument("--ttl", type=float, default=1.0)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    ns = parser.parse_args(argv)
    if ns.nodes < 2 or ns.events < 1:
        parser.error("--nodes must be at least 2 and --events positive")
    os.environ.setdefault("FRYS_INTERFACE", "127.0.0.1")
    report = asyncio.run(soak(ns))
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
