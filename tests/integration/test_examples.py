"""Every script in ``examples/`` runs to the end and prints what it promises."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ENV = {
    **os.environ,
    "FRYS_INTERFACE": "127.0.0.1",
    # The tour uses a fixed cluster name; a run of the suite gets one of its own.
    "TOUR_CLUSTER": f"tour-{uuid.uuid4().hex[:8]}",
}

EXPECTED = {
    "pubsub.py": [
        "order.*  got order.placed {'order': 1, 'total': 9.5} from shop #1",
        "order.>  got order.placed {'order': 1, 'total': 9.5} meta {'via': 'web'}",
        "order.>  got order.eu.shipped {'order': 1} meta {}",
        "order.*  got order.paid {'order': 1} from shop #3",
        "order.>  got order.paid {'order': 1} meta {}",
        "audit received 5 deliveries for 3 events",
    ],
    "request_reply.py": [
        "u1: success from profiles: {'name': 'Ada', 'plan': 'pro'}",
        "u2: error HandlerError: LookupError: no user u2",
        "billing: error NoResponders: no node serves 'billing.charge'",
        "report: timeout after 0.5s",
    ],
    "tour.py": [
        "user.created {'user_id': 'u1'} {'source': 'web'} from orders-1",
        "profile {'user_id': 'u1', 'name': 'Ada'} from orders-1",
    ],
    "filters_chains.py": [
        "invoice {'order': 1, 'total': 19.0} (billing-node)",
        "invoice {'order': 4, 'total': 10.75} (billing-node)",
        "billed 2 of 4 orders; 2 filtered out",
    ],
    "sync_script.py": [
        "sensor.kitchen.temperature: 21.5 C",
        "sensor.garage.temperature: 9.0 C",
        "sensor.attic.temperature: 27.25 C",
        "status: {'ok': True, 'asked': 'sensor'}",
    ],
}


def test_every_example_has_expected_output():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_example_runs_and_prints_its_story(name):
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / name),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=ENV,
        cwd=EXAMPLES,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert "Traceback" not in err.decode()
    lines = out.decode().splitlines()
    if name == "pubsub.py":
        # Two subscriptions run side by side: each keeps order, their interleaving may vary.
        assert sorted(lines[:-1]) == sorted(EXPECTED[name][:-1])
        want = EXPECTED[name]
        assert [x for x in lines if x.startswith("order.>")] == [*want[1:3], want[4]]
        assert lines[-1] == EXPECTED[name][-1]
    else:
        assert lines == EXPECTED[name]
