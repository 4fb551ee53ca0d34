"""``frys-zmq``: the command line tool (``node``, ``discover``, ``pub``, ``sub``, ``request``,
``demo``, ``bench``).

Exit codes: 0 success (``discover`` finding no nodes is a result, not an error); 1 runtime
failure or lost events; 2 usage error (bad arguments, an invalid topic or config); 3 timeout,
or fewer nodes or events than ``discover --expect`` / ``sub --count`` asked for; 130
interrupted by SIGINT, 143 by SIGTERM (also ``node``, ``sub`` and ``discover --watch``, which
run until stopped, after a clean shutdown). Errors are one line on stderr, never a traceback
(``-v`` logs more). The commands themselves live in ``_cli_commands``; ``bench`` is
``frys_zmq.bench``, with its own flags and exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from . import __version__
from ._bus import PeerWaitTimeout
from ._cli_commands import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_TIMEOUT,
    EXIT_USAGE,
    PROG,
    CliError,
    Signals,
    cmd_demo,
    cmd_discover,
    cmd_node,
    cmd_pub,
    cmd_request,
    cmd_sub,
    error_line,
    with_signals,
)
from ._errors import ConfigError, FrysError, RequestTimeout, SyncTimeout, TopicError

__all__ = ["build_parser", "main"]

_N = TypeVar("_N", int, float)


# ---------------------------------------------------------------------- entry point


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``frys-zmq``; returns the exit code (the console script exits with it)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["bench"]:
        # The benchmark is synchronous and parses its own flags: dispatched before argparse
        # (a REMAINDER argument would reject a leading option such as --quick) and asyncio.
        # Imported here so that the other commands do not pay for loading it.
        from .bench import main as bench_main

        try:
            return bench_main(args[1:])
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
    parser = build_parser()
    ns = parser.parse_args(args)
    _setup_logging(ns.verbose)
    command: Callable[[argparse.Namespace], Awaitable[int]] = ns.run
    try:
        return asyncio.run(with_signals(command(ns)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        return EXIT_TERMINATED if Signals.terminated else EXIT_INTERRUPTED
    except CliError as exc:
        error_line(str(exc))
        return exc.code
    except FrysError as exc:
        error_line(str(exc))
        return _exit_code(exc)
    except BrokenPipeError:
        # stdout closed under us (``frys-zmq sub ... | head``): not an error worth a trace.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115  # keeps interpreter exit quiet
        return EXIT_OK


def _exit_code(exc: FrysError) -> int:
    if isinstance(exc, ConfigError | TopicError):
        return EXIT_USAGE
    if isinstance(exc, PeerWaitTimeout | RequestTimeout | SyncTimeout | TimeoutError):
        return EXIT_TIMEOUT
    code = getattr(exc, "exit_code", None)
    return code if isinstance(code, int) else EXIT_FAILURE


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


# ---------------------------------------------------------------------- arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="A brokerless event bus over ZeroMQ with mDNS discovery.",
        epilog="exit codes: 0 ok (discover finding no nodes too; --expect N requires them), "
        "1 failure or lost events, 2 usage error, 3 timeout or fewer nodes/events than "
        "--expect/--count asked for, 130 interrupted (SIGINT), 143 terminated (SIGTERM)",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.set_defaults(verbose=0)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--interface",
        default=os.environ.get("FRYS_INTERFACE") or None,
        metavar="ADDR",
        help="IPv4 address to bind and to run mDNS on (default: $FRYS_INTERFACE, "
        "else all interfaces)",
    )
    common.add_argument(
        "--cluster", default=None, help="cluster name (default: $FRYS_CLUSTER or 'default')"
    )
    common.add_argument(
        "--config", default=None, metavar="TOML", help="TOML file with EventBusConfig keys"
    )
    common.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more to stderr (-vv for debug)"
    )
    node_opts = argparse.ArgumentParser(add_help=False)
    node_opts.add_argument("--node-id", default=None, help="node id (default: host-pid-random)")
    wait_opts = argparse.ArgumentParser(add_help=False)
    wait_opts.add_argument(
        "--wait-timeout",
        type=_positive_float,
        default=10.0,
        metavar="S",
        help="seconds to wait for peers (default 10)",
    )

    p = sub.add_parser(
        "node",
        parents=[common, node_opts],
        help="run a node until interrupted",
        description="Run a node until SIGINT/SIGTERM. Received events are "
        "printed as JSON lines; --serve answers requests with their payload.",
    )
    p.add_argument(
        "--subscribe",
        nargs="+",
        action="extend",
        default=[],
        metavar="PATTERN",
        help="print events matching PATTERN ('*' one token, '>' the rest)",
    )
    p.add_argument(
        "--serve",
        nargs="+",
        action="extend",
        default=[],
        metavar="TOPIC",
        help="answer requests on TOPIC (or pattern) with an echo",
    )
    p.set_defaults(run=cmd_node)

    p = sub.add_parser(
        "discover",
        parents=[common],
        help="list the frys nodes announced over mDNS",
        description="Browse mDNS for frys nodes (without announcing itself). Finding "
        "none exits 0; use --expect N to exit 3 unless N nodes are seen.",
    )
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=None,
        metavar="S",
        help="seconds to browse (default 3; --watch: until interrupted)",
    )
    p.add_argument("--watch", action="store_true", help="keep printing changes")
    p.add_argument("--json", action="store_true", help="JSON array (JSON lines with --watch)")
    p.add_argument(
        "--expect",
        type=_positive_int,
        default=None,
        metavar="N",
        help="stop as soon as N nodes are seen; exit 3 if they are not",
    )
    p.add_argument(
        "--all-clusters",
        action="store_true",
        help="list nodes of every cluster, not only --cluster",
    )
    p.set_defaults(run=cmd_discover)

    p = sub.add_parser(
        "pub",
        parents=[common, node_opts, wait_opts],
        help="publish an event",
        description="Start a node, wait for peers, publish, and leave the mesh.",
    )
    p.add_argument("topic")
    p.add_argument(
        "payload",
        nargs="?",
        default=None,
        type=_json_arg,
        metavar="PAYLOAD_JSON",
        help="event payload as JSON (default null)",
    )
    p.add_argument(
        "--count",
        type=_positive_int,
        default=1,
        metavar="N",
        help="publish the event N times (default 1)",
    )
    p.add_argument(
        "--metadata",
        type=_json_object,
        default=None,
        metavar="JSON",
        help="metadata as a JSON object",
    )
    p.add_argument(
        "--wait-peers",
        type=_non_negative_int,
        default=1,
        metavar="N",
        help="peers to wait for before publishing (default 1; 0 publishes at once)",
    )
    p.add_argument(
        "--linger",
        type=_non_negative_float,
        default=0.25,
        metavar="S",
        help="seconds to stay after publishing, to answer replay requests (default 0.25)",
    )
    p.add_argument("--json", action="store_true", help="print what was published as JSON")
    p.set_defaults(run=cmd_pub)

    p = sub.add_parser(
        "sub",
        parents=[common, node_opts],
        help="print events as JSON lines",
        description="Subscribe and print each event as a JSON line "
        '{"topic","payload","metadata","source","seq"}.',
    )
    p.add_argument("patterns", nargs="+", metavar="PATTERN")
    p.add_argument(
        "--count",
        type=_positive_int,
        default=None,
        metavar="N",
        help="exit after N events (exit 3 if they do not come within --timeout)",
    )
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=None,
        metavar="S",
        help="exit after S seconds (default: never)",
    )
    p.set_defaults(run=cmd_sub)

    p = sub.add_parser(
        "request",
        parents=[common, node_opts, wait_opts],
        help="send a request and print the reply",
        description="Send a request; print the reply value as JSON. Exit 1 on "
        "an error reply, 3 on a timeout.",
    )
    p.add_argument("topic")
    p.add_argument("payload", nargs="?", default=None, type=_json_arg, metavar="PAYLOAD_JSON")
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=5.0,
        metavar="S",
        help="seconds to wait for the reply (default 5)",
    )
    p.add_argument(
        "--wait-peers",
        type=_non_negative_int,
        default=1,
        metavar="N",
        help="peers to wait for first (default 1)",
    )
    p.add_argument("--metadata", type=_json_object, default=None, metavar="JSON")
    p.add_argument(
        "--json",
        action="store_true",
        help='print {"ok", "value"|"error", "responder"} instead of the bare value',
    )
    p.set_defaults(run=cmd_request)

    p = sub.add_parser(
        "demo",
        help="replay a log through a local mesh of node processes",
        description="Spawn node processes on 127.0.0.1 that find each other by "
        "mDNS, replay /var/log/dpkg.log (or --input) through them with wildcard "
        "subscriptions, and check that every event arrived exactly once.",
    )
    p.add_argument(
        "--nodes", type=_positive_int, default=3, metavar="N", help="node processes (default 3)"
    )
    p.add_argument(
        "--input",
        default=None,
        metavar="FILE",
        help="JSON lines {topic, payload, metadata} or any text log "
        "(default /var/log/dpkg.log, else a synthetic stream)",
    )
    p.add_argument(
        "--limit", type=_positive_int, default=None, metavar="N", help="replay at most N events"
    )
    p.add_argument(
        "--interface",
        default="127.0.0.1",
        metavar="ADDR",
        help="address of the local mesh (default 127.0.0.1; 'all' for every interface)",
    )
    p.add_argument("--cluster", default=None, help="cluster name (default: a fresh demo-XXXX)")
    p.add_argument(
        "--publishers",
        type=_positive_int,
        default=None,
        metavar="K",
        help="nodes that publish a round-robin share (default: all)",
    )
    p.add_argument(
        "--subscribe",
        action="append",
        default=[],
        metavar="NODE=PATTERN",
        help="replace the default subscriptions of node NODE, given as its index or its "
        "name in the summary (0 or demo-0); repeatable",
    )
    p.add_argument(
        "--rate",
        type=_non_negative_float,
        default=0.0,
        metavar="EPS",
        help="events per second, all publishers together (default: as fast as possible)",
    )
    p.add_argument(
        "--timeout",
        type=_positive_float,
        default=60.0,
        metavar="S",
        help="seconds to wait for every delivery (default 60)",
    )
    p.add_argument(
        "--peer-timeout",
        type=_positive_float,
        default=30.0,
        metavar="S",
        help="seconds for the nodes to start and find each other (default 30)",
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log more to stderr")
    p.set_defaults(run=cmd_demo)

    # Listed for --help only: main() hands "bench ..." to frys_zmq.bench before parsing.
    p = sub.add_parser(
        "bench",
        add_help=False,
        help="measure frys against raw pyzmq and plain files (bench --help for its flags)",
        description="Run the benchmark; see 'frys-zmq bench --help'.",
    )
    p.add_argument("args", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def _positive_int(text: str) -> int:
    value = _parse(int, text, "an integer")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = _parse(int, text, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = _parse(float, text, "a number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = _parse(float, text, "a number")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _parse(kind: Callable[[str], _N], text: str, what: str) -> _N:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg}): {text!r}") from None


def _json_object(text: str) -> dict[str, Any]:
    value = _json_arg(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value
