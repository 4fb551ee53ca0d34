"""Topic grammar, pattern matching and the subscription index."""

from __future__ import annotations

import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from frys_zmq._errors import ConfigError, InvalidTopic, TopicError
from frys_zmq._topics import (
    MAX_TOPIC_BYTES,
    TopicIndex,
    is_system_topic,
    pattern_matches,
    validate_pattern,
    validate_topic,
)

pytestmark = pytest.mark.timeout(30)

# No example database: the suite must not leave files behind.
FAST = settings(max_examples=200, deadline=None, database=None)

WHITESPACE = [chr(code) for code in range(sys.maxunicode + 1) if chr(code).isspace()]


def reference_matches(pattern: str, topic: str) -> bool:
    """A matcher written independently of the module, to check the index against."""
    pattern_tokens = pattern.split(".")
    topic_tokens = topic.split(".")
    if topic_tokens[0] == "$frys" and pattern_tokens[0] != "$frys":
        return False
    return _match_tokens(pattern_tokens, topic_tokens)


def _match_tokens(pattern: list[str], topic: list[str]) -> bool:
    if not pattern:
        return not topic
    head, *rest = pattern
    if head == ">":
        return bool(topic)
    if not topic:
        return False
    return head in ("*", topic[0]) and _match_tokens(rest, topic[1:])


# A tiny alphabet so that wildcards and literals collide often.
TOKENS = ["a", "b", "$frys"]
topics = st.lists(st.sampled_from(TOKENS), min_size=1, max_size=4).map(".".join)
patterns = st.builds(
    lambda body, tail: ".".join([*body, ">"] if tail or not body else body),
    st.lists(st.sampled_from([*TOKENS, "*"]), max_size=3),
    st.booleans(),
)
items = st.integers(min_value=0, max_value=4)
# Strings that are not valid topics, which match() must still survive.
odd_topics = st.one_of(
    st.text(max_size=20),
    st.lists(st.sampled_from(["a", "", " ", "*", ">", "$frys", "\0", "é"]), max_size=5).map(
        ".".join
    ),
)
literal_tokens = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters=".*>\0").filter(
        lambda char: not char.isspace()
    ),
    min_size=1,
    max_size=8,
)
valid_topics = (
    st.lists(literal_tokens, min_size=1, max_size=6)
    .filter(lambda tokens: tokens[0] != "$frys")
    .map(".".join)
    .filter(lambda topic: len(topic.encode()) <= MAX_TOPIC_BYTES)
)


# --- matching: the grammar's examples --------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("order.*", "order.placed", True),
        ("order.*", "order", False),
        ("order.*", "order.eu.placed", False),
        ("order.>", "order.placed", True),
        ("order.>", "order.eu.placed", True),
        ("order.>", "order", False),
        ("order.placed", "order.placed", True),
        ("order.placed", "order.placed.eu", False),
        ("order.placed", "order", False),
        ("order.placed", "order.shipped", False),
        ("*.placed", "order.placed", True),
        ("*.*", "a.b", True),
        ("*.>", "a", False),
        ("*.>", "a.b.c", True),
        (">", "a", True),
        (">", "a.b.c", True),
        (">", "$frys.hb", False),
        ("*.hb", "$frys.hb", False),
        ("*", "$frys", False),
        ("$frys.>", "$frys.hb", True),
        ("$frys.*", "$frys.hb", True),
        ("$frys.hb", "$frys.hb", True),
        ("a.*", "a.$frys", True),  # only a *first* `$frys` token is protected
    ],
)
def test_matching_follows_the_grammar_examples(pattern: str, topic: str, expected: bool) -> None:
    assert reference_matches(pattern, topic) is expected
    assert pattern_matches(pattern, topic) is expected
    index: TopicIndex[str] = TopicIndex()
    index.add(pattern, "sub")
    assert index.match(topic) == (("sub",) if expected else ())


@FAST
@given(pattern=patterns, topic=topics)
def test_pattern_matches_agrees_with_the_reference_matcher(pattern: str, topic: str) -> None:
    assert pattern_matches(pattern, topic) is reference_matches(pattern, topic)


@FAST
@given(pattern=topics, topic=topics)
def test_a_literal_pattern_matches_only_the_identical_topic(pattern: str, topic: str) -> None:
    assert pattern_matches(pattern, topic) is (pattern == topic)


@pytest.mark.parametrize(
    ("topic", "expected"),
    [("$frys.hb", True), ("$frys", True), ("$frys.a.b", True), ("frys.hb", False),
     ("a.$frys", False), ("$frysx.hb", False)],
)  # fmt: skip
def test_is_system_topic_recognises_the_reserved_namespace(topic: str, expected: bool) -> None:
    assert is_system_topic(topic) is expected


# --- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "topic", ["a", "order.eu.placed", "$", "a-b_c/d:e", "ordre.été", "a" * MAX_TOPIC_BYTES]
)
def test_valid_topics_are_returned_unchanged(topic: str) -> None:
    assert validate_topic(topic) is topic


def test_topic_length_is_measured_in_utf8_bytes() -> None:
    at_limit = "é" * 127 + "a"  # 255 bytes, 128 characters
    assert validate_topic(at_limit) is at_limit
    with pytest.raises(InvalidTopic, match="256 bytes"):
        validate_topic("é" * 128)


@pytest.mark.parametrize(
    ("topic", "reason"),
    [
        ("", "topic is empty"),
        ("a" * (MAX_TOPIC_BYTES + 1), "256 bytes of UTF-8, over the limit of 255"),
        ("é" * 128, "256 bytes of UTF-8"),
        ("a..b", "empty token"),
        (".a", "starts with '.'"),
        ("a.", "ends with '.'"),
        (".", "starts with '.'"),
        ("a b", "whitespace"),
        ("a.\tb", "whitespace"),
        ("a\u00a0b", "whitespace"),
        ("a.*", "cannot hold wildcards"),
        ("a.>", "cannot hold wildcards"),
        ("a*b", "cannot hold wildcards"),
        ("a\0b", "NUL"),
        ("\ud800", "not valid UTF-8"),
        ("$frys.hb", "reserved for the system"),
        ("$frys", "reserved for the system"),
    ],
)
def test_invalid_topics_raise_with_a_readable_reason(topic: str, reason: str) -> None:
    with pytest.raises(InvalidTopic) as caught:
        validate_topic(topic)
    assert reason in caught.value.reason
    assert caught.value.topic == topic
    assert reason in str(caught.value)


@pytest.mark.parametrize("value", [None, 7, b"order.placed", ["order"]])
def test_a_topic_that_is_not_a_str_is_invalid(value: object) -> None:
    with pytest.raises(InvalidTopic, match="must be a str"):
        validate_topic(value)  # type: ignore[arg-type]
    with pytest.raises(InvalidTopic, match="must be a str"):
        validate_pattern(value)  # type: ignore[arg-type]


def test_invalid_topic_is_a_topic_error_and_a_value_error() -> None:
    with pytest.raises(TopicError):
        validate_topic("")
    with pytest.raises(ValueError):
        validate_topic("")


def test_system_topics_are_valid_when_the_caller_allows_them() -> None:
    assert validate_topic("$frys.hb", allow_system=True) == "$frys.hb"


def test_every_unicode_whitespace_character_is_rejected() -> None:
    for char in WHITESPACE:
        with pytest.raises(InvalidTopic, match="whitespace"):
            validate_topic(f"a{char}b")


@FAST
@given(topic=valid_topics)
def test_every_topic_built_from_legal_tokens_is_valid_and_also_a_valid_pattern(
    topic: str,
) -> None:
    assert validate_topic(topic) is topic
    assert validate_pattern(topic) is topic
    assert pattern_matches(topic, topic)


@pytest.mark.parametrize(
    "pattern", ["*", ">", "*.>", "a.*.c.>", "order.*", "$frys.>", "*.$frys", "a.b"]
)
def test_valid_patterns_are_returned_unchanged(pattern: str) -> None:
    assert validate_pattern(pattern) is pattern


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("", "pattern is empty"),
        ("a.>.b", "'>' may only be the last token"),
        (">.>", "'>' may only be the last token"),
        ("a*", "must be a whole token"),
        (">b", "must be a whole token"),
        ("a.**", "must be a whole token"),
        ("a..*", "empty token"),
        ("*.", "ends with '.'"),
        ("a.b c", "whitespace"),
        ("a.\0", "NUL"),
        ("*" * (MAX_TOPIC_BYTES + 1), "256 bytes"),
    ],
)
def test_invalid_patterns_raise_with_a_readable_reason(pattern: str, reason: str) -> None:
    with pytest.raises(InvalidTopic) as caught:
        validate_pattern(pattern)
    assert reason in caught.value.reason


@pytest.mark.parametrize("pattern", ["a.>.b", "", "a*", "a..*", "$frys.>"])
def test_an_invalid_pattern_is_called_a_pattern_in_the_message(pattern: str) -> None:
    with pytest.raises(InvalidTopic) as caught:
        validate_pattern(pattern, allow_system=False)
    assert str(caught.value).startswith(f"invalid pattern {pattern!r}: ")
    assert caught.value.topic == pattern
    assert caught.value.reason in str(caught.value)


def test_an_invalid_topic_is_still_called_a_topic_in_the_message() -> None:
    with pytest.raises(InvalidTopic, match=r"^invalid topic 'a\.\*': "):
        validate_topic("a.*")


def test_system_patterns_are_rejected_only_when_the_caller_forbids_them() -> None:
    assert validate_pattern("$frys.>") == "$frys.>"
    with pytest.raises(InvalidTopic, match="reserved for the system"):
        validate_pattern("$frys.>", allow_system=False)
    # Wildcards never reach system topics, so they are fine either way.
    assert validate_pattern(">", allow_system=False) == ">"


# --- the index -------------------------------------------------------------------------------


def test_an_empty_index_matches_nothing_and_is_falsy() -> None:
    index: TopicIndex[str] = TopicIndex()
    assert index.match("order.placed") == ()
    assert not index
    assert len(index) == 0
    assert index.patterns() == []


def test_len_bool_and_patterns_describe_what_is_held() -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add("order.*", "audit")
    index.add("order.*", "billing")
    index.add("order.>", "audit")
    assert index
    assert len(index) == 3
    assert sorted(index.patterns()) == ["order.*", "order.>"]


def test_adding_the_same_pair_twice_keeps_one() -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add("order.*", "audit")
    index.add("order.*", "audit")
    assert len(index) == 1
    assert index.match("order.placed") == ("audit",)
    assert index.remove("order.*", "audit")
    assert index.match("order.placed") == ()


def test_one_pattern_holds_many_items_in_the_order_they_were_added() -> None:
    index: TopicIndex[str] = TopicIndex()
    for item in ["c", "a", "b"]:
        index.add("order.placed", item)
    assert index.match("order.placed") == ("c", "a", "b")


def test_an_item_under_several_matching_patterns_is_returned_once() -> None:
    index: TopicIndex[str] = TopicIndex()
    for pattern in ["order.placed", "order.*", "order.>", "*.placed", ">"]:
        index.add(pattern, "audit")
    assert index.match("order.placed") == ("audit",)


def test_match_orders_items_by_when_they_first_entered_the_index() -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add("unrelated", "first")
    index.add("order.*", "second")
    index.add("order.>", "first")
    assert index.match("order.placed") == ("first", "second")


def test_an_item_removed_everywhere_and_added_again_moves_to_the_end() -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add(">", "x")
    index.add(">", "y")
    index.remove(">", "x")
    index.add(">", "x")
    assert index.match("a") == ("y", "x")


def test_remove_returns_false_for_a_pair_that_is_not_held() -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add("order.*", "audit")
    assert not index.remove("order.*", "billing")
    assert not index.remove("order.>", "audit")
    assert not index.remove("a..b", "audit")  # an invalid pattern is simply not held
    assert index.remove("order.*", "audit")
    assert not index.remove("order.*", "audit")


def test_items_are_compared_by_equality_so_a_refetched_bound_method_is_removed() -> None:
    class Handler:
        def on_event(self) -> None: ...

    handler = Handler()
    index: TopicIndex[object] = TopicIndex()
    index.add("order.*", handler.on_event)
    assert index.remove("order.*", handler.on_event)
    assert not index


def test_add_rejects_an_invalid_pattern_and_holds_nothing() -> None:
    index: TopicIndex[str] = TopicIndex()
    with pytest.raises(InvalidTopic):
        index.add("order.>.eu", "audit")
    assert not index


def test_system_events_reach_only_system_subscriptions() -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add(">", "everything")
    index.add("*.hb", "heartbeats?")
    index.add("$frys.>", "system")
    index.add("$frys.hb", "heartbeats")
    assert index.match("$frys.hb") == ("system", "heartbeats")
    assert index.match("node.hb") == ("everything", "heartbeats?")


def test_removing_every_pair_prunes_the_trie_back_to_an_empty_root() -> None:
    index: TopicIndex[int] = TopicIndex()
    pairs = [("a.b.c", 1), ("a.*.c", 2), ("a.>", 3), ("a.b.>", 1), ("*.*.*", 2), (">", 3)]
    for pattern, item in pairs:
        index.add(pattern, item)
    for pattern, item in reversed(pairs):
        assert index.remove(pattern, item)
    assert index._root.is_empty()  # white-box: no dead nodes are left behind


@pytest.mark.parametrize("topic", ["", ".", "..", "a..b", " ", "*", ">", "a.*", "\0", "\ud800"])
def test_match_does_not_crash_on_strings_that_are_not_valid_topics(topic: str) -> None:
    index: TopicIndex[str] = TopicIndex()
    for pattern in ["*", ">", "a.*", "a.>", "*.*"]:
        index.add(pattern, pattern)
    expected = tuple(pattern for pattern in index.patterns() if reference_matches(pattern, topic))
    assert index.match(topic) == expected


@FAST
@given(pairs=st.lists(st.tuples(patterns, items), max_size=8), topic=odd_topics)
def test_match_agrees_with_the_reference_matcher_on_any_string(
    pairs: list[tuple[str, int]], topic: str
) -> None:
    index: TopicIndex[int] = TopicIndex()
    for pattern, item in pairs:
        index.add(pattern, item)
    expected = {item for pattern, item in pairs if reference_matches(pattern, topic)}
    found = index.match(topic)
    assert len(found) == len(set(found))
    assert set(found) == expected


# --- the cache -------------------------------------------------------------------------------


def test_match_sees_an_add_made_after_the_result_was_cached() -> None:
    index: TopicIndex[str] = TopicIndex()
    assert index.match("order.placed") == ()
    index.add("order.*", "audit")
    assert index.match("order.placed") == ("audit",)


def test_match_sees_a_remove_made_after_the_result_was_cached() -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add("order.*", "audit")
    index.add("order.>", "billing")
    assert index.match("order.placed") == ("audit", "billing")
    index.remove("order.*", "audit")
    assert index.match("order.placed") == ("billing",)


def test_a_repeated_match_is_served_from_the_cache() -> None:
    index: TopicIndex[str] = TopicIndex()
    index.add("order.*", "audit")
    assert index.match("order.placed") is index.match("order.placed")


def test_the_cache_never_holds_more_topics_than_cache_size() -> None:
    index: TopicIndex[str] = TopicIndex(cache_size=8)
    index.add(">", "all")
    for number in range(100):
        assert index.match(f"t.{number}") == ("all",)
        assert len(index._cache) <= 8  # white-box: the bound is the point of the test


def test_a_zero_cache_size_disables_caching_but_not_matching() -> None:
    index: TopicIndex[str] = TopicIndex(cache_size=0)
    index.add(">", "all")
    assert index.match("a") == ("all",)
    assert index._cache == {}


def test_a_negative_cache_size_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="cache_size"):
        TopicIndex(cache_size=-1)


# --- the index against a brute-force model, over random add/remove sequences -----------------


class TopicIndexModel(RuleBasedStateMachine):
    """Drive a TopicIndex and a plain list of pairs side by side; they must always agree."""

    def __init__(self) -> None:
        super().__init__()
        self.index: TopicIndex[int] = TopicIndex()
        self.pairs: list[tuple[str, int]] = []
        self.entered: list[int] = []  # items held, in the order they entered the index

    @initialize(cache_size=st.sampled_from([0, 1, 3, 4096]))
    def make_index(self, cache_size: int) -> None:
        self.index = TopicIndex(cache_size=cache_size)

    @rule(pattern=patterns, item=items)
    def add(self, pattern: str, item: int) -> None:
        self.index.add(pattern, item)
        if (pattern, item) not in self.pairs:
            self.pairs.append((pattern, item))
        if item not in self.entered:
            self.entered.append(item)

    @rule(pattern=patterns, item=items)
    def remove_any(self, pattern: str, item: int) -> None:
        self._remove(pattern, item)

    @precondition(lambda self: self.pairs)
    @rule(data=st.data())
    def remove_held(self, data: st.DataObject) -> None:
        self._remove(*data.draw(st.sampled_from(self.pairs)))

    @rule(topic=topics)
    def match(self, topic: str) -> None:
        held = [item for pattern, item in self.pairs if reference_matches(pattern, topic)]
        expected = tuple(item for item in self.entered if item in held)
        assert self.index.match(topic) == expected
        assert self.index.match(topic) == expected  # now possibly from the cache

    @invariant()
    def size_and_patterns_agree(self) -> None:
        assert len(self.index) == len(self.pairs)
        assert bool(self.index) is bool(self.pairs)
        assert sorted(self.index.patterns()) == sorted({pattern for pattern, _ in self.pairs})
        if not self.pairs:
            assert self.index._root.is_empty()

    def _remove(self, pattern: str, item: int) -> None:
        was_held = (pattern, item) in self.pairs
        assert self.index.remove(pattern, item) is was_held
        if was_held:
            self.pairs.remove((pattern, item))
            if all(other != item for _, other in self.pairs):
                self.entered.remove(item)


TopicIndexModel.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, database=None
)
TestTopicIndexAgreesWithABruteForceModel = TopicIndexModel.TestCase
