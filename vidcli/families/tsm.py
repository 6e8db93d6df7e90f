"""TSM (Lin et al. 2019): temporal shift in a 2D CNN, as mit-han-lab/temporal-shift-module: the family card.

The PyTorch network is `vidcli.backends.torch.tsm` (ResNet-50 or MobileNetV2; the MobileNetV2 also online,
past-only, as the official real-time demo).
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import PureWindowsPath
from typing import Any

from vidcli.errors import VidcliError
from vidcli.families import IMAGENET, FamilySpec

LAYERS_50 = (3, 4, 6, 3)
SHIFT_PLACES = ("blockres", "block")
CONSENSUS = ("avg",)
BACKBONES = ("resnet50", "mobilenet_v2")
# The release file names' arch token -> model.params.backbone.
RELEASE_ARCHS = {"resnet50": "resnet50", "mobilenetv2": "mobilenet_v2"}
MBV2_NARROWEST = 24  # channels into MobileNetV2's first shifted block: fold = 24 // shift_div must be >= 1


@dataclass
class TsmParams:
    num_segments: int = 8
    shift_div: int = 8
    shift_place: str = "blockres"
    dropout: float = 0.8
    consensus: str = "avg"
    partial_bn: bool = False
    pretrained: str | None = None
    imagenet_init: str | None = None
    is_shift: bool = True
    width: int = 64
    layers: list[int] = dataclasses.field(default_factory=lambda: list(LAYERS_50))
    backbone: str = "resnet50"
    online: bool = False

    def validate(self) -> TsmParams:
        validate(self)
        return self


Params = TsmParams


def _bad(field: str, why: str, value: object) -> VidcliError:
    return VidcliError(f"model.params.{field}: {why}, got {value!r}")


def validate(params: TsmParams) -> None:
    """Raise a VidcliError naming the first bad field, so a recipe typo never reaches torch."""
    p = params

    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if not is_int(p.num_segments) or p.num_segments < 1:
        raise _bad("num_segments", "must be an integer >= 1", p.num_segments)
    if not isinstance(p.is_shift, bool):
        raise _bad("is_shift", "must be true or false", p.is_shift)
    if not is_int(p.width) or p.width < 1:
        raise _bad("width", "must be an integer >= 1", p.width)
    if not isinstance(p.layers, (list, tuple)) or not p.layers or not all(is_int(n) and n >= 1 for n in p.layers):
        raise _bad("layers", "must be a list of block counts >= 1, e.g. [3, 4, 6, 3]", p.layers)
    if p.backbone not in BACKBONES:
        raise _bad("backbone", f"must be one of {', '.join(BACKBONES)}", p.backbone)
    if not isinstance(p.online, bool):
        raise _bad("online", "must be true or false", p.online)
    if p.online and p.backbone != "mobilenet_v2":
        raise _bad("online", "the online (past-only) shift exists for backbone mobilenet_v2 only, as in the "
                   f"official real-time demo; backbone is {p.backbone!r}", p.online)
    if p.online and not p.is_shift:
        raise _bad("is_shift", "online: true streams through the shift's buffers; it needs is_shift: true",
                   p.is_shift)
    if p.backbone == "mobilenet_v2":
        if p.width != 64:
            raise _bad("width", "shapes the ResNet only; leave it out with backbone mobilenet_v2", p.width)
        if list(p.layers) != list(LAYERS_50):
            raise _bad("layers", "shape the ResNet only; leave them out with backbone mobilenet_v2", p.layers)
        if p.shift_place == "block":
            raise _bad("shift_place", "backbone mobilenet_v2 shifts inside the inverted residual block (before "
                       "its first 1x1 conv), as the reference; only blockres applies", p.shift_place)
        if p.is_shift and is_int(p.shift_div) and MBV2_NARROWEST // max(p.shift_div, 1) < 1:
            raise _bad("shift_div", f"must be <= {MBV2_NARROWEST} with backbone mobilenet_v2 (its narrowest "
                       f"shifted input has {MBV2_NARROWEST} channels)", p.shift_div)
    if p.is_shift and is_int(p.shift_div) and p.width // max(p.shift_div, 1) < 1:
        raise _bad("width", f"must be >= shift_div ({p.shift_div}) so a shifted fold has a channel", p.width)
    if not is_int(p.shift_div) or not 2 <= p.shift_div <= 64:
        raise _bad("shift_div", "must be an integer in [2, 64] (64: the narrowest shifted input)", p.shift_div)
    if p.shift_place not in SHIFT_PLACES:
        raise _bad("shift_place", f"must be one of {', '.join(SHIFT_PLACES)}", p.shift_place)
    if isinstance(p.dropout, bool) or not isinstance(p.dropout, (int, float)) or not 0.0 <= p.dropout < 1.0:
        raise _bad("dropout", "must be a number in [0, 1)", p.dropout)
    if isinstance(p.dropout, float) and math.isnan(p.dropout):
        raise _bad("dropout", "must be a number in [0, 1)", p.dropout)
    if p.consensus not in CONSENSUS:
        raise _bad("consensus", f"must be one of {', '.join(CONSENSUS)}", p.consensus)
    if not isinstance(p.partial_bn, bool):
        raise _bad("partial_bn", "must be true or false", p.partial_bn)
    for field in ("pretrained", "imagenet_init"):
        value = getattr(p, field)
        if value is not None and (not isinstance(value, str) or not value):
            raise _bad(field, "must be a file path or null", value)
    if p.pretrained and p.imagenet_init:
        raise VidcliError(
            "model.params.pretrained and model.params.imagenet_init are exclusive: a TSM checkpoint already sets "
            "every backbone weight"
        )


def parse_release_name(name: str) -> dict[str, Any] | None:
    """What an official release's file name says about its network, as the official test_models.py reads it
    (shift, shift_div, shift_place from `shift<div>_<place>`, arch the third token after `TSM_`), plus the
    segments, `dense`, `nl` (non-local) and `tpool` tokens. None: not a release name. Only the base name is
    read (upstream splits the whole path, which a folder name can fool)."""
    base = PureWindowsPath(str(name)).name  # splits on both / and \
    stem = re.sub(r"(\.(pth|pt|tar|ckpt))+$", "", base)
    tokens = stem.split("_")
    if len(tokens) < 5 or tokens[0] not in ("TSM", "TSN") or not all(tokens[1:4]):
        return None
    rest = tokens[4:]
    segments = [int(m.group(1)) for t in rest if (m := re.fullmatch(r"segment(\d+)", t))]
    if len(segments) != 1:
        return None
    out: dict[str, Any] = {
        "prefix": tokens[0], "dataset": tokens[1], "modality": tokens[2], "arch": tokens[3],
        "shift": False, "shift_div": None, "shift_place": None, "segments": segments[0],
        "dense": "dense" in rest, "non_local": "nl" in rest, "tpool": "tpool" in rest,
    }
    for i, token in enumerate(rest):
        found = re.fullmatch(r"shift(\d+)", token)
        if found:
            if i + 1 >= len(rest):
                return None
            out.update(shift=True, shift_div=int(found.group(1)), shift_place=rest[i + 1])
            break
    return out


def _release_problems(name: str, key: str, params: TsmParams) -> list[tuple[str, str]]:
    """The recipe keys a release file's name contradicts, each with both values."""
    r = parse_release_name(name)
    if r is None:
        return []
    base = PureWindowsPath(str(name)).name
    said = f"but {key} {base} says"
    problems: list[tuple[str, str]] = []
    backbone = RELEASE_ARCHS.get(r["arch"])
    if backbone is None:
        problems.append((key, f"{base} is a {r['arch']} release; vidcli's TSM builds "
                              f"{' or '.join(RELEASE_ARCHS)}"))
    elif backbone != params.backbone:
        problems.append(("model.params.backbone", f"{params.backbone!r}, {said} {r['arch']} "
                                                  f"(backbone: {backbone})"))
    if r["modality"] != "RGB":
        problems.append((key, f"{base} is a {r['modality']} model; vidcli's TSM reads RGB frames"))
    for token, what in (("non_local", "non-local blocks (nl)"), ("tpool", "temporal pooling (tpool)")):
        if r[token]:
            problems.append((key, f"{base} has {what}, which vidcli's TSM does not build"))
    if r["segments"] != params.num_segments:
        problems.append(("model.params.num_segments", f"{params.num_segments}, {said} segment{r['segments']} "
                                                      f"(num_segments: {r['segments']})"))
    if r["shift"] != params.is_shift:
        file_says = f"shift{r['shift_div']}" if r["shift"] else "no shift"
        problems.append(("model.params.is_shift", f"{str(params.is_shift).lower()}, {said} {file_says} "
                                                  f"(is_shift: {str(r['shift']).lower()})"))
    if r["shift"] and params.is_shift:
        if r["shift_div"] != params.shift_div:
            problems.append(("model.params.shift_div", f"{params.shift_div}, {said} shift{r['shift_div']} "
                                                       f"(shift_div: {r['shift_div']})"))
        if r["shift_place"] != params.shift_place:
            problems.append(("model.params.shift_place", f"{params.shift_place!r}, {said} {r['shift_place']} "
                                                         f"(shift_place: {r['shift_place']})"))
    if params.online:
        problems.append(("model.params.online", f"true, {said} an offline release: its shift is "
                                                "bi-directional, the online one past-only; the shift differs"))
    return problems


def rules(rec: Any, params: TsmParams) -> list[tuple[str, str]]:
    problems: list[tuple[str, str]] = []
    if params.num_segments != rec.data.frames:
        problems.append(("model.params.num_segments", f"{params.num_segments} must equal data.frames "
                         f"({rec.data.frames}): each segment gives the model one frame"))
    outer = getattr(rec.model, "pretrained", None)
    path, key = (outer, "model.pretrained") if outer else (params.pretrained, "model.params.pretrained")
    if path:
        problems.extend(_release_problems(path, key, params))
    return problems


SPEC = FamilySpec(
    name="tsm",
    backend="torch",
    module="vidcli.backends.torch.tsm",
    params=TsmParams,
    layout="N(TC)HW",  # the reference TSN.forward input: (N, T*3, H, W), frame-major
    norm=IMAGENET,
    head="new_fc",
    sampling="segments",
    pretrained="a TSM release checkpoint (.pth from mit-han-lab/temporal-shift-module)",
    rules=rules,
    stream=lambda params: params.online,
    stream_module="vidcli.backends.torch.tsm_online",
    loader="vidcli.backends.torch.tsm_import",
    labels_of=lambda source: "kinetics400" if (parse_release_name(source) or {}).get("dataset") == "kinetics" else None,
)
