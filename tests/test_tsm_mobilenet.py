"""TSM on MobileNetV2, offline and online: conformance with the official fixtures, official-format files of
other shapes written here (hold-out style), the refusals, the release-name check and the stream ONNX export."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fixture_path

from vidcli import recipe
from vidcli.backends import registry
from vidcli.backends.torch.mobilenet_v2 import MobileNetV2, block_inputs, shift_block_indices
from vidcli.backends.torch.tsm import TSM, causal_shift
from vidcli.backends.torch.tsm import build as build_network
from vidcli.backends.torch.tsm_import import head_classes, load_pretrained, load_tsm_checkpoint, load_tsm_state_dict
from vidcli.backends.torch.tsm_online import buffer_shapes, step_onnx, stream_clip, stream_module
from vidcli.errors import VidcliError
from vidcli.families.tsm import TsmParams, parse_release_name

pytestmark = pytest.mark.usefixtures("torch_one_thread")

DIR = "tsm_mobilenetv2"
OFFLINE = "TSM_kinetics_RGB_mobilenetv2_shift8_blockres_avg_segment8_e100_dense"
ONLINE = "mobilenetv2_jester_online"
SHIFTED = [3, 5, 6, 8, 9, 10, 12, 13, 15, 16]
ATOL = 1e-5


def build(params: TsmParams, num_classes: int):
    """The network plus the weights its params name, as the torch backend builds a recipe's model."""
    model = build_network(params, num_classes)
    load_pretrained(model, None, params)
    return model


def mbv2(classes: int, segments: int = 8, online: bool = False, **kw) -> TSM:
    return TSM(classes, num_segments=segments, backbone="mobilenet_v2", online=online, **kw)


def _keys(name: str) -> list[tuple[str, list[int], str]]:
    rows = []
    for line in fixture_path(DIR, f"{name}_keys.txt").read_text().splitlines():
        key, rest = line.split(" ", 1)
        shape, dtype = rest.rsplit(" ", 1)
        rows.append((key, [int(s) for s in shape.strip("[]").split(",") if s.strip()], dtype))
    return rows


def _random(key: str, shape: list[int], dtype: str, gen: torch.Generator) -> torch.Tensor:
    """The fixtures' scheme (README): ranges that keep activations sane through 52 convs."""
    if dtype == "int64":
        return torch.randint(1, 1000, shape, generator=gen)
    u = torch.rand(shape, generator=gen, dtype=torch.float64)
    if key.endswith(("running_var",)) or (len(shape) == 1 and key.endswith("weight")):
        return (0.5 + u).float()
    if key.endswith(("running_mean",)) or (len(shape) == 1 and key.endswith("bias") and "fc" not in key
                                           and "classifier" not in key):
        return (0.4 * u - 0.2).float()
    if key.endswith("bias"):
        return (0.2 * u - 0.1).float()
    fan_in = math.prod(shape[1:])
    bound = math.sqrt(3 / fan_in) * (0.5 if len(shape) == 2 else 1.0)
    return ((2 * u - 1) * bound).float()


def official_sd(name: str, classes: int, seed: int) -> dict[str, torch.Tensor]:
    """A state_dict with the official file's key names, other head rows, random values."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape, dtype in _keys(name):
        if key.endswith(("fc.weight", "classifier.weight", "fc.bias", "classifier.bias")):
            shape = [classes, *shape[1:]]
        out[key] = _random(key, shape, dtype, gen)
    return out


def randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            value.copy_(_random(key, list(value.shape), str(value.dtype).removeprefix("torch."), gen))
    return model


def write_release(path: Path, sd: dict[str, torch.Tensor], arch: str = "mobilenetv2") -> Path:
    torch.save({"epoch": 3, "arch": arch, "state_dict": sd, "best_prec1": 1.0}, path)
    return path


@pytest.fixture(scope="module")
def offline_ref() -> dict[str, np.ndarray]:
    with np.load(fixture_path(DIR, f"{OFFLINE}_reference.npz")) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def online_ref() -> dict[str, np.ndarray]:
    with np.load(fixture_path(DIR, f"{ONLINE}_reference.npz")) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def offline() -> TSM:
    model = mbv2(400, dropout=0.5)
    load_tsm_checkpoint(model, fixture_path(DIR, f"{OFFLINE}.pth"))
    return model.eval()


@pytest.fixture(scope="module")
def online() -> TSM:
    model = mbv2(27, online=True)
    load_tsm_checkpoint(model, fixture_path(DIR, f"{ONLINE}.pth.tar"))
    return model.eval()


# -- structure ----------------------------------------------------------------------------------------


def test_keys_and_shapes_equal_both_official_files() -> None:
    offline_keys = [(k.removeprefix("module."), s) for k, s, _ in _keys(OFFLINE)]
    assert [(k, list(v.shape)) for k, v in mbv2(400).state_dict().items()] == offline_keys
    shifted = "|".join(map(str, SHIFTED))
    renamed = [(re.sub(rf"^features\.({shifted})\.conv\.0\.", r"features.\1.conv.0.net.", k), s)
               for k, s, _ in _keys(ONLINE)]
    renamed = [("base_model." + k if k.startswith("features.") else k.replace("classifier.", "new_fc."), s)
               for k, s in renamed]
    assert [(k, list(v.shape)) for k, v in mbv2(27, online=True).state_dict().items()] == renamed


def test_plain_backbone_and_shift_blocks() -> None:
    net = MobileNetV2(1000)
    assert shift_block_indices() == SHIFTED == net.shift_blocks()
    assert len(net.features) == 19 and net.num_features == 1280
    assert net(torch.zeros(1, 3, 64, 64)).shape == (1, 1000)
    sizes = {i: (c, h, w) for i, c, h, w in block_inputs(224, 224)}
    assert sizes[3] == (24, 56, 56) and sizes[16] == (160, 7, 7)


# -- conformance: offline release -----------------------------------------------------------------------


def test_offline_conformance(offline: TSM, offline_ref: dict[str, np.ndarray]) -> None:
    x = torch.from_numpy(offline_ref["x"])
    seen = {}
    shift = offline.base_model.features[3].conv[0]
    hooks = [shift.register_forward_pre_hook(lambda m, a: seen.update(shift_in=a[0])),
             shift.net.register_forward_pre_hook(lambda m, a: seen.update(shift_out=a[0]))]
    try:
        with torch.no_grad():
            logits = offline(x)
            features = offline.features(x)
    finally:
        for h in hooks:
            h.remove()
    np.testing.assert_allclose(seen["shift_in"].numpy(), offline_ref["shift_in"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(seen["shift_out"].numpy(), offline_ref["shift_out"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(features.reshape(2, 8, 1280).numpy(), offline_ref["features"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(logits.numpy(), offline_ref["logits"], atol=ATOL, rtol=0)
    with torch.no_grad():
        clips = offline(x.reshape(2, 8, 3, 112, 112))
    np.testing.assert_allclose(clips.numpy(), offline_ref["logits"], atol=ATOL, rtol=0)


# -- conformance: online demo ---------------------------------------------------------------------------


def test_online_stream_conformance(online: TSM, online_ref: dict[str, np.ndarray]) -> None:
    assert buffer_shapes(online, 224, 224) == [tuple(s) for s in online_ref["buffer_shapes"]]
    step = stream_module(online)
    buffers = [torch.from_numpy(online_ref[f"buffer_{i}"]) for i in range(10)]
    logits = []
    with torch.no_grad():
        for frame in torch.from_numpy(online_ref["frames"]):
            out, *buffers = step(frame, *buffers)
            logits.append(out.numpy())
    np.testing.assert_allclose(np.stack(logits), online_ref["logits_per_frame"], atol=ATOL, rtol=0)
    for i, b in enumerate(buffers):
        np.testing.assert_allclose(b.numpy(), online_ref[f"final_buffer_{i}"], atol=5e-5, rtol=0)


def test_online_clip_is_causal_and_equals_the_stream(online: TSM, online_ref: dict[str, np.ndarray]) -> None:
    clip = torch.from_numpy(online_ref["frames"][:, 0])[None]  # (1, 8, 3, 224, 224)
    with torch.no_grad():
        per_frame = online.frame_logits(clip)[0].numpy()
        streamed = stream_clip(online, clip)[0].numpy()
        mean = online(clip).numpy()
    np.testing.assert_allclose(per_frame, online_ref["logits_offline_causal"][:, 0], atol=ATOL, rtol=0)
    np.testing.assert_allclose(per_frame, streamed, atol=ATOL, rtol=0)
    np.testing.assert_allclose(mean[0], per_frame.mean(0), atol=1e-6, rtol=0)


# -- hold-out style: official-format files written here --------------------------------------------------


@pytest.mark.parametrize(("classes", "segments", "size"), [(7, 4, (96, 128)), (51, 3, (64, 64))])
def test_written_release_loads_strictly(tmp_path: Path, classes: int, segments: int, size: tuple[int, int]) -> None:
    sd = official_sd(OFFLINE, classes, seed=classes)
    path = write_release(tmp_path / f"TSM_mine_RGB_mobilenetv2_shift8_blockres_avg_segment{segments}_e1.pth", sd)
    assert head_classes(path) == classes
    model = build(TsmParams(backbone="mobilenet_v2", num_segments=segments, dropout=0.5, pretrained=str(path)),
                  classes).eval()
    own = model.state_dict()
    for key, value in sd.items():
        assert torch.equal(own[key.removeprefix("module.")], value), key
    x = torch.randn(2, segments, 3, *size)
    with torch.no_grad():
        out = model(x)
        # frame 0 of clip 0 sees frame 1 through the bi-directional shift
        y = x.clone()
        y[0, 1] += 1
        moved = model.frame_logits(y)[0, 0] - model.frame_logits(x)[0, 0]
    assert out.shape == (2, classes) and torch.isfinite(out).all()
    assert moved.abs().max() > 1e-4


@pytest.mark.parametrize(("classes", "size"), [(51, (96, 128)), (7, (160, 160)), (5, (33, 47))])
def test_written_online_file_streams_as_its_clip(tmp_path: Path, classes: int, size: tuple[int, int]) -> None:
    sd = official_sd(ONLINE, classes, seed=classes)
    path = tmp_path / "my_online.pth.tar"
    torch.save(sd, path)
    assert head_classes(path) == classes
    model = build(TsmParams(backbone="mobilenet_v2", online=True, num_segments=4, pretrained=str(path)),
                  classes).eval()
    own = model.state_dict()
    assert torch.equal(own["base_model.features.5.conv.0.net.weight"], sd["features.5.conv.0.weight"])
    assert torch.equal(own["base_model.features.4.conv.0.weight"], sd["features.4.conv.0.weight"])
    assert torch.equal(own["new_fc.bias"], sd["classifier.bias"])
    torch.manual_seed(classes)
    clip = torch.rand(2, 4, 3, *size)
    seen = []
    hooks = [model.base_model.features[i].register_forward_pre_hook(lambda m, a: seen.append(a[0].shape))
             for i in SHIFTED]
    try:
        with torch.no_grad():
            offline_causal = model.frame_logits(clip)
    finally:
        for h in hooks:
            h.remove()
    with torch.no_grad():
        streamed = stream_clip(model, clip[:1])
        later = clip.clone()
        later[:, 2:] = torch.rand_like(later[:, 2:])
        changed = model.frame_logits(later)
    np.testing.assert_allclose(offline_causal[:1].numpy(), streamed.numpy(), atol=ATOL, rtol=0)
    assert torch.equal(offline_causal[:, :2], changed[:, :2])  # nothing comes from the future
    assert not torch.allclose(offline_causal[:, 2], changed[:, 2])
    assert buffer_shapes(model, *size) == [(1, s[1] // 8, s[2], s[3]) for s in seen[:10]]


def test_buffer_shapes_follow_the_input_size() -> None:
    params = TsmParams(backbone="mobilenet_v2", online=True)
    shapes = buffer_shapes(params, 100, 7 * 32)
    assert shapes[0] == (1, 3, 25, 56) and shapes[-1] == (1, 20, 4, 7)  # 100 -> 50 -> 25 -> 13 -> 7 -> 4
    assert buffer_shapes(TsmParams(backbone="mobilenet_v2", online=True, shift_div=4), 64, 64)[0] == (1, 6, 16, 16)
    with pytest.raises(VidcliError, match="online"):
        buffer_shapes(TsmParams(backbone="mobilenet_v2"), 64, 64)
    with pytest.raises(VidcliError, match="online"):
        stream_module(mbv2(3))


def test_imagenet_mobilenet_v2_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sd = official_sd(ONLINE, 1000, seed=3)  # the ImageNet file has the same plain names, 1000 classes
    path = tmp_path / "mobilenetv2_1.0-f2a8633.pth.tar"
    torch.save(sd, path)
    for online in (False, True):
        model = build(TsmParams(backbone="mobilenet_v2", online=online, imagenet_init=str(path)), 4)
        own = model.state_dict()
        assert torch.equal(own["base_model.features.16.conv.0.net.weight"], sd["features.16.conv.0.weight"])
        assert model.new_fc.weight.shape == (4, 1280)
    assert "classifier dropped" in capsys.readouterr().err
    with pytest.raises(VidcliError, match="resnet50"):
        build(TsmParams(imagenet_init=str(path)), 4)


# -- refusals -------------------------------------------------------------------------------------------


def test_offline_release_into_online_model_is_refused() -> None:
    path = fixture_path(DIR, f"{OFFLINE}.pth")
    with pytest.raises(VidcliError, match="shift differs") as err:
        load_tsm_checkpoint(mbv2(400, online=True), path)
    assert "online" in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_online_file_into_offline_model_is_refused() -> None:
    path = fixture_path(DIR, f"{ONLINE}.pth.tar")
    with pytest.raises(VidcliError, match="shift differs") as err:
        load_tsm_checkpoint(mbv2(27), path)
    assert "1/8" in str(err.value) and "online: true" in str(err.value)
    with pytest.raises(VidcliError, match="shift_div"):
        load_tsm_checkpoint(mbv2(27, online=True, shift_div=4), path)


def test_resnet_and_mobilenet_files_are_refused_both_ways(tmp_path: Path) -> None:
    resnet_sd = {"module.base_model.conv1.weight": torch.zeros(64, 3, 7, 7),
                 "module.base_model.layer1.0.conv1.net.weight": torch.zeros(64, 64, 1, 1)}
    for arch, name in (("resnet50", "with_arch.pth"), (None, "without_arch.pth")):
        path = tmp_path / name
        torch.save({"state_dict": resnet_sd, **({"arch": arch} if arch else {})}, path)
        with pytest.raises(VidcliError, match="backbone 'mobilenet_v2'.*set backbone: resnet50"):
            load_tsm_checkpoint(mbv2(4), path)
    release = fixture_path(DIR, f"{OFFLINE}.pth")
    with pytest.raises(VidcliError, match="mobilenetv2.*backbone 'resnet50'"):
        load_tsm_checkpoint(TSM(4, num_segments=2), release)
    bare = torch.load(release, weights_only=True)["state_dict"]
    with pytest.raises(VidcliError, match="mobilenet_v2 weights; the model is model.params.backbone 'resnet50'"):
        load_tsm_state_dict(TSM(4, num_segments=2), bare)
    with pytest.raises(VidcliError, match="resnet101"):
        load_tsm_checkpoint(mbv2(4), write_release(tmp_path / "r101.pth", resnet_sd, arch="resnet101"))


def test_strictness_names_keys(tmp_path: Path) -> None:
    sd = official_sd(ONLINE, 27, seed=1)
    sd["features.9.conv.0.weight_x"] = sd.pop("features.9.conv.0.weight")
    sd["features.18.0.weight"] = torch.zeros(1280, 320, 3, 3)
    del sd["features.2.conv.4.running_var"]
    path = tmp_path / "broken.pth.tar"
    torch.save(sd, path)
    with pytest.raises(VidcliError) as err:
        load_tsm_checkpoint(mbv2(27, online=True), path)
    message = str(err.value)
    assert "base_model.features.9.conv.0.net.weight_x" in message
    assert "model keys not in the checkpoint (base_model.features.2.conv.4.running_var, " in message
    assert "base_model.features.9.conv.0.net.weight)" in message
    assert "base_model.features.18.0.weight: file [1280, 320, 3, 3] vs model [1280, 320, 1, 1]" in message
    release = official_sd(OFFLINE, 400, seed=2)
    moved = release.pop("module.base_model.features.7.conv.0.weight")  # the shift placed on a stride-2 block
    release["module.base_model.features.7.conv.0.net.weight"] = moved
    with pytest.raises(VidcliError, match=r"1 checkpoint keys not in the model \(base_model.features.7.conv.0.net"):
        load_tsm_checkpoint(mbv2(400), write_release(tmp_path / "moved_shift.pth", release))


def test_other_class_count_reinitialises_the_head(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = mbv2(7, dropout=0.5)
    load_tsm_checkpoint(model, fixture_path(DIR, f"{OFFLINE}.pth"))
    assert model.new_fc.weight.shape == (7, 1280) and torch.count_nonzero(model.new_fc.bias) == 0
    online = mbv2(5, online=True)
    load_tsm_checkpoint(online, fixture_path(DIR, f"{ONLINE}.pth.tar"))
    assert online.new_fc.weight.shape == (5, 1280)
    assert capsys.readouterr().err.count("re-initialised") == 2


def test_dropout_free_release_head_and_head_classes(tmp_path: Path) -> None:
    """Upstream with dropout=0 keeps the MobileNetV2 head as base_model.classifier."""
    sd = {k.replace("module.new_fc.", "module.base_model.classifier."): v
          for k, v in official_sd(OFFLINE, 9, 4).items()}
    path = write_release(tmp_path / "TSM_x_RGB_mobilenetv2_shift8_blockres_avg_segment8_e1.pth", sd)
    assert head_classes(path) == 9
    model = mbv2(9, dropout=0.0)
    load_tsm_checkpoint(model, path)
    assert torch.equal(model.new_fc.bias, sd["module.base_model.classifier.bias"])
    assert head_classes(fixture_path(DIR, f"{OFFLINE}.pth")) == 400
    assert head_classes(fixture_path(DIR, f"{ONLINE}.pth.tar")) == 27
    torch.save({"state_dict": {"module.base_model.conv1.weight": torch.zeros(1)}}, tmp_path / "headless.pth")
    with pytest.raises(VidcliError, match="no classifier head"):
        head_classes(tmp_path / "headless.pth")


@pytest.mark.parametrize(
    ("changes", "field", "words"),
    [
        ({"online": True}, "online", "mobilenet_v2 only"),
        ({"backbone": "mobilenet_v2", "width": 32}, "width", "ResNet only"),
        ({"backbone": "mobilenet_v2", "layers": [1, 1, 1, 1]}, "layers", "ResNet only"),
        ({"backbone": "mobilenet_v2", "shift_place": "block"}, "shift_place", "inverted residual"),
        ({"backbone": "mobilenet_v2", "shift_div": 32}, "shift_div", "24"),
        ({"backbone": "mobilenetv2"}, "backbone", "mobilenet_v2"),
        ({"backbone": "mobilenet_v2", "online": "yes"}, "online", "true or false"),
        ({"backbone": "mobilenet_v2", "online": True, "is_shift": False}, "is_shift", "online"),
    ],
)
def test_bad_params_name_the_field(changes: dict, field: str, words: str) -> None:
    with pytest.raises(VidcliError, match=rf"model\.params\.{field}: .*{words}"):
        TsmParams(**changes).validate()


# -- the shift ----------------------------------------------------------------------------------------


def test_causal_shift_semantics() -> None:
    x = torch.arange(1, 3 * 8 + 1, dtype=torch.float32).reshape(3, 8, 1, 1)
    out = causal_shift(x, n_segment=3, fold_div=4).reshape(3, 8)
    frames = x.reshape(3, 8)
    assert torch.equal(out[1:, :2], frames[:2, :2]) and torch.equal(out[0, :2], torch.zeros(2))
    assert torch.equal(out[:, 2:], frames[:, 2:])


def test_online_model_trains_through_the_shift() -> None:
    torch.manual_seed(0)
    model = mbv2(3, segments=2, online=True, partial_bn=True).train()
    model(torch.randn(2, 2, 3, 32, 32)).sum().backward()
    assert model.base_model.features[16].conv[0].net.weight.grad is not None
    assert not model.base_model.features[5].conv[1].weight.requires_grad  # partial BN applies too


# -- release names ------------------------------------------------------------------------------------


def test_parse_release_name() -> None:
    r = parse_release_name(f"/x/temporal-shift-module/{OFFLINE}.pth")
    assert r is not None and (r["arch"], r["shift"], r["shift_div"], r["shift_place"]) == ("mobilenetv2", True, 8,
                                                                                           "blockres")
    assert (r["segments"], r["dense"], r["dataset"], r["modality"]) == (8, True, "kinetics", "RGB")
    r = parse_release_name("TSM_something_RGB_resnet50_shift4_block_avg_segment16_e45.pth")
    assert r is not None and (r["shift_div"], r["shift_place"], r["segments"], r["dense"]) == (4, "block", 16, False)
    r = parse_release_name("C:\\w\\TSN_kinetics_RGB_resnet50_avg_segment5_e50.pth")
    assert r is not None and not r["shift"] and r["shift_div"] is None and r["segments"] == 5
    for name in (f"{ONLINE}.pth.tar", "resnet50.pth", "TSM_kinetics_RGB_resnet50_shift8.pth", "TSM_a_b.pth"):
        assert parse_release_name(name) is None, name


def _check(params: dict, pretrained: str | None = None, inner: bool = False, frames: int = 8) -> None:
    model = {"arch": "tsm", "params": dict(params)}
    if inner:
        model["params"]["pretrained"] = pretrained
    else:
        model["pretrained"] = pretrained
    registry.check_recipe(recipe.parse({"name": "t", "data": {"frames": frames, "sampling": "segments"},
                                        "model": model}))


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("TSM_k_RGB_resnet50_shift4_blockres_avg_segment8_e50.pth", {}, re.escape(
            "model.params.shift_div: 8, but model.pretrained TSM_k_RGB_resnet50_shift4_blockres_avg_segment8_e50.pth "
            "says shift4 (shift_div: 4)")),
        ("TSM_k_RGB_resnet50_shift8_blockres_avg_segment16_e50.pth", {}, "num_segments: 8, .* segment16"),
        ("TSM_k_RGB_resnet50_shift8_block_avg_segment8_e50.pth", {}, "shift_place: 'blockres', .* says block"),
        (f"{OFFLINE}.pth", {}, "backbone: 'resnet50', .* mobilenetv2 \\(backbone: mobilenet_v2\\)"),
        ("TSM_k_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth", {"backbone": "mobilenet_v2"},
         "backbone: 'mobilenet_v2', .* resnet50"),
        ("TSN_k_RGB_resnet50_avg_segment8_e50.pth", {}, "is_shift: true, .* no shift"),
        ("TSM_k_RGB_resnet101_shift8_blockres_avg_segment8_e50.pth", {}, "model.pretrained: .*resnet101 release"),
        ("TSM_k_Flow_resnet50_shift8_blockres_avg_segment8_e50.pth", {}, "Flow model"),
        ("TSM_k_RGB_resnet50_shift8_blockres_avg_segment8_e50_nl.pth", {}, "non-local"),
        (f"{OFFLINE}.pth", {"backbone": "mobilenet_v2", "online": True}, "online: true, .* shift differs"),
    ],
)
def test_release_name_disagreeing_with_the_recipe_is_refused(name: str, params: dict, message: str) -> None:
    with pytest.raises(VidcliError, match=message) as err:
        _check(params, f"/nowhere/{name}")
    assert "[model.arch 'tsm']" in str(err.value)


def test_release_names_that_agree_pass_without_opening_the_file() -> None:
    _check({}, "/nowhere/TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth")
    _check({"backbone": "mobilenet_v2"}, f"/nowhere/{OFFLINE}.pth", inner=True)
    _check({"backbone": "mobilenet_v2", "online": True}, f"/nowhere/{ONLINE}.pth.tar")
    _check({"is_shift": False, "num_segments": 5}, "/nowhere/TSN_k_RGB_resnet50_avg_segment5_e50.pth", frames=5)
    with pytest.raises(VidcliError, match=r"model.params.shift_div: 8, but model.params.pretrained"):
        _check({}, "TSM_k_RGB_resnet50_shift4_blockres_avg_segment8_e50.pth", inner=True)


# -- ONNX stream export -----------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_stream_onnx_matches_torch_frame_by_frame() -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    model = randomise(mbv2(6, online=True), seed=0).eval()
    data, states = step_onnx(model, 48, 64)
    assert states[0] == {"name": "buffer_0", "output": "buffer_0_next", "shape": [1, 3, 12, 16], "dtype": "float32"}
    assert [s["shape"] for s in states] == [list(s) for s in buffer_shapes(model, 48, 64)]
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["frame", *(s["name"] for s in states)]
    assert session.get_inputs()[0].shape == [1, 3, 48, 64]
    assert [o.name for o in session.get_outputs()] == ["logits", *(s["output"] for s in states)]
    clip = torch.randn(1, 4, 3, 48, 64)
    feeds = {s["name"]: np.zeros(s["shape"], np.float32) for s in states}
    got = []
    for t in range(4):
        out = session.run(None, {"frame": clip[:, t].numpy(), **feeds})
        got.append(out[0])
        feeds = {s["name"]: v for s, v in zip(states, out[1:], strict=True)}
    with torch.no_grad():
        want = stream_clip(model, clip)[0].numpy()
    np.testing.assert_allclose(np.concatenate(got), want, atol=ATOL, rtol=0)
    zeros = {s["name"]: np.zeros(s["shape"], np.float32) for s in states}
    forgetful = session.run(["logits"], {"frame": clip[:, 2].numpy(), **zeros})[0]
    assert np.abs(forgetful - got[2]).max() > 1e-3  # the carried buffers matter
