"""Family name -> its card (framework-free) -> its backend (imported only when used).

Adding a family: its card in `vidcli/families/`, its network in the backend's folder, and one line in
FAMILIES. `check_recipe` is where a recipe meets its family: every key the family or its backend does not
honour is refused by name, before any framework loads.
"""

from __future__ import annotations

import difflib
import importlib
from types import ModuleType
from typing import Any

from vidcli.backends.base import Backend
from vidcli.errors import VidcliError
from vidcli.families import UNIT, FamilySpec, changed, refuse

FAMILIES: dict[str, str] = {
    "r2plus1d": "vidcli.families.r2plus1d",
    "movinet": "vidcli.families.movinet",
    "vivit": "vidcli.families.vivit",
    "tsm": "vidcli.families.tsm",
}

BACKENDS: dict[str, str] = {"keras": "vidcli.backends.keras.backend", "torch": "vidcli.backends.torch.backend"}
SUFFIXES: dict[str, str] = {"keras": ".keras", "torch": ".pt"}  # checkpoint files: best<suffix>, last<suffix>

# What each backend's training pipeline feeds the model: a family card must ask for that, so the model sees the same
# input in training as the card describes for evaluation and export (Keras: tf.data gives NTHWC in [0, 1]; torch:
# the DataLoader gives NTCHW normalised by the card, which a model that takes N(TC)HW also takes).
TRAINING_INPUT: dict[str, dict] = {
    "keras": {"layouts": ("NTHWC",), "norm": UNIT},
    "torch": {"layouts": ("NTCHW", "N(TC)HW"), "norm": None},
}

# Recipe keys a backend does not implement: a non-default value is refused with the reason.
UNSUPPORTED: dict[str, dict[str, str]] = {
    "keras": {
        "train.channels_last": "a PyTorch memory-format setting; Keras video tensors are channels-last already",
        "train.head_lr_mult": "not implemented for Keras models (one learning rate for every layer)",
    },
    "torch": {
        "train.xla": "XLA compilation is a Keras setting",
        "train.distribute": "PyTorch models are distributed by launching under torchrun "
                            "(torchrun --nproc-per-node N -m vidcli train RECIPE)",
    },
}


def spec(arch: str) -> FamilySpec:
    if arch not in FAMILIES:
        near = difflib.get_close_matches(arch, list(FAMILIES), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else f" (known: {', '.join(FAMILIES)})"
        raise VidcliError(f"model.arch: unknown architecture '{arch}'{hint}")
    fam = importlib.import_module(FAMILIES[arch]).SPEC
    want = TRAINING_INPUT[fam.backend]
    if fam.layout not in want["layouts"] or (want["norm"] is not None and fam.norm != want["norm"]):
        raise VidcliError(f"model.arch '{arch}': its card asks for layout {fam.layout} and {fam.norm}, but the "
                          f"{fam.backend} backend trains on {' or '.join(want['layouts'])}"
                          + (" values in [0, 1]" if want["norm"] is not None else ""))
    return fam


def backend_name(arch: str) -> str:
    return spec(arch).backend


def _import(module: str, what: str) -> ModuleType:
    from vidcli.backends import quiet_import

    try:
        quiet_import("tensorflow" if ".keras" in module else "torch")
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if top in {"torch", "tensorflow", "keras"}:
            raise VidcliError(f"{what} needs the '{top}' package; install it (see README)") from exc
        raise


def backend(arch: str) -> Backend:
    """The backend object that trains and runs `arch` (its framework is imported now)."""
    return _import(BACKENDS[spec(arch).backend], f"model.arch '{arch}'").BACKEND


def family(arch: str) -> ModuleType:
    """The family's framework module (network, pretrained import)."""
    return _import(spec(arch).module, f"model.arch '{arch}'")


def plain_params(params: Any) -> dict[str, Any]:
    """Model params as plain JSON values (tuples as lists): what checkpoints record and compare."""
    import dataclasses
    import json

    return json.loads(json.dumps(dataclasses.asdict(params)))


def stream_module(arch: str) -> ModuleType:
    """The family's stream module: `stream_onnx(model, card, opset)` and `stream_runner(model, card)`."""
    fam = spec(arch)
    if fam.stream_module is None:
        raise VidcliError(f"model.arch '{arch}' has no stream model")
    return _import(fam.stream_module, f"model.arch '{arch}'")


def load_pretrained(rec: Any, params: Any, model: Any) -> None:
    """Fill `model` with the weights the recipe names (model.pretrained, or the params' own pretrained /
    imagenet_init), through the family's loader."""
    fam = spec(rec.model.arch)
    source = rec.model.pretrained or getattr(params, "pretrained", None)
    if fam.loader and (source or getattr(params, "imagenet_init", None)):
        _import(fam.loader, f"model.arch '{rec.model.arch}'").load_pretrained(model, source, params)


def head_classes(rec: Any, source: str) -> int:
    """How many classes the head of a pretrained weights file has (the family loader reads the file)."""
    fam = spec(rec.model.arch)
    if fam.loader is None:
        raise VidcliError(f"model.pretrained: '{rec.model.arch}' has no pretrained checkpoints")
    return _import(fam.loader, f"model.arch '{rec.model.arch}'").head_classes(source)


def _general_rules(rec: Any, fam: FamilySpec) -> list[tuple[str, str]]:
    """Keys whose effect depends on other keys: asked for where nothing would use them."""
    d, t = rec.data, rec.train
    problems: list[tuple[str, str]] = []
    if d.format not in fam.formats:
        problems.append(("data.format", f"'{d.format}' is not an input of this family (it reads "
                                        f"{', '.join(fam.formats)})"))
    if d.format == "volumes":
        for key in ("frames", "frame_step", "size", "sampling", "flip", "multiscale_crop"):
            if changed(d, key):
                problems.append((f"data.{key}", "volumes are used whole, at the data's own size; "
                                                "this setting would change nothing"))
    elif d.sampling != "step":
        if changed(d, "frame_step"):
            problems.append(("data.frame_step", f"data.sampling '{d.sampling}' spreads the frames over the "
                                                "whole video; frame_step is used with sampling: step only"))
    elif changed(d, "multiscale_crop"):
        problems.append(("data.multiscale_crop", "crops are taken with data.sampling segments or dense; "
                                                 "sampling: step letterboxes the whole frame"))
    if d.cache and d.format != "videos":
        problems.append(("data.cache", f"keeps decoded video frames; data.format '{d.format}' has no video to decode"))
    if not d.cache:
        for key in ("cache_dir", "cache_limit_gb"):
            if changed(d, key):
                problems.append((f"data.{key}", "used only with data.cache: true"))
    if d.synth is not None and d.format == "frames":
        problems.append(("data.synth", "generates videos or volumes, not frame folders (data.format: frames)"))
    if d.synth is not None and d.synth.volumes != (d.format == "volumes"):
        problems.append(("data.synth.volumes", f"must be {d.format == 'volumes'} for data.format '{d.format}'"))
    if t.optimizer != "sgd" and changed(t, "momentum"):
        problems.append(("train.momentum", f"applies to train.optimizer: sgd, not '{t.optimizer}'"))
    if t.schedule != "step":
        for key in ("step_epochs", "step_gamma"):
            if changed(t, key):
                problems.append((f"train.{key}", f"applies to train.schedule: step, not '{t.schedule}'"))
    if t.lr_scaling == "none" and changed(t, "lr_base_batch"):
        problems.append(("train.lr_base_batch", "used only with train.lr_scaling: linear or sqrt"))
    for key, why in UNSUPPORTED.get(fam.backend, {}).items():
        section, name = key.split(".")
        if changed(getattr(rec, section), name):
            problems.append((key, why))
    return problems


def check_recipe(rec: Any) -> Any:
    """The recipe's model params, checked against its family; every key the family or its backend would not
    honour is an error naming the key and the family. Imports no framework."""
    from vidcli.recipe import check_opset

    fam = spec(rec.model.arch)
    check_opset(rec.export.opset, fam.backend)
    if rec.data.sampling is None and rec.data.format != "volumes":  # the family's reference sampling
        rec.data.sampling = fam.sampling
    params = fam.parse(rec.model.params)
    inner = getattr(params, "pretrained", None)
    if inner and rec.model.pretrained and inner != rec.model.pretrained:
        raise VidcliError("model.pretrained and model.params.pretrained are both set; keep one")
    problems = _general_rules(rec, fam)
    if (rec.model.pretrained or inner) and fam.pretrained is None:
        problems.append(("model.pretrained", "this family has no pretrained checkpoints"))
    if fam.rules is not None:
        problems.extend(fam.rules(rec, params))
    refuse(problems, fam.name)
    return params
