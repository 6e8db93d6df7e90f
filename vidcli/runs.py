"""Run folders: runs/<recipe name>/<n>, numbered, never overwritten.

A run folder is the unit a user passes around: it holds the resolved recipe, the labels, the
checkpoints (`best`, `last`), history, metrics, plots and an env.json saying how it was made.
`run.json` marks a folder as a run and records its state (epochs done, best score, status).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vidcli import __version__, fsio
from vidcli import recipe as recipe_mod
from vidcli.errors import VidcliError, fail

RUN_FILE = "run.json"
RECIPE_FILE = "recipe.yaml"
LABELS_FILE = "labels.json"


def _next_index(parent: Path) -> int:
    taken = [int(p.name) for p in parent.iterdir() if p.is_dir() and p.name.isdigit()] if parent.is_dir() else []
    return max(taken, default=0) + 1


def create(runs_root: str | Path, name: str) -> Path:
    """Make the next free runs_root/name/<n>. mkdir without exist_ok makes two racing runs pick different n.

    `name` must be one safe folder name (the recipe checks it; checked again here, since a run folder
    outside runs_root or one `newest` cannot find would be worse than a refusal). A runs_root that
    cannot be written is a job failure (exit 1), like any other write that fails.
    """
    recipe_mod.check_name(name)
    root = Path(runs_root)
    parent = root / name
    try:
        parent.mkdir(parents=True, exist_ok=True)
        while True:
            path = parent / str(_next_index(parent))
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue
    except OSError as exc:
        raise fail(f"cannot make a run folder in {root}: {exc.strerror or exc}") from None


@dataclass
class Run:
    path: Path

    @classmethod
    def open(cls, path: str | Path) -> Run:
        p = Path(path)
        if not p.is_dir():
            raise VidcliError(f"{p}: run folder not found")
        if not (p / RUN_FILE).is_file() or not (p / RECIPE_FILE).is_file():
            raise VidcliError(f"{p}: not a vidcli run folder (no {RUN_FILE} / {RECIPE_FILE})")
        return cls(p)

    @property
    def state(self) -> dict[str, Any]:
        return fsio.read_json(self.path / RUN_FILE)

    def update_state(self, **changes: Any) -> dict[str, Any]:
        state = self.state if (self.path / RUN_FILE).exists() else {}
        state.update(changes, updated=_now())
        fsio.write_json(self.path / RUN_FILE, state)
        return state

    @property
    def recipe(self) -> recipe_mod.Recipe:
        return recipe_mod.load(self.path / RECIPE_FILE)

    @property
    def labels(self) -> list[str]:
        f = self.path / LABELS_FILE
        if not f.is_file():
            raise VidcliError(f"{self.path}: labels file {LABELS_FILE} is missing")
        labels = fsio.read_json(f)
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise VidcliError(f"{f}: expected a JSON list of class names")
        return labels

    def file(self, name: str) -> Path:
        return self.path / name


HISTORY_FIELDS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]


def write_history(run: Run, rows: list[dict]) -> None:
    """history.csv, one row per epoch: the same file whichever backend trained the run."""
    def cell(v: Any) -> str:
        return "" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v)

    lines = [",".join(HISTORY_FIELDS)] + [",".join(cell(row.get(k)) for k in HISTORY_FIELDS) for row in rows]
    fsio.write_text(run.file("history.csv"), "\n".join(lines) + "\n")


def read_history(run: Run) -> list[dict]:
    """history.csv as rows; a damaged file is one error naming the line (the checkpoint's own copy of the
    history, which resume uses, is unaffected)."""
    f = run.file("history.csv")
    if not f.is_file():
        return []
    try:
        lines = f.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise VidcliError(f"{f}: not readable ({exc})") from None
    head = lines[0].split(",") if lines else []
    if head and head[0] != "epoch":
        raise VidcliError(f"{f}: not a vidcli history (first column {head[0]!r}, expected 'epoch')")
    rows = []
    for n, line in enumerate(lines[1:], 2):
        try:
            rows.append({k: None if v == "" else (int(v) if k == "epoch" else float(v))
                         for k, v in zip(head, line.split(","), strict=True)})
        except ValueError:
            raise VidcliError(f"{f}:{n}: damaged row {line[:60]!r}") from None
    return rows


def start(runs_root: str | Path, rec: recipe_mod.Recipe, labels: list[str], backend: str,
          role: Any = None) -> Run:
    run = Run(create(runs_root, rec.name))
    fsio.write_text(run.file(RECIPE_FILE), recipe_mod.dump(rec))
    fsio.write_json(run.file(LABELS_FILE), labels)
    env = environment(rec.train.seed, backend)
    env["distributed"] = {"launcher": getattr(role, "launcher", "none"), "world_size": getattr(role, "world", 1),
                          "strategy": rec.train.distribute}
    fsio.write_json(run.file("env.json"), env)
    run.update_state(status="created", epochs_done=0, created=_now(), name=rec.name, backend=backend)
    return run


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(seed: int, backend: str) -> dict[str, Any]:
    """What made this run: versions, machine, seed, and the code's git commit when there is one."""
    from importlib import metadata

    versions = {}
    for pkg in ("numpy", "opencv-python-headless", "tensorflow", "keras", "torch", "onnx", "onnxruntime"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return {
        "vidcli": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "backend": backend,
        "seed": seed,
        "git_commit": _git_commit(),
        "versions": versions,
        "gpus": gpus(),
        "cuda": cuda_versions(),
        "argv": sys.argv,
        "created": _now(),
    }


def gpus() -> list[dict[str, str]]:
    """Every NVIDIA GPU nvidia-smi sees: model, driver, memory. Empty on a machine without one."""
    fields = ["name", "driver_version", "memory.total", "compute_cap"]
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(fields)}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        return []
    keys = ["name", "driver", "memory", "compute_capability"]
    return [dict(zip(keys, (c.strip() for c in line.split(",")), strict=False))
            for line in out.stdout.splitlines() if line.strip()]


def cuda_versions() -> dict[str, Any]:
    """CUDA / cuDNN versions of the frameworks this process has loaded (what they were built with and see)."""
    found: dict[str, Any] = {}
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
            found["torch"] = {"cuda": torch.version.cuda, "cudnn": cudnn, "available": torch.cuda.is_available()}
        except Exception:  # noqa: BLE001 - a broken CUDA install must not stop a run from starting
            pass
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        try:
            info = tf.sysconfig.get_build_info()
            found["tensorflow"] = {"cuda": info.get("cuda_version"), "cudnn": info.get("cudnn_version"),
                                   "gpus": len(tf.config.list_physical_devices("GPU"))}
        except Exception:  # noqa: BLE001
            pass
    return found
