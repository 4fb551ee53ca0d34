"""Spawn real frys nodes as local subprocesses and drive them from tests.

``NodeProcess`` starts ``python -m frys_zmq.testing`` — an agent that embeds an
``EventBus`` and takes JSON-line commands on stdin — and collects what it reports. Tests in
this project use it, and so can users testing their own services against a local mesh::

    async with NodeProcess("a", cluster="t") as a, NodeProcess("b", cluster="t") as b:
        await b.call("subscribe", pattern="orders.>")
        await a.call("wait_peers", n=1)
        await a.call("publish", topic="orders.new", payload={"id": 1})
        event = await b.next_event(timeout=5)

Commands (``call(cmd, **args)``): ``subscribe(pattern, durable=None, quiet=False)`` (quiet:
keep events in the node, see ``received``), ``publish(topic, payload, metadata)``,
``publish_many(topic, count, start=0, background=False, ack=False, batch=False)`` (payloads
``{"n": i}``; ``topic`` may be a list, used round-robin),
``received()`` (payload ``n`` of every quiet event, in arrival order), ``published()``,
``handle(topic, mode=echo|error|slow|sum, delay)``, ``request(topic, payload, timeout)``,
``wait_peers(n, timeout)``, ``peers()``, ``metrics()``, ``quit()``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["NodeProcess"]


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return {"$bytes": obj.hex()}
    return str(obj)


class NodeProcess:
    """A frys node in a child process, controlled over its stdin/stdout."""

    def __init__(
        self,
        node_id: str,
        *,
        cluster: str = "default",
        interface: str | None = "127.0.0.1",
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.node_id = node_id
        self.cluster = cluster
        self.interface = interface
        self._extra = extra_args or []
        self._env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._replies: dict[int, asyncio.Future[Any]] = {}
        self._ids = 0
        self._reader: asyncio.Task[None] | None = None
        self.info: dict[str, Any] = {}
        self.stderr_lines: list[str] = []
        self._err_reader: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 20.0) -> NodeProcess:
        args = [
            sys.executable,
            "-m",
            "frys_zmq.testing",
            "--node-id",
            self.node_id,
            "--cluster",
            self.cluster,
        ]
        if self.interface:
            args += ["--interface", self.interface]
        env = dict(os.environ)
        env.update(self._env or {})
        self.proc = await asyncio.create_subprocess_exec(
            *args,
            *self._extra,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            limit=64 * 1024 * 1024,  # a reply may list every event received
        )
        started: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies[0] = started
        self._reader = asyncio.create_task(self._read())
        self._err_reader = asyncio.create_task(self._read_err())
        try:
            self.info = await asyncio.wait_for(started, timeout)
        except BaseException:
            await self.kill()
            raise
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            msg = json.loads(line)
            if "event" in msg:
                self.events.put_nowait(msg["event"])
            elif "id" in msg:
                fut = self._replies.pop(msg["id"], None)
                if fut is not None and not fut.done():
                    if msg.get("ok"):
                        fut.set_result(msg.get("result"))
                    else:
                        fut.set_exception(RuntimeError(msg.get("error", "agent error")))
        for fut in self._replies.values():
            if not fut.done():
                fut.set_exception(RuntimeError(f"node {self.node_id} exited"))
        self._replies.clear()

    async def _read_err(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while True:
            line = await self.proc.stderr.readline()
            if not line:
                return
            self.stderr_lines.append(line.decode(errors="replace").rstrip())

    async def call(self, cmd: str, *, call_timeout: float = 20.0, **args: Any) -> Any:
        """Run one command in the node and return its result (``args`` go to the command)."""
        assert self.proc is not None and self.proc.stdin is not None
        self._ids += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies[self._ids] = fut
        self.proc.stdin.write(json.dumps({"id": self._ids, "cmd": cmd, **args}).encode() + b"\n")
        await self.proc.stdin.drain()
        return await asyncio.wait_for(fut, call_timeout)

    async def next_event(self, timeout: float = 10.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.events.get(), timeout)

    async def collect(
        self,
        count: int,
        timeout: float = 20.0,
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """Wait for ``count`` events (matching ``where``); raise TimeoutError otherwise."""
        out: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            while len(out) < count:
                event = await self.events.get()
                if where is None or where(event):
                    out.append(event)
        return out

    async def kill(self) -> None:
        """SIGKILL the node (no goodbye) and reap it; what it printed before is kept."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()
        # Read what is still in the pipes: events the node reported before it died.
        for task in (self._reader, self._err_reader):
            if task is not None and not task.done():
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(task), 5)
        await self._stop_readers()

    async def aclose(self, timeout: float = 10.0) -> None:
        """Ask the node to quit; kill it if it does not."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            try:
                await self.call("quit", call_timeout=timeout)
                await asyncio.wait_for(self.proc.wait(), timeout)
            except (TimeoutError, RuntimeError, ConnectionError, BrokenPipeError):
                pass
        await self.kill()

    async def _stop_readers(self) -> None:
        for task in (self._reader, self._err_reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.close()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await self.proc.stdin.wait_closed()

    async def __aenter__(self) -> NodeProcess:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


# ---------------------------------------------------------------------- the agent


async def _agent(ns: argparse.Namespace) -> None:
    import frys_zmq as frys

    overrides: dict[str, Any] = {"node_id": ns.node_id, "cluster": ns.cluster}
    if ns.interface:
        overrides["interface"] = ns.interface
    if ns.heartbeat:
        overrides["heartbeat_interval"] = ns.heartbeat
    if ns.ttl:
        overrides["peer_ttl"] = ns.ttl
    if ns.recv_hwm:
        overrides["recv_hwm"] = ns.recv_hwm
    if ns.send_hwm:
        overrides["send_hwm"] = ns.send_hwm
    if ns.data_dir:
        overrides["data_dir"] = ns.data_dir
    if ns.persist:
        overrides["enable_persistence"] = True
        overrides["fsync_policy"] = ns.fsync
    if ns.static:
        overrides["cluster_peers"] = tuple(ns.static)
        overrides["discovery_strategy"] = "static"
    config = frys.EventBusConfig.load(**overrides)
    loop = asyncio.get_running_loop()
    out = sys.stdout

    def emit(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj, default=_jsonable) + "\n")
        out.flush()

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async with frys.EventBus(config) as bus:
        emit({"id": 0, "ok": True, "result": {"node_id": bus.node_id, **bus.endpoints}})

        quiet_ns: list[Any] = []
        background: list[asyncio.Task[None]] = []
        published = [0]

        def on_quiet(event: frys.Event) -> None:
            quiet_ns.append(event.payload.get("n") if isinstance(event.payload, dict) else None)

        async def publish_many(
            topic: str | list[str], start: int, count: int, ack: bool, batch: bool
        ) -> None:
            topics = [topic] if isinstance(topic, str) else topic
            if batch:  # all at once, without yielding to the loop: as fast as it gets
                await bus.publish_batch(
                    [(topics[i % len(topics)], {"n": i}) for i in range(start, start + count)]
                )
                published[0] += count
                return
            for i in range(start, start + count):
                await bus.publish(topics[i % len(topics)], {"n": i}, ack=ack)
                published[0] += 1
                if i % 64 == 0:
                    await asyncio.sleep(0)  # let the node breathe: heartbeats, NACKs

        def on_event(event: frys.Event) -> None:
            emit(
                {
                    "event": {
                        "topic": event.topic,
                        "payload": event.payload,
                        "metadata": dict(event.metadata),
                        "source": event.source,
                        "seq": event.seq,
                        "incarnation": event.incarnation,
                    }
                }
            )

        def make_handler(mode: str, delay: float) -> Callable[[frys.Request], Any]:
            async def handler(req: frys.Request) -> Any:
                if mode == "error":
                    raise ValueError(f"refused {req.payload!r}")
                if mode == "slow":
                    await asyncio.sleep(delay)
                if mode == "sum":
                    return sum(req.payload)
                return {"echo": req.payload, "by": bus.node_id}

            return handler

        while True:
            line = await reader.readline()
            if not line:
                return
            msg = json.loads(line)
            cmd, mid = msg.pop("cmd"), msg.pop("id")
            try:
                result: Any = None
                if cmd == "subscribe":
                    handler = on_quiet if msg.get("quiet") else on_event
                    bus.subscribe(msg["pattern"], handler, durable=msg.get("durable"))
                elif cmd == "publish":
                    ev = await bus.publish(
                        msg["topic"], msg.get("payload"), metadata=msg.get("metadata")
                    )
                    result = ev.seq
                elif cmd == "publish_many":
                    job = publish_many(
                        msg["topic"],
                        int(msg.get("start", 0)),
                        int(msg["count"]),
                        bool(msg.get("ack", False)),
                        bool(msg.get("batch", False)),
                    )
                    if msg.get("background"):
                        background.append(asyncio.create_task(job))
                    else:
                        await job
                elif cmd == "received":
                    result = quiet_ns
                elif cmd == "published":
                    result = published[0]
                elif cmd == "handle":
                    await bus.handle_request(
                        msg["topic"], make_handler(msg.get("mode", "echo"), msg.get("delay", 0))
                    )
                elif cmd == "request":
                    reply = await bus.request(
                        msg["topic"], msg.get("payload"), timeout=msg.get("timeout", 5.0)
                    )
                    match reply:
                        case frys.Reply.Success(value=v, responder=r):
                            result = {"kind": "success", "value": v, "responder": r}
                        case frys.Reply.Error(error=e):
                            result = {"kind": "error", "type": type(e).__name__, "error": str(e)}
                        case frys.Reply.Timeout():
                            result = {"kind": "timeout"}
                elif cmd == "wait_peers":
                    peers = await bus.wait_for_peers(int(msg["n"]), float(msg.get("timeout", 10)))
                    result = sorted(p.node_id for p in peers)
                elif cmd == "peers":
                    result = [
                        {
                            "node_id": p.node_id,
                            "state": str(p.state),
                            "ready": p.ready,
                            "incarnation": p.incarnation,
                        }
                        for p in bus.peers()
                    ]
                elif cmd == "metrics":
                    result = bus.get_metrics()
                elif cmd == "quit":
                    emit({"id": mid, "ok": True, "result": None})
                    return
                else:
                    raise ValueError(f"unknown command {cmd!r}")
                emit({"id": mid, "ok": True, "result": result})
            except Exception as exc:
                emit({"id": mid, "ok": False, "error": f"{type(exc).__name__}: {exc}"})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m frys_zmq.testing")
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--cluster", default="default")
    parser.add_argument("--interface", default=None)
    parser.add_argument("--heartbeat", type=float, default=None)
    parser.add_argument("--ttl", type=float, default=None)
    parser.add_argument("--recv-hwm", type=int, default=None)
    parser.add_argument("--send-hwm", type=int, default=None)
    parser.add_argument("--static", action="append", default=[])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--persist", action="store_true")
    parser.add_argument("--fsync", default="interval")
    ns = parser.parse_args(argv)
    try:
        asyncio.run(_agent(ns))
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        sys.stdout.write(
            json.dumps({"id": 0, "ok": False, "error": f"{type(exc).__name__}: {exc}"}) + "\n"
        )
        sys.stdout.flush()
        raise SystemExit(1) from exc


if __name__ == "__main__":
    main()
