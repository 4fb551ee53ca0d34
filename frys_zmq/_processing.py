"""What a subscription does to events before its handler: filters and processing chains.

``EventFilter`` is a predicate over events (combine with ``&``, ``|``, ``~``);
``MetadataFilter`` matches metadata keys. ``EventProcessingChain`` is an ordered list of steps,
each taking an event and returning it (possibly changed), a new event, or ``None`` to stop
it there; a filter is a valid step. Everything here runs inside a subscription's worker, one
event at a time, so per-publisher order holds through filters and chains.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from msgspec.structs import replace

from ._errors import ChainError, ConfigError
from ._event import Event

__all__ = ["EventFilter", "EventProcessingChain", "MetadataFilter", "Step", "compose"]

#: A chain step: ``event -> event | None``, sync or async.
Step = Callable[[Event], "Event | Awaitable[Event | None] | None"]


class EventFilter:
    """A predicate over events: ``EventFilter(lambda e: e.payload["amount"] > 100)``.

    Filters combine: ``a & b``, ``a | b``, ``~a``. Calling a filter returns whether the event
    passes; as a chain step it passes the event on or stops it.
    """

    __slots__ = ("_predicate",)

    def __init__(self, predicate: Callable[[Event], bool]) -> None:
        if not callable(predicate):
            raise ConfigError(f"an EventFilter needs a callable, got {predicate!r}")
        self._predicate = predicate

    def matches(self, event: Event) -> bool:
        """Whether ``event`` passes the filter."""
        return bool(self._predicate(event))

    def __call__(self, event: Event) -> bool:
        return self.matches(event)

    def __and__(self, other: EventFilter) -> EventFilter:
        return _AllOf((self, _as_filter(other)))

    def __or__(self, other: EventFilter) -> EventFilter:
        return _AnyOf((self, _as_filter(other)))

    def __invert__(self) -> EventFilter:
        return _Not(self)

    def __repr__(self) -> str:
        return f"EventFilter({self._predicate!r})"


class MetadataFilter(EventFilter):
    """Matches events whose metadata meets every condition.

    A condition is a plain value (equality), a set, frozenset, list or tuple (membership) or
    a callable (``lambda value: value >= 3``). An event without the key does not match.
    ``MetadataFilter(region={"eu", "us"}, priority=lambda p: p >= 3)``, or pass a mapping
    for keys that are not identifiers.
    """

    __slots__ = ("conditions",)

    def __init__(self, conditions: Mapping[str, Any] | None = None, /, **more: Any) -> None:
        merged = {**(conditions or {}), **more}
        if not merged:
            raise ConfigError("a MetadataFilter needs at least one condition")
        tests: list[tuple[str, Callable[[Any], bool]]] = []
        for key, condition in merged.items():
            if not isinstance(key, str):
                raise ConfigError(f"metadata keys are strings, got {key!r}")
            tests.append((key, _condition(condition)))
        #: The conditions as given, by key.
        self.conditions: Mapping[str, Any] = merged
        missing = _MISSING

        def predicate(event: Event) -> bool:
            metadata = event.metadata
            for key, test in tests:
                value = metadata.get(key, missing)
                if value is missing or not test(value):
                    return False
            return True

        super().__init__(predicate)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.conditions.items())
        return f"MetadataFilter({inner})"


class EventProcessingChain:
    """Ordered steps applied to each event before a handler sees it.

    A step returns the event (changed in place or not), a replacement ``Event``, or ``None``
    to stop the event (it is counted as filtered, not as an error). Steps may be async. A step
    that raises fails the delivery like a raising handler: the whole chain and the handler
    are retried with backoff, then the event is dead-lettered.
    """

    __slots__ = ("_steps", "name")

    def __init__(self, *steps: Step | EventFilter, name: str | None = None) -> None:
        self.name = name
        self._steps: list[Callable[[Event], Any]] = []
        for step in steps:
            self.add_step(step)

    def add_step(self, step: Step | EventFilter) -> Step | EventFilter:
        """Append ``step``; returns it, so this also works as a decorator."""
        if isinstance(step, EventFilter):
            self._steps.append(_filter_step(step))
        elif callable(step):
            self._steps.append(step)
        else:
            raise ConfigError(f"a chain step must be callable, got {step!r}")
        return step

    def __len__(self) -> int:
        return len(self._steps)

    async def process(self, event: Event) -> Event | None:
        """Run ``event`` through every step; the event that comes out, or None if stopped."""
        current: Any = event
        for step in self._steps:
            current = step(current)
            if current is not None and not isinstance(current, Event):
                if not inspect.isawaitable(current):
                    raise ChainError(f"chain step {step!r} returned {type(current).__name__}")
                current = await current
            if current is None:
                return None
            if not isinstance(current, Event):
                raise ChainError(f"chain step {step!r} returned {type(current).__name__}")
        out: Event = current
        return out

    def __repr__(self) -> str:
        label = f"{self.name!r}, " if self.name else ""
        return f"EventProcessingChain({label}{len(self._steps)} steps)"


def compose(
    chains_for: Callable[[str], tuple[EventProcessingChain, ...]] | None,
    event_filter: EventFilter | None,
    chain: EventProcessingChain | None,
) -> Callable[[Event], Awaitable[Event | None]] | None:
    """What a subscription runs before its handler, as one function, or None if nothing.

    In order: the bus's chains registered for the event's topic (``chains_for``), the
    subscription's filter, the subscription's own chain.
    """
    if chain is not None and not len(chain):
        chain = None
    if chains_for is None and event_filter is None and chain is None:
        return None
    matches = event_filter.matches if event_filter is not None else None

    async def run(event: Event) -> Event | None:
        # Subscriptions share the event they receive: each pipeline works on its own copy,
        # so a step that reassigns a field (metadata, payload, topic) changes only what this
        # subscription sees. The payload object itself is shared: mutate it in place at
        # your peril.
        current: Event | None = replace(event)
        if chains_for is not None:
            for bus_chain in chains_for(event.topic):
                current = await bus_chain.process(current)  # type: ignore[arg-type]
                if current is None:
                    return None
        if matches is not None and not matches(current):  # type: ignore[arg-type]
            return None
        if chain is not None:
            current = await chain.process(current)  # type: ignore[arg-type]
        return current

    return run


# ---------------------------------------------------------------------------------- private

_MISSING: Any = object()


def _as_filter(value: Any) -> EventFilter:
    if isinstance(value, EventFilter):
        return value
    if callable(value):
        return EventFilter(value)
    raise ConfigError(f"cannot combine a filter with {value!r}")


class _AllOf(EventFilter):
    __slots__ = ("parts",)

    def __init__(self, parts: tuple[EventFilter, ...]) -> None:
        self.parts = parts
        super().__init__(lambda event: all(p.matches(event) for p in parts))

    def __repr__(self) -> str:
        return " & ".join(f"({p!r})" for p in self.parts)


class _AnyOf(EventFilter):
    __slots__ = ("parts",)

    def __init__(self, parts: tuple[EventFilter, ...]) -> None:
        self.parts = parts
        super().__init__(lambda event: any(p.matches(event) for p in parts))

    def __repr__(self) -> str:
        return " | ".join(f"({p!r})" for p in self.parts)


class _Not(EventFilter):
    __slots__ = ("inner",)

    def __init__(self, inner: EventFilter) -> None:
        self.inner = inner
        super().__init__(lambda event: not inner.matches(event))

    def __repr__(self) -> str:
        return f"~({self.inner!r})"


def _condition(condition: Any) -> Callable[[Any], bool]:
    if isinstance(condition, (set, frozenset, list, tuple)):
        options: Collection[Any] = condition

        def member(value: Any) -> bool:
            try:
                return value in options
            except TypeError:  # an unhashable value tested against a set
                return False

        return member
    if callable(condition):
        return lambda value: bool(condition(value))
    return lambda value: bool(value == condition)


def _filter_step(event_filter: EventFilter) -> Callable[[Event], Event | None]:
    matches = event_filter.matches

    def step(event: Event) -> Event | None:
        return event if matches(event) else None

    step.__qualname__ = f"filter step {event_filter!r}"
    return step
