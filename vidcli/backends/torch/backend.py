"""The PyTorch backend: build, train, load, run and export every PyTorch family (`vidcli.backends.base.Backend`).

Checkpoints (`last.pt` after every epoch, copied to `best.pt` when the monitored score improves) hold the
model, optimizer, the run's state (see `vidcli.engine`) and every RNG state, and load with `weights_only=True`.
The learning rate is set every step by the epoch engine (warm-up per step, the schedule per epoch).

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
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vidcli import distributed, fsio
from vidcli import engine as engine_mod
from vidcli import recipe as recipe_mod
from vidcli.backends import registry
from vidcli.backends.base import Backend, Forward, Stream
from vidcli.backends.torch import data as tdata
from vidcli.backends.torch.tsm_import import read_checkpoint
from vidcli.console import Advance, log, progress, warn
from vidcli.datasets.source import Source, class_weights
from vidcli.errors import VidcliError
from vidcli.modelcard import INPUT, OUTPUT, ModelCard, StreamSpec
from vidcli.runs import Run

LAST, BEST = "last.pt", "best.pt"
FORMAT = "vidcli-torch/1"
FORMATS = (FORMAT, "vidcli-tsm/1")  # checkpoints of vidcli 0.1 (TSM only) still load
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


def params_of(rec: recipe_mod.Recipe):
    """The recipe's model params, checked against its family (model.pretrained merged in where the params have it)."""
    params = registry.check_recipe(rec)
    if hasattr(params, "pretrained"):
        params.pretrained = params.pretrained or rec.model.pretrained
    return params


def build_model(arch: str, params, num_classes: int, sample_shape: tuple[int, ...] | None = None) -> nn.Module:
    return registry.family(arch).build(params, num_classes, sample_shape)


def optimizer(model: nn.Module, train: recipe_mod.TrainConfig, head: str = "new_fc") -> torch.optim.Optimizer:
    """No weight decay on biases and norms; the head (`head`, the family card's) learns `head_lr_mult` faster
    (its bias twice that, the TSM reference's 5x/10x when fine-tuning)."""
    groups: dict[str, list] = {"decay": [], "no_decay": [], "head_w": [], "head_b": []}
    for name, p in model.named_parameters():
        if name.startswith(head + "."):
            groups["head_w" if name.endswith("weight") else "head_b"].append(p)
        else:
            groups["decay" if p.ndim > 1 else "no_decay"].append(p)
    m, wd = train.head_lr_mult, train.weight_decay
    spec = {"decay": (1.0, wd), "no_decay": (1.0, 0.0), "head_w": (m, wd), "head_b": (2 * m if m > 1 else m, 0.0)}
    param_groups = [{"params": ps, "lr_mult": spec[k][0], "weight_decay": spec[k][1]} for k, ps in groups.items() if ps]
    lr = recipe_mod.learning_rate_at(train, 0)
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


def save_checkpoint(path: Path, model: nn.Module, opt: torch.optim.Optimizer | None, state: dict) -> None:
    """Model, optimizer, run state and RNG states in one file, renamed into place when complete."""
    ck = {"format": FORMAT, "arch": state["arch"], "params": state["params"], "num_classes": state["num_classes"],
          "model": model.state_dict(), "optimizer": opt.state_dict() if opt is not None else None,
          "epoch": state.get("epoch", 0), "state": state, "rng": _rng_state()}
    with fsio.atomic_path(path, suffix=".pt") as tmp:
        torch.save(ck, tmp)


def load_checkpoint(path: Path, rec: recipe_mod.Recipe | None = None, num_classes: int | None = None) -> dict:
    """A vidcli training checkpoint, checked to be one and, with `rec`, to hold the model the recipe describes."""
    ck = read_checkpoint(path)
    if not isinstance(ck, Mapping) or ck.get("format") not in FORMATS:
        if isinstance(ck, Mapping) and ("state_dict" in ck or any(str(k).startswith(("base_model.", "module."))
                                                                  for k in ck)):
            raise VidcliError(f"{path}: a release checkpoint or bare state_dict, not a vidcli training checkpoint; "
                              "give it as model.pretrained")
        arch = ck.get("arch") if isinstance(ck, Mapping) else None
        raise VidcliError(f"{path}: not a vidcli PyTorch checkpoint" + (f" (arch {arch!r})" if arch else ""))
    if rec is not None:
        params = registry.plain_params(params_of(rec))
        info = {"arch": ck.get("arch"), "params": ck.get("params"), "num_classes": ck.get("num_classes"),
                "sample_shape": (ck.get("state") or {}).get("sample_shape")}  # what `_model_from` builds
        engine_mod.check_model(info, rec.model.arch, params, num_classes or ck.get("num_classes"), str(path))
    return ck


def _model_from(ck: dict) -> nn.Module:
    spec = registry.spec(ck["arch"])
    fields = {f.name for f in dataclasses.fields(spec.params)}
    params = spec.params(**{k: v for k, v in ck["params"].items() if k in fields})
    for name in ("pretrained", "imagenet_init"):  # the checkpoint already holds every weight
        if hasattr(params, name):
            setattr(params, name, None)
    model = build_model(ck["arch"], params, int(ck["num_classes"]))
    try:
        model.load_state_dict(ck["model"], strict=True)
    except RuntimeError as exc:
        raise VidcliError(f"checkpoint weights do not fit the model ({str(exc).splitlines()[0]})") from exc
    return model


class _Trainer:
    def __init__(self, run: Run | None, rec: recipe_mod.Recipe, train_src: Source, val_src: Source | None,
                 comm: Comm):
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
        self.cw = torch.from_numpy(cw).to(self.dev) if cw is not None else None
        self.spec = registry.spec(rec.model.arch)
        self.card = self.spec.card(rec, train_src.classes, train_src.sample_shape)
        self.engine: engine_mod.EpochEngine | None = None

    def place(self, model: nn.Module) -> nn.Module:
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
        if self.channels_last:  # 2D-CNN families fold time into the batch: convolutions see (B*T, C, H, W)
            model = model.to(memory_format=torch.channels_last)
        return model

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around `model` in a torchrun job; `model` itself otherwise."""
        if self.comm.world == 1:
            return model
        ids = [self.dev.index] if self.dev.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def _count_failures(self, bad: list[tuple[int, str]]) -> None:
        """Record failed clips (every rank records every rank's)."""
        for i, err in bad:
            if self.src.record_failure(i):
                self.comm.warn(f"skipping clip: {err}")

    def epoch(self, model: nn.Module, opt: torch.optim.Optimizer, epoch: int) -> dict:
        rec, comm, eng = self.rec, self.comm, self.engine
        self.dataset.set_epoch(epoch)
        if comm.world > 1:  # dropout differs across ranks and a resumed run draws the same
            torch.manual_seed(int(np.random.default_rng([rec.train.seed, epoch, comm.rank]).integers(2**62)))
        loader = tdata.train_loader(self.dataset, rec.train.batch_size // comm.world, rec.data.workers)
        model.train()
        total = correct = 0.0
        loss_sum = 0.0
        with comm.progress(len(loader), f"epoch {epoch + 1}/{rec.train.epochs}") as advance:
            for step, (clips, y, ok, idx, errors, real) in enumerate(loader):
                if eng is not None:
                    _set_lr(opt, eng.lr(epoch, step))
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
                if eng is not None:
                    eng.check_step(loss_sum / max(total, 1.0), len(self.src.failed), len(self.src))
                advance(1)
        loss_sum, correct, total = comm.sum_floats([loss_sum, correct, total])
        return {"loss": loss_sum / max(total, 1.0), "accuracy": correct / max(total, 1.0)}

    def step(self, model: nn.Module, opt: torch.optim.Optimizer, clips: torch.Tensor, y: torch.Tensor,
             w: torch.Tensor, count: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimisation step on uint8 clips (on any device): autocast, loss scaling, clipping.
        Returns the logits and the weighted per-clip losses; `count` is the loss denominator."""
        rec = self.rec
        x = tdata.to_input(clips.to(self.dev), self.card, self.channels_last)
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

    def validate(self, model: nn.Module) -> dict:
        """Each rank scores every world-th validation clip with the bare model (rank 0's, the checkpoint's,
        BatchNorm statistics) through the same loop `eval` uses; the sums are reduced."""
        comm, src = self.comm, self.val_src
        assert src is not None
        comm.share_buffers(model)
        mine = np.arange(comm.rank, len(src), comm.world)
        sums, err = [0.0, 0.0], ""
        try:
            if len(mine):
                from vidcli.scoring import score

                logits = score(BACKEND.forward(model, self.card), self.card, src,
                               self.rec.train.batch_size // comm.world, self.rec.data.workers,
                               indices=mine, show_progress=comm.chief)
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


def _fit(run: Run, rec: recipe_mod.Recipe, train_src: Source, val_src: Source | None, resume: bool,
         comm: Comm) -> dict:
    tr = _Trainer(run, rec, train_src, val_src, comm)
    num_classes = len(train_src.classes)
    params = params_of(rec)
    last = run.file(LAST)
    steps = -(-len(tr.dataset) // max(1, rec.train.batch_size // comm.world))
    holder: dict[str, Any] = {}
    info = {"arch": rec.model.arch, "params": registry.plain_params(params), "num_classes": num_classes,
            "sample_shape": [int(v) for v in train_src.sample_shape]}
    eng = engine_mod.EpochEngine(
        run, rec, steps=steps, has_val=val_src is not None, suffix=".pt", model_info=info, chief=comm.chief,
        say=comm.log, read_state=BACKEND.checkpoint_state,
        save=lambda path, state: save_checkpoint(path, holder["model"], holder["opt"], state))
    tr.engine = eng
    if resume and last.is_file():
        ck = load_checkpoint(last, rec, num_classes)
        model = tr.place(_model_from(ck))
        opt = optimizer(model, rec.train, tr.spec.head)
        try:
            opt.load_state_dict(ck["optimizer"])
        except (ValueError, KeyError, TypeError) as exc:
            raise VidcliError(f"{last}: optimizer state does not fit train.optimizer={rec.train.optimizer} "
                              f"({exc})") from exc
        if comm.world == 1:  # a torchrun job reseeds every rank each epoch (`_Trainer.epoch`)
            _set_rng_state(ck["rng"])
        holder.update(model=model, opt=opt)
        first_epoch = eng.begin(ck.get("state") or engine_mod.legacy_state(run, int(ck["epoch"])))
        comm.log(f"resuming {run.path} from epoch {first_epoch}")
    else:
        model = tr.place(BACKEND.build(rec, num_classes, train_src.sample_shape))
        opt = optimizer(model, rec.train, tr.spec.head)
        holder.update(model=model, opt=opt)
        first_epoch = eng.begin(None)
    if eng.all_done():
        return eng.finish(len(train_src.failed))
    net = tr.wrap(model)
    if comm.chief:
        run.update_state(status="training", params=sum(p.numel() for p in model.parameters()), device=str(tr.dev),
                         world_size=comm.world)
    try:
        for epoch in range(first_epoch, rec.train.epochs):
            eng.begin_epoch(epoch)
            metrics = tr.epoch(net, opt, epoch)
            if val_src is not None:
                metrics.update(tr.validate(model))
            stop = eng.end_epoch(epoch, metrics)
            if comm.agree(stop):
                break
    except KeyboardInterrupt:
        raise eng.interrupted() from None
    except BaseException:  # a user error, or anything else (out of memory ...): the run says it failed
        eng.failed()
        raise
    return eng.finish(len(train_src.failed))


class TorchBackend(Backend):
    name = "torch"
    suffix = ".pt"

    def build(self, rec, num_classes, sample_shape):
        params = params_of(rec)
        model = build_model(rec.model.arch, params, num_classes, tuple(sample_shape))
        registry.load_pretrained(rec, params, model)
        return model

    def load(self, path, rec, num_classes):
        if not path.is_file():
            raise VidcliError(f"{path}: checkpoint not found")
        ck = load_checkpoint(path, rec, num_classes)
        if int(ck["num_classes"]) != num_classes:
            raise VidcliError(f"{path}: {ck['num_classes']} classes, but the run has {num_classes} labels")
        return _model_from(ck).to(device()).eval()

    def checkpoint_state(self, path):
        ck = read_checkpoint(path)
        return dict(ck.get("state") or {"epoch": ck.get("epoch")}) if isinstance(ck, Mapping) else {}

    def save_untrained(self, path, rec, num_classes, sample_shape):
        torch.manual_seed(rec.train.seed)
        params = params_of(rec)
        model = build_model(rec.model.arch, params, num_classes, tuple(sample_shape))
        info = {"arch": rec.model.arch, "params": registry.plain_params(params), "num_classes": num_classes, "epoch": 0}
        save_checkpoint(path, model, None, info)
        return path

    def fit(self, run, rec, train_src, val_src, resume):
        setup(rec.train)
        params_of(rec)
        comm = connect(rec.train)
        try:
            return _fit(run, rec, train_src, val_src, resume, comm)
        finally:
            disconnect(comm)

    def forward(self, model, card: ModelCard) -> Forward:
        model.eval()
        dev = next(model.parameters()).device

        @torch.no_grad()
        def run(batch: np.ndarray) -> np.ndarray:
            x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(dev)
            return model(x).float().cpu().numpy()

        return run

    def export_onnx(self, model, sample, opset):
        """ONNX bytes (dynamic batch) of the model on the CPU, traced on `sample`."""
        model = model.cpu().eval()
        x = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32))
        with tempfile.TemporaryDirectory(prefix="vidcli-export-") as tmp:
            path = Path(tmp) / "model.onnx"
            with torch.no_grad():
                torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=opset, input_names=[INPUT],
                                  output_names=[OUTPUT], dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
            return path.read_bytes()

    def export_stream(self, model, card, opset) -> tuple[bytes, StreamSpec]:
        return registry.stream_module(card.arch).stream_onnx(model, card, opset)

    def stream(self, model, card) -> Stream:
        return registry.stream_module(card.arch).stream_runner(model, card)

    def device_of(self, model):
        return str(next(model.parameters()).device)

    def set_threads(self, n):
        torch.set_num_threads(n)

    def pipeline_batches(self, source, batch_size, workers, seed) -> Iterator[int]:
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


BACKEND = TorchBackend()
