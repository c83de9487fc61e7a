"""SIGTERM handled as Ctrl-C: a run that is killed (``kill``, ``timeout``) or preempted (a
batch scheduler) stops and saves the weights of the moment instead of dying mid-epoch.

Python runs a signal handler between bytecodes of the main thread. Where that falls inside a
callback whose exceptions Python ignores (an at-fork hook while a DataLoader starts its
workers, a ``__del__``), the exception the handler raises is lost (quietly); where it falls
inside a DataLoader starting its workers, the half-built iterator's clean-up fails. So the
handler also records the signal, and the batch loops iterate through :func:`batches`, which
holds the raise back while the workers start and checks for the signal before every batch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = [
    "Terminated",
    "batches",
    "raise_if_terminated",
    "sigterm_as_interrupt",
    "worker_exits_on_sigterm",
]

_received = threading.Event()  # that of the innermost sigterm_as_interrupt scope
_held = threading.Event()  # set while batches() starts an iterator: record, do not raise


class Terminated(KeyboardInterrupt):
    """SIGTERM inside :func:`sigterm_as_interrupt`: a ``KeyboardInterrupt``, so a training run
    stops as on Ctrl-C (``interrupted.safetensors``, ``--resume`` continues)."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[threading.Event]:
    """While inside, SIGTERM raises :class:`Terminated` and sets the event it yields, which
    says afterwards whether it came (main thread only; elsewhere SIGTERM is left alone)."""
    global _received
    received = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    outer, _received = _received, received
    before, unraisable = signal.signal(signal.SIGTERM, _on_sigterm), sys.unraisablehook

    def quiet_when_lost(info: Any) -> None:  # the lost raise is not an error to show
        if not isinstance(info.exc_value, Terminated):
            unraisable(info)

    sys.unraisablehook = quiet_when_lost
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, before)
        sys.unraisablehook, _received = unraisable, outer


def _on_sigterm(signum: int, frame: Any) -> None:
    _received.set()
    if not _held.is_set():
        raise Terminated


def batches(loader: Iterable[Any]) -> Iterator[Any]:
    """The items of ``loader``; SIGTERM raises :class:`Terminated` before each one, never
    while ``iter(loader)`` starts DataLoader workers (an iterator cut there cannot clean up)."""
    _held.set()
    try:
        items = iter(loader)
    finally:
        _held.clear()
    for item in items:
        raise_if_terminated()
        yield item


def raise_if_terminated() -> None:
    """Raise :class:`Terminated` where SIGTERM came and its handler's exception was lost."""
    if _received.is_set():
        raise Terminated


def worker_exits_on_sigterm(worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``: SIGTERM ends the worker with exit code 0. A signal to
    the whole process group (``timeout``, a scheduler) then stops the workers as quietly as
    the main process, which shuts them down itself (PyTorch reports a worker killed by a
    signal as an error in the main process)."""
    signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
