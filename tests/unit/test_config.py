"""``EventBusConfig``: validation, and loading from keywords, ``FRYS_*`` variables and TOML."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frys_zmq import _timing
from frys_zmq._config import (
    DeliveryMode,
    DiscoveryStrategy,
    EventBusConfig,
    default_node_id,
    validate_endpoint,
    validate_name,
)
from frys_zmq._errors import ConfigError, FrysError
from frys_zmq._limits import DEFAULT_LIMITS, Limits

pytestmark = pytest.mark.timeout(30)

# No example database: the suite must not leave files behind.
FAST = settings(max_examples=200, deadline=None, database=None)

NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "frys.toml"
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------- defaults and validation


def test_the_defaults_are_a_valid_config() -> None:
    config = EventBusConfig()
    validate_name(config.node_id, "node_id")
    assert config.cluster == "default"
    assert config.discovery_strategy is DiscoveryStrategy.MDNS
    assert config.delivery is DeliveryMode.RELIABLE
    assert config.heartbeat_interval == _timing.HEARTBEAT_INTERVAL
    assert config.peer_ttl == _timing.PEER_TTL
    assert config.request_timeout == _timing.REQUEST_TIMEOUT
    assert config.cluster_peers == ()
    assert config.limits is DEFAULT_LIMITS


def test_default_node_ids_fit_the_grammar_and_differ() -> None:
    ids = {default_node_id() for _ in range(20)}
    assert len(ids) == 20
    for node_id in ids:
        assert validate_name(node_id, "node_id") == node_id


def test_a_config_is_frozen_and_takes_keywords_only() -> None:
    config = EventBusConfig(node_id="n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.cluster = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        EventBusConfig("n")  # type: ignore[misc]


def test_config_errors_are_frys_errors_and_value_errors() -> None:
    with pytest.raises(ConfigError) as info:
        EventBusConfig(node_id="")
    assert isinstance(info.value, FrysError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("name", ["a", "A", "0", "-", "_", "node-1_B", "x" * 31])
@pytest.mark.parametrize("field", ["node_id", "cluster"])
def test_names_of_1_to_31_letters_digits_dashes_and_underscores_are_valid(
    field: str, name: str
) -> None:
    assert getattr(EventBusConfig(**{field: name}), field) == name


@pytest.mark.parametrize(
    "name",
    ["", "x" * 32, "a.b", "a b", "a/b", "ünï", "a\n", "$frys", None, 5, b"node"],
)
@pytest.mark.parametrize("field", ["node_id", "cluster"])
def test_names_outside_the_grammar_are_config_errors(field: str, name: Any) -> None:
    with pytest.raises(ConfigError, match=field):
        EventBusConfig(**{field: name})


@FAST
@given(st.text(max_size=40))
def test_validate_name_accepts_exactly_the_grammar(name: str) -> None:
    valid = 1 <= len(name) <= 31 and all(c in NAME_CHARS for c in name)
    if valid:
        assert validate_name(name, "cluster") == name
    else:
        with pytest.raises(ConfigError):
            validate_name(name, "cluster")


@pytest.mark.parametrize("interface", [None, "127.0.0.1", "0.0.0.0", "192.168.1.20"])
def test_an_ipv4_interface_or_none_is_valid(interface: str | None) -> None:
    config = EventBusConfig(interface=interface)
    assert config.interface == interface
    assert config.bind_host == (interface or "0.0.0.0")


@pytest.mark.parametrize("interface", ["", "localhost", "eth0", "::1", "256.0.0.1", "1.2.3"])
def test_an_interface_that_is_not_an_ipv4_address_is_a_config_error(interface: str) -> None:
    with pytest.raises(ConfigError, match="interface"):
        EventBusConfig(interface=interface)


@pytest.mark.parametrize("port", [0, 1, 65535])
@pytest.mark.parametrize("field", ["pub_port", "router_port"])
def test_ports_in_range_are_valid(field: str, port: int) -> None:
    assert getattr(EventBusConfig(**{field: port}), field) == port


@pytest.mark.parametrize("port", [-1, 65536, "5555", 1.5, None])
@pytest.mark.parametrize("field", ["pub_port", "router_port"])
def test_ports_out_of_range_or_not_ints_are_config_errors(field: str, port: Any) -> None:
    with pytest.raises(ConfigError, match=field):
        EventBusConfig(**{field: port})


@pytest.mark.parametrize(
    ("heartbeat", "ttl"),
    [(1.0, 1.0), (2.0, 1.0), (1.0, 0.5)],
)
def test_a_ttl_not_longer_than_the_heartbeat_is_a_config_error(
    heartbeat: float, ttl: float
) -> None:
    with pytest.raises(ConfigError, match="peer_ttl"):
        EventBusConfig(heartbeat_interval=heartbeat, peer_ttl=ttl)


def test_a_ttl_just_over_the_heartbeat_is_valid() -> None:
    assert EventBusConfig(heartbeat_interval=0.1, peer_ttl=0.11).peer_ttl == 0.11


@pytest.mark.parametrize(
    "changes",
    [
        {"heartbeat_interval": 0.0},
        {"heartbeat_interval": -1.0},
        {"heartbeat_interval": float("nan")},
        {"peer_ttl": 0.0},
        {"request_timeout": 0.0},
        {"max_concurrent_events": 0},
        {"event_queue_size": -1},
        {"retention_ring_size": 0},
        {"retention_ring_bytes": 1.5},
        {"send_hwm": 0},
        {"recv_hwm": "10"},
        {"fsync_policy": "sometimes"},
        {"fsync_interval": 0.0},
        {"max_file_size": 4095},
        {"retention_period": 0.0},
        {"retention_bytes": 0},
        {"handler_retries": -1},
        {"handler_retry_backoff": -0.1},
        {"compression_threshold": -1},
        {"discovery_strategy": "carrier-pigeon"},
        {"delivery": "eventually"},
    ],
    ids=lambda changes: "-".join(f"{k}={v}" for k, v in changes.items()),
)
def test_out_of_range_settings_are_config_errors(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        EventBusConfig(**changes)


def test_enum_settings_accept_their_string_values() -> None:
    config = EventBusConfig(discovery_strategy="mdns+static", delivery="fast")  # type: ignore[arg-type]
    assert config.discovery_strategy is DiscoveryStrategy.MDNS_AND_STATIC
    assert config.delivery is DeliveryMode.FAST


@pytest.mark.parametrize(
    ("field", "value", "allowed"),
    [
        ("delivery", "slow", "'reliable', 'fast'"),
        ("delivery", 3, "'reliable', 'fast'"),
        ("discovery_strategy", "carrier-pigeon", "'mdns', 'static', 'mdns+static', 'none'"),
    ],
)
def test_a_bad_enum_setting_names_the_field_and_the_allowed_values(
    field: str, value: object, allowed: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        EventBusConfig(**{field: value})
    assert str(caught.value) == f"{field} must be one of {allowed}, got {value!r}"


def test_cluster_peers_become_a_tuple() -> None:
    config = EventBusConfig(cluster_peers=["tcp://a:1", "tcp://b:2"])  # type: ignore[arg-type]
    assert config.cluster_peers == ("tcp://a:1", "tcp://b:2")


def test_a_cluster_peers_string_is_read_as_a_comma_list() -> None:
    config = EventBusConfig(cluster_peers="tcp://a:1, tcp://b:2")  # type: ignore[arg-type]
    assert config.cluster_peers == ("tcp://a:1", "tcp://b:2")


@pytest.mark.parametrize(
    "endpoint",
    [
        "tcp://127.0.0.1:5555",
        "tcp://10.1.2.3:1",
        "tcp://localhost:65535",
        "tcp://node-1.example.org:7000",
        "tcp://A1:80",
    ],
)
def test_tcp_endpoints_with_an_ipv4_address_or_a_host_name_are_valid(endpoint: str) -> None:
    assert validate_endpoint(endpoint) == endpoint
    assert EventBusConfig(cluster_peers=(endpoint,)).cluster_peers == (endpoint,)


@pytest.mark.parametrize(
    "endpoint",
    [
        "garbage",
        "tcp://a b:1",
        12345,
        None,
        "",
        "tcp://a",
        "tcp://a:",
        "tcp://a:0",
        "tcp://a:65536",
        "tcp://a:http",
        "tcp://:5555",
        "tcp://*:5555",
        "tcp://256.0.0.1:5555",
        "tcp://1.2.3:5555",
        "tcp://-a:1",
        "tcp://a..b:1",
        "tcp://[::1]:5555",
        "udp://a:1",
        "ipc:///tmp/frys",
        "tcp://a:1/path",
        " tcp://a:1",
    ],
)
def test_anything_but_tcp_host_port_is_not_an_endpoint(endpoint: object) -> None:
    with pytest.raises(ConfigError, match=r"endpoint must be .*tcp://HOST:PORT"):
        validate_endpoint(endpoint)
    with pytest.raises(ConfigError, match=r"cluster_peers\[1\] must be .*got "):
        EventBusConfig(cluster_peers=("tcp://ok:1", endpoint))  # type: ignore[arg-type]


def test_cluster_peers_that_are_not_a_list_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cluster_peers must be a list of endpoints, got 5"):
        EventBusConfig(cluster_peers=5)  # type: ignore[arg-type]


def test_a_bad_cluster_peers_variable_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"cluster_peers\[0\] must be .*got 'garbage'"):
        EventBusConfig.load(env={"FRYS_CLUSTER_PEERS": "garbage"})


def test_replace_returns_a_validated_copy() -> None:
    config = EventBusConfig(node_id="n", cluster="c")
    other = config.replace(cluster="d")
    assert (other.node_id, other.cluster) == ("n", "d")
    assert config.cluster == "c"
    with pytest.raises(ConfigError):
        config.replace(pub_port=-1)


# ---------------------------------------------------------------- the interface default


def test_the_interface_defaults_to_the_frys_interface_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FRYS_INTERFACE", "10.1.2.3")
    assert EventBusConfig().interface == "10.1.2.3"


def test_without_frys_interface_the_sockets_bind_every_address(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FRYS_INTERFACE", raising=False)
    config = EventBusConfig()
    assert config.interface is None
    assert config.bind_host == "0.0.0.0"


def test_an_empty_frys_interface_means_every_address(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRYS_INTERFACE", "")
    assert EventBusConfig().interface is None


def test_an_explicit_interface_beats_frys_interface(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRYS_INTERFACE", "10.1.2.3")
    assert EventBusConfig(interface="127.0.0.1").interface == "127.0.0.1"
    assert EventBusConfig(interface=None).interface is None


def test_a_bad_frys_interface_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRYS_INTERFACE", "eth0")
    with pytest.raises(ConfigError, match="interface"):
        EventBusConfig()


# ---------------------------------------------------------------- load(): precedence


def test_load_with_nothing_gives_the_defaults() -> None:
    config = EventBusConfig.load(env={}, node_id="n", interface=None)
    assert config == EventBusConfig(node_id="n", interface=None)


def test_load_reads_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRYS_CLUSTER", "from-os-env")
    assert EventBusConfig.load().cluster == "from-os-env"


def test_load_with_an_env_mapping_ignores_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FRYS_CLUSTER", "from-os-env")
    assert EventBusConfig.load(env={}).cluster == "default"


def test_toml_keys_at_top_level_are_read(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'cluster = "toml"\npub_port = 7000\nheartbeat_interval = 0.5\n')
    config = EventBusConfig.load(path, env={})
    assert (config.cluster, config.pub_port, config.heartbeat_interval) == ("toml", 7000, 0.5)


def test_toml_keys_under_a_frys_table_are_read(tmp_path: Path) -> None:
    path = write_toml(
        tmp_path,
        '[frys]\ncluster = "toml"\ncluster_peers = ["tcp://a:1", "tcp://b:2"]\n'
        'enable_persistence = true\ndiscovery_strategy = "static"\n',
    )
    config = EventBusConfig.load(str(path), env={})
    assert config.cluster == "toml"
    assert config.cluster_peers == ("tcp://a:1", "tcp://b:2")
    assert config.enable_persistence is True
    assert config.discovery_strategy is DiscoveryStrategy.STATIC


def test_a_frys_table_hides_the_top_level_keys(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'cluster = "top"\n[frys]\nnode_id = "n"\n')
    config = EventBusConfig.load(path, env={})
    assert config.node_id == "n"
    assert config.cluster == "default"


def test_toml_limits_become_a_limits_value(tmp_path: Path) -> None:
    path = write_toml(tmp_path, "[frys.limits]\nmax_header_bytes = 1024\n")
    config = EventBusConfig.load(path, env={})
    assert config.limits == Limits(max_header_bytes=1024)


@pytest.mark.parametrize(
    "text",
    ["[frys.limits]\nmax_header_bytes = 0\n", "[frys.limits]\nmax_headers = 1\n"],
    ids=["limit out of range", "unknown limit"],
)
def test_bad_toml_limits_are_config_errors(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        EventBusConfig.load(write_toml(tmp_path, text), env={})


def test_environment_variables_beat_the_toml_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'cluster = "toml"\nnode_id = "toml-node"\npub_port = 7000\n')
    config = EventBusConfig.load(path, env={"FRYS_CLUSTER": "env", "FRYS_PUB_PORT": "7001"})
    assert (config.node_id, config.cluster, config.pub_port) == ("toml-node", "env", 7001)


def test_keyword_arguments_beat_environment_variables_and_the_toml_file(tmp_path: Path) -> None:
    path = write_toml(tmp_path, 'cluster = "toml"\nrouter_port = 7000\npub_port = 7000\n')
    config = EventBusConfig.load(
        path, env={"FRYS_CLUSTER": "env", "FRYS_ROUTER_PORT": "7001"}, cluster="kw"
    )
    assert (config.cluster, config.router_port, config.pub_port) == ("kw", 7001, 7000)


def test_variables_without_the_frys_prefix_or_for_limits_are_ignored() -> None:
    config = EventBusConfig.load(
        env={"CLUSTER": "x", "frys_cluster": "y", "FRYS_LIMITS": "z", "FRYS_UNKNOWN": "1"}
    )
    assert config.cluster == "default"
    assert config.limits is DEFAULT_LIMITS


def test_unknown_keyword_arguments_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown config keys: bogus, colour"):
        EventBusConfig.load(env={}, colour="blue", bogus=1)


def test_unknown_toml_keys_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nodeid"):
        EventBusConfig.load(write_toml(tmp_path, 'nodeid = "typo"\n'), env={})


@pytest.mark.parametrize(
    "text",
    ["cluster = \n", "frys = 5\n", 'frys = "x"\n'],
    ids=["not toml", "frys is an int", "frys is a string"],
)
def test_a_malformed_toml_file_is_a_config_error(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        EventBusConfig.load(write_toml(tmp_path, text), env={})


def test_a_missing_toml_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        EventBusConfig.load(tmp_path / "absent.toml", env={})


def test_values_loaded_from_toml_are_validated(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pub_port"):
        EventBusConfig.load(write_toml(tmp_path, "pub_port = 70000\n"), env={})


# ---------------------------------------------------------------- load(): env string coercion


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        (" on ", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
    ],
)
def test_boolean_variables_are_read_from_the_usual_spellings(raw: str, value: bool) -> None:
    config = EventBusConfig.load(
        env={"FRYS_ENABLE_PERSISTENCE": raw, "FRYS_COMPRESSION_ENABLED": raw}
    )
    assert config.enable_persistence is value
    assert config.compression_enabled is value


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("FRYS_PUBLISH_ACK", "maybe"),
        ("FRYS_PUBLISH_ACK", ""),
        ("FRYS_PUB_PORT", "eighty"),
        ("FRYS_PUB_PORT", "1.5"),
        ("FRYS_HEARTBEAT_INTERVAL", "fast"),
        ("FRYS_RETENTION_PERIOD", "forever"),
        ("FRYS_RETENTION_BYTES", "1.5"),
    ],
)
def test_variables_that_do_not_parse_are_config_errors(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=name.removeprefix("FRYS_").lower()):
        EventBusConfig.load(env={name: raw})


def test_numeric_variables_are_read_as_their_field_types() -> None:
    config = EventBusConfig.load(
        env={
            "FRYS_PUB_PORT": "7001",
            "FRYS_HANDLER_RETRIES": "0",
            "FRYS_HEARTBEAT_INTERVAL": "0.25",
            "FRYS_PEER_TTL": "2",
            "FRYS_RETENTION_PERIOD": "3600",
            "FRYS_RETENTION_BYTES": "1000000",
        }
    )
    assert config.pub_port == 7001
    assert config.handler_retries == 0
    assert config.heartbeat_interval == 0.25
    assert config.peer_ttl == 2.0
    assert isinstance(config.peer_ttl, float)
    assert config.retention_period == 3600.0
    assert isinstance(config.retention_period, float)
    assert config.retention_bytes == 1_000_000


def test_empty_optional_variables_mean_none() -> None:
    config = EventBusConfig.load(
        env={
            "FRYS_RETENTION_PERIOD": "",
            "FRYS_RETENTION_BYTES": "",
            "FRYS_INTERFACE": "",
            "FRYS_DATA_DIR": "",
        }
    )
    assert config.retention_period is None
    assert config.retention_bytes is None
    assert config.interface is None
    assert config.data_dir is None


def test_cluster_peers_are_read_as_a_comma_list() -> None:
    config = EventBusConfig.load(
        env={"FRYS_CLUSTER_PEERS": " tcp://a:1 ,tcp://b:2,, ", "FRYS_DISCOVERY_STRATEGY": "static"}
    )
    assert config.cluster_peers == ("tcp://a:1", "tcp://b:2")
    assert config.discovery_strategy is DiscoveryStrategy.STATIC


def test_string_variables_are_taken_as_they_are() -> None:
    config = EventBusConfig.load(
        env={
            "FRYS_NODE_ID": "env-node",
            "FRYS_INTERFACE": "127.0.0.1",
            "FRYS_DATA_DIR": "/srv/frys",
            "FRYS_FSYNC_POLICY": "always",
            "FRYS_DELIVERY": "fast",
        }
    )
    assert config.node_id == "env-node"
    assert config.interface == "127.0.0.1"
    assert config.data_dir == "/srv/frys"
    assert config.fsync_policy == "always"
    assert config.delivery is DeliveryMode.FAST


def test_keyword_strings_are_coerced_like_variables() -> None:
    config = EventBusConfig.load(env={}, pub_port="7002", publish_ack="yes")
    assert config.pub_port == 7002
    assert config.publish_ack is True


def test_variables_are_validated_after_coercion() -> None:
    with pytest.raises(ConfigError, match="peer_ttl"):
        EventBusConfig.load(env={"FRYS_HEARTBEAT_INTERVAL": "5", "FRYS_PEER_TTL": "5"})


# ---------------------------------------------------------------- node_dir


def test_node_dir_is_the_data_dir_when_one_is_given(tmp_path: Path) -> None:
    config = EventBusConfig(node_id="n", data_dir=str(tmp_path / "data"))
    assert config.node_dir == tmp_path / "data"


def test_node_dir_is_under_xdg_data_home_by_cluster_and_node(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    config = EventBusConfig(node_id="n1", cluster="c1")
    assert config.node_dir == tmp_path / "frys_zmq" / "c1" / "n1"


def test_node_dir_falls_back_to_the_home_local_share(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    config = EventBusConfig(node_id="n1", cluster="c1")
    assert config.node_dir == tmp_path / ".local" / "share" / "frys_zmq" / "c1" / "n1"


def test_an_empty_xdg_data_home_is_ignored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path))
    config = EventBusConfig(node_id="n1", cluster="c1")
    assert config.node_dir == tmp_path / ".local" / "share" / "frys_zmq" / "c1" / "n1"
