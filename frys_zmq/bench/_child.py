"""The link between the coordinator and its child processes: JSON lines both ways.

The coordinator starts each child as ``python -m frys_zmq.bench --role ROLE --params JSON``
and holds a ``Child``; the child runs ``child_main``, which hands a ``Pipe`` to the role. A role
emits ``ready`` (and ``peered``) while it sets up, waits for ``go``, and emits one ``result``;
end of input, or ``stop``, tells it to finish and exit.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import queue
import resource
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from ._constants import LOOPBACK

__all__ = ["BenchError", "Child", "Pipe", "Progress", "Role", "Stop", "child_main", "rss_mb"]


class BenchError(Exception):
    """A run could not produce figures (a child failed, timed out or lost its peer)."""


class Child:
    """A child process of the benchmark: JSON lines to its stdin, from its stdout."""

    def __init__(
        self, label: str, role: str, params: dict[str, Any], profile_dir: str | None
    ) -> None:
        self.label = label
        self.role = role
        cmd = [sys.executable, "-m", "frys_zmq.bench", "--role", role]
        params = dict(params)
        if profile_dir:
            params["_profile_dir"] = profile_dir
        cmd += ["--params", json.dumps(params)]
        env = dict(os.environ, FRYS_INTERFACE=LOOPBACK)
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        self._lines: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=30)
        self._threads = [
            threading.Thread(target=self._read_stdout, name=f"bench-{role}-out", daemon=True),
            threading.Thread(target=self._read_stderr, name=f"bench-{role}-err", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        try:
            for raw in self.proc.stdout:
                try:
                    msg = json.loads(raw)
                except ValueError:
                    self._stderr.append("stdout: " + raw.decode(errors="replace").rstrip())
                    continue
                if isinstance(msg, dict):
                    self._lines.put(msg)
        finally:
            self._lines.put(None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self._stderr.append(raw.decode(errors="replace").rstrip())

    def _tail(self) -> str:
        lines = list(self._stderr)[-12:]
        return ("\n  " + "\n  ".join(lines)) if lines else ""

    def send(self, kind: str, **data: Any) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"kind": kind, **data}).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise BenchError(f"{self.label} ({self.role}) is gone: {exc}{self._tail()}") from exc

    def expect(self, kind: str, timeout: float) -> dict[str, Any]:
        """The next message of ``kind`` (others are skipped); raise BenchError otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError(
                    f"{self.label} ({self.role}) sent no {kind!r} within {timeout:g}s{self._tail()}"
                )
            try:
                msg = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if msg is None:
                self._lines.put(None)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(2)
                raise BenchError(
                    f"{self.label} ({self.role}) exited with {self.proc.returncode} before "
                    f"{kind!r}{self._tail()}"
                )
            if msg.get("kind") == "error":
                raise BenchError(
                    f"{self.label} ({self.role}) failed: {msg.get('error')}\n"
                    f"{msg.get('trace', '')}{self._tail()}"
                )
            if msg.get("kind") == kind:
                return msg

    def request_exit(self) -> None:
        """Close the child's stdin: every role takes end of input as 'stop and exit'."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()

    def close(self, grace: float = 15.0) -> None:
        """Reap the child: EOF on its stdin, then SIGTERM, then SIGKILL."""
        self.request_exit()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for t in self._threads:
            t.join(2)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class Progress:
    """A progress bar on stderr (one line per step when stderr is not a terminal)."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.enabled = enabled
        self.tty = enabled and sys.stderr.isatty()
        self.t0 = time.monotonic()

    def step(self, label: str) -> None:
        if not self.enabled:
            return
        self.done = min(self.done + 1, self.total)
        elapsed = time.monotonic() - self.t0
        if self.tty:
            width = 30
            filled = int(width * (self.done - 1) / self.total)
            bar = "#" * filled + "." * (width - filled)
            sys.stderr.write(f"\r[{bar}] {self.done}/{self.total} {elapsed:5.0f}s {label:<32}")
        else:
            sys.stderr.write(f"[{self.done}/{self.total} {elapsed:.0f}s] {label}\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            width = 30
            sys.stderr.write(
                f"\r[{'#' * width}] done in {time.monotonic() - self.t0:.0f}s{' ' * 40}\n"
            )
            sys.stderr.flush()


class Stop(Exception):
    """The coordinator closed our stdin or said stop."""


class Pipe:
    """A child's end of the coordinator link: JSON lines out on stdout, in on stdin.

    Reads fd 0 directly (no buffered text layer) so that ``stdin_ready`` can trust select().
    """

    def __init__(self) -> None:
        self._buf = b""
        self._cpu0 = time.process_time()
        self._gc = _GcTimer()

    def mark(self) -> None:
        """Start counting CPU time (every thread, libzmq's I/O thread too) and GC pauses."""
        self._cpu0 = time.process_time()
        self._gc.reset()

    def cpu_s(self) -> float:
        """CPU seconds of this process since ``mark()`` (or since the pipe was made)."""
        return round(time.process_time() - self._cpu0, 4)

    def emit(self, kind: str, **data: Any) -> None:
        """Send a message; a ``result`` also carries ``cpu_s`` and ``gc`` unless given."""
        if kind == "result":
            data.setdefault("cpu_s", self.cpu_s())
            data.setdefault("gc", self._gc.summary())
        sys.stdout.write(json.dumps({"kind": kind, **data}) + "\n")
        sys.stdout.flush()

    def _line(self) -> bytes:
        while b"\n" not in self._buf:
            chunk = os.read(0, 65536)
            if not chunk:
                raise Stop
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def recv(self, kind: str | None = None) -> dict[str, Any]:
        """The next command of ``kind`` (blocking); raises Stop at end of input or on 'stop'."""
        while True:
            msg = json.loads(self._line())
            if msg.get("kind") == "stop" and kind != "stop":
                raise Stop
            if msg.get("kind") == "go":
                self.mark()
            if kind is None or msg.get("kind") == kind:
                return dict(msg)

    async def arecv(self, kind: str | None = None) -> dict[str, Any]:
        return await asyncio.to_thread(self.recv, kind)

    def wait_stop(self) -> None:
        with contextlib.suppress(Stop):
            self.recv("stop")

    async def await_stop(self) -> None:
        await asyncio.to_thread(self.wait_stop)

    def stdin_ready(self, timeout: float) -> bool:
        """Whether a command (or end of input) is waiting."""
        return b"\n" in self._buf or bool(select.select([0], [], [], timeout)[0])


#: A child's work: its parameters and its end of the link.
Role = Callable[[dict[str, Any], Pipe], None]


def child_main(role: str, params: dict[str, Any], roles: Mapping[str, Role]) -> int:
    """Run ``roles[role]`` in this (child) process; return its exit code.

    A failure is reported to the coordinator as an ``error`` message (with the traceback)
    rather than only on stderr. ``params["_profile_dir"]`` runs the role under cProfile.
    """
    _die_with_parent()
    os.environ["FRYS_INTERFACE"] = LOOPBACK
    pipe = Pipe()
    fn = roles.get(role)
    if fn is None:
        pipe.emit("error", error=f"unknown role {role!r}")
        return 2
    profile_dir = params.pop("_profile_dir", None)
    profiler = None
    if profile_dir:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        fn(params, pipe)
    except Stop:
        return 0
    except Exception as exc:
        pipe.emit("error", error=f"{type(exc).__name__}: {exc}", trace=traceback.format_exc())
        return 1
    finally:
        if profiler is not None and profile_dir:
            profiler.disable()
            profiler.dump_stats(os.path.join(profile_dir, f"{role}-{os.getpid()}.prof"))
    return 0


def rss_mb() -> float:
    """Peak resident set size of this process, in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


class _GcTimer:
    """Counts the cyclic garbage collector's runs and pauses (by generation)."""

    def __init__(self) -> None:
        import gc

        self._t0 = 0.0
        self.reset()
        gc.callbacks.append(self._on_gc)

    def reset(self) -> None:
        self.count = [0, 0, 0]
        self.total = 0.0
        self.longest = 0.0

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            return
        pause = time.perf_counter() - self._t0
        self.count[info["generation"]] += 1
        self.total += pause
        self.longest = max(self.longest, pause)

    def summary(self) -> dict[str, Any]:
        return {
            "collections": list(self.count),
            "total_ms": round(self.total * 1000, 2),
            "longest_ms": round(self.longest * 1000, 3),
        }


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this child if the coordinator dies (best effort)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
        if os.getppid() == 1:  # the parent was already gone
            os._exit(1)
