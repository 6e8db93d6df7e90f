"""The PyTorch backend (TSM): the same functions as the Keras backend, so the CLI never knows which runs.

Checkpoints (`last.pt` after every epoch, copied to `best.pt` when the monitored score improves) hold the
model, optimizer, schedule position, epoch and every RNG state, and load with `weights_only=True`. The
learning rate is a pure function of the epoch (step or cosine, per epoch as in the reference), so the
schedule's state is just the epoch it reached. history.csv and run.json match the Keras backend's.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vidcli import fsio
from vidcli import recipe as recipe_mod
from vidcli.backends.torch import data as tdata
from vidcli.backends.torch import tsm
from vidcli.backends.torch.tsm_import import read_checkpoint
from vidcli.console import log, progress, warn
from vidcli.datasets.source import Source
from vidcli.errors import VidcliError, fail
from vidcli.runs import Run, read_history, write_history

LAST, BEST = "last.pt", "best.pt"
FORMAT = "vidcli-tsm/1"
STRUCTURE = ("num_segments", "shift_div", "shift_place", "consensus", "is_shift", "width", "layers")


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def setup(train: recipe_mod.TrainConfig) -> None:
    """Seeds for torch, numpy and python; deterministic kernels when asked, so a CPU run repeats exactly."""
    random.seed(train.seed)
    np.random.seed(train.seed % 2**32)
    torch.manual_seed(train.seed)
    torch.use_deterministic_algorithms(train.deterministic, warn_only=True)


def params_of(rec: recipe_mod.Recipe) -> tsm.TsmParams:
    params = recipe_mod.from_dict(tsm.TsmParams, rec.model.params, "model.params")
    if rec.model.pretrained:
        if params.pretrained:
            raise VidcliError("model.pretrained and model.params.pretrained both set; keep one")
        params.pretrained = rec.model.pretrained
    if params.num_segments != rec.data.frames:
        raise VidcliError(f"model.params.num_segments ({params.num_segments}) must equal data.frames "
                          f"({rec.data.frames}): each segment gives the model one frame")
    return params


def build(rec: recipe_mod.Recipe, num_classes: int) -> tsm.TSM:
    """A fresh TSM, initialised from `model.pretrained` (a TSM release) or `imagenet_init` when given."""
    return tsm.build(params_of(rec), num_classes)


def optimizer(model: tsm.TSM, train: recipe_mod.TrainConfig) -> torch.optim.Optimizer:
    """No weight decay on biases and BatchNorm; the new head learns `head_lr_mult` faster (its bias twice
    that, the reference's 5x/10x when fine-tuning)."""
    groups: dict[str, list] = {"decay": [], "no_decay": [], "head_w": [], "head_b": []}
    for name, p in model.named_parameters():
        if name.startswith("new_fc."):
            groups["head_w" if name.endswith("weight") else "head_b"].append(p)
        else:
            groups["decay" if p.ndim > 1 else "no_decay"].append(p)
    m, wd = train.head_lr_mult, train.weight_decay
    spec = {"decay": (1.0, wd), "no_decay": (1.0, 0.0), "head_w": (m, wd), "head_b": (2 * m if m > 1 else m, 0.0)}
    param_groups = [{"params": ps, "lr_mult": spec[k][0], "weight_decay": spec[k][1]} for k, ps in groups.items() if ps]
    lr = train.learning_rate
    if train.optimizer == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=train.momentum)
    return (torch.optim.AdamW if wd else torch.optim.Adam)(param_groups, lr=lr)


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr * g.get("lr_mult", 1.0)


def _rng_state() -> dict:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: Mapping) -> None:
    torch.set_rng_state(state["torch"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, model: tsm.TSM, params: tsm.TsmParams, opt: torch.optim.Optimizer,
                    train: recipe_mod.TrainConfig, epoch: int) -> None:
    state = {
        "format": FORMAT, "arch": "tsm", "params": dataclasses.asdict(params), "num_classes": model.num_classes,
        "model": model.state_dict(), "optimizer": opt.state_dict(),
        "scheduler": {"schedule": train.schedule, "epoch": epoch,
                      "lr": recipe_mod.learning_rate_at(train, max(epoch - 1, 0))},
        "epoch": epoch, "rng": _rng_state(),
    }
    with fsio.atomic_path(path, suffix=".pt") as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, params: tsm.TsmParams | None = None) -> dict:
    """A vidcli TSM training checkpoint, checked to be one and to fit `params` before anything is loaded."""
    ck = read_checkpoint(path)
    if not isinstance(ck, Mapping) or ck.get("format") != FORMAT:
        if isinstance(ck, Mapping) and ("state_dict" in ck or any(str(k).startswith(("base_model.", "module."))
                                                                  for k in ck)):
            raise VidcliError(f"{path}: a TSM release or bare state_dict, not a vidcli training checkpoint; "
                              "give it as model.pretrained")
        arch = ck.get("arch") if isinstance(ck, Mapping) else None
        raise VidcliError(f"{path}: not a vidcli TSM checkpoint" + (f" (arch {arch!r})" if arch else ""))
    if ck.get("arch") != "tsm":
        raise VidcliError(f"{path}: a checkpoint for arch {ck.get('arch')!r}, not 'tsm'")
    if params is not None:
        want = dataclasses.asdict(params)
        diff = [f"{k}={ck['params'].get(k)!r} (recipe {want[k]!r})" for k in STRUCTURE
                if ck["params"].get(k) != want[k]]
        if diff:
            raise VidcliError(f"{path}: trained with other model.params: {', '.join(diff)}")
    return ck


def _model_from(ck: dict) -> tsm.TSM:
    fields = {f.name for f in dataclasses.fields(tsm.TsmParams)}
    params = tsm.TsmParams(**{k: v for k, v in ck["params"].items() if k in fields})
    params.pretrained = params.imagenet_init = None  # the checkpoint already holds every weight
    model = tsm.build(params, int(ck["num_classes"]))
    try:
        model.load_state_dict(ck["model"], strict=True)
    except RuntimeError as exc:
        raise VidcliError(f"checkpoint weights do not fit the model ({str(exc).splitlines()[0]})") from exc
    return model


def class_weights(source: Source, mode: str) -> torch.Tensor | None:
    if mode != "balanced":
        return None
    counts = np.bincount(source.labels, minlength=len(source.classes)).astype(np.float64)
    w = np.where(counts > 0, len(source.labels) / (len(source.classes) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


class _Trainer:
    def __init__(self, run: Run, rec: recipe_mod.Recipe, train_src: Source, val_src: Source | None):
        self.run, self.rec, self.src, self.val_src = run, rec, train_src, val_src
        self.dev = device()
        self.amp = rec.train.precision != "float32" and self.dev.type == "cuda"
        if rec.train.precision != "float32" and not self.amp:
            warn(f"train.precision {rec.train.precision} needs CUDA; training in float32 on the CPU")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.dataset = tdata.TrainClips(train_src, rec.train.seed)
        cw = class_weights(train_src, rec.train.class_weights)
        self.cw = cw.to(self.dev) if cw is not None else None

    def epoch(self, model: tsm.TSM, opt: torch.optim.Optimizer, epoch: int) -> dict:
        rec, src = self.rec, self.src
        self.dataset.set_epoch(epoch)
        loader = tdata.train_loader(self.dataset, rec.train.batch_size, rec.data.workers)
        model.train()
        total = correct = 0.0
        loss_sum = 0.0
        with progress(len(loader), f"epoch {epoch + 1}/{rec.train.epochs}") as advance:
            for clips, y, ok, idx, errors in loader:
                for i, ok_i, err in zip(idx.tolist(), ok.tolist(), errors, strict=True):
                    if not ok_i and src.record_failure(i):
                        warn(f"skipping clip: {err}")
                if len(src.failed) > rec.data.max_bad_fraction * len(src):
                    raise fail(f"{len(src.failed)} of {len(src)} training clips failed to decode "
                               f"(more than data.max_bad_fraction={rec.data.max_bad_fraction}); stopping")
                x, y, w = tdata.to_input(clips.to(self.dev)), y.to(self.dev), ok.float().to(self.dev)
                with torch.autocast(self.dev.type, dtype=torch.float16, enabled=self.amp):
                    logits = model(x)
                per = F.cross_entropy(logits.float(), y, weight=self.cw, reduction="none") * w
                loss = per.sum() / w.sum().clamp(min=1.0)
                opt.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
                if rec.train.clip_grad_norm:
                    self.scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(model.parameters(), rec.train.clip_grad_norm)
                self.scaler.step(opt)
                self.scaler.update()
                n = float(w.sum())
                loss_sum += float(per.detach().sum())
                correct += float(((logits.argmax(1) == y).float() * w).sum())
                total += n
                advance(1)
        return {"loss": loss_sum / max(total, 1.0), "accuracy": correct / max(total, 1.0)}

    def validate(self, model: tsm.TSM) -> dict:
        logits = predict_source(model, self.val_src, self.rec.train.batch_size, self.rec.data.workers)
        y = torch.from_numpy(self.val_src.labels)
        lt = torch.from_numpy(logits)
        return {"val_loss": float(F.cross_entropy(lt, y)), "val_accuracy": float((lt.argmax(1) == y).float().mean())}


def fit(run: Run, rec: recipe_mod.Recipe, train_src: Source, val_src: Source | None, resume: bool) -> dict:
    setup(rec.train)
    params = params_of(rec)
    tr = _Trainer(run, rec, train_src, val_src)
    last = run.file(LAST)
    if resume and last.is_file():
        ck = load_checkpoint(last, params)
        model = _model_from(ck).to(tr.dev)
        opt = optimizer(model, rec.train)
        try:
            opt.load_state_dict(ck["optimizer"])
        except (ValueError, KeyError) as exc:
            raise VidcliError(f"{last}: optimizer state does not fit train.optimizer={rec.train.optimizer} "
                              f"({exc})") from exc
        _set_rng_state(ck["rng"])
        first_epoch = int(ck["epoch"])
        log(f"resuming {run.path} from epoch {first_epoch}")
    else:
        model = tsm.build(params, len(train_src.classes)).to(tr.dev)
        opt = optimizer(model, rec.train)
        first_epoch = 0
    if first_epoch >= rec.train.epochs:
        log(f"{run.path}: all {rec.train.epochs} epochs already done")
        return run.update_state(status="finished")
    state = run.state
    rows = [r for r in read_history(run) if r["epoch"] <= first_epoch]
    monitor = rec.train.monitor if val_src is not None else rec.train.monitor.replace("val_", "")
    best = state.get("best_score") if first_epoch else None
    best_epoch = state.get("best_epoch", 0) if first_epoch else 0
    run.update_state(status="training", params=sum(p.numel() for p in model.parameters()), device=str(tr.dev))
    epoch = first_epoch
    try:
        for epoch in range(first_epoch, rec.train.epochs):
            lr = recipe_mod.learning_rate_at(rec.train, epoch)
            _set_lr(opt, lr)
            t0 = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch + 1, **tr.epoch(model, opt, epoch)}
            if val_src is not None:
                row.update(tr.validate(model))
            row.update(lr=float(lr), seconds=round(time.perf_counter() - t0, 2))
            rows.append(row)
            save_checkpoint(last, model, params, opt, rec.train, epoch + 1)
            score = row[monitor]
            improved = best is None or (score < best if monitor.endswith("loss") else score > best)
            if improved:
                best, best_epoch = float(score), epoch + 1
                with fsio.atomic_path(run.file(BEST), suffix=".pt") as tmp:
                    shutil.copyfile(last, tmp)
            write_history(run, rows)
            run.update_state(status="training", epochs_done=epoch + 1, best_score=best, best_epoch=best_epoch,
                             monitor=monitor)
            shown = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "seconds", "lr"))
            log(f"epoch {epoch + 1}/{rec.train.epochs}  {shown}  ({row['seconds']:.1f}s)"
                f"{'  *best*' if improved else ''}")
            patience = rec.train.early_stopping
            if patience and epoch + 1 - best_epoch >= patience:
                log(f"early stopping: no improvement in {monitor} for {patience} epochs")
                break
    except KeyboardInterrupt:
        if not last.is_file():
            save_checkpoint(last, model, params, opt, rec.train, epoch)
        run.update_state(status="interrupted")
        done = run.state.get("epochs_done", 0)
        raise VidcliError(f"interrupted; {run.path} keeps its checkpoint after epoch {done}: resume with "
                          f"`vidcli train --resume {run.path}`", exit_code=130) from None
    except VidcliError:
        run.update_state(status="failed")
        raise
    return run.update_state(status="finished", skipped_clips=len(train_src.failed))


@torch.no_grad()
def predict_source(model: tsm.TSM, source: Source, batch_size: int, workers: int, clips: int = 1,
                   crops: int = 1) -> np.ndarray:
    """Logits (N, C), averaged over `clips` x `crops` views per video as the reference's test script does."""
    model.eval()
    dev = next(model.parameters()).device
    out = []
    loader = tdata.eval_loader(source, batch_size, workers, clips, crops)
    with progress(len(loader), "predict") as advance:
        for x, _, err in loader:
            if err:
                raise VidcliError(err)
            b, v = x.shape[:2]
            logits = model(tdata.to_input(x.to(dev)).flatten(0, 1))
            out.append(logits.float().reshape(b, v, -1).mean(1).cpu().numpy())
            advance(1)
    return np.concatenate(out).astype(np.float32)


def checkpoint_of(run: Run) -> Path:
    return run.file(BEST) if run.file(BEST).is_file() else run.file(LAST)


def load_for_run(run: Run) -> tsm.TSM:
    path = checkpoint_of(run)
    if not path.is_file():
        raise VidcliError(f"{run.path}: no checkpoint (best.pt / last.pt); has it been trained?")
    ck = load_checkpoint(path, params_of(run.recipe))
    labels = run.labels
    if int(ck["num_classes"]) != len(labels):
        raise VidcliError(f"{path}: {ck['num_classes']} classes, but {run.path} has {len(labels)} labels")
    return _model_from(ck).to(device()).eval()


@torch.no_grad()
def predict_batch(model: tsm.TSM, batch: np.ndarray) -> np.ndarray:
    """Logits for an already normalised NTCHW float batch (the ONNX input layout)."""
    model.eval()
    dev = next(model.parameters()).device
    return model(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(dev)).float().cpu().numpy()


def export_onnx(run: Run, sample: np.ndarray, opset: int) -> tuple[bytes, np.ndarray]:
    """ONNX bytes (dynamic batch; the shift traces to slices + concat) and PyTorch's logits on `sample`."""
    model = load_for_run(run).cpu().eval()
    return onnx_bytes(model, sample, opset), predict_batch(model, sample)


def onnx_bytes(model: tsm.TSM, sample: np.ndarray, opset: int) -> bytes:
    x = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32))
    with tempfile.TemporaryDirectory(prefix="vidcli-export-") as tmp:
        path = Path(tmp) / "model.onnx"
        with torch.no_grad():
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset, input_names=["clips"],
                              output_names=["logits"], dynamic_axes={"clips": {0: "batch"}, "logits": {0: "batch"}})
        return path.read_bytes()
