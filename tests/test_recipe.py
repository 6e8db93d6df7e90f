"""Recipes: every bad key or value is an error that names the key; `--set` goes through the same checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vidcli import recipe, runs
from vidcli.errors import VidcliError

REPO = Path(__file__).resolve().parents[1]
BASE = {
    "name": "tiny",
    "data": {"root": "data/x", "frames": 4, "size": [32, 32]},
    "model": {"arch": "r2plus1d", "params": {"filters": [4, 8]}},
    "train": {"epochs": 2},
}


def _write(tmp_path: Path, raw: dict | str, name: str = "tiny.yaml") -> Path:
    p = tmp_path / name
    p.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw), encoding="utf-8")
    return p


def _error(fn, *args, **kw) -> str:
    with pytest.raises(VidcliError) as info:
        fn(*args, **kw)
    assert info.value.exit_code == 2
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_valid_recipe_loads_typed(tmp_path):
    rec = recipe.load(_write(tmp_path, BASE))
    assert rec.name == "tiny"
    assert rec.data.size == (32, 32) and isinstance(rec.data.size, tuple)
    assert rec.train.epochs == 2 and rec.train.learning_rate == pytest.approx(1e-3)
    assert rec.model.params == {"filters": [4, 8]}


def test_name_defaults_to_file_stem(tmp_path):
    raw = {k: v for k, v in BASE.items() if k != "name"}
    assert recipe.load(_write(tmp_path, raw, "my_recipe.yaml")).name == "my_recipe"


def test_unknown_key_names_key_and_near_miss(tmp_path):
    raw = {**BASE, "train": {"epoch": 3}}
    msg = _error(recipe.load, _write(tmp_path, raw))
    assert "train.epoch" in msg and "unknown key" in msg
    assert "did you mean 'epochs'" in msg


def test_unknown_section_names_it(tmp_path):
    msg = _error(recipe.load, _write(tmp_path, {**BASE, "trian": {"epochs": 3}}))
    assert "trian" in msg and "'train'" in msg


def test_wrong_type_names_key_and_expected_type(tmp_path):
    msg = _error(recipe.load, _write(tmp_path, {**BASE, "train": {"epochs": "three"}}))
    assert "train.epochs" in msg and "expected int" in msg and "'three'" in msg


def test_bool_is_not_an_int(tmp_path):
    msg = _error(recipe.load, _write(tmp_path, {**BASE, "train": {"batch_size": True}}))
    assert "train.batch_size" in msg and "expected int" in msg


def test_int_accepted_for_float(tmp_path):
    rec = recipe.load(_write(tmp_path, {**BASE, "train": {"learning_rate": 1}}))
    assert rec.train.learning_rate == 1.0 and isinstance(rec.train.learning_rate, float)


def test_nested_key_is_named_in_full(tmp_path):
    raw = {**BASE, "data": {**BASE["data"], "synth": {"classes": "many"}}}
    msg = _error(recipe.load, _write(tmp_path, raw))
    assert "data.synth.classes" in msg and "expected int" in msg
    raw = {**BASE, "data": {**BASE["data"], "synth": {"clases": 3}}}
    msg = _error(recipe.load, _write(tmp_path, raw))
    assert "data.synth.clases" in msg and "'classes'" in msg


def test_tuple_length(tmp_path):
    msg = _error(recipe.load, _write(tmp_path, {**BASE, "data": {"size": [32, 32, 3]}}))
    assert "data.size" in msg and "2 values" in msg and "got 3" in msg
    msg = _error(recipe.load, _write(tmp_path, {**BASE, "data": {"size": [32, "x"]}}))
    assert "data.size[1]" in msg


def test_literal_choices_are_listed(tmp_path):
    msg = _error(recipe.load, _write(tmp_path, {**BASE, "train": {"schedule": "linear"}}))
    assert "train.schedule" in msg
    for choice in ("'constant'", "'cosine'", "'step'"):
        assert choice in msg


def test_section_must_be_a_mapping(tmp_path):
    msg = _error(recipe.load, _write(tmp_path, {**BASE, "train": [1, 2]}))
    assert "train" in msg and "mapping" in msg


def test_overrides_apply_and_convert(tmp_path):
    path = _write(tmp_path, BASE)
    sets = ["train.epochs=3", "data.size=[48,48]", "train.schedule=cosine", "model.params.dropout=0.5"]
    rec = recipe.load(path, sets)
    assert rec.train.epochs == 3
    assert rec.data.size == (48, 48)
    assert rec.train.schedule == "cosine"
    assert rec.model.params["dropout"] == 0.5


def test_override_creates_missing_section(tmp_path):
    rec = recipe.load(_write(tmp_path, BASE), ["data.synth.classes=3"])
    assert rec.data.synth is not None and rec.data.synth.classes == 3


def test_override_with_bad_key_or_value(tmp_path):
    path = _write(tmp_path, BASE)
    msg = _error(recipe.load, path, ["train.epoch=3"])
    assert "train.epoch" in msg and "'epochs'" in msg
    msg = _error(recipe.load, path, ["train.epochs=many"])
    assert "train.epochs" in msg and "expected int" in msg
    msg = _error(recipe.load, path, ["train.epochs"])
    assert "KEY=VALUE" in msg
    msg = _error(recipe.load, path, ["train.epochs.x=1"])
    assert "epochs" in msg and "not a section" in msg
    msg = _error(recipe.load, path, ["data.size=[1,"])
    assert "data.size" in msg and "YAML" in msg


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = _write(tmp_path, "name: x\ntrain:\n  epochs: [1, 2\n  batch_size: 3\n")
    msg = _error(recipe.load, path)
    assert str(path) in msg and "not valid YAML" in msg and "line" in msg


def test_yaml_that_is_not_a_mapping(tmp_path):
    msg = _error(recipe.load, _write(tmp_path, "- a\n- b\n"))
    assert "mapping" in msg


def test_empty_file_is_all_defaults(tmp_path):
    rec = recipe.load(_write(tmp_path, "", "empty.yaml"))
    assert rec.name == "empty" and rec.train == recipe.TrainConfig()


def test_missing_file(tmp_path):
    msg = _error(recipe.load, tmp_path / "nope.yaml")
    assert "nope.yaml" in msg and "not found" in msg


def test_error_message_starts_with_file(tmp_path):
    path = _write(tmp_path, {**BASE, "train": {"epoch": 3}})
    assert _error(recipe.load, path).startswith(str(path))


def test_dump_round_trip(tmp_path):
    rec = recipe.load(_write(tmp_path, {**BASE, "data": {**BASE["data"], "synth": {"classes": 3}}}),
                      ["train.step_epochs=[2,4]", "train.early_stopping=3"])
    again = recipe.load(_write(tmp_path, recipe.dump(rec), "again.yaml"))
    assert again == rec


def test_recipe_saved_in_run_folder_reloads_equal(tmp_path):
    rec = recipe.load(_write(tmp_path, BASE), ["train.epochs=5"])
    run = runs.start(tmp_path / "runs", rec, ["a", "b"], "keras")
    assert run.recipe == rec
    assert (run.path / runs.RECIPE_FILE).read_text().startswith("name: tiny")


@pytest.mark.parametrize("path", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_are_valid(path):
    rec = recipe.load(path)
    assert rec.name == path.stem or rec.name


def test_model_params_validated_against_family():
    from vidcli.backends.keras.r2plus1d import Params

    p = recipe.from_dict(Params, {"filters": [4, 8], "norm": "batch"}, "model.params")
    assert p.filters == [4, 8] and p.norm == "batch"
    msg = _error(recipe.from_dict, Params, {"x": 1}, "model.params")
    assert msg.startswith("model.params.x: unknown key")
    msg = _error(recipe.from_dict, Params, {"filter": [4]}, "model.params")
    assert "model.params.filter" in msg and "'filters'" in msg
    msg = _error(recipe.from_dict, Params, {"kernel": [3, 3]}, "model.params")
    assert "model.params.kernel" in msg and "3 values" in msg


# -- ranges: every numeric key is checked up front, the message names the key and what it allows ----------

# (override, key named in the error, words of the allowed range in the error)
OUT_OF_RANGE = [
    ("train.epochs=-1", "train.epochs", "[1, 100000]"),
    ("train.epochs=0", "train.epochs", "[1, 100000]"),
    ("train.epochs=100001", "train.epochs", "[1, 100000]"),
    ("train.batch_size=99999999999", "train.batch_size", "2147483647"),
    ("train.batch_size=0", "train.batch_size", ">= 1"),
    ("train.batch_size=-3", "train.batch_size", ">= 1"),
    ("train.learning_rate=.nan", "train.learning_rate", "finite number > 0"),
    ("train.learning_rate=.inf", "train.learning_rate", "finite number > 0"),
    ("train.learning_rate=0", "train.learning_rate", "> 0"),
    ("train.learning_rate=-0.1", "train.learning_rate", "> 0"),
    ("train.warmup_epochs=-1", "train.warmup_epochs", ">= 0"),
    ("train.warmup_epochs=2", "train.warmup_epochs", "less than train.epochs"),
    ("train.weight_decay=-0.01", "train.weight_decay", ">= 0"),
    ("train.weight_decay=.inf", "train.weight_decay", "finite"),
    ("train.momentum=1", "train.momentum", "[0, 1)"),
    ("train.momentum=-0.5", "train.momentum", "[0, 1)"),
    ("train.clip_grad_norm=0", "train.clip_grad_norm", "> 0"),
    ("train.clip_grad_norm=.nan", "train.clip_grad_norm", "> 0"),
    ("train.head_lr_mult=0", "train.head_lr_mult", "> 0"),
    ("train.early_stopping=0", "train.early_stopping", ">= 1"),
    ("train.step_epochs=[0, 2]", "train.step_epochs[0]", ">= 1"),
    ("train.step_epochs=[3, 2]", "train.step_epochs", "increasing"),
    ("train.step_epochs=[2, 2]", "train.step_epochs", "increasing"),
    ("train.step_gamma=0", "train.step_gamma", "(0, 1]"),
    ("train.step_gamma=1.5", "train.step_gamma", "(0, 1]"),
    ("train.seed=-1", "train.seed", ">= 0"),
    ("train.seed=4294967296", "train.seed", "4294967295"),
    ("train.lr_base_batch=0", "train.lr_base_batch", ">= 1"),
    ("data.frames=0", "data.frames", "[1, 4096]"),
    ("data.frame_step=0", "data.frame_step", ">= 1"),
    ("data.size=[0, 0]", "data.size[0]", "[1, 8192]"),
    ("data.size=[32, -1]", "data.size[1]", "[1, 8192]"),
    ("data={frames: 16, size: [8192, 8192]}", "data.frames x data.size", "at most 2 GiB"),
    ("data.workers=-1", "data.workers", "[0, 1024]"),
    ("data.max_bad_fraction=-1", "data.max_bad_fraction", "[0, 1]"),
    ("data.max_bad_fraction=1.5", "data.max_bad_fraction", "[0, 1]"),
    ("data.max_bad_fraction=.nan", "data.max_bad_fraction", "[0, 1]"),
    ("data.cache_limit_gb=0", "data.cache_limit_gb", "> 0"),
    ("data.cache_limit_gb=.inf", "data.cache_limit_gb", "finite"),
    ("data.synth.classes=0", "data.synth.classes", "[1, 8]"),
    ("data.synth.classes=9", "data.synth.classes", "[1, 8]"),
    ("data.synth.train=0", "data.synth.train", "[1, 100000]"),
    ("data.synth.val=-1", "data.synth.val", "[0, 100000]"),
    ("data.synth.test=-2", "data.synth.test", "[0, 100000]"),
    ("data.synth.frames=1", "data.synth.frames", "[2, 10000]"),
    ("data.synth.size=0", "data.synth.size", "[16, 4096]"),
    ("data.synth.seed=-5", "data.synth.seed", ">= 0"),
    ("data.synth={volumes: true, classes: 7}", "data.synth.classes", "[1, 6]"),
    ("data.synth={volumes: true, classes: 2, size: 200}", "data.synth.size", "[8, 128]"),
    ("export.opset=3", "export.opset", "[10, 20]"),
    ("export.opset=99", "export.opset", "[10, 20]"),
    ("export.tolerance=0", "export.tolerance", "> 0"),
    ("export.tolerance=.nan", "export.tolerance", "> 0"),
    ("export.tolerance=-1.0e-4", "export.tolerance", "> 0"),
    ("train.learning_rate=" + "9" * 400, "train.learning_rate", "too large"),
    ("data.root=''", "data.root", "empty"),
    ("model.pretrained=' '", "model.pretrained", "empty"),
]


@pytest.mark.parametrize(("override", "key", "allowed"), OUT_OF_RANGE, ids=[c[0][:40] for c in OUT_OF_RANGE])
def test_out_of_range_values_name_key_and_range(tmp_path, override, key, allowed):
    msg = _error(recipe.load, _write(tmp_path, BASE), [override])
    assert f"{key}:" in msg and allowed in msg, msg


def _numeric_fields(cls, prefix: str) -> set[str]:
    import dataclasses
    import typing

    keys = set()
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        args = set(typing.get_args(tp)) | {tp}
        if args & {int, float} or any(typing.get_args(a) and set(typing.get_args(a)) & {int, float} for a in args):
            keys.add(f"{prefix}.{f.name}")
    return keys


def test_every_numeric_key_has_a_refused_value():
    """A numeric key added later without a range check fails here until it gets one (and a case above)."""
    numeric = (_numeric_fields(recipe.TrainConfig, "train") | _numeric_fields(recipe.DataConfig, "data")
               | _numeric_fields(recipe.SynthConfig, "data.synth") | _numeric_fields(recipe.ExportConfig, "export"))
    tested = {key.split("[")[0] for _, key, _ in OUT_OF_RANGE}
    assert numeric - tested == set()


@pytest.mark.parametrize("override", [
    "train.momentum=0", "train.step_gamma=1", "train.warmup_epochs=1", "train.weight_decay=0", "train.seed=0",
    "train.seed=4294967295", "data.workers=0", "data.max_bad_fraction=0", "data.max_bad_fraction=1",
    "data.frames=1", "data.frame_step=1", "data.size=[1, 1]", "data.synth.val=0", "data.synth.classes=8",
    "export.opset=11", "export.opset=18", "train.step_epochs=[1, 2]", "train.early_stopping=1",
    "train.clip_grad_norm=1.0e-9", "data.synth={volumes: true, classes: 6, size: 8}",
])
def test_values_at_the_edges_are_accepted(tmp_path, override):
    recipe.load(_write(tmp_path, BASE), [override])


def test_opset_range_follows_the_backend(tmp_path):
    from vidcli.backends import registry

    def check(raw, overrides):
        return registry.check_recipe(recipe.load(_write(tmp_path, raw), overrides))

    tsm = {**BASE, "model": {"arch": "tsm", "params": {"num_segments": BASE.get("data", {}).get("frames", 10)}}}
    check(tsm, ["export.opset=20"])
    assert "[10, 20]" in _error(check, tsm, ["export.opset=21"])
    assert "[11, 18] for keras" in _error(check, BASE, ["export.opset=10"])
    assert "[11, 18] for keras" in _error(check, BASE, ["export.opset=19"])
    assert "[10, 20]" in _error(recipe.load, _write(tmp_path, BASE), ["export.opset=0"])  # no backend takes 0
    assert recipe.check_opset(18, "keras") == 18


@pytest.mark.parametrize("name", ["../../escaped", "..", ".", "", "  ", ".hidden", "a/b", "a\\b", "/abs",
                                  "tab\there", "new\nline", "nul\x00", "bell\x07", "x" * 129, " padded"])
def test_unsafe_run_names_are_refused(tmp_path, name):
    msg = _error(recipe.load, _write(tmp_path, {**BASE, "name": name}))
    assert msg.split(": ", 1)[1].startswith("name:") and "run folder" in msg
    assert recipe.name_problem(name)


@pytest.mark.parametrize("name", ["tiny", "r2plus1d_ucf101", "exp-1.2", "my run", "café", "2024"])
def test_ordinary_run_names_are_fine(tmp_path, name):
    assert recipe.load(_write(tmp_path, {**BASE, "name": name})).name == name


def test_name_taken_from_an_unsafe_file_name_says_so(tmp_path):
    raw = {k: v for k, v in BASE.items() if k != "name"}
    msg = _error(recipe.load, _write(tmp_path, raw, ".hidden.yaml"))
    assert "'.hidden'" in msg and "file's name" in msg and "set name:" in msg


def test_non_utf8_recipe_is_one_line(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes("name: caf\u00e9\ntrain:\n  epochs: 2\n".encode("latin-1"))
    msg = _error(recipe.load, p)
    assert str(p) in msg and "UTF-8" in msg and "0xe9" in msg and "line 1" in msg


@pytest.mark.parametrize("data", [bytes(range(256)), b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"name: x\x00\n",
                                  b"\xff\xfe\x00n\x00a"])
def test_binary_recipe_is_one_line(tmp_path, data):
    p = tmp_path / "binary.yaml"
    p.write_bytes(data)
    msg = _error(recipe.load, p)
    assert str(p) in msg and ("binary" in msg or "UTF-8" in msg)


def test_utf16_recipe_says_so(tmp_path):
    p = tmp_path / "utf16.yaml"
    p.write_bytes("name: x\n".encode("utf-16"))
    assert "UTF-16" in _error(recipe.load, p)


def test_control_characters_in_text_are_invalid_yaml(tmp_path):
    p = tmp_path / "ctl.yaml"
    p.write_bytes(b"name: a\x07b\n")
    assert "not valid YAML" in _error(recipe.load, p)


def test_deeply_nested_yaml_is_one_line(tmp_path):
    p = tmp_path / "deep.yaml"
    p.write_text("name: x\ndescription: " + "[" * 5000 + "]" * 5000 + "\n")
    assert "YAML" in _error(recipe.load, p)


@pytest.mark.parametrize("text", ["name: 2024-13-45\n", "train:\n  epochs: " + "9" * 5000 + "\n"])
def test_values_yaml_cannot_build_are_one_line(tmp_path, text):
    assert "not valid YAML" in _error(recipe.load, _write(tmp_path, text))
    assert "not valid YAML" in _error(recipe.load, _write(tmp_path, BASE), ["train.seed=" + text.split(": ")[1]])


def test_recipe_that_is_a_folder(tmp_path):
    (tmp_path / "dir.yaml").mkdir()
    assert "not found" in _error(recipe.load, tmp_path / "dir.yaml")


def test_refused_recipes_leave_no_run_folder_and_load_no_framework(tmp_path):
    """Through the CLI, in a fresh process: exit 2, one `error:` line naming the key, no run folder, and
    neither TensorFlow nor PyTorch imported (the check ran first)."""
    import json
    import subprocess
    import sys

    from conftest import env

    cases = {"epochs": ["train.epochs=-1"], "lr": ["train.learning_rate=.nan"], "frames": ["data.frames=0"],
             "size": ["data.size=[0,0]"], "bad": ["data.max_bad_fraction=-1"], "escape": ["name=../../escaped"],
             "empty": ["name=''"], "opset": ["export.opset=3"], "tsm_lr": ["model.arch=tsm", "train.learning_rate=0"]}
    recipe_file = _write(tmp_path, {**BASE, "data": {**BASE["data"], "root": str(tmp_path)}})
    script = f"""
import json, sys
from typer.testing import CliRunner
from vidcli.cli.main import app
out = {{}}
for label, sets in json.loads(sys.argv[1]).items():
    argv = ["train", {str(recipe_file)!r}, "--runs-dir", {str(tmp_path / "runs")!r}]
    for s in sets:
        argv += ["--set", s]
    r = CliRunner().invoke(app, argv)
    out[label] = [r.exit_code, r.stderr]
out["frameworks"] = sorted(m for m in ("tensorflow", "torch", "keras") if m in sys.modules)
print(json.dumps(out))
"""
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(cases)], capture_output=True, text=True,
                          env=env(), timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out.pop("frameworks") == []
    keys = {"epochs": "train.epochs", "lr": "train.learning_rate", "frames": "data.frames", "size": "data.size[0]",
            "bad": "data.max_bad_fraction", "escape": "name", "empty": "name", "opset": "export.opset",
            "tsm_lr": "train.learning_rate"}
    for label, (code, stderr) in out.items():
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (label, stderr)
        assert f"{keys[label]}:" in lines[0], (label, lines[0])
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path.parent.parent / "escaped").exists()


def test_unset_sampling_is_the_familys_own(tmp_path):
    from vidcli.backends import registry

    tsm = recipe.load(_write(tmp_path, {**BASE, "data": {**BASE["data"], "frames": 8},
                                        "model": {"arch": "tsm"}}))
    assert tsm.data.sampling is None
    registry.check_recipe(tsm)
    assert tsm.data.sampling == "segments"  # TSM's reference sampling, as its card says
    keras = recipe.load(_write(tmp_path, BASE))
    registry.check_recipe(keras)
    assert keras.data.sampling == "step"


def test_a_card_that_asks_for_input_its_backend_does_not_feed_is_refused(monkeypatch):
    import dataclasses

    from vidcli.backends import registry
    from vidcli.families import IMAGENET
    from vidcli.families import r2plus1d as card

    monkeypatch.setattr(card, "SPEC", dataclasses.replace(card.SPEC, norm=IMAGENET))
    with pytest.raises(VidcliError, match="keras backend trains on NTHWC values in \\[0, 1\\]"):
        registry.spec("r2plus1d")


@pytest.mark.parametrize("key", ["multiscale_crop", "flip", "frame_step"])
def test_video_only_keys_on_volumes_are_refused_by_name(tmp_path, key):
    from vidcli.backends import registry

    value = {"multiscale_crop": False, "flip": True, "frame_step": 3}[key]
    raw = {**BASE, "data": {"root": "data/v.npz", "format": "volumes", key: value}, "model": {"arch": "vivit"}}
    rec = recipe.load(_write(tmp_path, raw))
    message = _error(registry.check_recipe, rec)
    assert f"data.{key}" in message and "vivit" in message and "volumes are used whole" in message
