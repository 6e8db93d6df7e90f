"""Ctrl-C during training: the first one asks the trainer to stop at the next step boundary, a second
one interrupts at once.

A KeyboardInterrupt raised wherever the main thread happens to be can land inside library code that
swallows it (seen under load in TensorFlow/Keras), and the run then trains on as if nothing happened.
A flag that the trainer polls after every step cannot be lost, and it stops at a point where the
last finished epoch's checkpoint is intact.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

_requested = threading.Event()


def requested() -> bool:
    return _requested.is_set()


def check() -> None:
    """Raise KeyboardInterrupt here if Ctrl-C was pressed since training began."""
    if _requested.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Turn SIGINT into a request the trainer honours at its next `check()`; restore the old handler after."""
    _requested.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if _requested.is_set():
            raise KeyboardInterrupt
        _requested.set()

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()
