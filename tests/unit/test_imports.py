"""Package shape: every module imports on its own, the public surface, and the error tree."""

from __future__ import annotations

import inspect
import pkgutil
import subprocess
import sys

import pytest

import frys_zmq
from frys_zmq import _errors
from frys_zmq._errors import FrysError

pytestmark = pytest.mark.timeout(30)

# ``python -m frys_zmq`` runs the CLI as its import side effect: importing it is running it.
_RUNS_ON_IMPORT = {"frys_zmq.__main__"}

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(frys_zmq.__path__, prefix="frys_zmq.")
    if info.name not in _RUNS_ON_IMPORT
)


def test_the_package_has_the_modules_this_test_expects() -> None:
    # Guards the parametrization below against finding nothing.
    for name in ("frys_zmq._wire", "frys_zmq._sequencing", "frys_zmq._node", "frys_zmq.sync"):
        assert name in MODULES


@pytest.mark.parametrize("module", MODULES)
def test_each_module_imports_first_in_a_fresh_interpreter(module: str) -> None:
    # A fresh interpreter with only this module imported is what exposes an import cycle: in
    # this process the package is already loaded and every cycle looks resolved.
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=25,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_every_name_in_all_exists() -> None:
    missing = [name for name in frys_zmq.__all__ if not hasattr(frys_zmq, name)]
    assert missing == []


def test_all_has_no_duplicates_and_is_sorted() -> None:
    assert len(set(frys_zmq.__all__)) == len(frys_zmq.__all__)
    assert list(frys_zmq.__all__) == sorted(frys_zmq.__all__)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from frys_zmq import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(frys_zmq.__all__)


@pytest.mark.parametrize(
    "name", [n for n in frys_zmq.__all__ if inspect.isclass(getattr(frys_zmq, n))]
)
def test_public_classes_say_they_live_in_frys_zmq(name: str) -> None:
    cls = getattr(frys_zmq, name)
    assert cls.__module__ == "frys_zmq"
    assert cls.__name__ == name


def test_the_version_is_a_string() -> None:
    assert isinstance(frys_zmq.__version__, str)
    assert frys_zmq.__version__.count(".") >= 2


ERROR_CLASSES = sorted(
    (
        obj
        for obj in vars(_errors).values()
        if inspect.isclass(obj) and issubclass(obj, BaseException)
    ),
    key=lambda cls: cls.__name__,
)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_class_is_a_frys_error(cls: type[BaseException]) -> None:
    assert issubclass(cls, FrysError)


def test_the_errors_module_lists_every_error_class_it_defines() -> None:
    assert sorted(_errors.__all__) == [cls.__name__ for cls in ERROR_CLASSES]


def test_every_error_class_is_public() -> None:
    assert set(_errors.__all__) <= set(frys_zmq.__all__)


@pytest.mark.parametrize(
    "name",
    [
        n
        for n in frys_zmq.__all__
        if inspect.isclass(getattr(frys_zmq, n)) and issubclass(getattr(frys_zmq, n), BaseException)
    ],
)
def test_every_public_exception_is_a_frys_error(name: str) -> None:
    assert issubclass(getattr(frys_zmq, name), FrysError)


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        ("ConfigError", ValueError),
        ("TopicError", ValueError),
        ("DecodeError", ValueError),
        ("EncodeError", TypeError),
        ("RequestTimeout", TimeoutError),
        ("SyncTimeout", TimeoutError),
        ("PeerWaitTimeout", TimeoutError),
        ("NotStarted", RuntimeError),
        ("AlreadyClosed", RuntimeError),
    ],
)
def test_errors_also_subclass_the_builtin_callers_expect(
    error: str, builtin: type[Exception]
) -> None:
    assert issubclass(getattr(frys_zmq, error), builtin)


@pytest.mark.parametrize(
    ("error", "family"),
    [
        ("BadFrame", "DecodeError"),
        ("UnknownProtocolVersion", "DecodeError"),
        ("MessageTooLarge", "LimitExceeded"),
        ("DecompressionBomb", "LimitExceeded"),
        ("LimitExceeded", "DecodeError"),
        ("DecodeError", "ProtocolError"),
        ("InvalidTopic", "TopicError"),
        ("DuplicateNodeId", "DiscoveryError"),
        ("NoResponders", "RequestError"),
        ("RequestTimeout", "RequestError"),
        ("HandlerError", "RequestError"),
        ("ChecksumError", "StorageError"),
        ("ConcurrencyError", "StorageError"),
    ],
)
def test_errors_belong_to_their_family(error: str, family: str) -> None:
    assert issubclass(getattr(frys_zmq, error), getattr(frys_zmq, family))


def test_errors_carry_their_fields() -> None:
    too_large = frys_zmq.MessageTooLarge(10, 5, "header")
    assert (too_large.size, too_large.limit, too_large.what) == (10, 5, "header")
    assert "10" in str(too_large) and "5" in str(too_large)
    assert frys_zmq.UnknownProtocolVersion(300).version == 300
    assert frys_zmq.NoResponders("a.b").topic == "a.b"
    duplicate = frys_zmq.DuplicateNodeId("n", "c")
    assert (duplicate.node_id, duplicate.cluster) == ("n", "c")
    handler = frys_zmq.HandlerError("boom", "KeyError")
    assert (handler.remote_type, handler.remote_message) == ("KeyError", "boom")
    invalid = frys_zmq.InvalidTopic("a..b", "empty token")
    assert (invalid.topic, invalid.reason) == ("a..b", "empty token")
