"""The scripts in ``tools/`` run: the soak test on a small mesh, the bench wrapper's help."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

TOOLS = Path(__file__).resolve().parents[2] / "tools"
ENV = {**os.environ, "FRYS_INTERFACE": "127.0.0.1"}


async def run(*args: str, timeout: float = 90) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_soak_tool_stalls_a_node_past_its_ttl_and_finds_nothing_lost():
    code, out, err = await run(
        str(TOOLS / "soak.py"),
        "--nodes", "2", "--events", "20000", "--stall", "1.5", "--stall-every", "1",
        "--ttl", "1.0", "--heartbeat", "0.2", "--max-seconds", "60",
    )  # fmt: skip
    report = json.loads(out)
    assert code == 0, (report, err[-2000:])
    assert report["ok"] and report["stalls"] >= 1
    for node in report["per_node"]:
        assert node["missing"] == node["duplicates"] == node["out_of_order"] == 0, node


async def test_the_bench_wrapper_explains_itself():
    code, out, _ = await run(str(TOOLS / "bench_median.py"), "--help")
    assert code == 0 and "--runs" in out
