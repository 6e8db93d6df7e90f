"""Architecture name -> (backend, family module), imported only when used.

A family module has a `Params` dataclass and `build(params, num_classes, input_shape)`; it may have
`load_pretrained(model, source, params)`. A backend module has the same small set of functions for
every framework (fit, predict_split, load, predict_batch, export_onnx), so the CLI never knows
which framework is behind a run.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from vidcli.errors import VidcliError

ARCHS: dict[str, tuple[str, str]] = {
    "r2plus1d": ("keras", "vidcli.backends.keras.r2plus1d"),
    "movinet": ("keras", "vidcli.backends.keras.movinet"),
    "vivit": ("keras", "vidcli.backends.keras.vivit"),
    "tsm": ("torch", "vidcli.backends.torch.tsm"),
}
BACKENDS = {"keras": "vidcli.backends.keras.backend", "torch": "vidcli.backends.torch.backend"}


def backend_name(arch: str) -> str:
    if arch not in ARCHS:
        import difflib

        near = difflib.get_close_matches(arch, list(ARCHS), n=1)
        hint = f" (did you mean '{near[0]}'?)" if near else f" (known: {', '.join(ARCHS)})"
        raise VidcliError(f"model.arch: unknown architecture '{arch}'{hint}")
    return ARCHS[arch][0]


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


def backend(arch: str) -> ModuleType:
    name = backend_name(arch)
    return _import(BACKENDS[name], f"model.arch '{arch}'")


def family(arch: str) -> ModuleType:
    backend_name(arch)
    return _import(ARCHS[arch][1], f"model.arch '{arch}'")
