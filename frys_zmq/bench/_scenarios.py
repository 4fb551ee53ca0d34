"""The scenarios: each compares frys with its baseline on one workload and sets a target.

A scenario group runs its frys and baseline runs (``_runs``) and turns their figures into
report entries (``_report.scenario_entry``); ``GROUPS`` lists the groups ``--only`` can name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._child import BenchError
from ._constants import BATCH, IN_FLIGHT, LATENCY_RATE, TICK
from ._report import Met, ratio, scenario_entry
from ._runs import Ctx, log_run, mesh, pubsub, request
from ._workloads import WORKLOADS

__all__ = ["GROUPS", "Group", "run_zenoh_peer"]


@dataclass(frozen=True)
class Group:
    """A scenario group: what runs it, its child runs (for the progress bar), its entries."""

    run: Callable[[Ctx], dict[str, Any]]
    runs: int  # child runs, for the progress bar
    names: tuple[str, ...]


# -- event scenarios -----------------------------------------------------------------------


def _run_simple(ctx: Ctx) -> dict[str, Any]:
    wl = "simple"
    base = pubsub(ctx, "raw", wl, ctx.size("simple.raw"), mode="per_event")
    per_event = pubsub(ctx, "frys", wl, ctx.size("simple.per_event"), mode="per_event")
    batch = pubsub(ctx, "frys", wl, ctx.size("simple.batch"), mode="batch")
    size = WORKLOADS[wl].payload_bytes()
    return {
        "simple.per_event": scenario_entry(
            "simple.per_event",
            f"1 publisher -> 1 subscriber process, ~{size} B events, reliable mode, "
            "await publish() per event, async handler",
            per_event,
            base,
            ">=250,000 ev/s delivered and >=0.3x raw pyzmq msgs/s",
            lambda f, b, r: f["events_per_s"] >= 250_000 and r["events_per_s"] >= 0.3,
        ),
        "simple.batch": scenario_entry(
            "simple.batch",
            f"as simple.per_event, published with publish_batch() of {BATCH} events",
            batch,
            base,
            ">=1,000,000 ev/s delivered and >=1.2x raw pyzmq msgs/s",
            lambda f, b, r: f["events_per_s"] >= 1_000_000 and r["events_per_s"] >= 1.2,
        ),
    }


def _run_complex(ctx: Ctx) -> dict[str, Any]:
    n = ctx.size("complex")
    base = pubsub(ctx, "raw", "complex", n, mode="batch")
    frys = pubsub(ctx, "frys", "complex", n, mode="batch")
    size = WORKLOADS["complex"].payload_bytes()
    entry = scenario_entry(
        "complex",
        f"~{size} B nested payloads with metadata, publish_batch(); the subscriber applies a "
        "metadata filter and a 3-step chain (validate, enrich, transform)",
        frys,
        base,
        ">=100,000 ev/s",
        lambda f, b, r: f["events_per_s"] >= 100_000,
    )
    entry["notes"].append(
        "frys runs the work as an EventProcessingChain (a counting step, a MetadataFilter, "
        "validate, enrich, transform) ahead of an async handler; the baseline calls the same "
        "step functions in a row (and ships the metadata inside its single message)."
    )
    passed = frys["extra"].get("passed_filter")
    if passed is not None:
        entry["notes"].append(f"{passed} of {frys['received']} events passed the filter.")
    return {"complex": entry}


def _run_large(ctx: Ctx) -> dict[str, Any]:
    out: dict[str, Any] = {}
    n = ctx.size("large")
    for variant in ("incompressible", "compressible"):
        wl = f"large.{variant}"
        base = pubsub(ctx, "raw", wl, n, mode="per_event")
        frys = pubsub(ctx, "frys", wl, n, mode="per_event")
        entry = scenario_entry(
            wl,
            f"1 MiB {variant} blob per event, await publish() per event",
            frys,
            base,
            ">=0.75x raw pyzmq bytes/s",
            lambda f, b, r: r["mb_per_s"] >= 0.75,
        )
        entry["notes"].append(
            "frys compresses payloads above compression_threshold (4096 B) with lz4 when that "
            "makes them smaller; the baseline sends the packed bytes as they are."
        )
        out[wl] = entry
    return out


def _run_latency(ctx: Ctx) -> dict[str, Any]:
    n = int(ctx.size("latency_s") * LATENCY_RATE)
    base = pubsub(ctx, "raw", "simple", n, mode="per_event", rate=LATENCY_RATE)
    frys = pubsub(ctx, "frys", "simple", n, mode="per_event", rate=LATENCY_RATE)

    def met(f: dict[str, Any], b: dict[str, Any], r: dict[str, Any]) -> bool:
        return (
            r["latency_p50"] is not None
            and r["latency_p50"] <= 1.5
            and (f["latency_ms"]["p99"] <= 2.0)
        )

    entry = scenario_entry(
        "latency",
        f"simple events paced at {LATENCY_RATE:,}/s (sent in {TICK * 1000:g} ms ticks), "
        "one-way latency from the publish call to the handler, across processes",
        frys,
        base,
        "p50 <=1.5x raw one-way p50 at the same pace, p99 <=2 ms",
        met,
    )
    return {"latency": entry}


def _run_mesh3(ctx: Ctx) -> dict[str, Any]:
    n = ctx.size("mesh3")
    base = mesh(ctx, "raw", n)
    frys = mesh(ctx, "frys", n)
    entry = scenario_entry(
        "mesh3",
        f"3 node processes, each publishes {n:,} events (publish_batch) and subscribes to all; "
        "aggregate events delivered across processes per second",
        frys,
        base,
        ">=300,000 ev/s total",
        lambda f, b, r: f["events_per_s"] >= 300_000,
    )
    entry["notes"].append(
        "events_per_s counts deliveries from the other two nodes only; each node's own events "
        f"also reach its own subscription locally ({frys['extra'].get('local_delivered', 0):,} "
        "in total, not counted)."
    )
    return {"mesh3": entry}


def _run_request(ctx: Ctx) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, in_flight, target, minimum in (
        ("request.sequential", 1, ">=0.7x raw DEALER/ROUTER round trips/s", 0.7),
        ("request.inflight100", IN_FLIGHT, ">=0.6x raw DEALER/ROUTER round trips/s", 0.6),
    ):
        n = ctx.size(name)
        base = request(ctx, "raw", n, in_flight)
        frys = request(ctx, "frys", n, in_flight)
        out[name] = scenario_entry(
            name,
            f"request/reply of ~{WORKLOADS['simple'].payload_bytes()} B echoed by a handler in "
            f"another process, {in_flight} in flight",
            frys,
            base,
            target,
            _events_ratio_at_least(minimum),
        )
        out[name]["notes"].append("latency is the round trip, request call to reply.")
    return out


def _run_log(ctx: Ctx) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        import frys_zmq._log as log_module

        has_log = hasattr(log_module, "PersistentEventQueue")
    except ImportError:
        has_log = False
    if not has_log:
        for name in GROUPS["log"].names:
            out[name] = {
                "name": name,
                "skipped": "no log module",
                "error": "skipped: no log module",
            }
        return out
    n = ctx.size("log.append")
    dirs = {impl: ctx.scratch(f"log-{impl}") for impl in ("frys", "raw")}
    # 'always' first: its fsyncs would otherwise queue behind the write-back of the
    # hundreds of MB that the other runs leave in the page cache.
    for policy in ("always", "never", "interval"):
        count = ctx.size("log.always") if policy == "always" else n
        figures = {}
        for impl in ("raw", "frys"):
            # The interval run leaves its log behind for the replay scenario.
            path = dirs[impl] if policy == "interval" else ctx.scratch(f"log-{impl}-{policy}")
            figures[impl] = log_run(
                ctx, impl, {"mode": "append", "policy": policy, "count": count, "dir": path}
            )
        name = f"log.append.{policy}"
        met: Met | None = None
        target = "none (reported for comparison)"
        if policy == "interval":
            target = ">=500,000 ev/s and >=0.8x raw buffered appends with the same fsync cadence"
            met = _log_interval_met
        entry = scenario_entry(
            name,
            f"append {count:,} ~{figures['frys']['extra'].get('record_bytes', 0)} B records "
            f"under fsync={policy}, until durable (closed)",
            figures["frys"],
            figures["raw"],
            target,
            met,
        )
        entry["notes"].append(figures["frys"]["extra"].get("how", ""))
        out[name] = entry
    figures = {
        impl: log_run(ctx, impl, {"mode": "replay", "count": n, "dir": dirs[impl]})
        for impl in ("raw", "frys")
    }
    entry = scenario_entry(
        "log.replay",
        f"replay {n:,} records from a freshly opened log (PersistentEventQueue.iter_events)",
        figures["frys"],
        figures["raw"],
        ">=1,000,000 ev/s",
        lambda f, b, r: f["events_per_s"] >= 1_000_000,
    )
    extra = figures["frys"]["extra"]
    entry["notes"].append(
        f"opening (recovery, every CRC checked) took {extra.get('open_s', 0):.3f} s, not "
        f"counted; the synchronous SegmentLog.read_from reads "
        f"{extra.get('sync_events_per_s', 0):,.0f} records/s. latency is the gap between "
        "consecutive records handed to the caller."
    )
    out["log.replay"] = entry
    return out


GROUPS: dict[str, Group] = {
    "simple": Group(_run_simple, 3, ("simple.per_event", "simple.batch")),
    "complex": Group(_run_complex, 2, ("complex",)),
    "large": Group(_run_large, 4, ("large.incompressible", "large.compressible")),
    "latency": Group(_run_latency, 2, ("latency",)),
    "mesh3": Group(_run_mesh3, 2, ("mesh3",)),
    "request": Group(_run_request, 4, ("request.sequential", "request.inflight100")),
    "log": Group(
        _run_log,
        8,
        ("log.append.never", "log.append.interval", "log.append.always", "log.replay"),
    ),
}


def run_zenoh_peer(ctx: Ctx, ours: dict[str, Any] | None) -> dict[str, Any]:
    """The simple workload over eclipse-zenoh, when the optional package is installed."""
    import importlib.util

    ctx.progress.step("simple zenoh")
    if importlib.util.find_spec("zenoh") is None:
        return {"skipped": "eclipse-zenoh is not installed (optional 'bench' extra)"}
    n = ctx.size("simple.raw")
    try:
        fig = pubsub(ctx, "zenoh", "simple", n, mode="per_event", step=False)
    except BenchError as exc:
        return {"error": str(exc)}
    if ours is not None and "events_per_s" in ours:
        fig["frys_per_event_ratio"] = ratio(ours["events_per_s"], fig["events_per_s"])
    fig.pop("extra", None)
    return fig


# ---------------------------------------------------------------------------------- helpers


def _log_interval_met(f: dict[str, Any], b: dict[str, Any], r: dict[str, Any]) -> bool:
    return bool(f["events_per_s"] >= 500_000 and r["events_per_s"] >= 0.8)


def _events_ratio_at_least(minimum: float) -> Met:
    """Met when frys delivers at least ``minimum`` times the baseline's events per second."""

    def met(f: dict[str, Any], b: dict[str, Any], r: dict[str, Any]) -> bool:
        return bool(r["events_per_s"] >= minimum)

    return met
