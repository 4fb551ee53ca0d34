"""The ``frys-zmq`` command line tool, run as real processes against real nodes on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from frys_zmq import pattern_matches
from frys_zmq.testing import NodeProcess

pytestmark = pytest.mark.timeout(120)

ENV = {**os.environ, "FRYS_INTERFACE": "127.0.0.1"}


@dataclass
class Result:
    rc: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


def _default_sigint() -> None:
    # A suite started in the background by a non-interactive shell inherits SIGINT as
    # ignored, and Python keeps it ignored; these tests interrupt the CLI on purpose.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def _spawn(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "frys_zmq",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**ENV, **(env or {})},
        preexec_fn=_default_sigint,
    )


async def _reap(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    await proc.wait()


async def cli(*args: str, limit_s: float = 60.0, env: dict[str, str] | None = None) -> Result:
    """Run ``python -m frys_zmq ARGS`` (with ``env`` added to the environment) to the end."""
    proc = await _spawn(*args, env=env)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), limit_s)
    finally:
        await _reap(proc)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


@contextlib.asynccontextmanager
async def cli_process(*args: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """A long-running ``frys-zmq`` process, killed on the way out whatever happens."""
    proc = await _spawn(*args)
    try:
        yield proc
    finally:
        await _reap(proc)


async def finish(proc: asyncio.subprocess.Process, limit_s: float = 30.0) -> Result:
    out, err = await asyncio.wait_for(proc.communicate(), limit_s)
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


@contextlib.asynccontextmanager
async def nodes(cluster: str, *ids: str) -> AsyncIterator[list[NodeProcess]]:
    procs = [NodeProcess(i, cluster=cluster) for i in ids]
    try:
        await asyncio.gather(*(p.start() for p in procs))
        yield procs
    finally:
        await asyncio.gather(*(p.aclose() for p in procs), return_exceptions=True)


def one_line_error(result: Result) -> str:
    assert "Traceback" not in result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, result.err
    assert lines[0].startswith("frys-zmq: error: ")
    return lines[0]


# ---------------------------------------------------------------------- discover


async def test_discover_json_expect_lists_the_two_spawned_nodes(cluster):
    async with nodes(cluster, "alpha", "beta") as (alpha, beta):
        result = await cli(
            "discover", "--cluster", cluster, "--json", "--expect", "2", "--timeout", "30"
        )
        assert result.rc == 0, result.err
        found = json.loads(result.out)
        assert sorted(n["node_id"] for n in found) == ["alpha", "beta"]
        by_id = {n["node_id"]: n for n in found}
        for node in (alpha, beta):
            row = by_id[node.node_id]
            assert row["cluster"] == cluster
            assert row["address"] == "127.0.0.1"
            assert node.info["pub"] == f"tcp://127.0.0.1:{row['pub_port']}"
            assert node.info["router"] == f"tcp://127.0.0.1:{row['router_port']}"
            assert row["version"] >= 100
            assert row["age_s"] >= 0


async def test_discover_table_names_the_nodes_and_skips_other_clusters(cluster):
    async with nodes(cluster, "table-a", "table-b"), nodes(cluster + "x", "other-c"):
        result = await cli("discover", "--cluster", cluster, "--expect", "2", "--timeout", "30")
        assert result.rc == 0, result.err
        header, *rows = result.lines
        assert header.split() == ["NODE", "CLUSTER", "ADDRESS", "PUB", "ROUTER", "VERSION", "AGE"]
        assert sorted(r.split()[0] for r in rows) == ["table-a", "table-b"]
        assert "other-c" not in result.out

        # Other suites on this host may run nodes too: watch until ours have all shown up.
        want = {("table-a", cluster), ("table-b", cluster), ("other-c", cluster + "x")}
        async with cli_process("discover", "--all-clusters", "--watch", "--json") as watch:
            assert watch.stdout is not None
            seen: set[tuple[str, str]] = set()
            async with asyncio.timeout(30):
                while not want <= seen:
                    change = json.loads(await watch.stdout.readline())
                    seen.add((change["node_id"], change["cluster"]))


async def test_discover_expecting_absent_nodes_exits_3(cluster):
    result = await cli("discover", "--cluster", cluster, "--expect", "1", "--timeout", "1")
    assert result.rc == 3
    assert "no frys nodes found" in result.out
    assert "found 0 of 1 nodes" in one_line_error(result)


async def test_discover_watch_prints_nodes_as_they_appear(cluster):
    async with cli_process("discover", "--cluster", cluster, "--watch", "--json") as watch:
        async with nodes(cluster, "late-1"):
            assert watch.stdout is not None
            line = await asyncio.wait_for(watch.stdout.readline(), 30)
            change = json.loads(line)
            assert change["change"] == "found"
            assert change["node_id"] == "late-1"
        watch.send_signal(signal.SIGINT)
        result = await finish(watch)
        assert result.rc == 130
        assert "Traceback" not in result.err


async def test_discover_that_finds_nothing_exits_0(cluster):
    result = await cli("discover", "--cluster", cluster, "--timeout", "1")
    assert result.rc == 0, result.err
    assert result.out == f"no frys nodes found in cluster {cluster!r}\n"
    assert "Traceback" not in result.err


async def test_discover_of_an_empty_cluster_points_at_the_nodes_in_other_clusters(cluster):
    async with nodes(cluster + "x", "elsewhere"):
        result = await cli("discover", "--cluster", cluster, "--timeout", "5")
        assert result.rc == 0, result.err
        assert f"no frys nodes found in cluster {cluster!r}" in result.out
        hint = result.err.strip()
        assert hint.startswith("frys-zmq: ") and "node(s) found in other clusters (" in hint
        assert "or --all-clusters" in hint

        expected = await cli(
            "discover", "--cluster", cluster, "--expect", "1", "--timeout", "5", "--json"
        )
        assert expected.rc == 3
        assert json.loads(expected.out) == []
        error = one_line_error(expected)
        assert "found 0 of 1 nodes in cluster" in error
        assert "in other clusters (" in error and "or --all-clusters" in error


# ---------------------------------------------------------------------- pub / sub / request / node


async def test_pub_and_sub_in_two_cli_processes_deliver_matching_events(cluster):
    # Two overlapping patterns: each event is still printed once.
    async with cli_process(
        "sub", "orders.*", "orders.placed", "--cluster", cluster, "--count", "2", "--timeout", "60"
    ) as sub:
        # Not matched by orders.*: sent first, it must never show up.
        skipped = await cli(
            "pub", "orders.eu.placed", '{"id": 0}', "--cluster", cluster, "--wait-timeout", "30"
        )
        assert skipped.rc == 0, skipped.err
        assert "1 peer(s) ready when publishing: " in skipped.err
        payload, metadata = '{"id": 7, "items": ["a", "b"]}', '{"via": "cli"}'
        sent = await cli(
            *("pub", "orders.placed", payload, "--metadata", metadata, "--count", "2", "--json"),
            *("--cluster", cluster, "--wait-timeout", "30"),
        )
        assert sent.rc == 0, sent.err
        published = json.loads(sent.out)
        assert published["count"] == 2
        assert published["first_seq"] == 1 and published["last_seq"] == 2
        assert len(published["peers"]) == 1

        result = await finish(sub)
        assert result.rc == 0, result.err
        events = [json.loads(line) for line in result.lines]
        assert [e["seq"] for e in events] == [1, 2]  # and no third line
        for event in events:
            assert event["topic"] == "orders.placed"
            assert event["payload"] == {"id": 7, "items": ["a", "b"]}
            assert event["metadata"] == {"via": "cli"}
            assert event["source"] == published["node_id"]


async def test_sub_that_gets_too_few_events_exits_3(cluster):
    result = await cli("sub", "nothing.>", "--cluster", cluster, "--count", "1", "--timeout", "1")
    assert result.rc == 3
    assert result.out == ""
    assert "received 0 of 1 events" in result.err


async def test_request_gets_the_echo_error_and_timeout_of_a_node_process(cluster):
    async with nodes(cluster, "srv") as (srv,):
        await srv.call("handle", topic="echo.it", mode="echo")
        await srv.call("handle", topic="fail.it", mode="error")
        await srv.call("handle", topic="slow.it", mode="slow", delay=5.0)

        ok = await cli(
            "request", "echo.it", '{"x": [1, 2]}', "--cluster", cluster, "--wait-timeout", "30"
        )
        assert ok.rc == 0, ok.err
        assert json.loads(ok.out) == {"echo": {"x": [1, 2]}, "by": "srv"}

        full = await cli(
            "request", "echo.it", "3", "--cluster", cluster, "--json", "--wait-timeout", "30"
        )
        assert full.rc == 0, full.err
        assert json.loads(full.out) == {
            "ok": True,
            "value": {"echo": 3, "by": "srv"},
            "responder": "srv",
        }

        failed = await cli(
            "request", "fail.it", '"x"', "--cluster", cluster, "--wait-timeout", "30"
        )
        assert failed.rc == 1
        assert "refused" in one_line_error(failed)

        slow = await cli(
            "request", "slow.it", "--timeout", "0.5", "--cluster", cluster, "--wait-timeout", "30"
        )
        assert slow.rc == 3
        assert "no reply to slow.it within 0.5s" in one_line_error(slow)


async def test_node_command_serves_echo_prints_events_and_stops_on_signals(cluster):
    async with cli_process(
        *("node", "--node-id", "cli-node", "--cluster", cluster),
        *("--subscribe", "sensor.>", "--serve", "echo.cli"),
    ) as node:
        async with nodes(cluster, "client") as (client,):
            await client.call("wait_peers", n=1, timeout=30)
            reply = await client.call("request", topic="echo.cli", payload={"ping": 1})
            assert reply == {"kind": "success", "value": {"ping": 1}, "responder": "cli-node"}
            await client.call(
                "publish", topic="sensor.kitchen.temp", payload=21.5, metadata={"unit": "C"}
            )
            assert node.stdout is not None
            line = await asyncio.wait_for(node.stdout.readline(), 30)
            assert json.loads(line) == {
                "topic": "sensor.kitchen.temp",
                "payload": 21.5,
                "metadata": {"unit": "C"},
                "source": "client",
                "seq": 1,
            }
        node.send_signal(signal.SIGTERM)
        result = await finish(node)
        assert result.rc == 143
        assert "Traceback" not in result.err
        assert "node cli-node leaving" in result.err


async def _started(proc: asyncio.subprocess.Process, mark: bytes) -> None:
    """Wait until ``proc`` writes ``mark`` to stderr (it has started and set up its signals)."""
    assert proc.stderr is not None
    async with asyncio.timeout(30):
        while mark not in await proc.stderr.readline():
            pass


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_commands_that_run_until_stopped_leave_cleanly_and_exit_with_the_signal_code(
    cluster, sig, code
):
    async with cli_process("node", "--cluster", cluster) as node:
        await _started(node, b"Ctrl-C to stop")
        node.send_signal(sig)
        result = await finish(node)
        assert result.rc == code
        assert "Traceback" not in result.err
        assert "leaving" in result.err
    async with cli_process("sub", "a.>", "--cluster", cluster) as sub:
        await _started(sub, b"subscribed to a.>")
        sub.send_signal(sig)
        result = await finish(sub)
        assert result.rc == code
        assert "Traceback" not in result.err


async def test_pub_without_waiting_says_how_many_peers_were_ready_not_who_received(cluster):
    result = await cli("pub", "a.b", "1", "--wait-peers", "0", "--cluster", cluster)
    assert result.rc == 0, result.err
    assert "without waiting for peers; 0 peer(s) ready when publishing" in result.err
    assert " to 0 peer(s)" not in result.err


async def test_a_bad_cluster_peers_variable_is_a_one_line_usage_error(cluster):
    garbage = {"FRYS_CLUSTER_PEERS": "garbage"}
    result = await cli("pub", "a.b", "--wait-peers", "0", "--cluster", cluster, env=garbage)
    assert result.rc == 2
    assert "cluster_peers[0] must be tcp://HOST:PORT" in one_line_error(result)


# ---------------------------------------------------------------------- demo


def _check_demo_summary(summary: dict) -> None:
    assert summary["ok"] is True
    assert summary["lost"] == 0
    assert summary["duplicates"] == 0
    assert summary["out_of_order"] == 0
    assert summary["gaps_reported"] == 0
    assert summary["delivered"] == summary["expected"] > 0
    assert len(summary["per_node"]) == summary["nodes"]
    for node in summary["per_node"]:
        assert node["received"] == node["expected"]
        for sub in node["subscriptions"]:
            assert sub["received"] == sub["expected"]
            assert sub["lost"] == 0
    assert summary["throughput_eps"] > 0
    assert 0 < summary["latency_ms"]["p50"] <= summary["latency_ms"]["p99"]


async def test_demo_replays_500_log_events_through_three_nodes_without_loss():
    result = await cli("demo", "--nodes", "3", "--limit", "500", "--json", limit_s=100)
    assert result.rc == 0, result.err
    summary = json.loads(result.out)
    _check_demo_summary(summary)
    assert summary["nodes"] == 3
    assert summary["interface"] == "127.0.0.1"
    assert summary["published"] == summary["input"]["events"] == 500
    assert summary["input"]["kind"] in ("dpkg", "synthetic")
    # Every node publishes a share and every topic reaches the catch-all dpkg.> of node 1.
    assert all(n["published"] > 0 for n in summary["per_node"])
    assert sum(t["published"] for t in summary["topics"].values()) == 500
    assert summary["per_node"][1]["subscriptions"][0]["pattern"] == "dpkg.>"
    assert summary["per_node"][1]["received"] == 500


async def test_demo_replays_a_json_lines_file_and_counts_by_pattern(tmp_path: Path):
    topics = [
        "shop.order.placed",
        "shop.order.paid",
        "shop.user.created",
        "shop.order.placed",
        "shop.stock",
        "shop.order.placed",
        "audit.login",
    ] * 20
    path = tmp_path / "events.jsonl"
    with path.open("w") as f:
        for i, topic in enumerate(topics):
            f.write(json.dumps({"topic": topic, "payload": {"i": i}, "metadata": {"k": i % 3}}))
            f.write("\n")
    result = await cli(
        *("demo", "--input", str(path), "--nodes", "4", "--publishers", "2", "--json"),
        # Node 3 by its index and by its name in the summary.
        *("--subscribe", "3=shop.*", "--subscribe", "demo-3=*.order.>"),
        limit_s=100,
    )
    assert result.rc == 0, result.err
    summary = json.loads(result.out)
    _check_demo_summary(summary)
    assert summary["input"]["kind"] == "jsonl"
    assert summary["input"]["events"] == len(topics)
    assert [n["published"] for n in summary["per_node"]] == [70, 70, 0, 0]
    counts = Counter(topics)
    assert {t: c["published"] for t, c in summary["topics"].items()} == dict(counts)
    node3 = summary["per_node"][3]
    assert [s["pattern"] for s in node3["subscriptions"]] == ["shop.*", "*.order.>"]
    for node in summary["per_node"]:
        for sub in node["subscriptions"]:
            want = sum(n for t, n in counts.items() if pattern_matches(sub["pattern"], t))
            assert sub["expected"] == sub["received"] == want


async def test_demo_turns_a_plain_text_log_into_log_line_events(tmp_path: Path):
    path = tmp_path / "app.log"
    path.write_text("".join(f"line {i}: something happened\n" for i in range(50)))
    result = await cli("demo", "--input", str(path), "--nodes", "2", limit_s=100)
    assert result.rc == 0, result.err
    assert "input: " + str(path) + " (text, 50 lines -> 50 events)" in result.out
    assert "log.line" in result.out
    assert "lost 0, duplicates 0, out of order 0" in result.out
    assert "-> OK" in result.out


def _is_agent(process: psutil.Process) -> bool:
    try:
        return "frys_zmq._demo_agent" in process.cmdline()
    except psutil.Error:  # a short-lived helper process that is already gone
        return False


async def test_demo_interrupted_stops_every_node_process():
    proc = await _spawn(
        "demo", "--nodes", "3", "--limit", "2000", "--rate", "100", "--timeout", "100"
    )
    try:
        parent = psutil.Process(proc.pid)
        agents: list[psutil.Process] = []
        deadline = asyncio.get_running_loop().time() + 60
        while len(agents) < 3:  # the replay runs ~20 s at this rate: interrupt it midway
            assert asyncio.get_running_loop().time() < deadline, "agents did not start"
            agents = [c for c in parent.children() if _is_agent(c)]
            await asyncio.sleep(0.05)
        assert proc.stderr is not None
        while b"published" not in await asyncio.wait_for(proc.stderr.readline(), 60):
            pass
        proc.send_signal(signal.SIGINT)
        result = await finish(proc)
        assert result.rc == 130
        assert "Traceback" not in result.err
        _, alive = psutil.wait_procs(agents, timeout=10)
        assert not alive
    finally:
        await _reap(proc)


# ---------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["nonsense"],
        ["pub"],
        ["pub", "a.b", "{not json"],
        ["pub", "a.b", "--count", "0"],
        ["pub", "a.b", "--metadata", "[1]"],
        ["discover", "--timeout", "-1"],
        ["sub"],
        ["demo", "--nodes", "zero"],
    ],
)
async def test_bad_arguments_exit_2_with_usage(args):
    result = await cli(*args, limit_s=30)
    assert result.rc == 2
    assert "usage: frys-zmq" in result.err
    assert "Traceback" not in result.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pub", "bad topic", "1"], "invalid topic 'bad topic'"),
        (["pub", "orders.*", "1"], "invalid topic 'orders.*'"),
        (["sub", "a.>.b"], "'>' may only be the last token"),
        (["request", "a..b"], "invalid topic 'a..b'"),
        (["node", "--subscribe", "x.>", "--serve", "$frys.hb"], "invalid pattern '$frys.hb'"),
        (["discover", "--interface", "10.0.0.300"], "--interface must be an IPv4 address"),
        (["discover", "--cluster", "no spaces"], "cluster must be 1-31 letters"),
        (["demo", "--input", "/nonexistent/frys.log"], "cannot read /nonexistent/frys.log"),
        (["demo", "--subscribe", "7=a.b"], "--subscribe names node 7"),
        (["demo", "--subscribe", "demo-7=a.b"], "names node 7 (demo-7), but there are only 3"),
        (["demo", "--subscribe", "node-0=a.b"], "NODE a node's index or name (0 or demo-0)"),
    ],
)
async def test_invalid_input_is_a_one_line_error_with_exit_2(args, message):
    result = await cli(*args, limit_s=30)
    assert result.rc == 2, result.err
    assert message in one_line_error(result)
    assert result.out == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "nope"], "--only: unknown scenario group(s): nope (choose from simple,"),
        (["--only", ","], "--only needs at least one scenario group"),
        (["--interface", "10.0.0.1"], "the bench always runs on 127.0.0.1"),
        (["--interface", "all"], "the bench always runs on 127.0.0.1"),
        (["--cluster", "no spaces"], "--cluster must be 1-31 letters"),
        # The flags every command takes are accepted: the error is the one about --only.
        (["--interface", "127.0.0.1", "--cluster", "mine", "--only", "x"], "group(s): x"),
    ],
)
async def test_bench_usage_errors_are_argparse_errors_with_exit_2(args, message):
    result = await cli("bench", *args, limit_s=30)
    assert result.rc == 2, result.err
    assert "Traceback" not in result.err
    assert "usage: frys-zmq bench" in result.err
    error = result.err.strip().splitlines()[-1]
    assert error.startswith("frys-zmq bench: error: ")
    assert message in error
    assert result.out == ""
