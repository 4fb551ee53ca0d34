"""The log roles: appending to and replaying frys's persistent event log, and the baseline,
a plain buffered file with a length prefix per record and the same fsync cadence.
"""

from __future__ import annotations

import array
import asyncio
import os
import struct
import time
from typing import Any

import msgpack

from ._child import Pipe, Role, rss_mb
from ._report import per_second, percentiles
from ._workloads import Workload

__all__ = ["ROLES"]

_LOG_TOPIC = "bench.log"
_RAW_HEAD = struct.Struct("<IQqHI")  # body length, seq, timestamp, topic length, header length
_SAMPLE = 16  # append latency is timed for one record in _SAMPLE


def _role_frys_log(p: dict[str, Any], pipe: Pipe) -> None:
    asyncio.run(_frys_log(p, pipe))


async def _frys_log(p: dict[str, Any], pipe: Pipe) -> None:
    from .._log import LogRecord, PersistentEventQueue, SegmentLog

    header, payload = _log_record_parts()
    count = p["count"]
    record_bytes = len(_LOG_TOPIC) + len(header) + len(payload)
    lat: array.array[int] = array.array("q")
    result: dict[str, Any] = {"record_bytes": record_bytes}
    if p["mode"] == "append":
        policy = p["policy"]
        q = PersistentEventQueue(p["dir"], fsync=policy)
        await q.open()
        clock = time.perf_counter_ns
        pipe.mark()
        t0 = time.perf_counter()
        try:
            if policy == "always":
                result["how"] = "await store_event() per record (returns once fsynced)"
                for seq in range(1, count + 1):
                    t = clock()
                    await q.store_event(LogRecord(seq, time.time_ns(), _LOG_TOPIC, header, payload))
                    lat.append(clock() - t)
            else:
                result["how"] = (
                    "append_nowait() per record, yielding to the loop every 1000 (the background "
                    "committer flushes and fsyncs); latency is the append call, sampled 1 in "
                    f"{_SAMPLE}; the time includes the final commit in aclose()"
                )
                append = q.append_nowait
                for seq in range(1, count + 1):
                    rec = LogRecord(seq, time.time_ns(), _LOG_TOPIC, header, payload)
                    if seq % _SAMPLE:
                        append(rec)
                    else:
                        t = clock()
                        append(rec)
                        lat.append(clock() - t)
                    if not seq % 1000:
                        await asyncio.sleep(0)
        finally:
            await q.aclose()
        seconds = time.perf_counter() - t0
        result.update(count=count, seconds=seconds, fsyncs=q.fsync_count)
    else:
        t0 = time.perf_counter()
        q = PersistentEventQueue(p["dir"])
        await q.open()
        result["open_s"] = round(time.perf_counter() - t0, 4)
        expected = 1
        ooo = 0
        clock = time.perf_counter_ns
        pipe.mark()
        t0 = time.perf_counter()
        last = clock()
        try:
            async for rec in q.iter_events():
                now = clock()
                lat.append(now - last)
                last = now
                if rec.seq != expected:
                    ooo += 1
                expected = rec.seq + 1
        finally:
            await q.aclose()
        seconds = time.perf_counter() - t0
        result["cpu_s"] = pipe.cpu_s()
        n = len(lat)
        # The same log through the synchronous reader, for comparison.
        with SegmentLog(p["dir"]) as log:
            t1 = time.perf_counter()
            sync_n = sum(1 for _ in log.read_from(0))
            sync_s = time.perf_counter() - t1
        result.update(
            count=n,
            seconds=seconds,
            out_of_order=ooo,
            sync_events_per_s=per_second(sync_n, sync_s),
        )
    pipe.emit("result", latency_ms=percentiles(lat), rss_mb=rss_mb(), **result)


def _role_raw_log(p: dict[str, Any], pipe: Pipe) -> None:
    header, payload = _log_record_parts()
    topic = _LOG_TOPIC.encode()
    body = topic + header + payload
    count = p["count"]
    path = os.path.join(p["dir"], "raw.log")
    lat: array.array[int] = array.array("q")
    clock = time.perf_counter_ns
    result: dict[str, Any] = {"record_bytes": len(body)}
    if p["mode"] == "append":
        os.makedirs(p["dir"], exist_ok=True)
        policy = p["policy"]
        pack = _RAW_HEAD.pack
        blen, tlen, hlen = len(body), len(topic), len(header)
        fsyncs = 0
        pipe.mark()
        t0 = time.perf_counter()
        with open(path, "ab", buffering=256 * 1024) as f:
            write = f.write
            fd = f.fileno()
            last_sync = time.perf_counter()
            for seq in range(1, count + 1):
                timed = policy == "always" or not seq % _SAMPLE
                t = clock() if timed else 0
                write(pack(blen, seq, time.time_ns(), tlen, hlen))
                write(body)
                if policy == "always":
                    f.flush()
                    os.fsync(fd)
                    fsyncs += 1
                if timed:
                    lat.append(clock() - t)
                if policy == "interval" and not seq % 1000:
                    now = time.perf_counter()
                    if now - last_sync >= 0.05:
                        f.flush()
                        os.fsync(fd)
                        fsyncs += 1
                        last_sync = now
            f.flush()
            if policy != "never":
                os.fsync(fd)
                fsyncs += 1
        seconds = time.perf_counter() - t0
        result.update(count=count, seconds=seconds, fsyncs=fsyncs)
    else:
        unpack = _RAW_HEAD.unpack_from
        hsize = _RAW_HEAD.size
        n = 0
        ooo = 0
        expected = 1
        pipe.mark()
        t0 = time.perf_counter()
        last = clock()
        records: list[tuple[int, int, str, bytes, bytes]] = []
        with open(path, "rb") as f:
            rest = b""
            while chunk := f.read(1 << 20):
                data = rest + chunk
                pos = 0
                end = len(data)
                while pos + hsize <= end:
                    blen, seq, ts, tlen, hlen = unpack(data, pos)
                    b0 = pos + hsize
                    fend = b0 + blen
                    if fend > end:
                        break
                    t1 = b0 + tlen
                    h1 = t1 + hlen
                    records.append((seq, ts, data[b0:t1].decode(), data[t1:h1], data[h1:fend]))
                    pos = fend
                rest = data[pos:]
                for rec in records:
                    now = clock()
                    lat.append(now - last)
                    last = now
                    if rec[0] != expected:
                        ooo += 1
                    expected = rec[0] + 1
                n += len(records)
                records.clear()
        seconds = time.perf_counter() - t0
        result.update(count=n, seconds=seconds, out_of_order=ooo)
    pipe.emit("result", latency_ms=percentiles(lat), rss_mb=rss_mb(), **result)


#: The log roles by name (the coordinator's ``--role`` argument).
ROLES: dict[str, Role] = {
    "frys_log": _role_frys_log,
    "raw_log": _role_raw_log,
}


def _log_record_parts() -> tuple[bytes, bytes]:
    """The header and payload bytes of a typical simple event, as the node would log them."""
    from .._wire import Kind, encode_header

    payload, _ = Workload().make(0)
    header = encode_header(Kind.EVENT, "bench-node-1", 1_700_000_000_000_000, 1, time.time_ns())
    return header, msgpack.packb(payload)
