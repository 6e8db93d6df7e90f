"""The framework-free epoch engine: learning rate per step, NaN/inf, the bad-clip budget, the end-of-epoch commit and
how a run killed between its writes is reconciled on resume. A fake `save` stands in for the framework."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from vidcli import engine as engine_mod
from vidcli import recipe as recipe_mod
from vidcli import runs
from vidcli.engine import EpochEngine, check_model
from vidcli.errors import VidcliError


def _recipe(**train) -> recipe_mod.Recipe:
    return recipe_mod.from_dict(recipe_mod.Recipe, {"name": "e", "train": {"epochs": 4, "learning_rate": 0.1,
                                                                             **train}})


def _save(path: Path, state: dict) -> None:
    """A checkpoint that is just its state (what a framework's file stores besides the weights)."""
    path.write_text(json.dumps(state))


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _engine(run: runs.Run, rec: recipe_mod.Recipe, steps: int = 4) -> EpochEngine:
    return EpochEngine(run, rec, steps=steps, has_val=True, save=_save, read_state=_read, suffix=".ck",
                       model_info={"arch": "r2plus1d", "params": {}, "num_classes": 3})


@pytest.fixture
def run(tmp_path) -> runs.Run:
    return runs.start(tmp_path / "runs", _recipe(), ["a", "b", "c"], "keras")


def test_warmup_rises_step_by_step_from_near_zero():
    rec = _recipe(warmup_epochs=2, schedule="cosine")
    lrs = [recipe_mod.learning_rate_at(rec.train, e, s, 5) for e in range(2) for s in range(5)]
    assert lrs[0] == pytest.approx(0.01) and lrs[-1] == pytest.approx(0.1)  # base / 10 warm-up steps ... base
    assert all(b > a for a, b in zip(lrs, lrs[1:], strict=False))
    assert recipe_mod.learning_rate_at(rec.train, 2, 0, 5) == pytest.approx(0.1)  # cosine starts after warm-up
    assert recipe_mod.learning_rate_at(rec.train, 3, 0, 5) == pytest.approx(0.05)
    assert recipe_mod.learning_rate_at(_recipe().train, 0, 0, 5) == 0.1  # no warm-up: the full rate at once


def test_history_lr_is_the_rate_at_the_epochs_first_step(run):
    eng = _engine(run, _recipe(warmup_epochs=1))
    eng.begin(None)
    eng.begin_epoch(0)
    eng.end_epoch(0, {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5})
    eng.begin_epoch(1)
    eng.end_epoch(1, {"loss": 0.9, "accuracy": 0.6, "val_loss": 0.9, "val_accuracy": 0.6})
    assert [r["lr"] for r in runs.read_history(run)] == pytest.approx([0.025, 0.1])


def test_nan_or_inf_loss_stops_with_exit_1_and_no_checkpoint_for_the_epoch(run):
    eng = _engine(run, _recipe())
    eng.begin(None)
    eng.begin_epoch(0)
    for bad in (math.nan, math.inf):
        with pytest.raises(VidcliError, match="loss became") as err:
            eng.check_step(bad, 0, 10)
        assert err.value.exit_code == 1
    with pytest.raises(VidcliError, match="val_loss is nan"):
        eng.end_epoch(0, {"loss": 1.0, "val_loss": math.nan})
    assert not run.file("best.ck").exists() and _read(run.file("last.ck"))["epoch"] == 0


def test_bad_clip_budget(run):
    eng = _engine(run, _recipe())
    eng.check_step(1.0, 0, 10)
    with pytest.raises(VidcliError, match="1 of 10 training clips failed") as err:
        eng.check_step(1.0, 1, 10)
    assert err.value.exit_code == 1


def _train(run: runs.Run, scores: list[float], start: dict | None = None) -> EpochEngine:
    """Epochs whose val_accuracy follows `scores`."""
    eng = _engine(run, _recipe())
    first = eng.begin(start)
    for epoch, score in enumerate(scores[first:], first):
        eng.begin_epoch(epoch)
        eng.end_epoch(epoch, {"loss": 1 - score, "accuracy": score, "val_loss": 1 - score, "val_accuracy": score})
    return eng


class Killed(BaseException):
    """Stands for kill -9: nothing after the fault point runs, no cleanup either."""


@pytest.mark.parametrize("fault", ["after-last", "after-best", "after-history"])
def test_a_kill_between_the_epoch_writes_loses_nothing(tmp_path, monkeypatch, fault):
    """The commit writes last (with the state inside), then best, history.csv, run.json: whichever write a kill
    interrupts, resuming rebuilds the same history, best score and best checkpoint as an uninterrupted run.
    (tests/test_resume_faults.py does the same with real SIGKILLs of `vidcli train`.)"""
    scores = [0.3, 0.6, 0.9]
    whole = runs.start(tmp_path / "a", _recipe(), ["a"], "keras")
    _train(whole, scores)
    cut = runs.start(tmp_path / "b", _recipe(), ["a"], "keras")
    calls = []

    def point(name: str) -> None:
        calls.append(name)
        if name == fault and len(calls) > 6:  # the third epoch's commit
            raise Killed

    monkeypatch.setattr(engine_mod, "fault_point", point)
    with pytest.raises(Killed):
        _train(cut, scores)
    monkeypatch.undo()
    assert _train(cut, scores, start=_read(cut.file("last.ck"))).epoch == 3
    assert runs.read_history(cut) == [{**r, "seconds": pytest.approx(r["seconds"], abs=5)}
                                      for r in runs.read_history(whole)]
    assert cut.state["best_epoch"] == whole.state["best_epoch"] == 3
    assert _read(cut.file("best.ck"))["epoch"] == 3


def test_resume_reconciles_a_best_checkpoint_that_lags(run):
    _train(run, [0.3, 0.6])
    run.file("best.ck").write_text(json.dumps({"epoch": 1}))  # best was being copied when the run was killed
    (run.path / "history.csv").write_text("epoch,loss\n1,0.7\n")  # history lagged one epoch
    eng = _engine(run, _recipe())
    assert eng.begin(_read(run.file("last.ck"))) == 2
    assert _read(run.file("best.ck"))["epoch"] == 2 and len(runs.read_history(run)) == 2


def test_early_stopping_and_all_done(run):
    rec = _recipe(early_stopping=1)
    eng = _engine(run, rec)
    eng.begin(None)
    eng.begin_epoch(0)
    assert not eng.end_epoch(0, {"val_accuracy": 0.5})
    eng.begin_epoch(1)
    assert eng.end_epoch(1, {"val_accuracy": 0.4})  # no improvement for 1 epoch: stop
    again = _engine(run, _recipe(epochs=2))
    again.begin(_read(run.file("last.ck")))
    assert again.all_done()


def test_damaged_history_is_one_line(run):
    (run.path / "history.csv").write_text("epoch,loss\n1,0.5\n2,zz\n")
    with pytest.raises(VidcliError, match=r"history.csv:3: damaged row"):
        runs.read_history(run)


def test_check_model_names_every_difference():
    state = {"arch": "r2plus1d", "params": {"filters": [4, 8], "norm": "batch"}, "num_classes": 3,
             "sample_shape": [4, 32, 32, 3]}
    check_model(state, "r2plus1d", {"filters": [4, 8], "norm": "batch"}, 3, "x", (4, 32, 32, 3))
    with pytest.raises(VidcliError) as err:
        check_model(state, "vivit", {"filters": [8, 16], "norm": "batch"}, 5, "last.keras", (4, 64, 64, 3))
    text = str(err.value)
    assert text.startswith("last.keras: the checkpoint holds another model")
    assert "model.arch 'r2plus1d' (recipe 'vivit')" in text and "5" in text and "filters=[4, 8]" in text
    assert "data.size" in text
    check_model({}, "vivit", {}, 3, "old.keras")  # a checkpoint from before vidcli recorded its model: no check
