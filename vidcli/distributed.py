"""Who this process is in a distributed run, read from the launcher's environment. No framework imported.

Two launchers are understood:
- `torchrun` (PyTorch families) sets RANK / WORLD_SIZE / LOCAL_RANK for every process;
- `TF_CONFIG` (Keras families with `train.distribute: multi_worker`) names the cluster and this task.

Rank 0 is the chief: the only process that writes the run folder. Every other process trains into a
scratch copy that is removed when it finishes, so a distributed run leaves exactly one run folder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from vidcli.errors import VidcliError


@dataclass(frozen=True)
class Role:
    rank: int = 0
    world: int = 1
    launcher: str = "none"  # "none", "torchrun" or "tf_config"

    @property
    def chief(self) -> bool:
        return self.rank == 0


def _int_env(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise VidcliError(f"environment variable {name}={value!r} is not an integer") from None


def torchrun_role() -> Role | None:
    world = _int_env("WORLD_SIZE")
    if world is None or world <= 1:
        return None
    rank = _int_env("RANK")
    if rank is None or not 0 <= rank < world:
        raise VidcliError(f"WORLD_SIZE={world} but RANK={os.environ.get('RANK')!r}; launch with torchrun")
    return Role(rank=rank, world=world, launcher="torchrun")


def tf_config_role() -> Role:
    """This task's rank in TF_CONFIG's cluster: the chief (or worker 0 when there is no chief) is rank 0."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise VidcliError("train.distribute: multi_worker needs TF_CONFIG naming the cluster and this task "
                          "(see README: Several GPUs and clusters)")
    try:
        cfg = json.loads(raw)
        cluster, task = cfg["cluster"], cfg["task"]
        kind, index = str(task["type"]), int(task["index"])
        chiefs = list(cluster.get("chief", []))
        workers = list(cluster.get("worker", []))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise VidcliError(f"TF_CONFIG is not valid JSON with cluster and task.type/task.index ({exc})") from None
    if kind not in ("chief", "worker"):
        raise VidcliError(f"TF_CONFIG task.type {kind!r}: vidcli runs 'chief' and 'worker' tasks only")
    members = chiefs if kind == "chief" else workers
    if not 0 <= index < len(members):
        raise VidcliError(f"TF_CONFIG task {kind}:{index} is not in the cluster ({len(members)} {kind} task(s))")
    rank = index if kind == "chief" else len(chiefs) + index
    return Role(rank=rank, world=len(chiefs) + len(workers), launcher="tf_config")


def role_for(backend: str, distribute: str) -> Role:
    """The role of this process for a recipe of `backend` with `train.distribute`, checked for a mix-up."""
    tr = torchrun_role()
    if backend == "torch":
        if distribute != "none":
            raise VidcliError(f"train.distribute: '{distribute}' is for Keras models; launch PyTorch models with "
                              "`torchrun --nproc-per-node N -m vidcli train RECIPE` instead")
        return tr or Role()
    if tr is not None:
        raise VidcliError("this is a Keras model under torchrun; set train.distribute (mirrored or multi_worker) "
                          "and launch it with `vidcli train` instead")
    if distribute == "multi_worker":
        return tf_config_role()
    return Role()


def scratch_copy(path: Path | None) -> Path:
    """A private folder for a non-chief process: a copy of the run it resumes, or an empty one."""
    tmp = Path(tempfile.mkdtemp(prefix="vidcli-worker-"))
    if path is None:
        return tmp
    dst = tmp / "run"
    # tensorboard logs are not needed; .partial- files are the chief writing at this moment
    shutil.copytree(path, dst, ignore=shutil.ignore_patterns("tensorboard", "*.partial-*"))
    return dst


def wait_for(path: Path, what: str, timeout: float = 1800.0, poll: float = 1.0) -> None:
    """Block until `path` exists (another rank is making it); fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise VidcliError(f"{path}: still missing after {timeout:.0f}s waiting for the chief to make {what}")
        time.sleep(poll)
