"""Run ``frys-zmq bench --json`` several times and print the median figures per scenario.

    python tools/bench_median.py --runs 3 [--only simple,request] [--scale 0.5]

One run's absolute rates drift with whatever else the machine does; the median of a few runs
of the ratios (frys against raw pyzmq measured in the same run) is what to compare between
commits. Prints a table, or with ``--json`` one object: per scenario the median events/s,
baseline events/s, ratio, and whether its target was met in each run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from typing import Any


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", help="scenario groups, as for frys-zmq bench --only")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--json", action="store_true")
    ns = parser.parse_args(argv)
    args = [sys.executable, "-m", "frys_zmq.bench", "--json", "--no-progress"]
    args += ["--scale", str(ns.scale)] + (["--only", ns.only] if ns.only else [])
    runs: list[dict[str, Any]] = []
    for i in range(ns.runs):
        print(f"run {i + 1} of {ns.runs} ...", file=sys.stderr)
        out = subprocess.run(args, check=False, capture_output=True, text=True)
        if out.returncode not in (0, 3):
            print(out.stderr, file=sys.stderr)
            return 1
        runs.append(json.loads(out.stdout))
    summary: dict[str, Any] = {}
    for name in runs[0]["scenarios"]:
        entries = [r["scenarios"][name] for r in runs if "events_per_s" in r["scenarios"][name]]
        if not entries:
            continue
        summary[name] = {
            "events_per_s": statistics.median(e["events_per_s"] for e in entries),
            "baseline_events_per_s": statistics.median(
                e["baseline"]["events_per_s"] for e in entries
            ),
            "ratio": statistics.median(e["ratio"]["events_per_s"] for e in entries),
            "met": [e.get("met") for e in entries],
            "target": entries[0].get("target"),
        }
    if ns.json:
        json.dump(summary, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0
    print(f"{'scenario':24} {'frys ev/s':>12} {'raw ev/s':>12} {'ratio':>6}  met")
    for name, s in summary.items():
        met = "".join({True: "y", False: "n", None: "-"}[m] for m in s["met"])
        print(
            f"{name:24} {s['events_per_s']:>12,.0f} {s['baseline_events_per_s']:>12,.0f} "
            f"{s['ratio']:>6.2f}  {met}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
