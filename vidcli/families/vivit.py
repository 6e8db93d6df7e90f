"""ViViT (Arnab et al. 2021), spatio-temporal attention, as the Keras example on OrganMNIST3D: the family card.

The Keras network is `vidcli.backends.keras.vivit`.
"""

from __future__ import annotations

from dataclasses import dataclass

from vidcli.errors import VidcliError
from vidcli.families import UNIT, FamilySpec


@dataclass
class VivitParams:
    patch_size: tuple[int, int, int] = (8, 8, 8)
    projection_dim: int = 128
    num_heads: int = 8
    num_layers: int = 8
    dropout: float = 0.1
    layer_norm_eps: float = 1e-6

    def validate(self) -> VivitParams:
        """What can be checked without the input shape (the patch against the input is checked at build)."""
        if any(p < 1 for p in self.patch_size):
            raise VidcliError(f"model.params.patch_size: expected three positive integers, got {list(self.patch_size)}")
        for name in ("projection_dim", "num_heads", "num_layers"):
            if getattr(self, name) < 1:
                raise VidcliError(f"model.params.{name}: must be at least 1, got {getattr(self, name)}")
        if self.projection_dim % self.num_heads:
            raise VidcliError(f"model.params.projection_dim: {self.projection_dim} is not divisible by "
                              f"num_heads={self.num_heads}")
        if not 0 <= self.dropout < 1:
            raise VidcliError(f"model.params.dropout: must be in [0, 1), got {self.dropout}")
        if not self.layer_norm_eps > 0:
            raise VidcliError(f"model.params.layer_norm_eps: must be positive, got {self.layer_norm_eps}")
        return self


SPEC = FamilySpec(
    name="vivit",
    backend="keras",
    module="vidcli.backends.keras.vivit",
    params=VivitParams,
    norm=UNIT,
    head="logits",
    formats=("videos", "frames", "volumes"),
)
