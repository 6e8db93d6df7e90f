"""The Keras backend: build, fit, predict, load, export for every Keras family.

Checkpoints are full `.keras` files (weights and optimizer state), written atomically at the end
of every epoch as `last.keras`, copied to `best.keras` when the monitored score improves. A run
resumed from `last.keras` continues with the same optimizer state, schedule and data order.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from vidcli import fsio, interrupts  # noqa: E402
from vidcli import recipe as recipe_mod
from vidcli.backends import registry  # noqa: E402
from vidcli.backends.keras import data as kdata  # noqa: E402
from vidcli.backends.keras import distribute as kdist  # noqa: E402
from vidcli.console import log, progress, warn  # noqa: E402
from vidcli.datasets.source import Source  # noqa: E402
from vidcli.errors import VidcliError, fail  # noqa: E402
from vidcli.runs import HISTORY_FIELDS, Run, read_history, write_history  # noqa: E402

LAST, BEST = "last.keras", "best.keras"


def setup(train: recipe_mod.TrainConfig) -> None:
    """Seeds everywhere and, when asked, deterministic ops, so a CPU run repeats exactly."""
    keras.utils.set_random_seed(train.seed)
    if train.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(train.precision)


def build(rec: recipe_mod.Recipe, num_classes: int, sample_shape: tuple[int, ...]) -> keras.Model:
    params = registry.check_recipe(rec)
    fam = registry.family(rec.model.arch)
    model = fam.build(params, num_classes, tuple(sample_shape))
    pretrained = rec.model.pretrained or getattr(params, "pretrained", None)
    if pretrained:
        fam.load_pretrained(model, pretrained, params)
    if rec.train.precision != "float32":  # logits and loss in float32
        outputs = keras.layers.Activation("linear", dtype="float32", name="logits_fp32")(model.output)
        model = keras.Model(model.input, outputs, name=model.name)
    return model


def _import_family(arch: str) -> None:
    registry.family(arch)  # registers the family's layers for deserialisation


def load_model(path: Path, arch: str) -> keras.Model:
    _import_family(arch)
    if not path.is_file():
        raise VidcliError(f"{path}: checkpoint not found")
    try:
        return keras.saving.load_model(path, compile=True)
    except (OSError, ValueError) as exc:
        raise VidcliError(f"{path}: cannot load checkpoint ({str(exc).splitlines()[0]})") from exc


def _compile(model: keras.Model, train: recipe_mod.TrainConfig) -> None:
    if train.weight_decay:
        opt = keras.optimizers.AdamW(train.learning_rate, weight_decay=train.weight_decay)
    else:
        opt = keras.optimizers.Adam(train.learning_rate)
    model.compile(
        optimizer=opt,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=train.xla,
    )


def class_weights(source: Source, mode: str) -> np.ndarray | None:
    if mode != "balanced":
        return None
    counts = np.bincount(source.labels, minlength=len(source.classes)).astype(np.float64)
    w = np.where(counts > 0, len(source.labels) / (len(source.classes) * np.maximum(counts, 1)), 0.0)
    return w.astype(np.float32)


def _save_atomic(model: keras.Model, path: Path) -> None:
    with fsio.atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)


def _copy_atomic(src: Path, dst: Path) -> None:
    with fsio.atomic_path(dst, suffix=dst.suffix) as tmp:
        shutil.copyfile(src, tmp)


class RunCallback(keras.callbacks.Callback):
    """Checkpoints, history, schedule, early stopping and the bad-clip budget, all persisted in the run."""

    def __init__(self, run: Run, rec: recipe_mod.Recipe, train_src: Source, steps: int, has_val: bool,
                 val_errors: list):
        super().__init__()
        self.run, self.rec, self.src, self.steps = run, rec, train_src, steps
        self.val_errors = val_errors
        state = run.state
        self.rows = read_history(run)
        self.monitor = rec.train.monitor if has_val else rec.train.monitor.replace("val_", "")
        self.best = state.get("best_score")
        self.best_epoch = state.get("best_epoch", 0)
        self.error: VidcliError | None = None
        self.bad: int | None = None  # failed clips so far, when a distributed loop counts them cluster-wide
        self._bar = None

    def _better(self, score: float) -> bool:
        if self.best is None:
            return True
        return score < self.best if self.monitor.endswith("loss") else score > self.best

    def on_epoch_begin(self, epoch, logs=None):
        self.lr = recipe_mod.learning_rate_at(self.rec.train, epoch)
        self.model.optimizer.learning_rate.assign(self.lr)
        self.t0 = time.perf_counter()
        self._ctx = progress(self.steps, f"epoch {epoch + 1}/{self.rec.train.epochs}")
        self._advance = self._ctx.__enter__()

    def on_train_batch_end(self, batch, logs=None):
        interrupts.check()
        self._advance(1)
        bad = len(self.src.failed) if self.bad is None else self.bad
        if bad > self.rec.data.max_bad_fraction * len(self.src):
            self.error = fail(
                f"{bad} of {len(self.src)} training clips failed to decode "
                f"(more than data.max_bad_fraction={self.rec.data.max_bad_fraction}); stopping"
            )
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self._ctx.__exit__(None, None, None)
        if self.val_errors:
            self.error = self.val_errors[0]
            self.model.stop_training = True
        if self.error:
            return
        logs = dict(logs or {})
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in logs.items() if k in HISTORY_FIELDS},
               "lr": float(self.lr), "seconds": round(time.perf_counter() - self.t0, 2)}
        self.rows = [r for r in self.rows if r["epoch"] <= epoch] + [row]
        last = self.run.file(LAST)
        _save_atomic(self.model, last)
        score = logs.get(self.monitor)
        improved = score is not None and self._better(float(score))
        if improved:
            self.best, self.best_epoch = float(score), epoch + 1
            _copy_atomic(last, self.run.file(BEST))
        write_history(self.run, self.rows)
        self.run.update_state(status="training", epochs_done=epoch + 1, best_score=self.best,
                              best_epoch=self.best_epoch, monitor=self.monitor)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "seconds", "lr"))
        mark = "  *best*" if improved else ""
        log(f"epoch {epoch + 1}/{self.rec.train.epochs}  {shown}  ({row['seconds']:.1f}s){mark}")
        patience = self.rec.train.early_stopping
        if patience and epoch + 1 - self.best_epoch >= patience:
            log(f"early stopping: no improvement in {self.monitor} for {patience} epochs")
            self.model.stop_training = True


def fit(run: Run, rec: recipe_mod.Recipe, train_src: Source, val_src: Source | None, resume: bool) -> dict:
    strategy = kdist.strategy_for(rec.train)  # first: MultiWorkerMirroredStrategy must precede other TF work
    setup(rec.train)
    bs = rec.train.batch_size
    steps = math.ceil(len(train_src) / bs)
    if strategy is not None:
        kdist.check_batch(strategy, bs)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        if resume and run.file(LAST).is_file():
            model = load_model(run.file(LAST), rec.model.arch)
            # The checkpoint's own step counter says how far it got, whatever run.json managed to record.
            first_epoch = int(model.optimizer.iterations.numpy()) // steps
            log(f"resuming {run.path} after epoch {first_epoch}")
        else:
            model = build(rec, len(train_src.classes), train_src.sample_shape)
            _compile(model, rec.train)
            model.optimizer.build(model.trainable_variables)
            _save_atomic(model, run.file(LAST))  # Ctrl-C in the first epoch still leaves a resumable run
            first_epoch = 0
    if rec.train.sync_bn:
        if strategy is None or strategy.num_replicas_in_sync == 1:
            warn("train.sync_bn: one replica, nothing to synchronise")
        else:
            kdist.synchronise_batch_norm(model)
    if first_epoch >= rec.train.epochs:
        log(f"{run.path}: all {rec.train.epochs} epochs already done")
        run.update_state(status="finished")
        return run.state
    cw = class_weights(train_src, rec.train.class_weights)
    val_errors: list = []
    cb = RunCallback(run, rec, train_src, steps, val_src is not None, val_errors)
    callbacks: list = [cb]
    if rec.train.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(str(run.file("tensorboard")), profile_batch=0))
    replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    run.update_state(status="training", params=int(model.count_params()), replicas=replicas)
    try:
        with interrupts.deferred(), kdata.guard():  # decode threads drained before anything else
            if strategy is not None:
                kdist.train_loop(model, strategy, rec, train_src, val_src, first_epoch, callbacks, cw, cb)
            else:
                train_ds = kdata.train_dataset(train_src, bs, rec.train.seed, first_epoch, rec.train.epochs,
                                               rec.data.workers, cw)
                val_ds = None if val_src is None else kdata.eval_dataset(val_src, bs, rec.data.workers, val_errors)
                model.fit(train_ds, epochs=rec.train.epochs, initial_epoch=first_epoch, steps_per_epoch=steps,
                          validation_data=val_ds, callbacks=callbacks, verbose=0, shuffle=False)
    except KeyboardInterrupt:
        run.update_state(status="interrupted")
        done = run.state.get("epochs_done", 0)
        raise VidcliError(
            f"interrupted; {run.path} keeps its checkpoint after epoch {done}: resume with "
            f"`vidcli train --resume {run.path}`", exit_code=130) from None
    if cb.error:
        run.update_state(status="failed")
        raise cb.error
    if not run.file(BEST).is_file() and run.file(LAST).is_file():
        _copy_atomic(run.file(LAST), run.file(BEST))
    return run.update_state(status="finished", skipped_clips=len(train_src.failed))


def predict_source(model: keras.Model, source: Source, batch_size: int, workers: int) -> np.ndarray:
    errors: list = []
    with kdata.guard():
        ds = kdata.eval_dataset(source, batch_size, workers, errors)
        logits = model.predict(ds.map(lambda x, y: x), verbose=0)
    if errors:
        raise errors[0]
    return np.asarray(logits, dtype=np.float32)


def load_for_run(run: Run) -> keras.Model:
    rec = run.recipe
    path = run.file(BEST) if run.file(BEST).is_file() else run.file(LAST)
    if not path.is_file():
        raise VidcliError(f"{run.path}: no checkpoint (best.keras / last.keras); has it been trained?")
    return load_model(path, rec.model.arch)


def checkpoint_of(run: Run) -> Path:
    return run.file(BEST) if run.file(BEST).is_file() else run.file(LAST)


def predict_batch(model: keras.Model, batch: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(batch.astype(np.float32), verbose=0), dtype=np.float32)


def export_onnx(run: Run, sample: np.ndarray, opset: int) -> tuple[bytes, np.ndarray]:
    """ONNX bytes of the run's model and the framework's own output on `sample` (a float32 batch).

    Traced through our own `training=False` function: Keras' `model.export(format="onnx")` traces
    batch normalisation in training mode, which breaks parity for every model that has it.
    """
    import tempfile

    import tf2onnx

    model = load_for_run(run)
    reference = predict_batch(model, sample)
    spec = tf.TensorSpec((None, *sample.shape[1:]), tf.float32, name="video")

    @tf.function(input_signature=[spec])
    def serve(video):
        return model(video, training=False)

    with tempfile.TemporaryDirectory(prefix="vidcli-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        tf2onnx.convert.from_function(serve, input_signature=[spec], opset=opset, output_path=str(path))
        return path.read_bytes(), reference


# -- benchmark support (`vidcli benchmark`) ----------------------------------------------------------


def save_untrained(run: Run, rec: recipe_mod.Recipe, num_classes: int, sample_shape: tuple[int, ...]) -> Path:
    """The recipe's model with random weights (seeded by train.seed) as the run's best checkpoint, so a
    recipe is benchmarked through the same load and export path as a trained run. The caller clears
    model.pretrained; the global precision policy is restored afterwards."""
    keras.utils.set_random_seed(rec.train.seed)
    policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(rec.train.precision)
    try:
        model = build(rec, num_classes, tuple(sample_shape))
    finally:
        keras.mixed_precision.set_global_policy(policy)
    _save_atomic(model, run.file(BEST))
    return run.file(BEST)


def inference_fn(model: keras.Model, input_shape: tuple[int, ...]):
    """`training=False` forward passes as one traced graph (any batch size), returning float32 numpy.

    Timed instead of `predict_batch`: `model.predict` sets up a data pipeline on every call, which for
    small models and batches costs several times the forward pass itself.
    """
    spec = tf.TensorSpec((None, *input_shape), tf.float32)
    forward = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    return lambda batch: np.asarray(forward(tf.constant(batch, tf.float32)), dtype=np.float32)


def device_of(model: keras.Model) -> str:
    """Where TensorFlow runs the model: its default placement is the first GPU when there is one."""
    return "cuda:0" if tf.config.list_logical_devices("GPU") else "cpu"


def set_threads(n: int) -> None:
    """n threads inside each op, one op at a time (ONNX Runtime's default mode). TensorFlow fixes its pools
    when it first runs anything, so in a process that already has, they keep their size (with a warning)."""
    threading = tf.config.threading
    try:
        threading.set_intra_op_parallelism_threads(n)
        threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        warn(f"TensorFlow is already running in this process: its thread pools keep their size, not {n}")


def pipeline_batches(source: Source, batch_size: int, workers: int, seed: int):
    """Clips per batch of the training pipeline (`train_dataset`, augmentation included), epoch after
    epoch, for as long as the caller reads."""
    steps = math.ceil(len(source) / batch_size)
    chunk = max(1, math.ceil(256 / steps))  # epochs per dataset, so a small set does not restart it often
    first = 0
    while True:
        for x, _, _ in kdata.train_dataset(source, batch_size, seed, first, first + chunk, workers):
            yield int(x.shape[0])
        first += chunk
