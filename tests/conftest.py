"""Session-wide safety and hygiene for the frys_zmq test suite.

- ``FRYS_INTERFACE=127.0.0.1`` for the whole session: a test that forgets to pin the
  interface still cannot announce or browse mDNS beyond loopback.
- Every test is checked for leftovers: threads, child processes and open sockets
  (file descriptors) it started must be gone when it ends.
"""

from __future__ import annotations

import os
import threading
import time
import uuid

import psutil
import pytest
import zmq.utils.garbage

os.environ["FRYS_INTERFACE"] = "127.0.0.1"


@pytest.fixture
def cluster() -> str:
    """A cluster name no other test uses, so concurrent meshes never mix."""
    return "t-" + uuid.uuid4().hex[:12]


def _children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def _inet_sockets() -> int:
    return sum(1 for c in psutil.Process().net_connections(kind="inet"))


# pyzmq starts one garbage-collector thread per process on its first zero-copy send (a
# payload of 64 KB or more) and keeps it for the life of the process, by design.
_PYZMQ_GC_THREAD = zmq.utils.garbage.GarbageCollectorThread


@pytest.fixture(autouse=True)
def _no_leftovers():
    threads_before = set(threading.enumerate())
    children_before = _children()
    sockets_before = _inet_sockets()
    yield
    # Cleanup of zmq/zeroconf threads and reaped children is asynchronous by a few ms; wait
    # for it with a deadline rather than a fixed sleep.
    deadline = time.monotonic() + 5.0
    while True:
        extra_threads = [
            t
            for t in threading.enumerate()
            if t not in threads_before and t.is_alive() and not isinstance(t, _PYZMQ_GC_THREAD)
        ]
        extra_children = [
            pid
            for pid in _children() - children_before
            if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        ]
        extra_sockets = _inet_sockets() - sockets_before
        if not extra_threads and not extra_children and extra_sockets <= 0:
            break
        if time.monotonic() > deadline:
            for pid in extra_children:
                psutil.Process(pid).kill()
            pytest.fail(
                f"test left threads {[t.name for t in extra_threads]} "
                f", child processes {extra_children} and {extra_sockets} sockets behind"
            )
        time.sleep(0.02)
