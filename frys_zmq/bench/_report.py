"""Figures and the report: percentiles, rates and ratios, scenario entries, the table.

Pure functions over plain dicts (the JSON the children send), shared by the coordinator and
the children; nothing here starts a process or touches a socket.
"""

from __future__ import annotations

import array
import contextlib
import os
import platform
from collections.abc import Callable
from typing import Any

import msgpack
import zmq

__all__ = [
    "Met",
    "format_table",
    "loadavg",
    "machine_facts",
    "merge_latency",
    "per_event_us",
    "per_second",
    "percentiles",
    "ratio",
    "scenario_entry",
    "tally_figures",
]

#: Whether a scenario met its target, given the frys figures, the baseline's and their ratios.
Met = Callable[[dict[str, Any], dict[str, Any], dict[str, Any]], bool]


def machine_facts() -> dict[str, Any]:
    """Cores, Python, pyzmq and libzmq versions and the like, for the report."""
    import lz4

    from .. import __version__

    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cores": os.cpu_count(),
        "cpu": cpu or platform.processor(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
        "msgpack": ".".join(str(x) for x in msgpack.version),
        "lz4": getattr(lz4, "__version__", "?"),
        "frys_zmq": __version__,
        "platform": platform.platform(),
    }


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or None where the platform has none."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def format_table(report: dict[str, Any]) -> str:
    """The human form of a report."""
    m = report["machine"]
    lines = [
        f"frys-zmq bench ({report['mode']}) - {m['cores']} cores, {m['cpu']}, Python "
        f"{m['python']}, pyzmq {m['pyzmq']}, libzmq {m['libzmq']}; {report['duration_s']} s",
        "",
    ]
    head = (
        f"{'scenario':<22} {'frys ev/s':>10} {'MB/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'base ev/s':>10} {'ratio':>6} {'lost/dup':>9} {'RSS MB':>7}  target"
    )
    lines += [head, "-" * len(head)]
    for name, e in report["scenarios"].items():
        if "error" in e:
            lines.append(f"{name:<22} ERROR: {e['error'].splitlines()[0]}")
            continue
        lat = e["latency_ms"]
        base = e["baseline"]
        rss = max(e["peak_rss_mb"].values(), default=0.0)
        met = {True: "met", False: "MISSED", None: "-"}[e["met"]]
        flag = "" if e["valid"] else " INVALID"
        lines.append(
            f"{name:<22} {_si(e['events_per_s']):>10} {e['mb_per_s']:>8.1f} {lat['p50']:>8.3f} "
            f"{lat['p99']:>8.3f} {lat['max']:>8.2f} {_si(base['events_per_s']):>10} "
            f"{_fmt_ratio(e['ratio']['events_per_s']):>6} "
            f"{str(e['lost']) + '/' + str(e['dup']):>9} {rss:>7.0f}  {met}{flag}: {e['target']}"
        )
    lines.append("")
    for name, e in report["scenarios"].items():
        for note in e.get("notes", ()):
            lines.append(f"  {name}: {note}")
    for name, peer in report["peers"].items():
        lines.append(f"  peer {name}: {peer.get('skipped') or peer}")
    for note in report["notes"]:
        lines.append(f"  * {note}")
    return "\n".join(lines) + "\n"


def scenario_entry(
    name: str,
    description: str,
    frys: dict[str, Any],
    base: dict[str, Any],
    target: str,
    met: Met | None,
) -> dict[str, Any]:
    """One scenario of the report: the frys figures, the baseline's, their ratios and verdict.

    A frys figure with loss, duplicates or reordering is ``valid: false`` and never meets its
    target; ``met`` is None for a scenario reported only for comparison.
    """
    ratios = {
        "events_per_s": ratio(frys["events_per_s"], base["events_per_s"]),
        "mb_per_s": ratio(frys["mb_per_s"], base["mb_per_s"]),
        "latency_p50": ratio(frys["latency_ms"]["p50"], base["latency_ms"]["p50"]),
        "latency_p99": ratio(frys["latency_ms"]["p99"], base["latency_ms"]["p99"]),
    }
    valid = frys["lost"] == 0 and frys["dup"] == 0 and frys["out_of_order"] == 0
    notes: list[str] = []
    if not valid:
        notes.append(
            f"INVALID: frys lost {frys['lost']}, duplicated {frys['dup']} and reordered "
            f"{frys['out_of_order']} of {frys['events']} events"
        )
    if base["lost"] or base["dup"] or base["out_of_order"]:
        notes.append(
            f"baseline lost {base['lost']}, duplicated {base['dup']}, reordered "
            f"{base['out_of_order']}"
        )
    result: dict[str, Any] = {
        "name": name,
        "description": description,
        "events": frys["events"],
        "seconds": frys["seconds"],
        "events_per_s": frys["events_per_s"],
        "mb_per_s": frys["mb_per_s"],
        "latency_ms": frys["latency_ms"],
        "publish_per_s": frys.get("publish_per_s"),
        "lost": frys["lost"],
        "dup": frys["dup"],
        "out_of_order": frys["out_of_order"],
        "valid": valid,
        "peak_rss_mb": frys["peak_rss_mb"],
        "cpu_us_per_event": frys.get("cpu_us_per_event", {}),
        "baseline": {
            k: base[k]
            for k in (
                "events",
                "seconds",
                "events_per_s",
                "mb_per_s",
                "latency_ms",
                "publish_per_s",
                "lost",
                "dup",
                "out_of_order",
                "peak_rss_mb",
                "cpu_us_per_event",
            )
            if k in base
        },
        "ratio": ratios,
        "target": target,
        "met": None if met is None else bool(valid and _met(met, frys, base, ratios)),
        "notes": notes,
    }
    extra = frys.get("extra") or {}
    if extra:
        result["detail"] = extra
    return result


def tally_figures(t: dict[str, Any], payload_bytes: int) -> dict[str, Any]:
    """The figures of one receiver's tally (``Tally.summary()``, or several merged)."""
    # From the first event's publish call to the last delivery. A receiver that queues
    # events and runs handlers in bursts would look faster than it is if the window started
    # at the first delivery (20 large events can all be decoded before the first handler
    # runs); the first one-way latency is the price, negligible in full-size runs.
    start = min(t["first_ns"], t["first_sent_ns"] or t["first_ns"])
    window = max(0, t["last_ns"] - start) / 1e9
    received = t["received"]
    eps = per_second(received, window)
    return {
        "events": t["expected"],
        "received": received,
        "lost": t["expected"] - received,
        "dup": t["dup"],
        "out_of_order": t["out_of_order"],
        "seconds": round(window, 4),
        "receive_window_s": round(max(0, t["last_ns"] - t["first_ns"]) / 1e9, 4),
        "events_per_s": eps,
        "mb_per_s": round(eps * payload_bytes / 1e6, 2),
        "latency_ms": t["latency_ms"],
    }


def percentiles(samples_ns: array.array[int] | list[int]) -> dict[str, float]:
    """p50, p99, max and mean of nanosecond samples, in milliseconds (all 0 without samples)."""
    if not len(samples_ns):
        return {"p50": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    s = sorted(samples_ns)
    n = len(s)
    return {
        "p50": round(s[(n - 1) // 2] / 1e6, 4),
        "p99": round(s[min(n - 1, int(n * 0.99))] / 1e6, 4),
        "max": round(s[-1] / 1e6, 4),
        "mean": round(sum(s) / n / 1e6, 4),
    }


def merge_latency(parts: list[dict[str, float]]) -> dict[str, float]:
    """Combine per-process percentiles conservatively: the worst of each."""
    if not parts:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    return {k: max(p[k] for p in parts) for k in ("p50", "p99", "max", "mean")}


def per_event_us(cpu_s: float, events: int) -> float | None:
    """CPU microseconds per event, or None when there were no events."""
    return round(cpu_s / events * 1e6, 2) if events else None


def per_second(count: float, seconds: float) -> float:
    """``count`` per second (0 for an empty window)."""
    return round(count / seconds, 1) if seconds > 0 else 0.0


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing or ``b`` is not positive."""
    if a is None or b is None or b <= 0:
        return None
    return round(a / b, 3)


def _si(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 1e6:
        return f"{x / 1e6:.2f}M"
    if x >= 1e3:
        return f"{x / 1e3:.1f}k"
    return f"{x:.0f}"


def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _met(met: Any, frys: dict[str, Any], base: dict[str, Any], ratios: dict[str, Any]) -> bool:
    """A target check; a ratio that could not be computed (a zero baseline) misses it."""
    try:
        return bool(met(frys, base, ratios))
    except TypeError:  # None compared with a number
        return False
