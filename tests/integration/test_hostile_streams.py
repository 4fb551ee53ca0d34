"""A member of the mesh cannot forge, skip or amplify another publisher's stream.

Each test replays one attack of the hostile-peer trial: a ``FakePeer`` completes HELLO with
the victim, then sends what a real node never would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os

import msgpack
import pytest
from hostile import (
    CTL,
    FakePeer,
    config,
    fields,
    header,
    raw_dealer,
    until,
    victim_and_good,
)

import frys_zmq as frys
from frys_zmq._wire import Kind, pack_control, topic_frame, unpack_control

pytestmark = pytest.mark.timeout(30)


def collect(bus: frys.EventBus, pattern: str) -> list[frys.Event]:
    got: list[frys.Event] = []
    bus.subscribe(pattern, got.append)
    return got


async def publish_three(victim: frys.EventBus, good: frys.EventBus, got: list) -> int:
    """Good publishes n=0..2 and the victim has them; returns good's last seq."""
    for n in range(3):
        await good.publish("good.ev", {"n": n})
    await until(lambda: len(got) == 3)
    return good.get_metrics()["seq"]


def incarnation_of(bus: frys.EventBus, node_id: str) -> int:
    return next(p.incarnation for p in bus.peers() if p.node_id == node_id)


async def test_a_forged_event_in_another_publishers_name_is_dropped_and_the_real_one_delivered(
    cluster,
):
    async with victim_and_good(cluster) as (victim, good), FakePeer("evil", cluster) as fake:
        got = collect(victim, "good.>")
        await fake.join(victim)
        last = await publish_three(victim, good, got)
        bad = victim.get_metrics()["bad_messages"]

        # Good's next seq, in good's name and incarnation, on the fake's own PUB.
        good_inc = incarnation_of(victim, "good")
        await fake.publish(
            "good.ev", last + 1, {"n": "FORGED"}, source="good", incarnation=good_inc
        )
        await until(lambda: victim.get_metrics()["bad_messages"] > bad or len(got) > 3)
        assert [e.payload["n"] for e in got] == [0, 1, 2]

        await good.publish("good.ev", {"n": "REAL"})
        await until(lambda: len(got) == 4)
        assert got[3].payload == {"n": "REAL"} and got[3].source == "good"
        metrics = victim.get_metrics()
        assert metrics["bad_by_reason"]["source does not match its stream"] == 1
        assert metrics["duplicates"] == 0 and metrics["gaps"] == 0


async def test_a_forged_seq_of_2_to_the_63_starts_no_nack_loop_with_the_real_publisher(cluster):
    async with victim_and_good(cluster) as (victim, good), FakePeer("evil", cluster) as fake:
        got = collect(victim, "good.>")
        await fake.join(victim)
        await publish_three(victim, good, got)
        bad = victim.get_metrics()["bad_messages"]

        await fake.publish(
            "good.ev", 2**63, {"n": "x"}, source="good", incarnation=incarnation_of(victim, "good")
        )
        await until(
            lambda: (
                victim.get_metrics()["bad_messages"] > bad or victim.get_metrics()["nacks_sent"] > 0
            )
        )
        # Believed, it would have the victim NACK good for ever; there is no gap to ask for.
        await good.publish("good.ev", {"n": "after"})
        await until(lambda: len(got) == 4)
        assert got[3].payload == {"n": "after"}
        assert victim.get_metrics()["nacks_sent"] == 0
        assert good.get_metrics()["replays_served"] == 0


async def test_a_forged_replay_end_from_another_link_skips_none_of_the_publishers_events(cluster):
    async with victim_and_good(cluster) as (victim, good), FakePeer("evil", cluster) as fake:
        got = collect(victim, "good.>")
        await fake.join(victim)
        last = await publish_three(victim, good, got)
        bad = victim.get_metrics()["bad_messages"]

        # "good's replay of last+1..last+1000 is done, and it keeps nothing below 2**62".
        end = header(Kind.REPLAY_END, "good", incarnation_of(victim, "good"), last + 1000)
        await fake.to_victim(CTL, end, pack_control([last + 1, last + 1000, 2**62]))
        await until(
            lambda: victim.get_metrics()["bad_messages"] > bad or victim.get_metrics()["gaps"]
        )
        assert victim.get_metrics()["gaps"] == 0

        for n in range(3, 13):
            await good.publish("good.ev", {"n": n})
        await until(lambda: len(got) == 13)
        assert [e.payload["n"] for e in got] == list(range(13))
        metrics = victim.get_metrics()
        assert metrics["bad_by_reason"]["source does not match its link"] == 1
        assert metrics["gaps"] == 0


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("good", id="in the name of the node asked"),
        pytest.param("evil", id="in its own name"),
    ],
)
async def test_a_forged_reply_from_a_node_that_was_not_asked_is_dropped(cluster, source):
    async with (
        frys.EventBus(config("victim", cluster)) as victim,
        frys.EventBus(config("good", cluster)) as good,
        FakePeer("evil", cluster) as fake,
    ):
        started, release = asyncio.Event(), asyncio.Event()

        async def slow(req: frys.Request) -> str:
            started.set()
            await release.wait()
            return "REAL"

        await good.handle_request("svc.slow", slow)
        await victim.connect(good.endpoints["router"])
        await victim.wait_for_peers(1)
        await fake.join(victim)
        await until(lambda: victim.get_metrics()["peers_ready"] == 2)
        request = asyncio.create_task(victim.request("svc.slow", 1, timeout=10))
        await asyncio.wait_for(started.wait(), 10)

        # Correlation ids are "<incarnation hex>.<counter>": easy to guess.
        def handled() -> int:  # forged replies dropped as bad, or as answers to no request
            metrics = victim.get_metrics()
            return metrics["bad_messages"] + metrics["late_replies"]

        before = handled()
        inc = incarnation_of(good, "victim")
        for n in range(1, 50):
            forged = header(Kind.REPLY, source, fake.incarnation, 0, correlation_id=f"{inc:x}.{n}")
            await fake.to_victim(topic_frame("svc.slow"), forged, msgpack.packb("FORGED"))
        await until(lambda: handled() == before + 49 or request.done())
        assert not request.done()
        assert victim.get_metrics()["bad_messages"] >= 1  # the one that named our request

        release.set()
        reply = await request
        assert reply == frys.Reply.Success("REAL", "good")


async def test_a_nack_of_2048_overlapping_runs_replays_each_asked_event_once(cluster):
    async with (
        frys.EventBus(config("victim", cluster)) as victim,
        raw_dealer(victim.endpoints["router"]) as dealer,
    ):
        await victim.publish_batch([("big.stream", {"n": n}) for n in range(2048)])
        # ~14 KB asking for 1..2048 2048 times over: 4 M replays, were it taken literally.
        body = pack_control([1, 2048, [[1, 2048]] * 2048])
        await dealer.send_multipart([CTL, header(Kind.NACK, "evil", 1, 0), body])
        replays, end = 0, None
        async with asyncio.timeout(10):
            while end is None and replays <= 2 * 2048:
                frames = await dealer.recv_multipart()
                if fields(frames[1])[1] == Kind.REPLAY_END:
                    end = unpack_control(frames[2], frys.Limits())
                else:
                    replays += 1
        assert replays == 2048
        assert end == [1, 2048, 1, 2048]  # first, last, oldest kept, sent up to
        assert victim.get_metrics()["replays_served"] == 2048


async def test_events_held_behind_a_withheld_seq_are_bounded_by_max_held_bytes_and_none_is_lost(
    cluster,
):
    kib64 = 64 * 1024
    limits = frys.Limits(max_held_bytes=16 * kib64)
    async with (
        frys.EventBus(config("victim", cluster, limits=limits)) as victim,
        FakePeer("evil", cluster) as fake,
    ):
        got = collect(victim, "evil.>")
        await fake.join(victim)
        blob = os.urandom(kib64)
        events = {
            seq: [
                topic_frame("evil.x"),
                header(Kind.EVENT, "evil", fake.incarnation, seq),
                msgpack.packb({"n": seq, "blob": blob}),
            ]
            for seq in range(1, 102)
        }
        nacked: list[int] = []  # the first seq of each NACK past the withheld seq 1

        async def answer_nacks() -> None:
            """Replay what the victim asks for again, once seq 1 is no longer withheld."""
            while True:
                ident, _topic, hdr, body = await fake.router.recv_multipart()
                if fields(hdr)[1] != Kind.NACK:
                    continue
                first, last, runs = unpack_control(body, limits)
                if first == 1:
                    continue
                nacked.append(first)
                for lo, hi in runs:
                    for seq in range(lo, hi + 1):
                        await fake.router.send_multipart([ident, *events[seq]])
                end = header(Kind.REPLAY_END, "evil", fake.incarnation, 101)
                await fake.router.send_multipart(
                    [ident, CTL, end, pack_control([first, last, 1, last])]
                )

        answering = asyncio.create_task(answer_nacks())
        try:
            for seq in range(2, 102):
                await fake.pub.send_multipart(events[seq])
            await until(lambda: victim.get_metrics()["received"] == 100)
            assert got == []
            await fake.pub.send_multipart(events[1])
            await until(lambda: len(got) == 101)
        finally:
            answering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await answering
        assert [e.seq for e in got] == list(range(1, 102))
        # Seq 1 released what was held (at most 16 events of 64 KiB); the rest was dropped
        # on arrival and asked for again.
        assert nacked and 2 <= nacked[0] <= 2 + 16
        assert victim.get_metrics()["gaps"] == 0
