"""One run of each kind: start the child processes for it, drive them, collect the figures.

A run is one side of a comparison (``impl`` is "frys", "raw" or "zenoh"); the scenarios run
each twice and compare. ``Ctx`` carries what every run needs: the sizes, the progress bar,
a scratch directory, unique cluster names, and the child processes it reaps.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ._child import Child, Progress
from ._report import merge_latency, per_event_us, per_second, tally_figures
from ._workloads import WORKLOADS

__all__ = ["Ctx", "log_run", "mesh", "pubsub", "request"]


@dataclass
class Ctx:
    """What every run of one benchmark needs; ``procs`` reaps the children it starts."""

    quick: bool
    progress: Progress
    tmp: str
    profile_dir: str | None
    scale: float = 1.0
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def size(self, key: str) -> Any:
        """The size of a run (events, or seconds for ``latency_s``) for the mode and scale."""
        full, quick = _SIZES[key]
        value = quick if self.quick else full
        scaled = value * self.scale
        return max(1, int(scaled)) if isinstance(value, int) else scaled

    def cluster(self) -> str:
        """A cluster name no other run of this benchmark uses."""
        return f"bench-{os.getpid()}-{next(self._ids)}"

    def scratch(self, name: str) -> str:
        """A path under the scratch directory that no other run uses."""
        return os.path.join(self.tmp, f"{name}-{next(self._ids)}")

    @contextlib.contextmanager
    def procs(self, *specs: tuple[str, str, dict[str, Any]]) -> Iterator[list[Child]]:
        """Start children (label, role, params) and reap every one of them on the way out."""
        started: list[Child] = []
        try:
            for label, role, params in specs:
                started.append(Child(label, role, params, self.profile_dir))
            yield started
        finally:
            # Ask politely in parallel (each close waits), then insist.
            for child in started:
                child.request_exit()
            for child in started:
                child.close()


#: (full, quick) sizes of each run.
_SIZES: dict[str, tuple[Any, Any]] = {
    "simple.raw": (1_000_000, 40_000),
    "simple.per_event": (300_000, 20_000),
    "simple.batch": (300_000, 40_000),
    "complex": (100_000, 10_000),
    "large": (500, 20),
    "latency_s": (5.0, 1.0),
    "mesh3": (50_000, 8_000),
    "request.sequential": (10_000, 1_000),
    "request.inflight100": (50_000, 5_000),
    "log.append": (1_000_000, 50_000),
    "log.always": (3_000, 200),
}


def pubsub(
    ctx: Ctx,
    impl: str,
    workload: str,
    count: int,
    *,
    mode: str,
    rate: int | None = None,
    step: bool = True,
) -> dict[str, Any]:
    """One publisher process and one subscriber process; figures from the subscriber."""
    if step:
        label = f"{workload} {impl}" + (f" {mode}" if impl == "frys" else "")
        ctx.progress.step(label + (" paced" if rate else ""))
    cluster = ctx.cluster()
    common = {"cluster": cluster, "workload": workload, "count": count}
    sub_p = {**common, "node_id": "sub", "idle_s": 5.0, "max_s": 120.0}
    pub_p = {**common, "node_id": "pub", "mode": mode, "rate": rate}
    cap = 180.0
    with ctx.procs(("subscriber", f"{impl}_sub", sub_p), ("publisher", f"{impl}_pub", pub_p)) as (
        sub,
        pub,
    ):
        endpoint = sub.expect("ready", 60)["endpoint"]
        pub.expect("ready", 60)
        pub.send("connect", endpoints=[endpoint])
        # A raw subscriber sees the publisher's warm-up messages; a frys publisher's
        # wait_for_peers covers both directions.
        (sub if impl == "raw" else pub).expect("peered", 30)
        sub.send("go")
        pub.send("go")
        published = pub.expect("published", cap)
        result = sub.expect("result", cap)
        pub.send("stop")
        pub_result = pub.expect("result", 30)
    fig = tally_figures(result["tally"], WORKLOADS[workload].payload_bytes())
    fig["publish_per_s"] = per_second(published["count"], published["seconds"])
    fig["peak_rss_mb"] = {"publisher": pub_result["rss_mb"], "subscriber": result["rss_mb"]}
    fig["cpu_us_per_event"] = {
        "publisher": per_event_us(pub_result["cpu_s"], published["count"]),
        "subscriber": per_event_us(result["cpu_s"], fig["received"]),
    }
    fig["extra"] = {k: v for k, v in result.items() if k not in ("kind", "tally", "rss_mb")}
    fig["extra"]["publisher"] = {k: v for k, v in pub_result.items() if k not in ("kind", "rss_mb")}
    return fig


def mesh(ctx: Ctx, impl: str, count: int) -> dict[str, Any]:
    """Three node processes that each publish ``count`` events and receive all the others'."""
    ctx.progress.step(f"mesh3 {impl}")
    cluster = ctx.cluster()
    ids = ["m0", "m1", "m2"]
    specs = [
        (
            f"node {i}",
            f"{impl}_mesh",
            {
                "cluster": cluster,
                "node_id": node,
                "ids": ids,
                "count": count,
                "idle_s": 5.0,
                "max_s": 120.0,
            },
        )
        for i, node in enumerate(ids)
    ]
    with ctx.procs(*specs) as nodes:
        endpoints = [n.expect("ready", 60)["endpoint"] for n in nodes]
        for i, node in enumerate(nodes):
            node.send("connect", endpoints=[e for j, e in enumerate(endpoints) if j != i])
        for node in nodes:
            node.expect("peered", 30)
        for node in nodes:
            node.send("go")
        results = [n.expect("result", 180) for n in nodes]
        for node in nodes:
            node.send("stop")
    tallies = [t for r in results for t in r["tallies"]]
    first = min((t["first_ns"] for t in tallies if t["first_ns"]), default=0)
    first_sent = min((t["first_sent_ns"] for t in tallies if t["first_ns"]), default=0)
    last = max((t["last_ns"] for t in tallies), default=0)
    merged = {
        "expected": sum(t["expected"] for t in tallies),
        "received": sum(t["received"] for t in tallies),
        "dup": sum(t["dup"] for t in tallies),
        "out_of_order": sum(t["out_of_order"] for t in tallies),
        "first_ns": first,
        "first_sent_ns": first_sent,
        "last_ns": last,
        "latency_ms": merge_latency([r["latency_ms"] for r in results]),
    }
    fig = tally_figures(merged, WORKLOADS["simple"].payload_bytes())
    fig["publish_per_s"] = sum(per_second(r["published"], r["publish_s"]) for r in results)
    fig["peak_rss_mb"] = {f"node{i}": r["rss_mb"] for i, r in enumerate(results)}
    # Each node publishes, sends and receives: CPU of all three per event delivered remotely.
    fig["cpu_us_per_event"] = {
        "all_nodes": per_event_us(sum(r["cpu_s"] for r in results), fig["received"])
    }
    fig["extra"] = {"local_delivered": sum(r.get("local", 0) for r in results)}
    return fig


def request(ctx: Ctx, impl: str, count: int, in_flight: int) -> dict[str, Any]:
    """A client process keeping ``in_flight`` echo requests to a server process going."""
    ctx.progress.step(f"request {impl} x{in_flight}")
    cluster = ctx.cluster()
    with ctx.procs(
        ("server", f"{impl}_server", {"cluster": cluster, "node_id": "server"}),
        (
            "client",
            f"{impl}_client",
            {
                "cluster": cluster,
                "node_id": "client",
                "count": count,
                "in_flight": in_flight,
                # A loopback round trip never needs a second; a reply that has not come by
                # then is counted as lost. The cap bounds the run if replies stall.
                "timeout_s": 1.0,
                "max_s": 3.0 if ctx.quick else 15.0,
            },
        ),
    ) as (server, client):
        endpoint = server.expect("ready", 60)["endpoint"]
        client.expect("ready", 60)
        client.send("connect", endpoints=[endpoint])
        client.expect("peered", 30)
        server.send("go")  # starts the server's CPU count
        client.send("go")
        result = client.expect("result", 180)
        server.send("stop")
        server_result = server.expect("result", 30)
    seconds = result["seconds"]
    ok = result["ok"]
    attempted = result["attempted"]
    eps = per_second(ok, seconds)
    size = WORKLOADS["simple"].payload_bytes()
    extra: dict[str, Any] = {"errors": result.get("errors", {})}
    if attempted < count:
        extra["stopped_early"] = f"time cap reached after {attempted} of {count} requests"
    if "metrics" in result:
        extra["client_metrics"] = result["metrics"]
        extra["server_metrics"] = server_result.get("metrics", {})
    return {
        "events": attempted,
        "received": ok,
        "lost": attempted - ok,
        "dup": result.get("dup", 0),
        "out_of_order": 0,
        "seconds": round(seconds, 4),
        "events_per_s": eps,
        "mb_per_s": round(eps * size / 1e6, 2),
        "latency_ms": result["latency_ms"],
        "publish_per_s": eps,
        "peak_rss_mb": {"client": result["rss_mb"], "server": server_result["rss_mb"]},
        "cpu_us_per_event": {
            "client": per_event_us(result["cpu_s"], attempted),
            "server": per_event_us(server_result["cpu_s"], attempted),
        },
        "extra": extra,
    }


def log_run(ctx: Ctx, impl: str, params: dict[str, Any]) -> dict[str, Any]:
    """One log process appending or replaying (``params["mode"]``) in ``params["dir"]``."""
    ctx.progress.step(f"log {params['mode']} {params.get('policy', '')} {impl}")
    # Start each run on a quiet disk: write-back of the previous run's hundreds of MB would
    # otherwise land in this run's fsyncs.
    os.sync()
    with ctx.procs(("log", f"{impl}_log", params)) as (child,):
        result = child.expect("result", 300)
    count = result["count"]
    seconds = result["seconds"]
    eps = per_second(count, seconds)
    return {
        "events": params["count"],
        "received": count,
        "lost": params["count"] - count,
        "dup": 0,
        "out_of_order": result.get("out_of_order", 0),
        "seconds": round(seconds, 4),
        "events_per_s": eps,
        "mb_per_s": round(eps * result["record_bytes"] / 1e6, 2),
        "latency_ms": result["latency_ms"],
        "publish_per_s": eps,
        "peak_rss_mb": {"log": result["rss_mb"]},
        "cpu_us_per_event": {"log": per_event_us(result["cpu_s"], count)},
        "extra": {k: v for k, v in result.items() if k not in ("kind", "latency_ms", "rss_mb")},
    }
