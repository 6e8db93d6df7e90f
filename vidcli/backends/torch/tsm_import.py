"""Strict import of the official TSM checkpoints (ResNet-50 and MobileNetV2 releases, the online demo's
MobileNetV2) and of ImageNet backbone weights (torchvision's ResNet-50, the TSM repository's MobileNetV2).

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
from vidcli.backends.torch.mobilenet_v2 import MobileNetV2
from vidcli.backends.torch.resnet import ResNet
from vidcli.backends.torch.tsm import TSM
from vidcli.errors import VidcliError
from vidcli.families.tsm import RELEASE_ARCHS

HEAD = "new_fc."
SHOWN = 10
# Where a head sits in each format: TSN with dropout 0 keeps it in the backbone; plain backbones name it.
HEADS = ("new_fc.", "base_model.fc.", "base_model.classifier.", "classifier.", "fc.")
ONLINE_DEMO = "the online demo's MobileNetV2 (plain features.* / classifier.* keys)"


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


def _backbone_of(sd: Mapping[str, torch.Tensor]) -> str | None:
    """Which backbone a state_dict's names belong to (None: neither)."""
    names = [k.removeprefix("base_model.") for k in sd]
    if any(k.startswith("features.") for k in names):
        return "mobilenet_v2"
    if any(k.startswith(("layer1.", "conv1.")) for k in names):
        return "resnet50"
    return None


def _check_backbone(model: TSM, found: str | None, source: str, how: str) -> None:
    if found is not None and found != model.backbone:
        raise VidcliError(f"{source}: {how} {found} weights; the model is model.params.backbone "
                          f"{model.backbone!r} (set backbone: {found})")


def _from_online_demo(sd: Mapping[str, torch.Tensor], model: TSM) -> dict[str, torch.Tensor]:
    """The online demo's names -> ours: `base_model.` prefix, `.net` in the shifted convs, `classifier` ->
    `new_fc`. Which convs are shifted is read off the model, so the file's names cannot move the shift."""
    shifted = {f"features.{i}.conv.0." for i in model.base_model.shift_blocks()}
    out = {}
    for key, value in sd.items():
        if key.startswith("classifier."):
            out[HEAD + key.removeprefix("classifier.")] = value
            continue
        prefix = key[: key.rfind(".") + 1]
        out["base_model." + (prefix + "net." + key[len(prefix):] if prefix in shifted else key)] = value
    return out


def _form(sd: Mapping[str, torch.Tensor], model: TSM, source: str) -> dict[str, torch.Tensor]:
    """The file's tensors under the model's names, after refusing a file whose network differs by more than
    its names: another backbone, or the other kind of shift (offline release vs online demo)."""
    tsn = any(k.startswith(("base_model.", HEAD)) for k in sd)
    _check_backbone(model, _backbone_of(sd), source, "holds")
    if tsn:
        if model.online:
            raise VidcliError(
                f"{source}: an offline TSM release (bi-directional shift of 2/{model.shift_div} of the channels) "
                "does not fit model.params.online: true (past-only shift of 1/8): the shift differs; train it "
                "online from this file's backbone via imagenet_init, or set online: false"
            )
        return {(HEAD + k.split(".", 2)[2] if k.startswith(("base_model.fc.", "base_model.classifier.")) else k): v
                for k, v in sd.items()}
    if model.backbone == "mobilenet_v2":
        if not model.online:
            raise VidcliError(
                f"{source}: {ONLINE_DEMO} shifts 1/8 of the channels from the past only, this model "
                f"(online: false) 2/{model.shift_div} both ways: the shift differs; set model.params.online: "
                "true, or give ImageNet weights as model.params.imagenet_init"
            )
        if model.shift_div != 8:
            raise VidcliError(f"{source}: {ONLINE_DEMO} shifts C/8 channels, model.params.shift_div is "
                              f"{model.shift_div}; set shift_div: 8")
        return _from_online_demo(sd, model)
    return dict(sd)


def load_tsm_state_dict(model: TSM, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load an upstream TSN/TSM state_dict (keys `base_model.*`, `new_fc.*`, optional `module.`) or, into an
    online MobileNetV2, the online demo's plain one (`features.*`, `classifier.*`), strictly."""
    sd = _form(_state_dict(state_dict, source), model, source)
    weight = sd.get(HEAD + "weight")
    own_weight = model.new_fc.weight
    other_classes = weight is not None and weight.dim() == 2 and weight.shape[0] != own_weight.shape[0]
    reinit = other_classes and weight.shape[1:] == own_weight.shape[1:]
    if reinit:
        model.reset_head()
        sd = {k: v for k, v in sd.items() if not k.startswith(HEAD)}
        sd.update({k: v for k, v in model.state_dict().items() if k.startswith(HEAD)})
    what = "the online TSM MobileNetV2 model" if model.online else f"the TSM {model.backbone} model"
    _load_strict(model, sd, source, what)
    if reinit:
        console.log(
            f"{source}: head has {weight.shape[0]} classes, the model {own_weight.shape[0]}: "
            "backbone loaded, new_fc re-initialised"
        )


def load_tsm_checkpoint(model: TSM, path: str | os.PathLike) -> None:
    """Initialise `model` from a mit-han-lab TSM release file ({'epoch', 'arch', 'state_dict', 'best_prec1'})
    or, for an online model, from the online demo's `mobilenetv2_jester_online.pth.tar`."""
    obj = read_checkpoint(path)
    arch = obj.get("arch") if isinstance(obj, Mapping) else None
    if isinstance(arch, str):
        if arch not in RELEASE_ARCHS:
            raise VidcliError(f"{path}: a TSM checkpoint for arch {arch!r}; vidcli's TSM builds "
                              f"{' or '.join(RELEASE_ARCHS)}")
        _check_backbone(model, RELEASE_ARCHS[arch], str(path), f"a TSM checkpoint for arch {arch!r}, i.e.")
    load_tsm_state_dict(model, obj, str(path))


def head_classes(path: str | os.PathLike) -> int:
    """The class count of a TSM release's or the online demo's head, so a model can be built to fit it."""
    sd = _state_dict(read_checkpoint(path), str(path))
    for head in HEADS:
        weight = sd.get(head + "weight")
        if weight is not None and weight.dim() == 2:
            return int(weight.shape[0])
    raise VidcliError(f"{path}: holds no classifier head (none of {', '.join(h + 'weight' for h in HEADS)})")


def _canonical(key: str) -> str:
    """Model key -> the plain backbone's name: drop the TSN prefix and the shift wrappers' `.net`."""
    return key.removeprefix("base_model.").replace(".net.", ".")


def _load_imagenet(model: TSM | ResNet | MobileNetV2, path: str | os.PathLike, backbone: str) -> None:
    """Backbone weights from a plain ImageNet state_dict; its 1000-class head (`fc` / `classifier`) is
    dropped unless `model` is the plain network with a matching head."""
    source = str(path)
    what = {"resnet50": "ImageNet ResNet-50", "mobilenet_v2": "ImageNet MobileNetV2"}[backbone]
    sd = _state_dict(read_checkpoint(path), source)
    found = _backbone_of(sd)
    if found is not None and found != backbone:
        raise VidcliError(f"{source}: holds {found} weights, not an {what} for backbone {backbone!r}")
    by_name = {_canonical(k): k for k in model.state_dict() if not k.startswith(HEAD)}
    dropped = [k for k in sd if k.startswith(("fc.", "classifier.")) and k not in by_name]
    mapped = {by_name.get(k, k): v for k, v in sd.items() if k not in dropped}
    if isinstance(model, TSM):
        mapped.update({k: v for k, v in model.state_dict().items() if k.startswith(HEAD)})
    _load_strict(model, mapped, source, f"an {what}")
    console.log(f"{source}: {what} weights loaded" + (f" ({dropped[0].split('.')[0]} dropped)" if dropped else ""))


def load_imagenet_resnet50(model: TSM | ResNet, path: str | os.PathLike) -> None:
    """torchvision `resnet50` ImageNet weights into a TSM ResNet-50 (or a plain ResNet, keeping `fc`)."""
    _load_imagenet(model, path, "resnet50")


def load_imagenet_mobilenet_v2(model: TSM | MobileNetV2, path: str | os.PathLike) -> None:
    """The TSM repository's ImageNet MobileNetV2 (`mobilenetv2_1.0-f2a8633.pth.tar`: `features.*`,
    `classifier.*`) into a TSM MobileNetV2, offline or online (or a plain MobileNetV2, keeping `classifier`)."""
    _load_imagenet(model, path, "mobilenet_v2")


def load_imagenet(model: TSM, path: str | os.PathLike) -> None:
    """`model.params.imagenet_init`: the ImageNet weights of the model's backbone."""
    (load_imagenet_mobilenet_v2 if model.backbone == "mobilenet_v2" else load_imagenet_resnet50)(model, path)


def load_pretrained(model: TSM, source: str | None, params) -> None:
    """The family's weight import (`FamilySpec.loader`): a TSM release or the online demo file (`source`, from
    model.pretrained or model.params.pretrained), else ImageNet backbone weights (`model.params.imagenet_init`)."""
    source = source or params.pretrained
    if source:
        load_tsm_checkpoint(model, source)
    elif params.imagenet_init:
        load_imagenet(model, params.imagenet_init)
