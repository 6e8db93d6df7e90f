"""TSM conformance against the reference fixtures, plus the strict checkpoint import and the recipe params."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fixture_path

from vidcli.backends.torch.resnet import resnet50
from vidcli.backends.torch.tsm import TSM, TemporalShift, TsmParams, temporal_shift
from vidcli.backends.torch.tsm import build as build_network
from vidcli.backends.torch.tsm_import import (
    load_imagenet_resnet50,
    load_pretrained,
    load_tsm_checkpoint,
    load_tsm_state_dict,
)
from vidcli.errors import VidcliError

CKPT_NAME = "TSM_kinetics_RGB_resnet50_shift8_blockres_avg_segment8_e50.pth"
ATOL = 1e-5


def build(params: TsmParams, num_classes: int):
    """The network plus the weights its params name, as the torch backend builds a recipe's model."""
    model = build_network(params, num_classes)
    load_pretrained(model, None, params)
    return model


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(fixture_path("tsm", "tsm_reference.npz")) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def kinetics() -> TSM:
    model = TSM(400)
    load_tsm_checkpoint(model, fixture_path("tsm", CKPT_NAME))
    return model.eval()


@pytest.fixture(scope="module")
def release() -> dict:
    return torch.load(fixture_path("tsm", CKPT_NAME), map_location="cpu", weights_only=True)


def _expected_keys() -> list[tuple[str, list[int]]]:
    rows = []
    for line in fixture_path("tsm", "state_dict_keys_kinetics.txt").read_text().splitlines():
        key, shape = line.split(" ", 1)
        rows.append((key.removeprefix("module."), [int(s) for s in shape.strip("[]").split(",") if s.strip()]))
    return rows


def _save_release(path: Path, state_dict: dict[str, torch.Tensor]) -> Path:
    """Half precision halves the file; the errors under test fire before any value is copied."""
    sd = {k: v.half() if v.is_floating_point() else v for k, v in state_dict.items()}
    torch.save({"epoch": 1, "arch": "resnet50", "state_dict": sd, "best_prec1": 0.0}, path)
    return path


def test_shift_matches_reference(ref: dict[str, np.ndarray]) -> None:
    x = torch.from_numpy(ref["shift_in"])
    np.testing.assert_allclose(temporal_shift(x, 8, 8).numpy(), ref["shift_out"], atol=ATOL, rtol=0)
    wrapped = TemporalShift(torch.nn.Identity(), n_segment=8, fold_div=8)
    np.testing.assert_allclose(wrapped(x).numpy(), ref["shift_out"], atol=ATOL, rtol=0)


def test_shift_semantics() -> None:
    x = torch.arange(1, 3 * 8 + 1, dtype=torch.float32).reshape(3, 8, 1, 1)
    out = temporal_shift(x, n_segment=3, fold_div=4).reshape(3, 8)
    frames = x.reshape(3, 8)
    assert torch.equal(out[:2, :2], frames[1:, :2]) and torch.equal(out[2, :2], torch.zeros(2))
    assert torch.equal(out[1:, 2:4], frames[:2, 2:4]) and torch.equal(out[0, 2:4], torch.zeros(2))
    assert torch.equal(out[:, 4:], frames[:, 4:])


def test_keys_and_shapes_equal_reference() -> None:
    own = [(k, list(v.shape)) for k, v in TSM(400).state_dict().items()]
    assert own == _expected_keys()


def test_plain_resnet50_has_torchvision_names() -> None:
    """torchvision's resnet50 = the reference backbone without the shift's `.net`, plus the 1000-way `fc`."""
    expected = [(k.removeprefix("base_model.").replace(".net.", "."), s) for k, s in _expected_keys() if "fc" not in k]
    expected += [("fc.weight", [1000, 2048]), ("fc.bias", [1000])]
    assert [(k, list(v.shape)) for k, v in resnet50().state_dict().items()] == expected


def test_conformance_with_reference(kinetics: TSM, ref: dict[str, np.ndarray]) -> None:
    x = torch.from_numpy(ref["x"])
    captured = {}
    hook = kinetics.base_model.layer1.register_forward_hook(lambda m, i, o: captured.update(layer1=o))
    try:
        with torch.no_grad():
            features = kinetics.features(x)
            logits = kinetics(x)
    finally:
        hook.remove()
    np.testing.assert_allclose(captured["layer1"].numpy(), ref["layer1_out_kinetics"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(features.numpy(), ref["features_kinetics"], atol=ATOL, rtol=0)
    np.testing.assert_allclose(logits.numpy(), ref["logits_kinetics"], atol=ATOL, rtol=0)
    assert features.shape == (16, 2048) and logits.shape == (2, 400)


def test_clip_layout_equals_reference_layout(kinetics: TSM, ref: dict[str, np.ndarray]) -> None:
    x = torch.from_numpy(ref["x"]).reshape(2, 8, 3, 64, 64)
    with torch.no_grad():
        logits = kinetics(x)
    np.testing.assert_allclose(logits.numpy(), ref["logits_kinetics"], atol=ATOL, rtol=0)


def test_wrong_frame_count_is_user_error(kinetics: TSM) -> None:
    with pytest.raises(VidcliError, match="num_segments"):
        kinetics(torch.zeros(1, 4, 3, 32, 32))


def test_renamed_key_is_named(release: dict, tmp_path: Path) -> None:
    sd = dict(release["state_dict"])
    sd["module.base_model.layer2.1.conv2.weight_renamed"] = sd.pop("module.base_model.layer2.1.conv2.weight")
    path = _save_release(tmp_path / "renamed.pth", sd)
    with pytest.raises(VidcliError) as err:
        load_tsm_checkpoint(TSM(400), path)
    message = str(err.value)
    assert "base_model.layer2.1.conv2.weight_renamed" in message
    assert "1 model keys not in the checkpoint (base_model.layer2.1.conv2.weight)" in message
    assert "\n" not in message and str(path) in message


def test_legacy_serialisation_loads(release: dict, tmp_path: Path) -> None:
    """Files saved before torch 1.6 (the 2019 releases) use the non-zip format; weights_only must still read them."""
    path = tmp_path / "legacy.pth"
    sd = {k: v.half() if v.is_floating_point() else v for k, v in release["state_dict"].items()}
    torch.save(
        {"epoch": 50, "arch": "resnet50", "state_dict": sd, "best_prec1": 71.2},
        path,
        _use_new_zipfile_serialization=False,
    )
    model = TSM(400)
    load_tsm_checkpoint(model, path)
    assert torch.equal(
        model.base_model.layer4[2].bn3.running_var, sd["module.base_model.layer4.2.bn3.running_var"].float()
    )


def test_missing_and_misshapen_keys_are_named(release: dict) -> None:
    sd = dict(release["state_dict"])
    del sd["module.base_model.layer4.2.bn3.running_var"]
    sd["module.base_model.conv1.weight"] = torch.zeros(64, 3, 5, 5)
    with pytest.raises(VidcliError) as err:
        load_tsm_state_dict(TSM(400), sd, "ckpt.pth")
    message = str(err.value)
    assert "base_model.layer4.2.bn3.running_var" in message
    assert "base_model.conv1.weight: file [64, 3, 5, 5] vs model [64, 3, 7, 7]" in message


def test_many_unmatched_keys_are_summarised(release: dict) -> None:
    sd = {k.replace("base_model.", "backbone."): v for k, v in release["state_dict"].items()}
    with pytest.raises(VidcliError, match=r"318 checkpoint keys not in the model \(.*and 308 more\)"):
        load_tsm_state_dict(TSM(400), sd)


def test_other_class_count_reinitialises_head(release: dict, capsys: pytest.CaptureFixture[str]) -> None:
    model = TSM(10)
    load_tsm_checkpoint(model, fixture_path("tsm", CKPT_NAME))
    own = model.state_dict()
    for key, value in release["state_dict"].items():
        key = key.removeprefix("module.")
        if key.startswith("base_model."):
            assert torch.equal(own[key], value), key
    assert model.new_fc.weight.shape == (10, 2048)
    assert torch.count_nonzero(model.new_fc.bias) == 0
    assert 0.0005 < model.new_fc.weight.std().item() < 0.002
    assert "re-initialised" in capsys.readouterr().err


def test_head_with_wrong_feature_width_is_an_error(release: dict) -> None:
    sd = dict(release["state_dict"])
    sd["module.new_fc.weight"] = torch.zeros(10, 1024)
    with pytest.raises(VidcliError, match=r"new_fc.weight: file \[10, 1024\] vs model \[10, 2048\]"):
        load_tsm_state_dict(TSM(10), sd)


def test_dropout_free_reference_head_is_accepted(release: dict) -> None:
    """Upstream with dropout=0 stores its head as base_model.fc."""
    sd = {k.replace("module.new_fc.", "module.base_model.fc."): v for k, v in release["state_dict"].items()}
    model = TSM(400, dropout=0.0)
    load_tsm_state_dict(model, sd)
    assert torch.equal(model.new_fc.bias, release["state_dict"]["module.new_fc.bias"])


def _imagenet_file(tmp_path: Path, drop_counters: bool = False) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    net = resnet50()
    with torch.no_grad():
        for v in net.state_dict().values():
            if v.is_floating_point():
                v.uniform_(0.5, 1.5)
    sd = {k: v for k, v in net.state_dict().items() if not (drop_counters and k.endswith("num_batches_tracked"))}
    path = tmp_path / "resnet50-imagenet.pth"
    torch.save(sd, path)
    return path, sd


@pytest.mark.parametrize("place", ["blockres", "block"])
def test_imagenet_resnet50_loads_strictly(tmp_path: Path, place: str, capsys: pytest.CaptureFixture[str]) -> None:
    path, sd = _imagenet_file(tmp_path, drop_counters=place == "block")
    model = TSM(5, shift_place=place)
    head = model.new_fc.weight.detach().clone()
    load_imagenet_resnet50(model, path)
    own = model.state_dict()
    assert torch.equal(own["base_model.conv1.weight"], sd["conv1.weight"])
    shifted = "base_model.layer3.4.conv1.net.weight" if place == "blockres" else "base_model.layer3.4.net.conv1.weight"
    assert torch.equal(own[shifted], sd["layer3.4.conv1.weight"])
    for key, value in own.items():
        canonical = key.removeprefix("base_model.").replace(".net.", ".")
        if canonical in sd:
            assert torch.equal(value, sd[canonical]), key
    assert torch.equal(model.new_fc.weight, head)
    assert "fc dropped" in capsys.readouterr().err


def test_imagenet_into_plain_resnet_keeps_fc(tmp_path: Path) -> None:
    path, sd = _imagenet_file(tmp_path)
    net = resnet50()
    load_imagenet_resnet50(net, path)
    assert torch.equal(net.fc.weight, sd["fc.weight"])


def test_imagenet_extra_key_is_named(tmp_path: Path) -> None:
    _, sd = _imagenet_file(tmp_path)
    sd["layer5.0.conv1.weight"] = torch.zeros(1)
    path = tmp_path / "extra.pth"
    torch.save(sd, path)
    with pytest.raises(VidcliError, match="layer5.0.conv1.weight"):
        load_imagenet_resnet50(TSM(5), path)


class _Payload:
    """Unpickling this creates a directory: proof that code would have run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Payload(marker)}, path)
    with pytest.raises(VidcliError, match="weights_only"):
        load_tsm_checkpoint(TSM(4, num_segments=2), path)
    assert not marker.exists()


def test_unreadable_files_give_one_line_errors(tmp_path: Path) -> None:
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    good = tmp_path / "good.pth"
    torch.save({"state_dict": {"w": torch.randn(64, 64)}}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    listed = tmp_path / "list.pth"
    torch.save([1, 2, 3], listed)
    model = TSM(4, num_segments=2)
    for path, words in [
        (tmp_path / "absent.pth", "not found"),
        (text, "not a"),
        (truncated, "not a readable PyTorch checkpoint"),
        (listed, "no state_dict"),
    ]:
        with pytest.raises(VidcliError) as err:
            load_tsm_checkpoint(model, path)
        assert words in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)


def test_other_arch_is_named(tmp_path: Path) -> None:
    path = tmp_path / "mbv2.pth"
    torch.save({"arch": "mobilenetv2", "state_dict": {"w": torch.zeros(1)}}, path)
    with pytest.raises(VidcliError, match="mobilenetv2"):
        load_tsm_checkpoint(TSM(4, num_segments=2), path)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("num_segments", 0),
        ("num_segments", True),
        ("shift_div", 1),
        ("shift_div", "8"),
        ("shift_place", "blocks"),
        ("dropout", 1.0),
        ("dropout", float("nan")),
        ("consensus", "max"),
        ("partial_bn", "yes"),
        ("pretrained", ""),
    ],
)
def test_bad_params_name_the_field(field: str, value: object) -> None:
    with pytest.raises(VidcliError, match=rf"model\.params\.{field}"):
        build(TsmParams(**{field: value}), 10)


def test_build_rejects_two_initialisations_and_bad_class_count() -> None:
    with pytest.raises(VidcliError, match="exclusive"):
        build(TsmParams(pretrained="a.pth", imagenet_init="b.pth"), 10)
    with pytest.raises(VidcliError, match="num_classes"):
        build(TsmParams(), 0)


def test_build_loads_pretrained(release: dict) -> None:
    model = build(TsmParams(pretrained=str(fixture_path("tsm", CKPT_NAME)), dropout=0.5), 400)
    want = release["state_dict"]["module.base_model.layer1.0.conv1.net.weight"]
    assert torch.equal(model.state_dict()["base_model.layer1.0.conv1.net.weight"], want)
    assert torch.equal(model.new_fc.weight, release["state_dict"]["module.new_fc.weight"])
    assert model.dropout.p == 0.5


def test_missing_pretrained_file_is_user_error(tmp_path: Path) -> None:
    with pytest.raises(VidcliError, match="not found"):
        build(TsmParams(pretrained=str(tmp_path / "nope.pth")), 10)


def test_partial_bn_freezes_all_but_first_batchnorm() -> None:
    torch.manual_seed(0)
    model = TSM(3, num_segments=2, partial_bn=True).train()
    bns = [m for m in model.base_model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns[0].training and bns[0].weight.requires_grad
    assert all(not bn.training and not bn.weight.requires_grad and not bn.bias.requires_grad for bn in bns[1:])
    first, later = bns[0].running_mean.clone(), bns[5].running_mean.clone()
    model(torch.randn(1, 2, 3, 32, 32)).sum().backward()
    assert not torch.equal(bns[0].running_mean, first) and torch.equal(bns[5].running_mean, later)
    assert bns[5].weight.grad is None and model.base_model.layer1[0].conv1.net.weight.grad is not None
    model.set_partial_bn(False)
    assert all(bn.training and bn.weight.requires_grad for bn in bns)


@pytest.mark.parametrize("place", ["blockres", "block"])
def test_frames_mix_in_time(place: str) -> None:
    """Changing frame 1 changes frame 0's features only through the shift."""
    torch.manual_seed(0)
    model = TSM(3, num_segments=2, shift_place=place).eval()
    x = torch.randn(1, 2, 3, 32, 32)
    y = x.clone()
    y[:, 1] += 1.0
    with torch.no_grad():
        fx, fy = model.features(x), model.features(y)
    assert not torch.allclose(fx[0], fy[0])
    assert torch.equal(fx[1], model.features(x)[1])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_export_matches_onnxruntime(tmp_path: Path) -> None:
    """The legacy (TorchScript) exporter: the default dynamo one needs onnxscript, which is not installed."""
    import onnxruntime as ort

    torch.manual_seed(0)
    model = TSM(4, num_segments=2).eval()
    with torch.no_grad():
        model.new_fc.weight.normal_(0, 0.1)
    x = torch.randn(1, 2, 3, 32, 32)
    path = tmp_path / "tsm.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["video"], output_names=["logits"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"video": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
