"""The baseline roles: the same workloads written directly against pyzmq, and the optional
eclipse-zenoh peer.

The pyzmq baseline is what frys is measured against: synchronous loops, PUB/SUB with one
msgpack message per event and no envelope, DEALER/ROUTER for requests, unbounded high-water
marks so that it never drops (and so needs no repair).
"""

from __future__ import annotations

import array
import contextlib
import json
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import msgpack
import zmq

from ._child import Pipe, Role, Stop, rss_mb
from ._constants import BATCH, LOOPBACK
from ._report import percentiles
from ._workloads import WORKLOADS, Complex, Tally, Workload, paced_sync

__all__ = ["ROLES"]


def _role_raw_sub(p: dict[str, Any], pipe: Pipe) -> None:
    wl = WORKLOADS[p["workload"]]()
    tally = Tally(p["count"])
    with _sockets(zmq.SUB) as (sock,):
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        port = sock.bind_to_random_port(f"tcp://{LOOPBACK}")
        pipe.emit("ready", endpoint=f"tcp://{LOOPBACK}:{port}")
        # The publisher sends empty warm-up messages until told to go; one arriving here
        # means the connection and the subscription are up.
        if not sock.poll(30_000):
            raise RuntimeError("no warm-up message from the publisher")
        pipe.emit("peered")
        pipe.recv("go")
        unpackb = msgpack.unpackb
        unwrap, handle, add = wl.unwrap, wl.handle, tally.add
        idle_ms = int(p["idle_s"] * 1000)
        deadline = time.monotonic() + p["max_s"]
        recv = sock.recv
        noblock = zmq.NOBLOCK
        while not tally.complete and time.monotonic() < deadline:
            if not sock.poll(idle_ms):
                break
            # Drain what is queued; wait in poll only when there is nothing.
            with contextlib.suppress(zmq.Again):
                while True:
                    msg = recv(noblock)
                    if not msg:
                        continue  # a warm-up message
                    payload, metadata = unwrap(unpackb(msg))
                    if add(handle(payload, metadata), payload["ts"]):
                        break
        result: dict[str, Any] = {"tally": tally.summary(), "rss_mb": rss_mb()}
        if isinstance(wl, Complex):
            result["passed_filter"] = wl.passed
        pipe.emit("result", **result)
        pipe.wait_stop()


def _role_raw_pub(p: dict[str, Any], pipe: Pipe) -> None:
    wl = WORKLOADS[p["workload"]]()
    with _sockets(zmq.PUB) as (sock,):
        pipe.emit("ready", endpoint="")
        endpoint = pipe.recv("connect")["endpoints"][0]
        sock.connect(endpoint)
        while not pipe.stdin_ready(0.01):
            sock.send(b"")
        pipe.recv("go")
        packb = msgpack.packb
        make, wrap = wl.make, wl.wrap
        send = sock.send
        count = p["count"]
        t0 = time.perf_counter()
        if p.get("rate"):
            paced_sync(count, p["rate"], lambda i: send(packb(wrap(*make(i)))))
        else:
            for i in range(count):
                send(packb(wrap(*make(i))))
        seconds = time.perf_counter() - t0
        pipe.emit("published", count=count, seconds=seconds)
        pipe.wait_stop()
        pipe.emit("result", rss_mb=rss_mb())


def _role_raw_mesh(p: dict[str, Any], pipe: Pipe) -> None:
    me = p["node_id"]
    ids = p["ids"]
    idx = ids.index(me)
    count = p["count"]
    wl = Workload()
    tallies = {i: Tally(count) for i in range(len(ids)) if i != idx}
    with _sockets(zmq.PUB, zmq.SUB) as (pub, sub):
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        port = pub.bind_to_random_port(f"tcp://{LOOPBACK}")
        pipe.emit("ready", endpoint=f"tcp://{LOOPBACK}:{port}")
        for endpoint in pipe.recv("connect")["endpoints"]:
            sub.connect(endpoint)
        hello = b"W" + bytes([idx])
        heard: set[int] = set()
        peered = False
        deadline = time.monotonic() + 30
        while not pipe.stdin_ready(0.01):
            pub.send(hello)
            while sub.poll(0):
                msg = sub.recv()
                if msg[:1] == b"W":
                    heard.add(msg[1])
            if not peered and len(heard) == len(tallies):
                pipe.emit("peered")
                peered = True
            if time.monotonic() > deadline:
                raise RuntimeError("peers not heard within 30 s")
        pipe.recv("go")
        packb, unpackb = msgpack.packb, msgpack.unpackb
        make = wl.make

        recv = sub.recv
        noblock = zmq.NOBLOCK

        def drain() -> None:
            with contextlib.suppress(zmq.Again):
                while True:
                    msg = recv(noblock)
                    if msg[:1] == b"W":
                        continue
                    obj = unpackb(msg)
                    tallies[obj["src"]].add(obj["n"], obj["ts"])

        t0 = time.perf_counter()
        for lo in range(0, count, BATCH):
            for i in range(lo, min(count, lo + BATCH)):
                payload, _ = make(i)
                payload["src"] = idx
                pub.send(packb(payload))
            drain()
        publish_s = time.perf_counter() - t0
        idle_ns = p["idle_s"] * 1e9
        end = time.monotonic() + p["max_s"]
        while not all(t.complete for t in tallies.values()) and time.monotonic() < end:
            if sub.poll(100):
                drain()
            elif time.time_ns() - max(t.last_ns for t in tallies.values()) > idle_ns:
                break
        pipe.emit(
            "result",
            tallies=[t.summary() for t in tallies.values()],
            latency_ms=percentiles([x for t in tallies.values() for x in t.lat]),
            local=0,
            published=count,
            publish_s=publish_s,
            rss_mb=rss_mb(),
        )
        pipe.wait_stop()


def _role_raw_server(p: dict[str, Any], pipe: Pipe) -> None:
    with _sockets(zmq.ROUTER) as (sock,):
        port = sock.bind_to_random_port(f"tcp://{LOOPBACK}")
        pipe.emit("ready", endpoint=f"tcp://{LOOPBACK}:{port}")
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(0, zmq.POLLIN)  # stdin: the coordinator's stop
        packb, unpackb = msgpack.packb, msgpack.unpackb
        recv, send = sock.recv_multipart, sock.send_multipart
        noblock = zmq.NOBLOCK
        while True:
            ready = dict(poller.poll())
            if sock in ready:
                # Serve everything queued before looking at stdin again.
                with contextlib.suppress(zmq.Again):
                    while True:
                        ident, corr, body = recv(noblock)
                        send((ident, corr, packb(unpackb(body))))
            if 0 in ready:
                try:
                    pipe.recv()  # "go" (which starts the CPU count) or the end
                except Stop:
                    break
        pipe.emit("result", rss_mb=rss_mb())


def _role_raw_client(p: dict[str, Any], pipe: Pipe) -> None:
    wl = Workload()
    count = p["count"]
    in_flight = p["in_flight"]
    with _sockets(zmq.DEALER) as (sock,):
        pipe.emit("ready", endpoint="")
        sock.connect(pipe.recv("connect")["endpoints"][0])
        sock.send_multipart((b"warm", msgpack.packb({"n": -1})))
        if not sock.poll(30_000):
            raise RuntimeError("the server never answered")
        sock.recv_multipart()
        pipe.emit("peered")
        pipe.recv("go")
        packb, unpackb = msgpack.packb, msgpack.unpackb
        send, recv = sock.send_multipart, sock.recv_multipart
        make = wl.make
        lat: array.array[int] = array.array("q")
        sent_at: dict[int, int] = {}
        ok = 0
        pack_i = struct.Struct("<q").pack
        unpack_i = struct.Struct("<q").unpack
        nxt = 0
        t0 = time.perf_counter()
        while nxt < min(in_flight, count):
            sent_at[nxt] = time.perf_counter_ns()
            send((pack_i(nxt), packb(make(nxt)[0])))
            nxt += 1
        while sent_at:
            corr, body = recv()
            (i,) = unpack_i(corr)
            lat.append(time.perf_counter_ns() - sent_at.pop(i))
            if unpackb(body)["n"] == i:
                ok += 1
            if nxt < count:
                sent_at[nxt] = time.perf_counter_ns()
                send((pack_i(nxt), packb(make(nxt)[0])))
                nxt += 1
        seconds = time.perf_counter() - t0
        pipe.emit(
            "result",
            ok=ok,
            attempted=count,
            seconds=seconds,
            latency_ms=percentiles(lat),
            rss_mb=rss_mb(),
        )
        pipe.wait_stop()


# -- eclipse-zenoh, an optional peer (the 'bench' extra) -----------------------------------


def _role_zenoh_sub(p: dict[str, Any], pipe: Pipe) -> None:
    wl = Workload()
    tally = Tally(p["count"])
    done = threading.Event()
    import zenoh

    endpoint = f"tcp/{LOOPBACK}:{_free_loopback_port()}"
    session: Any = zenoh.open(_zenoh_config(listen=[endpoint], connect=[]))
    try:
        unpackb = msgpack.unpackb
        handle = wl.handle
        lock = threading.Lock()

        def on_sample(sample: Any) -> None:
            payload = unpackb(sample.payload.to_bytes())
            with lock:
                if tally.add(handle(payload, None), payload["ts"]):
                    done.set()

        sub = session.declare_subscriber("bench/simple", on_sample)
        pipe.emit("ready", endpoint=endpoint)
        pipe.recv("go")
        deadline = time.monotonic() + p["max_s"]
        while not done.wait(0.1) and time.monotonic() < deadline:
            if tally.last_ns and time.time_ns() - tally.last_ns > p["idle_s"] * 1e9:
                break
        sub.undeclare()
        pipe.emit("result", tally=tally.summary(), rss_mb=rss_mb())
        pipe.wait_stop()
    finally:
        session.close()


def _role_zenoh_pub(p: dict[str, Any], pipe: Pipe) -> None:
    import zenoh

    wl = Workload()
    pipe.emit("ready", endpoint="")
    endpoint = pipe.recv("connect")["endpoints"][0]
    session: Any = zenoh.open(_zenoh_config(listen=[], connect=[endpoint]))
    try:
        pub = session.declare_publisher("bench/simple")
        time.sleep(0.5)  # let the subscriber's declaration arrive
        pipe.emit("peered")
        pipe.recv("go")
        packb = msgpack.packb
        make = wl.make
        t0 = time.perf_counter()
        for i in range(p["count"]):
            pub.put(packb(make(i)[0]))
        seconds = time.perf_counter() - t0
        pipe.emit("published", count=p["count"], seconds=seconds)
        pipe.wait_stop()
        pipe.emit("result", rss_mb=rss_mb())
    finally:
        session.close()


#: The baseline and peer roles by name (the coordinator's ``--role`` argument).
ROLES: dict[str, Role] = {
    "raw_sub": _role_raw_sub,
    "raw_pub": _role_raw_pub,
    "raw_mesh": _role_raw_mesh,
    "raw_server": _role_raw_server,
    "raw_client": _role_raw_client,
    "zenoh_sub": _role_zenoh_sub,
    "zenoh_pub": _role_zenoh_pub,
}


# ---------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _sockets(*kinds: int) -> Iterator[list[zmq.Socket[bytes]]]:
    """Sockets of the given kinds on a private context, closed (without lingering) on exit."""
    zctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    socks = [_raw_socket(zctx, kind) for kind in kinds]
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close(0)
        zctx.term()


def _raw_socket(zctx: zmq.Context[zmq.Socket[bytes]], kind: int) -> zmq.Socket[bytes]:
    sock = zctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    # Unbounded queues: the baseline never drops, so it needs no repair.
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    return sock


def _zenoh_config(*, listen: list[str], connect: list[str]) -> Any:
    """A zenoh peer that neither scouts nor listens beyond the given loopback endpoints."""
    import zenoh

    config = zenoh.Config()
    config.insert_json5("mode", '"peer"')
    config.insert_json5("scouting/multicast/enabled", "false")
    config.insert_json5("scouting/gossip/enabled", "false")
    config.insert_json5("listen/endpoints", json.dumps(listen))
    config.insert_json5("connect/endpoints", json.dumps(connect))
    return config


def _free_loopback_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        port: int = s.getsockname()[1]
        return port
