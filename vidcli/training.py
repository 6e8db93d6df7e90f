"""`vidcli train`: recipe -> data -> run folder -> backend.fit. No framework imported here.

Everything that can be checked before a run folder exists is checked first; a run that fails
before its first epoch finishes is removed again, so a typo never leaves an empty run behind.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from vidcli import distributed, fsio, runs
from vidcli import recipe as recipe_mod
from vidcli.backends import registry
from vidcli.console import log, warn
from vidcli.datasets.source import open_source
from vidcli.errors import VidcliError


def ensure_data(rec: recipe_mod.Recipe) -> None:
    """Generate the built-in data at `data.root` when the recipe says how and it is missing."""
    root = Path(rec.data.root)
    if root.exists() or rec.data.synth is None:
        if not root.exists():
            raise VidcliError(f"data.root: {root} not found (fetch it with `vidcli data ...`)")
        return
    from vidcli.datasets import synth

    s = rec.data.synth
    counts = {"train": s.train, "val": s.val, "test": s.test}
    log(f"{root} is missing: generating the built-in data there")
    if s.volumes:
        path = synth.write_synth_volumes(root.parent, classes=s.classes, counts=counts, size=s.size, seed=s.seed)
        if path.resolve() != root.resolve():
            raise VidcliError(f"data.root: synthetic volumes were written to {path}; set data.root to that file")
    else:
        synth.write_synth_videos(root, classes=s.classes, counts=counts, frames=s.frames, size=s.size, seed=s.seed)


def has_split(rec: recipe_mod.Recipe, split: str) -> bool:
    root = Path(rec.data.root)
    if rec.data.format == "videos":
        return (root / split).is_dir()
    if rec.data.format == "frames":
        return (root / f"{split}_list.txt").is_file()
    return True


def train(recipe_path: Path | None, overrides: list[str], resume: Path | None, runs_dir: Path) -> runs.Run | None:
    """Train; return the run folder, or None in a distributed run's non-chief process (the chief writes it)."""
    if resume is not None:
        run = runs.Run.open(resume)
        if not run.file("last.keras").is_file() and not run.file("last.pt").is_file():
            raise VidcliError(f"{run.path}: no last checkpoint to resume from")
        rec = recipe_mod.load(run.file(runs.RECIPE_FILE), overrides)
    else:
        if recipe_path is None:
            raise VidcliError("give a recipe file, or --resume RUN")
        rec = recipe_mod.load(recipe_path, overrides)
        run = None
    registry.check_recipe(rec)  # every key the family cannot honour is refused before a framework loads
    backend_name = registry.backend_name(rec.model.arch)
    role = distributed.role_for(backend_name, rec.train.distribute)
    if role.chief and run is not None and overrides:
        fsio.write_text(run.file(runs.RECIPE_FILE), recipe_mod.dump(rec))
    if not role.chief and rec.data.synth is not None:
        distributed.wait_for(Path(rec.data.root), "the built-in data")
    if rec.data.synth is None:
        ensure_data(rec)  # a missing data folder is reported before a framework loads and logs
    ensure_data(rec)
    train_src = open_source(rec.data, "train", run.labels if run else None)
    val_src = open_source(rec.data, "val", train_src.classes) if has_split(rec, "val") else None
    if val_src is None and role.chief:
        warn("no validation split: the best checkpoint is chosen by training metrics")
    backend = registry.backend(rec.model.arch)
    if not role.chief:
        scratch = distributed.scratch_copy(run.path if run else None)
        try:
            worker_run = runs.Run(scratch) if run else runs.start(scratch, rec, train_src.classes, backend_name)
            backend.fit(worker_run, rec, train_src, val_src, resume=run is not None)
        finally:
            shutil.rmtree(scratch if run is None else scratch.parent, ignore_errors=True)
        return None
    fresh = run is None
    if run is None:
        run = runs.start(runs_dir, rec, train_src.classes, backend_name, role)
    log(f"run folder: {run.path}  ({len(train_src)} train / {len(val_src) if val_src else 0} val clips, "
        f"{len(train_src.classes)} classes)")
    try:
        backend.fit(run, rec, train_src, val_src, resume=not fresh)
    except (VidcliError, KeyboardInterrupt):  # Ctrl-C before the first checkpoint leaves nothing to resume
        if fresh and run.state.get("epochs_done", 0) == 0 and run.state.get("status") != "interrupted":
            shutil.rmtree(run.path, ignore_errors=True)
        raise
    _after_training(run)
    return run


def _after_training(run: runs.Run) -> None:
    from vidcli import plots

    history = run.file("history.csv")
    if history.is_file():
        plots.training_curves(history, run.file("training_curves.png"))
