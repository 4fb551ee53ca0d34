"""Topic grammar and the subscription index that matches topics against patterns.

A topic is a dot-separated path of tokens (``order.eu.placed``). A pattern may also use
``*`` for exactly one token and, as its last token, ``>`` for one or more tokens. Topics
whose first token is ``$frys`` belong to the system: wildcards never reach them unless the
pattern's own first token is ``$frys``, so a catch-all ``>`` does not see heartbeats.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Hashable
from typing import Generic, TypeVar

from ._errors import ConfigError, InvalidTopic

__all__ = [
    "MAX_TOPIC_BYTES",
    "SYSTEM_PREFIX",
    "TopicIndex",
    "is_system_topic",
    "pattern_matches",
    "validate_pattern",
    "validate_topic",
]

#: Longest topic or pattern, measured in bytes of UTF-8.
MAX_TOPIC_BYTES = 255
#: Prefix of the topics reserved for the system.
SYSTEM_PREFIX = "$frys."

_SYSTEM_TOKEN = "$frys"
_ONE = "*"
_TAIL = ">"
# Characters no literal token may hold. For str patterns `\s` is exactly str.isspace().
_FORBIDDEN = re.compile(r"[\s*>\x00]")

T = TypeVar("T", bound=Hashable)


def validate_topic(topic: str, *, allow_system: bool = False) -> str:
    """Return ``topic`` if it is a valid concrete topic, else raise :class:`InvalidTopic`."""
    for token in _tokens(topic, "topic", allow_system):
        _check_literal(topic, token, "topic")
    return topic


def validate_pattern(pattern: str, *, allow_system: bool = True) -> str:
    """Return ``pattern`` if it is a valid pattern, else raise :class:`InvalidTopic`."""
    tokens = _tokens(pattern, "pattern", allow_system)
    last = len(tokens) - 1
    for position, token in enumerate(tokens):
        if token == _TAIL and position != last:
            raise _invalid(pattern, "pattern", "'>' may only be the last token")
        if token not in (_ONE, _TAIL):
            _check_literal(pattern, token, "pattern")
    return pattern


def is_system_topic(topic: str) -> bool:
    """Whether ``topic`` (or a pattern) lies in the reserved ``$frys`` namespace."""
    return topic == _SYSTEM_TOKEN or topic.startswith(SYSTEM_PREFIX)


def pattern_matches(pattern: str, topic: str) -> bool:
    """Whether ``pattern`` matches ``topic``, without an index; both are assumed valid."""
    pattern_tokens = pattern.split(".")
    topic_tokens = topic.split(".")
    if topic_tokens[0] == _SYSTEM_TOKEN and pattern_tokens[0] != _SYSTEM_TOKEN:
        return False
    for position, token in enumerate(pattern_tokens):
        if token == _TAIL:
            return len(topic_tokens) > position
        if position == len(topic_tokens):
            return False
        if token != _ONE and token != topic_tokens[position]:
            return False
    return len(pattern_tokens) == len(topic_tokens)


class TopicIndex(Generic[T]):
    """Subscription index: a token trie with a bounded cache of match results.

    Items are compared by equality, so they must be hashable (and a bound method fetched
    again still removes the one that was added). :meth:`match` returns each matching item
    once, ordered by when the item entered the index.
    """

    __slots__ = (
        "_cache",
        "_cache_size",
        "_counter",
        "_patterns",
        "_refs",
        "_root",
        "_seq",
        "_size",
    )

    def __init__(self, *, cache_size: int = 4096) -> None:
        if cache_size < 0:
            raise ConfigError(f"cache_size must be >= 0, got {cache_size!r}")
        self._root: _Node[T] = _Node()
        # pattern -> the bucket at its end of the trie (the same dict, not a copy)
        self._patterns: dict[str, dict[T, None]] = {}
        self._size = 0
        # item -> when it entered the index, and how many patterns hold it now
        self._seq: dict[T, int] = {}
        self._refs: dict[T, int] = {}
        self._counter = itertools.count()
        self._cache: dict[str, tuple[T, ...]] = {}
        self._cache_size = cache_size

    def add(self, pattern: str, item: T) -> None:
        """Hold ``item`` under ``pattern``; adding a pair that is already held changes nothing."""
        validate_pattern(pattern)
        bucket = self._patterns.get(pattern)
        if bucket is None:
            bucket = self._patterns[pattern] = self._bucket_for(pattern)
        elif item in bucket:
            return
        bucket[item] = None
        self._size += 1
        refs = self._refs.get(item, 0)
        if refs == 0:
            self._seq[item] = next(self._counter)
        self._refs[item] = refs + 1
        self._cache.clear()

    def remove(self, pattern: str, item: T) -> bool:
        """Stop holding ``item`` under ``pattern``; return whether the pair was held."""
        bucket = self._patterns.get(pattern)
        if bucket is None or item not in bucket:
            return False
        del bucket[item]
        self._size -= 1
        refs = self._refs[item] - 1
        if refs:
            self._refs[item] = refs
        else:
            del self._refs[item]
            del self._seq[item]
        if not bucket:
            del self._patterns[pattern]
            self._prune(pattern)
        self._cache.clear()
        return True

    def match(self, topic: str) -> tuple[T, ...]:
        """Every item held under a pattern that matches ``topic``.

        ``topic`` is not validated (callers check at the boundary); any str is safe.
        """
        cached = self._cache.get(topic)
        if cached is not None:
            return cached
        result = self._collect(topic)
        if self._cache_size:
            if len(self._cache) >= self._cache_size:
                # Dropping everything keeps eviction O(1) with no bookkeeping on hits.
                self._cache.clear()
            self._cache[topic] = result
        return result

    def patterns(self) -> list[str]:
        """Every pattern that holds at least one item."""
        return list(self._patterns)

    def __len__(self) -> int:
        """The number of (pattern, item) pairs held."""
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __repr__(self) -> str:
        return f"<TopicIndex patterns={len(self._patterns)} pairs={self._size}>"

    def _collect(self, topic: str) -> tuple[T, ...]:
        tokens = topic.split(".")
        found: dict[T, None] = {}
        nodes = [self._root]
        # Only the first step can meet a system topic's `$frys` token.
        wild = tokens[0] != _SYSTEM_TOKEN
        for token in tokens:
            step: list[_Node[T]] = []
            for node in nodes:
                if wild and node.tail:
                    found.update(node.tail)
                child = node.children.get(token)
                if child is not None:
                    step.append(child)
                if wild and node.star is not None:
                    step.append(node.star)
            if not step:
                break
            nodes = step
            wild = True
        else:
            for node in nodes:
                found.update(node.items)
        if len(found) < 2:
            return tuple(found)
        return tuple(sorted(found, key=self._seq.__getitem__))

    def _bucket_for(self, pattern: str) -> dict[T, None]:
        """The bucket that holds ``pattern``'s items, creating trie nodes on the way."""
        *path, last = pattern.split(".")
        node = self._root
        for token in path:
            node = node.child(token)
        return node.tail if last == _TAIL else node.child(last).items

    def _prune(self, pattern: str) -> None:
        """Detach the nodes along ``pattern`` that no longer hold anything, deepest first."""
        path: list[tuple[_Node[T], str]] = []
        node = self._root
        for token in pattern.split("."):
            if token == _TAIL:
                break  # a tail bucket lives on the node before the `>`
            path.append((node, token))
            node = node.child(token)
        for parent, token in reversed(path):
            if not node.is_empty():
                return
            parent.drop(token)
            node = parent


class _Node(Generic[T]):
    """One trie level: literal children, the ``*`` child, and the items of patterns ending here."""

    __slots__ = ("children", "items", "star", "tail")

    def __init__(self) -> None:
        self.children: dict[str, _Node[T]] = {}
        self.star: _Node[T] | None = None
        self.items: dict[T, None] = {}  # patterns whose last token leads to this node
        self.tail: dict[T, None] = {}  # patterns whose `>` follows this node

    def child(self, token: str) -> _Node[T]:
        """The child for ``token`` (``*`` included), created if missing."""
        if token == _ONE:
            if self.star is None:
                self.star = _Node()
            return self.star
        node = self.children.get(token)
        if node is None:
            node = self.children[token] = _Node()
        return node

    def drop(self, token: str) -> None:
        if token == _ONE:
            self.star = None
        else:
            del self.children[token]

    def is_empty(self) -> bool:
        return not (self.children or self.star or self.items or self.tail)


def _tokens(text: str, kind: str, allow_system: bool) -> list[str]:
    """Check what topics and patterns share, and split ``text`` into its tokens."""
    if not isinstance(text, str):
        raise _invalid(text, kind, f"{kind} must be a str, not {type(text).__name__}")
    if not text:
        raise _invalid(text, kind, f"{kind} is empty")
    try:
        size = len(text.encode())
    except UnicodeEncodeError as exc:
        raise _invalid(
            text, kind, f"{kind} is not valid UTF-8 (it holds a lone surrogate)"
        ) from exc
    if size > MAX_TOPIC_BYTES:
        raise _invalid(
            text, kind, f"{kind} is {size} bytes of UTF-8, over the limit of {MAX_TOPIC_BYTES}"
        )
    tokens = text.split(".")
    if not all(tokens):
        if not tokens[0]:
            reason = f"{kind} starts with '.'"
        elif not tokens[-1]:
            reason = f"{kind} ends with '.'"
        else:
            reason = f"{kind} has an empty token ('..')"
        raise _invalid(text, kind, reason)
    if tokens[0] == _SYSTEM_TOKEN and not allow_system:
        raise _invalid(text, kind, f"{SYSTEM_PREFIX!r} topics are reserved for the system")
    return tokens


def _check_literal(text: str, token: str, kind: str) -> None:
    """Raise :class:`InvalidTopic` if ``token`` holds a character literal tokens may not."""
    bad = _FORBIDDEN.search(token)
    if bad is None:
        return
    char = bad.group()
    if char == "\0":
        reason = f"token {token!r} holds a NUL character"
    elif char not in (_ONE, _TAIL):
        reason = f"token {token!r} holds whitespace ({char!r})"
    elif kind == "topic":
        reason = f"a topic cannot hold wildcards, found {char!r} in token {token!r}"
    else:
        reason = f"wildcard {char!r} must be a whole token, not part of {token!r}"
    raise _invalid(text, kind, reason)


def _invalid(text: object, kind: str, reason: str) -> InvalidTopic:
    """The error for an invalid topic or pattern; its message says which of the two it was."""
    exc = InvalidTopic(text, reason)
    if kind == "pattern":
        # The fields stay those of InvalidTopic; only the message names the right thing.
        exc.args = (f"invalid pattern {text!r}: {reason}",)
    return exc
