"""The Keras backend: build, train, load, run and export every Keras family (`vidcli.backends.base.Backend`).

Checkpoints are full `.keras` files (weights and optimizer state) with the run's state stored inside as
`vidcli_state.json` (see `vidcli.engine`): `last.keras` after every epoch, copied to `best.keras` when the
monitored score improves. A resumed run continues with the same optimizer state, schedule and data order.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from vidcli import engine as engine_mod  # noqa: E402
from vidcli import fsio, interrupts  # noqa: E402
from vidcli import recipe as recipe_mod  # noqa: E402
from vidcli.backends import registry  # noqa: E402
from vidcli.backends.base import Backend, Forward, Stream  # noqa: E402
from vidcli.backends.keras import data as kdata  # noqa: E402
from vidcli.backends.keras import distribute as kdist  # noqa: E402
from vidcli.console import log, progress, warn  # noqa: E402
from vidcli.datasets.source import Source, class_weights  # noqa: E402
from vidcli.errors import VidcliError  # noqa: E402
from vidcli.modelcard import INPUT, OUTPUT, ModelCard, StreamSpec  # noqa: E402

STATE_MEMBER = "vidcli_state.json"


def setup(train: recipe_mod.TrainConfig) -> None:
    """Seeds everywhere and, when asked, deterministic ops, so a CPU run repeats exactly."""
    keras.utils.set_random_seed(train.seed)
    if train.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.mixed_precision.set_global_policy(train.precision)


def optimizer(train: recipe_mod.TrainConfig) -> keras.optimizers.Optimizer:
    """Adam (AdamW with weight decay) or SGD with momentum; `clip_grad_norm` clips the global gradient norm.
    Keras applies weight decay decoupled (w -= lr * wd * w), for SGD as for AdamW; `compile_model` keeps it off
    biases and normalisation scales, as the PyTorch backend does."""
    kw = {"global_clipnorm": train.clip_grad_norm} if train.clip_grad_norm else {}
    lr = recipe_mod.learning_rate_at(train, 0)
    if train.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=train.momentum, weight_decay=train.weight_decay or None, **kw)
    if train.weight_decay:
        return keras.optimizers.AdamW(lr, weight_decay=train.weight_decay, **kw)
    return keras.optimizers.Adam(lr, **kw)


def compile_model(model: keras.Model, train: recipe_mod.TrainConfig) -> None:
    """A fresh optimizer for `model`, built (so a checkpoint's optimizer state can be loaded into it)."""
    opt = optimizer(train)
    if train.weight_decay:  # not on vectors (biases, norm scales and offsets, ReZero scalars): weights only
        opt.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if len(v.shape) <= 1])
    model.compile(
        optimizer=opt,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        jit_compile=train.xla,
    )
    model.optimizer.build(model.trainable_variables)


def save(model: keras.Model, path: Path, state: dict) -> None:
    """The model, its optimizer and the run state in one `.keras` file, renamed into place when complete."""
    with fsio.atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)
        with zipfile.ZipFile(tmp, "a") as z:
            z.writestr(STATE_MEMBER, json.dumps(state))


def read_state(path: Path) -> dict:
    try:
        with zipfile.ZipFile(path) as z:
            return json.loads(z.read(STATE_MEMBER)) if STATE_MEMBER in z.namelist() else {}
    except (OSError, zipfile.BadZipFile, ValueError, KeyError) as exc:
        raise VidcliError(f"{path}: not a readable Keras checkpoint ({exc})") from exc


def model_info(rec: recipe_mod.Recipe, params, num_classes: int, sample_shape=None) -> dict:
    info = {"arch": rec.model.arch, "params": registry.plain_params(params), "num_classes": num_classes}
    return info | ({"sample_shape": [int(v) for v in sample_shape]} if sample_shape is not None else {})


class RunCallback(keras.callbacks.Callback):
    """Keras' side of the epoch engine: learning rate per step, checks per step, the end-of-epoch commit."""

    def __init__(self, eng: engine_mod.EpochEngine, train_src: Source, val_errors: list):
        super().__init__()
        self.eng, self.src, self.val_errors = eng, train_src, val_errors
        self.error: VidcliError | None = None
        self.bad: int | None = None  # failed clips so far, when a distributed loop counts them cluster-wide
        self.epoch = 0

    def _stop(self, error: VidcliError) -> None:
        self.error = error
        self.model.stop_training = True

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.eng.begin_epoch(epoch)
        self._ctx = progress(self.eng.steps, f"epoch {epoch + 1}/{self.eng.rec.train.epochs}")
        self._advance = self._ctx.__enter__()

    def close_progress(self) -> None:
        """The epoch's progress bar, closed however the epoch ends (a stop, Ctrl-C or an error)."""
        ctx, self._ctx = getattr(self, "_ctx", None), None
        if ctx is not None:
            ctx.__exit__(None, None, None)

    def on_train_batch_begin(self, batch, logs=None):
        self.model.optimizer.learning_rate.assign(self.eng.lr(self.epoch, batch))

    def on_train_batch_end(self, batch, logs=None):
        interrupts.check()
        self._advance(1)
        bad = len(self.src.failed) if self.bad is None else self.bad
        try:
            self.eng.check_step((logs or {}).get("loss"), bad, len(self.src))
        except VidcliError as exc:
            self._stop(exc)

    def on_epoch_end(self, epoch, logs=None):
        self.close_progress()
        if self.val_errors and self.error is None:
            self._stop(self.val_errors[0])
        if self.error:
            return
        logs = {k: float(v) for k, v in (logs or {}).items() if k in ("loss", "accuracy", "val_loss", "val_accuracy")}
        try:
            if self.eng.end_epoch(epoch, logs):
                self.model.stop_training = True
        except VidcliError as exc:
            self._stop(exc)


def _register(arch: str) -> None:
    registry.family(arch)  # registers the family's layers for deserialisation


class KerasBackend(Backend):
    name = "keras"
    suffix = ".keras"

    def build(self, rec, num_classes, sample_shape):
        params = registry.check_recipe(rec)
        model = registry.family(rec.model.arch).build(params, num_classes, tuple(sample_shape))
        registry.load_pretrained(rec, params, model)
        if rec.train.precision != "float32":  # logits and loss in float32
            # The family's model stays one layer of the wrapper (not its layers spliced in), so what knows the
            # family's model class (MoViNet's stream) still finds it.
            inputs = keras.Input(shape=tuple(model.inputs[0].shape[1:]), name="video")
            outputs = keras.layers.Activation("linear", dtype="float32", name="logits_fp32")(model(inputs))
            model = keras.Model(inputs, outputs, name=model.name)
        return model

    def load(self, path, rec, num_classes, compile: bool = True):
        """The checkpoint's model, with its optimizer (`compile`) as saved, or none."""
        _register(rec.model.arch)
        if not path.is_file():
            raise VidcliError(f"{path}: checkpoint not found")
        state = read_state(path)
        params = registry.check_recipe(rec)
        engine_mod.check_model(state, rec.model.arch, registry.plain_params(params), num_classes, str(path))
        policy = keras.mixed_precision.global_policy()
        # Under the policy it was trained with: layers whose config does not carry their dtype (MoViNet's
        # classifier) are rebuilt under the global policy, and float16 next to float32 does not load.
        keras.mixed_precision.set_global_policy(rec.train.precision)
        try:
            model = keras.saving.load_model(path, compile=compile)
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise VidcliError(f"{path}: cannot load checkpoint ({str(exc).splitlines()[0]})") from exc
        finally:
            keras.mixed_precision.set_global_policy(policy)
        out = int(model.output.shape[-1])
        if out != num_classes:
            raise VidcliError(f"{path}: the model has {out} outputs, the run {num_classes} labels")
        return model

    def resume_model(self, path, rec, num_classes):
        """The checkpoint's model with a fresh optimizer as the recipe makes it (so what is not serialised, such
        as the variables kept out of weight decay, holds again), the saved weights and optimizer state loaded in."""
        model = self.load(path, rec, num_classes, compile=False)
        compile_model(model, rec.train)
        model.load_weights(path)
        return model

    def checkpoint_state(self, path):
        return read_state(path)

    def save_untrained(self, path, rec, num_classes, sample_shape):
        keras.utils.set_random_seed(rec.train.seed)
        policy = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(rec.train.precision)
        try:
            model = self.build(rec, num_classes, tuple(sample_shape))
        finally:
            keras.mixed_precision.set_global_policy(policy)
        params = registry.check_recipe(rec)
        save(model, path, {"epoch": 0, **model_info(rec, params, num_classes, sample_shape)})
        return path

    # -- training --------------------------------------------------------------------------------------

    def fit(self, run, rec, train_src, val_src, resume):
        strategy = kdist.strategy_for(rec.train)  # first: MultiWorkerMirroredStrategy must precede other TF work
        setup(rec.train)
        bs = rec.train.batch_size
        steps = math.ceil(len(train_src) / bs)
        if strategy is not None:
            kdist.check_batch(strategy, bs)
        params = registry.check_recipe(rec)
        num_classes = len(train_src.classes)
        last = run.file(f"last{self.suffix}")
        eng = engine_mod.EpochEngine(
            run, rec, steps=steps, has_val=val_src is not None, suffix=self.suffix, read_state=read_state,
            save=lambda path, state: save(model, path, state),
            model_info=model_info(rec, params, num_classes, train_src.sample_shape))
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            if resume and last.is_file():
                model = self.resume_model(last, rec, num_classes)
                state = read_state(last) or engine_mod.legacy_state(
                    run, int(model.optimizer.iterations.numpy()) // steps)
                first_epoch = eng.begin(state)
                log(f"resuming {run.path} after epoch {first_epoch}")
            else:
                model = self.build(rec, num_classes, train_src.sample_shape)
                compile_model(model, rec.train)
                first_epoch = eng.begin(None)
        if rec.train.sync_bn:
            if strategy is None or strategy.num_replicas_in_sync == 1:
                warn("train.sync_bn: one replica, nothing to synchronise")
            else:
                kdist.synchronise_batch_norm(model)
        if eng.all_done():
            return eng.finish(len(train_src.failed))
        cw = class_weights(train_src, rec.train.class_weights)
        val_errors: list = []
        cb = RunCallback(eng, train_src, val_errors)
        callbacks: list = [cb]  # TensorBoard scalars come from the epoch engine, the same for every backend
        replicas = strategy.num_replicas_in_sync if strategy is not None else 1
        run.update_state(status="training", params=int(model.count_params()), replicas=replicas)
        try:
            with interrupts.deferred(), kdata.guard():  # the input pipeline is drained on every exit
                if strategy is not None:
                    kdist.train_loop(model, strategy, rec, train_src, val_src, first_epoch, callbacks, cw, cb)
                else:
                    train_ds = kdata.train_dataset(train_src, bs, rec.train.seed, first_epoch, rec.train.epochs,
                                                   rec.data.workers, cw)
                    val_ds = None if val_src is None else kdata.eval_dataset(val_src, bs, rec.data.workers,
                                                                              val_errors)
                    model.fit(train_ds, epochs=rec.train.epochs, initial_epoch=first_epoch, steps_per_epoch=steps,
                              validation_data=val_ds, callbacks=callbacks, verbose=0, shuffle=False)
        except KeyboardInterrupt:
            cb.close_progress()
            raise eng.interrupted() from None
        except BaseException:
            cb.close_progress()
            eng.failed()
            raise
        cb.close_progress()
        if cb.error:
            eng.failed()
            raise cb.error
        return eng.finish(len(train_src.failed))

    # -- inference -------------------------------------------------------------------------------------

    def forward(self, model, card: ModelCard) -> Forward:
        """`training=False` forward passes as one traced graph (any batch size), returning float32 numpy.
        (`model.predict` sets up a data pipeline on every call, which for small batches costs more than the model.)"""
        spec = tf.TensorSpec(card.input_shape(), tf.float32)
        fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        return lambda batch: np.asarray(fn(tf.constant(batch, tf.float32)), dtype=np.float32)

    def exported(self, model):
        from vidcli.backends.keras.float32 import float32_model

        return float32_model(model)  # ONNX Runtime does not run float16 / bfloat16 convolutions on CPU

    def export_onnx(self, model, sample, opset):
        """Traced through our own `training=False` function: Keras' `model.export(format="onnx")` traces
        batch normalisation in training mode, which breaks parity for every model that has it."""
        from vidcli.backends.keras.onnx import convert

        spec = tf.TensorSpec((None, *sample.shape[1:]), tf.float32, name=INPUT)

        @tf.function(input_signature=[spec])
        def serve(video):
            return tf.cast(model(video, training=False), tf.float32)

        return convert(serve, [spec], opset, [OUTPUT])

    def export_stream(self, model, card, opset) -> tuple[bytes, StreamSpec]:
        return registry.stream_module(card.arch).stream_onnx(model, card, opset)

    def stream(self, model, card) -> Stream:
        return registry.stream_module(card.arch).stream_runner(model, card)

    # -- benchmarks ------------------------------------------------------------------------------------

    def device_of(self, model):
        """Where TensorFlow runs the model: its default placement is the first GPU when there is one."""
        return "cuda:0" if tf.config.list_logical_devices("GPU") else "cpu"

    def set_threads(self, n):
        """n threads inside each op, one op at a time (ONNX Runtime's default mode). TensorFlow fixes its pools
        when it first runs anything, so in a process that already has, they keep their size (with a warning)."""
        threading = tf.config.threading
        try:
            threading.set_intra_op_parallelism_threads(n)
            threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            warn(f"TensorFlow is already running in this process: its thread pools keep their size, not {n}")

    def pipeline_batches(self, source, batch_size, workers, seed) -> Iterator[int]:
        steps = math.ceil(len(source) / batch_size)
        chunk = max(1, math.ceil(256 / steps))  # epochs per dataset, so a small set does not restart it often
        first = 0
        while True:
            for x, _, _ in kdata.train_dataset(source, batch_size, seed, first, first + chunk, workers):
                yield int(x.shape[0])
            first += chunk


BACKEND = KerasBackend()


def load_model(path: Path, arch: str) -> keras.Model:
    """A `.keras` checkpoint as it is (no recipe check): for tools that inspect checkpoints."""
    _register(arch)
    if not path.is_file():
        raise VidcliError(f"{path}: checkpoint not found")
    try:
        return keras.saving.load_model(path, compile=True)
    except (OSError, ValueError) as exc:
        raise VidcliError(f"{path}: cannot load checkpoint ({str(exc).splitlines()[0]})") from exc
