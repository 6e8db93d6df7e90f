"""A fifth model family that lives entirely in this one file: the card, the params and the PyTorch network.

tests/test_new_family.py adds it with one registry line and runs it through every command, which is the proof
that adding a family needs no edit anywhere above its own module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vidcli.errors import VidcliError
from vidcli.families import IMAGENET, FamilySpec


@dataclass
class ToyParams:
    width: int = 8

    def validate(self) -> ToyParams:
        if self.width < 1:
            raise VidcliError(f"model.params.width: must be at least 1, got {self.width}")
        return self


class ToyNet(nn.Module):
    """A 2D conv per frame, averaged over space and time, then a linear head."""

    def __init__(self, num_classes: int, width: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C, H, W)
        b, t = x.shape[:2]
        features = self.stem(x.flatten(0, 1)).mean(dim=(2, 3)).reshape(b, t, -1).mean(dim=1)
        return self.head(features)


def build(params: ToyParams, num_classes: int, input_shape: tuple[int, ...] | None = None) -> ToyNet:
    return ToyNet(num_classes, params.width)


SPEC = FamilySpec(name="toy", backend="torch", module=__name__, params=ToyParams, layout="NTCHW", norm=IMAGENET,
                  head="head")
