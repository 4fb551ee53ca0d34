"""Durable-subscription cursors: the last handled sequence number per publisher, on disk."""

from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from pathlib import Path

from ._errors import ConfigError, StorageError

__all__ = ["CursorStore"]

log = logging.getLogger("frys_zmq.cursors")

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# Publisher ids are node ids (see _config.validate_name); they become file names.
_PUBLISHER_RE = re.compile(r"[A-Za-z0-9_-]{1,31}")
# incarnation, seq, crc32 of the first 16 bytes. One small pwrite per update: a killed process
# leaves either the old or the new record in the page cache, and the checksum catches the rest.
_RECORD = struct.Struct(">QQI")


class CursorStore:
    """Cursors of one durable subscription, one small file per publisher."""

    def __init__(self, directory: str | os.PathLike[str], name: str) -> None:
        if not _NAME_RE.fullmatch(name):
            raise ConfigError(
                f"durable name must be 1-64 letters, digits, '.', '-' or '_', got {name!r}"
            )
        self.name = name
        self.path = Path(directory) / "durable" / name
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create {self.path}: {exc}") from exc
        self._fds: dict[str, int] = {}
        self._cache: dict[str, tuple[int, int]] = {}
        for file in self.path.glob("*.cur"):
            value = self._read(file)
            if value is not None:
                self._cache[file.stem] = value

    def get(self, publisher: str) -> tuple[int, int] | None:
        """``(incarnation, seq)`` of the last event handled from ``publisher``."""
        return self._cache.get(publisher)

    def all(self) -> dict[str, tuple[int, int]]:
        return dict(self._cache)

    def set(self, publisher: str, incarnation: int, seq: int) -> None:
        """Record that ``seq`` of ``publisher`` was handled."""
        if not _PUBLISHER_RE.fullmatch(publisher):
            raise ConfigError(f"publisher must be a node id, got {publisher!r}")
        self._cache[publisher] = (incarnation, seq)
        fd = self._fds.get(publisher)
        try:
            opened = fd is None
            if fd is None:
                fd = os.open(self.path / f"{publisher}.cur", os.O_RDWR | os.O_CREAT, 0o644)
                self._fds[publisher] = fd
            head = struct.pack(">QQ", incarnation, seq)
            os.pwrite(fd, _RECORD.pack(incarnation, seq, zlib.crc32(head)), 0)
            if opened:
                # A longer (corrupt) file would fail the size check forever; cut it only
                # after the new record is in place, so a crash leaves a valid one.
                os.ftruncate(fd, _RECORD.size)
        except OSError as exc:
            raise StorageError(f"cannot write cursor {publisher} of {self.name}: {exc}") from exc

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    @staticmethod
    def _read(file: Path) -> tuple[int, int] | None:
        try:
            data = file.read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read cursor {file}: {exc}") from exc
        if len(data) != _RECORD.size:
            log.warning("ignoring cursor %s: %d bytes", file, len(data))
            return None
        incarnation, seq, crc = _RECORD.unpack(data)
        if zlib.crc32(data[:16]) != crc:
            log.warning("ignoring cursor %s: bad checksum", file)
            return None
        return incarnation, seq
