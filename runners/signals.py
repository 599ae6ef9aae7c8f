"""Stopping on a signal: SIGTERM (SLURM preemption, `kill`) and Ctrl-C end a sweep cleanly.

A worker stops gracefully on the first SIGTERM (training polls :func:`stop_requested` before every
step) and at once on the second; whatever runs it has claimed go back to pending. A launcher turns
SIGTERM straight into an interrupt, so it stops its workers as on Ctrl-C.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_STOP = threading.Event()  # set by the first SIGTERM


def stop_requested() -> bool:
    """Whether a SIGTERM asked this process to stop (polled by training before every step)."""
    return _STOP.is_set()


def stop_if_requested() -> None:
    if _STOP.is_set():
        raise KeyboardInterrupt("stopped on SIGTERM")


@contextmanager
def terminate_as_interrupt(store: Any = None) -> Iterator[None]:
    """SIGTERM (SLURM preemption, `kill`) stops gracefully: the run in training finishes its step,
    saves a checkpoint (with a checkpoint directory) and goes back to pending, then the process stops
    as on Ctrl-C: the current batch is committed and (with ``store``) every run it holds goes back to
    pending. A second SIGTERM stops at once, whichever statement it interrupts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _handler(signum: int, frame: Any) -> None:
        if _STOP.is_set():
            raise KeyboardInterrupt(f"signal {signum}")
        _STOP.set()

    _STOP.clear()
    previous = signal.signal(signal.SIGTERM, _handler)
    try:
        yield
        stop_if_requested()  # a signal after the last run still ends as an interrupt
    except (KeyboardInterrupt, SystemExit):
        if store is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a further signal must not cut the release
            store.release_worker()
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        _STOP.clear()


@contextmanager
def terminate_raises_interrupt() -> Iterator[None]:
    """SIGTERM to the launcher stops it as Ctrl-C does: it stops its workers and waits for them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def released_on_interrupt(store: Any, run_ids: list[int]) -> Iterator[None]:
    """Ctrl-C / SIGTERM anywhere between a claim and a run's end puts the claimed runs back to
    pending (runs that already ended stay as they are)."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        store.reset_runs(run_ids)
        raise
