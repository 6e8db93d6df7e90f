"""MoViNet A0-A5 (Kondratyuk et al. 2021), base and stream: the family card and its `model.params`.

The block table and every option the reference's builder takes live here, framework-free, so a recipe is
checked before TensorFlow loads; the Keras network is `vidcli.backends.keras.movinet`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from vidcli.errors import VidcliError
from vidcli.families import UNIT, FamilySpec

ACTIVATIONS = ("swish", "hard_swish", "relu", "relu6", "linear")
GATING_ACTIVATIONS = ("sigmoid", "hard_sigmoid")

MODEL_IDS = ("a0", "a1", "a2", "a3", "a4", "a5")
CONV_TYPES = ("3d", "2plus1d", "3d_2plus1d")
SE_TYPES = ("3d", "2d", "2plus3d", "none")
HEAD_FILTERS = 2048

K13, K15, K33, K53 = (1, 3, 3), (1, 5, 5), (3, 3, 3), (5, 3, 3)
S11, S12 = (1, 1, 1), (1, 2, 2)

# Per model: stem filters, then (base_filters, [(expand_filters, kernel, strides), ...]) per block, then
# head projection filters. Stems are all 1x3x3 with stride 1x2x2. From the paper / Model Garden.
# fmt: off
ARCHS: dict[str, tuple[int, list[tuple[int, list[tuple[int, tuple, tuple]]]], int]] = {
    "a0": (8, [
        (8, [(24, K15, S12)]),
        (32, [(80, K33, S12), (80, K33, S11), (80, K33, S11)]),
        (56, [(184, K53, S12), (112, K33, S11), (184, K33, S11)]),
        (56, [(184, K53, S11), (184, K33, S11), (184, K33, S11), (184, K33, S11)]),
        (104, [(384, K53, S12), (280, K15, S11), (280, K15, S11), (344, K15, S11)]),
    ], 480),
    "a1": (16, [
        (16, [(40, K15, S12), (40, K33, S11)]),
        (40, [(96, K33, S12), (120, K33, S11), (96, K33, S11), (96, K33, S11)]),
        (64, [(216, K53, S12), (128, K33, S11), (216, K33, S11), (168, K33, S11), (216, K33, S11)]),
        (64, [(216, K53, S11), (216, K33, S11), (216, K33, S11), (128, K33, S11), (128, K15, S11),
              (216, K33, S11)]),
        (136, [(456, K53, S12), (360, K15, S11), (360, K15, S11), (360, K15, S11), (456, K15, S11),
               (456, K33, S11), (544, K13, S11)]),
    ], 600),
    "a2": (16, [
        (16, [(40, K15, S12), (40, K33, S11), (64, K33, S11)]),
        (40, [(96, K33, S12), (120, K33, S11), (96, K33, S11), (96, K33, S11), (120, K33, S11)]),
        (72, [(240, K53, S12), (160, K33, S11), (240, K33, S11), (192, K33, S11), (240, K33, S11)]),
        (72, [(240, K53, S11), (240, K33, S11), (240, K33, S11), (240, K33, S11), (144, K15, S11),
              (240, K33, S11)]),
        (144, [(480, K53, S12), (384, K15, S11), (384, K15, S11), (480, K15, S11), (480, K15, S11),
               (480, K33, S11), (576, K13, S11)]),
    ], 640),
    "a3": (16, [
        (16, [(40, K15, S12), (40, K33, S11), (64, K33, S11), (40, K33, S11)]),
        (48, [(112, K33, S12), (144, K33, S11), (112, K33, S11), (112, K15, S11), (144, K33, S11),
              (144, K33, S11)]),
        (80, [(240, K53, S12), (152, K33, S11), (240, K33, S11), (192, K33, S11), (240, K33, S11)]),
        (88, [(264, K53, S11), (264, K33, S11), (264, K33, S11), (264, K33, S11), (160, K15, S11),
              (264, K33, S11), (264, K33, S11), (264, K33, S11)]),
        (168, [(560, K53, S12), (448, K15, S11), (448, K15, S11), (560, K15, S11), (560, K15, S11),
               (560, K33, S11), (448, K15, S11), (448, K15, S11), (560, K33, S11), (672, K13, S11)]),
    ], 744),
    "a4": (24, [
        (24, [(64, K15, S12), (64, K33, S11), (96, K33, S11), (64, K33, S11), (96, K33, S11),
              (64, K33, S11)]),
        (56, [(168, K33, S12), (168, K33, S11), (136, K33, S11), (136, K33, S11), (168, K33, S11),
              (168, K33, S11), (168, K33, S11), (136, K15, S11), (136, K33, S11)]),
        (96, [(320, K53, S12), (160, K33, S11), (320, K33, S11), (192, K33, S11), (320, K33, S11),
              (160, K33, S11), (320, K33, S11), (256, K33, S11), (320, K33, S11)]),
        (96, [(320, K53, S11), (320, K33, S11), (320, K33, S11), (320, K33, S11), (192, K15, S11),
              (320, K33, S11), (320, K33, S11), (192, K33, S11), (320, K33, S11), (320, K33, S11)]),
        (192, [(640, K53, S12), (512, K15, S11), (512, K15, S11), (640, K15, S11), (640, K15, S11),
               (640, K33, S11), (512, K15, S11), (512, K15, S11), (640, K15, S11), (768, K15, S11),
               (640, K15, S11), (640, K33, S11), (768, K33, S11)]),
    ], 856),
    "a5": (24, [
        (24, [(64, K15, S12), (64, K15, S11), (96, K33, S11), (64, K33, S11), (96, K33, S11),
              (64, K33, S11)]),
        (64, [(192, K53, S12), (152, K33, S11), (152, K33, S11), (152, K33, S11), (192, K33, S11),
              (192, K33, S11), (192, K33, S11), (152, K33, S11), (152, K33, S11), (192, K33, S11),
              (192, K33, S11)]),
        (112, [(376, K53, S12), (224, K33, S11), (376, K33, S11), (376, K33, S11), (296, K33, S11),
               (376, K33, S11), (224, K33, S11), (376, K33, S11), (376, K33, S11), (296, K33, S11),
               (376, K33, S11), (376, K33, S11), (376, K33, S11)]),
        (120, [(376, K53, S11), (376, K33, S11), (376, K33, S11), (376, K33, S11), (224, K15, S11),
               (376, K33, S11), (376, K33, S11), (224, K33, S11), (376, K33, S11), (376, K33, S11),
               (376, K33, S11)]),
        (224, [(744, K53, S12), (744, K33, S11), (600, K15, S11), (600, K15, S11), (744, K15, S11),
               (744, K15, S11), (744, K33, S11), (896, K15, S11), (600, K15, S11), (600, K15, S11),
               (896, K15, S11), (744, K15, S11), (744, K33, S11), (896, K15, S11), (600, K15, S11),
               (600, K15, S11), (744, K15, S11), (744, K33, S11)]),
    ], 992),
}
# fmt: on


@dataclasses.dataclass
class MovinetParams:
    """The `model.params` of a MoViNet recipe; `None` fields take the base/stream default of the reference."""

    model_id: str = "a0"
    causal: bool = False
    conv_type: str | None = None
    se_type: str | None = None
    activation: str | None = None
    gating_activation: str | None = None
    use_positional_encoding: bool | None = None
    dropout: float = 0.5
    freeze_backbone: bool = False
    trainable_blocks: int | None = None
    pretrained: str | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str = "model.params") -> MovinetParams:
        """Build from a recipe mapping; unknown keys are an error naming the key."""
        names = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in names:
                raise VidcliError(f"{where}.{key}: unknown MoViNet parameter (known: {', '.join(sorted(names))})")
        return cls(**dict(values)).resolved(where)

    def resolved(self, where: str = "model.params") -> MovinetParams:
        """A copy with every default filled in and every value checked."""

        def bad(field: str, expected: str, value: Any) -> VidcliError:
            return VidcliError(f"{where}.{field}: expected {expected}, got {value!r}")

        if self.model_id not in MODEL_IDS:
            raise bad("model_id", "one of a0..a5", self.model_id)
        for field in ("causal", "freeze_backbone"):
            if not isinstance(getattr(self, field), bool):
                raise bad(field, "true or false", getattr(self, field))
        stream = self.causal
        out = dataclasses.replace(
            self,
            conv_type=self.conv_type if self.conv_type is not None else ("2plus1d" if stream else "3d"),
            se_type=self.se_type if self.se_type is not None else ("2plus3d" if stream else "3d"),
            activation=self.activation if self.activation is not None else ("hard_swish" if stream else "swish"),
            gating_activation=(
                self.gating_activation
                if self.gating_activation is not None
                else ("hard_sigmoid" if stream else "sigmoid")
            ),
            use_positional_encoding=(
                self.use_positional_encoding
                if self.use_positional_encoding is not None
                else stream and self.model_id in ("a3", "a4", "a5")
            ),
        )
        checks = (
            ("conv_type", CONV_TYPES),
            ("se_type", SE_TYPES),
            ("activation", ACTIVATIONS),
            ("gating_activation", GATING_ACTIVATIONS),
        )
        for field, allowed in checks:
            if getattr(out, field) not in allowed:
                raise bad(field, f"one of {', '.join(allowed)}", getattr(out, field))
        if not isinstance(out.use_positional_encoding, bool):
            raise bad("use_positional_encoding", "true or false", out.use_positional_encoding)
        if out.use_positional_encoding and not out.causal:
            raise bad("use_positional_encoding", "false for a base (causal: false) model", True)
        if isinstance(out.dropout, bool) or not isinstance(out.dropout, (int, float)) or not 0 <= out.dropout < 1:
            raise bad("dropout", "a number in [0, 1)", out.dropout)
        n = out.trainable_blocks
        if n is not None:
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(ARCHS[out.model_id][1]):
                raise bad("trainable_blocks", f"an integer in [0, {len(ARCHS[out.model_id][1])}]", n)
            if not out.freeze_backbone:
                raise bad("trainable_blocks", "unset unless freeze_backbone is true (all blocks train then)", n)
        if out.pretrained is not None and not isinstance(out.pretrained, str):
            raise bad("pretrained", "a name, URL or path", out.pretrained)
        return out

    def validate(self) -> MovinetParams:
        return self.resolved()


Params = MovinetParams
RELEASE = re.compile(r"movinet_(a[0-5])_(base|stream)")  # the Kinetics-600 releases: names, URLs, tarballs


def release_recipe(name: str) -> dict | None:
    """`predict -m movinet_a0_base`: the release run zero-shot on Kinetics-600's classes, at the resolution and
    frame rate of its training (172x172 for A0-A2, more for A3-A5; 16 frames, every 6th of a 30 fps video)."""
    m = RELEASE.fullmatch(name)
    if m is None:
        return None
    size = {"a3": 256, "a4": 290, "a5": 320}.get(m.group(1), 172)
    return {"name": name, "description": f"{name} zero-shot (Kinetics-600)",
            "data": {"root": f"(none: {name} runs zero-shot)", "frames": 16, "frame_step": 6, "size": [size, size]},
            "model": {"arch": "movinet", "pretrained": name,
                      "params": {"model_id": m.group(1), "causal": m.group(2) == "stream"}}}


SPEC = FamilySpec(
    name="movinet",
    backend="keras",
    module="vidcli.backends.keras.movinet",
    params=MovinetParams,
    norm=UNIT,
    head="classifier_head",
    pretrained="a MoViNet release name (e.g. movinet_a0_base), its URL, .tar.gz or checkpoint folder",
    stream=lambda params: params.causal,
    stream_module="vidcli.backends.keras.movinet_stream",
    loader="vidcli.backends.keras.movinet_import",
    labels_of=lambda source: "kinetics600" if RELEASE.search(str(source)) else None,
    releases=release_recipe,
)
