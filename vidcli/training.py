"""`vidcli train`: recipe -> data -> run folder -> backend.fit. No framework imported here.

Everything that can be checked before a run folder exists is checked first (the recipe against its family,
the data against the recipe); a run that fails before its first epoch finishes is removed again, so a typo
never leaves an empty run behind. A run records its model card and a fingerprint of the data it trained on.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from vidcli import distributed, fsio, models, runs
from vidcli import recipe as recipe_mod
from vidcli.backends import registry
from vidcli.console import log, warn
from vidcli.datasets import provenance
from vidcli.datasets.source import open_source
from vidcli.errors import VidcliError


def ensure_data(rec: recipe_mod.Recipe) -> None:
    """The built-in data at `data.root` when the recipe says how: generated when missing, refused when the
    folder holds data made with other settings (never silently reused)."""
    root = Path(rec.data.root)
    if rec.data.synth is None:
        if not root.exists():
            raise VidcliError(f"data.root: {root} not found (fetch it with `vidcli data ...`)")
        return
    from vidcli.datasets import synth

    s = rec.data.synth
    counts = {"train": s.train, "val": s.val, "test": s.test}
    if not root.exists():
        log(f"{root} is missing: generating the built-in data there")
    try:
        if s.volumes:
            path = synth.write_synth_volumes(root.parent, classes=s.classes, counts=counts, size=s.size, seed=s.seed)
            if path.resolve() != root.resolve():
                raise VidcliError(f"data.root: synthetic volumes are written to {path}; set data.root to that file")
        else:
            synth.write_synth_videos(root, classes=s.classes, counts=counts, frames=s.frames, size=s.size,
                                     seed=s.seed)
    except VidcliError as exc:
        raise VidcliError(f"data.synth: {exc} (the recipe's data.synth settings; point data.root elsewhere or "
                          "regenerate it with `vidcli data synth ... --force`)") from None


def has_split(rec: recipe_mod.Recipe, split: str) -> bool:
    root = Path(rec.data.root)
    if rec.data.format == "videos":
        return (root / split).is_dir()
    if rec.data.format == "frames":
        return (root / f"{split}_list.txt").is_file()
    return True


def _resumable(run: runs.Run, rec: recipe_mod.Recipe, overrides: list[str]) -> None:
    """A resumed run's last checkpoint must be readable and hold the model its recipe describes, before
    anything (recipe.yaml with the --set overrides) is written."""
    backend = registry.backend(rec.model.arch)
    last = backend.checkpoint(run, "last")
    if not last.is_file():
        raise VidcliError(f"{run.path}: no last checkpoint to resume from")
    from vidcli import engine

    state = backend.checkpoint_state(last)
    card = models.run_card(run)
    engine.check_model(state, rec.model.arch, registry.plain_params(registry.check_recipe(rec)), len(run.labels),
                       str(last), sample_shape=card.clip_shape)
    if overrides:
        fsio.write_text(run.file(runs.RECIPE_FILE), recipe_mod.dump(rec))


def train(recipe_path: Path | None, overrides: list[str], resume: Path | None, runs_dir: Path) -> runs.Run | None:
    """Train; return the run folder, or None in a distributed run's non-chief process (the chief writes it)."""
    if resume is not None:
        if recipe_path is not None:
            raise VidcliError(f"give a recipe or --resume RUN, not both: a resumed run keeps its own recipe "
                              f"({resume}/{runs.RECIPE_FILE}); change it with --set")
        run = runs.Run.open(resume)
        rec = recipe_mod.load(run.file(runs.RECIPE_FILE), overrides)
    else:
        if recipe_path is None:
            raise VidcliError("give a recipe file, or --resume RUN")
        rec = recipe_mod.load(recipe_path, overrides)
        run = None
    registry.check_recipe(rec)  # every key the family cannot honour is refused before a framework loads
    backend_name = registry.backend_name(rec.model.arch)
    role = distributed.role_for(backend_name, rec.train.distribute)
    if not role.chief and rec.data.synth is not None:
        distributed.wait_for(Path(rec.data.root), "the built-in data")  # the chief generates it
    else:
        ensure_data(rec)
    train_src = open_source(rec.data, "train", run.labels if run else None)
    val_src = open_source(rec.data, "val", train_src.classes) if has_split(rec, "val") else None
    if val_src is None and role.chief:
        warn("no validation split: the best checkpoint is chosen by training metrics")
    backend = registry.backend(rec.model.arch)
    if run is not None and role.chief:
        _resumable(run, rec, overrides)
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
    try:
        if fresh:
            spec = registry.spec(rec.model.arch)
            models.write_card(run, spec.card(rec, train_src.classes, train_src.sample_shape))
            run.update_state(data=provenance.fingerprint(rec.data, train_src.classes))
        log(f"run folder: {run.path}  ({len(train_src)} train / {len(val_src) if val_src else 0} val clips, "
            f"{len(train_src.classes)} classes)")
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
        state = run.state
        plots.training_curves(history, run.file("training_curves.png"), best_epoch=state.get("best_epoch") or None,
                              monitor=state.get("monitor"))
