"""``frys-zmq bench``: frys against the same workload without frys, in fresh processes.

Run ``python -m frys_zmq.bench`` (a table with a progress bar), ``--json`` (one JSON object on
stdout) or ``--quick`` (a short smoke run; its figures are not meant to be compared). Every
scenario runs in new child processes, ``python -m frys_zmq.bench --role ...``, which the
coordinator drives with JSON lines on their stdin and stdout. Every socket binds 127.0.0.1 and
the frys nodes find each other with ``EventBus.connect`` (no mDNS).

Each scenario is run twice: once on frys and once as the baseline, the same workload written
directly against pyzmq (PUB/SUB, one message per event, no envelope; DEALER/ROUTER for
requests) or against a plain buffered file (for the log). Subscribers check that every event
arrived exactly once and in order; a frys figure with loss, duplicates or reordering is
marked ``valid: false`` and never meets its target.

Figures: ``events_per_s`` counts events received between the first and the last one at the
subscriber (requests: round trips; log: records); ``mb_per_s`` is the same rate in user-payload
bytes (MB = 10**6 B); latencies are one-way (publish call to handler) for events, round trips
for requests, and say what they are for the log in the scenario's notes.

The modules, coordinator side first: ``_scenarios`` (what is compared, and the targets),
``_runs`` (one run: its child processes and figures), ``_report`` (figures, entries, the
table), ``_child`` (the JSON-lines link to a child, both ends); child side:
``_frys_roles``, ``_raw_roles`` (pyzmq and zenoh baselines), ``_log_roles``, over the shared
``_workloads``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any

from .._config import validate_name
from .._errors import ConfigError
from . import _frys_roles, _log_roles, _raw_roles
from ._child import BenchError, Progress, Role, child_main
from ._constants import HEARTBEAT, LOOPBACK
from ._report import format_table, loadavg, machine_facts
from ._runs import Ctx
from ._scenarios import GROUPS, run_zenoh_peer

__all__ = ["main", "run"]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with ``--role``, one of its child processes); return the exit code.

    Exit codes: 0 every scenario produced figures (loss and missed targets are reported, not
    fatal, unless ``--strict``); 1 a scenario could not run; 2 bad arguments; 3 with
    ``--strict``, a figure is invalid or a target was missed.
    """
    parser = argparse.ArgumentParser(
        prog="frys-zmq bench",
        description="Measure frys against raw pyzmq and plain files on this machine "
        "(loopback only).",
    )
    parser.add_argument("--quick", action="store_true", help="short run for CI smoke tests")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--only",
        metavar="NAMES",
        help=f"comma-separated scenario groups to run ({', '.join(GROUPS)})",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        metavar="FACTOR",
        help="multiply the number of events of every run (e.g. 0.2 for a shorter full run)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument(
        "--strict", action="store_true", help="exit 3 when a figure is invalid or misses its target"
    )
    parser.add_argument(
        "--profile-dir",
        metavar="DIR",
        help="run every child under cProfile and write <role>-<pid>.prof files into DIR",
    )
    # The flags every frys-zmq command takes, so scripts can pass them everywhere.
    parser.add_argument(
        "--interface",
        metavar="ADDR",
        help=f"accepted for symmetry with the other commands; only {LOOPBACK} is allowed, "
        "since the bench always runs on loopback",
    )
    parser.add_argument(
        "--cluster",
        metavar="NAME",
        help="accepted for symmetry with the other commands; the bench makes its own cluster names",
    )
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--params", default="{}", help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)

    if ns.role is not None:
        return child_main(ns.role, json.loads(ns.params), _ROLES)

    if ns.interface is not None and ns.interface != LOOPBACK:
        parser.error(
            f"--interface: the bench always runs on {LOOPBACK}, so that is the only "
            f"allowed value, got {ns.interface!r}"
        )
    if ns.cluster is not None:
        try:
            validate_name(ns.cluster, "--cluster")
        except ConfigError as exc:
            parser.error(str(exc))
    groups = list(GROUPS)
    if ns.only:
        groups = [g.strip() for g in ns.only.split(",") if g.strip()]
        unknown = [g for g in groups if g not in GROUPS]
        if not groups:
            parser.error(f"--only needs at least one scenario group ({', '.join(GROUPS)})")
        if unknown:
            parser.error(
                f"--only: unknown scenario group(s): {', '.join(unknown)} "
                f"(choose from {', '.join(GROUPS)})"
            )
    profile_dir = os.path.abspath(ns.profile_dir) if ns.profile_dir else None
    if profile_dir:
        os.makedirs(profile_dir, exist_ok=True)
    if not ns.scale > 0:
        parser.error("--scale must be positive")
    report = run(
        groups,
        quick=ns.quick,
        progress=not ns.no_progress,
        profile_dir=profile_dir,
        scale=ns.scale,
    )
    if ns.json:
        json.dump(report, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(format_table(report))
    sys.stdout.flush()
    entries = report["scenarios"].values()
    if any("error" in e for e in entries):
        return 1
    if ns.strict and any(e.get("valid") is False or e.get("met") is False for e in entries):
        return 3
    return 0


def run(
    groups: list[str],
    *,
    quick: bool = False,
    progress: bool = True,
    profile_dir: str | None = None,
    scale: float = 1.0,
) -> dict[str, Any]:
    """Run the scenario groups and return the report (the object ``--json`` prints)."""
    started = time.time()
    load_before = loadavg()
    total = sum(GROUPS[g].runs for g in groups) + (1 if "simple" in groups else 0)
    bar = Progress(total, enabled=progress)
    tmp = tempfile.mkdtemp(prefix="frys-bench-")
    ctx = Ctx(quick=quick, progress=bar, tmp=tmp, profile_dir=profile_dir, scale=scale)
    scenarios: dict[str, Any] = {}
    peers: dict[str, Any] = {}
    try:
        for group in groups:
            try:
                scenarios.update(GROUPS[group].run(ctx))
            except BenchError as exc:
                for name in GROUPS[group].names:
                    scenarios.setdefault(name, {"name": name, "error": str(exc)})
            if group == "simple":
                peers["zenoh"] = run_zenoh_peer(ctx, scenarios.get("simple.per_event"))
    finally:
        bar.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "tool": "frys-zmq bench",
        "mode": "quick" if quick else "full",
        "scale": scale,
        "machine": {**machine_facts(), "loadavg_before": load_before, "loadavg_after": loadavg()},
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "scenarios": scenarios,
        "peers": peers,
        "notes": [
            "events_per_s and mb_per_s are measured at the receiver, first to last event; "
            "MB = 10**6 bytes of user payload.",
            "Baselines are synchronous pyzmq loops (PUB/SUB with one msgpack message per event "
            "and no envelope; DEALER/ROUTER for requests) with unbounded high-water marks so "
            "that they never drop; the log baseline is a buffered file with a length prefix.",
            f"frys nodes use defaults except interface={LOOPBACK}, discovery 'none' "
            f"(EventBus.connect) and heartbeat_interval={HEARTBEAT}s.",
            "In quick mode the runs are too short for the figures to mean much.",
            "cpu_us_per_event is each process's CPU time (all threads, user + system) per "
            "event; it is steadier than the rates when other work shares the machine "
            "(see loadavg_before/after).",
        ],
    }


#: Every child role by name: what ``--role`` selects in a child process.
_ROLES: dict[str, Role] = {**_frys_roles.ROLES, **_raw_roles.ROLES, **_log_roles.ROLES}
