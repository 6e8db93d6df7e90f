"""tf.data pipelines over a framework-free `Source`.

Decoding runs in tf.data's parallel map (OpenCV releases the GIL while it decodes), so clips are
read concurrently and batched without a Python generator in the way. A clip that fails to decode
during training is replaced by zeros with sample weight 0 (so every epoch has the same number of
steps) and counted; the trainer stops the run when too many fail.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from vidcli.console import warn
from vidcli.datasets.source import Source
from vidcli.errors import VidcliError


def parallelism(workers: int) -> int:
    return workers if workers > 0 else max(2, os.cpu_count() or 2)


def _to_float(x):
    return tf.cast(x, tf.float32) / 255.0


def epoch_plan(n: int, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample order and per-sample seeds of one epoch: a function of (seed, epoch) only, so a resumed
    run sees exactly the data an uninterrupted one would have seen."""
    rng = np.random.default_rng([seed, epoch])
    return rng.permutation(n).astype(np.int64), rng.integers(0, 2**31 - 1, size=n, dtype=np.int64)


def train_loader(source: Source):
    """numpy (index, seed) -> (uint8 clip, ok): a clip that fails to decode is zeros with ok 0, counted once."""
    shape = source.sample_shape

    def load(i, s):
        i = int(i)
        try:
            x = source.load(i, training=True, seed=int(s))
            ok = np.float32(1.0)
        except VidcliError as exc:
            if source.record_failure(i):
                warn(f"skipping clip: {exc}")
            x = np.zeros(shape, np.uint8)
            ok = np.float32(0.0)
        return x, ok

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

    def load(i):
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
