"""tf.data pipelines over a framework-free `Source`.

Decoding runs in tf.data's parallel map (OpenCV releases the GIL while it decodes), so clips are
read concurrently and batched without a Python generator in the way. A clip that fails to decode
during training is replaced by zeros with sample weight 0 (so every epoch has the same number of
steps) and counted; the trainer stops the run when too many fail.

Every decode goes through a `Gate`, and every gate is closed and drained before the process exits
(`guard()` around a training or predict call, and an atexit hook for any other path). Python kills a
thread that wants the GIL back once the interpreter is finalizing; a tf.data worker returning from
OpenCV at that moment unwinds through OpenCV's catch-all and aborts the process (SIGABRT instead of
exit 130), and one entering `numpy_function` can terminate it too. A closed gate answers at once
without touching OpenCV, so the pipeline's threads go idle on full buffers before shutdown begins.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import itertools
import os
import signal
import threading
import time
import weakref
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from vidcli.console import warn
from vidcli.datasets.source import Source, epoch_plan
from vidcli.errors import VidcliError


class Gate:
    """Admits decode calls until closed; counts the ones inside, so closing can wait for them."""

    def __init__(self, serial: int):
        self.serial = serial
        self._lock = threading.Lock()
        self._busy = 0
        self._closed = False
        self._last = time.monotonic()

    @contextlib.contextmanager
    def admit(self) -> Iterator[bool]:
        """True: go ahead and decode; False: closing, return a placeholder without decoding."""
        with self._lock:
            self._last = time.monotonic()
            if self._closed:
                admitted = False
            else:
                admitted = True
                self._busy += 1
        try:
            yield admitted
        finally:
            if admitted:
                with self._lock:
                    self._busy -= 1
                    self._last = time.monotonic()

    def close(self) -> None:
        with self._lock:
            self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def settled(self, quiet: float) -> bool:
        """No call inside, and none came by for `quiet` seconds (tf.data has stopped asking)."""
        with self._lock:
            return self._busy == 0 and time.monotonic() - self._last >= quiet


_serials = itertools.count()
_gates: list[weakref.ref[Gate]] = []
_gates_lock = threading.Lock()


def new_gate() -> Gate:
    gate = Gate(next(_serials))
    with _gates_lock:
        _gates[:] = [r for r in _gates if r() is not None]
        _gates.append(weakref.ref(gate))
    return gate


def live_gates(since: int = 0) -> list[Gate]:
    with _gates_lock:
        gates = [r() for r in _gates]
    return [g for g in gates if g is not None and g.serial >= since]


def drain(since: int = 0, timeout: float = 60.0, quiet: float = 0.2) -> bool:
    """Close the gates made since serial `since` and wait until no decode is running and tf.data has
    stopped calling in (its buffers are full or its input is done). False: gave up after `timeout`."""
    gates = live_gates(since)
    for g in gates:
        g.close()
    deadline = time.monotonic() + timeout
    settled = True
    for g in gates:
        while not g.settled(quiet):
            if time.monotonic() > deadline:
                settled = False
                break
            time.sleep(0.02)
    gc.collect()  # iterators nobody holds any more are destroyed now, their threads cancelled
    return settled


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Pipelines made inside the block are closed and drained when it ends, however it ends."""
    first = next(_serials)
    try:
        yield
    finally:
        drain(first)


def _drain_at_exit() -> None:
    """The last word before interpreter shutdown: a second Ctrl-C here would skip the drain."""
    if not live_gates():
        return
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    drain()


atexit.register(_drain_at_exit)


def parallelism(workers: int) -> int:
    return workers if workers > 0 else max(2, os.cpu_count() or 2)


def _to_float(x):
    return tf.cast(x, tf.float32) / 255.0


def train_loader(source: Source):
    """numpy (index, seed) -> (uint8 clip, ok): a clip that fails to decode is zeros with ok 0, counted once."""
    shape = source.sample_shape
    gate = new_gate()

    def load(i, s):
        i = int(i)
        with gate.admit() as admitted:
            if not admitted:
                return np.zeros(shape, np.uint8), np.float32(0.0)
            try:
                return source.load(i, training=True, seed=int(s)), np.float32(1.0)
            except VidcliError as exc:
                if source.record_failure(i):
                    warn(f"skipping clip: {exc}")
                return np.zeros(shape, np.uint8), np.float32(0.0)

    def clip(i, s):
        x, ok = tf.numpy_function(load, [i, s], [tf.uint8, tf.float32], stateful=False)
        x.set_shape(shape)
        ok.set_shape(())
        return _to_float(x), ok

    return clip


def train_dataset(source: Source, batch_size: int, seed: int, first_epoch: int, epochs: int, workers: int,
                  class_weight: np.ndarray | None = None) -> tf.data.Dataset:
    weights = class_weight if class_weight is not None else np.ones(len(source.classes), np.float32)
    n = len(source)
    table_idx = np.stack([epoch_plan(n, seed, e)[0] for e in range(first_epoch, epochs)]) if epochs > first_epoch \
        else np.zeros((0, n), np.int64)
    table_seed = np.stack([epoch_plan(n, seed, e)[1] for e in range(first_epoch, epochs)]) if epochs > first_epoch \
        else np.zeros((0, n), np.int64)
    labels = tf.constant(source.labels, tf.int64)
    w = tf.constant(weights, tf.float32)
    clip = train_loader(source)

    def one_epoch(idx, seeds):
        def mapper(i, s):
            x, ok = clip(i, s)
            y = tf.gather(labels, i)
            return x, y, ok * tf.gather(w, y)

        ds = tf.data.Dataset.from_tensor_slices((idx, seeds))
        return ds.map(mapper, num_parallel_calls=parallelism(workers), deterministic=True).batch(batch_size)

    ds = tf.data.Dataset.from_tensor_slices((table_idx, table_seed)).flat_map(one_epoch)
    return ds.prefetch(2)


def eval_loader(source: Source, errors: list):
    """index -> (float clip, ok): deterministic (centre-start) clips; a load error is appended to `errors`."""
    shape = source.sample_shape
    gate = new_gate()

    def load(i):
        with gate.admit() as admitted:
            if not admitted:
                return np.zeros(shape, np.uint8), np.float32(0.0)
            try:
                return source.load(int(i), training=False), np.float32(1.0)
            except VidcliError as exc:  # tf would bury it in an op error; the caller re-raises it
                errors.append(exc)
                return np.zeros(shape, np.uint8), np.float32(0.0)

    def clip(i):
        x, ok = tf.numpy_function(load, [i], [tf.uint8, tf.float32], stateful=False)
        x.set_shape(shape)
        ok.set_shape(())
        return _to_float(x), ok

    return clip


def eval_dataset(source: Source, batch_size: int, workers: int, errors: list) -> tf.data.Dataset:
    """Deterministic (centre-start) clips in file order: (x, y). Load errors are appended to `errors`."""
    clip = eval_loader(source, errors)
    labels = tf.constant(source.labels, tf.int64)

    def mapper(i):
        return clip(i)[0], tf.gather(labels, i)

    ds = tf.data.Dataset.range(len(source))
    return ds.map(mapper, num_parallel_calls=parallelism(workers), deterministic=True).batch(batch_size).prefetch(2)
