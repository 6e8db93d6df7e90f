"""YAML recipes -> typed, validated dataclasses.

Every key is checked: an unknown key names itself and the closest known one, a wrong type names
the key and the type it wants. `--set train.epochs=3` overrides are applied to the raw mapping
before validation, so they are checked the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from vidcli.errors import VidcliError


@dataclass
class SynthConfig:
    """Generate the built-in data at `data.root` when it is missing."""

    volumes: bool = False
    classes: int = 8
    train: int = 24
    val: int = 6
    test: int = 8
    frames: int = 16
    size: int = 64
    seed: int = 0


@dataclass
class DataConfig:
    root: str = "data/synth"
    format: Literal["videos", "frames", "volumes"] = "videos"
    frames: int = 10
    frame_step: int = 2
    size: tuple[int, int] = (224, 224)
    workers: int = 0
    max_bad_fraction: float = 0.05
    synth: SynthConfig | None = None
    # "segments" / "dense": TSM's sampling (frames = segments), with resize-then-crop instead of padding.
    sampling: Literal["step", "segments", "dense"] = "step"
    flip: bool = False  # random horizontal flip in training: off for direction-sensitive classes
    multiscale_crop: bool = True  # segments/dense training: crops at scales 1, .875, .75, .66
    # Keep each video's decoded frames (sized for this recipe) on disk: the first epoch fills the cache,
    # later ones read only the frames a clip needs. cache_dir: default $VIDCLI_CACHE or ~/.cache/vidcli.
    cache: bool = False
    cache_dir: str | None = None
    cache_limit_gb: float = 20.0

    def __post_init__(self) -> None:
        if not self.cache_limit_gb > 0:
            raise VidcliError(f"data.cache_limit_gb: must be more than 0, got {self.cache_limit_gb}")


@dataclass
class ModelConfig:
    arch: str = "r2plus1d"
    params: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 8
    learning_rate: float = 1e-3
    schedule: Literal["constant", "cosine", "step"] = "constant"
    step_epochs: list[int] = field(default_factory=list)
    step_gamma: float = 0.1
    warmup_epochs: int = 0
    weight_decay: float = 0.0
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = 0.9
    clip_grad_norm: float | None = None
    head_lr_mult: float = 1.0
    early_stopping: int | None = None
    monitor: Literal["val_accuracy", "val_loss"] = "val_accuracy"
    class_weights: Literal["none", "balanced"] = "none"
    # float32, or mixed precision: float16 (loss scaling) or bfloat16 compute, float32 weights and logits.
    precision: Literal["float32", "mixed_float16", "mixed_bfloat16"] = "float32"
    xla: bool = False  # Keras: jit_compile the train step
    channels_last: bool = False  # PyTorch: NHWC memory format for the 2D convolutions
    seed: int = 0
    deterministic: bool = True  # TF op determinism / torch deterministic algorithms
    tensorboard: bool = True
    # Keras: one device, all local GPUs (MirroredStrategy) or the cluster in TF_CONFIG
    # (MultiWorkerMirroredStrategy). PyTorch is distributed by launching under torchrun instead.
    distribute: Literal["none", "mirrored", "multi_worker"] = "none"
    sync_bn: bool = False  # PyTorch DDP: SyncBatchNorm across processes
    # learning_rate is tuned for lr_base_batch clips; batch_size / lr_base_batch scales it linearly or by sqrt.
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    lr_base_batch: int | None = None

    def __post_init__(self) -> None:
        if self.lr_scaling != "none" and not self.lr_base_batch:
            raise VidcliError(f"train.lr_scaling: '{self.lr_scaling}' needs train.lr_base_batch, the batch size "
                              "train.learning_rate was tuned for")
        if self.lr_base_batch is not None and self.lr_base_batch < 1:
            raise VidcliError(f"train.lr_base_batch: must be at least 1, got {self.lr_base_batch}")
        if self.batch_size < 1:
            raise VidcliError(f"train.batch_size: must be at least 1, got {self.batch_size}")


def scaled_learning_rate(train: TrainConfig) -> float:
    """train.learning_rate after the lr_scaling rule for batch_size (the global batch, all replicas together)."""
    if train.lr_scaling == "none" or not train.lr_base_batch:
        return train.learning_rate
    ratio = train.batch_size / train.lr_base_batch
    return train.learning_rate * (ratio if train.lr_scaling == "linear" else math.sqrt(ratio))


def learning_rate_at(train: TrainConfig, epoch: int) -> float:
    """The recipe's learning rate for a 0-based epoch: linear warm-up, then constant, cosine or step."""
    base = scaled_learning_rate(train)
    if epoch < train.warmup_epochs:
        return base * (epoch + 1) / train.warmup_epochs
    if train.schedule == "cosine":
        span = max(1, train.epochs - train.warmup_epochs)
        return base * 0.5 * (1 + math.cos(math.pi * (epoch - train.warmup_epochs) / span))
    if train.schedule == "step":
        return base * train.step_gamma ** sum(epoch >= s for s in train.step_epochs)
    return base


@dataclass
class ExportConfig:
    opset: int = 17
    tolerance: float = 1e-4


@dataclass
class Recipe:
    name: str
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple, dict):
        args = ", ".join(_type_name(a) for a in typing.get_args(tp) if a is not Ellipsis)
        return f"{origin.__name__}[{args}]"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it converted (lists to tuples, ints to floats)."""
    origin = typing.get_origin(tp)
    bad = VidcliError(f"{key}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        deeper: VidcliError | None = None
        for arg in typing.get_args(tp):
            try:
                return _convert(value, arg, key)
            except VidcliError as exc:
                if not str(exc).startswith(f"{key}:"):  # the type fit; a key inside it is wrong
                    deeper = deeper or exc
        raise deeper or bad
    if tp is type(None):
        if value is None:
            return None
        raise bad
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise bad
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise bad
        return from_dict(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise bad
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise VidcliError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        items = [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise bad
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    raise bad


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass `cls` from a mapping, validating every key and type. Used for model params too."""
    if not isinstance(data, dict):
        raise VidcliError(f"{prefix or 'recipe'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in known:
            near = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            hint = f" (did you mean '{near[0]}'?)" if near else f" (known keys: {', '.join(known)})"
            raise VidcliError(f"{full}: unknown key{hint}")
        kwargs[key] = _convert(value, hints[key], full)
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        where = f"{prefix}." if prefix else ""
        raise VidcliError(f"{where}{missing[0]}: required key is missing")
    return cls(**kwargs)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a raw recipe mapping."""
    for item in overrides:
        if "=" not in item:
            raise VidcliError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=3")
        dotted, text = item.split("=", 1)
        parts = [p for p in dotted.strip().split(".") if p]
        if not parts:
            raise VidcliError(f"--set {item!r}: empty key")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise VidcliError(f"--set {item!r}: value is not valid YAML ({exc.__class__.__name__})") from exc
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise VidcliError(f"--set {dotted}: '{part}' is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def parse(raw: Any, source: str = "recipe") -> Recipe:
    if not isinstance(raw, dict):
        raise VidcliError(f"{source}: a recipe must be a YAML mapping with sections data, model, train, export")
    return from_dict(Recipe, raw)


def load_raw(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise VidcliError(f"{p}: recipe file not found")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise VidcliError(f"{p}: not valid YAML{where}") from exc
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise VidcliError(f"{p}: a recipe must be a YAML mapping")
    raw.setdefault("name", p.stem)
    return raw


def load(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    raw = apply_overrides(load_raw(path), overrides or [])
    try:
        return parse(raw, str(path))
    except VidcliError as exc:
        raise VidcliError(f"{path}: {exc}", exc.exit_code) from exc


def dump(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
