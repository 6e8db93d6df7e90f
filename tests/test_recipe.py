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
