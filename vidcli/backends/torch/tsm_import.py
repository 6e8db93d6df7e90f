"""Strict import of the official TSM release checkpoints and of torchvision's ImageNet ResNet-50 weights.

Strict means every tensor in the file lands somewhere and every model tensor is filled, with shapes checked:
a silently skipped key is a model that looks pretrained and is not. Two exceptions: a classifier head with a
different class count is re-initialised (fine-tuning to new labels), and a missing BatchNorm
`num_batches_tracked` counter is tolerated (torchvision's original ResNet-50 file predates it; it never
affects the output).
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vidcli import console
from vidcli.backends.torch.resnet import ResNet
from vidcli.backends.torch.tsm import TSM
from vidcli.errors import VidcliError

HEAD = "new_fc."
SHOWN = 10


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def read_checkpoint(path: str | os.PathLike) -> Any:
    """`torch.load` with `weights_only=True`: a checkpoint from the internet must not run code on load."""
    p = Path(path)
    if not p.is_file():
        raise VidcliError(f"{p}: checkpoint file not found")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found:
            raise VidcliError(
                f"{p}: refused, holds Python objects besides tensors ({found.group(1)}); loaded with weights_only=True"
            ) from exc
        raise VidcliError(f"{p}: not a PyTorch checkpoint") from exc
    except (RuntimeError, EOFError, ValueError, OSError, AttributeError, KeyError, TypeError) as exc:
        raise VidcliError(f"{p}: not a readable PyTorch checkpoint ({_first_line(exc)})") from exc


def _state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """The release files wrap the weights as {'state_dict': ...}; a bare state_dict is accepted too."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj:
        raise VidcliError(f"{source}: holds no state_dict of tensors")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise VidcliError(f"{source}: holds no state_dict of tensors (non-tensor entries: {_listing(bad)})")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _load_strict(model: nn.Module, mapped: dict[str, torch.Tensor], source: str, what: str) -> None:
    """Check names and shapes of `mapped` (already in model names) against the model, then copy them in."""
    own = model.state_dict()
    unused = sorted(k for k in mapped if k not in own)
    missing = sorted(k for k in own if k not in mapped and not k.endswith("num_batches_tracked"))
    shapes = [
        f"{k}: file {list(v.shape)} vs model {list(own[k].shape)}"
        for k, v in mapped.items()
        if k in own and v.shape != own[k].shape
    ]
    problems = []
    if unused:
        problems.append(f"{len(unused)} checkpoint keys not in the model ({_listing(unused)})")
    if missing:
        problems.append(f"{len(missing)} model keys not in the checkpoint ({_listing(missing)})")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches ({_listing(shapes)})")
    if problems:
        raise VidcliError(f"{source} does not fit {what}: " + "; ".join(problems))
    full = dict(own)
    full.update(mapped)
    model.load_state_dict(full, strict=True)


def load_tsm_state_dict(model: TSM, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load an upstream TSN/TSM state_dict (keys `base_model.*`, `new_fc.*`, optional `module.`) strictly."""
    sd = _state_dict(state_dict, source)
    # Upstream with dropout=0 keeps its head in base_model.fc instead of new_fc.
    sd = {(HEAD + k[len("base_model.fc.") :] if k.startswith("base_model.fc.") else k): v for k, v in sd.items()}
    weight = sd.get(HEAD + "weight")
    own_weight = model.new_fc.weight
    other_classes = weight is not None and weight.dim() == 2 and weight.shape[0] != own_weight.shape[0]
    reinit = other_classes and weight.shape[1:] == own_weight.shape[1:]
    if reinit:
        model.reset_head()
        sd = {k: v for k, v in sd.items() if not k.startswith(HEAD)}
        sd.update({k: v for k, v in model.state_dict().items() if k.startswith(HEAD)})
    _load_strict(model, sd, source, "the TSM ResNet-50 model")
    if reinit:
        console.log(
            f"{source}: head has {weight.shape[0]} classes, the model {own_weight.shape[0]}: "
            "backbone loaded, new_fc re-initialised"
        )


def load_tsm_checkpoint(model: TSM, path: str | os.PathLike) -> None:
    """Initialise `model` from a mit-han-lab TSM release file ({'epoch', 'arch', 'state_dict', 'best_prec1'})."""
    obj = read_checkpoint(path)
    arch = obj.get("arch") if isinstance(obj, Mapping) else None
    if isinstance(arch, str) and arch != "resnet50":
        raise VidcliError(f"{path}: a TSM checkpoint for arch {arch!r}; vidcli's TSM is resnet50")
    load_tsm_state_dict(model, obj, str(path))


def _canonical(key: str) -> str:
    """Model key -> torchvision name: drop the TSN prefix and the shift wrappers' `.net`."""
    return key.removeprefix("base_model.").replace(".net.", ".")


def load_imagenet_resnet50(model: TSM | ResNet, path: str | os.PathLike) -> None:
    """Initialise the backbone from torchvision `resnet50` ImageNet weights; the 1000-class `fc` is dropped
    unless `model` is a plain ResNet with a matching `fc`."""
    source = str(path)
    sd = _state_dict(read_checkpoint(path), source)
    by_name = {_canonical(k): k for k in model.state_dict() if not k.startswith(HEAD)}
    dropped = [k for k in sd if k.startswith("fc.") and k not in by_name]
    mapped = {by_name.get(k, k): v for k, v in sd.items() if k not in dropped}
    if isinstance(model, TSM):
        mapped.update({k: v for k, v in model.state_dict().items() if k.startswith(HEAD)})
    _load_strict(model, mapped, source, "an ImageNet ResNet-50")
    console.log(f"{source}: ImageNet ResNet-50 weights loaded" + (" (fc dropped)" if dropped else ""))
