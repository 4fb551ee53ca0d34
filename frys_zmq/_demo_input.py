"""Event sources for the demo: the dpkg log, JSON lines, any text log, or a synthetic stream.

No I/O beyond reading the input file, no frys machinery: plain functions from lines to
``DemoEvent`` tuples, so they are tested on their own.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import ConfigError, TopicError
from ._topics import validate_pattern, validate_topic

__all__ = [
    "DPKG_LOG",
    "DemoEvent",
    "DemoInput",
    "default_patterns",
    "load_input",
    "parse_dpkg_line",
    "synthetic_dpkg",
]

#: The log replayed when no ``--input`` is given.
DPKG_LOG = Path("/var/log/dpkg.log")

#: ``(topic, payload, metadata)``, the shape every source produces.
DemoEvent = tuple[str, Any, dict[str, Any]]

_DPKG_RE = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (\S+)(?: (.*))?")
_TOKEN_RE = re.compile(r"[^A-Za-z0-9_-]+")
# Actions whose arguments are "<package> <installed version> <available version>".
_PACKAGE_ACTIONS = frozenset({"install", "upgrade", "remove", "purge", "configure", "trigproc"})


@dataclass(slots=True)
class DemoInput:
    """The events to replay and where they came from."""

    events: list[DemoEvent]
    source: str  #: what was read, for the summary ("/var/log/dpkg.log", "synthetic ...")
    kind: str  #: "dpkg" | "jsonl" | "text" | "synthetic"
    lines: int = 0  #: lines in the input file
    skipped: int = 0  #: lines that were not events of the detected kind


def token(text: str) -> str:
    """``text`` squeezed into one valid topic token (letters, digits, ``-``, ``_``)."""
    return _TOKEN_RE.sub("_", text).strip("_").lower() or "unknown"


def _version(text: str) -> str | None:
    return None if text == "<none>" else text


def _package(spec: str) -> tuple[str, str | None]:
    name, _, arch = spec.partition(":")
    return name, arch or None


def parse_dpkg_line(line: str, number: int) -> DemoEvent | None:
    """One ``/var/log/dpkg.log`` line as an event, or None if it is not a dpkg log line.

    ``status`` lines become ``dpkg.status.<state>`` (three tokens), every other action
    ``dpkg.<action>``, so the demo's ``dpkg.*`` and ``dpkg.>`` subscriptions differ.
    """
    m = _DPKG_RE.fullmatch(line.rstrip("\n"))
    if m is None:
        return None
    when, action, rest = m.group(1), m.group(2), (m.group(3) or "").split()
    meta: dict[str, Any] = {"time": when, "line": number}
    payload: dict[str, Any]
    if action in _PACKAGE_ACTIONS and len(rest) >= 3:
        name, arch = _package(rest[0])
        payload = {
            "package": name,
            "arch": arch,
            "old_version": _version(rest[1]),
            "version": _version(rest[2]),
        }
        return f"dpkg.{action}", payload, meta
    if action == "status" and len(rest) >= 3:
        name, arch = _package(rest[1])
        payload = {"package": name, "arch": arch, "status": rest[0], "version": _version(rest[2])}
        return f"dpkg.status.{token(rest[0])}", payload, meta
    if action == "startup":
        payload = {"what": rest[0] if rest else None, "action": rest[1] if len(rest) > 1 else None}
        return "dpkg.startup", payload, meta
    if action == "conffile" and rest:
        payload = {"file": rest[0], "decision": rest[1] if len(rest) > 1 else None}
        return "dpkg.conffile", payload, meta
    return f"dpkg.{token(action)}", {"args": rest}, meta


def synthetic_dpkg(count: int = 3000) -> list[DemoEvent]:
    """A made-up dpkg session: install, unpack and configure a cycle of package names."""
    names = [
        "libzmq5",
        "python3-zmq",
        "python3-zeroconf",
        "liblz4-1",
        "msgpack-tools",
        "tzdata",
        "ca-certificates",
        "openssl",
        "curl",
        "git",
        "vim-tiny",
        "less",
    ]
    steps: list[tuple[str, str | None]] = [
        ("startup", "archives unpack"),
        ("install", None),
        ("status", "half-installed"),
        ("status", "unpacked"),
        ("startup", "packages configure"),
        ("configure", None),
        ("status", "half-configured"),
        ("status", "installed"),
    ]
    events: list[DemoEvent] = []
    n = 0
    while len(events) < count:
        pkg = names[(n // len(steps)) % len(names)]
        version = f"1.{n // (len(steps) * len(names))}-1"
        action, arg = steps[n % len(steps)]
        when = f"2026-01-01 00:{(n // 600) % 60:02d}:{(n // 10) % 60:02d}"
        if action == "startup":
            line = f"{when} startup {arg}"
        elif action == "status":
            line = f"{when} status {arg} {pkg}:amd64 {version}"
        elif action == "install":
            line = f"{when} install {pkg}:amd64 <none> {version}"
        else:
            line = f"{when} configure {pkg}:amd64 {version} <none>"
        parsed = parse_dpkg_line(line, n + 1)
        assert parsed is not None
        events.append(parsed)
        n += 1
    return events


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc


def _jsonl_events(lines: Iterable[str], path: Path) -> Iterator[DemoEvent]:
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{number}: not JSON: {exc.msg}") from exc
        if not isinstance(obj, dict) or not isinstance(obj.get("topic"), str):
            raise ConfigError(f"{path}:{number}: expected an object with a 'topic' string")
        try:
            validate_topic(obj["topic"])
        except TopicError as exc:
            raise ConfigError(f"{path}:{number}: {exc}") from exc
        metadata = obj.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise ConfigError(f"{path}:{number}: 'metadata' must be an object")
        payload = obj.get("payload")
        yield obj["topic"], payload, {**metadata, "line": number}


def _looks_like_jsonl(lines: list[str]) -> bool:
    first = next((line for line in lines if line.strip()), "")
    try:
        obj = json.loads(first)
    except json.JSONDecodeError:
        return False
    return isinstance(obj, dict) and "topic" in obj


def load_input(path: str | Path | None, limit: int | None = None) -> DemoInput:
    """Read ``path`` (or the dpkg log, or make a synthetic stream) into at most ``limit`` events.

    A file of JSON objects with a ``topic`` is replayed as is; a dpkg log is parsed; any
    other text file becomes one ``log.line`` event per non-blank line.
    """
    if path is None:
        if not DPKG_LOG.is_file():
            events = synthetic_dpkg(limit or 3000)
            return DemoInput(
                events,
                f"synthetic dpkg-style stream ({DPKG_LOG} not found)",
                "synthetic",
                len(events),
            )
        path = DPKG_LOG
    path = Path(path)
    lines = _read_lines(path)
    stop = len(lines) if limit is None else limit
    if _looks_like_jsonl(lines):
        events = list(itertools.islice(_jsonl_events(lines, path), stop))
        return DemoInput(events, str(path), "jsonl", len(lines))
    parsed = [parse_dpkg_line(line, n) for n, line in enumerate(lines, 1) if line.strip()]
    dpkg = [e for e in parsed if e is not None]
    # A few foreign lines (a truncated first line, say) do not make it less of a dpkg log.
    if dpkg and len(dpkg) >= len(parsed) // 2:
        return DemoInput(dpkg[:stop], str(path), "dpkg", len(lines), len(parsed) - len(dpkg))
    text: list[DemoEvent] = [
        ("log.line", {"text": line}, {"line": n, "file": path.name})
        for n, line in enumerate(lines, 1)
        if line.strip()
    ]
    return DemoInput(text[:stop], str(path), "text", len(lines))


def default_patterns(nodes: int, topics: Counter[str]) -> list[list[str]]:
    """Subscriptions per node that show exact topics, ``*`` and ``>`` side by side.

    Node 0 takes the most frequent topic exactly, node 1 everything under the common root
    (``root.>``), node 2 one token below the root (``root.*``) plus a pattern with a leading
    ``*``, node 3 the catch-all ``>``; further nodes repeat rows 1-3.
    """
    if not topics:
        return [[">"] for _ in range(nodes)]
    top = topics.most_common(1)[0][0]
    roots = Counter(t.split(".", 1)[0] for t in topics.elements())
    root = roots.most_common(1)[0][0]
    if root == "dpkg":
        rows = [
            ["dpkg.status.installed"],
            ["dpkg.>"],
            ["dpkg.*", "*.status.installed"],
            [">"],
            ["dpkg.install", "dpkg.upgrade"],
            ["dpkg.status.>"],
        ]
    else:
        top_tokens = top.split(".")
        second = ["*." + ".".join(top_tokens[1:])] if len(top_tokens) > 1 else []
        rows = [[top], [f"{root}.>"], [f"{root}.*", *second], [">"]]
    for row in rows:
        for pattern in row:
            validate_pattern(pattern)
    return [rows[i] if i < len(rows) else rows[1 + (i - 1) % (len(rows) - 1)] for i in range(nodes)]
