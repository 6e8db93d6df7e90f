"""DataLoader pipeline over a framework-free `Source`.

Decoding, sampling and cropping happen in the `Source` (numpy/OpenCV), so training, evaluation and the
ONNX `predict` path cut the same frames. A clip that fails to load during training comes back as zeros
with weight 0 and its error message, so every epoch has the same steps and the trainer, not a worker,
counts failures. The order and augmentation seeds of an epoch depend only on (seed, epoch): a resumed run
sees exactly the data an uninterrupted one would have seen, with any number of workers.

Under torchrun each process takes its shard of that same order, cut as `DistributedSampler` cuts it
(see `shard`), so rank r's k-th batch of batch_size / world clips is its part of the single-process
run's k-th batch.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vidcli.datasets.source import Source, epoch_plan
from vidcli.errors import VidcliError


def shard(n: int, rank: int, world: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank `rank`'s positions in an epoch's order of `n` clips, and which of them are real.

    As `DistributedSampler`: the order is padded to a multiple of `world` by wrapping round to its start,
    then every world-th position from `rank` is taken, so every rank does the same number of steps.
    Padding repeats real clips (they load and normalise like any other); the trainer gives them weight 0.
    """
    total = -(-n // world) * world
    positions = np.arange(rank, total, world, dtype=np.int64)
    return positions % max(n, 1), positions < n


def to_input(clips: torch.Tensor, card, channels_last: bool = False) -> torch.Tensor:
    """uint8 (..., T, H, W, C) -> float32 (..., T, C, H, W), normalised as the model card says (the same values
    `ModelCard.preprocess` gives; the model takes this layout as well as the card's flattened one).

    `channels_last` keeps the channels innermost in memory, so a 2D CNN's (B*T, C, H, W) view of the clip is
    already a `torch.channels_last` tensor.
    """
    x = clips.float().mul_(card.scale)
    mean = torch.tensor(card.mean, dtype=x.dtype, device=x.device)
    std = torch.tensor(card.std, dtype=x.dtype, device=x.device)
    x = ((x - mean) / std).movedim(-1, -3)
    return x if channels_last else x.contiguous()


class TrainClips(Dataset):
    """Items (clip uint8, label, ok, index, error, real); `set_epoch` before each epoch's loader.

    `real` is False for the padding of a rank's shard (see `shard`); with one process every item is real.
    """

    def __init__(self, source: Source, seed: int, rank: int = 0, world: int = 1):
        self.source, self.seed = source, seed
        self.order, self.seeds = epoch_plan(len(source), seed, 0)
        self.positions, self.real = shard(len(source), rank, world)

    def set_epoch(self, epoch: int) -> None:
        self.order, self.seeds = epoch_plan(len(self.source), self.seed, epoch)

    def indices(self) -> np.ndarray:
        """The clip indices this rank loads in the current epoch, in order (padding included)."""
        return self.order[self.positions]

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, k: int):
        p = int(self.positions[k])
        i = int(self.order[p])
        try:
            x, ok, err = self.source.load(i, training=True, seed=int(self.seeds[p])), True, ""
        except VidcliError as exc:
            x, ok, err = np.zeros(self.source.sample_shape, np.uint8), False, str(exc)
        return torch.from_numpy(np.ascontiguousarray(x)), int(self.source.labels[i]), ok, i, err, bool(self.real[k])


def train_loader(ds: TrainClips, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, drop_last=False)
