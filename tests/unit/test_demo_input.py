"""The demo's event sources: dpkg log lines, JSON lines, plain text and the synthetic stream."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from frys_zmq import ConfigError, pattern_matches, validate_topic
from frys_zmq._demo import DemoOptions, make_plan, parse_subscribe_overrides
from frys_zmq._demo_input import default_patterns, load_input, parse_dpkg_line, synthetic_dpkg


@pytest.mark.parametrize(
    ("line", "topic", "payload"),
    [
        (
            "2026-10-31 12:00:01 install foo:amd64 <none> 1.2-3",
            "dpkg.install",
            {"package": "foo", "arch": "amd64", "old_version": None, "version": "1.2-3"},
        ),
        (
            "2026-10-31 12:00:01 upgrade libc6:amd64 2.36-9 2.36-10",
            "dpkg.upgrade",
            {"package": "libc6", "arch": "amd64", "old_version": "2.36-9", "version": "2.36-10"},
        ),
        (
            "2026-10-31 12:00:02 configure foo:amd64 1.2-3 <none>",
            "dpkg.configure",
            {"package": "foo", "arch": "amd64", "old_version": "1.2-3", "version": None},
        ),
        (
            "2026-10-31 12:00:03 status installed foo:amd64 1.2-3",
            "dpkg.status.installed",
            {"package": "foo", "arch": "amd64", "status": "installed", "version": "1.2-3"},
        ),
        (
            "2026-10-31 12:00:03 status half-configured tzdata:all 2025b",
            "dpkg.status.half-configured",
            {"package": "tzdata", "arch": "all", "status": "half-configured", "version": "2025b"},
        ),
        (
            "2026-10-31 12:00:00 startup archives unpack",
            "dpkg.startup",
            {"what": "archives", "action": "unpack"},
        ),
        (
            "2026-10-31 12:00:00 conffile /etc/foo.conf keep",
            "dpkg.conffile",
            {"file": "/etc/foo.conf", "decision": "keep"},
        ),
        ("2026-10-31 12:00:00 Strange.Action* x", "dpkg.strange_action", {"args": ["x"]}),
    ],
)
def test_dpkg_lines_become_events_with_valid_topics(line, topic, payload):
    event = parse_dpkg_line(line, 7)
    assert event is not None
    assert event == (topic, payload, {"time": line[:19], "line": 7})
    validate_topic(event[0])


def test_lines_that_are_not_dpkg_log_lines_are_refused():
    assert parse_dpkg_line("hello world", 1) is None
    assert parse_dpkg_line("", 1) is None


def test_synthetic_stream_is_a_plausible_dpkg_session():
    events = synthetic_dpkg(100)
    assert len(events) == 100
    topics = Counter(t for t, _, _ in events)
    assert {"dpkg.install", "dpkg.configure", "dpkg.status.installed", "dpkg.startup"} <= set(
        topics
    )


def test_json_lines_keep_topic_payload_and_metadata(tmp_path: Path):
    path = tmp_path / "in.jsonl"
    path.write_text(
        json.dumps({"topic": "a.b", "payload": [1], "metadata": {"k": "v"}})
        + "\n\n"
        + json.dumps({"topic": "a.c"})
        + "\n"
    )
    data = load_input(path)
    assert data.kind == "jsonl"
    assert data.events == [("a.b", [1], {"k": "v", "line": 1}), ("a.c", None, {"line": 3})]


def test_json_lines_with_a_bad_topic_name_the_line(tmp_path: Path):
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps({"topic": "a.b"}) + "\n" + json.dumps({"topic": "a b"}) + "\n")
    with pytest.raises(ConfigError, match=r"in.jsonl:2: invalid topic"):
        load_input(path)


def test_any_other_text_file_becomes_log_line_events_and_limit_applies(tmp_path: Path):
    path = tmp_path / "app.log"
    path.write_text("one\n\ntwo\nthree\n")
    data = load_input(path, limit=2)
    assert data.kind == "text"
    assert data.events == [
        ("log.line", {"text": "one"}, {"line": 1, "file": "app.log"}),
        ("log.line", {"text": "two"}, {"line": 3, "file": "app.log"}),
    ]


def test_a_missing_input_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_input(tmp_path / "missing.log")


def test_default_patterns_show_exact_star_and_tail_matches():
    topics = Counter({"dpkg.install": 5, "dpkg.status.installed": 3, "dpkg.status.unpacked": 2})
    rows = default_patterns(5, topics)
    assert rows[:3] == [["dpkg.status.installed"], ["dpkg.>"], ["dpkg.*", "*.status.installed"]]
    assert rows[3] == [">"]
    # '*' stops at one token, '>' takes the rest: the two differ on the status events.
    assert [t for t in topics if pattern_matches("dpkg.*", t)] == ["dpkg.install"]
    assert all(pattern_matches("dpkg.>", t) for t in topics)


def test_default_patterns_for_other_topics_derive_from_the_data():
    rows = default_patterns(6, Counter({"shop.order.placed": 4, "shop.stock": 1}))
    assert rows == [
        ["shop.order.placed"],
        ["shop.>"],
        ["shop.*", "*.order.placed"],
        [">"],
        ["shop.>"],
        ["shop.*", "*.order.placed"],
    ]


def test_without_input_or_dpkg_log_the_demo_says_it_is_synthetic(monkeypatch, tmp_path: Path):
    monkeypatch.setattr("frys_zmq._demo_input.DPKG_LOG", tmp_path / "no-dpkg.log")
    data = load_input(None, limit=40)
    assert data.kind == "synthetic"
    assert "synthetic" in data.source and "no-dpkg.log not found" in data.source
    assert len(data.events) == 40


def test_a_dpkg_log_is_read_by_default_when_present(monkeypatch, tmp_path: Path):
    log = tmp_path / "dpkg.log"
    log.write_text(
        "2026-10-31 12:00:00 startup archives unpack\n"
        "2026-10-31 12:00:01 install foo:amd64 <none> 1.2-3\n"
    )
    monkeypatch.setattr("frys_zmq._demo_input.DPKG_LOG", log)
    data = load_input(None)
    assert (data.kind, data.source, data.lines) == ("dpkg", str(log), 2)
    assert [t for t, _, _ in data.events] == ["dpkg.startup", "dpkg.install"]


# ---------------------------------------------------------------------- --subscribe NODE=PATTERN


def test_subscribe_overrides_name_a_node_by_its_index_or_its_summary_name():
    overrides = parse_subscribe_overrides(
        ["0=dpkg.status.>", "demo-0=dpkg.install", "demo-12=>", "1=a.*"]
    )
    assert overrides == {0: ["dpkg.status.>", "dpkg.install"], 12: [">"], 1: ["a.*"]}


@pytest.mark.parametrize("item", ["dpkg.>", "=dpkg.>", "x=dpkg.>", "demo-=a", "demo-1", "node-1=a"])
def test_a_malformed_subscribe_override_says_how_to_name_the_node(item: str):
    with pytest.raises(ConfigError) as caught:
        parse_subscribe_overrides([item])
    message = str(caught.value)
    assert "--subscribe takes NODE=PATTERN" in message
    assert "0 or demo-0" in message
    assert repr(item) in message


def test_a_subscribe_override_for_a_node_that_does_not_exist_lists_the_nodes(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps({"topic": "a.b", "payload": 1}) + "\n")
    opts = DemoOptions(nodes=3, input=str(path), subscribe=parse_subscribe_overrides(["demo-3=a"]))
    with pytest.raises(ConfigError, match=r"names node 3 \(demo-3\).* demo-0\.\.demo-2"):
        make_plan(opts)
