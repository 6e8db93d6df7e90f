"""The backend contract: what every framework backend implements, with the same signatures everywhere.

Everything above the backends (training, evaluation, export, predict, benchmark) talks to a `Backend` and to
the family's `FamilySpec` / `ModelCard`, never to a framework or a family by name. A backend serves every
family of its framework: the family's module builds the network, the backend trains, saves, loads, runs and
exports it. Models are opaque objects to the callers. Framework-free: the implementations import theirs.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from vidcli.modelcard import ModelCard, StreamSpec

Forward = Callable[[np.ndarray], np.ndarray]  # float32 model input (card layout) -> float32 logits


class Stream(abc.ABC):
    """A stream model run by its framework: one frame per call, states carried between calls."""

    frame_layout: str = "NTHWC"  # the frame input: (1, 1, H, W, C), or "NCHW": (1, C, H, W)
    logits: str = "running"  # "running": logits of every frame so far; "per_frame": of this frame only

    @abc.abstractmethod
    def initial_states(self) -> Any: ...

    @abc.abstractmethod
    def step(self, frame: np.ndarray, states: Any) -> tuple[np.ndarray, Any]:
        """`frame`: the card's preprocessed frame input; returns (logits (1, classes), next states)."""


class Backend(abc.ABC):
    name: str  # "keras" | "torch"
    suffix: str  # checkpoint file suffix: ".keras" | ".pt"

    # -- models ----------------------------------------------------------------------------------------

    @abc.abstractmethod
    def build(self, rec: Any, num_classes: int, sample_shape: tuple[int, ...]) -> Any:
        """The recipe's model for clips of `sample_shape` (T, H, W, C), with its pretrained weights if it has any."""

    @abc.abstractmethod
    def load(self, path: Path, rec: Any, num_classes: int) -> Any:
        """A checkpoint file of this backend, checked against the recipe, ready for inference."""

    @abc.abstractmethod
    def checkpoint_state(self, path: Path) -> dict:
        """The run state stored inside a checkpoint (epoch, history, best, model description); {} if none."""

    @abc.abstractmethod
    def save_untrained(self, path: Path, rec: Any, num_classes: int, sample_shape: tuple[int, ...]) -> Path:
        """The recipe's model with random weights (seeded by train.seed) as a checkpoint: benchmarks and
        export-from-recipe share the load and export path of trained runs."""

    # -- training --------------------------------------------------------------------------------------

    @abc.abstractmethod
    def fit(self, run: Any, rec: Any, train_src: Any, val_src: Any | None, resume: bool) -> dict:
        """Train `run` through the epoch engine; returns the run's final state."""

    # -- inference -------------------------------------------------------------------------------------

    @abc.abstractmethod
    def forward(self, model: Any, card: ModelCard) -> Forward:
        """Inference-mode forward passes (any batch size) on the card's preprocessed input."""

    def exported(self, model: Any) -> Any:
        """The model as it is exported and checked against its ONNX file (Keras: a float32 copy of a model
        trained in mixed precision); by default the model itself."""
        return model

    @abc.abstractmethod
    def export_onnx(self, model: Any, sample: np.ndarray, opset: int) -> bytes:
        """ONNX bytes of the clip model (input `video`, output `logits`, dynamic batch) traced on `sample`."""

    def export_stream(self, model: Any, card: ModelCard, opset: int) -> tuple[bytes, StreamSpec]:
        """ONNX bytes of one stream step (frame and states in; logits and next states out)."""
        raise NotImplementedError(f"the {self.name} backend has no stream export for this model")

    def stream(self, model: Any, card: ModelCard) -> Stream:
        raise NotImplementedError(f"the {self.name} backend cannot stream this model")

    # -- benchmarks ------------------------------------------------------------------------------------

    @abc.abstractmethod
    def device_of(self, model: Any) -> str: ...

    @abc.abstractmethod
    def set_threads(self, n: int) -> None: ...

    @abc.abstractmethod
    def pipeline_batches(self, source: Any, batch_size: int, workers: int, seed: int) -> Iterator[int]:
        """Clips per batch of the training input pipeline (augmentation included), for as long as read."""

    # -- shared -----------------------------------------------------------------------------------------

    def checkpoint(self, run: Any, which: str = "best") -> Path:
        """`best` (falling back to `last` when a run never improved) or `last` of a run."""
        best, last = run.file(f"best{self.suffix}"), run.file(f"last{self.suffix}")
        if which == "last":
            return last
        return best if best.is_file() else last
