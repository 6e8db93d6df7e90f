"""tf.distribute training for the Keras families: `train.distribute: mirrored | multi_worker`.

Keras 3's `model.fit` cannot drive a MultiWorkerMirroredStrategy (it reduces scalar logs along axis 0,
tensorflow/tensorflow#72388), so distributed runs use this small custom loop for both strategies: one
code path, the same semantics as the single-device `fit`:

- the global batch is `train.batch_size`; every replica gets batch_size / replicas clips of it;
- the epoch order is the single-device one (`epoch_plan(seed, epoch)`), padded to whole global batches
  with weight-0 clips, and each worker decodes only its own part (no worker decodes a clip it drops);
- the loss of a step is sum(weight * CE) / (real clips in the global batch), as Keras' sum_over_batch_size;
  gradients are summed across replicas by the optimizer, metrics by `strategy.reduce`, so every worker
  logs the same numbers and makes the same early-stopping and bad-clip decisions (no worker is left
  waiting in a collective);
- checkpoints are the same `.keras` files, written by the chief only (other workers train in a scratch
  copy of the run, see `vidcli.distributed`), and resume reads the optimizer's step counter as usual.
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from vidcli import recipe as recipe_mod
from vidcli.backends.keras import data as kdata
from vidcli.console import log, warn
from vidcli.datasets.source import Source
from vidcli.errors import VidcliError, fail


def strategy_for(train: recipe_mod.TrainConfig) -> tf.distribute.Strategy | None:
    """The recipe's strategy; made before any other TF work (MultiWorkerMirroredStrategy insists)."""
    if train.distribute == "none":
        return None
    if train.distribute == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    if len(devices) == 1:
        warn(f"train.distribute: mirrored found one device ({devices[0]}); nothing to mirror")
    return tf.distribute.MirroredStrategy(devices)


def check_batch(strategy: tf.distribute.Strategy, batch_size: int) -> None:
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise VidcliError(f"train.batch_size {batch_size} does not split over {replicas} replicas; "
                          f"use a multiple of {replicas}")


def shard_plan(order: np.ndarray, seeds: np.ndarray, batch_size: int, pipelines: int, pipeline: int
               ) -> dict[str, np.ndarray]:
    """One epoch's clips for input pipeline `pipeline` of `pipelines`, in the order its replicas take them.

    The epoch is padded to whole global batches (padding: valid 0); global batch k is cut into
    `pipelines` equal parts and this pipeline gets part `pipeline` of every batch. `count` is the number
    of real clips in the element's global batch (the loss denominator).
    """
    n = len(order)
    steps = max(1, math.ceil(n / batch_size))
    total = steps * batch_size
    idx = np.resize(order, total)  # padding repeats real clips; they load fine and weigh nothing
    sds = np.resize(seeds, total)
    valid = (np.arange(total) < n).astype(np.float32)
    count = valid.reshape(steps, batch_size).sum(1, keepdims=True).repeat(batch_size, 1).reshape(-1)
    part = batch_size // pipelines

    def mine(a: np.ndarray) -> np.ndarray:
        return a.reshape(steps, pipelines, part)[:, pipeline, :].reshape(-1)

    return {"idx": mine(idx), "seed": mine(sds), "valid": mine(valid), "count": mine(count)}


def train_dataset(strategy: tf.distribute.Strategy, source: Source, batch_size: int, seed: int, first_epoch: int,
                  epochs: int, workers: int, class_weight: np.ndarray | None):
    weights = class_weight if class_weight is not None else np.ones(len(source.classes), np.float32)
    labels = tf.constant(source.labels, tf.int64)
    w = tf.constant(weights, tf.float32)
    clip = kdata.train_loader(source)

    def make(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        per_replica = ctx.get_per_replica_batch_size(batch_size)
        plans = [shard_plan(*kdata.epoch_plan(len(source), seed, e), batch_size, ctx.num_input_pipelines,
                            ctx.input_pipeline_id) for e in range(first_epoch, epochs)]
        table = {k: np.concatenate([p[k] for p in plans]) for k in ("idx", "seed", "valid", "count")}

        def mapper(el):
            x, ok = clip(el["idx"], el["seed"])
            y = tf.gather(labels, el["idx"])
            return x, y, ok * el["valid"] * tf.gather(w, y), (1.0 - ok) * el["valid"], el["valid"], el["count"]

        ds = tf.data.Dataset.from_tensor_slices(table)
        return ds.map(mapper, num_parallel_calls=kdata.parallelism(workers), deterministic=True).batch(
            per_replica).prefetch(2)

    return strategy.distribute_datasets_from_function(make)


def eval_dataset(strategy: tf.distribute.Strategy, source: Source, batch_size: int, workers: int, errors: list):
    labels = tf.constant(source.labels, tf.int64)
    clip = kdata.eval_loader(source, errors)
    order = np.arange(len(source), dtype=np.int64)

    def make(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        per_replica = ctx.get_per_replica_batch_size(batch_size)
        plan = shard_plan(order, order, batch_size, ctx.num_input_pipelines, ctx.input_pipeline_id)

        def mapper(i, valid):
            x, ok = clip(i)
            return x, tf.gather(labels, i), ok * valid, (1.0 - ok) * valid

        ds = tf.data.Dataset.from_tensor_slices((plan["idx"], plan["valid"]))
        return ds.map(mapper, num_parallel_calls=kdata.parallelism(workers), deterministic=True).batch(
            per_replica).prefetch(2)

    return strategy.distribute_datasets_from_function(make)


def _ce(y, logits):
    return keras.losses.sparse_categorical_crossentropy(y, tf.cast(logits, tf.float32), from_logits=True)


def _correct(y, logits):
    return tf.cast(tf.equal(tf.argmax(logits, -1), y), tf.float32)


def train_loop(model: keras.Model, strategy: tf.distribute.Strategy, rec: recipe_mod.Recipe, train_src: Source,
               val_src: Source | None, first_epoch: int, callbacks: list, class_weight: np.ndarray | None,
               run_cb) -> None:
    """Epochs first_epoch..epochs of the recipe, driving `callbacks` as `model.fit` would."""
    train = rec.train
    bs = train.batch_size
    steps = max(1, math.ceil(len(train_src) / bs))
    val_steps = max(1, math.ceil(len(val_src) / bs)) if val_src is not None else 0
    opt = model.optimizer
    replicas = strategy.num_replicas_in_sync
    model.stop_training = False
    log(f"distributed: {type(strategy).__name__}, {replicas} replicas, {bs // replicas} clips per replica")

    def forward_backward(x, y, w, bad, valid, count):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            ce = _ce(y, logits)
            loss = tf.reduce_sum(ce * w) / tf.maximum(count[0], 1.0)
            if model.losses:
                loss += tf.add_n(model.losses) / replicas
            scaled = opt.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        stats = tf.stack([tf.reduce_sum(ce * w), tf.reduce_sum(_correct(y, logits) * w), tf.reduce_sum(w),
                          tf.reduce_sum(valid), tf.reduce_sum(bad)])
        return grads, stats

    if train.xla:  # XLA compiles the model's forward and backward; the all-reduce and update stay outside
        forward_backward = tf.function(forward_backward, jit_compile=True)

    def replica_train(*batch):
        grads, stats = forward_backward(*batch)
        opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return stats

    def replica_eval(x, y, valid, bad):
        logits = model(x, training=False)
        return tf.stack([tf.reduce_sum(_ce(y, logits) * valid), tf.reduce_sum(_correct(y, logits) * valid),
                         tf.reduce_sum(valid), tf.reduce_sum(bad)])

    @tf.function
    def train_step(it):
        stats = strategy.run(replica_train, args=next(it))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, stats, axis=None)

    @tf.function
    def eval_step(it):
        stats = strategy.run(replica_eval, args=next(it))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, stats, axis=None)

    train_it = iter(train_dataset(strategy, train_src, bs, train.seed, first_epoch, train.epochs,
                                  rec.data.workers, class_weight))
    val_errors: list = []
    val_ds = eval_dataset(strategy, val_src, bs, rec.data.workers, val_errors) if val_src is not None else None
    cbs = keras.callbacks.CallbackList(callbacks, model=model, add_history=False, add_progbar=False)
    cbs.on_train_begin()
    for epoch in range(first_epoch, train.epochs):
        cbs.on_epoch_begin(epoch)
        totals = np.zeros(5)
        bad_epoch = 0.0
        for step in range(steps):
            cbs.on_train_batch_begin(step)
            totals += train_step(train_it).numpy()
            bad_epoch = totals[4]
            run_cb.bad = int(bad_epoch)  # the whole cluster's count, the same on every worker
            cbs.on_train_batch_end(step)
            if model.stop_training:
                break
        if model.stop_training and run_cb.error:
            break
        logs = {"loss": totals[0] / max(totals[3], 1.0), "accuracy": totals[1] / max(totals[2], 1e-12)}
        if val_ds is not None:
            vt = np.zeros(4)
            val_it = iter(val_ds)
            for _ in range(val_steps):
                vt += eval_step(val_it).numpy()
            if vt[3] > 0:
                run_cb.error = val_errors[0] if val_errors else fail(
                    "a validation clip failed to decode on another worker; stopping")
                model.stop_training = True
                break
            logs.update(val_loss=vt[0] / max(vt[2], 1.0), val_accuracy=vt[1] / max(vt[2], 1.0))
        cbs.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    cbs.on_train_end()


def synchronise_batch_norm(model: keras.Model) -> int:
    """`train.sync_bn` for Keras: batch statistics over all replicas (Keras' synchronized BatchNormalization)."""
    n = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True
            n += 1
    return n
