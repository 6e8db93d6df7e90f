"""ResNet-50 in plain torch whose `state_dict()` names and shapes equal torchvision's `resnet50`.

Torchvision cannot be installed here, yet its ImageNet weights and the TSM releases (which wrap a torchvision
ResNet) use its parameter names, so this module mirrors them exactly (v1.5: stride in the 3x3 conv).
`wrap_conv1` / `wrap_block` let the temporal shift wrap a bottleneck's first conv or the whole block
without this module knowing about time.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vidcli.families.tsm import LAYERS_50  # ResNet-50's blocks per stage

EXPANSION = 4

Wrapper = Callable[[nn.Module], nn.Module]


def init_cnn(module: nn.Module, linear_std: float | None = None) -> None:
    """torchvision's initialisation of its CNN backbones: He-normal convolutions (fan out), unit BatchNorm and,
    with `linear_std`, normal linear layers (MobileNetV2's)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0.0, linear_std)
            nn.init.zeros_(m.bias)


class Bottleneck(nn.Module):
    def __init__(self, inplanes: int, planes: int, stride: int = 1, wrap_conv1: Wrapper | None = None):
        super().__init__()
        width, out = planes, planes * EXPANSION
        conv1: nn.Module = nn.Conv2d(inplanes, width, 1, bias=False)
        self.conv1 = wrap_conv1(conv1) if wrap_conv1 else conv1
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


class ResNet(nn.Module):
    """`num_classes=None` leaves out `fc`, so `forward` returns the pooled (N, 2048) features.

    `width` (64 in ResNet-50) and `layers` shrink it for small data on a CPU; names stay torchvision's."""

    def __init__(
        self,
        layers: tuple[int, ...] = LAYERS_50,
        num_classes: int | None = 1000,
        wrap_conv1: Wrapper | None = None,
        wrap_block: Wrapper | None = None,
        width: int = 64,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = width
        for i, blocks in enumerate(layers):
            planes = width * 2**i
            stage = []
            for j in range(blocks):
                block: nn.Module = Bottleneck(inplanes, planes, 2 if (j == 0 and i > 0) else 1, wrap_conv1)
                stage.append(wrap_block(block) if wrap_block else block)
                inplanes = planes * EXPANSION
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.num_features = inplanes
        self.fc = nn.Linear(inplanes, num_classes) if num_classes else None
        self._init_weights()

    def _init_weights(self) -> None:
        init_cnn(self)

    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in self.stages():
            x = stage(x)
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        return x if self.fc is None else self.fc(x)


def resnet50(
    num_classes: int | None = 1000, wrap_conv1: Wrapper | None = None, wrap_block: Wrapper | None = None
) -> ResNet:
    return ResNet(LAYERS_50, num_classes, wrap_conv1, wrap_block)
