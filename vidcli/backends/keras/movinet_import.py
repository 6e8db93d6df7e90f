"""Strict import of the official MoViNet checkpoints (TF Model Garden, `tf.train.Checkpoint(model=model)`).

Each of our variables has exactly one checkpoint key, derived from our layer structure the way
TensorFlow's object graph names the reference's attributes:

    model/layer_with_weights-0/layer_with_weights-{i}/...   backbone layer i (stem, blocks..., head)
    model/layer_with_weights-1/...                          classifier head

Strict means: every backbone entry of the checkpoint is used, every backbone variable is filled, and
shapes agree; anything else is a `VidcliError` that lists the names. Optimizer slots and the save
counter are ignored. The classifier head is loaded only when its class count matches.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import keras

from vidcli import console
from vidcli.backends.keras.movinet import MovinetClassifier, MovinetParams
from vidcli.backends.keras.movinet_layers import ClassifierHead, ConvBN, Head, MovinetBlock
from vidcli.errors import VidcliError

RELEASE_URL = "https://storage.googleapis.com/tf_model_garden/vision/movinet/{name}.tar.gz"
RELEASE_NAME = re.compile(r"^movinet_a[0-5]_(base|stream)$")
SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
BACKBONE = "model/layer_with_weights-0/"
CLASSIFIER = "model/layer_with_weights-1/"
SHOW = 10


def cache_dir() -> Path:
    from vidcli.video.cache import default_root

    return default_root() / "movinet"


# -- key mapping -------------------------------------------------------------------------------------


def _conv_keys(conv: ConvBN, prefix: str) -> dict[str, Any]:
    """Keys of one reference ConvBlock: its conv(s) are `_conv`/`_conv_temporal`, its norms `_batch_norm*`."""
    keys: dict[str, Any] = {}
    if conv.conv_type == "2plus1d":
        kernel_name = "depthwise_kernel" if conv.depthwise else "kernel"
        spatial, temporal = f"{prefix}_conv/_conv/", f"{prefix}_conv_temporal/_conv/"
    else:
        kernel_name = "kernel"
        spatial, temporal = f"{prefix}_conv/", f"{prefix}_conv_temporal/"
    keys[spatial + kernel_name] = conv.kernel
    if conv.bias is not None:
        keys[spatial + "bias"] = conv.bias
    if conv.kernel_temporal is not None:
        keys[temporal + kernel_name] = conv.kernel_temporal
        if conv.bias_temporal is not None:
            keys[temporal + "bias"] = conv.bias_temporal
    for bn, name in ((conv.bn, "_batch_norm/"), (conv.bn_temporal, "_batch_norm_temporal/")):
        if bn is not None:
            for attr in ("gamma", "beta", "moving_mean", "moving_variance"):
                keys[prefix + name + attr] = getattr(bn, attr)
    return keys


def _block_keys(block: MovinetBlock, prefix: str) -> dict[str, Any]:
    keys = {}
    keys.update(_conv_keys(block.expansion, prefix + "_expansion/"))
    keys.update(_conv_keys(block.feature, prefix + "_feature/"))
    keys.update(_conv_keys(block.projection, prefix + "_projection/"))
    if block.se is not None:
        keys.update(_conv_keys(block.se.se_reduce, prefix + "_attention/_se_reduce/"))
        keys.update(_conv_keys(block.se.se_expand, prefix + "_attention/_se_expand/"))
        if block.se.pos_scale is not None:
            keys[prefix + "_attention/_pos_encoding/_rezero/scale"] = block.se.pos_scale
    if block.skip is not None:
        keys.update(_conv_keys(block.skip, prefix + "_skip/_projection/"))
    keys[prefix + "_mobile_bottleneck/_rezero/scale"] = block.rezero
    return keys


def checkpoint_keys(model: keras.Model) -> tuple[dict[str, Any], dict[str, Any]]:
    """(backbone, classifier) maps from full checkpoint key to our variable."""
    if not isinstance(model, MovinetClassifier):
        raise TypeError("load_pretrained needs a model made by movinet.build")
    backbone: dict[str, Any] = {}
    for i, layer in enumerate(model.backbone_layers()):
        prefix = f"{BACKBONE}layer_with_weights-{i}/"
        if isinstance(layer, MovinetBlock):
            backbone.update(_block_keys(layer, prefix))
        elif isinstance(layer, Head):
            backbone.update(_conv_keys(layer.project, prefix + "_project/"))
        else:
            backbone.update(_conv_keys(layer, prefix + "_stem/"))
    head: ClassifierHead = model.classifier_head
    classifier = {
        **_conv_keys(head.head, CLASSIFIER + "_head/"),
        **_conv_keys(head.classifier, CLASSIFIER + "_classifier/"),
    }
    add = lambda keys: {k + SUFFIX: v for k, v in keys.items()}  # noqa: E731
    backbone, classifier = add(backbone), add(classifier)
    mapped = {id(v) for v in [*backbone.values(), *classifier.values()]}
    missed = [v.path for v in model.weights if id(v) not in mapped]
    if missed or len(mapped) != len(model.weights):
        raise RuntimeError(f"movinet key map misses model variables: {missed[:SHOW]}")
    return backbone, classifier


def _ignored(key: str) -> bool:
    return (
        key == "_CHECKPOINTABLE_OBJECT_GRAPH"
        or key.startswith(("save_counter/", "optimizer/", "global_step"))
        or "/.OPTIMIZER_SLOT/" in key
    )


# -- finding the checkpoint --------------------------------------------------------------------------


def _safe_extract(tarball: Path, dest: Path) -> None:
    """Extract regular files and folders only, refusing absolute paths, `..` and links."""
    try:
        with tarfile.open(tarball, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                parts = Path(member.name).parts
                if member.name.startswith(("/", "\\")) or Path(member.name).is_absolute() or ".." in parts:
                    raise VidcliError(f"{tarball}: refusing unsafe path {member.name!r} in the archive")
                if not (member.isfile() or member.isdir()):
                    raise VidcliError(f"{tarball}: refusing link or special file {member.name!r} in the archive")
            try:
                tar.extractall(dest, members=members, filter="data")
            except TypeError:  # Python without extraction filters; members were checked above
                tar.extractall(dest, members=members)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise VidcliError(f"{tarball}: not a readable .tar.gz checkpoint ({exc})") from exc


def _file_digest(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:12]


def _extracted(tarball: Path) -> Path:
    """The tarball unpacked under the cache, keyed by content; unpacked into a temp dir, then renamed."""
    name = re.sub(r"(\.tar\.gz|\.tgz|\.tar)$", "", tarball.name)
    target = cache_dir() / "extracted" / f"{name}-{_file_digest(tarball)}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        _safe_extract(tarball, tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _checkpoint_prefix(folder: Path, label: str) -> str:
    """The `ckpt-N` prefix inside `folder` (or its one subfolder), preferring what `checkpoint` names."""
    import tensorflow as tf

    candidates = [folder] + sorted(p for p in folder.iterdir() if p.is_dir())
    for candidate in candidates:
        latest = tf.train.latest_checkpoint(str(candidate))
        if latest and Path(latest + ".index").is_file():
            return latest
        indexes = sorted(candidate.glob("*.index"))
        if len(indexes) == 1:
            return str(indexes[0])[: -len(".index")]
    raise VidcliError(f"{label}: no TensorFlow checkpoint (*.index) found")


def resolve_checkpoint(source: str) -> str:
    """A release name, http(s) URL, `.tar.gz` or folder -> a checkpoint prefix readable by TensorFlow."""
    if not isinstance(source, str) or not source:
        raise VidcliError(f"movinet pretrained: expected a name, URL or path, got {source!r}")
    if RELEASE_NAME.match(source):
        source = RELEASE_URL.format(name=source)
    if source.startswith(("http://", "https://")):
        from vidcli.download import download

        filename = source.rstrip("/").rsplit("/", 1)[-1] or "checkpoint.tar.gz"
        path = download(source, cache_dir() / "downloads" / filename, md5=None, description=filename)
        try:
            return _checkpoint_prefix(_extracted(Path(path)), source)
        except VidcliError as exc:
            Path(path).unlink(missing_ok=True)  # a broken download must not be reused from the cache
            raise VidcliError(f"{exc} (removed from the cache; the next run downloads it again)") from exc
    path = Path(source).expanduser()
    if path.is_dir():
        return _checkpoint_prefix(path, source)
    if path.is_file():
        if path.name.endswith(".index"):
            return str(path)[: -len(".index")]
        if re.search(r"\.(tar\.gz|tgz|tar)$", path.name):
            return _checkpoint_prefix(_extracted(path), source)
        raise VidcliError(f"{source}: expected a .tar.gz release, a checkpoint folder or a ckpt-N.index file")
    raise VidcliError(f"{source}: no such file or folder, and not a release name like movinet_a0_base")


# -- loading -----------------------------------------------------------------------------------------


def _release_of(entries: dict[str, tuple]) -> tuple[str | None, str]:
    """(model id, base/stream) a checkpoint looks like: layer count and stem conv layout identify it."""
    from vidcli.backends.keras.movinet import ARCHS

    found = [re.match(re.escape(BACKBONE) + r"layer_with_weights-(\d+)/", k) for k in entries]
    layers = 1 + max((int(m.group(1)) for m in found if m), default=-1)
    by_count = {sum(len(b[1]) for b in arch[1]) + 2: mid for mid, arch in ARCHS.items()}
    split = any("/_stem/_conv/_conv/" in k for k in entries)
    return by_count.get(layers), "stream" if split else "base"


def _listing(names: list[str]) -> str:
    shown = ", ".join(n.removesuffix(SUFFIX) for n in names[:SHOW])
    more = f" and {len(names) - SHOW} more" if len(names) > SHOW else ""
    return f"{len(names)}: {shown}{more}"


def head_classes(source: str) -> int:
    """The class count of a checkpoint's classifier head (600 for the Kinetics-600 releases)."""
    import tensorflow as tf

    prefix = resolve_checkpoint(source)
    try:
        shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as exc:
        raise VidcliError(f"{source}: cannot read the checkpoint ({exc})") from exc
    for key in (CLASSIFIER + "_classifier/_conv/bias" + SUFFIX, CLASSIFIER + "_classifier/_conv/_conv/bias" + SUFFIX):
        if key in shapes:
            return int(shapes[key][0])
    raise VidcliError(f"{source}: no classifier head in the checkpoint")


def load_pretrained(model: keras.Model, source: str, params: MovinetParams) -> None:
    """Fill `model` from the checkpoint at `source`; see the module docstring for what strict means."""
    import tensorflow as tf

    params.resolved()
    backbone, classifier = checkpoint_keys(model)
    prefix = resolve_checkpoint(source)
    try:
        reader = tf.train.load_checkpoint(prefix)
        shapes = reader.get_variable_to_shape_map()
    except (tf.errors.OpError, ValueError) as exc:
        raise VidcliError(f"{source}: cannot read the checkpoint ({exc})") from exc
    entries = {k: tuple(v) for k, v in shapes.items() if not _ignored(k)}
    where = f"{source} -> movinet {model.model_id} {'stream' if model.causal else 'base'}"
    unused = sorted(k for k in entries if k not in backbone and k not in classifier)
    missing = sorted(k for k in backbone if k not in entries)
    wrong = sorted(
        f"{k.removesuffix(SUFFIX)} {list(entries[k])} vs {list(v.shape)}"
        for k, v in backbone.items()
        if k in entries and entries[k] != tuple(v.shape)
    )
    problems = []
    if unused:
        problems.append(f"checkpoint variables not in the model ({_listing(unused)})")
    if missing:
        problems.append(f"model variables not in the checkpoint ({_listing(missing)})")
    if wrong:
        problems.append(f"shape mismatches ({len(wrong)}: {', '.join(wrong[:SHOW])})")
    if problems:
        model_id, variant = _release_of(entries)
        ours = (model.model_id, "stream" if model.conv_type != "3d" else "base")
        if model_id is not None and (model_id, variant) != ours:
            problems.insert(0, f"it looks like a movinet {model_id} {variant} checkpoint, the model is "
                            f"{ours[0]} {ours[1]} (check model.params.model_id / causal, or use "
                            f"movinet_{ours[0]}_{ours[1]})")
        raise VidcliError(f"{where}: checkpoint does not match the model: " + "; ".join(problems))

    head_ok = all(k in entries and entries[k] == tuple(v.shape) for k, v in classifier.items())
    targets = dict(backbone)
    if head_ok:
        targets.update(classifier)
    try:
        values = {key: reader.get_tensor(key) for key in targets}
    except (tf.errors.OpError, ValueError) as exc:
        raise VidcliError(f"{source}: cannot read the checkpoint ({exc})") from exc
    for key, variable in targets.items():
        variable.assign(values[key].astype(variable.dtype))
    if head_ok:
        console.log(f"movinet: loaded {len(targets)} variables from {source} (backbone and classifier head)")
    else:
        found = entries.get(
            CLASSIFIER + "_classifier/_conv/bias" + SUFFIX,
            entries.get(CLASSIFIER + "_classifier/_conv/_conv/bias" + SUFFIX),
        )
        classes = found[0] if found else "?"
        console.log(
            f"movinet: loaded {len(targets)} backbone variables from {source}; classifier head left freshly "
            f"initialised ({classes} classes in the checkpoint, {model.classifier_head.num_classes} in the model)"
        )
