"""Which model a command uses, said out loud: an .onnx file, a run folder, or one checkpoint file.

`--model` takes any of the three and uses exactly that: a run folder means its export (model.onnx) when there is
one, else its best checkpoint; a checkpoint file means that checkpoint through its framework. Without `--model`,
the newest finished run. Every command that loads a model names it in one stderr line (file, run, checkpoint,
epoch). An export records the checkpoint it came from; using an export older than that checkpoint warns.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidcli import fsio
from vidcli.console import log, warn
from vidcli.errors import VidcliError
from vidcli.modelcard import ModelCard
from vidcli.runs import RUN_FILE, Run

CARD_FILE = "card.json"
CHECKPOINT_SUFFIXES = (".keras", ".pt")


@dataclass
class Choice:
    """A resolved model: `path` is the .onnx file or the checkpoint file that will run."""

    kind: str  # "onnx" | "checkpoint"
    path: Path
    card: ModelCard
    run: Run | None = None
    epoch: int | None = None

    def describe(self) -> str:
        """`path (run R, checkpoint C, epoch E)`: the parts that are known."""
        parts = [f"run {self.run.path}"] if self.run is not None else []
        if self.kind == "onnx":
            source, epoch = self.card.extra.get("checkpoint"), self.card.extra.get("checkpoint_epoch")
            parts += [f"exported from {source}"] if source else []
        else:
            epoch = self.epoch
        parts += [f"epoch {epoch}"] if epoch else []
        return f"{self.path} ({', '.join(parts)})" if parts else str(self.path)


# -- cards -------------------------------------------------------------------------------------------------


def run_card(run: Run) -> ModelCard:
    """The card a run's model was trained for: `card.json` (written when training starts), or for runs made
    before vidcli wrote it, rebuilt from the recipe and the data."""
    f = run.file(CARD_FILE)
    if f.is_file():
        return ModelCard.from_metadata(fsio.read_json(f), str(f))
    from vidcli.backends import registry

    rec = run.recipe
    return registry.spec(rec.model.arch).card(rec, run.labels, sample_shape(rec))


def write_card(run: Run, card: ModelCard) -> None:
    fsio.write_json(run.file(CARD_FILE), {k: v for k, v in card.to_metadata().items()})


def sample_shape(rec: Any, source: Any = None) -> tuple[int, ...]:
    """One uint8 sample as the data gives it: (T, H, W, 3), or for volumes (D, H, W, 1) from the data when it is
    at hand, else from data.synth or the MedMNIST file name (`<name>_<size>.npz`)."""
    d = rec.data
    if d.format != "volumes":
        return (d.frames, *d.size, 3)
    if source is not None:
        return tuple(int(v) for v in source.sample_shape)
    if d.synth is not None and d.synth.volumes:
        return (d.synth.size,) * 3 + (1,)
    m = re.search(r"_(\d+)\.npz$", Path(d.root).name)
    if m:
        return (int(m.group(1)),) * 3 + (1,)
    from vidcli.datasets.source import open_source

    try:
        return tuple(int(v) for v in open_source(d, "train").sample_shape)
    except VidcliError:
        raise VidcliError(f"data.root: {d.root} not found; a volumes model takes its input size from the "
                          "data") from None


# -- provenance of exports -----------------------------------------------------------------------------------


def fingerprint(path: Path) -> dict[str, str]:
    """What identifies a checkpoint file: its name, size, modification time and SHA-256."""
    st = path.stat()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {"checkpoint": path.name, "checkpoint_bytes": str(st.st_size), "checkpoint_mtime_ns": str(st.st_mtime_ns),
            "checkpoint_sha256": digest.hexdigest()}


def _same_file(card: ModelCard, path: Path) -> bool:
    st = path.stat()
    extra = card.extra
    if extra.get("checkpoint_bytes") == str(st.st_size) and extra.get("checkpoint_mtime_ns") == str(st.st_mtime_ns):
        return True
    return extra.get("checkpoint_sha256") == fingerprint(path)["checkpoint_sha256"]


def check_fresh(choice: Choice) -> None:
    """Warn when an export is older than the checkpoint it was made from (the run trained or resumed since)."""
    if choice.kind != "onnx" or choice.run is None or "checkpoint" not in choice.card.extra:
        return
    ck = choice.run.file(choice.card.extra["checkpoint"])
    if ck.is_file() and not _same_file(choice.card, ck):
        warn(f"{choice.path} was exported from an earlier {ck.name}; the run has trained since: re-export with "
             f"`vidcli export-onnx {choice.run.path}` (or pass -m {ck} to use the checkpoint)")


# -- resolution ----------------------------------------------------------------------------------------------


def finished_runs(runs_dir: Path) -> list[Run]:
    """Runs under `runs_dir` newest first, finished ones only."""
    found = []
    for f in Path(runs_dir).glob(f"*/*/{RUN_FILE}") if Path(runs_dir).is_dir() else []:
        try:
            state = fsio.read_json(f)
        except VidcliError:
            continue
        found.append((f.stat().st_mtime, state.get("status"), f.parent))
    found.sort(key=lambda t: t[0], reverse=True)
    return [Run(p) for _, status, p in found if status == "finished"]


def default_run(runs_dir: Path) -> Run:
    runs = finished_runs(runs_dir)
    if runs:
        return runs[0]
    any_run = sorted(Path(runs_dir).glob(f"*/*/{RUN_FILE}"), key=lambda f: f.stat().st_mtime, reverse=True) \
        if Path(runs_dir).is_dir() else []
    if any_run:
        raise VidcliError(f"no finished run under {runs_dir}/ (the newest, {any_run[0].parent}, is "
                          f"{fsio.read_json(any_run[0]).get('status', 'unknown')}); pass --model RUN or FILE")
    raise VidcliError(f"no runs found under {runs_dir}/; train one with `vidcli train RECIPE` or pass --model")


def _run_of(path: Path) -> Run | None:
    folder = path.parent
    return Run(folder) if (folder / RUN_FILE).is_file() else None


def resolve(model: Path | None, runs_dir: Path = Path("runs"), checkpoint: str | None = None) -> Choice:
    """--model as given (see the module notes). `checkpoint` (best | last) picks a run's checkpoint instead of
    its export."""
    if model is None:
        run = default_run(runs_dir)
        return _from_run(run, checkpoint)
    if not model.exists():
        raise VidcliError(f"{model}: no such model file or run folder")
    if model.is_dir():
        return _from_run(Run.open(model), checkpoint)
    if checkpoint is not None:
        raise VidcliError(f"--checkpoint picks one of a run's checkpoints; {model} is a file")
    if model.suffix in CHECKPOINT_SUFFIXES:
        run = _run_of(model)
        if run is None:
            raise VidcliError(f"{model}: a checkpoint outside a run folder (its recipe and labels are in the run); "
                              "pass the run folder or an exported .onnx file")
        return _checkpoint_choice(run, model)
    from vidcli.inference import open_session

    _, card = open_session(model)
    run = _run_of(model)
    return Choice("onnx", model, card, run)


def _from_run(run: Run, checkpoint: str | None) -> Choice:
    from vidcli.backends import registry

    run.labels  # noqa: B018  (a run without labels is an error before anything loads)
    exported = run.file("model.onnx")
    if checkpoint is None and exported.is_file():
        from vidcli.inference import open_session

        _, card = open_session(exported)
        return Choice("onnx", exported, card, run)
    suffix = registry.SUFFIXES[registry.backend_name(run.recipe.model.arch)]
    path = run.file(f"{checkpoint or 'best'}{suffix}")
    if checkpoint in (None, "best") and not path.is_file():
        path = path.with_name(f"last{path.suffix}")
    if not path.is_file():
        raise VidcliError(f"{run.path}: no {checkpoint or 'best/last'} checkpoint; has it been trained?")
    return _checkpoint_choice(run, path)


def _checkpoint_choice(run: Run, path: Path) -> Choice:
    state = run.state
    epoch = state.get("best_epoch") if path.stem == "best" else state.get("epochs_done")
    return Choice("checkpoint", path, run_card(run), run, epoch)


def announce(choice: Choice) -> None:
    log(f"model: {choice.describe()}")
    check_fresh(choice)


# -- opening -------------------------------------------------------------------------------------------------


class FrameworkModel:
    """A checkpoint run by its own framework (slower to start than ONNX Runtime)."""

    def __init__(self, choice: Choice, threads: int = 0):
        rec = choice.run.recipe
        self.card = choice.card
        self.backend = _framework(choice, threads)
        self.model = self.backend.load(choice.path, rec, len(choice.card.labels))
        self._forward = self.backend.forward(self.model, self.card)

    def __call__(self, x):
        return self._forward(x)


class FrameworkStream:
    """A stream checkpoint run by its framework frame by frame."""

    def __init__(self, choice: Choice, threads: int = 0):
        from vidcli.backends import registry

        rec = choice.run.recipe
        self.card = choice.card
        backend = _framework(choice, threads)
        spec = registry.spec(rec.model.arch)
        if not spec.is_stream(registry.check_recipe(rec)):
            from vidcli.streaming import not_stream

            raise not_stream(str(choice.run.path))
        model = backend.load(choice.path, rec, len(choice.card.labels))
        self._stream = backend.stream(model, self.card)
        if self.card.stream is None:
            from vidcli.modelcard import StreamSpec

            self.card.stream = StreamSpec("", self._stream.frame_layout, [], self._stream.logits)

    def initial_states(self):
        return self._stream.initial_states()

    def step(self, frame, states):
        return self._stream.step(frame, states)


def open_model(choice: Choice, threads: int | None = None):
    """A callable float input -> logits with a `card`. `threads`: ONNX Runtime's (default: its own; a stream file
    used as a clip model: 1) or the framework's (default: its own)."""
    if choice.kind == "onnx":
        if choice.card.stream is not None:  # a stream export: each clip streamed frame by frame
            from vidcli.streaming import OnnxStream, StreamClips

            return StreamClips(OnnxStream(choice.path, 1 if threads is None else threads))  # a frame is little work
        from vidcli.inference import OnnxModel

        return OnnxModel(choice.path, threads or 0)
    return FrameworkModel(choice, threads or 0)


def open_stream(choice: Choice, threads: int | None = None):
    """An object with `card`, `initial_states()` and `step(frame, states)`. `threads`: ONNX Runtime's (default 1:
    one frame is too little work to share) or the framework's (default: its own)."""
    if choice.kind == "onnx":
        from vidcli.streaming import OnnxStream

        return OnnxStream(choice.path, 1 if threads is None else threads)
    return FrameworkStream(choice, threads or 0)


def _framework(choice: Choice, threads: int):
    """The checkpoint's backend, its thread count set first when one is asked for (0: the framework's own)."""
    from vidcli.backends import registry

    backend = registry.backend(choice.run.recipe.model.arch)
    if threads:
        backend.set_threads(threads)
    return backend
