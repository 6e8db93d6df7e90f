"""Model families, framework-free: what each family is, and which recipes it can honour.

A family is one module here, holding its `model.params` dataclass and a `SPEC` (a `FamilySpec`), plus the
framework module `SPEC.module` that builds the network. Everything above the backends asks the spec
(input layout, normalisation, head, sampling, streaming, pretrained weights), never the family's name, so a
new family is its own modules plus one line in `vidcli.backends.registry`. Nothing here imports TensorFlow
or PyTorch: recipes are checked against their family before a framework loads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vidcli.errors import VidcliError
from vidcli.modelcard import ModelCard


@dataclass(frozen=True)
class Norm:
    """How uint8 frames become model input: x * scale, minus mean, divided by std (per channel)."""

    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def per_channel(self, channels: int) -> tuple[list[float], list[float]]:
        def fit(values: tuple[float, ...]) -> list[float]:
            return list(values) if len(values) == channels else [values[0]] * channels

        return fit(self.mean), fit(self.std)


UNIT = Norm()  # values in [0, 1], as the Keras tutorials feed them
IMAGENET = Norm(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


@dataclass(frozen=True)
class FamilySpec:
    """One model family, as the rest of vidcli sees it (timm's default cfg, in spirit)."""

    name: str
    backend: str  # "keras" | "torch"
    module: str  # framework module: build(params, num_classes, input_shape) [, load_pretrained(...)]
    params: type  # the dataclass `model.params` fills; an optional `validate()` returns it checked
    layout: str = "NTHWC"  # model input: NTHWC (channels last) or NTCHW
    norm: Norm = UNIT
    head: str = "head"  # the classifier head's name inside the model
    sampling: str = "step"  # data.sampling the family's reference uses
    formats: tuple[str, ...] = ("videos", "frames")  # data.format values it reads
    pretrained: str | None = None  # what model.pretrained takes, in words; None: no pretrained weights
    stream: Callable[[Any], bool] = lambda params: False  # params -> a model fed one frame per call
    stream_module: str | None = None  # framework module: stream_onnx(model, card, opset), stream_runner(model, card)
    loader: str | None = None  # framework module with load_pretrained(model, source, params), head_classes(source)
    labels_of: Callable[[str], str | None] = lambda source: None  # pretrained source -> a `vidcli.labels` list
    releases: Callable[[str], dict | None] = lambda name: None  # a release name -> a recipe to run it zero-shot
    rules: Callable[[Any, Any], list[tuple[str, str]]] | None = None  # (recipe, params) -> [(key, why)]

    def parse(self, raw: dict[str, Any], where: str = "model.params") -> Any:
        """`model.params` as this family's dataclass: unknown keys, types and ranges checked."""
        from vidcli import recipe as recipe_mod

        params = recipe_mod.from_dict(self.params, raw or {}, where)
        check = getattr(params, "validate", None)
        out = check() if check is not None else None
        return params if out is None else out

    def is_stream(self, params: Any) -> bool:
        return bool(self.stream(params))

    def card(self, rec: Any, labels: list[str], sample_shape: tuple[int, ...]) -> ModelCard:
        """The model card of this family's model for `rec`, taking uint8 samples of `sample_shape` (T, H, W, C)."""
        t, h, w, c = (int(v) for v in sample_shape)
        mean, std = self.norm.per_channel(c)
        volumes = rec.data.format == "volumes"
        sampling = "center" if volumes or rec.data.sampling in ("step", None) else rec.data.sampling
        return ModelCard(labels=list(labels), frames=t, size=(h, w), channels=c, input_kind=rec.data.format,
                         layout=self.layout, scale=self.norm.scale, mean=mean, std=std, sampling=sampling,
                         frame_step=1 if volumes or sampling != "center" else rec.data.frame_step,
                         resize="letterbox" if sampling == "center" else "cover_crop",
                         flip=bool(rec.data.flip), arch=self.name)


def defaults(section: Any) -> dict[str, Any]:
    """A recipe section's default values by key (the values that ask nothing of a backend)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(section):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def changed(section: Any, key: str) -> bool:
    """True when `section.key` differs from its default: a setting the user asked for."""
    value = getattr(section, key)
    default = defaults(type(section)).get(key)
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return list(value) != list(default)
    return value != default


def refuse(problems: list[tuple[str, str]], family: str) -> None:
    """One error naming the first key a family cannot honour (and how many more there are)."""
    if problems:
        key, why = problems[0]
        more = f" (and {len(problems) - 1} more: {', '.join(k for k, _ in problems[1:])})" if len(problems) > 1 else ""
        raise VidcliError(f"{key}: {why} [model.arch '{family}']{more}")
