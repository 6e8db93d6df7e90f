"""The epoch engine: every decision and write of a training run that does not depend on the framework.

The Keras callback, the distributed Keras loop and the PyTorch trainer all report to one `EpochEngine`:
the learning rate of each step (warm-up per step, then the schedule per epoch), NaN/inf losses, the bad-clip
budget, the history row, the best/last checkpoints, early stopping and the interrupt message.

The end of an epoch is one commit: the trainer's `save` writes `last` with the run's state inside it
(epoch, history rows, best score and epoch), atomically; `best`, history.csv and run.json are derived from it
and written after. A run killed between those writes is reconciled from `last` when it resumes, so no history
row and no best checkpoint is ever lost, whatever moment a kill -9 hits.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vidcli import fsio
from vidcli import recipe as recipe_mod
from vidcli.console import log, warn
from vidcli.errors import INTERRUPTED, VidcliError, fail
from vidcli.runs import Run, write_history

STATE_FORMAT = "vidcli-run-state/1"
Save = Callable[[Path, dict], None]  # (path, state) -> the model, its optimizer and `state`, written atomically
ReadState = Callable[[Path], dict]  # path -> the state saved inside that checkpoint ({} when it has none)


def fault_point(name: str) -> None:
    """Test hook: VIDCLI_FAULT=<name> kills this process (SIGKILL) at that point of the epoch commit."""
    if os.environ.get("VIDCLI_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


class EpochEngine:
    def __init__(self, run: Run, rec: recipe_mod.Recipe, *, steps: int, has_val: bool, save: Save,
                 read_state: ReadState, suffix: str, model_info: dict[str, Any], chief: bool = True,
                 say: Callable[[str], None] = log):
        self.run, self.rec, self.steps, self.save, self.read_state = run, rec, max(1, steps), save, read_state
        self.last, self.best_path = run.file(f"last{suffix}"), run.file(f"best{suffix}")
        self.model_info = model_info  # arch, params, num_classes: checked when the checkpoint is loaded again
        self.chief, self.say = chief, say
        self.monitor = rec.train.monitor if has_val else rec.train.monitor.replace("val_", "")
        self.rows: list[dict[str, Any]] = []
        self.best: float | None = None
        self.best_epoch = 0
        self.epoch = 0  # epochs done
        self._t0 = 0.0
        self._lr0 = 0.0
        self._tb = None  # TensorBoard writer, opened at the first epoch's end (train.tensorboard)

    # -- state ----------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {"format": STATE_FORMAT, "epoch": self.epoch, "history": self.rows, "best_score": self.best,
                "best_epoch": self.best_epoch, "monitor": self.monitor, **self.model_info}

    def begin(self, resumed: dict | None) -> int:
        """The first epoch to train. `resumed`: the state inside `last` (reconciled into the run's files);
        None for a fresh run, whose initial `last` is written now so Ctrl-C in epoch 1 leaves a resumable run."""
        if resumed is None:
            if self.chief:
                self.save(self.last, self.state())
            return 0
        self.epoch = int(resumed.get("epoch", 0))
        self.rows = [r for r in resumed.get("history", []) if int(r.get("epoch", 0)) <= self.epoch]
        self.best, self.best_epoch = resumed.get("best_score"), int(resumed.get("best_epoch") or 0)
        if self.chief:
            self._reconcile(resumed)
        return self.epoch

    def _reconcile(self, resumed: dict) -> None:
        """Rewrite what `last` implies: best checkpoint, history.csv and run.json (each may lag after a kill)."""
        if self.best_epoch and self.best_epoch == self.epoch:
            have = self.read_state(self.best_path) if self.best_path.is_file() else {}
            if have.get("epoch") != self.epoch:
                _copy(self.last, self.best_path)
        write_history(self.run, self.rows)
        self.run.update_state(epochs_done=self.epoch, best_score=self.best, best_epoch=self.best_epoch,
                              monitor=self.monitor)

    # -- steps ----------------------------------------------------------------------------------------

    def lr(self, epoch: int, step: int) -> float:
        return recipe_mod.learning_rate_at(self.rec.train, epoch, step, self.steps)

    def begin_epoch(self, epoch: int) -> float:
        self._t0 = time.perf_counter()
        self._lr0 = self.lr(epoch, 0)
        return self._lr0

    def check_step(self, loss: float | None, bad: int, total: int) -> None:
        """After each step: a NaN/inf loss or too many undecodable clips stop the run (exit 1)."""
        if loss is not None and not math.isfinite(float(loss)):
            raise fail(f"epoch {self.epoch + 1}: the training loss became {float(loss)}; stopping (no checkpoint "
                       f"is written for this epoch; lower train.learning_rate or check the data)")
        check_budget(bad, total, self.rec.data.max_bad_fraction)

    # -- the end of an epoch ----------------------------------------------------------------------------

    def end_epoch(self, epoch: int, metrics: dict[str, float]) -> bool:
        """Record epoch `epoch` (0-based): commit `last`, then best, history and run.json. True: stop early."""
        for key, value in metrics.items():
            if value is not None and not math.isfinite(float(value)):
                raise fail(f"epoch {epoch + 1}: {key} is {float(value)}; stopping (no checkpoint is written for "
                           "this epoch; lower train.learning_rate or check the data)")
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in metrics.items() if v is not None},
               "lr": float(self._lr0), "seconds": round(time.perf_counter() - self._t0, 2)}
        score = metrics.get(self.monitor)
        improved = score is not None and (self.best is None or (
            score < self.best if self.monitor.endswith("loss") else score > self.best))
        self.rows = [r for r in self.rows if r["epoch"] <= epoch] + [row]
        self.epoch = epoch + 1
        if improved:
            self.best, self.best_epoch = float(score), epoch + 1
        if self.chief:
            self.save(self.last, self.state())  # the commit point
            fault_point("after-last")
            if improved:
                _copy(self.last, self.best_path)
            fault_point("after-best")
            write_history(self.run, self.rows)
            fault_point("after-history")
            self.run.update_state(status="training", epochs_done=self.epoch, best_score=self.best,
                                  best_epoch=self.best_epoch, monitor=self.monitor)
            self._tensorboard(row)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "seconds", "lr"))
        self.say(f"epoch {epoch + 1}/{self.rec.train.epochs}  {shown}  ({row['seconds']:.1f}s)"
                 f"{'  *best*' if improved else ''}")
        patience = self.rec.train.early_stopping
        if patience and self.epoch - self.best_epoch >= patience:
            self.say(f"early stopping: no improvement in {self.monitor} for {patience} epochs")
            return True
        return False

    def _tensorboard(self, row: dict[str, Any]) -> None:
        if not self.rec.train.tensorboard:
            return
        try:
            if self._tb is None:
                from vidcli.tensorboard import Writer

                self._tb = Writer(self.run.file("tensorboard"))
            self._tb.scalars(row["epoch"], {k: v for k, v in row.items() if k not in ("epoch", "seconds")})
        except OSError as exc:  # a log, not the run: say so once and train on without it
            warn(f"TensorBoard logs stop here: cannot write {self.run.file('tensorboard')} ({exc.strerror or exc})")
            self.rec.train.tensorboard = False
            self.close()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    # -- how it ends --------------------------------------------------------------------------------------

    def interrupted(self) -> VidcliError:
        self.close()
        if self.chief:
            self.run.update_state(status="interrupted")
        return VidcliError(f"interrupted; {self.run.path} keeps its checkpoint after epoch {self.epoch}: resume with "
                           f"`vidcli train --resume {self.run.path}`", exit_code=INTERRUPTED)

    def failed(self) -> None:
        self.close()
        if self.chief:
            self.run.update_state(status="failed")

    def finish(self, skipped: int) -> dict:
        self.close()
        if not self.chief:
            return {}
        if not self.best_path.is_file() and self.last.is_file():
            _copy(self.last, self.best_path)
        return self.run.update_state(status="finished", epochs_done=self.epoch, skipped_clips=skipped)

    def all_done(self) -> bool:
        if self.epoch >= self.rec.train.epochs:
            self.say(f"{self.run.path}: all {self.rec.train.epochs} epochs already done")
            return True
        return False


def check_budget(bad: int, total: int, limit: float) -> None:
    """Too many undecodable training clips stop the run (exit 1): the data, not the model, needs fixing."""
    if bad > limit * total:
        raise fail(f"{bad} of {total} training clips failed to decode (more than data.max_bad_fraction={limit}); "
                   "stopping")


def _copy(src: Path, dst: Path) -> None:
    with fsio.atomic_path(dst, suffix=dst.suffix) as tmp:
        shutil.copyfile(src, tmp)


def check_model(state: dict, arch: str, params: dict, num_classes: int, where: str,
                sample_shape: tuple[int, ...] | None = None) -> None:
    """A checkpoint must hold the model its run's recipe describes; otherwise one error naming the differences."""
    if not state or "arch" not in state:
        return  # written before vidcli recorded it: nothing to compare
    diffs = []
    if sample_shape is not None and state.get("sample_shape") not in (None, list(sample_shape)):
        diffs.append(f"input {state['sample_shape']} (recipe {list(sample_shape)}: data.frames, data.size)")
    if state["arch"] != arch:
        diffs.append(f"model.arch {state['arch']!r} (recipe {arch!r})")
    if state.get("num_classes") not in (None, num_classes):
        diffs.append(f"{state['num_classes']} classes (run {num_classes})")
    theirs = state.get("params") or {}
    for key in sorted(set(theirs) | set(params)):
        if key in ("pretrained", "imagenet_init"):
            continue
        a, b = theirs.get(key), params.get(key)
        if (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
            diffs.append(f"model.params.{key}={a!r} (recipe {b!r})")
    if diffs:
        raise VidcliError(f"{where}: the checkpoint holds another model: {', '.join(diffs)}")


def legacy_state(run: Run, epoch: int) -> dict:
    """The state of a checkpoint written before vidcli stored it inside: from the run's files."""
    from vidcli.runs import read_history

    info = run.state
    return {"epoch": epoch, "history": read_history(run), "best_score": info.get("best_score") if epoch else None,
            "best_epoch": info.get("best_epoch", 0) if epoch else 0}
