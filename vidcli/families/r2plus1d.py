"""(2+1)D ResNet (Tran et al. 2017), as the TensorFlow video tutorial builds it: the family card.

The Keras network is `vidcli.backends.keras.r2plus1d`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vidcli.errors import VidcliError
from vidcli.families import UNIT, FamilySpec

NORMS = ("layer", "batch")


@dataclass
class R2Plus1DParams:
    filters: list[int] = field(default_factory=lambda: [16, 32, 64, 128])
    stem_kernel: tuple[int, int, int] = (3, 7, 7)
    kernel: tuple[int, int, int] = (3, 3, 3)
    dropout: float = 0.0
    norm: str = "layer"  # "layer" as the tutorial; "batch" learns small data sets much faster

    def validate(self) -> R2Plus1DParams:
        if self.norm not in NORMS:
            raise VidcliError(f"model.params.norm: expected 'layer' or 'batch', got {self.norm!r}")
        if not self.filters or any(f < 1 for f in self.filters):
            raise VidcliError(f"model.params.filters: needs at least one stage of >= 1 filters, got {self.filters}")
        for name in ("stem_kernel", "kernel"):
            if any(k < 1 for k in getattr(self, name)):
                raise VidcliError(f"model.params.{name}: sizes must be >= 1, got {list(getattr(self, name))}")
        if not 0 <= self.dropout < 1:
            raise VidcliError(f"model.params.dropout: must be in [0, 1), got {self.dropout}")
        return self


def rules(rec: Any, params: R2Plus1DParams) -> list[tuple[str, str]]:
    stages = len(params.filters)
    h, w = rec.data.size
    if rec.data.format != "volumes" and (h % 2**stages or w % 2**stages):
        return [("data.size", f"{h}x{w} must be divisible by {2**stages} for {stages} stages of downsampling")]
    return []


SPEC = FamilySpec(
    name="r2plus1d",
    backend="keras",
    module="vidcli.backends.keras.r2plus1d",
    params=R2Plus1DParams,
    norm=UNIT,
    head="logits",
    formats=("videos", "frames", "volumes"),
    rules=rules,
)
