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
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from vidcli.errors import VidcliError

INT_MAX = 2**31 - 1  # TensorFlow sizes and steps are int32
SEED_MAX = 2**32 - 1  # NumPy's legacy seed, which keras.utils.set_random_seed sets
EPOCHS_MAX = 100_000  # the Keras pipeline lays out every epoch's sample order up front
CLIP_BYTES_MAX = 2**31  # one uint8 clip (frames x height x width x 3)
# ONNX opsets each exporter writes for every family, checked in ONNX Runtime (benchmarks/BENCHMARKS.md): tf2onnx 1.17
# stops at 18 and the (2+1)D model needs 11; torch.onnx's TorchScript exporter stops at 20 and TSM needs 10.
OPSETS = {"keras": (11, 18), "torch": (10, 20)}
# What the built-in data generator can draw (vidcli.datasets.synth): 8 motions, 6 volume shapes.
SYNTH_CLASSES = {False: 8, True: 6}
SYNTH_SIZE = {False: (16, 4096), True: (8, 128)}


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric key; a float must also be finite."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False

    def holds(self, v: float) -> bool:
        if isinstance(v, float) and not math.isfinite(v):
            return False
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)

    def describe(self, v: float) -> str:
        what = "a finite number" if isinstance(v, float) else "an integer"
        below = self.lo is not None and not (isinstance(v, float) and math.isnan(v)) and v <= self.lo
        if self.lo is not None and (self.hi is None or (self.hi in (INT_MAX, SEED_MAX) and below)):
            return f"{what} {'>' if self.lo_open else '>='} {_num(self.lo)}"
        if self.lo is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"{what} in {left}{_num(self.lo)}, {_num(self.hi)}{right}"
        return f"{what} {'<' if self.hi_open else '<='} {_num(self.hi)}"


def _num(v: float | None) -> str:
    return str(int(v)) if v is not None and float(v).is_integer() else f"{v:g}"


def at_least(lo: float, hi: float = INT_MAX) -> Range:
    return Range(lo, hi)


POSITIVE = Range(0, lo_open=True)  # a finite float > 0
FRACTION = Range(0, 1)


def check_ranges(obj: Any, section: str, limits: dict[str, Range]) -> None:
    """Every named field of `obj` (each item, for lists and tuples) inside its Range; None is left alone."""
    for name, limit in limits.items():
        value = getattr(obj, name)
        many = isinstance(value, (list, tuple))
        for i, v in enumerate(value if many else [value]):
            if v is not None and not limit.holds(v):
                key = f"{section}.{name}" + (f"[{i}]" if many else "")
                raise VidcliError(f"{key}: must be {limit.describe(v)}, got {v!r}")


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a run folder's name (one path component inside --runs-dir), or None."""
    if not name or not name.strip():
        return "must not be empty"
    if name != name.strip():
        return "must not start or end with white space"
    if name.startswith("."):
        return "must not start with '.'"
    if "/" in name or "\\" in name:
        return "must be one folder name, without '/' or '\\'"
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        return "must not contain control characters"
    if len(name) > 128 or len(name.encode("utf-8", "surrogatepass")) > 255:
        return "must be at most 128 characters"
    return None


def check_name(name: str, key: str = "name") -> str:
    problem = name_problem(name)
    if problem:
        raise VidcliError(f"{key}: {name!r} {problem} (it names the run folder runs/<name>/<n>)")
    return name


def _check_path(value: str | None, key: str) -> None:
    if value is None:
        return
    if not value.strip():
        raise VidcliError(f"{key}: must be a path, got an empty string")
    if "\x00" in value:
        raise VidcliError(f"{key}: must not contain a NUL character")


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

    def __post_init__(self) -> None:
        lo, hi = SYNTH_SIZE[self.volumes]
        check_ranges(self, "data.synth", {
            "classes": at_least(1, SYNTH_CLASSES[self.volumes]), "train": at_least(1, 100_000),
            "val": at_least(0, 100_000), "test": at_least(0, 100_000), "frames": at_least(2, 10_000),
            "size": at_least(lo, hi), "seed": at_least(0, SEED_MAX)})


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
    # "step": `frames` frames `frame_step` apart, letterboxed; "segments" / "dense": TSM's sampling (frames =
    # segments), resize-then-crop. Unset: the family's own (its card's `sampling`), filled in by check_recipe.
    sampling: Literal["step", "segments", "dense"] | None = None
    flip: bool = False  # random horizontal flip in training: off for direction-sensitive classes
    multiscale_crop: bool = True  # segments/dense training: crops at scales 1, .875, .75, .66
    # Keep each video's decoded frames (sized for this recipe) on disk: the first epoch fills the cache,
    # later ones read only the frames a clip needs. cache_dir: default $VIDCLI_CACHE or ~/.cache/vidcli.
    cache: bool = False
    cache_dir: str | None = None
    cache_limit_gb: float = 20.0

    def __post_init__(self) -> None:
        _check_path(self.root, "data.root")
        if self.cache_dir is not None:
            _check_path(self.cache_dir, "data.cache_dir")
        check_ranges(self, "data", {"frames": at_least(1, 4096), "frame_step": at_least(1), "size": at_least(1, 8192),
                                    "workers": at_least(0, 1024), "max_bad_fraction": FRACTION,
                                    "cache_limit_gb": POSITIVE})
        clip = self.frames * self.size[0] * self.size[1] * 3
        if clip > CLIP_BYTES_MAX:
            h, w = self.size
            raise VidcliError(f"data.frames x data.size: one clip would take {clip / 2**30:.1f} GiB; at most "
                              f"{CLIP_BYTES_MAX // 2**30} GiB (got {self.frames} frames of {h}x{w})")


@dataclass
class ModelConfig:
    arch: str = "r2plus1d"
    params: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None

    def __post_init__(self) -> None:
        _check_path(self.pretrained, "model.pretrained")


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
        check_ranges(self, "train", {
            "epochs": at_least(1, EPOCHS_MAX), "batch_size": at_least(1), "learning_rate": POSITIVE,
            "step_epochs": at_least(1), "step_gamma": Range(0, 1, lo_open=True), "warmup_epochs": at_least(0),
            "weight_decay": Range(0), "momentum": Range(0, 1, hi_open=True), "clip_grad_norm": POSITIVE,
            "head_lr_mult": POSITIVE, "early_stopping": at_least(1), "seed": at_least(0, SEED_MAX),
            "lr_base_batch": at_least(1)})
        if self.warmup_epochs >= self.epochs:
            raise VidcliError(f"train.warmup_epochs: must be less than train.epochs ({self.epochs}), "
                              f"got {self.warmup_epochs}")
        for i in range(1, len(self.step_epochs)):
            if self.step_epochs[i] <= self.step_epochs[i - 1]:
                raise VidcliError(f"train.step_epochs: must be increasing, got {self.step_epochs}")
        if self.lr_scaling != "none" and not self.lr_base_batch:
            raise VidcliError(f"train.lr_scaling: '{self.lr_scaling}' needs train.lr_base_batch, the batch size "
                              "train.learning_rate was tuned for")


def scaled_learning_rate(train: TrainConfig) -> float:
    """train.learning_rate after the lr_scaling rule for batch_size (the global batch, all replicas together)."""
    if train.lr_scaling == "none" or not train.lr_base_batch:
        return train.learning_rate
    ratio = train.batch_size / train.lr_base_batch
    return train.learning_rate * (ratio if train.lr_scaling == "linear" else math.sqrt(ratio))


def learning_rate_at(train: TrainConfig, epoch: int, step: int = 0, steps: int = 1) -> float:
    """The learning rate at `step` (0-based, of `steps`) in 0-based `epoch`: during the first warmup_epochs it
    rises linearly step by step from base / warm-up steps to the base rate; then constant, cosine or step,
    which change once per epoch as in the references."""
    base = scaled_learning_rate(train)
    if epoch < train.warmup_epochs:
        warm = train.warmup_epochs * max(1, steps)
        return base * (epoch * max(1, steps) + min(step, max(1, steps) - 1) + 1) / warm
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

    def __post_init__(self) -> None:
        lo, hi = min(r[0] for r in OPSETS.values()), max(r[1] for r in OPSETS.values())
        check_ranges(self, "export", {"opset": at_least(lo, hi), "tolerance": POSITIVE})


def check_opset(opset: int, backend: str, key: str = "export.opset") -> int:
    """An opset the backend's exporter writes (ONNX Runtime runs all of them)."""
    lo, hi = OPSETS.get(backend, (min(r[0] for r in OPSETS.values()), max(r[1] for r in OPSETS.values())))
    if not lo <= opset <= hi:
        raise VidcliError(f"{key}: must be an integer in [{lo}, {hi}] for {backend} models "
                          f"(the opsets its ONNX exporter supports), got {opset}")
    return opset


@dataclass
class Recipe:
    name: str
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def __post_init__(self) -> None:
        check_name(self.name)  # export.opset is checked against the family's backend in registry.check_recipe

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
            try:
                return float(value)
            except OverflowError:
                raise VidcliError(f"{key}: expected a number, got one too large ({str(value)[:12]}...)") from None
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
        except (yaml.YAMLError, ValueError, RecursionError) as exc:  # ValueError: a date or number YAML cannot build
            raise VidcliError(f"--set {item!r}: value is not valid YAML ({exc.__class__.__name__})") from None
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
        data = p.read_bytes()
    except OSError as exc:
        raise VidcliError(f"{p}: cannot read the recipe ({exc.strerror or exc})") from None
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise VidcliError(f"{p}: UTF-16 text; save the recipe as UTF-8")
    if b"\x00" in data:
        raise VidcliError(f"{p}: not a recipe (a binary file, not YAML text)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise VidcliError(f"{p}: not UTF-8 text (byte 0x{data[exc.start]:02x} at line {line}); "
                          "save the recipe as UTF-8") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise VidcliError(f"{p}: not valid YAML{where}") from None
    except RecursionError:
        raise VidcliError(f"{p}: not valid YAML (nested too deeply)") from None
    except ValueError as exc:  # a value YAML recognises but cannot build: 2024-13-45, an int of 5000 digits
        raise VidcliError(f"{p}: not valid YAML ({str(exc)[:60]})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise VidcliError(f"{p}: a recipe must be a YAML mapping")
    if "name" not in raw:
        problem = name_problem(p.stem)
        if problem:
            raise VidcliError(f"{p}: name: {p.stem!r} (the file's name) {problem}; set name: in the recipe")
        raw["name"] = p.stem
    return raw


def load(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    raw = apply_overrides(load_raw(path), overrides or [])
    try:
        return parse(raw, str(path))
    except VidcliError as exc:
        raise VidcliError(f"{path}: {exc}", exc.exit_code) from exc


def dump(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.to_dict(), sort_keys=False)
