"""TSM (Lin et al. 2019): temporal shift in a 2D CNN, as mit-han-lab/temporal-shift-module: the family card.

The PyTorch network is `vidcli.backends.torch.tsm`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from vidcli.errors import VidcliError
from vidcli.families import IMAGENET, FamilySpec

LAYERS_50 = (3, 4, 6, 3)
SHIFT_PLACES = ("blockres", "block")
CONSENSUS = ("avg",)


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



def rules(rec: Any, params: TsmParams) -> list[tuple[str, str]]:
    if params.num_segments != rec.data.frames:
        return [("model.params.num_segments", f"{params.num_segments} must equal data.frames ({rec.data.frames}): "
                 "each segment gives the model one frame")]
    return []


SPEC = FamilySpec(
    name="tsm",
    backend="torch",
    module="vidcli.backends.torch.tsm",
    params=TsmParams,
    layout="NTCHW",
    norm=IMAGENET,
    head="new_fc",
    sampling="segments",
    pretrained="a TSM release checkpoint (.pth from mit-han-lab/temporal-shift-module)",
    rules=rules,
)
