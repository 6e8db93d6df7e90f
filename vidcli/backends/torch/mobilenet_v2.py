"""MobileNetV2 (width 1.0) in plain torch whose `state_dict()` names and shapes equal the TSM repository's
`archs/mobilenet_v2.py`, so its release checkpoints, its online demo file and the matching ImageNet weights
load by name. `wrap_shift` lets the temporal shift wrap the first 1x1 conv of the expand-6 residual blocks
without this module knowing about time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vidcli.backends.torch.resnet import init_cnn

# expansion t, output channels c, repeats n, first stride s
SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
STEM = 32
LAST = 1280

Wrapper = Callable[[nn.Module], nn.Module]


def _conv_bn(inp: int, out: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(out), nn.ReLU6(inplace=True)
    )


class InvertedResidual(nn.Module):
    """1x1 expand (absent at t=1), 3x3 depthwise, 1x1 linear projection; identity shortcut when shapes allow."""

    def __init__(self, inp: int, out: int, stride: int, expand: int):
        super().__init__()
        hidden = inp * expand
        self.use_res_connect = stride == 1 and inp == out
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out, 1, bias=False),
            nn.BatchNorm2d(out),
        ]
        self.conv = nn.Sequential(*layers)
        # The reference shifts exactly these blocks: expanded and residual.
        self.shiftable = expand != 1 and self.use_res_connect

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return x + y if self.use_res_connect else y


def block_inputs(height: int, width: int) -> list[tuple[int, int, int, int]]:
    """(features index, channels, height, width) of each block's input for a height x width frame.

    3x3 stride-2 convs pad by 1, so a side of n becomes (n - 1) // 2 + 1 (7 -> 4)."""
    h, w = (height - 1) // 2 + 1, (width - 1) // 2 + 1
    channels, out, index = STEM, [], 1
    for _, c, n, s in SETTING:
        for i in range(n):
            out.append((index, channels, h, w))
            if i == 0 and s == 2:
                h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
            channels, index = c, index + 1
    return out


def shift_block_indices() -> list[int]:
    """The `features` indices whose block the shift wraps: expanded and residual (3, 5, 6, 8, 9, 10, 12, 13,
    15, 16), as the reference picks them."""
    out, inp, index = [], STEM, 1
    for t, c, n, s in SETTING:
        for i in range(n):
            if t != 1 and (s == 1 or i > 0) and inp == c:
                out.append(index)
            inp, index = c, index + 1
    return out


class MobileNetV2(nn.Module):
    """`num_classes=None` leaves out `classifier`, so `forward` returns the pooled (N, 1280) features."""

    def __init__(self, num_classes: int | None = 1000, wrap_shift: Wrapper | None = None):
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(3, STEM, 3, 2)]
        inp = STEM
        for t, c, n, s in SETTING:
            for i in range(n):
                block = InvertedResidual(inp, c, s if i == 0 else 1, t)
                if wrap_shift is not None and block.shiftable:
                    block.conv[0] = wrap_shift(block.conv[0])
                layers.append(block)
                inp = c
        layers.append(_conv_bn(inp, LAST, 1, 1))
        self.features = nn.Sequential(*layers)
        self.num_features = LAST
        self.classifier = nn.Linear(LAST, num_classes) if num_classes else None
        self._init_weights()

    def _init_weights(self) -> None:
        init_cnn(self, linear_std=0.01)

    def shift_blocks(self) -> list[int]:
        """Indices into `features` of the blocks the shift wraps (3, 5, 6, 8, 9, 10, 12, 13, 15, 16)."""
        return [i for i, m in enumerate(self.features) if isinstance(m, InvertedResidual) and m.shiftable]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(3).mean(2)  # the reference's order of means (W, then H)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return x if self.classifier is None else self.classifier(x)
