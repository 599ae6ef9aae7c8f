"""One page's reads, shared: inside ``with shared_reads(store):`` the figures and analyses that make up
one page (the report, a dashboard chart, a curves chart and its plateau marks) read and compute each
thing once.

What is shared is what several of them ask for with the same arguments: the bucketed series
(:func:`gammadb.analysis.downsample.bucketed_series` keeps them here), a store read such as the
finished runs of a sweep, an analysis such as the plateaus, the optimal-lr analysis or the collapse that
both the claims and the report draw.
Nothing outlives the block unless the caller keeps the :class:`Scope` (the dashboard keeps one per
state of a sweep, under the key its charts are cached by), so nothing is served after the store has
changed. Outside a block every call reads and computes afresh, as it always did.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import threading
from collections.abc import Callable, Hashable, Iterator
from typing import TYPE_CHECKING, Any, Optional, TypeVar

if TYPE_CHECKING:
    from gammadb.store import Store

T = TypeVar("T")


class Scope:
    """What one page has read from ``store``: results by key, and a room for the bucketed series."""

    def __init__(self, store: "Store") -> None:
        self.store = store
        self.buckets: dict[Hashable, Any] = {}  # kept by gammadb.analysis.downsample
        self._results: dict[Hashable, Any] = {}
        self._lock = threading.Lock()

    def result(self, key: Hashable, build: Callable[[], T]) -> T:
        """``build()`` once per key (an exception is not kept: the next call tries again)."""
        with self._lock:
            if key in self._results:
                return self._results[key]
        value = build()  # outside the lock: two builds of one key are harmless, a blocked page is not
        with self._lock:
            return self._results.setdefault(key, value)

    def has_result(self, key: Hashable) -> bool:
        """Whether ``key``'s result is already built here."""
        with self._lock:
            return key in self._results


_SCOPE: contextvars.ContextVar[Optional[Scope]] = contextvars.ContextVar("gammadb_shared_reads", default=None)


@contextlib.contextmanager
def shared_reads(store: "Store", scope: Optional[Scope] = None) -> Iterator[Scope]:
    """Share reads of ``store`` within the block (in a fresh :class:`Scope`, or in ``scope``, one the
    caller keeps for as long as the store does not change). A block inside another one of the same
    store shares the outer one's reads."""
    outer = _SCOPE.get()
    if scope is None and outer is not None and outer.store is store:
        yield outer
        return
    token = _SCOPE.set(scope if scope is not None else Scope(store))
    try:
        yield _SCOPE.get()  # type: ignore[misc]
    finally:
        _SCOPE.reset(token)


def scope_of(store: "Store") -> Optional[Scope]:
    """The scope that shares reads of ``store`` here, or None outside :func:`shared_reads`."""
    scope = _SCOPE.get()
    return scope if scope is not None and scope.store is store else None


def shared_result(store: "Store", key: Hashable, build: Callable[[], T]) -> T:
    """``build()``, once per ``key`` within :func:`shared_reads` of ``store``; every time outside it."""
    scope = scope_of(store)
    return build() if scope is None else scope.result(key, build)


def sweep_record(store: "Store", sweep: str) -> Any:
    """``store.get_sweep(sweep)`` (its spec and version), read once per page."""
    return shared_result(store, ("get_sweep", sweep), lambda: store.get_sweep(sweep))


def shared_call(fn: Callable[..., T], store: "Store", *args: Any, **kwargs: Any) -> T:
    """``fn(store, *args, **kwargs)``, once per page for equal arguments: an analysis that lives in a
    module of its own and that two sections ask for (the claims and the report's collapse section).
    Arguments are compared after ``fn``'s defaults are filled in, so ``f(store, s)`` and
    ``f(store, s, along="fixed")`` share when ``along`` defaults to "fixed"; a call with an unhashable
    argument (a list) is not shared."""
    scope = scope_of(store)
    if scope is None:
        return fn(store, *args, **kwargs)
    bound = inspect.signature(fn).bind(store, *args, **kwargs)
    bound.apply_defaults()
    key = ("shared_call", fn.__module__, fn.__qualname__, tuple(bound.arguments.items())[1:])
    try:
        hash(key)
    except TypeError:
        return fn(store, *args, **kwargs)
    return scope.result(key, lambda: fn(store, *args, **kwargs))
