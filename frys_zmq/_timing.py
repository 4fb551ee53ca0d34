"""Timing constants in one place, so tests and the config can shorten them."""

from __future__ import annotations

from typing import Final

#: Default seconds between heartbeats.
HEARTBEAT_INTERVAL: Final = 1.0
#: Delays (s) of the extra heartbeats a node sends when a peer has just asked to join.
JOIN_HEARTBEATS: Final = (0.02, 0.08, 0.25, 0.6)
#: A peer missing this many beats in a row is *suspect*.
SUSPECT_AFTER_MISSED: Final = 3
#: Default seconds of silence after which a peer is *expired*.
PEER_TTL: Final = 5.0
#: Seconds to wait for a HELLO reply before asking again; it doubles for an endpoint that
#: keeps not answering, up to HELLO_RETRY_MAX.
HELLO_RETRY: Final = 0.5
HELLO_RETRY_MAX: Final = 5.0
#: A found (not static) endpoint that has not answered a HELLO for this many seconds is
#: given up: a peer that stalled or was cut off for less than this comes back by itself.
LINK_GIVE_UP: Final = 120.0
#: An announced endpoint that has never answered a HELLO is given up after this long.
NEW_LINK_GIVE_UP: Final = 15.0
#: Seconds the old endpoint of a node id has to answer before a new process with that id is
#: taken for a restart rather than a second live process.
DUPLICATE_PROBE: Final = 0.3
#: Seconds start() waits for static peers to answer their first HELLO (they may refuse a
#: node id that a live process already has).
STATIC_START_WAIT: Final = 1.0
#: An expired peer's stream is kept this long before what it still owed is reported lost:
#: a peer that only stalled comes back in time and loses nothing.
DEPARTED_GRACE: Final = 10.0
#: Most endpoints a node dials at once without knowing who is there (HELLO unanswered).
MAX_UNKNOWN_LINKS: Final = 256
#: Most departed peers whose stream position a node remembers for their return.
MAX_REMEMBERED_STREAMS: Final = 4096
#: Seconds an outstanding NACK may stay unanswered before it is sent again. The next NACK
#: normally goes out as soon as the replay's end marker arrives; this only covers a NACK or
#: marker that was lost, so it errs long: a short one re-asks a busy publisher for data
#: already on its way.
NACK_TIMEOUT: Final = 2.0
#: An unanswered NACK is repeated after NACK_TIMEOUT, doubling up to this many times it.
NACK_MAX_BACKOFF: Final = 16
#: Most events asked for in one NACK; keeps replay bursts under the socket HWMs.
NACK_MAX_RANGE: Final = 2048
#: Default timeout for ``EventBus.request``.
REQUEST_TIMEOUT: Final = 5.0
#: Seconds the zeroconf service lookup may take for one announced peer.
MDNS_LOOKUP_TIMEOUT: Final = 3.0
#: A bad message is logged at most once per peer and reason in this many seconds.
BAD_LOG_INTERVAL: Final = 5.0
#: How often the maintenance loop looks at peers and repair timers.
MAINTENANCE_INTERVAL: Final = 0.1

#: A publisher's events leave at the end of each loop iteration, coalesced into BATCH
#: messages of up to this many bytes (and ``MAX_BATCH_EVENTS`` events); an event at least
#: ``BATCH_SINGLE_MAX`` bytes goes alone.
BATCH_BYTES = 256 * 1024
BATCH_SINGLE_MAX = 16 * 1024
