"""Durable-subscription cursors: one checksummed record per publisher, surviving reopen."""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from frys_zmq._cursors import CursorStore
from frys_zmq._errors import ConfigError, FrysError, StorageError

pytestmark = pytest.mark.timeout(30)

U64 = st.integers(0, 2**64 - 1)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CursorStore]:
    cursors = CursorStore(tmp_path, "orders")
    yield cursors
    cursors.close()


def reopen(tmp_path: Path, name: str = "orders") -> CursorStore:
    cursors = CursorStore(tmp_path, name)
    cursors.close()  # reading needs no open files
    return cursors


def record(incarnation: int, seq: int) -> bytes:
    head = struct.pack(">QQ", incarnation, seq)
    return head + struct.pack(">I", zlib.crc32(head))


def test_a_new_store_has_no_cursors(store: CursorStore, tmp_path: Path) -> None:
    assert store.get("pub") is None
    assert store.all() == {}
    assert store.path == tmp_path / "durable" / "orders"
    assert store.path.is_dir()


def test_a_cursor_that_was_set_can_be_read_back(store: CursorStore) -> None:
    store.set("pub-a", 3, 17)
    store.set("pub-b", 1, 2)
    assert store.get("pub-a") == (3, 17)
    assert store.all() == {"pub-a": (3, 17), "pub-b": (1, 2)}


def test_setting_a_cursor_again_replaces_it(store: CursorStore) -> None:
    store.set("pub", 1, 10)
    store.set("pub", 1, 11)
    store.set("pub", 2, 1)
    assert store.get("pub") == (2, 1)


def test_all_returns_a_copy(store: CursorStore) -> None:
    store.set("pub", 1, 1)
    store.all()["pub"] = (9, 9)
    assert store.get("pub") == (1, 1)


def test_cursors_survive_reopening_the_store(store: CursorStore, tmp_path: Path) -> None:
    store.set("pub-a", 3, 17)
    store.set("pub-a", 3, 18)
    store.set("pub-b", 2**64 - 1, 0)
    store.close()
    assert reopen(tmp_path).all() == {"pub-a": (3, 18), "pub-b": (2**64 - 1, 0)}


def test_each_publisher_has_one_fixed_size_file(store: CursorStore) -> None:
    store.set("pub", 1, 2)
    store.set("pub", 1, 3)
    file = store.path / "pub.cur"
    assert file.read_bytes() == record(1, 3)


def test_durable_subscriptions_do_not_share_cursors(tmp_path: Path) -> None:
    first = CursorStore(tmp_path, "first")
    second = CursorStore(tmp_path, "second")
    try:
        first.set("pub", 1, 5)
        assert second.get("pub") is None
    finally:
        first.close()
        second.close()
    assert reopen(tmp_path, "second").all() == {}


def test_close_is_idempotent_and_a_closed_store_can_still_write(
    store: CursorStore, tmp_path: Path
) -> None:
    store.set("pub", 1, 1)
    store.close()
    store.close()
    store.set("pub", 1, 2)  # reopens the file
    store.close()
    assert reopen(tmp_path).get("pub") == (1, 2)


@settings(max_examples=50, deadline=None, database=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), U64, U64), max_size=20))
def test_the_last_value_set_per_publisher_is_what_a_reopened_store_reads(
    tmp_path_factory: pytest.TempPathFactory, updates: list[tuple[str, int, int]]
) -> None:
    directory = tmp_path_factory.mktemp("cursors")
    cursors = CursorStore(directory, "d")
    try:
        for publisher, incarnation, seq in updates:
            cursors.set(publisher, incarnation, seq)
    finally:
        cursors.close()
    expected = {publisher: (inc, seq) for publisher, inc, seq in updates}
    assert reopen(directory, "d").all() == expected


@pytest.mark.parametrize("name", ["a", "orders.v2", "A-b_c.1", "x" * 64])
def test_durable_names_of_letters_digits_dots_dashes_and_underscores_are_valid(
    tmp_path: Path, name: str
) -> None:
    assert reopen(tmp_path, name).name == name


@pytest.mark.parametrize("name", ["", "x" * 65, "a/b", "../up", "a b", "ünï", "a\0"])
def test_a_bad_durable_name_is_a_config_error(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="durable name"):
        CursorStore(tmp_path, name)
    assert not (tmp_path / "durable").exists()


def test_a_directory_that_cannot_be_created_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError) as info:
        CursorStore(blocker, "orders")
    assert isinstance(info.value, FrysError)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00" * 19, record(1, 2) + b"\x00", record(1, 2) * 2],
    ids=["empty", "short", "one byte long", "doubled"],
)
def test_a_cursor_file_of_the_wrong_size_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, data: bytes
) -> None:
    directory = tmp_path / "durable" / "orders"
    directory.mkdir(parents=True)
    (directory / "bad.cur").write_bytes(data)
    (directory / "good.cur").write_bytes(record(4, 5))
    with caplog.at_level(logging.WARNING, logger="frys_zmq.cursors"):
        cursors = reopen(tmp_path)
    assert cursors.all() == {"good": (4, 5)}
    [warning] = [r for r in caplog.records if r.name == "frys_zmq.cursors"]
    assert warning.levelno == logging.WARNING
    assert "bad.cur" in warning.getMessage()
    assert f"{len(data)} bytes" in warning.getMessage()


@pytest.mark.parametrize("byte", [0, 8, 15, 16, 19])
def test_a_cursor_file_with_a_bad_checksum_is_ignored_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, byte: int
) -> None:
    directory = tmp_path / "durable" / "orders"
    directory.mkdir(parents=True)
    data = bytearray(record(7, 1000))
    data[byte] ^= 0x01
    (directory / "torn.cur").write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="frys_zmq.cursors"):
        cursors = reopen(tmp_path)
    assert cursors.get("torn") is None
    assert any(
        r.name == "frys_zmq.cursors" and "bad checksum" in r.getMessage() for r in caplog.records
    )


def test_a_short_corrupt_cursor_is_repaired_by_the_next_set(tmp_path: Path) -> None:
    directory = tmp_path / "durable" / "orders"
    directory.mkdir(parents=True)
    (directory / "pub.cur").write_bytes(b"\xff" * 5)
    cursors = reopen(tmp_path)
    cursors.set("pub", 1, 1)
    cursors.close()
    assert reopen(tmp_path).get("pub") == (1, 1)


def test_a_long_corrupt_cursor_is_repaired_by_the_next_set(tmp_path: Path) -> None:
    directory = tmp_path / "durable" / "orders"
    directory.mkdir(parents=True)
    (directory / "pub.cur").write_bytes(b"\xff" * 40)
    cursors = reopen(tmp_path)
    cursors.set("pub", 1, 1)
    cursors.close()
    assert reopen(tmp_path).get("pub") == (1, 1)


def test_files_that_are_not_cursors_are_ignored(tmp_path: Path) -> None:
    directory = tmp_path / "durable" / "orders"
    directory.mkdir(parents=True)
    (directory / "notes.txt").write_bytes(b"hello")
    (directory / "pub.cur.tmp").write_bytes(record(1, 1))
    assert reopen(tmp_path).all() == {}


def test_a_publisher_id_that_is_not_a_node_id_cannot_escape_the_cursor_directory(
    store: CursorStore, tmp_path: Path
) -> None:
    with pytest.raises((ConfigError, StorageError)):
        store.set("../../escaped", 1, 1)
    assert not (tmp_path / "escaped.cur").exists()
