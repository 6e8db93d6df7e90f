"""The PyTorch backend (TSM): the same functions as the Keras backend, so the CLI never knows which runs.

Checkpoints (`last.pt` after every epoch, copied to `best.pt` when the monitored score improves) hold the
model, optimizer, schedule position, epoch and every RNG state, and load with `weights_only=True`. The
learning rate is a pure function of the epoch (step or cosine, per epoch as in the reference), so the
schedule's state is just the epoch it reached. history.csv and run.json match the Keras backend's.

Under `torchrun --nproc-per-node N -m vidcli train RECIPE` every process runs `fit` with the same recipe:
- the model is wrapped in DistributedDataParallel (`nccl` on CUDA, `gloo` on CPU); checkpoints hold the
  bare module's weights, so eval, export and resume read them as single-process ones;
- `train.batch_size` is the global batch: each rank takes batch_size / N clips of its shard of the epoch's
  single-process order, and a step's loss is sum(weight * CE) / (real clips in the global batch), so the
  gradients DDP averages are those of the single-process batch (BatchNorm statistics stay per process
  unless `train.sync_bn`);
- loss and accuracy sums, validation sums (each rank scores its share of the val set), bad clips and the
  early-stopping decision are reduced across ranks: every rank logs the same numbers and stops together;
- rank 0 alone logs, shows progress and writes checkpoints (see `vidcli.training` for the run folder).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidcli import distributed, fsio
from vidcli import recipe as recipe_mod
from vidcli.backends.torch import data as tdata
from vidcli.backends.torch import tsm
from vidcli.backends.torch.tsm_import import read_checkpoint
from vidcli.console import Advance, log, progress, warn
from vidcli.datasets.source import Source
from vidcli.errors import VidcliError, fail
from vidcli.runs import Run, read_history, write_history

LAST, BEST = "last.pt", "best.pt"
FORMAT = "vidcli-tsm/1"
STRUCTURE = ("num_segments", "shift_div", "shift_place", "consensus", "is_shift", "width", "layers")
AMP = {"mixed_float16": torch.float16, "mixed_bfloat16": torch.bfloat16}


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def setup(train: recipe_mod.TrainConfig) -> None:
    """Seeds for torch, numpy and python; deterministic kernels when asked, so a run repeats exactly.

    Runs before any CUDA work: cuBLAS reads its workspace setting when it starts.
    """
    random.seed(train.seed)
    np.random.seed(train.seed % 2**32)
    torch.manual_seed(train.seed)
    if train.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(train.deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not train.deterministic
    torch.backends.cudnn.deterministic = train.deterministic


class Comm:
    """This process's place in a torchrun job (rank 0 of 1 without one) and the collectives training needs."""

    def __init__(self, rank: int = 0, world: int = 1, dev: torch.device | None = None):
        self.rank, self.world = rank, world
        self.dev = dev if dev is not None else device()

    @property
    def chief(self) -> bool:
        return self.rank == 0

    def log(self, message: str) -> None:
        if self.chief:
            log(message)

    def warn(self, message: str) -> None:
        if self.chief:
            warn(message)

    @contextlib.contextmanager
    def progress(self, total: int, description: str) -> Iterator[Advance]:
        if not self.chief:
            yield lambda n=1: None
            return
        with progress(total, description) as advance:
            yield advance

    def sum_(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over all ranks (in place)."""
        if self.world > 1:
            torch.distributed.all_reduce(t)
        return t

    def sum_floats(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        return self.sum_(torch.tensor(values, dtype=torch.float64, device=self.dev)).tolist()

    def gather(self, items: list) -> list:
        """Every rank's `items`, concatenated in rank order."""
        if self.world == 1:
            return items
        parts: list = [None] * self.world
        torch.distributed.all_gather_object(parts, items)
        return [x for part in parts for x in part]

    def agree(self, flag: bool) -> bool:
        """Rank 0's `flag` on every rank: a decision no rank may take alone."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.dev)
        torch.distributed.broadcast(t, src=0)
        return bool(t.item())

    def share_buffers(self, model: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank: DDP syncs them before each forward,
        so after an epoch every rank holds the statistics of its own last batch."""
        if self.world > 1:
            for b in model.buffers():
                torch.distributed.broadcast(b, src=0)

    def barrier(self) -> None:
        if self.world > 1:
            ids = [self.dev.index] if self.dev.type == "cuda" else None
            torch.distributed.barrier(device_ids=ids)


def connect(train: recipe_mod.TrainConfig) -> Comm:
    """Join the torchrun job this process belongs to (env:// rendezvous), or a one-process Comm without one."""
    role = distributed.torchrun_role()
    if role is None:
        return Comm()
    if train.batch_size % role.world:
        raise VidcliError(f"train.batch_size {train.batch_size} does not split over {role.world} processes; "
                          f"use a multiple of {role.world} (it is the global batch)")
    if not torch.distributed.is_available():
        raise VidcliError("this PyTorch build has no torch.distributed; run without torchrun")
    dev = torch.device("cpu")
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise VidcliError(f"LOCAL_RANK {local}, but this machine has {torch.cuda.device_count()} GPU(s); "
                              "give torchrun --nproc-per-node at most that many")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    try:
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method="env://")
    except (ValueError, RuntimeError) as exc:
        raise VidcliError(f"could not join the torchrun process group ({str(exc).splitlines()[0]})") from exc
    comm = Comm(role.rank, role.world, dev)
    comm.barrier()  # every rank has its copy of the run before rank 0 writes to it
    return comm


def disconnect(comm: Comm) -> None:
    if comm.world > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class SyncBatchNorm2d(nn.SyncBatchNorm, nn.BatchNorm2d):
    """A SyncBatchNorm that is still a BatchNorm2d.

    TSM's partial BN finds its layers by that type and keeps all but the first in eval mode; a layer in
    eval mode normalises with its running statistics and never synchronises, so only the first syncs.
    """


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm2d under `module` made a `SyncBatchNorm2d` holding the same parameters and buffers."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, nn.SyncBatchNorm):
            new = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                  child.track_running_stats)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            new.running_mean, new.running_var = child.running_mean, child.running_var
            new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(module, name, new)
        else:
            sync_batchnorm(child)
    return module


def params_of(rec: recipe_mod.Recipe) -> tsm.TsmParams:
    from vidcli.backends import registry

    params = registry.check_recipe(rec)
    params.pretrained = params.pretrained or rec.model.pretrained
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
            "python": random.getstate(), "cuda": _cuda_rng_states()}


def _cuda_rng_states() -> list[torch.Tensor]:
    if not torch.cuda.is_available():
        return []
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return [torch.cuda.get_rng_state()]  # a torchrun process keeps off the other ranks' GPUs
    return torch.cuda.get_rng_state_all()


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
    def __init__(self, run: Run, rec: recipe_mod.Recipe, train_src: Source, val_src: Source | None, comm: Comm):
        self.run, self.rec, self.src, self.val_src, self.comm = run, rec, train_src, val_src, comm
        self.dev = comm.dev
        cuda = self.dev.type == "cuda"
        precision = rec.train.precision
        self.amp = AMP.get(precision) if cuda else None
        if precision != "float32" and not cuda:
            comm.warn(f"train.precision {precision} needs CUDA; training in float32 on the CPU")
        if self.amp == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise VidcliError("train.precision mixed_bfloat16: this GPU has no bfloat16 support; "
                              "use mixed_float16")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)  # bf16 needs no scaling
        self.channels_last = rec.train.channels_last
        self.dataset = tdata.TrainClips(train_src, rec.train.seed, comm.rank, comm.world)
        cw = class_weights(train_src, rec.train.class_weights)
        self.cw = cw.to(self.dev) if cw is not None else None

    def place(self, model: tsm.TSM) -> tsm.TSM:
        """On this rank's device, with SyncBatchNorm and channels-last when the recipe asks for them."""
        if self.rec.train.sync_bn:
            if self.comm.world == 1:
                warn("train.sync_bn needs several processes (torchrun --nproc-per-node N); ignored")
            elif self.dev.type != "cuda":
                self.comm.warn("train.sync_bn: PyTorch syncs BatchNorm on GPUs only; on the CPU each process "
                               "keeps its own batch statistics")
            else:
                model = sync_batchnorm(model)
        model = model.to(self.dev)
        if self.channels_last:  # TSM folds time into the batch: its convolutions all see (B*T, C, H, W)
            model = model.to(memory_format=torch.channels_last)
        return model

    def wrap(self, model: tsm.TSM) -> nn.Module:
        """DistributedDataParallel around `model` in a torchrun job; `model` itself otherwise."""
        if self.comm.world == 1:
            return model
        ids = [self.dev.index] if self.dev.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def _count_failures(self, bad: list[tuple[int, str]]) -> None:
        """Record failed clips (every rank records every rank's) and stop once over budget."""
        src, rec = self.src, self.rec
        for i, err in bad:
            if src.record_failure(i):
                self.comm.warn(f"skipping clip: {err}")
        if len(src.failed) > rec.data.max_bad_fraction * len(src):
            raise fail(f"{len(src.failed)} of {len(src)} training clips failed to decode "
                       f"(more than data.max_bad_fraction={rec.data.max_bad_fraction}); stopping")

    def epoch(self, model: nn.Module, opt: torch.optim.Optimizer, epoch: int) -> dict:
        rec, comm = self.rec, self.comm
        self.dataset.set_epoch(epoch)
        if comm.world > 1:  # dropout differs across ranks and a resumed run draws the same
            torch.manual_seed(int(np.random.default_rng([rec.train.seed, epoch, comm.rank]).integers(2**62)))
        loader = tdata.train_loader(self.dataset, rec.train.batch_size // comm.world, rec.data.workers)
        model.train()
        total = correct = 0.0
        loss_sum = 0.0
        with comm.progress(len(loader), f"epoch {epoch + 1}/{rec.train.epochs}") as advance:
            for clips, y, ok, idx, errors, real in loader:
                bad = [(i, err) for i, ok_i, real_i, err in zip(idx.tolist(), ok.tolist(), real.tolist(), errors,
                                                               strict=True) if real_i and not ok_i]
                w = (ok & real).float().to(self.dev)
                if comm.world == 1:
                    count = w.sum().clamp(min=1.0)
                else:  # the global batch's real clips; DDP averages gradients, so count / world per rank
                    count, n_bad = comm.sum_(torch.stack([w.sum(), w.new_tensor(len(bad))]))
                    count = count.clamp(min=1.0) / comm.world
                    bad = comm.gather(bad) if n_bad.item() else []
                self._count_failures(bad)
                y = y.to(self.dev)
                logits, per = self.step(model, opt, clips, y, w, count)
                n = float(w.sum())
                loss_sum += float(per.detach().sum())
                correct += float(((logits.argmax(1) == y).float() * w).sum())
                total += n
                advance(1)
        loss_sum, correct, total = comm.sum_floats([loss_sum, correct, total])
        return {"loss": loss_sum / max(total, 1.0), "accuracy": correct / max(total, 1.0)}

    def step(self, model: nn.Module, opt: torch.optim.Optimizer, clips: torch.Tensor, y: torch.Tensor,
             w: torch.Tensor, count: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step on uint8 clips (on any device): autocast, loss scaling, clipping.
        Returns the logits and the weighted per-clip losses; `count` is the loss denominator."""
        rec = self.rec
        x = tdata.to_input(clips.to(self.dev), self.channels_last)
        with torch.autocast(self.dev.type, dtype=self.amp or torch.float16, enabled=self.amp is not None):
            logits = model(x)
        per = F.cross_entropy(logits.float(), y, weight=self.cw, reduction="none") * w
        loss = per.sum() / count
        opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if rec.train.clip_grad_norm:
            self.scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), rec.train.clip_grad_norm)
        self.scaler.step(opt)
        self.scaler.update()
        return logits, per

    def validate(self, model: tsm.TSM) -> dict:
        """Each rank scores every world-th validation clip with the bare model (rank 0's, the checkpoint's,
        BatchNorm statistics); the sums are reduced."""
        comm, src = self.comm, self.val_src
        assert src is not None
        comm.share_buffers(model)
        mine = np.arange(comm.rank, len(src), comm.world)
        sums, err = [0.0, 0.0], ""
        try:
            if len(mine):
                logits = predict_source(model, src, self.rec.train.batch_size // comm.world, self.rec.data.workers,
                                        indices=mine if comm.world > 1 else None, show_progress=comm.chief)
                lt, y = torch.from_numpy(logits), torch.from_numpy(src.labels[mine])
                sums = [float(F.cross_entropy(lt, y, reduction="sum")), float((lt.argmax(1) == y).sum())]
        except VidcliError as exc:
            if comm.world == 1:
                raise
            err = str(exc)
        loss, correct, failed = comm.sum_floats([*sums, float(bool(err))])
        if failed:  # every rank stops here, not only the one whose clip failed
            raise VidcliError(err or "validation failed in another process; see its error")
        return {"val_loss": loss / len(src), "val_accuracy": correct / len(src)}


def fit(run: Run, rec: recipe_mod.Recipe, train_src: Source, val_src: Source | None, resume: bool) -> dict:
    """Train `run` (see the module notes for a torchrun job); the process group lives only inside."""
    setup(rec.train)
    params = params_of(rec)
    comm = connect(rec.train)
    try:
        return _fit(run, rec, params, train_src, val_src, resume, comm)
    finally:
        disconnect(comm)


def _fit(run: Run, rec: recipe_mod.Recipe, params: tsm.TsmParams, train_src: Source, val_src: Source | None,
         resume: bool, comm: Comm) -> dict:
    tr = _Trainer(run, rec, train_src, val_src, comm)
    last = run.file(LAST)
    if resume and last.is_file():
        ck = load_checkpoint(last, params)
        model = tr.place(_model_from(ck))
        opt = optimizer(model, rec.train)
        try:
            opt.load_state_dict(ck["optimizer"])
        except (ValueError, KeyError) as exc:
            raise VidcliError(f"{last}: optimizer state does not fit train.optimizer={rec.train.optimizer} "
                              f"({exc})") from exc
        if comm.world == 1:  # a torchrun job reseeds every rank each epoch (`_Trainer.epoch`)
            _set_rng_state(ck["rng"])
        first_epoch = int(ck["epoch"])
        comm.log(f"resuming {run.path} from epoch {first_epoch}")
    else:
        model = tr.place(tsm.build(params, len(train_src.classes)))
        opt = optimizer(model, rec.train)
        first_epoch = 0
    if first_epoch >= rec.train.epochs:
        comm.log(f"{run.path}: all {rec.train.epochs} epochs already done")
        return run.update_state(status="finished")
    net = tr.wrap(model)
    state = run.state
    rows = [r for r in read_history(run) if r["epoch"] <= first_epoch]
    monitor = rec.train.monitor if val_src is not None else rec.train.monitor.replace("val_", "")
    best = state.get("best_score") if first_epoch else None
    best_epoch = state.get("best_epoch", 0) if first_epoch else 0
    run.update_state(status="training", params=sum(p.numel() for p in model.parameters()), device=str(tr.dev),
                     world_size=comm.world)
    epoch = first_epoch
    try:
        for epoch in range(first_epoch, rec.train.epochs):
            lr = recipe_mod.learning_rate_at(rec.train, epoch)
            _set_lr(opt, lr)
            t0 = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch + 1, **tr.epoch(net, opt, epoch)}
            if val_src is not None:
                row.update(tr.validate(model))
            row.update(lr=float(lr), seconds=round(time.perf_counter() - t0, 2))
            rows.append(row)
            if comm.chief:  # other ranks' run folders are scratch copies
                save_checkpoint(last, model, params, opt, rec.train, epoch + 1)
            score = row[monitor]
            improved = best is None or (score < best if monitor.endswith("loss") else score > best)
            if improved:
                best, best_epoch = float(score), epoch + 1
                if comm.chief:
                    with fsio.atomic_path(run.file(BEST), suffix=".pt") as tmp:
                        shutil.copyfile(last, tmp)
            write_history(run, rows)
            run.update_state(status="training", epochs_done=epoch + 1, best_score=best, best_epoch=best_epoch,
                             monitor=monitor)
            shown = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "seconds", "lr"))
            comm.log(f"epoch {epoch + 1}/{rec.train.epochs}  {shown}  ({row['seconds']:.1f}s)"
                     f"{'  *best*' if improved else ''}")
            patience = rec.train.early_stopping
            if comm.agree(bool(patience) and epoch + 1 - best_epoch >= patience):
                comm.log(f"early stopping: no improvement in {monitor} for {patience} epochs")
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
                   crops: int = 1, indices: np.ndarray | None = None, show_progress: bool = True) -> np.ndarray:
    """Logits (N, C), averaged over `clips` x `crops` views per video as the reference's test script does.

    `indices` scores only those clips (in that order).
    """
    model.eval()
    dev = next(model.parameters()).device
    out = []
    loader = tdata.eval_loader(source, batch_size, workers, clips, crops, indices)
    bar = progress(len(loader), "predict") if show_progress else contextlib.nullcontext(lambda n=1: None)
    with bar as advance:
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


# -- benchmark support (`vidcli benchmark`) ----------------------------------------------------------


def save_untrained(run: Run, rec: recipe_mod.Recipe, num_classes: int, sample_shape: tuple[int, ...]) -> Path:
    """The recipe's TSM with random weights (seeded by train.seed) as the run's best checkpoint, so a recipe
    is benchmarked through the same load and export path as a trained run. The caller clears the
    pretrained settings; TSM takes any frame size, so `sample_shape` is not needed."""
    torch.manual_seed(rec.train.seed)
    params = params_of(rec)
    model = tsm.build(params, num_classes)
    save_checkpoint(run.file(BEST), model, params, optimizer(model, rec.train), rec.train, 0)
    return run.file(BEST)


def inference_fn(model: tsm.TSM, input_shape: tuple[int, ...]):
    """What is timed: `predict_batch` (eval mode, no autograd, copies to and from the model's device)."""
    model.eval()
    return lambda batch: predict_batch(model, batch)


def device_of(model: tsm.TSM) -> str:
    return str(next(model.parameters()).device)


def set_threads(n: int) -> None:
    torch.set_num_threads(n)


def pipeline_batches(source: Source, batch_size: int, workers: int, seed: int) -> Iterator[int]:
    """Clips per batch of the training DataLoader (augmentation included, uint8 clips as the workers hand
    them over), epoch after epoch, for as long as the caller reads. Clips that fail are warned about once."""
    clips = tdata.TrainClips(source, seed)
    epoch = 0
    while True:
        clips.set_epoch(epoch)
        for batch in tdata.train_loader(clips, batch_size, workers):
            _, labels, ok, idx, errors = batch[:5]
            for i, ok_i, err in zip(idx.tolist(), ok.tolist(), errors, strict=True):
                if not ok_i and source.record_failure(i):
                    warn(f"skipping clip: {err}")
            yield len(labels)
        epoch += 1
