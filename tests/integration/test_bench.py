"""``frys-zmq bench --quick --json`` runs end to end and reports every scenario.

A smoke test: it checks the shape of the report and that frys delivered every event exactly
once and in order (correctness), never a speed.
"""

from __future__ import annotations

import json
import numbers
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(300)

SCENARIOS = {
    "simple.per_event",
    "simple.batch",
    "complex",
    "large.incompressible",
    "large.compressible",
    "latency",
    "mesh3",
    "request.sequential",
    "request.inflight100",
    "log.append.never",
    "log.append.interval",
    "log.append.always",
    "log.replay",
}
FIGURES = ("events", "seconds", "events_per_s", "mb_per_s", "lost", "dup", "out_of_order")
LATENCIES = ("p50", "p99", "max")
RATIOS = ("events_per_s", "mb_per_s", "latency_p50", "latency_p99")


def is_number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@pytest.fixture(scope="module")
def report() -> dict:
    env = dict(os.environ, FRYS_INTERFACE="127.0.0.1")
    proc = subprocess.run(
        [sys.executable, "-m", "frys_zmq", "bench", "--quick", "--json", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=280,
        env=env,
    )
    assert proc.returncode == 0, f"bench exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout)


def test_quick_bench_reports_every_scenario_with_figures_baseline_and_ratio(report):
    scenarios = report["scenarios"]
    assert set(scenarios) >= SCENARIOS
    for name, entry in scenarios.items():
        if "skipped" in entry:
            assert name.startswith("log."), f"{name} skipped: {entry['skipped']}"
            continue
        assert "error" not in entry, f"{name}: {entry.get('error')}"
        for key in FIGURES:
            assert is_number(entry[key]), (name, key, entry[key])
            assert is_number(entry["baseline"][key]), (name, "baseline", key)
        for key in LATENCIES:
            assert is_number(entry["latency_ms"][key]), (name, key)
            assert is_number(entry["baseline"]["latency_ms"][key]), (name, "baseline", key)
        for key in RATIOS:
            assert key in entry["ratio"], (name, key)
            ratio = entry["ratio"][key]
            assert ratio is None or is_number(ratio), (name, key, ratio)
        assert is_number(entry["ratio"]["events_per_s"]), name
        assert isinstance(entry["target"], str) and entry["target"], name
        assert entry["met"] in (True, False, None), name
        assert isinstance(entry["valid"], bool), name
        assert entry["peak_rss_mb"], name
        assert all(is_number(v) for v in entry["peak_rss_mb"].values()), name


def test_quick_bench_frys_figures_have_no_loss_duplicates_or_reordering(report):
    invalid = {
        name: (entry["lost"], entry["dup"], entry["out_of_order"])
        for name, entry in report["scenarios"].items()
        if "skipped" not in entry and "error" not in entry and entry["valid"] is not True
    }
    assert invalid == {}, "frys (lost, dup, out_of_order) per invalid scenario"


def test_quick_bench_reports_the_machine_it_ran_on(report):
    machine = report["machine"]
    assert machine["cores"] >= 1
    for key in ("python", "pyzmq", "libzmq"):
        assert isinstance(machine[key], str) and machine[key], key
    assert report["mode"] == "quick"
    assert "zenoh" in report["peers"]
