"""TSM (Lin et al. 2019): a 2D CNN (ResNet-50 or MobileNetV2) that mixes time by shifting channels between
neighbouring frames; the MobileNetV2 also online, shifting from the past only (see `tsm_online`).

Module names follow mit-han-lab/temporal-shift-module's `TSN` (`base_model`, `new_fc`, `...conv1.net`) so
the released checkpoints load by name; see `tsm_import`.
"""

from __future__ import annotations

import torch
from torch import nn

from vidcli.backends.torch.mobilenet_v2 import MobileNetV2
from vidcli.backends.torch.resnet import LAYERS_50, ResNet
from vidcli.errors import VidcliError
from vidcli.families.tsm import BACKBONES, CONSENSUS, SHIFT_PLACES, TsmParams, validate  # noqa: F401


def temporal_shift(x: torch.Tensor, n_segment: int, fold_div: int = 8) -> torch.Tensor:
    """Shift 1/fold_div of the channels one frame back in time and 1/fold_div forward, zero-filling the ends.

    Built from slices and `cat` rather than in-place writes so autograd and ONNX export see a pure function.
    """
    nt, c, h, w = x.shape
    x = x.reshape(nt // n_segment, n_segment, c, h, w)
    fold = c // fold_div
    pad = x.new_zeros(x.shape[0], 1, fold, h, w)
    from_next = torch.cat([x[:, 1:, :fold], pad], dim=1)
    from_prev = torch.cat([pad, x[:, :-1, fold : 2 * fold]], dim=1)
    out = torch.cat([from_next, from_prev, x[:, :, 2 * fold :]], dim=2)
    return out.reshape(nt, c, h, w)


def causal_shift(x: torch.Tensor, n_segment: int, fold_div: int = 8) -> torch.Tensor:
    """The online shift over whole clips: the first 1/fold_div of the channels come from the previous frame
    (zeros at the first), nothing from the future. Frame by frame this is the online demo's buffer."""
    nt, c, h, w = x.shape
    x = x.reshape(nt // n_segment, n_segment, c, h, w)
    fold = c // fold_div
    from_prev = torch.cat([x.new_zeros(x.shape[0], 1, fold, h, w), x[:, :-1, :fold]], dim=1)
    return torch.cat([from_prev, x[:, :, fold:]], dim=2).reshape(nt, c, h, w)


class TemporalShift(nn.Module):
    """Shift, then run `net`; holding `net` as a child keeps its parameters under `<name>.net.*` as upstream."""

    def __init__(self, net: nn.Module, n_segment: int = 8, fold_div: int = 8, causal: bool = False):
        super().__init__()
        self.net = net
        self.n_segment = n_segment
        self.fold_div = fold_div
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shift = causal_shift if self.causal else temporal_shift
        return self.net(shift(x, self.n_segment, self.fold_div))

    def extra_repr(self) -> str:
        return f"n_segment={self.n_segment}, fold_div={self.fold_div}, causal={self.causal}"


class TSM(nn.Module):
    """Backbone per frame, dropout, `new_fc` per frame, then the average over segments.

    Consensus comes after the head as in the reference, so logits (not features) are averaged. `online`
    (MobileNetV2 only) shifts from the past only, so a clip's per-frame logits equal the stream's.
    """

    def __init__(
        self,
        num_classes: int,
        num_segments: int = 8,
        shift_div: int = 8,
        shift_place: str = "blockres",
        dropout: float = 0.8,
        consensus: str = "avg",
        partial_bn: bool = False,
        is_shift: bool = True,
        width: int = 64,
        layers: tuple[int, ...] = LAYERS_50,
        backbone: str = "resnet50",
        online: bool = False,
    ):
        super().__init__()
        if shift_place not in SHIFT_PLACES:
            raise ValueError(f"shift_place must be one of {SHIFT_PLACES}, got {shift_place!r}")
        if consensus not in CONSENSUS:
            raise ValueError(f"consensus must be one of {CONSENSUS}, got {consensus!r}")
        if backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
        mbv2 = backbone == "mobilenet_v2"
        if online and not (mbv2 and is_shift):
            raise ValueError("online needs backbone mobilenet_v2 with the shift")
        if mbv2 and shift_place != "blockres":
            raise ValueError("mobilenet_v2 shifts inside the block (blockres) only")
        self.num_classes = num_classes
        self.num_segments = num_segments
        self.shift_div = shift_div
        self.shift_place = shift_place
        self.consensus = consensus
        self.is_shift = is_shift
        self.backbone = backbone
        self.online = online

        def shift(m: nn.Module) -> nn.Module:
            return TemporalShift(m, num_segments, shift_div, causal=online)

        # is_shift=False is the same network as a plain TSN: the control that shows what the shift adds.
        self.base_model: ResNet | MobileNetV2
        if mbv2:
            self.base_model = MobileNetV2(None, wrap_shift=shift if is_shift else None)
        else:
            wrap = {"wrap_block" if shift_place == "block" else "wrap_conv1": shift} if is_shift else {}
            self.base_model = ResNet(tuple(layers), None, width=width, **wrap)
        self.dropout = nn.Dropout(dropout)
        self.new_fc = nn.Linear(self.base_model.num_features, num_classes)
        self.reset_head()
        self.partial_bn = partial_bn
        if partial_bn:
            self.train(self.training)

    def reset_head(self) -> None:
        """The reference's head init (N(0, 0.001), zero bias): small logits so fine-tuning starts gently."""
        nn.init.normal_(self.new_fc.weight, 0.0, 0.001)
        nn.init.zeros_(self.new_fc.bias)

    def _later_bns(self) -> list[nn.BatchNorm2d]:
        return [m for m in self.base_model.modules() if isinstance(m, nn.BatchNorm2d)][1:]

    def set_partial_bn(self, enable: bool) -> None:
        """Switching it off hands the frozen BatchNorm affine parameters back to the optimizer."""
        self.partial_bn = enable
        if not enable:
            for bn in self._later_bns():
                bn.weight.requires_grad_(True)
                bn.bias.requires_grad_(True)
        self.train(self.training)

    def train(self, mode: bool = True) -> TSM:
        """With partial BN, every BatchNorm but the first stays in eval mode and frozen while training.

        Small video batches give poor batch statistics; keeping the pretrained ones is how upstream fine-tunes.
        """
        super().train(mode)
        if self.partial_bn and mode:
            for bn in self._later_bns():
                bn.eval()
                bn.weight.requires_grad_(False)
                bn.bias.requires_grad_(False)
        return self

    def _fits(self, x: torch.Tensor) -> bool:
        t = self.num_segments
        return (x.dim() == 5 and tuple(x.shape[1:3]) == (t, 3)) or (x.dim() == 4 and x.shape[1] == 3 * t)

    def _frames(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) or upstream's (B, T*3, H, W) -> (B*T, 3, H, W)."""
        t = self.num_segments
        # Under ONNX tracing sizes are tensors; the check would only be baked in as a constant.
        if not torch.jit.is_tracing() and not self._fits(x):
            raise VidcliError(
                f"TSM expects input (B, {t}, 3, H, W) or (B, {3 * t}, H, W), got {tuple(x.shape)}; "
                "model.params.num_segments must equal the frames per clip"
            )
        return x.reshape(-1, 3, x.shape[-2], x.shape[-1])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame pooled backbone features (B*T, 2048 or 1280), before dropout and head."""
        return self.base_model(self._frames(x))

    def frame_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Per-frame logits (B, T, classes) before consensus; online, frame t's equal the stream's at t."""
        return self.new_fc(self.dropout(self.features(x))).reshape(-1, self.num_segments, self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.frame_logits(x).mean(dim=1)


def build(params: TsmParams, num_classes: int, input_shape: tuple[int, ...] | None = None) -> TSM:
    """A TSM from recipe params with fresh weights (`tsm_import.load_pretrained` fills them from `pretrained` or
    `imagenet_init`). Any frame size fits: `input_shape` is accepted for the family contract and not needed."""
    validate(params)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise VidcliError(f"num_classes must be an integer >= 1, got {num_classes!r}")
    model = TSM(
        num_classes,
        num_segments=params.num_segments,
        shift_div=params.shift_div,
        shift_place=params.shift_place,
        dropout=float(params.dropout),
        consensus=params.consensus,
        partial_bn=params.partial_bn,
        is_shift=params.is_shift,
        width=params.width,
        layers=tuple(params.layers),
        backbone=params.backbone,
        online=params.online,
    )
    return model
